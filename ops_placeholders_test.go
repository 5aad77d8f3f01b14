package oauthbearer

// Issue 14: request placeholders in the values of the token request are
// refused when the configuration loads.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// Request placeholders in the token request's values are refused when the
// configuration loads: a token is shared by every request of its
// credential set, so they could only be sent literally. The error names
// the subdirective, the placeholder and the line; {env.*} and {file.*}
// stay allowed, and so does a literal brace escaped as \{.
func TestRequestPlaceholdersInTokenParamsRefused(t *testing.T) {
	t.Setenv("OPS_TENANT", "acme")
	const head = "http://127.0.0.1:18031 {\n\toauth_bearer {\n\t\ttoken_url https://as.example/token\n\t\tclient_id a\n\t\tclient_secret {env.OPS_TENANT}\n"
	adapt := func(body string) error {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(head+body+"\t}\n\trespond ok\n}\n"), map[string]any{"filename": "Caddyfile"})
		return err
	}
	for _, tc := range []struct {
		name, body string
		line       int
		want       []string
	}{
		{"scope", "\t\tscope read {http.request.header.X-Scope}\n", 6, []string{"scope", "{http.request.header.X-Scope}"}},
		{"scope, shorthand", "\t\tscope {header.X-Scope}\n", 6, []string{"scope", "{http.request.header.X-Scope}"}},
		{"audience", "\t\taudience {http.request.host}\n", 6, []string{"audience", "{http.request.host}"}},
		{"resource, the second", "\t\tresource https://a.example/\n\t\tresource https://{http.request.host}/api\n\t\tparam x y\n", 7, []string{"resource", "{http.request.host}"}},
		{"param, the first", "\t\tparam tenant {http.request.header.X-Tenant}\n\t\tparam region eu\n", 6, []string{"param", `"tenant"`, "{http.request.header.X-Tenant}"}},
		{"param, a time placeholder", "\t\tparam region eu\n\t\tparam nonce {time.now.unix}\n", 7, []string{"param", `"nonce"`, "{time.now.unix}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := adapt(tc.body)
			if err == nil {
				t.Fatalf("loaded:\n%s", tc.body)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, fmt.Sprintf("at Caddyfile:%d", tc.line)) {
				t.Errorf("error %q does not name line %d", msg, tc.line)
			}
			for _, w := range append(tc.want, "only {env.*} and {file.*}") {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
	if err := adapt("\t\tscope {env.OPS_TENANT}.read\n\t\tparam tenant {env.OPS_TENANT}\n\t\tparam filter \\{literal\\}\n"); err != nil {
		t.Errorf("{env.*} and an escaped brace: %v", err)
	}

	// A JSON configuration is refused when it is loaded, by a real Caddy.
	sites := fmt.Sprintf("http://LISTEN {\n\toauth_bearer {\n\t\ttoken_url https://as.example/token\n\t\tclient_id a\n\t\tclient_secret s\n\t\tparam tenant acme\n\t}\n\treverse_proxy %s\n}\n", newUpstream(t).hostport())
	c := startCaddy(t, sites)
	cfgJSON, err := c.adapt(sites)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(cfgJSON), `"tenant":"acme"`, `"tenant":"{http.request.header.X-Tenant}"`, 1)
	if bad == string(cfgJSON) {
		t.Fatalf("the adapted JSON has no param to change:\n%s", cfgJSON)
	}
	err = caddy.Load([]byte(bad), true)
	if err == nil || !strings.Contains(err.Error(), "param") || !strings.Contains(err.Error(), "{http.request.header.X-Tenant}") {
		t.Errorf("loading JSON with a request placeholder in a param: %v", err)
	}
}

// laterPlaceholder finds placeholders as Caddy's replacer does: escaped
// braces and brace pairs that cannot name a placeholder are not ones.
func TestLaterPlaceholder(t *testing.T) {
	for in, want := range map[string]string{
		"read write":                        "",
		"{env.SCOPE} {file./run/scope}":     "",
		"tenant-{http.request.header.X-T}":  "{http.request.header.X-T}",
		"{env.A}{time.now.unix}":            "{time.now.unix}",
		`\{literal\}`:                       "",
		`{"a":1}`:                           "",
		"{}":                                "",
		"{ spaced }":                        "",
		"https://{http.request.host}/api":   "{http.request.host}",
		"{system.hostname} {http.vars.who}": "{system.hostname}",
	} {
		if got := laterPlaceholder(in); got != want {
			t.Errorf("laterPlaceholder(%q) = %q, want %q", in, got, want)
		}
	}
}
