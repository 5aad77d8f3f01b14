package oauthbearer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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

func cfJSON(t *testing.T, h *Handler) string {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func cfStr(s string) *string { return &s }

func TestParseCaddyfileSubdirectives(t *testing.T) {
	const creds = "\tclient_id my-client\n\tclient_secret {env.CF_SECRET}\n"
	const tokenURL = "\ttoken_url https://as.example.com/oauth/token\n"
	base := func() *Handler {
		return &Handler{Credentials: Credentials{ClientID: "my-client", ClientSecret: "{env.CF_SECRET}", TokenURL: "https://as.example.com/oauth/token"}}
	}
	with := func(f func(h *Handler)) *Handler {
		h := base()
		f(h)
		return h
	}
	tests := []struct {
		name  string
		input string
		want  *Handler
	}{
		{
			name:  "client_id client_secret token_url, no provider",
			input: "oauth_bearer {\n" + creds + tokenURL + "}",
			want:  base(),
		},
		{
			name:  "generic named",
			input: "oauth_bearer generic {\n" + creds + tokenURL + "}",
			want:  with(func(h *Handler) { h.Provider = "generic" }),
		},
		{
			name:  "client_secret from a file placeholder stays literal",
			input: "oauth_bearer {\n\tclient_id {env.CF_ID}\n\tclient_secret {file./run/secrets/cf}\n" + tokenURL + "}",
			want: with(func(h *Handler) {
				h.ClientID, h.ClientSecret = "{env.CF_ID}", "{file./run/secrets/cf}"
			}),
		},
		{
			name:  "token_url placeholder is not checked at parse time",
			input: "oauth_bearer {\n" + creds + "\ttoken_url {env.CF_TOKEN_URL}\n}",
			want:  with(func(h *Handler) { h.TokenURL = "{env.CF_TOKEN_URL}" }),
		},
		{
			name:  "token_url plain http to 127.0.0.1",
			input: "oauth_bearer {\n" + creds + "\ttoken_url http://127.0.0.1:9000/token\n}",
			want:  with(func(h *Handler) { h.TokenURL = "http://127.0.0.1:9000/token" }),
		},
		{
			name:  "token_url plain http to localhost",
			input: "oauth_bearer {\n" + creds + "\ttoken_url http://localhost:8080/oauth/token\n}",
			want:  with(func(h *Handler) { h.TokenURL = "http://localhost:8080/oauth/token" }),
		},
		{
			name:  "token_url plain http to [::1]",
			input: "oauth_bearer {\n" + creds + "\ttoken_url http://[::1]:8080/token\n}",
			want:  with(func(h *Handler) { h.TokenURL = "http://[::1]:8080/token" }),
		},
		{
			name:  "preset needs no token_url",
			input: "oauth_bearer eventtemple {\n" + creds + "}",
			want:  &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "my-client", ClientSecret: "{env.CF_SECRET}"}},
		},
		{
			name:  "environment sandbox on bookable",
			input: "oauth_bearer bookable {\n" + creds + "\tenvironment sandbox\n}",
			want:  &Handler{Credentials: Credentials{Provider: "bookable", Environment: "sandbox", ClientID: "my-client", ClientSecret: "{env.CF_SECRET}"}},
		},
		{
			name:  "environment production on eventbookings",
			input: "oauth_bearer eventbookings {\n" + creds + "\tenvironment production\n}",
			want:  &Handler{Credentials: Credentials{Provider: "eventbookings", Environment: "production", ClientID: "my-client", ClientSecret: "{env.CF_SECRET}"}},
		},
		{
			name:  "scope with several values",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tscope crm_read crm_manage\n}",
			want:  with(func(h *Handler) { h.Scopes = []string{"crm_read", "crm_manage"} }),
		},
		{
			name:  "scope with one value",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tscope read\n}",
			want:  with(func(h *Handler) { h.Scopes = []string{"read"} }),
		},
		{
			name:  "audience",
			input: "oauth_bearer {\n" + creds + tokenURL + "\taudience https://api.example.com\n}",
			want:  with(func(h *Handler) { h.Audience = "https://api.example.com" }),
		},
		{
			name:  "resource repeated",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tresource https://api.example.com/a\n\tresource urn:example:b\n\tresource {env.CF_RES}\n}",
			want: with(func(h *Handler) {
				h.Resources = []string{"https://api.example.com/a", "urn:example:b", "{env.CF_RES}"}
			}),
		},
		{
			name:  "param repeated",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tparam tenant t-1\n\tparam note \"two words\"\n}",
			want:  with(func(h *Handler) { h.Params = map[string]string{"tenant": "t-1", "note": "two words"} }),
		},
		{
			name:  "request_format json",
			input: "oauth_bearer {\n" + creds + tokenURL + "\trequest_format json\n}",
			want:  with(func(h *Handler) { h.RequestFormat = "json" }),
		},
		{
			name:  "request_format form",
			input: "oauth_bearer {\n" + creds + tokenURL + "\trequest_format form\n}",
			want:  with(func(h *Handler) { h.RequestFormat = "form" }),
		},
		{
			name:  "request_format auto",
			input: "oauth_bearer {\n" + creds + tokenURL + "\trequest_format auto\n}",
			want:  with(func(h *Handler) { h.RequestFormat = "auto" }),
		},
		{
			name:  "client_auth body",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tclient_auth body\n}",
			want:  with(func(h *Handler) { h.ClientAuth = "body" }),
		},
		{
			name:  "client_auth basic",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tclient_auth basic\n}",
			want:  with(func(h *Handler) { h.ClientAuth = "basic" }),
		},
		{
			name:  "durations",
			input: "oauth_bearer {\n" + creds + tokenURL + "\trefresh_before 30s\n\tdefault_lifetime 1d\n\ttimeout 2.5s\n}",
			want: with(func(h *Handler) {
				h.RefreshBefore = caddy.Duration(30 * time.Second)
				h.DefaultLifetime = caddy.Duration(24 * time.Hour)
				h.Timeout = caddy.Duration(2500 * time.Millisecond)
			}),
		},
		{
			name:  "header repeated and canonicalised",
			input: "oauth_bearer {\n" + creds + tokenURL + "\theader x-custom-thing {http.request.header.X-Foo}\n\theader X-OTHER \"v 2\"\n}",
			want: with(func(h *Handler) {
				h.Headers = map[string]string{"X-Custom-Thing": "{http.request.header.X-Foo}", "X-Other": "v 2"}
			}),
		},
		{
			name:  "org on eventtemple",
			input: "oauth_bearer eventtemple {\n" + creds + "\torg {env.CF_ORG}\n}",
			want:  &Handler{Credentials: Credentials{Provider: "eventtemple", ClientID: "my-client", ClientSecret: "{env.CF_SECRET}"}, Org: "{env.CF_ORG}"},
		},
		{
			name:  "token_header with prefix",
			input: "oauth_bearer {\n" + creds + tokenURL + "\ttoken_header Authorization Token\n}",
			want:  with(func(h *Handler) { h.TokenHeader, h.TokenPrefix = "Authorization", cfStr("Token") }),
		},
		{
			name:  "token_header without prefix",
			input: "oauth_bearer {\n" + creds + tokenURL + "\ttoken_header X-Api-Key\n}",
			want:  with(func(h *Handler) { h.TokenHeader, h.TokenPrefix = "X-Api-Key", cfStr("") }),
		},
		{
			name:  "header Authorization allowed when the token goes elsewhere",
			input: "oauth_bearer {\n" + creds + tokenURL + "\ttoken_header X-Api-Key\n\theader Authorization \"Basic abc\"\n}",
			want: with(func(h *Handler) {
				h.TokenHeader, h.TokenPrefix = "X-Api-Key", cfStr("")
				h.Headers = map[string]string{"Authorization": "Basic abc"}
			}),
		},
		{
			name:  "ca_file",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tca_file /etc/ssl/corp-ca.pem\n}",
			want:  with(func(h *Handler) { h.CAFile = "/etc/ssl/corp-ca.pem" }),
		},
		{
			name:  "upstream_401 invalidate",
			input: "oauth_bearer {\n" + creds + tokenURL + "\tupstream_401 invalidate\n}",
			want:  with(func(h *Handler) { h.Upstream401 = "invalidate" }),
		},
		{
			name:  "replay_max_body size",
			input: "oauth_bearer {\n" + creds + tokenURL + "\treplay_max_body 64KiB\n}",
			want:  with(func(h *Handler) { h.ReplayMaxBody = 64 << 10 }),
		},
		{
			name:  "replay_max_body 0 means no body",
			input: "oauth_bearer {\n" + creds + tokenURL + "\treplay_max_body 0\n}",
			want:  with(func(h *Handler) { h.ReplayMaxBody = -1 }),
		},
		{
			name: "everything at once",
			input: `oauth_bearer bookable {
	client_id     {env.BK_ID}
	client_secret {env.BK_SECRET}
	token_url     https://auth.example.net/oauth/token
	environment   sandbox
	scope         venue:read venue-booking:create
	audience      api.example.net
	resource      https://api.example.net/
	param         connection m2m
	request_format form
	client_auth   basic
	refresh_before 2m
	default_lifetime 15m
	timeout       3s
	header        x-request-source caddy
	token_header  X-Access-Token
}`,
			want: &Handler{
				Credentials:   Credentials{Provider: "bookable", Environment: "sandbox", TokenURL: "https://auth.example.net/oauth/token", ClientID: "{env.BK_ID}", ClientSecret: "{env.BK_SECRET}", RequestFormat: "form", ClientAuth: "basic", DefaultLifetime: caddy.Duration(15 * time.Minute), Timeout: caddy.Duration(3 * time.Second)},
				Scopes:        []string{"venue:read", "venue-booking:create"},
				Audience:      "api.example.net",
				Resources:     []string{"https://api.example.net/"},
				Params:        map[string]string{"connection": "m2m"},
				RefreshBefore: caddy.Duration(2 * time.Minute),
				Headers:       map[string]string{"X-Request-Source": "caddy"},
				TokenHeader:   "X-Access-Token",
				TokenPrefix:   cfStr(""),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := cfParse(tc.input)
			if err != nil {
				t.Fatalf("unexpected error: %v\ninput:\n%s", err, tc.input)
			}
			if got, want := cfJSON(t, h), cfJSON(t, tc.want); got != want {
				t.Errorf("parsed handler:\n got %s\nwant %s", got, want)
			}
		})
	}
}

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

// cfHandlers lists the handlers of a route list in execution order,
// descending into subroutes.
func cfHandlers(routes []any) []string {
	var out []string
	for _, r := range routes {
		route, _ := r.(map[string]any)
		handles, _ := route["handle"].([]any)
		for _, h := range handles {
			hm, _ := h.(map[string]any)
			name, _ := hm["handler"].(string)
			out = append(out, name)
			if sub, ok := hm["routes"].([]any); ok {
				out = append(out, cfHandlers(sub)...)
			}
		}
	}
	return out
}

// cfFind returns the first handler object with the given name.
func cfFind(routes []any, name string) map[string]any {
	for _, r := range routes {
		route, _ := r.(map[string]any)
		handles, _ := route["handle"].([]any)
		for _, h := range handles {
			hm, _ := h.(map[string]any)
			if hm["handler"] == name {
				return hm
			}
			if sub, ok := hm["routes"].([]any); ok {
				if found := cfFind(sub, name); found != nil {
					return found
				}
			}
		}
	}
	return nil
}

func cfAdapt(t *testing.T, caddyfileText string) []byte {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("caddyfile adapter not registered")
	}
	out, warnings, err := adapter.Adapt([]byte(caddyfileText), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		t.Logf("adapter warning: %s", w.String())
	}
	return out
}

func cfServerRoutes(t *testing.T, adapted []byte) []any {
	t.Helper()
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []any `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps.HTTP.Servers) != 1 {
		t.Fatalf("want one server, got %d:\n%s", len(cfg.Apps.HTTP.Servers), adapted)
	}
	for _, s := range cfg.Apps.HTTP.Servers {
		return s.Routes
	}
	return nil
}

func TestAdaptCaddyfileHandlerJSONAndOrder(t *testing.T) {
	const secretValue = "adapt-cf-secret-7f3a91"
	t.Setenv("OAB_CF_SECRET", secretValue)
	t.Setenv("OAB_CF_ID", "adapt-cf-id-value")
	// Written in the "wrong" order on purpose: the directive order must
	// put request_header, then oauth_bearer, then the handle block.
	out := cfAdapt(t, `{
	admin off
	auto_https off
}

:8080 {
	handle /api/* {
		reverse_proxy 127.0.0.1:9
	}
	oauth_bearer eventtemple {
		client_id     {env.OAB_CF_ID}
		client_secret {env.OAB_CF_SECRET}
		scope         crm_read crm_manage
		org           4711
		header        x-trace {http.request.uuid}
		timeout       5s
	}
	request_header X-From caddy
}
`)
	s := string(out)
	if !strings.Contains(s, `"handler":"oauth_bearer"`) {
		t.Fatalf(`adapted JSON has no "handler":"oauth_bearer":\n%s`, s)
	}
	if strings.Contains(s, secretValue) || strings.Contains(s, "adapt-cf-id-value") {
		t.Errorf("adapted JSON contains an environment value instead of the placeholder:\n%s", s)
	}
	if !strings.Contains(s, `"client_secret":"{env.OAB_CF_SECRET}"`) {
		t.Errorf("adapted JSON does not keep {env.OAB_CF_SECRET} literally:\n%s", s)
	}

	routes := cfServerRoutes(t, out)
	ob := cfFind(routes, "oauth_bearer")
	if ob == nil {
		t.Fatalf("oauth_bearer handler not found in routes:\n%s", s)
	}
	want := map[string]any{
		"handler":       "oauth_bearer",
		"provider":      "eventtemple",
		"client_id":     "{env.OAB_CF_ID}",
		"client_secret": "{env.OAB_CF_SECRET}",
		"scopes":        []any{"crm_read", "crm_manage"},
		"org":           "4711",
		"headers":       map[string]any{"X-Trace": "{http.request.uuid}"},
		"timeout":       float64(5 * time.Second),
	}
	gotJSON, _ := json.Marshal(ob)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Errorf("oauth_bearer handler JSON:\n got %s\nwant %s", gotJSON, wantJSON)
	}

	order := cfHandlers(routes)
	t.Logf("handlers in execution order: %v", order)
	idx := func(name string) int { return slices.Index(order, name) }
	iHeaders, iOB, iProxy := idx("headers"), idx("oauth_bearer"), idx("reverse_proxy")
	if iHeaders < 0 || iOB < 0 || iProxy < 0 {
		t.Fatalf("handlers in order = %v; want headers, oauth_bearer and reverse_proxy", order)
	}
	if iHeaders > iOB {
		t.Errorf("handlers in order = %v: oauth_bearer must sort after request_header", order)
	}
	// The subroute of the handle block (the one holding reverse_proxy)
	// must come after oauth_bearer.
	iSub := -1
	for i := iProxy - 1; i >= 0; i-- {
		if order[i] == "subroute" {
			iSub = i
			break
		}
	}
	if iSub < 0 || iOB > iSub || iOB > iProxy {
		t.Errorf("handlers in order = %v: oauth_bearer must run before the handle block's subroute and its reverse_proxy", order)
	}
}

func TestAdaptCaddyfileWithMatcherAndFilePlaceholder(t *testing.T) {
	out := cfAdapt(t, `:8081 {
	@api path /api/*
	oauth_bearer @api {
		client_id     cid
		client_secret {file./run/secrets/oab}
		token_url     https://as.example.com/oauth/token
		token_header  X-Api-Key
	}
	reverse_proxy 127.0.0.1:9
}
`)
	routes := cfServerRoutes(t, out)
	ob := cfFind(routes, "oauth_bearer")
	if ob == nil {
		t.Fatalf("oauth_bearer not found:\n%s", out)
	}
	if ob["client_secret"] != "{file./run/secrets/oab}" {
		t.Errorf("client_secret = %v, want the file placeholder kept", ob["client_secret"])
	}
	if ob["token_header"] != "X-Api-Key" || ob["token_prefix"] != "" {
		t.Errorf("token_header/prefix = %v/%v, want X-Api-Key and an explicit empty prefix", ob["token_header"], ob["token_prefix"])
	}
	if _, has := ob["provider"]; has {
		t.Errorf("provider should be omitted for the implicit generic preset: %v", ob["provider"])
	}
	if !strings.Contains(string(out), `"/api/*"`) {
		t.Errorf("matcher lost:\n%s", out)
	}
}

func TestAdaptCaddyfileErrorNamesFileAndLine(t *testing.T) {
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`:8082 {
	oauth_bearer bookable {
		client_id a
		client_secret b
		environment staging
	}
	reverse_proxy 127.0.0.1:9
}
`), map[string]any{"filename": "Caddyfile"})
	if err == nil {
		t.Fatal("no error for environment staging on bookable")
	}
	if msg := err.Error(); !strings.Contains(msg, "Caddyfile:5") || !strings.Contains(msg, "environment") {
		t.Errorf("error %q should name Caddyfile:5 and environment", msg)
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
