package oauthbearer

// Golden files of Caddyfile adaptation, in the style of Caddy's
// caddytest/integration/caddyfile_adapt: each file in
// testdata/caddyfile_adapt is a Caddyfile, a line of dashes, then the JSON
// it adapts to (indented with tabs), or, for a Caddyfile that must not
// adapt, a part of the error. After a deliberate change,
//
//	go test -run TestCaddyfileAdaptGolden -update .
//
// rewrites the expectations from what the adapter gives; read the diff.

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// update rewrites what the tests compare with (the golden files, the docs'
// generated tables) from what the code gives.
var update = flag.Bool("update", false, "rewrite testdata/caddyfile_adapt/*.caddyfiletest and the docs' generated tables")

// goldenSeparator is the line between a golden file's Caddyfile and what it
// adapts to.
var goldenSeparator = regexp.MustCompile(`(?m)^-{10,}$`)

// goldenEnvValue is what {env.NAME} holds while the golden files are
// adapted: the adapter must keep the placeholder, so it never appears.
func goldenEnvValue(name string) string { return "golden-env-value-of-" + name }

func TestCaddyfileAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files in testdata/caddyfile_adapt (%v)", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			loc := goldenSeparator.FindIndex(data)
			if loc == nil {
				t.Fatalf("%s: no line of dashes between the Caddyfile and the expected JSON or error", file)
			}
			caddyfileText := strings.TrimSpace(string(data[:loc[0]])) + "\n"
			want := strings.TrimSpace(string(data[loc[1]:]))

			// Every {env.X} holds a value while adapting: a secret
			// written as {env.X} must stay the placeholder.
			for _, m := range regexp.MustCompile(`\{env\.([A-Za-z0-9_]+)\}`).FindAllStringSubmatch(caddyfileText, -1) {
				t.Setenv(m[1], goldenEnvValue(m[1]))
			}
			out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), map[string]any{"filename": "Caddyfile"})
			for _, w := range warnings {
				t.Errorf("%s: adapter warning: %s", file, w.String())
			}

			var got string
			if want == "" || strings.HasPrefix(want, "{") {
				if err != nil {
					t.Fatalf("%s: does not adapt: %v", file, err)
				}
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, out, "", "\t"); err != nil {
					t.Fatal(err)
				}
				got = pretty.String()
				checkGoldenSecrets(t, file, got)
				if got == want {
					return
				}
			} else {
				if err == nil {
					t.Fatalf("%s: adapted, want an error containing %q", file, want)
				}
				got = err.Error()
				if strings.Contains(got, "golden-env-value-of-") {
					t.Errorf("%s: the error holds an environment variable's value: %s", file, got)
				}
				if strings.Contains(got, want) {
					return
				}
			}
			if *update && !t.Failed() {
				if err := os.WriteFile(file, []byte(caddyfileText+"----------\n"+got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: rewritten", file)
				return
			}
			t.Errorf("%s: %s\n(go test -run 'TestCaddyfileAdaptGolden' -update . rewrites the file from what the adapter gives)",
				file, goldenDiff(want, got))
		})
	}
}

// checkGoldenSecrets fails when adapted JSON holds a secret: an
// environment variable's value, or a client secret, refresh token,
// encryption key or Authorization header that is not a placeholder, or a
// key or service account given inline instead of by its path.
func checkGoldenSecrets(t *testing.T, file, adapted string) {
	t.Helper()
	if strings.Contains(adapted, "golden-env-value-of-") {
		t.Errorf("%s: the adapted JSON holds an environment variable's value instead of its placeholder", file)
	}
	placeholder := regexp.MustCompile(`^\{(env|file)\.[^}]+\}$`)
	secret := func(where, v string) {
		if !placeholder.MatchString(v) {
			t.Errorf("%s: the adapted JSON holds %s %q: write it as {env.X} or {file./path}, so that no golden file holds a secret", file, where, v)
		}
	}
	walkJSON(t, []byte(adapted), func(obj map[string]any) {
		for _, k := range []string{"client_secret", "refresh_token"} {
			if v, ok := obj[k].(string); ok {
				secret(k, v)
			}
		}
		if keys, ok := obj["encryption_keys"].([]any); ok {
			for _, k := range keys {
				s, _ := k.(string)
				secret("encryption_keys", s)
			}
		}
		if h, ok := obj["headers"].(map[string]any); ok && obj["handler"] == "oauth_bearer" {
			for _, name := range []string{"Authorization", "Proxy-Authorization"} {
				if v, ok := h[name].(string); ok {
					secret("headers."+name, v)
				}
			}
		}
		for _, k := range []string{"private_key", "tls_client_key", "service_account_file"} {
			if v, ok := obj[k].(string); ok && (strings.Contains(v, "-----BEGIN") || strings.HasPrefix(strings.TrimSpace(v), "{\"")) {
				t.Errorf("%s: the adapted JSON holds %s inline: give a path or a placeholder", file, k)
			}
		}
	})
}

// goldenDiff shows where want and got part: the first differing line with
// a few lines around it, then both in full.
func goldenDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(w) && i < len(g) && w[i] == g[i] {
		i++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "differs from line %d of the expectation:\n", i+1)
	for j := max(0, i-3); j < i; j++ {
		fmt.Fprintf(&b, "    %s\n", w[j])
	}
	if i < len(w) {
		fmt.Fprintf(&b, "  - %s\n", w[i])
	}
	if i < len(g) {
		fmt.Fprintf(&b, "  + %s\n", g[i])
	}
	fmt.Fprintf(&b, "got in full:\n%s", got)
	return b.String()
}
