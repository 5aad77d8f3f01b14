package oauthbearer

// The client authentication a configuration resolves to, as it goes on the
// wire.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

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
	forms := make(chan url.Values, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		forms <- r.PostForm
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"at-google","expires_in":3600}`)
	}))
	defer srv.Close()
	cs.TokenURL = srv.URL
	ep := newEndpoint(cs, &clock{})
	defer ep.Close()
	if _, err := ep.ClientCredentials(context.Background()); err != nil {
		t.Fatal(err)
	}
	form := <-forms
	if form.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		t.Fatalf("grant_type %q", form.Get("grant_type"))
	}
	return form.Get("assertion")
}
