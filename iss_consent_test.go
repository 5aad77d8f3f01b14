package oauthbearer

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The issuer in the authorization response (RFC 9207) at the consent
// handler's callback, through a real Caddy against oidc-provider (which
// promises iss in its metadata; server.mjs's authResponseIss replaces or
// drops it).

// oidcWithIss is dpopOIDCConfig whose authorization responses carry iss
// (authResponseIss: "omit", or another issuer).
func oidcWithIss(iss string) func(string) oidcConfig {
	return func(redirect string) oidcConfig {
		cfg := dpopOIDCConfig(redirect)
		cfg.AuthResponseIss = iss
		return cfg
	}
}

// issRefused checks a callback the issuer check refused: the page, the
// log line, no code exchange, no grant.
func issRefused(t *testing.T, s *parSite, status int, page, wantIss string) {
	t.Helper()
	if status != http.StatusBadRequest || !strings.Contains(page, "Sign-in refused") || !strings.Contains(page, "was not used") {
		t.Errorf("callback answered %d: %s", status, page)
	}
	if n := s.op.events(t).Counts["grant.success"]; n != 0 {
		t.Errorf("the code was exchanged (%d grants issued)", n)
	}
	if s.connected("alice") {
		t.Errorf("alice is connected after a refused response")
	}
	lines := logLinesOf(s.c, "authorization response refused: issuer mismatch (a mix-up attack, or a misconfigured issuer); the code was not redeemed")
	if len(lines) != 1 || lines[0]["provider"] != "generic" || lines[0]["account"] != "alice" || lines[0]["expected"] != s.op.URL {
		t.Fatalf("log lines %v", lines)
	}
	if got := fmt.Sprint(lines[0]["iss"]); got != wantIss {
		t.Errorf("logged iss %s, want %s", got, wantIss)
	}
}

// Another issuer's iss (a mix-up): refused before the code is used.
func TestIssConsentMismatchRefused(t *testing.T) {
	s := newPARSite(t, oidcWithIss("https://attacker.example"), "", "")
	_, status, page := s.flow("alice")
	issRefused(t, s, status, page, "[https://attacker.example]")
	if !strings.Contains(page, "was not sent by Generic OAuth 2.0 server") {
		t.Errorf("page: %s", page)
	}
}

// No iss though the metadata promises it (authorization_response_iss_parameter_supported):
// refused as well.
func TestIssConsentMissingRefused(t *testing.T) {
	s := newPARSite(t, oidcWithIss("omit"), "", "")
	_, status, page := s.flow("alice")
	issRefused(t, s, status, page, "[]")
	if !strings.Contains(page, "does not say it was sent by") {
		t.Errorf("page: %s", page)
	}
}

// The provider's own iss: accepted, on success (the grant stored) and on
// an error response alike (the provider's error shown, not a mix-up).
func TestIssConsentCorrectAccepted(t *testing.T) {
	s := newPARSite(t, dpopOIDCConfig, "", "par off")
	resp, body := s.connect("alice")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("connect answered %d: %s", resp.StatusCode, body)
	}
	cb := oidcAuthorize(t, resp.Header.Get("Location"), s.redirect, false)
	if cb.Get("iss") != s.op.URL {
		t.Fatalf("the provider sent iss %q, want %s", cb.Get("iss"), s.op.URL)
	}
	if status, page := s.callback(cb); status != 200 || !s.connected("alice") {
		t.Fatalf("callback answered %d: %s", status, page)
	}

	resp, _ = s.connect("bob")
	cb = oidcAuthorize(t, resp.Header.Get("Location"), s.redirect, true)
	if status, page := s.callback(cb); status != 400 || !strings.Contains(page, "The provider answered access_denied") {
		t.Errorf("denied: callback answered %d: %s", status, page)
	}
	if lines := logLinesOf(s.c, "authorization response refused: issuer mismatch (a mix-up attack, or a misconfigured issuer); the code was not redeemed"); len(lines) != 0 {
		t.Errorf("refused: %v", lines)
	}
}

// An error response from another issuer is refused as a mix-up too: its
// error is not shown as the provider's.
func TestIssConsentMismatchOnErrorResponse(t *testing.T) {
	s := newPARSite(t, oidcWithIss("https://attacker.example"), "", "")
	resp, _ := s.connect("alice")
	cb := oidcAuthorize(t, resp.Header.Get("Location"), s.redirect, true)
	status, page := s.callback(cb)
	if status != 400 || !strings.Contains(page, "Sign-in refused") || strings.Contains(page, "access_denied") {
		t.Errorf("callback answered %d: %s", status, page)
	}
}

// Without issuer (endpoints configured by hand) and a server that sends
// no iss: the callback works as before the check.
func TestIssConsentNoIssuerNoIss(t *testing.T) {
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-1"}`))
	}))
	t.Cleanup(tokens.Close)
	addr := freeAddr(t)
	redirectURI := "http://" + addr + "/oauth/callback"
	c := startCaddyAt(t, addr, fmt.Sprintf(`http://LISTEN {
	oauth_bearer_consent /oauth/* {
		client_id     app
		client_secret app-secret
		token_url     %[1]s/token
		authorize_url %[1]s/authorize
		redirect_uri  %[2]s
	}
}`, tokens.URL, redirectURI))
	jar, _ := cookiejar.New(nil)
	s := &parSite{t: t, c: c, addr: addr, redirect: redirectURI, client: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	resp, body := s.connect("alice")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || loc.Query().Get("request_uri") != "" {
		t.Fatalf("connect answered %d (%s): %s", resp.StatusCode, loc, body)
	}
	if status, page := s.callback(url.Values{"code": {"c-1"}, "state": {loc.Query().Get("state")}}); status != 200 || !s.connected("alice") {
		t.Errorf("callback answered %d: %s", status, page)
	}
}
