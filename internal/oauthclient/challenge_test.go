package oauthclient

import (
	"net/http"
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

// The copied parser on the lists RFC 9110 allows; the root package's
// challenge_test.go tests the original at length.
func TestParseChallengesCopy(t *testing.T) {
	cs := parseChallenges(`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple", DPoP algs="ES256 PS256", error="use_dpop_nonce", Bearer abc==`)
	if len(cs) != 4 {
		t.Fatalf("%d challenges: %+v", len(cs), cs)
	}
	if cs[0].params["title"] != `Login to "apps"` || cs[0].params["type"] != "1" {
		t.Errorf("Newauth: %+v", cs[0])
	}
	if cs[2].scheme != "DPoP" || cs[2].params["algs"] != "ES256 PS256" || cs[2].params["error"] != "use_dpop_nonce" {
		t.Errorf("DPoP: %+v", cs[2])
	}
	if cs[3].token68 != "abc==" {
		t.Errorf("token68: %+v", cs[3])
	}
}
