package oauthbearer

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The grant subdirectives: what they set, and each mistake named with its
// line and subdirective.
func TestParseGrantSubdirectives(t *testing.T) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oauth_bearer eventtemple {
	grant           authorization_code
	client_id       id
	client_secret   {env.S}
	redirect_uri    https://proxy.example.com/oauth/et/callback
	connect_path    /oauth/et/start
	status_path     /oauth/et/state
	disconnect_path /oauth/et/stop
	authorize_url   https://auth.example.com/authorize
	refresh_url     https://auth.example.com/refresh
	revoke_url      https://auth.example.com/revoke
	pkce            off
	account         {http.request.header.X-Account}
}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Grant != "authorization_code" || h.RedirectURI != "https://proxy.example.com/oauth/et/callback" ||
		h.ConnectPath != "/oauth/et/start" || h.StatusPath != "/oauth/et/state" || h.DisconnectPath != "/oauth/et/stop" ||
		h.AuthorizeURL != "https://auth.example.com/authorize" || h.RefreshURL != "https://auth.example.com/refresh" ||
		h.RevokeURL != "https://auth.example.com/revoke" || h.PKCE == nil || *h.PKCE ||
		h.Account != "{http.request.header.X-Account}" {
		t.Errorf("parsed: %+v", h)
	}

	h = new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oauth_bearer {\n token_url https://a/t\n client_id i\n client_secret s\n grant refresh_token\n refresh_token {env.RT}\n}")); err != nil {
		t.Fatal(err)
	}
	if h.Grant != "refresh_token" || h.RefreshToken != "{env.RT}" {
		t.Errorf("refresh_token grant: %+v", h)
	}
}

func TestParseGrantErrors(t *testing.T) {
	const head = "oauth_bearer eventtemple {\n\tclient_id id\n\tclient_secret s3cret-value\n"
	tests := []struct {
		name, body string
		line       int
		want       string
	}{
		{"bad grant", "\tgrant password\n", 4, "grant: 'password'"},
		{"redirect_uri not absolute", "\tgrant authorization_code\n\tredirect_uri /callback\n", 5, "redirect_uri"},
		{"redirect_uri over plain http", "\tgrant authorization_code\n\tredirect_uri http://proxy.example.com/cb\n", 5, "must use https"},
		{"redirect_uri without the code grant", "\tredirect_uri https://p.example.com/cb\n", 5, "redirect_uri: only with 'grant authorization_code'"},
		{"refresh_token without its grant", "\trefresh_token {env.RT}\n", 5, "refresh_token: only with 'grant refresh_token'"},
		{"refresh_token grant without a token", "\tgrant refresh_token\n", 5, "missing subdirective 'refresh_token'"},
		{"connect_path not absolute", "\tconnect_path start\n", 4, "connect_path: 'start' must start with /"},
		{"authorize_url over plain http", "\tauthorize_url http://auth.example.com/a\n", 4, "authorize_url"},
		{"pkce value", "\tpkce maybe\n", 4, "pkce: 'maybe' is not on or off"},
		{"hostile account", "\taccount ../../etc\n", 4, "account: invalid account name"},
		{"grant twice", "\tgrant authorization_code\n\tgrant authorization_code\n", 5, "given twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(head + tc.body + "}"))
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, "Testfile:") {
				t.Errorf("error %q lacks %q or the line", msg, tc.want)
			}
			if strings.Contains(msg, "s3cret-value") {
				t.Errorf("error %q echoes the secret", msg)
			}
		})
	}
}

func TestResolveGrantErrors(t *testing.T) {
	base := func() *Handler {
		return &Handler{Provider: "eventtemple", ClientID: "id", ClientSecret: "secret"}
	}
	tests := []struct {
		name string
		mod  func(h *Handler)
		want string
	}{
		{"redirect_uri with client_credentials", func(h *Handler) { h.RedirectURI = "https://p/cb" }, "redirect_uri: only for grant"},
		{"account with client_credentials", func(h *Handler) { h.Account = "alice" }, "account: only for grant"},
		{"unknown grant", func(h *Handler) { h.Grant = "implicit" }, "grant:"},
		{"param with a code grant", func(h *Handler) { h.Grant = "authorization_code"; h.Params = map[string]string{"a": "b"} },
			"client_credentials grant only"},
		{"refresh_token grant without token", func(h *Handler) { h.Grant = "refresh_token" }, "refresh_token is required"},
		{"refresh_token resolving empty", func(h *Handler) { h.Grant = "refresh_token"; h.RefreshToken = "{env.OAB_UNSET_RT}" },
			"refresh_token {env.OAB_UNSET_RT} resolved to an empty value"},
		{"generic consent handler without authorize_url", func(h *Handler) {
			h.Provider, h.TokenURL, h.Grant, h.RedirectURI = "", "https://a/t", "authorization_code", "https://p/cb"
		}, "authorize_url is required"},
		{"hostile literal account", func(h *Handler) { h.Grant = "authorization_code"; h.Account = "a/b" }, "invalid account name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := base()
			tc.mod(h)
			_, err := h.resolve(provisionReplacer())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	// A consent handler's endpoints derive from redirect_uri.
	h := base()
	h.Grant, h.RedirectURI, h.Scopes = "authorization_code", "https://p.example.com/oauth/et/callback", []string{"crm_read", "crm_manage"}
	if _, err := h.resolve(provisionReplacer()); err != nil {
		t.Fatal(err)
	}
	want := consentPaths{redirect: h.RedirectURI, callback: "/oauth/et/callback", connect: "/oauth/et/connect",
		status: "/oauth/et/status", disconnect: "/oauth/et/disconnect"}
	if h.paths != want || h.authorizeURL != "https://client.eventtemple.com/oauth/authorize" {
		t.Errorf("paths %+v, authorize %q", h.paths, h.authorizeURL)
	}
}

func TestCheckAccount(t *testing.T) {
	for _, ok := range []string{"default", "alice", "user@example.com", "acct-42", "A.B_c+d=e"} {
		if err := checkAccount(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", "a/b", `a\b`, "../x", ".x", "-x", "x..y", "a b", "a\x00b", strings.Repeat("a", 129), "é"} {
		if checkAccount(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
