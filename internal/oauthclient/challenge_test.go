package oauthclient

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestTokenNonceChallenge(t *testing.T) {
	const body = `{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}`
	nonce := http.Header{"Dpop-Nonce": {"eyJ7S_zG.eyJH0-Z.HX4w-7v"}}
	for _, tc := range []struct {
		name   string
		status int
		h      http.Header
		body   string
		want   string
	}{
		{"RFC 9449 §8", 400, nonce, body, "eyJ7S_zG.eyJH0-Z.HX4w-7v"},
		{"no nonce header", 400, http.Header{}, body, ""},
		{"invalid nonce", 400, http.Header{"Dpop-Nonce": {"a b"}}, body, ""},
		{"other error", 400, nonce, `{"error":"invalid_dpop_proof"}`, ""},
		{"not 400", 401, nonce, body, ""},
		{"success with a nonce", 200, nonce, `{"access_token":"x"}`, ""},
		{"not JSON", 400, nonce, "use_dpop_nonce", ""},
	} {
		got, ok := TokenNonceChallenge(tc.status, tc.h, []byte(tc.body))
		if ok != (tc.want != "") || got != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.name, got, ok, tc.want)
		}
	}
}

func TestResourceNonceChallenge(t *testing.T) {
	const n = "eyJ7S_zG.eyJH0-Z.HX4w-7v"
	for _, tc := range []struct {
		name   string
		status int
		www    []string
		nonce  string
		want   bool
		code   string // DPoPChallengeError
	}{
		// RFC 9449 §9, Figure 20.
		{"RFC 9449 §9", 401, []string{`DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"`}, n, true, "use_dpop_nonce"},
		{"token error unquoted", 401, []string{`DPoP error=use_dpop_nonce`}, n, true, "use_dpop_nonce"},
		{"scheme in lower case", 401, []string{`dpop algs="ES256", error="use_dpop_nonce"`}, n, true, "use_dpop_nonce"},
		{"after a Bearer challenge", 401, []string{`Bearer realm="api", DPoP algs="ES256 PS256", error="use_dpop_nonce"`}, n, true, "use_dpop_nonce"},
		{"in a second field", 401, []string{`Bearer realm="api"`, `DPoP error="use_dpop_nonce"`}, n, true, "use_dpop_nonce"},
		{"no nonce header", 401, []string{`DPoP error="use_dpop_nonce"`}, "", false, "use_dpop_nonce"},
		{"invalid proof", 401, []string{`DPoP error="invalid_dpop_proof", algs="ES256"`}, n, false, "invalid_dpop_proof"},
		{"invalid token", 401, []string{`DPoP error="invalid_token"`}, n, false, "invalid_token"},
		{"no error", 401, []string{`DPoP algs="ES256"`}, n, false, ""},
		{"Bearer only", 401, []string{`Bearer error="use_dpop_nonce"`}, n, false, ""},
		{"403", 403, []string{`DPoP error="use_dpop_nonce"`}, n, false, "use_dpop_nonce"},
	} {
		h := http.Header{"Www-Authenticate": tc.www}
		if tc.nonce != "" {
			h.Set("DPoP-Nonce", tc.nonce)
		}
		got, ok := ResourceNonceChallenge(tc.status, h)
		if ok != tc.want || (ok && got != n) {
			t.Errorf("%s: %q %v, want %v", tc.name, got, ok, tc.want)
		}
		code, isDPoP := DPoPChallengeError(h)
		if code != tc.code || isDPoP != (tc.name != "Bearer only") {
			t.Errorf("%s: DPoPChallengeError = %q %v, want %q", tc.name, code, isDPoP, tc.code)
		}
	}
}

// WWW-Authenticate parsing (RFC 9110 §11.6.1), which the DPoP challenges
// above and the root package's upstream 401 rules (replay.go) use.

// chlWant is an expected challenge: the scheme compares case-insensitively
// (RFC 9110 §11.1), parameter names must come back in lower case.
type chlWant struct {
	scheme  string
	token68 string
	params  map[string]string
}

func chlString(cs []Challenge) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("{%s t68=%q %v}", c.Scheme, c.Token68, c.Params))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func chlEqual(got Challenge, want chlWant) bool {
	if !strings.EqualFold(got.Scheme, want.scheme) || got.Token68 != want.token68 || len(got.Params) != len(want.params) {
		return false
	}
	for k, v := range want.params {
		if gv, ok := got.Params[k]; !ok || gv != v {
			return false
		}
	}
	return true
}

func TestParseChallengesRFC9110Lists(t *testing.T) {
	type p = map[string]string
	for _, tc := range []struct {
		name string
		in   string
		want []chlWant
		// prefix: the input is malformed inside a challenge; only the
		// challenges before the fault are required, and none after it
		// may appear beyond one for the faulty challenge itself.
		prefix bool
	}{
		{"empty", "", nil, false},
		{"blanks", "  \t ", nil, false},
		{"only empty list elements", ", ,,\t,", nil, false},
		{"bare scheme", "Bearer", []chlWant{{"Bearer", "", nil}}, false},
		{"one param", `Bearer realm="api"`, []chlWant{{"Bearer", "", p{"realm": "api"}}}, false},
		{"RFC 9110 example: params of one challenge and the next challenge share commas",
			`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple"`,
			[]chlWant{{"Newauth", "", p{"realm": "apps", "type": "1", "title": `Login to "apps"`}}, {"Basic", "", p{"realm": "simple"}}}, false},
		{"Bearer after Basic on one line",
			`Basic realm="api", Bearer realm="api", error="invalid_token"`,
			[]chlWant{{"Basic", "", p{"realm": "api"}}, {"Bearer", "", p{"realm": "api", "error": "invalid_token"}}}, false},
		{"commas and escaped quotes inside quoted strings",
			`Bearer realm="a, b", error_description="say \"no\", twice", error="invalid_token"`,
			[]chlWant{{"Bearer", "", p{"realm": "a, b", "error_description": `say "no", twice`, "error": "invalid_token"}}}, false},
		{"a quoted string that looks like a challenge",
			`Bearer realm="x, Bearer error=\"invalid_token\"", error="invalid_request"`,
			[]chlWant{{"Bearer", "", p{"realm": `x, Bearer error="invalid_token"`, "error": "invalid_request"}}}, false},
		{"quoted-pair of an ordinary character", `Bearer realm="a\b\\c"`, []chlWant{{"Bearer", "", p{"realm": `ab\c`}}}, false},
		{"empty quoted string", `Bearer realm=""`, []chlWant{{"Bearer", "", p{"realm": ""}}}, false},
		{"token68 Basic", `Basic dXNlcjpwYXNz`, []chlWant{{"Basic", "dXNlcjpwYXNz", nil}}, false},
		{"token68 with padding", `Negotiate abc==`, []chlWant{{"Negotiate", "abc==", nil}}, false},
		{"token68 of every allowed character", `X a-._~+/Z9=`, []chlWant{{"X", "a-._~+/Z9=", nil}}, false},
		{"token68 then a challenge",
			`Negotiate abc==, Bearer error="invalid_token"`,
			[]chlWant{{"Negotiate", "abc==", nil}, {"Bearer", "", p{"error": "invalid_token"}}}, false},
		{"token68 with trailing blanks then a challenge",
			"Basic dXNlcjpwYXNz \t , Bearer",
			[]chlWant{{"Basic", "dXNlcjpwYXNz", nil}, {"Bearer", "", nil}}, false},
		{"BWS around =",
			`Bearer realm = "api" , error =invalid_token`,
			[]chlWant{{"Bearer", "", p{"realm": "api", "error": "invalid_token"}}}, false},
		{"no blanks after the commas",
			`Basic realm="a",charset=UTF-8,Bearer error="invalid_token",realm="b"`,
			[]chlWant{{"Basic", "", p{"realm": "a", "charset": "UTF-8"}}, {"Bearer", "", p{"error": "invalid_token", "realm": "b"}}}, false},
		{"tabs as BWS", "Bearer realm\t=\t\"api\"", []chlWant{{"Bearer", "", p{"realm": "api"}}}, false},
		{"empty list elements everywhere",
			`, , Bearer realm="x", , error="invalid_token", ,Basic realm="y",`,
			[]chlWant{{"Bearer", "", p{"realm": "x", "error": "invalid_token"}}, {"Basic", "", p{"realm": "y"}}}, false},
		{"scheme and param names case-insensitive; values as sent",
			`bEaReR ERROR="invalid_token", Realm=API`,
			[]chlWant{{"Bearer", "", p{"error": "invalid_token", "realm": "API"}}}, false},
		{"scheme with no params followed by a challenge",
			`Bearer, Basic realm="x"`,
			[]chlWant{{"Bearer", "", nil}, {"Basic", "", p{"realm": "x"}}}, false},
		{"malformed: missing comma between challenges",
			`Basic realm="x" Bearer error="invalid_token"`,
			[]chlWant{{"Basic", "", p{"realm": "x"}}}, false},
		{"malformed: garbage list element",
			`Bearer error="invalid_token", @@@, Basic realm="x"`,
			[]chlWant{{"Bearer", "", p{"error": "invalid_token"}}}, false},
		{"malformed: no scheme", `="x", Bearer`, nil, false},
		{"malformed: garbage after a token68", `Negotiate abc==def, Bearer`, []chlWant{{"Negotiate", "abc==", nil}}, false},
		{"malformed: unterminated quoted string in a later challenge",
			`Basic realm="x", Bearer realm="unterminated, error=invalid_token`,
			[]chlWant{{"Basic", "", p{"realm": "x"}}}, true},
		{"malformed: backslash at the end of a quoted string",
			`Basic realm="x", Bearer realm="unterminated\`,
			[]chlWant{{"Basic", "", p{"realm": "x"}}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ParseChallenges(tc.in)
			ok := len(got) == len(tc.want)
			if tc.prefix {
				ok = len(got) >= len(tc.want) && len(got) <= len(tc.want)+1
			}
			for i := 0; ok && i < len(tc.want); i++ {
				ok = chlEqual(got[i], tc.want[i])
			}
			if ok && tc.prefix {
				// Whatever is returned for the faulty challenge carries
				// nothing read from beyond the fault.
				for _, c := range got[len(tc.want):] {
					for _, v := range c.Params {
						if strings.Contains(v, "unterminated") || strings.Contains(v, "invalid_token") {
							ok = false
						}
					}
				}
			}
			for _, c := range got {
				for k := range c.Params {
					if k != strings.ToLower(k) {
						ok = false
					}
				}
			}
			if !ok {
				t.Errorf("ParseChallenges(%q)\n got  %s\n want %v (prefix only: %v)", tc.in, chlString(got), tc.want, tc.prefix)
			}
		})
	}
}

// A DPoP challenge among others on one line, as resource servers send it.
func TestParseChallengesDPoPAmongOthers(t *testing.T) {
	cs := ParseChallenges(`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple", DPoP algs="ES256 PS256", error="use_dpop_nonce", Bearer abc==`)
	if len(cs) != 4 {
		t.Fatalf("%d challenges: %+v", len(cs), cs)
	}
	if cs[0].Params["title"] != `Login to "apps"` || cs[0].Params["type"] != "1" {
		t.Errorf("Newauth: %+v", cs[0])
	}
	if cs[2].Scheme != "DPoP" || cs[2].Params["algs"] != "ES256 PS256" || cs[2].Params["error"] != "use_dpop_nonce" {
		t.Errorf("DPoP: %+v", cs[2])
	}
	if cs[3].Token68 != "abc==" {
		t.Errorf("token68: %+v", cs[3])
	}
}
