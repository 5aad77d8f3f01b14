package oauthbearer

// internal/oauthclient's assertions (keys from PEM files, every algorithm,
// claims, jti, x5t#S256, client_secret_jwt, Google service accounts,
// assertion files) against fakeAS, which verifies them as a provider does
// (with go-jose, against registered keys: newJWTAS).

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// clientAssertionForm is a client_credentials request authenticated with
// assertion.
func clientAssertionForm(assertion string) url.Values {
	return url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
}

// wantIssued fails unless asPost's answer (status, a) is a token answer.
func wantIssued(t *testing.T, s *fakeAS, status int, a map[string]any) {
	t.Helper()
	if at, _ := a["access_token"].(string); status != http.StatusOK || at == "" || a["token_type"] != "Bearer" || a["expires_in"] != 3600.0 {
		t.Fatalf("answer %d %v; server said %q", status, a, s.lastRefusal())
	}
}

// wantRefused fails unless asPost's answer (status, a) is a refusal with
// code and a description holding desc.
func wantRefused(t *testing.T, status int, a map[string]any, wantStatus int, code, desc string) {
	t.Helper()
	if d, _ := a["error_description"].(string); status != wantStatus || a["error"] != code || !strings.Contains(d, desc) || a["access_token"] != nil {
		t.Fatalf("answer %d %v; want %d %s %q", status, a, wantStatus, code, desc)
	}
}

// ---------------------------------------------------------------------------
// Tests

// Every key type and algorithm, from a PEM file through LoadPrivateKey, is
// accepted by a verifying server.
func TestJWTServerAcceptsEachKeyAndAlg(t *testing.T) {
	s := newJWTAS(t)
	k := testkeys.Keys()
	cases := []struct {
		key crypto.Signer
		alg string
	}{
		{k.RSA, ""}, {k.RSA, "RS256"}, {k.RSA, "RS384"}, {k.RSA, "RS512"},
		{k.RSA, "PS256"}, {k.RSA, "PS384"}, {k.RSA, "PS512"},
		{k.P256, ""}, {k.P256, "ES256"}, {k.P384, ""}, {k.P384, "ES384"},
		{k.Ed, ""}, {k.Ed, "EdDSA"},
	}
	for i, c := range cases {
		clientID := fmt.Sprintf("client-%d-%T-%s", i, c.key, c.alg)
		t.Run(clientID, func(t *testing.T) {
			key, err := oauthclient.LoadPrivateKey(testkeys.WriteFile(t, "key.pem", testkeys.PKCS8PEM(t, c.key)))
			if err != nil {
				t.Fatal(err)
			}
			alg, err := oauthclient.SigningAlg(key, c.alg)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := oauthclient.NewAssertionSigner(key, alg, "kid-"+clientID, nil)
			if err != nil {
				t.Fatal(err)
			}
			s.register(clientID, c.key.Public(), "")
			a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: clientID, Subject: clientID, Audience: s.tokenURL()})
			if err != nil {
				t.Fatal(err)
			}
			form := clientAssertionForm(a)
			form.Set("client_id", clientID)
			st, ans := asPost(t, s.tokenURL(), form)
			wantIssued(t, s, st, ans)
			g := s.issuedLog()
			if last := g[len(g)-1]; last.Client != clientID || last.KID != "kid-"+clientID {
				t.Fatalf("issued to %+v", last)
			}
		})
	}
	if s.issued() != int64(len(cases)) || s.refused() != 0 {
		t.Fatalf("issued %d refused %d, want %d and 0", s.issued(), s.refused(), len(cases))
	}
}

// An assertion signed by another key than the registered one is refused,
// whatever the other key's type.
func TestJWTServerRefusesWrongKey(t *testing.T) {
	s := newJWTAS(t)
	k := testkeys.Keys()
	for i, c := range []struct {
		registered crypto.PublicKey
		signWith   crypto.Signer
		want       string
	}{
		{k.RSA.Public(), k.RSA2, "signature does not verify"},
		{k.P256.Public(), k.P256b, "signature does not verify"},
		{k.Ed.Public(), k.Ed2, "signature does not verify"},
		{k.RSA.Public(), k.P256, "alg ES256 does not fit the registered key"},
		{k.P384.Public(), k.P256, "alg ES256 does not fit the registered key"},
	} {
		id := fmt.Sprintf("wrong-%d", i)
		s.register(id, c.registered, "")
		signer, err := oauthclient.NewAssertionSigner(c.signWith, "", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: id, Subject: id, Audience: s.tokenURL()})
		if err != nil {
			t.Fatal(err)
		}
		st, ans := asPost(t, s.tokenURL(), clientAssertionForm(a))
		wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", c.want)
	}
	if s.issued() != 0 || s.refused() != 5 {
		t.Fatalf("issued %d refused %d", s.issued(), s.refused())
	}
}

// rawTestAssertion signs arbitrary claims with go-jose directly, to make
// the assertions that AssertionSigner refuses to make.
func rawTestAssertion(t *testing.T, key crypto.Signer, claims map[string]any) string {
	t.Helper()
	alg, err := oauthclient.SigningAlg(key, "")
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The server checks each claim: an assertion wrong in one claim only is
// refused with that claim named; the unchanged one is accepted.
func TestJWTServerChecksEveryClaim(t *testing.T) {
	s := newJWTAS(t)
	key := testkeys.Keys().P256
	s.register("c1", key.Public(), "")
	s.register("c2", testkeys.Keys().P384.Public(), "")
	s.addAudience("https://idp.example/")
	signer, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := oauthclient.AssertionClaims{Issuer: "c1", Subject: "c1", Audience: s.tokenURL()}
	raw := func(mod func(m map[string]any)) string {
		m := map[string]any{"iss": "c1", "sub": "c1", "aud": s.tokenURL(), "iat": now.Unix(), "exp": now.Unix() + 60, "jti": rand.Text()}
		mod(m)
		return rawTestAssertion(t, key, m)
	}
	signed := func(at time.Time, mod func(c *oauthclient.AssertionClaims)) string {
		c := good
		mod(&c)
		a, err := signer.Sign(at, c)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	cases := []struct {
		name      string
		assertion string
		want      string // "" accepted
	}{
		{"good", signed(now, func(*oauthclient.AssertionClaims) {}), ""},
		{"configured-audience", signed(now, func(c *oauthclient.AssertionClaims) { c.Audience = "https://idp.example/" }), ""},
		{"nbf-now", signed(now, func(c *oauthclient.AssertionClaims) { c.NotBefore = true }), ""},
		{"raw-good", raw(func(map[string]any) {}), ""},
		{"unknown-iss", signed(now, func(c *oauthclient.AssertionClaims) { c.Issuer, c.Subject = "c9", "c9" }), `unknown client (iss "c9")`},
		{"iss-of-another-client", signed(now, func(c *oauthclient.AssertionClaims) { c.Issuer, c.Subject = "c2", "c2" }), "alg ES256 does not fit"},
		{"sub-differs", signed(now, func(c *oauthclient.AssertionClaims) { c.Subject = "someone" }), `sub "someone" is not the client id "c1"`},
		{"sub-missing", signed(now, func(c *oauthclient.AssertionClaims) { c.Subject = "" }), `sub "" is not the client id`},
		{"aud-other", signed(now, func(c *oauthclient.AssertionClaims) { c.Audience = "https://elsewhere/token" }), "aud [https://elsewhere/token] is not this token endpoint"},
		{"aud-missing", raw(func(m map[string]any) { delete(m, "aud") }), "aud [] is not this token endpoint"},
		{"expired", signed(now.Add(-2*time.Minute), func(*oauthclient.AssertionClaims) {}), "expired at"},
		{"exp-now", raw(func(m map[string]any) { m["exp"] = now.Unix() - 1 }), "expired at"},
		{"exp-missing", raw(func(m map[string]any) { delete(m, "exp") }), "no exp"},
		{"iat-missing", raw(func(m map[string]any) { delete(m, "iat") }), "no iat"},
		{"lifetime-too-long", raw(func(m map[string]any) { m["exp"] = now.Unix() + 301 }), "exp is more than 5 minutes after iat"},
		{"iat-future", signed(now.Add(2*time.Minute), func(*oauthclient.AssertionClaims) {}), "iat is in the future"},
		{"nbf-future", raw(func(m map[string]any) { m["nbf"] = now.Unix() + 120 }), "nbf is in the future"},
		{"jti-missing", raw(func(m map[string]any) { delete(m, "jti") }), "no jti"},
		{"garbage", "not.a.jwt", "malformed assertion"},
	}
	for _, c := range cases {
		st, ans := asPost(t, s.tokenURL(), clientAssertionForm(c.assertion))
		desc, _ := ans["error_description"].(string)
		if c.want == "" {
			if st != http.StatusOK {
				t.Errorf("%s: refused: %s", c.name, desc)
			}
			continue
		}
		if st != http.StatusUnauthorized || ans["error"] != "invalid_client" || !strings.Contains(desc, c.want) {
			t.Errorf("%s: answer %d %v, want invalid_client %q", c.name, st, ans, c.want)
		}
		testkeys.AssertNoKeyMaterial(t, "the refusal", desc, testkeys.PKCS8PEM(t, key))
	}

	// Replay: the same assertion twice.
	replay := signed(now, func(*oauthclient.AssertionClaims) {})
	st, ans := asPost(t, s.tokenURL(), clientAssertionForm(replay))
	wantIssued(t, s, st, ans)
	st, ans = asPost(t, s.tokenURL(), clientAssertionForm(replay))
	wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", "was used before")

	// Form-level checks.
	form := clientAssertionForm(signed(now, func(*oauthclient.AssertionClaims) {}))
	form.Set("client_id", "c2")
	st, ans = asPost(t, s.tokenURL(), form)
	wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", `client_id "c2" is not the assertion's iss "c1"`)
	form = clientAssertionForm(signed(now, func(*oauthclient.AssertionClaims) {}))
	form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
	st, ans = asPost(t, s.tokenURL(), form)
	wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", "is not jwt-bearer")

	if r, i, f := s.tokenRequests(), s.issued(), s.refused(); r != int64(len(cases))+4 || i+f != r || i != 5 {
		t.Fatalf("requests %d issued %d refused %d", r, i, f)
	}
}

// 100 assertions from one signer: the server, which refuses a jti it has
// seen, accepts them all, and all their jti differ.
func TestJWTServerJTINeverRepeats(t *testing.T) {
	s := newJWTAS(t)
	key := testkeys.Keys().Ed
	s.register("c", key.Public(), "")
	signer, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now() // the same second for all: jti alone tells them apart
	for range 100 {
		a, err := signer.Sign(now, oauthclient.AssertionClaims{Issuer: "c", Subject: "c", Audience: s.tokenURL()})
		if err != nil {
			t.Fatal(err)
		}
		st, ans := asPost(t, s.tokenURL(), clientAssertionForm(a))
		wantIssued(t, s, st, ans)
	}
	jtis := map[string]bool{}
	for _, g := range s.issuedLog() {
		jtis[g.JTI] = true
	}
	if len(jtis) != 100 || s.issued() != 100 {
		t.Fatalf("%d distinct jti, %d issued; want 100", len(jtis), s.issued())
	}
}

// x5t#S256: accepted with the registered certificate, refused without a
// certificate and with another certificate for the same key.
func TestJWTServerX5tS256(t *testing.T) {
	s := newJWTAS(t)
	key := testkeys.Keys().RSA
	cert := testkeys.SelfSignedCert(t, key, "app")
	reissued := testkeys.SelfSignedCert(t, key, "app") // same key, another certificate
	s.register("app", key.Public(), oauthclient.CertThumbprint(cert))
	certPath := testkeys.WriteFile(t, "cert.pem", testkeys.PEM("CERTIFICATE", cert.Raw))
	certs, err := oauthclient.LoadCertificates(certPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cert *x509.Certificate
		want string
	}{
		{"registered", certs[0], ""},
		{"none", nil, `x5t#S256 "" does not match`},
		{"reissued", reissued, "does not match the registered certificate"},
	} {
		signer, err := oauthclient.NewAssertionSigner(key, jose.PS256, "", c.cert)
		if err != nil {
			t.Fatal(err)
		}
		a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "app", Subject: "app", Audience: s.tokenURL()})
		if err != nil {
			t.Fatal(err)
		}
		st, ans := asPost(t, s.tokenURL(), clientAssertionForm(a))
		if c.want == "" {
			wantIssued(t, s, st, ans)
		} else {
			wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", c.want)
		}
	}
}

// client_secret_jwt: HS256 keyed with the client secret.
func TestJWTServerClientSecretJWT(t *testing.T) {
	s := newJWTAS(t)
	secret := "s3cr3t-value-registered-with-the-idp-and-long-enough-for-hs512-too"
	s.register("web", []byte(secret), "")
	for _, c := range []struct {
		secret, alg, want string
	}{
		{secret, "", ""},
		{secret, "HS512", ""},
		{secret + "x", "", "signature does not verify"},
	} {
		signer, err := oauthclient.NewSecretAssertionSigner([]byte(c.secret), jose.SignatureAlgorithm(c.alg))
		if err != nil {
			t.Fatal(err)
		}
		a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "web", Subject: "web", Audience: s.tokenURL()})
		if err != nil {
			t.Fatal(err)
		}
		st, ans := asPost(t, s.tokenURL(), clientAssertionForm(a))
		if c.want == "" {
			wantIssued(t, s, st, ans)
			continue
		}
		wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", c.want)
		if strings.Contains(fmt.Sprint(ans["error_description"]), secret) {
			t.Fatal("the secret appears in the refusal")
		}
	}
	// An HMAC assertion for a client registered with a public key (the
	// classic alg confusion) is refused.
	s.register("rsa-client", testkeys.Keys().RSA.Public(), "")
	signer, _ := oauthclient.NewSecretAssertionSigner([]byte(secret), "")
	a, _ := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "rsa-client", Subject: "rsa-client", Audience: s.tokenURL()})
	st, ans := asPost(t, s.tokenURL(), clientAssertionForm(a))
	wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", "alg HS256 does not fit")
}

// A Google-shaped service account key file signs JWT bearer grants that the
// server accepts; without a scope claim the grant is refused.
func TestJWTServerGoogleServiceAccount(t *testing.T) {
	s := newJWTAS(t)
	key := testkeys.Keys().RSA2
	path := testkeys.WriteFile(t, "sa.json", testkeys.GoogleKeyJSON(t, key, s.tokenURL(), nil))
	s.register("robot@proj.iam.gserviceaccount.com", key.Public(), "")
	grant := func(scope, subject string) (int, map[string]any) {
		return asPost(t, s.tokenURL(), url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"},
			"assertion": {googleAssertion(t, path, scope, subject)}})
	}
	st, ans := grant("https://www.googleapis.com/auth/cloud-platform", "")
	wantIssued(t, s, st, ans)
	if ans["scope"] != "https://www.googleapis.com/auth/cloud-platform" {
		t.Errorf("scope %v", ans["scope"])
	}
	st, ans = grant("scope-a", "user@example.com") // domain-wide delegation
	wantIssued(t, s, st, ans)
	g := s.issuedLog()
	if len(g) != 2 || g[0].KID != "0123456789abcdef" || g[0].Sub != "" || g[1].Sub != "user@example.com" ||
		g[0].GrantType != "urn:ietf:params:oauth:grant-type:jwt-bearer" || g[0].Client != "robot@proj.iam.gserviceaccount.com" {
		t.Fatalf("grants %+v", g)
	}
	st, ans = grant("", "")
	wantRefused(t, st, ans, http.StatusBadRequest, "invalid_grant", "no scope claim")
}

// client_assertion_file: an assertion made by another program and rotated
// in place is re-read for each request; a stale one would be refused as a
// replay.
func TestJWTServerAssertionFile(t *testing.T) {
	s := newJWTAS(t)
	key := testkeys.Keys().P384
	s.register("workload", key.Public(), "")
	// the other program: kubelet, say
	issuer, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token")
	for range 3 {
		a, err := issuer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "workload", Subject: "workload", Audience: s.tokenURL()})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(a+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := oauthclient.ReadAssertionFile(path)
		if err != nil {
			t.Fatal(err)
		}
		st, ans := asPost(t, s.tokenURL(), clientAssertionForm(got))
		wantIssued(t, s, st, ans)
	}
	// the file not rotated: its assertion was used
	got, err := oauthclient.ReadAssertionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, ans := asPost(t, s.tokenURL(), clientAssertionForm(got))
	wantRefused(t, st, ans, http.StatusUnauthorized, "invalid_client", "was used before")
}
