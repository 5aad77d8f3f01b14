package oauthbearer

// The parsers and the rules read the table of subdirectives: each row is
// parsed into its JSON field by the directives that take it, refused with
// "belongs to" by the other, given twice only when repeatable, and refused
// with the grants that do not accept it, in the Caddyfile and in JSON.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

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
