package oauthbearer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The grant subdirectives of both directives: what they set, and each
// mistake named with its line and subdirective.

func TestParseConsentSubdirectives(t *testing.T) {
	h := new(ConsentHandler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oauth_bearer_consent eventtemple {
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
	scope           crm_read crm_manage
	pkce            off
}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Provider != "eventtemple" || h.RedirectURI != "https://proxy.example.com/oauth/et/callback" ||
		h.ConnectPath != "/oauth/et/start" || h.StatusPath != "/oauth/et/state" || h.DisconnectPath != "/oauth/et/stop" ||
		h.AuthorizeURL != "https://auth.example.com/authorize" || h.RefreshURL != "https://auth.example.com/refresh" ||
		h.RevokeURL != "https://auth.example.com/revoke" || h.PKCE == nil || *h.PKCE ||
		strings.Join(h.Scopes, " ") != "crm_read crm_manage" {
		t.Errorf("parsed: %+v", h)
	}

	// Binding to the signed-in account, the prompt, the provider's name.
	h = new(ConsentHandler)
	err = h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oauth_bearer_consent eventtemple {
	client_id     id
	client_secret {env.S}
	redirect_uri  https://proxy.example.com/oauth/et/callback
	account       {http.auth.user.id}
	prompt        login consent
	display_name  "Event Temple (sandbox)"
}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Account != "{http.auth.user.id}" || h.Prompt != "login consent" || h.DisplayName != "Event Temple (sandbox)" {
		t.Errorf("parsed: account %q prompt %q display_name %q", h.Account, h.Prompt, h.DisplayName)
	}

	// The grant is implied.
	h = new(ConsentHandler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oauth_bearer_consent calcom {\n client_id i\n client_secret s\n redirect_uri https://p.example.com/cb\n}")); err != nil {
		t.Fatal(err)
	}
}

func TestParseInjectorGrantSubdirectives(t *testing.T) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oauth_bearer eventtemple {
	grant         authorization_code
	client_id     id
	client_secret {env.S}
	revoke_url    https://auth.example.com/revoke
	account       {http.auth.user.id}
	org           42
}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Grant != "authorization_code" || h.Account != "{http.auth.user.id}" || h.RevokeURL != "https://auth.example.com/revoke" {
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
	const creds = "\tclient_id id\n\tclient_secret s3cret-value\n"
	const consent = "oauth_bearer_consent eventtemple {\n" + creds + "\tredirect_uri https://p.example.com/oauth/cb\n"
	const inject = "oauth_bearer eventtemple {\n" + creds
	tests := []struct {
		name, input string
		line        int
		want        string
	}{
		// oauth_bearer_consent
		{"consent: another grant", consent + "\tgrant client_credentials\n}", 5, "grant: oauth_bearer_consent serves the authorization_code grant only"},
		{"consent: redirect_uri missing", "oauth_bearer_consent eventtemple {\n" + creds + "}", 1, "redirect_uri: is required"},
		{"consent: redirect_uri not absolute", "oauth_bearer_consent eventtemple {\n" + creds + "\tredirect_uri /callback\n}", 4, "redirect_uri"},
		{"consent: redirect_uri over plain http", "oauth_bearer_consent eventtemple {\n" + creds + "\tredirect_uri http://proxy.example.com/cb\n}", 4, "must use https"},
		{"consent: connect_path not absolute", consent + "\tconnect_path start\n}", 5, `connect_path: "start" must start with /`},
		{"consent: authorize_url over plain http", consent + "\tauthorize_url http://auth.example.com/a\n}", 5, "authorize_url"},
		{"consent: generic without authorize_url", "oauth_bearer_consent {\n" + creds + "\ttoken_url https://a.example.com/t\n\tredirect_uri https://p.example.com/cb\n}", 1, "authorize_url: is required"},
		{"consent: pkce value", consent + "\tpkce maybe\n}", 5, "pkce: 'maybe' is not on or off"},
		{"consent: an injector's subdirective", consent + "\torg 42\n}", 5, "org: belongs to oauth_bearer"},
		{"consent: unknown", consent + "\taccount_header X\n}", 5, "unrecognized subdirective 'account_header'"},
		{"consent: scope twice", consent + "\tscope a\n\tscope b\n}", 6, "given twice"},
		{"consent: hostile account", consent + "\taccount ../../etc\n}", 5, "account: invalid account name"},
		{"consent: account without a value", consent + "\taccount\n}", 5, "account: wrong argument count"},
		{"consent: account twice", consent + "\taccount {http.auth.user.id}\n\taccount x\n}", 6, "given twice"},
		{"consent: prompt value", consent + "\tprompt always\n}", 5, `prompt: "always" is not one of login, consent, select_account`},
		{"consent: prompt none", consent + "\tprompt login none\n}", 5, "prompt: none asks the provider not to show any page"},
		{"consent: prompt without a value", consent + "\tprompt\n}", 5, "prompt: wrong argument count"},
		{"consent: display_name without a value", consent + "\tdisplay_name\n}", 5, "display_name: wrong argument count"},
		{"inject: prompt", inject + "\tgrant authorization_code\n\tprompt login\n}", 5, "prompt: belongs to oauth_bearer_consent"},
		{"inject: display_name", inject + "\tgrant authorization_code\n\tdisplay_name X\n}", 5, "display_name: belongs to oauth_bearer_consent"},

		// oauth_bearer with a grant
		{"inject: bad grant", inject + "\tgrant password\n}", 4, `grant: "password" is not client_credentials, authorization_code, refresh_token or jwt_bearer`},
		{"inject: consent subdirective", inject + "\tgrant authorization_code\n\tredirect_uri https://p.example.com/cb\n}", 5, "redirect_uri: belongs to oauth_bearer_consent"},
		{"inject: refresh_token without its grant", inject + "\trefresh_token {env.RT}\n}", 4, "refresh_token: only for grant refresh_token, not client_credentials"},
		{"inject: refresh_token with the code grant", inject + "\tgrant authorization_code\n\trefresh_token {env.RT}\n}", 5, "refresh_token: only for grant refresh_token"},
		{"inject: refresh_token grant without a token", inject + "\tgrant refresh_token\n}", 1, "refresh_token: is required by grant refresh_token"},
		{"inject: scope with a grant", inject + "\tgrant authorization_code\n\tscope a\n}", 5, "scope: only for the client_credentials and jwt_bearer grants"},
		{"inject: param with a grant", inject + "\tgrant authorization_code\n\tparam a b\n}", 5, "param: only for the client_credentials and jwt_bearer grants, not authorization_code"},
		{"inject: account with client credentials", inject + "\taccount alice\n}", 4, "account: only for the authorization_code and refresh_token grants"},
		{"inject: hostile account", inject + "\tgrant authorization_code\n\taccount ../../etc\n}", 5, "account: invalid account name"},
		{"inject: revoke_url with client credentials", inject + "\trevoke_url https://a.example.com/r\n}", 4, "revoke_url: only for the authorization_code and refresh_token grants"},
		{"inject: grant twice", inject + "\tgrant authorization_code\n\tgrant authorization_code\n}", 5, "given twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			var err error
			if strings.HasPrefix(tc.input, "oauth_bearer_consent") {
				err = new(ConsentHandler).UnmarshalCaddyfile(d)
			} else {
				err = new(Handler).UnmarshalCaddyfile(d)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q lacks %q", msg, tc.want)
			}
			if suffix := fmt.Sprintf("Testfile:%d", tc.line); !strings.HasSuffix(msg, suffix) {
				t.Errorf("error %q does not end with %q", msg, suffix)
			}
			if strings.Contains(msg, "s3cret-value") {
				t.Errorf("error %q echoes the secret", msg)
			}
		})
	}
}

// JSON configurations meet the same rules (check and configure run in
// Provision).
func TestConfigureGrantErrors(t *testing.T) {
	base := func() *Handler {
		return &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "id", ClientSecret: "secret"}}
	}
	tests := []struct {
		name string
		mod  func(h *Handler)
		want string
	}{
		{"account with client_credentials", func(h *Handler) { h.Account = "alice" }, "account: only for the authorization_code"},
		{"unknown grant", func(h *Handler) { h.Grant = "implicit" }, "grant:"},
		{"param with a code grant", func(h *Handler) { h.Grant = "authorization_code"; h.Params = map[string]string{"a": "b"} },
			"only for the client_credentials and jwt_bearer grants"},
		{"refresh_token grant without token", func(h *Handler) { h.Grant = "refresh_token" }, "refresh_token: is required"},
		{"refresh_url with client credentials", func(h *Handler) { h.RefreshURL = "https://a.example.com/r" }, "refresh_url: only for"},
		{"hostile literal account", func(h *Handler) { h.Grant = "authorization_code"; h.Account = "a/b" }, "invalid account name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := base()
			tc.mod(h)
			_, err := h.configure(provisionReplacer())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	// The bootstrap refresh token is resolved in Provision: an empty one
	// names its placeholder.
	h := base()
	h.Grant, h.RefreshToken = "refresh_token", "{env.OAB_UNSET_RT}"
	if _, err := resolveRequired(provisionReplacer(), "refresh_token", h.RefreshToken); err == nil ||
		!strings.Contains(err.Error(), "refresh_token: {env.OAB_UNSET_RT} resolved to an empty value") {
		t.Errorf("unset refresh_token: %v", err)
	}
}

func TestConfigureConsent(t *testing.T) {
	h := &ConsentHandler{Credentials: Credentials{Provider: "eventtemple", ClientID: "id", ClientSecret: "secret"},
		RedirectURI: "https://p.example.com/oauth/et/callback", Scopes: []string{"crm_read", "crm_manage"}}
	if _, err := h.configure(provisionReplacer()); err != nil {
		t.Fatal(err)
	}
	want := consentPaths{redirect: h.RedirectURI, callback: "/oauth/et/callback", connect: "/oauth/et/connect",
		status: "/oauth/et/status", disconnect: "/oauth/et/disconnect"}
	if h.paths != want || h.authorizeURL != "https://client.eventtemple.com/oauth/authorize" || h.scope != "crm_read,crm_manage" {
		t.Errorf("paths %+v, authorize %q, scope %q", h.paths, h.authorizeURL, h.scope)
	}
	if h.formAction != "https://client.eventtemple.com" {
		t.Errorf("form-action origin %q", h.formAction)
	}

	for name, mod := range map[string]func(c *ConsentHandler){
		"no redirect_uri":             func(c *ConsentHandler) { c.RedirectURI = "" },
		"generic without authorize":   func(c *ConsentHandler) { c.Provider, c.TokenURL = "", "https://a.example.com/t" },
		"connect_path relative":       func(c *ConsentHandler) { c.ConnectPath = "x" },
		"redirect_uri resolves empty": func(c *ConsentHandler) { c.RedirectURI = "{env.OAB_UNSET_REDIRECT}" },
	} {
		c := &ConsentHandler{Credentials: Credentials{Provider: "eventtemple", ClientID: "id", ClientSecret: "secret"},
			RedirectURI: "https://p.example.com/cb"}
		mod(c)
		if _, err := c.configure(provisionReplacer()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCheckAccount(t *testing.T) {
	for _, ok := range []string{"default", "alice", "user@example.com", "acct-42", "A.B_c+d=e", strings.Repeat("a", 128)} {
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
