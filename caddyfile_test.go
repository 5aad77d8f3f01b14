package oauthbearer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// cfSecret is the client secret used in parser inputs; no error message
// may ever contain it.
const cfSecret = "S3CR3T-cf-value"

// cfParse runs the handler's Caddyfile parser on input (file name
// "Testfile", as caddyfile.NewTestDispenser names it).
func cfParse(input string) (*Handler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func cfStr(s string) *string { return &s }

func TestParseCaddyfileErrors(t *testing.T) {
	// creds and gen are the lines a generic block needs (lines 2-4).
	const creds = "\tclient_id my-client\n\tclient_secret " + cfSecret + "\n"
	const gen = "oauth_bearer {\n" + creds + "\ttoken_url https://as.example.com/token\n"
	tests := []struct {
		name  string
		input string
		line  int      // the line the error must name
		want  []string // substrings of the message
	}{
		// the provider argument
		{"unknown provider", "oauth_bearer paypal {\n" + creds + "}", 1,
			[]string{"provider: unknown provider \"paypal\"", "auth0, bookable, calcom, entra, eventbookings, eventtemple, generic, google, keycloak, okta"}},
		{"extra arg after provider", "oauth_bearer eventtemple extra {\n" + creds + "}", 1,
			[]string{"wrong argument count", "extra"}},

		// unknown subdirective
		{"unknown subdirective", gen + "\tclient_key abc\n}", 5,
			[]string{"unrecognized subdirective 'client_key'", "client_id", "token_header"}},

		// wrong argument counts
		{"client_id without value", "oauth_bearer {\n\tclient_id\n}", 2, []string{"client_id", "wrong argument count"}},
		{"client_id with two values", "oauth_bearer {\n\tclient_id a b\n}", 2, []string{"client_id", "wrong argument count"}},
		{"client_secret with two values must not echo it", "oauth_bearer {\n\tclient_id a\n\tclient_secret " + cfSecret + " extra\n}", 3,
			[]string{"client_secret", "wrong argument count"}},
		{"token_url without value", "oauth_bearer {\n" + creds + "\ttoken_url\n}", 4, []string{"token_url", "wrong argument count"}},
		{"environment with two values", "oauth_bearer bookable {\n" + creds + "\tenvironment sandbox production\n}", 4,
			[]string{"environment", "wrong argument count"}},
		{"scope without value", gen + "\tscope\n}", 5, []string{"scope", "wrong argument count"}},
		{"audience without value", gen + "\taudience\n}", 5, []string{"audience", "wrong argument count"}},
		{"resource without value", gen + "\tresource\n}", 5, []string{"resource", "wrong argument count"}},
		{"resource with two values", gen + "\tresource https://a.example https://b.example\n}", 5, []string{"resource", "wrong argument count"}},
		{"param without value", gen + "\tparam tenant\n}", 5, []string{"param", "wrong argument count"}},
		{"param with three values", gen + "\tparam a b c\n}", 5, []string{"param", "wrong argument count"}},
		{"request_format without value", gen + "\trequest_format\n}", 5, []string{"request_format", "wrong argument count"}},
		{"client_auth without value", gen + "\tclient_auth\n}", 5, []string{"client_auth", "wrong argument count"}},
		{"refresh_before without value", gen + "\trefresh_before\n}", 5, []string{"refresh_before", "wrong argument count"}},
		{"default_lifetime without value", gen + "\tdefault_lifetime\n}", 5, []string{"default_lifetime", "wrong argument count"}},
		{"timeout with two values", gen + "\ttimeout 1s 2s\n}", 5, []string{"timeout", "wrong argument count"}},
		{"header without value", gen + "\theader X-A\n}", 5, []string{"header", "wrong argument count"}},
		{"header without anything", gen + "\theader\n}", 5, []string{"header", "wrong argument count"}},
		{"org without value", "oauth_bearer eventtemple {\n" + creds + "\torg\n}", 4, []string{"org", "wrong argument count"}},
		{"token_header without value", gen + "\ttoken_header\n}", 5, []string{"token_header", "wrong argument count"}},
		{"token_header with three values", gen + "\ttoken_header X-A B C\n}", 5, []string{"token_header", "wrong argument count"}},

		// duplicates
		{"client_id twice", "oauth_bearer {\n\tclient_id a\n\tclient_id b\n}", 3, []string{"subdirective 'client_id' given twice"}},
		{"client_secret twice", "oauth_bearer {\n" + creds + "\tclient_secret other\n}", 4, []string{"subdirective 'client_secret' given twice"}},
		{"token_url twice", gen + "\ttoken_url https://b.example/token\n}", 5, []string{"subdirective 'token_url' given twice"}},
		{"scope twice", gen + "\tscope a\n\tscope b\n}", 6, []string{"subdirective 'scope' given twice"}},
		{"timeout twice", gen + "\ttimeout 1s\n\ttimeout 2s\n}", 6, []string{"subdirective 'timeout' given twice"}},
		{"org twice", "oauth_bearer eventtemple {\n" + creds + "\torg 1\n\torg 2\n}", 5, []string{"subdirective 'org' given twice"}},
		{"token_header twice", gen + "\ttoken_header X-A\n\ttoken_header X-B\n}", 6, []string{"subdirective 'token_header' given twice"}},
		{"same param twice", gen + "\tparam tenant a\n\tparam tenant b\n}", 6, []string{"param", "'tenant' given twice"}},
		{"same header twice, differently cased", gen + "\theader x-a 1\n\theader X-A 2\n}", 6, []string{"header", "'X-A' given twice"}},

		// required subdirectives (checked at the end of the block)
		{"missing everything", "oauth_bearer", 1, []string{"token_url: required for provider generic"}},
		{"missing everything, a preset", "oauth_bearer eventtemple", 1, []string{"client_id: is required"}},
		{"missing client_id", "oauth_bearer {\n\tclient_secret " + cfSecret + "\n\ttoken_url https://as.example.com/token\n}", 1,
			[]string{"client_id: is required"}},
		{"missing client_secret", "oauth_bearer eventtemple {\n\tclient_id a\n}", 1, []string{"client_secret: is required"}},
		{"missing token_url, generic", "oauth_bearer {\n" + creds + "}", 1, []string{"token_url: required for provider generic"}},
		{"missing token_url, generic named", "oauth_bearer generic {\n" + creds + "}", 1, []string{"token_url: required for provider generic"}},

		// token_url
		{"token_url not a URL", "oauth_bearer {\n" + creds + "\ttoken_url \"://nope\"\n}", 4, []string{"token_url", "not a URL"}},
		{"token_url relative", "oauth_bearer {\n" + creds + "\ttoken_url /oauth/token\n}", 4, []string{"token_url", "not an absolute http(s) URL"}},
		{"token_url ftp", "oauth_bearer {\n" + creds + "\ttoken_url ftp://as.example.com/token\n}", 4, []string{"token_url", "not an absolute http(s) URL"}},
		{"token_url with userinfo", "oauth_bearer {\n" + creds + "\ttoken_url https://u:p@as.example.com/token\n}", 4, []string{"token_url", "credentials"}},
		{"token_url http to a public host", "oauth_bearer {\n" + creds + "\ttoken_url http://as.example.com/token\n}", 4, []string{"token_url", "plain http"}},
		{"token_url http to a private address", "oauth_bearer {\n" + creds + "\ttoken_url http://10.0.0.5/token\n}", 4, []string{"token_url", "plain http"}},
		{"token_url http to a localhost look-alike", "oauth_bearer {\n" + creds + "\ttoken_url http://localhost.example.com/token\n}", 4, []string{"token_url", "plain http"}},

		// resource
		{"resource relative", gen + "\tresource /api\n}", 5, []string{"resource", "not an absolute URI"}},
		{"resource with fragment", gen + "\tresource https://api.example.com/#x\n}", 5, []string{"resource", "not an absolute URI"}},

		// durations
		{"refresh_before bad", gen + "\trefresh_before soon\n}", 5, []string{"refresh_before", "bad duration 'soon'"}},
		{"timeout without unit", gen + "\ttimeout 10\n}", 5, []string{"timeout", "bad duration '10'"}},
		{"default_lifetime zero", gen + "\tdefault_lifetime 0s\n}", 5, []string{"default_lifetime", "must be positive"}},
		{"timeout negative", gen + "\ttimeout -1s\n}", 5, []string{"timeout", "must be positive"}},
		{"refresh_before zero", gen + "\trefresh_before 0\n}", 5, []string{"refresh_before", "must be positive"}},

		// environment
		{"environment staging on bookable", "oauth_bearer bookable {\n" + creds + "\tenvironment staging\n}", 4,
			[]string{"environment", `"staging"`, "production, sandbox"}},
		{"environment sandbox on eventtemple", "oauth_bearer eventtemple {\n" + creds + "\tenvironment sandbox\n}", 4,
			[]string{"environment", `"sandbox"`, "production"}},
		{"environment on generic", "oauth_bearer {\n" + creds + "\tenvironment production\n}", 4,
			[]string{"environment", "token_url"}},

		// enumerations
		{"request_format xml", gen + "\trequest_format xml\n}", 5, []string{"request_format", `"xml"`, "json, form or auto"}},
		{"client_auth unknown", gen + "\tclient_auth jwt_bearer\n}", 5, []string{"client_auth", `"jwt_bearer"`, "body, basic, client_secret_jwt, private_key_jwt, tls or none"}},
		{"client_auth private_key_jwt with a secret", gen + "\tclient_auth private_key_jwt\n}", 3, []string{"client_secret", "not used with client_auth private_key_jwt"}},

		// params the handler owns
		{"param grant_type", gen + "\tparam grant_type password\n}", 5, []string{"param", `"grant_type"`, "cannot be overridden"}},
		{"param client_id", gen + "\tparam client_id other\n}", 5, []string{"param", `"client_id"`}},
		{"param client_secret", gen + "\tparam client_secret other\n}", 5, []string{"param", `"client_secret"`}},

		// org
		{"org on generic (implicit)", gen + "\torg 42\n}", 5, []string{"org", "provider generic", "header <name> <value>"}},
		{"org on generic (named)", "oauth_bearer generic {\n" + creds + "\ttoken_url https://as.example.com/token\n\torg 42\n}", 5,
			[]string{"org", "provider generic"}},
		{"org on bookable", "oauth_bearer bookable {\n" + creds + "\torg 42\n}", 4, []string{"org", "provider bookable"}},
		{"org and header X-API-ORG", "oauth_bearer eventtemple {\n" + creds + "\torg 42\n\theader x-api-org 43\n}", 5,
			[]string{"header", "X-Api-Org is given twice (as org"}},

		// ca_file, upstream_401, replay_max_body
		{"ca_file without value", gen + "\tca_file\n}", 5, []string{"ca_file", "wrong argument count"}},
		{"upstream_401 bogus", gen + "\tupstream_401 always\n}", 5, []string{"upstream_401", `"always"`}},
		{"replay_max_body bad", gen + "\treplay_max_body lots\n}", 5, []string{"replay_max_body", "'lots'"}},
		{"replay_max_body too big", gen + "\treplay_max_body 2GiB\n}", 5, []string{"replay_max_body", "'2GiB'"}},
		{"replay_max_body twice", gen + "\treplay_max_body 1KiB\n\treplay_max_body 2KiB\n}", 6,
			[]string{"subdirective 'replay_max_body' given twice"}},

		// header names
		{"header name with a space", gen + "\theader \"X Bad\" v\n}", 5, []string{"header", `"X Bad"`, "not a valid header name"}},
		{"header name with a colon", gen + "\theader X-Bad: v\n}", 5, []string{"header", `"X-Bad:"`, "not a valid header name"}},
		{"token_header name invalid", gen + "\ttoken_header \"X Bad\"\n}", 5, []string{"token_header", "not a valid header name"}},
		{"header duplicating token_header", gen + "\ttoken_header X-Api-Key\n\theader x-api-key v\n}", 6,
			[]string{"header", "X-Api-Key", "token"}},
		{"header duplicating token_header Authorization with prefix", gen + "\ttoken_header Authorization Token\n\theader Authorization v\n}", 6,
			[]string{"header", "Authorization", "token"}},
		{"header duplicating the default token header", gen + "\theader authorization \"Bearer static\"\n}", 5,
			[]string{"header", "Authorization", "token"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cfParse(tc.input)
			if err == nil {
				t.Fatalf("no error for input:\n%s", tc.input)
			}
			msg := err.Error()
			// caddyfile.Dispenser.Errf appends ", at <file>:<line>".
			if suffix := fmt.Sprintf(", at Testfile:%d", tc.line); !strings.HasSuffix(msg, suffix) {
				t.Errorf("error %q does not end with %q", msg, suffix)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, cfSecret) {
				t.Errorf("error %q echoes the client secret", msg)
			}
		})
	}
}

// ---- resolve ----

func TestResolvePlaceholders(t *testing.T) {
	t.Setenv("OAB_RS_ID", "env-client-id")
	t.Setenv("OAB_RS_SECRET", "env-secret-value")
	t.Setenv("OAB_RS_URL", "https://env.example.com/token")
	t.Setenv("OAB_RS_AUD", "env-audience")
	t.Setenv("OAB_RS_HDR", "env-header-value")
	t.Setenv("OAB_RS_PARAM", "env-param-value")
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "id")
	if err := os.WriteFile(idFile, []byte("file-client-id"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("env", func(t *testing.T) {
		h := &Handler{
			Credentials: Credentials{ClientID: "{env.OAB_RS_ID}", ClientSecret: "{env.OAB_RS_SECRET}", TokenURL: "{env.OAB_RS_URL}"},
			Audience:    "{env.OAB_RS_AUD}",
			Params:      map[string]string{"p": "{env.OAB_RS_PARAM}"},
			Headers:     map[string]string{"X-Env": "{env.OAB_RS_HDR}", "X-Req": "{http.request.header.X-Foo}"},
		}
		cfg, err := h.configure(provisionReplacer())
		if err != nil {
			t.Fatal(err)
		}
		if cfg.ClientID != "env-client-id" || cfg.clientSecret != "env-secret-value" || cfg.TokenURL != "https://env.example.com/token" {
			t.Errorf("cfg = %+v (secret %q)", cfg, cfg.clientSecret)
		}
		if cfg.Audience != "env-audience" || cfg.Params["p"] != "env-param-value" {
			t.Errorf("audience/params = %q/%v", cfg.Audience, cfg.Params)
		}
		// The handler's exported fields keep the placeholders.
		if h.ClientSecret != "{env.OAB_RS_SECRET}" || h.ClientID != "{env.OAB_RS_ID}" {
			t.Errorf("resolve changed the handler's fields: %q %q", h.ClientID, h.ClientSecret)
		}
		hdrs := map[string]upstreamHeader{}
		for _, uh := range h.headers {
			hdrs[uh.key] = uh
		}
		if uh := hdrs["X-Env"]; uh.value != "env-header-value" || uh.perReq {
			t.Errorf("X-Env = %+v, want resolved once", uh)
		}
		if uh := hdrs["X-Req"]; uh.value != "{http.request.header.X-Foo}" || !uh.perReq {
			t.Errorf("X-Req = %+v, want kept for per-request resolution", uh)
		}
	})
	t.Run("file", func(t *testing.T) {
		h := &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "{file." + idFile + "}", ClientSecret: "{file." + secretFile + "}"}}
		cfg, err := h.configure(provisionReplacer())
		if err != nil {
			t.Fatal(err)
		}
		if cfg.ClientID != "file-client-id" {
			t.Errorf("client id = %q", cfg.ClientID)
		}
		if cfg.clientSecret != "file-secret-value" {
			t.Errorf("client secret = %q, want the file's content without its newline", cfg.clientSecret)
		}
	})
	t.Run("credentialSet JSON never holds the secret", func(t *testing.T) {
		h := &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: "{env.OAB_RS_SECRET}"}}
		cfg, err := h.configure(provisionReplacer())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(cfg)
		if strings.Contains(string(b), "env-secret-value") {
			t.Errorf("sourceConfig JSON holds the secret: %s", b)
		}
		if got := fmt.Sprintf("%v", cfg.key()); strings.Contains(got, "env-secret-value") {
			t.Errorf("key holds the secret: %s", got)
		}
	})
}

func TestResolveErrors(t *testing.T) {
	const literalSecret = "literal-secret-9d2c"
	t.Setenv("OAB_RE_EMPTY", "")
	t.Setenv("OAB_RE_HTTP_URL", "http://as.example.com/token")
	tests := []struct {
		name string
		h    *Handler
		want []string
	}{
		{"secret resolves empty (env)", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: "{env.OAB_RE_UNSET_SECRET}"}},
			[]string{"client_secret", "{env.OAB_RE_UNSET_SECRET}", "empty"}},
		{"secret resolves empty (missing file)", &Handler{
			Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: "{file." + filepath.Join(t.TempDir(), "absent") + "}"},
		}, []string{"client_secret", "empty"}},
		{"secret resolves empty (set but empty)", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: "{env.OAB_RE_EMPTY}"}},
			[]string{"client_secret", "empty"}},
		{"client_id resolves empty", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "{env.OAB_RE_UNSET_ID}", ClientSecret: literalSecret}},
			[]string{"client_id", "empty"}},
		{"client_id missing", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientSecret: literalSecret}}, []string{"client_id", "required"}},
		{"client_secret missing", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a"}}, []string{"client_secret", "required"}},
		{"generic without token_url", &Handler{Credentials: Credentials{ClientID: "a", ClientSecret: literalSecret}}, []string{"token_url", "generic"}},
		{"unknown provider", &Handler{Credentials: Credentials{Provider: "paypal", ClientID: "a", ClientSecret: literalSecret}},
			[]string{"paypal", "auth0, bookable, calcom, entra, eventbookings, eventtemple, generic, google, keycloak, okta"}},
		{"token_url resolves to plain http", &Handler{Credentials: Credentials{ClientID: "a", ClientSecret: literalSecret, TokenURL: "{env.OAB_RE_HTTP_URL}"}},
			[]string{"token_url", "plain http"}},
		{"environment staging on bookable", &Handler{Credentials: Credentials{Provider: "bookable", Environment: "staging", ClientID: "a", ClientSecret: literalSecret}},
			[]string{"environment", "staging"}},
		{"bad request_format", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret, RequestFormat: "xml"}},
			[]string{"request_format"}},
		{"bad client_auth", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret, ClientAuth: "jwt"}},
			[]string{"client_auth"}},
		{"negative timeout", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret, Timeout: -1}},
			[]string{"timeout"}},
		{"param grant_type", &Handler{
			Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret},
			Params:      map[string]string{"grant_type": "password"},
		}, []string{"param", "grant_type"}},
		{"org on generic", &Handler{Credentials: Credentials{ClientID: "a", ClientSecret: literalSecret, TokenURL: "https://as.example.com/t"}, Org: "1"},
			[]string{"org", "generic"}},
		{"header duplicating the token header", &Handler{
			Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret},
			Headers:     map[string]string{"authorization": "Bearer x"},
		}, []string{"header", "Authorization"}},
		{"org header resolves empty", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret}, Org: "{env.OAB_RE_UNSET_ORG}"},
			[]string{"X-Api-Org", "empty"}},
		{"org also set as a header", &Handler{
			Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret},
			Org:         "1",
			Headers:     map[string]string{"X-Api-Org": "2"},
		}, []string{"X-Api-Org"}},
		// JSON configs can hold one header under two spellings; which one
		// would be sent depends on map order.
		{"header given twice in different case", &Handler{
			Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret},
			Headers:     map[string]string{"x-a": "1", "X-A": "2"},
		}, []string{"header", "X-A"}},
		{"resource relative", &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: literalSecret}, Resources: []string{"/x"}},
			[]string{"resource"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.h.configure(provisionReplacer())
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, literalSecret) {
				t.Errorf("error %q contains the secret", msg)
			}
		})
	}
}

func TestResolvePresetDefaults(t *testing.T) {
	const sec = "preset-secret"
	tests := []struct {
		name string
		h    *Handler
		want credentialSet
		// extra upstream headers expected, canonical key → value
		headers map[string]string
	}{
		{
			name: "eventtemple",
			h:    &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "id", ClientSecret: sec}, Org: "4711", Scopes: []string{"crm_read", "crm_manage"}},
			want: credentialSet{Grant: "client_credentials", Provider: "eventtemple", TokenURL: "https://api.eventtemple.com/oauth/token", ClientID: "id",
				Scope: "crm_read crm_manage", Format: "json", ClientAuth: "body",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
			headers: map[string]string{"X-Api-Org": "4711"},
		},
		{
			name: "eventbookings auto preferring json",
			h:    &Handler{Credentials: Credentials{Provider: "eventbookings", ClientID: "id", ClientSecret: sec}},
			want: credentialSet{Grant: "client_credentials", Provider: "eventbookings", TokenURL: "https://identity.eventbookings.com/connect/token", ClientID: "id",
				Format: "auto", PreferredFormat: "json", ClientAuth: "body",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
		{
			name: "bookable production",
			h:    &Handler{Credentials: Credentials{Provider: "bookable", ClientID: "id", ClientSecret: sec}},
			want: credentialSet{Grant: "client_credentials", Provider: "bookable", TokenURL: "https://auth.bookabletech.com/oauth/token", ClientID: "id",
				Audience: "api.bookabletech.com", Format: "json", ClientAuth: "body",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
		{
			name: "bookable sandbox",
			h:    &Handler{Credentials: Credentials{Provider: "bookable", Environment: "sandbox", ClientID: "id", ClientSecret: sec}},
			want: credentialSet{Grant: "client_credentials", Provider: "bookable", TokenURL: "https://auth-sandbox.bookabletech.com/oauth/token", ClientID: "id",
				Audience: "api.bookabletech.com", Format: "json", ClientAuth: "body",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
		{
			name: "generic",
			h:    &Handler{Credentials: Credentials{ClientID: "id", ClientSecret: sec, TokenURL: "https://as.example.com/token"}},
			want: credentialSet{Grant: "client_credentials", Provider: "generic", TokenURL: "https://as.example.com/token", ClientID: "id",
				Format: "form", ClientAuth: "basic",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
		{
			name: "overrides",
			h: &Handler{
				Credentials:   Credentials{Provider: "eventbookings", ClientID: "id", ClientSecret: sec, TokenURL: "http://127.0.0.1:9999/connect/token", RequestFormat: "form", ClientAuth: "basic", DefaultLifetime: caddy.Duration(time.Hour), Timeout: caddy.Duration(3 * time.Second)},
				Audience:      "aud",
				Resources:     []string{"https://api.example.com/"},
				Params:        map[string]string{"k": "v"},
				RefreshBefore: caddy.Duration(2 * time.Minute),
				Headers:       map[string]string{"x-one": "1"},
			},
			want: credentialSet{Grant: "client_credentials", Provider: "eventbookings", TokenURL: "http://127.0.0.1:9999/connect/token", ClientID: "id",
				Audience: "aud", Resources: []string{"https://api.example.com/"}, Params: map[string]string{"k": "v"},
				Format: "form", ClientAuth: "basic",
				DefaultLifetime: time.Hour, Timeout: 3 * time.Second},
			headers: map[string]string{"X-One": "1"},
		},
		{
			name: "bookable audience override, explicit environment production",
			h:    &Handler{Credentials: Credentials{Provider: "bookable", Environment: "production", ClientID: "id", ClientSecret: sec}, Audience: "other-api"},
			want: credentialSet{Grant: "client_credentials", Provider: "bookable", TokenURL: "https://auth.bookabletech.com/oauth/token", ClientID: "id",
				Audience: "other-api", Format: "json", ClientAuth: "body",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
		{
			name: "eventbookings pinned json",
			h:    &Handler{Credentials: Credentials{Provider: "eventbookings", ClientID: "id", ClientSecret: sec, RequestFormat: "json"}},
			want: credentialSet{Grant: "client_credentials", Provider: "eventbookings", TokenURL: "https://identity.eventbookings.com/connect/token", ClientID: "id",
				Format: "json", ClientAuth: "body",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
		{
			name: "generic auto prefers form",
			h:    &Handler{Credentials: Credentials{ClientID: "id", ClientSecret: sec, TokenURL: "https://as.example.com/token", RequestFormat: "auto"}},
			want: credentialSet{Grant: "client_credentials", Provider: "generic", TokenURL: "https://as.example.com/token", ClientID: "id",
				Format: "auto", PreferredFormat: "form", ClientAuth: "basic",
				DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.h.configure(provisionReplacer())
			if err != nil {
				t.Fatal(err)
			}
			if cfg.clientSecret != sec {
				t.Errorf("secret = %q", cfg.clientSecret)
			}
			got, _ := json.Marshal(cfg)
			want, _ := json.Marshal(&tc.want)
			if string(got) != string(want) {
				t.Errorf("sourceConfig:\n got %s\nwant %s", got, want)
			}
			gotHdrs := map[string]string{}
			for _, uh := range tc.h.headers {
				if _, dup := gotHdrs[uh.key]; dup {
					t.Errorf("header %s listed twice", uh.key)
				}
				gotHdrs[uh.key] = uh.value
			}
			if tc.headers == nil {
				tc.headers = map[string]string{}
			}
			if g, w := fmt.Sprint(gotHdrs), fmt.Sprint(tc.headers); g != w {
				t.Errorf("upstream headers = %s, want %s", g, w)
			}
			if tc.h.tokenHeader != "Authorization" || tc.h.tokenPrefix != "Bearer " {
				t.Errorf("token header = %q prefix %q, want Authorization / \"Bearer \"", tc.h.tokenHeader, tc.h.tokenPrefix)
			}
		})
	}
}

func TestResolveTokenHeader(t *testing.T) {
	tests := []struct {
		name       string
		header     string
		prefix     *string
		wantHeader string
		wantPrefix string
	}{
		{"default", "", nil, "Authorization", "Bearer "},
		{"custom header, no prefix", "x-api-key", nil, "X-Api-Key", ""},
		{"custom header, explicit empty prefix", "X-Api-Key", cfStr(""), "X-Api-Key", ""},
		{"Authorization with Token prefix", "Authorization", cfStr("Token"), "Authorization", "Token "},
		{"Authorization with explicit empty prefix", "Authorization", cfStr(""), "Authorization", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "a", ClientSecret: "b"}, TokenHeader: tc.header, TokenPrefix: tc.prefix}
			if _, err := h.configure(provisionReplacer()); err != nil {
				t.Fatal(err)
			}
			if h.tokenHeader != tc.wantHeader || h.tokenPrefix != tc.wantPrefix {
				t.Errorf("got %q / %q, want %q / %q", h.tokenHeader, h.tokenPrefix, tc.wantHeader, tc.wantPrefix)
			}
		})
	}
}

func TestResolveSourceKey(t *testing.T) {
	const secretA, secretB = "key-secret-aaaa", "key-secret-bbbb"
	mk := func(mod func(h *Handler)) *Handler {
		h := &Handler{
			Credentials: Credentials{ClientID: "id", ClientSecret: secretA, TokenURL: "https://as.example.com/token"},
			Scopes:      []string{"a", "b"},
			Params:      map[string]string{"x": "1", "y": "2"},
			Resources:   []string{"https://r.example/"},
		}
		if mod != nil {
			mod(h)
		}
		return h
	}
	key := func(h *Handler) string {
		t.Helper()
		cfg, err := h.configure(provisionReplacer())
		if err != nil {
			t.Fatal(err)
		}
		k := cfg.key()
		if strings.Contains(k, secretA) || strings.Contains(k, secretB) {
			t.Errorf("key %q contains the secret", k)
		}
		return k
	}
	base := key(mk(nil))
	if again := key(mk(nil)); again != base {
		t.Errorf("equal configurations give different keys: %s vs %s", base, again)
	}
	// Headers and the token header are not part of the token source.
	if k := key(mk(func(h *Handler) { h.Headers = map[string]string{"X-A": "1"}; h.TokenHeader = "X-Tok" })); k != base {
		t.Errorf("upstream headers changed the source key")
	}
	differ := map[string]func(h *Handler){
		"secret":    func(h *Handler) { h.ClientSecret = secretB },
		"client id": func(h *Handler) { h.ClientID = "id2" },
		"scope":     func(h *Handler) { h.Scopes = []string{"a"} },
		"token url": func(h *Handler) { h.TokenURL = "https://as.example.com/token2" },
		"audience":  func(h *Handler) { h.Audience = "aud" },
		"params":    func(h *Handler) { h.Params = map[string]string{"x": "1"} },
		"resources": func(h *Handler) { h.Resources = nil },
		"format":    func(h *Handler) { h.RequestFormat = "json" },
		"auth":      func(h *Handler) { h.ClientAuth = "body" },
		"timeout":   func(h *Handler) { h.Timeout = caddy.Duration(time.Second) },
	}
	for name, mod := range differ {
		if k := key(mk(mod)); k == base {
			t.Errorf("changing %s does not change the source key", name)
		}
	}
}

// Only {env.*} and {file.*} are resolved at provision time: a header value
// with {time.*} or {system.*} is left for each request, and scopes take
// placeholders like the other grant parameters.
func TestResolveLeavesRequestTimePlaceholders(t *testing.T) {
	t.Setenv("RS_SCOPE", "crm_read")
	h := &Handler{
		Credentials: Credentials{TokenURL: "https://as.example/token", ClientID: "id", ClientSecret: "secret"},
		Scopes:      []string{"{env.RS_SCOPE}", "crm_manage"},
		Headers:     map[string]string{"X-Now": "{time.now.unix_ms}", "X-Host": "{system.hostname}"},
	}
	cfg, err := h.configure(provisionReplacer())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Scope != "crm_read crm_manage" {
		t.Errorf("scope = %q, want the env placeholder resolved", cfg.Scope)
	}
	for _, hd := range h.headers {
		if !hd.perReq || !strings.HasPrefix(hd.value, "{") {
			t.Errorf("header %s = %q (per request: %v), want the placeholder kept for each request", hd.key, hd.value, hd.perReq)
		}
	}
}
