package oauthbearer

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzTokenResponse feeds arbitrary answers to the token response parser:
// it must never panic, and a token it accepts must be usable: non-empty, a
// valid header value, expiring after it was obtained and within the cap,
// refreshed no later than it expires.
func FuzzTokenResponse(f *testing.F) {
	seeds := []struct {
		status int
		ct     string
		body   string
	}{
		{200, "application/json", `{"access_token":"a","token_type":"Bearer","expires_in":3600}`},
		{200, "application/json", `{"access_token":"a","expires_in":"3600","created_at":1700000000}`},
		{200, "application/json", `{"access_token":"eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDE4MDAsImlhdCI6MTcwMDAwMDAwMH0.","token_type":"bearer"}`},
		{200, "application/json", `{"access_token":"a","expires_in":-1}`},
		{200, "application/json", `{"access_token":"a","expires_in":1e308}`},
		{200, "application/json", `{"error":"invalid_scope"}`},
		{200, "application/x-www-form-urlencoded", `access_token=a&token_type=bearer&expires_in=60`},
		{400, "application/json", `{"error":"invalid_request","error_description":"x"}`},
		{401, "application/json", `{"message":"Unauthorized"}`},
		{429, "application/problem+json", `{"title":"Too Many Requests"}`},
		{502, "text/html", `<html>bad gateway</html>`},
		{200, "", ``},
		{302, "", ``},
	}
	for _, s := range seeds {
		f.Add(s.status, s.ct, s.body)
	}
	cfg := &credentialSet{Provider: "fuzz", clientSecret: "secret", DefaultLifetime: 10 * time.Minute}
	start := time.Unix(1_700_000_000, 0)
	clk := &clock{}
	clk.set(func() time.Time { return start })
	src := &tokenSource{env: &env{}, clock: clk} // schedules with the default refresh_before
	f.Fuzz(func(t *testing.T, status int, ct, body string) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {ct}}}
		tok, err := parseTokenResponse(cfg, resp, []byte(body), start)
		if err != nil {
			if tok != nil {
				t.Fatal("both a token and an error")
			}
			if te, ok := err.(*TokenError); !ok || te.Code == "" || te.Provider != "fuzz" {
				t.Fatalf("error %#v is not a TokenError with a code", err)
			}
			return
		}
		if status < 200 || status >= 300 {
			t.Fatalf("status %d accepted", status)
		}
		if tok.value == "" || strings.ContainsFunc(tok.value, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			t.Fatalf("unusable token %q", tok.value)
		}
		src.schedule(tok)
		if !tok.expiry.After(start) || tok.expiry.Sub(start) > maxLifetime {
			t.Fatalf("expiry %v outside (start, start+%v]", tok.expiry.Sub(start), maxLifetime)
		}
		if tok.refreshAt.After(tok.expiry) || tok.refreshAt.Before(start) {
			t.Fatalf("refreshAt %v outside [start, expiry %v]", tok.refreshAt.Sub(start), tok.expiry.Sub(start))
		}
	})
}

// FuzzCaddyfile feeds arbitrary blocks to both directives' parsers: they
// must never panic, and what they accept must hold the required fields.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"oauth_bearer eventtemple {\n client_id a\n client_secret b\n org 1\n scope x y\n}",
		"oauth_bearer {\n token_url https://a/b\n client_id a\n client_secret {env.X}\n param k v\n resource https://r\n}",
		"oauth_bearer bookable {\n environment sandbox\n client_id a\n client_secret b\n refresh_before 1m\n}",
		"oauth_bearer {\n token_header X-T p\n header X-A {http.request.uri}\n}",
		"oauth_bearer nope",
		"oauth_bearer {\n timeout -1s\n replay_max_body 1KiB\n upstream_401 off\n}",
		"oauth_bearer eventtemple {\n grant authorization_code\n client_id a\n client_secret b\n account {http.auth.user.id}\n}",
		"oauth_bearer_consent calcom {\n client_id a\n client_secret b\n redirect_uri https://p/cb\n scope A B\n pkce off\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil && (h.ClientID == "" || h.ClientSecret == "") {
			t.Fatalf("oauth_bearer accepted a block without credentials: %q", input)
		}
		c := new(ConsentHandler)
		if err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil && (c.ClientID == "" || c.ClientSecret == "" || c.RedirectURI == "") {
			t.Fatalf("oauth_bearer_consent accepted a block without credentials or redirect_uri: %q", input)
		}
	})
}
