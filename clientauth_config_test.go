package oauthbearer

// The client authentication a configuration resolves to, as it goes on the
// wire.

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// ---------------------------------------------------------------------------
// Form parameters

func TestAssertionFormParameters(t *testing.T) {
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}
	setClientAssertion(form, "h.p.s")
	want := "client_assertion=h.p.s&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&grant_type=client_credentials&scope=read"
	if got := form.Encode(); got != want {
		t.Errorf("client assertion form\n got %s\nwant %s", got, want)
	}
	form = url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}
	setJWTBearerGrant(form, "h.p.s")
	want = "assertion=h.p.s&grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&scope=read"
	if got := form.Encode(); got != want {
		t.Errorf("JWT bearer form\n got %s\nwant %s", got, want)
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
// with a service account key file (a path or the JSON), scopes and subject.
func googleAssertion(t *testing.T, serviceAccount, scopes, subject string) string {
	t.Helper()
	h := &Handler{Credentials: Credentials{Provider: "google", ServiceAccountFile: serviceAccount}, Scopes: strings.Fields(scopes), Subject: subject}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		t.Fatal(err)
	}
	a, err := cs.bearerAssertion(cs.TokenURL)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
