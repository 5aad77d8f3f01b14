package oauthbearer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Pushed authorization requests (RFC 9126) and the issuer check (RFC 9207)
// in the consent flow, through a real Caddy, against the real
// authorization server of the tests (npm's oidc-provider, oidc_test.go),
// driven over HTTP (oidcAuthorize); the browser test is in
// iss_browser_test.go.

// parSite is a Caddy whose consent endpoints (under /oauth/) connect
// accounts at op for the client web (dpopOIDCConfig's).
type parSite struct {
	t        *testing.T
	c        *testCaddy
	op       *oidcProvider
	addr     string
	redirect string
	client   *http.Client // Caddy's side: a cookie jar, redirects not followed
}

// newPARSite starts op with the configuration opCfg makes for the callback
// URL, and a Caddy whose oauth_bearer_consent has the client lines client
// (default: web's, client_secret_basic) and the lines more. The issuer is
// configured (discovery: endpoints, PAR, iss) unless more says otherwise
// through noIssuer.
func newPARSite(t *testing.T, opCfg func(redirect string) oidcConfig, client, more string) *parSite {
	t.Helper()
	addr := freeAddr(t)
	s := &parSite{t: t, addr: addr, redirect: "http://" + addr + "/oauth/callback"}
	s.op = startOIDCProvider(t, opCfg(s.redirect))
	if client == "" {
		client = "client_id web\n\t\tclient_secret web-secret"
	}
	site := fmt.Sprintf(`http://LISTEN {
	oauth_bearer_consent /oauth/* {
		issuer        %s
		%s
		redirect_uri  %s
		scope         openid offline_access
		prompt        consent
		%s
	}
	respond "not a consent endpoint" 404
}`, s.op.URL, client, s.redirect, more)
	s.c = startCaddyAt(t, addr, site)
	jar, _ := cookiejar.New(nil)
	s.client = &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return s
}

func (s *parSite) url(p string) string { return "http://" + s.addr + p }

// connect posts the connect form for account as a browser would, and
// returns the answer (its body read).
func (s *parSite) connect(account string) (*http.Response, string) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.url("/oauth/connect"), strings.NewReader(url.Values{"account": {account}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "text/html")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// callback brings the authorization response cb back to Caddy's callback
// in the browser that started the flow, and returns the page.
func (s *parSite) callback(cb url.Values) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.redirect+"?"+cb.Encode(), nil)
	req.Header.Set("Accept", "text/html")
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// connected reports whether the consent handler has a grant for account.
func (s *parSite) connected(account string) bool {
	s.t.Helper()
	resp, err := testClient.Get(s.url("/oauth/status?account=" + url.QueryEscape(account)))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Connected bool }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		s.t.Fatal(err)
	}
	return st.Connected
}

// flow runs a whole consent for account: connect, the provider's pages,
// the callback. It returns connect's redirect and the callback's page.
func (s *parSite) flow(account string) (redirect *url.URL, status int, page string) {
	s.t.Helper()
	resp, body := s.connect(account)
	if resp.StatusCode != http.StatusSeeOther {
		s.t.Fatalf("connect answered %d: %s", resp.StatusCode, body)
	}
	redirect, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		s.t.Fatal(err)
	}
	cb := oidcAuthorize(s.t, redirect.String(), s.redirect, false)
	status, page = s.callback(cb)
	return redirect, status, page
}

// queryKeys are a URL's query parameter names, sorted.
func queryKeys(u *url.URL) []string {
	var keys []string
	for k := range u.Query() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// oidcWithoutPAR is dpopOIDCConfig with pushed authorization requests off.
func oidcWithoutPAR(redirect string) oidcConfig {
	cfg := dpopOIDCConfig(redirect)
	cfg.Features["pushedAuthorizationRequests"] = map[string]any{"enabled": false}
	return cfg
}

// par auto (the default) pushes when the issuer's metadata names the
// endpoint: the server sees the push, the browser goes to the authorize
// URL with client_id and request_uri alone, and the flow completes (the
// code exchange with the PKCE verifier works: the challenge was pushed).
func TestPARConsentAutoFromDiscovery(t *testing.T) {
	s := newPARSite(t, dpopOIDCConfig, "", "")
	redirect, status, page := s.flow("alice")
	if got := queryKeys(redirect); !slices.Equal(got, []string{"client_id", "request_uri"}) || redirect.Query().Get("client_id") != "web" {
		t.Errorf("the browser was sent to %s (parameters %v), want client_id and request_uri only", redirect, got)
	}
	if !strings.HasPrefix(redirect.String(), s.op.authorizeURL()+"?") || !strings.HasPrefix(redirect.Query().Get("request_uri"), "urn:ietf:params:oauth:request_uri:") {
		t.Errorf("redirect %s: want the authorize URL with a request_uri", redirect)
	}
	ev := s.op.events(t)
	if ev.Counts["pushed_authorization_request.success"] != 1 {
		t.Errorf("the server saw %d pushes, want 1 (events %v)", ev.Counts["pushed_authorization_request.success"], ev.Counts)
	}
	if status != 200 || !strings.Contains(page, "alice is connected") {
		t.Fatalf("callback answered %d: %s", status, page)
	}
	if ev.Counts["grant.success"] != 1 || !s.connected("alice") {
		t.Errorf("code exchanges %d, connected %v; want 1, true", ev.Counts["grant.success"], s.connected("alice"))
	}
	if lines := logLinesOf(s.c, "consent started"); len(lines) != 1 || lines[0]["pushed"] != true {
		t.Errorf("log lines consent started: %v, want one with pushed true", lines)
	}
}

// par off: never pushed, even when the server names an endpoint: the
// browser carries the whole request, and the flow completes.
func TestPAROffWithEndpointRedirectsPlainly(t *testing.T) {
	s := newPARSite(t, dpopOIDCConfig, "", "par off")
	redirect, status, page := s.flow("alice")
	want := []string{"client_id", "code_challenge", "code_challenge_method", "prompt", "redirect_uri", "response_type", "scope", "state"}
	if got := queryKeys(redirect); !slices.Equal(got, want) {
		t.Errorf("the browser was sent with %v, want %v", got, want)
	}
	if n := s.op.events(t).Counts["pushed_authorization_request.success"]; n != 0 {
		t.Errorf("the server saw %d pushes with par off", n)
	}
	if status != 200 || !s.connected("alice") {
		t.Errorf("callback answered %d: %s", status, page)
	}
}

// par on against a server without a PAR endpoint: connect refuses with a
// page and a log line naming the provider, sets no state cookie and never
// sends the browser to the provider; par auto there redirects plainly.
func TestPAROnWithoutEndpointRefuses(t *testing.T) {
	s := newPARSite(t, oidcWithoutPAR, "", "par on")
	resp, body := s.connect("alice")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Location") != "" {
		t.Fatalf("connect answered %d (Location %q), want 502 and no redirect", resp.StatusCode, resp.Header.Get("Location"))
	}
	if !strings.Contains(body, "does not take pushed authorization requests") || !strings.Contains(body, "par on") {
		t.Errorf("page: %s", body)
	}
	if c := resp.Header.Values("Set-Cookie"); len(c) != 0 {
		t.Errorf("a refused connect set cookies %v", c)
	}
	lines := logLinesOf(s.c, "par is on, but the provider names no pushed authorization request endpoint: set par_url, or par auto")
	if len(lines) != 1 || lines[0]["provider"] != "generic" || lines[0]["issuer"] != s.op.URL {
		t.Errorf("log lines %v, want one naming the provider and the issuer", lines)
	}
	if ev := s.op.events(t); ev.Counts["authorization.success"] != 0 || ev.Counts["pushed_authorization_request.success"] != 0 {
		t.Errorf("the provider saw the request: %v", ev.Counts)
	}
}

func TestPARAutoWithoutEndpointRedirectsPlainly(t *testing.T) {
	s := newPARSite(t, oidcWithoutPAR, "", "")
	redirect, status, page := s.flow("alice")
	if redirect.Query().Get("request_uri") != "" || redirect.Query().Get("code_challenge") == "" {
		t.Errorf("redirect %s, want the plain authorization request", redirect)
	}
	if status != 200 || !s.connected("alice") {
		t.Errorf("callback answered %d: %s", status, page)
	}
}

// A push the server refuses (a wrong secret): the page names the provider
// and the OAuth error code, the log line too, and neither holds the
// secret.
func TestPARRefusedNamesProviderAndCode(t *testing.T) {
	s := newPARSite(t, dpopOIDCConfig, "client_id web\n\t\tclient_secret wrong-secret-123", "display_name \"Test IdP\"")
	resp, body := s.connect("alice")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "Test IdP refused the authorization request (invalid_client)") {
		t.Fatalf("connect answered %d: %s", resp.StatusCode, body)
	}
	lines := logLinesOf(s.c, "pushed authorization request refused")
	if len(lines) != 1 || lines[0]["error"] != "invalid_client" || lines[0]["provider"] != "generic" || lines[0]["endpoint"] != s.op.parURL() {
		t.Errorf("log lines %v", lines)
	}
	if logs := s.c.logs(); strings.Contains(logs, "wrong-secret-123") || strings.Contains(body, "wrong-secret-123") {
		t.Errorf("the secret is in the log or the page")
	}
}

// The push authenticates with private_key_jwt, as the token requests do:
// oidc-provider verifies the assertion (its signature with the registered
// key, aud, single use) at the PAR endpoint and then at the token
// endpoint.
func TestPARPrivateKeyJWT(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(t.TempDir(), "client.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	coord := func(n *big.Int) string { return base64.RawURLEncoding.EncodeToString(n.FillBytes(make([]byte, 32))) }
	jwk := map[string]any{"kty": "EC", "crv": "P-256", "x": coord(key.X), "y": coord(key.Y), "kid": "k1", "use": "sig", "alg": "ES256"}
	cfg := func(redirect string) oidcConfig {
		c := dpopOIDCConfig(redirect)
		c.Clients = append(c.Clients, oidcClient{ClientID: "pkj", RedirectURIs: []string{redirect},
			GrantTypes: []string{"authorization_code", "refresh_token"}, ResponseTypes: []string{"code"},
			TokenEndpointAuthMethod: "private_key_jwt",
			Extra:                   map[string]any{"jwks": map[string]any{"keys": []any{jwk}}, "token_endpoint_auth_signing_alg": "ES256"}})
		return c
	}
	s := newPARSite(t, cfg, fmt.Sprintf("client_id pkj\n\t\tclient_auth private_key_jwt\n\t\tprivate_key %s\n\t\tkey_id k1", keyFile), "par on")
	redirect, status, page := s.flow("alice")
	if redirect.Query().Get("request_uri") == "" || redirect.Query().Get("client_id") != "pkj" {
		t.Errorf("redirect %s, want a pushed request", redirect)
	}
	ev := s.op.events(t)
	if status != 200 || !s.connected("alice") || ev.Counts["pushed_authorization_request.success"] != 1 || ev.Counts["grant.success"] != 1 {
		t.Fatalf("callback %d (%s); events %v", status, page, ev.Counts)
	}
}

// What is pushed is what the plain redirect carries, every parameter,
// with the client's authentication (Basic here) on the request and no
// secret in the form; the browser then gets client_id and request_uri
// alone. A recording PAR endpoint (par_url) stands in for the provider's.
func TestPARPushesTheWholeRequest(t *testing.T) {
	var mu sync.Mutex
	var forms []url.Values
	var auths []string
	par := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		mu.Lock()
		forms, auths = append(forms, r.PostForm), append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"request_uri":"urn:ietf:params:oauth:request_uri:rec-1","expires_in":60}`))
	}))
	t.Cleanup(par.Close)
	addr := freeAddr(t)
	redirectURI := "http://" + addr + "/oauth/callback"
	c := startCaddyAt(t, addr, fmt.Sprintf(`http://LISTEN {
	oauth_bearer_consent /oauth/* {
		client_id     app
		client_secret app-secret-456
		client_auth   basic
		token_url     %[1]s/token
		authorize_url %[1]s/authorize?tenant=t1
		par_url       %[1]s/par
		redirect_uri  %[2]s
		scope         read write
		prompt        login
	}
}`, par.URL, redirectURI))
	s := &parSite{t: t, c: c, addr: addr, redirect: redirectURI}
	jar, _ := cookiejar.New(nil)
	s.client = &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, body := s.connect("alice")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("connect answered %d: %s", resp.StatusCode, body)
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if got := queryKeys(loc); !slices.Equal(got, []string{"client_id", "request_uri", "tenant"}) || loc.Query().Get("request_uri") != "urn:ietf:params:oauth:request_uri:rec-1" {
		t.Errorf("the browser was sent to %s", loc)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(forms) != 1 {
		t.Fatalf("%d pushes, want 1", len(forms))
	}
	f := forms[0]
	want := []string{"client_id", "code_challenge", "code_challenge_method", "prompt", "redirect_uri", "response_type", "scope", "state"}
	var got []string
	for k := range f {
		got = append(got, k)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("pushed %v, want %v", got, want)
	}
	if f.Get("client_id") != "app" || f.Get("redirect_uri") != redirectURI || f.Get("response_type") != "code" ||
		f.Get("scope") != "read write" || f.Get("prompt") != "login" || f.Get("code_challenge_method") != "S256" || len(f.Get("state")) < 32 {
		t.Errorf("pushed %v", f)
	}
	if auths[0] != "Basic "+base64.StdEncoding.EncodeToString([]byte("app:app-secret-456")) {
		t.Errorf("the push's Authorization is %q, want Basic with the client's credentials", auths[0])
	}
}

// The issuer's metadata cannot be read, the authorization endpoint being
// configured: par auto redirects without pushing (and says so in the
// log), par on refuses.
func TestPARDiscoveryFailure(t *testing.T) {
	for _, mode := range []string{"auto", "on"} {
		t.Run(mode, func(t *testing.T) {
			dead := "http://" + freeAddr(t) // nothing listens there
			addr := freeAddr(t)
			redirectURI := "http://" + addr + "/oauth/callback"
			c := startCaddyAt(t, addr, fmt.Sprintf(`http://LISTEN {
	oauth_bearer_consent /oauth/* {
		client_id     app
		client_secret app-secret
		issuer        %[1]s
		token_url     %[1]s/token
		authorize_url %[1]s/authorize
		redirect_uri  %[2]s
		par           %[3]s
	}
}`, dead, redirectURI, mode))
			jar, _ := cookiejar.New(nil)
			s := &parSite{t: t, c: c, addr: addr, redirect: redirectURI, client: &http.Client{Jar: jar, Timeout: 30 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
			resp, body := s.connect("alice")
			loc, _ := url.Parse(resp.Header.Get("Location"))
			switch mode {
			case "auto":
				if resp.StatusCode != http.StatusSeeOther || loc.Query().Get("state") == "" || loc.Query().Get("request_uri") != "" {
					t.Errorf("connect answered %d, Location %s: want the plain redirect", resp.StatusCode, loc)
				}
				if n := len(logLinesOf(c, "discovering the pushed authorization request endpoint failed: redirecting without pushing (par auto)")); n != 1 {
					t.Errorf("%d warnings logged, want 1", n)
				}
			case "on":
				if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "requires pushed authorization requests (par on)") {
					t.Errorf("connect answered %d: %s", resp.StatusCode, body)
				}
			}
		})
	}
}
