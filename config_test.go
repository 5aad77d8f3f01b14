package oauthbearer

// The configuration, without running anything: the Caddyfile parsers
// (caddyfile.go, with the table of subdirectives.go) and the rules and
// resolution of a credential set (config.go), each mistake named with its
// line and subdirective, no error holding a secret. In order: the
// client-credentials handler's parser and resolution; the grant
// subdirectives of both directives; load-time errors of client
// authentication, and the assertion a Google service account key resolves
// to; the table's rows and rules; encryption keys.

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// ---------------------------------------------------------------------------
// The client-credentials handler: parsing and resolving

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

// ---------------------------------------------------------------------------
// Grants

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
		t.Run(tc.name, func(t *testing.T) { wantRefusedAt(t, tc.input, tc.line, tc.want, "s3cret-value") })
	}
}

// wantRefusedAt checks that input, an oauth_bearer or oauth_bearer_consent
// block, is refused with an error that says want, ends with its line and
// does not hold secret.
func wantRefusedAt(t *testing.T, input string, line int, want, secret string) {
	t.Helper()
	d := caddyfile.NewTestDispenser(input)
	var err error
	if strings.HasPrefix(input, "oauth_bearer_consent") {
		err = new(ConsentHandler).UnmarshalCaddyfile(d)
	} else {
		err = new(Handler).UnmarshalCaddyfile(d)
	}
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, want) {
		t.Errorf("error %q lacks %q", msg, want)
	}
	if suffix := fmt.Sprintf("Testfile:%d", line); !strings.HasSuffix(msg, suffix) {
		t.Errorf("error %q does not end with %q", msg, suffix)
	}
	if strings.Contains(msg, secret) {
		t.Errorf("error %q echoes the secret", msg)
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

// ---------------------------------------------------------------------------
// Client authentication at load time

// Load-time errors of client authentication, as a user meets them: a
// Caddyfile adapted and validated (every module provisioned, as caddy
// validate and caddy run do). Rules of combination are reported by the
// Caddyfile parser on the line of the subdirective at fault; what can only
// be found by reading a file (a key that does not parse, an algorithm that
// does not fit it, a certificate of another key, an assertion file that
// cannot be read) is reported by Provision, naming the subdirective and the
// file. No error ever holds key material, a secret or an assertion.

// loadCaddyfile adapts site blocks (LISTEN as in startCaddy) into a
// complete Caddyfile and, when that succeeds, validates the result. It
// returns the Caddyfile's text and the error of each step.
func loadCaddyfile(t *testing.T, sites string) (text string, adaptErr, validateErr error) {
	t.Helper()
	text = "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tstorage file_system " + t.TempDir() + "\n}\n" +
		strings.ReplaceAll(sites, "LISTEN", "127.0.0.1:0")
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return text, err, nil
	}
	var c caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfg, &c); err != nil {
		t.Fatal(err)
	}
	caddyMu.Lock()
	defer caddyMu.Unlock()
	return text, nil, caddy.Validate(&c)
}

// lineOf is the 1-based line of text that starts (after tabs) with prefix.
func lineOf(t *testing.T, text, prefix string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimLeft(l, "\t"), prefix) {
			return i + 1
		}
	}
	t.Fatalf("no line starts with %q", prefix)
	return 0
}

func TestClientAuthLoadErrors(t *testing.T) {
	k := testkeys.Keys()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rsaPEM := testkeys.PKCS8PEM(t, k.RSA)
	p256PEM := testkeys.SEC1PEM(t, k.P256)
	garbage := make([]byte, 300)
	rand.Read(garbage)
	garbagePEM := testkeys.PEM("PRIVATE KEY", garbage)
	truncated := x509.MarshalPKCS1PrivateKey(k.RSA)
	truncatedPEM := testkeys.PEM("RSA PRIVATE KEY", truncated[:len(truncated)/2])
	otherCert := testkeys.SelfSignedCert(t, k.RSA2, "not-this-key")
	const secret = "load-error-secret-0123456789abcdefghijklmnopqrstuv"
	notJWT := "this-is-not-a-jwt-but-might-be-a-secret-4f2a9c"
	pems := [][]byte{rsaPEM, p256PEM, garbagePEM, truncatedPEM}

	paths := map[string]string{
		"RSAKEY":     write("rsa.key", rsaPEM),
		"P256KEY":    write("p256.key", p256PEM),
		"GARBAGEKEY": write("garbage.key", garbagePEM),
		"TRUNCKEY":   write("truncated.key", truncatedPEM),
		"OTHERCERT":  write("other.crt", testkeys.PEM("CERTIFICATE", otherCert.Raw)),
		"NOTJWT":     write("not-a-jwt", []byte(notJWT+"\n")),
		"EMPTYFILE":  write("empty", nil),
		"MISSING":    filepath.Join(dir, "no-such-file"),
		"ADIR":       dir,
		"SAFILE":     write("sa.json", testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", nil)),
		"NOTSA":      write("not-sa.json", []byte(`{"type":"authorized_user","client_secret":"`+secret+`"}`)),
	}
	t.Setenv("OAB_LE_BADKEY", string(garbagePEM))
	t.Setenv("OAB_LE_SECRET", secret)

	const head = "\t\ttoken_url https://idp.example.com/oauth2/token\n\t\tclient_id my-client\n"
	cases := []struct {
		name  string
		lines string
		// field is the subdirective the error names; at is the line
		// prefix it must be reported on when the Caddyfile parser finds
		// it ("" when Provision finds it).
		field, at string
		want      []string
	}{
		{"key does not parse", "\t\tclient_auth private_key_jwt\n\t\tprivate_key GARBAGEKEY\n",
			"private_key", "", []string{"GARBAGEKEY", "not a valid private key"}},
		{"key truncated", "\t\tclient_auth private_key_jwt\n\t\tprivate_key TRUNCKEY\n",
			"private_key", "", []string{"TRUNCKEY"}},
		{"inline key does not parse", "\t\tclient_auth private_key_jwt\n\t\tprivate_key {env.OAB_LE_BADKEY}\n",
			"private_key", "", []string{"the inline PEM value"}},
		{"key file missing", "\t\tclient_auth private_key_jwt\n\t\tprivate_key MISSING\n",
			"private_key", "", []string{"MISSING", "does not exist"}},
		{"ES256 with an RSA key", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tsigning_alg ES256\n",
			"signing_alg", "", []string{"ES256", "RSA", "RS256"}},
		{"HS256 with a private key", "\t\tclient_auth private_key_jwt\n\t\tprivate_key P256KEY\n\t\tsigning_alg HS256\n",
			"signing_alg", "", []string{"HS256", "client_secret_jwt"}},
		{"certificate of another key", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tcertificate OTHERCERT\n",
			"certificate", "", []string{"does not match"}},
		{"assertion file missing", "\t\tclient_assertion_file MISSING\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"MISSING", "does not exist"}},
		{"assertion file is a directory", "\t\tclient_assertion_file ADIR\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"ADIR", "cannot be read"}},
		{"assertion file empty", "\t\tclient_assertion_file EMPTYFILE\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"EMPTYFILE", "empty"}},
		{"assertion file holds no JWT", "\t\tclient_assertion_file NOTJWT\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"NOTJWT", "does not hold a JWT"}},
		{"client_secret with private_key_jwt", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tclient_secret {env.OAB_LE_SECRET}\n",
			"client_secret", "client_secret", []string{"not used with client_auth private_key_jwt"}},
		{"literal client_secret with private_key_jwt", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tclient_secret " + secret + "\n",
			"client_secret", "client_secret", []string{"not used with client_auth private_key_jwt"}},
		{"client_assertion_file with client_auth basic", "\t\tclient_auth basic\n\t\tclient_secret {env.OAB_LE_SECRET}\n\t\tclient_assertion_file NOTJWT\n",
			"client_assertion_file", "client_assertion_file", []string{"client_auth basic"}},
		{"client_assertion_file and private_key", "\t\tclient_assertion_file NOTJWT\n\t\tprivate_key RSAKEY\n",
			"client_assertion_file", "client_assertion_file", []string{"not both"}},
		{"tls without tls_client_cert", "\t\tclient_auth tls\n",
			"client_auth", "client_auth", []string{"tls_client_cert"}},
		{"tls_client_cert of another key", "\t\tclient_auth tls\n\t\ttls_client_cert OTHERCERT RSAKEY\n",
			"tls_client_cert", "", []string{"OTHERCERT", "does not match"}},
		{"service_account_file without grant jwt_bearer", "\t\tservice_account_file SAFILE\n",
			"service_account_file", "service_account_file", []string{"grant jwt_bearer"}},
		{"service_account_file that is not a service account", "\t\tgrant jwt_bearer\n\t\tclient_auth none\n\t\tservice_account_file NOTSA\n",
			"service_account_file", "", []string{"NOTSA", "authorized_user"}},
		{"private_key_jwt without a key", "\t\tclient_auth private_key_jwt\n",
			"client_auth", "client_auth", []string{"private_key"}},
		{"key_id without private_key", "\t\tclient_secret {env.OAB_LE_SECRET}\n\t\tkey_id k1\n",
			"key_id", "key_id", []string{"only with private_key"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lines := tc.lines
			want := append([]string{tc.field + ":"}, tc.want...)
			for name, p := range paths {
				lines = strings.ReplaceAll(lines, name, p)
				for i := range want {
					want[i] = strings.ReplaceAll(want[i], name, p)
				}
			}
			text, adaptErr, validateErr := loadCaddyfile(t, "http://LISTEN {\n\toauth_bearer {\n"+head+lines+"\t}\n\treverse_proxy 127.0.0.1:9\n}\n")
			var err error
			switch {
			case tc.at != "":
				if adaptErr == nil {
					t.Fatalf("the Caddyfile adapted (validate: %v); want a parse error on the %s line", validateErr, tc.at)
				}
				err = adaptErr
				want = append(want, "Caddyfile:"+strconv.Itoa(lineOf(t, text, tc.at+" ")))
			case adaptErr != nil:
				t.Fatalf("adapting: %v; want the Caddyfile to adapt and Provision to fail", adaptErr)
			case validateErr == nil:
				t.Fatal("the configuration validated")
			default:
				err = validateErr
			}
			msg := err.Error()
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			testkeys.AssertNoKeyMaterial(t, "the error", msg, pems...)
			assertNoValueLeak(t, "the error", msg, secret, notJWT)
		})
	}
}

// private_key without client_auth, for a client credentials grant: the
// comment of clientAuthMethod says the key implies private_key_jwt, so the
// configuration loads and signs its assertions.
//
// FAILS (production): clientAuthMethod has no case for a private key; the
// generic preset's basic applies and loading stops with "client_secret: is
// required (client_auth basic)".
func TestClientAuthPrivateKeyImpliesPrivateKeyJWT(t *testing.T) {
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, testkeys.Keys().P256))
	h := &Handler{Credentials: Credentials{TokenURL: "https://idp.example.com/oauth2/token", ClientID: "my-client", PrivateKey: keyPath}}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		t.Fatalf("configure: %v", err)
	}
	if cs.ClientAuth != "private_key_jwt" || cs.signer == nil {
		t.Fatalf("client_auth %q (signer set: %v), want private_key_jwt", cs.ClientAuth, cs.signer != nil)
	}
}

// tls_client_cert and its key given as PEM (from {env.X}): config.go
// documents both fields as "paths, or PEM".
//
// FAILS (production): the values are passed to the reloader as paths, and
// loading stops with "tls_client_cert: mtls client certificate: the
// configured value: no such file or directory".
func TestClientAuthTLSClientCertInlinePEM(t *testing.T) {
	ca := testkeys.NewCA(t, "inline CA")
	key := testkeys.Keys().P256
	keyPEM := testkeys.SEC1PEM(t, key)
	t.Setenv("OAB_INLINE_TLS_CERT", string(testkeys.PEM("CERTIFICATE", ca.IssueClient(t, "inline", key).Raw)))
	t.Setenv("OAB_INLINE_TLS_KEY", string(keyPEM))
	h := &Handler{Credentials: Credentials{TokenURL: "https://idp.example.com/oauth2/token", ClientID: "inline",
		ClientAuth: "tls", TLSClientCert: "{env.OAB_INLINE_TLS_CERT}", TLSClientKey: "{env.OAB_INLINE_TLS_KEY}"}}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		testkeys.AssertNoKeyMaterial(t, "the error", err.Error(), keyPEM)
		t.Fatalf("configure: %v", err)
	}
	if cert, _ := cs.tlsCert.Current(); cert == nil || cert.Leaf.Subject.CommonName != "inline" {
		t.Fatalf("client certificate %v", cert)
	}
}

// The JWT bearer grant's assertion the handler makes with a Google service
// account key file (a path or the JSON): iss = client_email, aud =
// token_uri, the scopes as a claim, and a sub only for domain-wide
// delegation.
func TestGoogleServiceAccountAssertion(t *testing.T) {
	k := testkeys.Keys()
	data := testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", nil)
	path := testkeys.WriteFile(t, "sa.json", data)
	for _, value := range []string{path, string(data)} {
		assertion := func(subject string) (jose.Header, map[string]json.RawMessage) {
			t.Helper()
			return testkeys.ParseJWT(t, googleAssertion(t, value, "https://www.googleapis.com/auth/cloud-platform", subject), k.RSA.Public())
		}
		hdr, claims := assertion("")
		if hdr.Algorithm != "RS256" || hdr.KeyID != "0123456789abcdef" {
			t.Errorf("header alg %s kid %s", hdr.Algorithm, hdr.KeyID)
		}
		for name, v := range map[string]string{
			"iss":   `"robot@proj.iam.gserviceaccount.com"`,
			"aud":   `"https://oauth2.googleapis.com/token"`,
			"scope": `"https://www.googleapis.com/auth/cloud-platform"`,
		} {
			if string(claims[name]) != v {
				t.Errorf("claim %s = %s, want %s", name, claims[name], v)
			}
		}
		var iat, exp int64
		if json.Unmarshal(claims["iat"], &iat) != nil || json.Unmarshal(claims["exp"], &exp) != nil || exp-iat != 60 {
			t.Errorf("iat %s exp %s, want a minute apart", claims["iat"], claims["exp"])
		}
		if claims["sub"] != nil {
			t.Errorf("sub %s without delegation", claims["sub"])
		}
		if _, claims := assertion("user@example.com"); string(claims["sub"]) != `"user@example.com"` {
			t.Errorf("delegation subject %s", claims["sub"])
		}
	}
}

// googleAssertion is the JWT bearer grant's assertion the handler makes
// with a service account key file (a path or the JSON), scopes and subject:
// the assertion of the token request it sends (to a server here rather
// than the file's token_uri, which stays the audience).
func googleAssertion(t *testing.T, serviceAccount, scopes, subject string) string {
	t.Helper()
	h := &Handler{Credentials: Credentials{Provider: "google", ServiceAccountFile: serviceAccount}, Scopes: strings.Fields(scopes), Subject: subject}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		t.Fatal(err)
	}
	// A fakeAS that records the request and issues without verifying:
	// the assertion is for the caller to check.
	as := newFakeAS(t)
	as.answerWith(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"at-google","token_type":"Bearer","expires_in":3600}`)
	})
	cs.TokenURL = as.tokenURL()
	ep := newEndpoint(cs, &clock{})
	defer ep.Close()
	if _, err := ep.ClientCredentials(context.Background()); err != nil {
		t.Fatal(err)
	}
	sent := as.last(t)
	if sent.GrantType != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		t.Fatalf("grant_type %q", sent.GrantType)
	}
	return sent.Assertion
}

// ---------------------------------------------------------------------------
// The table of subdirectives

// The parsers and the rules read the table of subdirectives: each row is
// parsed into its JSON field by the directives that take it, refused with
// "belongs to" by the other, given twice only when repeatable, and refused
// with the grants that do not accept it, in the Caddyfile and in JSON.

// sampleArgs makes arguments of the shape s.args shows; n varies them
// (a repeatable line's second value).
func sampleArgs(s subdirective, n int) string {
	var out []string
	for _, a := range strings.Fields(s.args) {
		switch {
		case !strings.Contains(a, "<"):
			out = append(out, strings.Split(a, "|")[0])
		case a == "<duration>":
			out = append(out, fmt.Sprintf("%dm", n))
		case a == "<size>":
			out = append(out, fmt.Sprintf("%dKiB", n))
		case a == "<url>" || a == "<uri>":
			out = append(out, fmt.Sprintf("https://as%d.example/x", n))
		case a == "[<prefix>]":
			out = append(out, "Token")
		case a == "<name>":
			out = append(out, fmt.Sprintf("X-Name-%d", n))
		default:
			out = append(out, fmt.Sprintf("v%d", n))
		}
	}
	return strings.Join(out, " ")
}

// parseAs parses a block of the directive in.
func parseAs(in directive, block string) (configurable, error) {
	var cfg configurable = new(Handler)
	if in == onConsent {
		cfg = new(ConsentHandler)
	}
	err := cfg.(caddyfile.Unmarshaler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(block))
	return cfg, err
}

// syntaxErr reports whether err is the parser's own (about the line's
// syntax), not a rule checked at the end of the block.
func syntaxErr(err error) bool {
	if err == nil {
		return false
	}
	for _, s := range []string{"wrong argument count", "unrecognized subdirective", "belongs to", "given twice", "bad duration", "bad size", "is not on or off", "serves the authorization_code grant only"} {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

func TestCaddyfileTableRows(t *testing.T) {
	for _, s := range subdirectives {
		for _, in := range []directive{onBearer, onConsent} {
			name := in.String() + "/" + s.name
			line := func(n int) string { return "\t" + s.name + " " + sampleArgs(s, n) + "\n" }
			head := in.String() + " {\n"
			if s.in&in == 0 {
				if slices.ContainsFunc(subdirectives, func(o subdirective) bool { return o.name == s.name && o.in&in != 0 }) {
					continue // a row of its own there (grant, scope)
				}
				_, err := parseAs(in, head+line(1)+"}")
				if want := fmt.Sprintf("%s: belongs to %s", s.name, s.in.role()); err == nil || !strings.Contains(err.Error(), want) ||
					!strings.HasSuffix(err.Error(), "Testfile:2") {
					t.Errorf("%s: error %v, want %q on line 2", name, err, want)
				}
				continue
			}
			cfg, err := parseAs(in, head+line(1)+"}")
			if syntaxErr(err) {
				t.Errorf("%s %s: %v", name, sampleArgs(s, 1), err)
				continue
			}
			if s.field != "" {
				var fields map[string]json.RawMessage
				b, _ := json.Marshal(cfg)
				json.Unmarshal(b, &fields)
				if _, ok := fields[s.field]; !ok {
					t.Errorf("%s %s does not set JSON field %s: %s", name, sampleArgs(s, 1), s.field, b)
				}
			}
			if _, err := parseAs(in, head+"\t"+s.name+"\n}"); err == nil || !strings.Contains(err.Error(), s.name+": wrong argument count") ||
				!strings.HasSuffix(err.Error(), "Testfile:2") {
				t.Errorf("%s without arguments: %v", name, err)
			}
			_, err = parseAs(in, head+line(1)+line(2)+"}")
			if twice := err != nil && strings.Contains(err.Error(), "given twice"); twice == s.repeat {
				t.Errorf("%s on two lines (repeatable: %v): %v", name, s.repeat, err)
			} else if twice && !strings.HasSuffix(err.Error(), "Testfile:3") {
				t.Errorf("%s twice: %v, want line 3", name, err)
			}
		}
	}
}

// Each row's grants, and only those, accept it: the error names the
// subdirective's line, and JSON configurations meet the same rule.
func TestCaddyfileGrantRules(t *testing.T) {
	const head = "oauth_bearer {\n\ttoken_url https://as.example/token\n\tclient_id id\n\tclient_secret s\n"
	for _, s := range subdirectives {
		if s.grants == nil {
			continue
		}
		for _, g := range grantTypes {
			if s.name == "grant" {
				continue
			}
			block := head + "\tgrant " + g + "\n\t" + s.name + " " + sampleArgs(s, 1) + "\n}"
			cfg, err := parseAs(onBearer, block)
			refused := err != nil && strings.Contains(err.Error(), s.name+": only for")
			if accepted := slices.Contains(s.grants, g); accepted == refused {
				t.Errorf("%s with grant %s (accepted by %v): %v", s.name, g, s.grants, err)
				continue
			}
			if !refused {
				continue
			}
			if !strings.HasSuffix(err.Error(), "Testfile:6") {
				t.Errorf("%s with grant %s: %v, want line 6", s.name, g, err)
			}
			// The same handler as JSON.
			b, _ := json.Marshal(cfg)
			var h Handler
			if err := json.Unmarshal(b, &h); err != nil {
				t.Fatal(err)
			}
			if _, err := h.configure(provisionReplacer()); err == nil || !strings.Contains(err.Error(), s.name+": only for") {
				t.Errorf("JSON %s: %v, want %s refused", b, err, s.name)
			}
		}
	}
}

// A preset's settings are subdirectives of their own names, which no row
// may take; given to a provider without them, the error says which
// presets have them.
func TestCaddyfilePresetSettings(t *testing.T) {
	for _, name := range presetSettings() {
		if slices.ContainsFunc(subdirectives, func(s subdirective) bool { return s.name == name }) {
			t.Errorf("preset setting %s is also a row of the table", name)
		}
	}
	_, err := cfParse("oauth_bearer {\n\ttoken_url https://as.example/token\n\tclient_id a\n\ttenant t\n\tclient_secret s\n}")
	if want := "tenant: provider generic has no such setting (it is a setting of entra), at Testfile:4"; err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("tenant on generic: %v, want %q", err, want)
	}
	_, err = cfParse("oauth_bearer keycloak {\n\tclient_id a\n\tclient_secret s\n\tbase_url https://sso.example\n\trealm r\n\tregion eu\n}")
	p, _ := providers.Lookup("keycloak")
	if err == nil || !strings.Contains(err.Error(), "unrecognized subdirective 'region'") || !strings.Contains(err.Error(), strings.Join(p.ParamNames(), ", ")) {
		t.Errorf("unknown subdirective on keycloak: %v, want keycloak's settings among the known ones", err)
	}
}

// An error about one item of a repeatable subdirective names that item's
// line, not the last one's.
func TestCaddyfileRepeatableItemLines(t *testing.T) {
	const gen = "oauth_bearer {\n\tclient_id a\n\tclient_secret s\n\ttoken_url https://as.example.com/token\n"
	for _, tc := range []struct {
		name, body string
		line       int
		want       string
	}{
		{"the first header of two", "\theader \"X Bad\" 1\n\theader X-Good 2\n", 5, `header: "X Bad" is not a valid header name`},
		{"the first header duplicates the token header", "\theader authorization x\n\theader X-Good 2\n", 5, "header: Authorization carries the token"},
		{"the first resource of two", "\tresource /relative\n\tresource https://api.example/\n", 5, `resource: "/relative" is not an absolute URI`},
		{"the second param of three", "\tparam a 1\n\tparam grant_type x\n\tparam c 3\n", 6, `param: "grant_type" is set by the handler`},
	} {
		_, err := cfParse(gen + tc.body + "}")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), fmt.Sprintf("Testfile:%d", tc.line)) {
			t.Errorf("%s: %v, want %q at line %d", tc.name, err, tc.want, tc.line)
		}
	}
}

// ---------------------------------------------------------------------------
// Encryption keys

func TestDecodeEncryptionKey(t *testing.T) {
	k32 := make([]byte, 32)
	for _, ok := range []string{base64.StdEncoding.EncodeToString(k32), base64.RawURLEncoding.EncodeToString(k32),
		base64.StdEncoding.EncodeToString(make([]byte, 48))} {
		if _, err := decodeEncryptionKey(0, ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	for _, bad := range []string{short, "not base64!", ""} {
		_, err := decodeEncryptionKey(1, bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
			continue
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("the error echoes the key: %v", err)
		}
		if !strings.Contains(err.Error(), "key 2") || !strings.Contains(err.Error(), "openssl rand -base64 32") {
			t.Errorf("error %q does not name the key or say how to make one", err)
		}
	}
}
