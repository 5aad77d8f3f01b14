package oauthclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// parServer is a pushed authorization request endpoint whose answers the
// test scripts; it records what it received.
type parServer struct {
	*httptest.Server
	mu       sync.Mutex
	answers  []func(w http.ResponseWriter, r *http.Request)
	requests []*http.Request
	forms    []url.Values
}

func newPARServer(t *testing.T, answers ...func(w http.ResponseWriter, r *http.Request)) *parServer {
	s := &parServer{answers: answers}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		s.mu.Lock()
		n := len(s.requests)
		s.requests = append(s.requests, r)
		s.forms = append(s.forms, r.PostForm)
		s.mu.Unlock()
		if n >= len(s.answers) {
			http.Error(w, "unexpected request", http.StatusTeapot)
			return
		}
		s.answers[n](w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *parServer) endpoint() string { return s.URL + "/par" }

func answer(status int, body string, h ...string) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(h); i += 2 {
			w.Header().Set(h[i], h[i+1])
		}
		if w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	}
}

func authParams() url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {"app"},
		"redirect_uri":          {"https://proxy.example.com/oauth/callback"},
		"scope":                 {"openid offline_access"},
		"state":                 {"s-123"},
		"code_challenge":        {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"},
		"code_challenge_method": {"S256"},
	}
}

func basicAuth(calls *int) ClientAuth {
	return func(endpoint string, form url.Values, h http.Header) error {
		*calls++
		h.Set("Authorization", "Basic "+"YXBwOnNlY3JldA==") // app:secret
		return nil
	}
}

func TestPushAuthorizationRequest(t *testing.T) {
	const created = `{"request_uri":"urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c","expires_in":60}`
	s := newPARServer(t, answer(201, created))
	params := authParams()
	before := params.Encode()
	calls := 0
	res, err := PushAuthorizationRequest(context.Background(), nil, PARRequest{
		Endpoint: s.endpoint(), Params: params, ClientAuth: basicAuth(&calls),
		Header: http.Header{"User-Agent": {"caddy-oauth-bearer-test"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.RequestURI != "urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c" || res.ExpiresIn != time.Minute {
		t.Errorf("answer %+v", res)
	}
	r := s.requests[0]
	if r.Method != "POST" || r.URL.Path != "/par" || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		t.Errorf("request %s %s %s", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
	}
	if r.Header.Get("Authorization") != "Basic YXBwOnNlY3JldA==" || calls != 1 || r.Header.Get("User-Agent") != "caddy-oauth-bearer-test" {
		t.Errorf("client authentication: %q after %d calls; user agent %q", r.Header.Get("Authorization"), calls, r.Header.Get("User-Agent"))
	}
	if r.Header.Get("DPoP") != "" {
		t.Errorf("a proof without a DPoP key")
	}
	if got := s.forms[0].Encode(); got != before {
		t.Errorf("form sent %s, want %s", got, before)
	}
	if params.Encode() != before {
		t.Errorf("the caller's parameters were modified")
	}
}

func TestPushAuthorizationRequestAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answer  func(http.ResponseWriter, *http.Request)
		want    *PARResponse
		wantErr string
		code    string
		status  int
	}{
		{"200 taken too", answer(200, `{"request_uri":"urn:x:1","expires_in":90}`), &PARResponse{"urn:x:1", 90 * time.Second}, "", "", 0},
		{"no expires_in", answer(201, `{"request_uri":"urn:x:2"}`), &PARResponse{"urn:x:2", 0}, "", "", 0},
		{"expires_in as a string", answer(201, `{"request_uri":"urn:x:3","expires_in":"30"}`), &PARResponse{"urn:x:3", 30 * time.Second}, "", "", 0},
		{"negative expires_in", answer(201, `{"request_uri":"urn:x:4","expires_in":-1}`), nil, "expires_in -1 is not a positive number", "", 201},
		{"no request_uri", answer(201, `{"expires_in":60}`), nil, "the answer has no request_uri", "", 201},
		{"not JSON", answer(201, `<html>`, "Content-Type", "text/html"), nil, "not the expected JSON object: text/html, 6 bytes", "", 201},
		{"invalid_request", answer(400, `{"error":"invalid_request","error_description":"redirect_uri is not registered\nfor this client"}`),
			nil, "/par: invalid_request: redirect_uri is not registeredfor this client (HTTP 400)", "invalid_request", 400},
		{"invalid_client", answer(401, `{"error":"invalid_client"}`, "WWW-Authenticate", `Basic realm="as"`), nil, ": invalid_client (HTTP 401)", "invalid_client", 401},
		{"server error page", answer(502, `<html>bad gateway, token=abc</html>`, "Content-Type", "text/html; charset=utf-8"), nil, "an unexpected answer: text/html, 35 bytes (HTTP 502)", "", 502},
		{"redirect not followed", answer(307, ``, "Location", "https://elsewhere.example/par"), nil, "a redirect (a pushed authorization request endpoint answers directly)", "", 307},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newPARServer(t, tc.answer, answer(201, `{"request_uri":"urn:followed","expires_in":60}`))
			calls := 0
			res, err := PushAuthorizationRequest(context.Background(), s.Client(), PARRequest{Endpoint: s.endpoint() + "?tenant=t1", Params: authParams(), ClientAuth: basicAuth(&calls)})
			if tc.want != nil {
				if err != nil || *res != *tc.want {
					t.Fatalf("%+v, %v; want %+v", res, err, tc.want)
				}
				return
			}
			var pe *PARError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T), want a *PARError", err, err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) || pe.Code != tc.code || pe.Status != tc.status {
				t.Errorf("error %q code %q status %d; want it to say %q, code %q, status %d", err, pe.Code, pe.Status, tc.wantErr, tc.code, tc.status)
			}
			if strings.Contains(err.Error(), "tenant=t1") || strings.Contains(err.Error(), "token=abc") || strings.Contains(err.Error(), "YXBw") {
				t.Errorf("the error quotes the query, the body or the credentials: %v", err)
			}
			if len(s.requests) != 1 {
				t.Errorf("%d requests, want 1", len(s.requests))
			}
		})
	}
}

// A DPoP-bound push (RFC 9449 §10.1): a proof for POST to the endpoint;
// the server's nonce challenge is answered once, with the nonce, a fresh
// proof and fresh client authentication; the nonce is kept for next time.
func TestPushAuthorizationRequestDPoPNonce(t *testing.T) {
	const challenge = `{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}`
	k := testDPoPKey(t, AlgES256)
	s := newPARServer(t,
		answer(400, challenge, "DPoP-Nonce", "nonce-1"),
		answer(201, `{"request_uri":"urn:x:dpop","expires_in":60}`, "DPoP-Nonce", "nonce-2"),
	)
	var nonces Nonces
	calls := 0
	res, err := PushAuthorizationRequest(context.Background(), nil, PARRequest{
		Endpoint: s.endpoint(), Params: authParams(), ClientAuth: basicAuth(&calls), DPoP: k, Nonces: &nonces,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.RequestURI != "urn:x:dpop" || len(s.requests) != 2 || calls != 2 {
		t.Fatalf("%+v after %d requests and %d client authentications; want 2 and 2", res, len(s.requests), calls)
	}
	htu, _ := NormalizeHTU(s.endpoint())
	var jtis []any
	for i, wantNonce := range []any{nil, "nonce-1"} {
		vp := verifyProof(t, s.requests[i].Header.Get("DPoP"))
		if vp.claims["htm"] != "POST" || vp.claims["htu"] != htu || vp.claims["nonce"] != wantNonce || vp.claims["ath"] != nil {
			t.Errorf("proof %d claims %v; want POST %s nonce %v, no ath", i, vp.claims, htu, wantNonce)
		}
		jtis = append(jtis, vp.claims["jti"])
	}
	if jtis[0] == jtis[1] {
		t.Errorf("the retry reused the proof's jti")
	}
	origin, _ := Origin(s.URL)
	if got := nonces.Get(origin); got != "nonce-2" {
		t.Errorf("nonce kept %q, want the latest, nonce-2", got)
	}

	// A second challenge is not answered: the error names the code.
	s2 := newPARServer(t,
		answer(400, challenge, "DPoP-Nonce", "n-a"),
		answer(400, challenge, "DPoP-Nonce", "n-b"),
		answer(201, `{"request_uri":"urn:x:third","expires_in":60}`),
	)
	_, err = PushAuthorizationRequest(context.Background(), nil, PARRequest{Endpoint: s2.endpoint(), Params: authParams(), DPoP: k})
	var pe *PARError
	if !errors.As(err, &pe) || pe.Code != "use_dpop_nonce" || len(s2.requests) != 2 {
		t.Errorf("after two challenges: %v, %d requests; want a use_dpop_nonce error after 2", err, len(s2.requests))
	}
}

func TestPushAuthorizationRequestRefusesBeforeSending(t *testing.T) {
	s := newPARServer(t)
	failing := func(string, url.Values, http.Header) error { return errors.New("private_key: cannot sign") }
	_, err := PushAuthorizationRequest(context.Background(), nil, PARRequest{Endpoint: s.endpoint(), Params: authParams(), ClientAuth: failing})
	if err == nil || !strings.Contains(err.Error(), "client authentication: private_key: cannot sign") {
		t.Errorf("error %v", err)
	}
	for _, ep := range []string{"", "/par", "ftp://as.example/par", "://", "ftp://u:pw-secret@as.example/par", "https://u:pw-secret@[::1/par"} {
		_, err := PushAuthorizationRequest(context.Background(), nil, PARRequest{Endpoint: ep, Params: authParams()})
		if err == nil {
			t.Errorf("endpoint %q: no error", ep)
		} else if strings.Contains(err.Error(), "pw-secret") {
			t.Errorf("endpoint %q: the error shows the password: %v", ep, err)
		}
	}
	if len(s.requests) != 0 {
		t.Errorf("%d requests sent", len(s.requests))
	}
	// A transport failure names the endpoint.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	_, err = PushAuthorizationRequest(context.Background(), nil, PARRequest{Endpoint: dead.URL + "/par", Params: authParams()})
	if err == nil || !strings.Contains(err.Error(), "pushed authorization request to "+dead.URL+"/par: dial tcp") {
		t.Errorf("transport failure: %v", err)
	}
}

func TestAuthorizationRedirectURL(t *testing.T) {
	for _, tc := range []struct{ ep, client, uri, want string }{
		{"https://as.example.com/authorize", "app", "urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c",
			"https://as.example.com/authorize?client_id=app&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3A6esc_11ACC5bwc014ltc14eY22c"},
		{"https://as.example.com/authorize?tenant=t1#frag", "app", "urn:x", "https://as.example.com/authorize?client_id=app&request_uri=urn%3Ax&tenant=t1"},
		{"https://as.example.com/authorize?client_id=other&scope=x", "app", "urn:x", "https://as.example.com/authorize?client_id=app&request_uri=urn%3Ax&scope=x"},
		{"/authorize", "app", "urn:x", ""},
		{"https://as.example.com/authorize", "", "urn:x", ""},
		{"https://as.example.com/authorize", "app", "", ""},
	} {
		got, err := AuthorizationRedirectURL(tc.ep, tc.client, tc.uri)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s %s %s: %s, want an error", tc.ep, tc.client, tc.uri, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.ep, got, err, tc.want)
		}
	}
}
