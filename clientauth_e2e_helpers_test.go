package oauthbearer

// Helpers of the end-to-end tests of client authentication: a recording
// front for the verifying jwtTokenServer (it keeps every assertion sent, so
// that the tests can look for them where they must not be), a token
// endpoint behind TLS that requires a client certificate, a discovery
// server, and the checks that nothing secret leaked.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// sentAssertion is one assertion as it reached the token endpoint.
type sentAssertion struct {
	param  string // client_assertion or assertion
	value  string
	header map[string]any // the JOSE header, decoded
}

// recordingJWTServer is a jwtTokenServer behind a front that records what
// each token request carried. The front's URL is the token URL given to
// Caddy (and accepted as the assertions' aud).
type recordingJWTServer struct {
	*jwtTokenServer
	front    *httptest.Server
	url      string // the front's token URL
	mu       sync.Mutex
	sent     []sentAssertion
	forms    []url.Values
	authzHdr []string // Authorization headers of the token requests
}

func newRecordingJWTServer(t *testing.T) *recordingJWTServer {
	t.Helper()
	r := &recordingJWTServer{jwtTokenServer: newJWTTokenServer(t)}
	r.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		r.mu.Lock()
		r.forms = append(r.forms, form)
		r.authzHdr = append(r.authzHdr, req.Header.Get("Authorization"))
		for _, p := range []string{"client_assertion", "assertion"} {
			if v := form.Get(p); v != "" {
				r.sent = append(r.sent, sentAssertion{param: p, value: v, header: joseHeader(v)})
			}
		}
		r.mu.Unlock()
		r.serve(w, req)
	}))
	t.Cleanup(r.front.Close)
	r.url = r.front.URL + "/token"
	r.addAudience(r.url)
	return r
}

// assertions returns the assertions sent so far, in order.
func (r *recordingJWTServer) assertions() []sentAssertion {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sent)
}

// sentForms returns the token requests' forms so far.
func (r *recordingJWTServer) sentForms() []url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.forms)
}

// authorizations returns the Authorization headers of the token requests.
func (r *recordingJWTServer) authorizations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.authzHdr)
}

// values returns the assertions' compact forms.
func (r *recordingJWTServer) values() []string {
	var out []string
	for _, a := range r.assertions() {
		out = append(out, a.value)
	}
	return out
}

// joseHeader decodes the header of a compact JWS; nil if it is not one.
func joseHeader(compact string) map[string]any {
	part, _, _ := strings.Cut(compact, ".")
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return nil
	}
	var h map[string]any
	if json.Unmarshal(b, &h) != nil {
		return nil
	}
	return h
}

// mtlsTokenServer is a token endpoint behind TLS that requires a client
// certificate issued by its client CA (RFC 8705 tls_client_auth): the
// client_id in the body must be the certificate's common name, and no other
// client credential may be sent.
type mtlsTokenServer struct {
	srv      *httptest.Server
	url      string
	requests atomic.Int64
	issued   atomic.Int64
	mu       sync.Mutex
	refusals []string
	peers    []string // common names of the certificates of issued tokens
}

func newMTLSTokenServer(t *testing.T, serverCA, clientCA *testkeys.CA) *mtlsTokenServer {
	t.Helper()
	s := &mtlsTokenServer{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	roots := x509.NewCertPool()
	roots.AddCert(clientCA.Cert)
	s.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCA.IssueServer(t)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
	}
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.url = s.srv.URL + "/token"
	return s
}

func (s *mtlsTokenServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	refuse := func(status int, code, desc string) {
		s.mu.Lock()
		s.refusals = append(s.refusals, desc)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
	}
	if r.URL.Path != "/token" || r.Method != http.MethodPost {
		refuse(http.StatusNotFound, "not_found", r.Method+" "+r.URL.Path)
		return
	}
	if err := r.ParseForm(); err != nil {
		refuse(http.StatusBadRequest, "invalid_request", "unparsable form")
		return
	}
	cn := r.TLS.PeerCertificates[0].Subject.CommonName
	switch {
	case r.PostForm.Get("grant_type") != "client_credentials":
		refuse(http.StatusBadRequest, "unsupported_grant_type", r.PostForm.Get("grant_type"))
	case r.PostForm.Get("client_id") != cn:
		refuse(http.StatusUnauthorized, "invalid_client", fmt.Sprintf("client_id %q is not the certificate's %q", r.PostForm.Get("client_id"), cn))
	case r.PostForm.Has("client_secret") || r.PostForm.Has("client_assertion") || r.Header.Get("Authorization") != "":
		refuse(http.StatusBadRequest, "invalid_request", "a second client credential besides the certificate")
	default:
		n := s.issued.Add(1)
		s.mu.Lock()
		s.peers = append(s.peers, cn)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("at-mtls-%s-%d", cn, n), "token_type": "Bearer", "expires_in": 3600})
	}
}

func (s *mtlsTokenServer) refused() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.refusals)
}

// issuerServer serves an authorization server's metadata at the RFC 8414
// URL of its own origin (the issuer), and counts the requests for it.
type issuerServer struct {
	srv    *httptest.Server
	issuer string
	hits   atomic.Int64
	mu     sync.Mutex
	doc    map[string]any
	status int // when not 0 and not 200, the answer instead of the document
	// cacheControl, when set, is the document's Cache-Control header.
	cacheControl string
}

func newIssuerServer(t *testing.T) *issuerServer {
	t.Helper()
	s := &issuerServer{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if r.URL.Path != "/.well-known/oauth-authorization-server" {
			http.NotFound(w, r)
			return
		}
		s.mu.Lock()
		doc, status, cacheControl := s.doc, s.status, s.cacheControl
		s.mu.Unlock()
		if status != 0 && status != http.StatusOK {
			http.Error(w, "temporarily unavailable", status)
			return
		}
		if cacheControl != "" {
			w.Header().Set("Cache-Control", cacheControl)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(doc)
	}))
	t.Cleanup(s.srv.Close)
	s.issuer = s.srv.URL
	return s
}

// set makes the server answer doc, or status when it is not 200.
func (s *issuerServer) set(doc map[string]any, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc, s.status = doc, status
}

// setCacheControl sets the document's Cache-Control header ("": none).
func (s *issuerServer) setCacheControl(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cacheControl = v
}

// assertNoValueLeak fails if text holds one of the values (assertions,
// secrets), or the signature of an assertion on its own.
func assertNoValueLeak(t *testing.T, where, text string, values ...string) {
	t.Helper()
	for _, v := range values {
		if v == "" {
			t.Fatalf("assertNoValueLeak(%s): empty value", where)
		}
		if strings.Contains(text, v) {
			t.Errorf("%s holds a secret value or an assertion (%d characters)", where, len(v))
			continue
		}
		if parts := strings.Split(v, "."); len(parts) == 3 && len(parts[2]) >= 16 && strings.Contains(text, parts[2]) {
			t.Errorf("%s holds an assertion's signature", where)
		}
	}
}
