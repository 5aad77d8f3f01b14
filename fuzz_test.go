package oauthbearer

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzTokenSchedule schedules tokens of any lifetime a token endpoint can
// give (up to the day internal/oauthclient caps it at: its
// FuzzTokenResponse): a token is refreshed no later than it expires and not
// before it was obtained.
func FuzzTokenSchedule(f *testing.F) {
	for _, seconds := range []float64{0.001, 1, 59, 60, 90, 119, 120, 121, 3600, 3600.5, 86400} {
		f.Add(int64(seconds * float64(time.Second)))
	}
	start := time.Unix(1_700_000_000, 0)
	clk := &clock{}
	clk.set(func() time.Time { return start })
	src := &tokenSource{env: &env{}, clock: clk} // the default refresh_before
	f.Fuzz(func(t *testing.T, lifetime int64) {
		if lifetime <= 0 || lifetime > int64(24*time.Hour) {
			return
		}
		tok := &token{value: "a", obtained: start, expiry: start.Add(time.Duration(lifetime))}
		src.schedule(tok)
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
