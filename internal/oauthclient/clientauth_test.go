package oauthclient

// Tests of clientauth.go: key and certificate loading from files and inline
// PEM, algorithm choice, assertion signing (verified with go-jose), the
// form parameters, the assertion file, and service account key files.

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// ---------------------------------------------------------------------------
// Test keys and PEM helpers

// ---------------------------------------------------------------------------
// Key loading

func TestLoadPrivateKeyFormats(t *testing.T) {
	k := testkeys.Keys()
	cert := testkeys.SelfSignedCert(t, k.P256, "combined")
	ecParams := testkeys.PEM("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})
	rsaPKCS8 := testkeys.PKCS8PEM(t, k.RSA)
	cases := []struct {
		name string
		pem  []byte
		want crypto.Signer
	}{
		{"rsa-pkcs1", testkeys.PEM("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.RSA)), k.RSA},
		{"rsa-pkcs8", rsaPKCS8, k.RSA},
		{"p256-sec1", testkeys.SEC1PEM(t, k.P256), k.P256},
		{"p256-pkcs8", testkeys.PKCS8PEM(t, k.P256), k.P256},
		{"p384-sec1", testkeys.SEC1PEM(t, k.P384), k.P384},
		{"p384-pkcs8", testkeys.PKCS8PEM(t, k.P384), k.P384},
		{"ed25519-pkcs8", testkeys.PKCS8PEM(t, k.Ed), k.Ed},
		// openssl ecparam -genkey writes the parameters first.
		{"ec-parameters-then-key", append(ecParams, testkeys.SEC1PEM(t, k.P256)...), k.P256},
		// a certificate and its key in one file
		{"cert-and-key", append(testkeys.PEM("CERTIFICATE", cert.Raw), testkeys.PKCS8PEM(t, k.P256)...), k.P256},
		// PKCS#8 DER under a PKCS#1 label
		{"mislabelled", testkeys.PEM("RSA PRIVATE KEY", mustDecodePEM(t, rsaPKCS8)), k.RSA},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := testkeys.WriteFile(t, "key.pem", c.pem)
			for source, value := range map[string]string{"file": path, "inline": string(c.pem)} {
				got, err := LoadPrivateKey(value)
				if err != nil {
					t.Fatalf("%s: %v", source, err)
				}
				if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.want.Public()) {
					t.Fatalf("%s: loaded a different key", source)
				}
				if _, err := SigningAlg(got, ""); err != nil {
					t.Fatalf("%s: %v", source, err)
				}
			}
		})
	}
}

func mustDecodePEM(t *testing.T, p []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(p)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b.Bytes
}

func TestLoadPrivateKeyErrors(t *testing.T) {
	k := testkeys.Keys()
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	x25519, _ := ecdh.X25519().GenerateKey(rand.Reader)
	cert := testkeys.SelfSignedCert(t, k.P256, "only-a-cert")
	legacyEncrypted := pem.EncodeToMemory(&pem.Block{
		Type:    "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00112233445566778899AABBCCDDEEFF"},
		Bytes:   x509.MarshalPKCS1PrivateKey(k.RSA)[:64],
	})
	corrupt := x509.MarshalPKCS1PrivateKey(k.RSA)
	corrupt = corrupt[:len(corrupt)/2]

	cases := []struct {
		name   string
		pem    []byte
		want   string
		inline bool // also try it inline (it has a BEGIN line)
	}{
		{"garbage", []byte("this is not a key\n"), "holds no PEM block", false},
		{"legacy-encrypted", legacyEncrypted, "is an encrypted PEM key; decrypt it", true},
		{"pkcs8-encrypted", testkeys.PEM("ENCRYPTED PRIVATE KEY", mustDecodePEM(t, testkeys.PKCS8PEM(t, k.P256))), "is an encrypted PEM key; decrypt it", true},
		{"p521", testkeys.SEC1PEM(t, p521), "unsupported EC curve P-521", true},
		{"p521-pkcs8", testkeys.PKCS8PEM(t, p521), "unsupported EC curve P-521", true},
		{"p224", testkeys.SEC1PEM(t, p224), "unsupported EC curve P-224", true},
		{"rsa-1024", testkeys.PEM("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "RSA key of 1024 bits is too small", true},
		{"x25519", testkeys.PKCS8PEM(t, x25519), "unsupported key type", true},
		{"certificate-only", testkeys.PEM("CERTIFICATE", cert.Raw), "holds no private key (found CERTIFICATE)", true},
		{"two-keys", append(testkeys.PKCS8PEM(t, k.P256), testkeys.PKCS8PEM(t, k.P384)...), "more than one private key", true},
		{"openssh", testkeys.PEM("OPENSSH PRIVATE KEY", []byte("openssh-key-v1\x00 not really")), "is an OpenSSH key", true},
		{"corrupt", testkeys.PEM("RSA PRIVATE KEY", corrupt), "is not a valid private key", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := testkeys.WriteFile(t, "secret.key", c.pem)
			_, err := LoadPrivateKey(path)
			if err == nil {
				t.Fatal("loaded")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "private_key: "+path) || !strings.Contains(msg, c.want) {
				t.Errorf("error %q, want it to start with private_key: %s and say %q", msg, path, c.want)
			}
			testkeys.AssertNoKeyMaterial(t, "the error", msg, c.pem)
			if !c.inline {
				return
			}
			_, err = LoadPrivateKey(string(c.pem))
			if err == nil {
				t.Fatal("inline: loaded")
			}
			msg = err.Error()
			if !strings.HasPrefix(msg, "private_key: the inline PEM value") || !strings.Contains(msg, c.want) {
				t.Errorf("inline: error %q, want %q", msg, c.want)
			}
			testkeys.AssertNoKeyMaterial(t, "the error", msg, c.pem)
		})
	}

	t.Run("missing-file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "run", "secrets", "x.key")
		_, err := LoadPrivateKey(path)
		if err == nil || err.Error() != "private_key: "+path+" does not exist" {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("unreadable-file", func(t *testing.T) {
		dir := t.TempDir() // a directory is not a key file
		_, err := LoadPrivateKey(dir)
		if err == nil || !strings.HasPrefix(err.Error(), "private_key: "+dir+" cannot be read") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		for _, v := range []string{"", "  \n"} {
			if _, err := LoadPrivateKey(v); err == nil || !strings.Contains(err.Error(), "private_key: empty value") {
				t.Fatalf("%q: error %v", v, err)
			}
		}
	})
	t.Run("bare-base64-is-not-echoed", func(t *testing.T) {
		der := mustDecodePEM(t, testkeys.PKCS8PEM(t, k.P256))
		for _, v := range []string{base64.StdEncoding.EncodeToString(der), base64.RawURLEncoding.EncodeToString(der)} {
			_, err := LoadPrivateKey(v)
			if err == nil {
				t.Fatal("loaded")
			}
			if strings.Contains(err.Error(), v[:16]) || !strings.Contains(err.Error(), "neither PEM text") {
				t.Fatalf("error %q", err)
			}
		}
	})
	t.Run("inline-with-escaped-newlines", func(t *testing.T) {
		p := string(testkeys.PKCS8PEM(t, k.P256))
		got, err := LoadPrivateKey(strings.ReplaceAll(p, "\n", `\n`))
		if err != nil || !got.Public().(*ecdsa.PublicKey).Equal(k.P256.Public()) {
			t.Fatalf("escaped: %v", err)
		}
	})
	t.Run("inline-without-end", func(t *testing.T) {
		p := testkeys.PKCS8PEM(t, k.P256)
		cut := p[:len(p)-len("-----END PRIVATE KEY-----\n")]
		_, err := LoadPrivateKey(string(cut))
		if err == nil || err.Error() != "private_key: the inline PEM value holds no PEM block" {
			t.Fatalf("error %v", err)
		}
		testkeys.AssertNoKeyMaterial(t, "the error", err.Error(), p)
	})
}

func TestLoadCertificates(t *testing.T) {
	k := testkeys.Keys()
	leaf := testkeys.SelfSignedCert(t, k.P256, "leaf")
	ca := testkeys.SelfSignedCert(t, k.RSA, "ca")
	chain := append(testkeys.PEM("CERTIFICATE", leaf.Raw), testkeys.PEM("CERTIFICATE", ca.Raw)...)
	path := testkeys.WriteFile(t, "chain.pem", append(chain, testkeys.PKCS8PEM(t, k.P256)...))
	for source, value := range map[string]string{"file": path, "inline": string(chain)} {
		certs, err := LoadCertificates(value)
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if len(certs) != 2 || !certs[0].Equal(leaf) || !certs[1].Equal(ca) {
			t.Fatalf("%s: got %d certificates, not leaf then ca", source, len(certs))
		}
	}

	keyOnly := testkeys.PKCS8PEM(t, k.P256)
	badCert := testkeys.PEM("CERTIFICATE", []byte{0x30, 0x03, 0x02, 0x01, 0x01})
	for _, c := range []struct {
		name, want string
		data       []byte
	}{
		{"key-only", "holds no CERTIFICATE block", keyOnly},
		{"garbage", "holds no PEM block", []byte("hello")},
		{"malformed", "certificate 2 is not a valid X.509 certificate", append(testkeys.PEM("CERTIFICATE", leaf.Raw), badCert...)},
	} {
		p := testkeys.WriteFile(t, "cert.pem", c.data)
		_, err := LoadCertificates(p)
		if err == nil || !strings.HasPrefix(err.Error(), "certificate: "+p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		if err != nil {
			testkeys.AssertNoKeyMaterial(t, "the error", err.Error(), keyOnly)
		}
	}
	missing := filepath.Join(t.TempDir(), "none.pem")
	if _, err := LoadCertificates(missing); err == nil || err.Error() != "certificate: "+missing+" does not exist" {
		t.Errorf("missing: error %v", err)
	}
}

func TestCheckCertificateKey(t *testing.T) {
	k := testkeys.Keys()
	pairs := []struct{ key, other crypto.Signer }{
		{k.RSA, k.RSA2}, {k.P256, k.P256b}, {k.P384, k.P256}, {k.Ed, k.Ed2},
	}
	for _, p := range pairs {
		cert := testkeys.SelfSignedCert(t, p.key, "c")
		if err := CheckCertificateKey(cert, p.key); err != nil {
			t.Errorf("%T: own key: %v", p.key, err)
		}
		err := CheckCertificateKey(cert, p.other)
		if err == nil || err.Error() != "certificate does not match private_key" {
			t.Errorf("%T: other key: %v", p.key, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Algorithms

func TestSigningAlg(t *testing.T) {
	k := testkeys.Keys()
	ok := []struct {
		key        crypto.Signer
		configured string
		want       jose.SignatureAlgorithm
	}{
		{k.RSA, "", jose.RS256},
		{k.P256, "", jose.ES256},
		{k.P384, "", jose.ES384},
		{k.Ed, "", jose.EdDSA},
		{k.RSA, "RS384", jose.RS384},
		{k.RSA, "RS512", jose.RS512},
		{k.RSA, "PS256", jose.PS256},
		{k.RSA, "ps384", jose.PS384},
		{k.RSA, "PS512", jose.PS512},
		{k.P256, "ES256", jose.ES256},
		{k.P384, "es384", jose.ES384},
		{k.Ed, "eddsa", jose.EdDSA},
	}
	for _, c := range ok {
		got, err := SigningAlg(c.key, c.configured)
		if err != nil || got != c.want {
			t.Errorf("%T %q: got %q, %v; want %q", c.key, c.configured, got, err, c.want)
		}
	}
	bad := []struct {
		key        crypto.Signer
		configured string
		want       string
	}{
		{k.P256, "ES384", "alg ES384 does not fit a P-256 key; use ES256"},
		{k.P384, "ES256", "alg ES256 does not fit a P-384 key; use ES384"},
		{k.P256, "RS256", "alg RS256 does not fit a P-256 key; use ES256"},
		{k.RSA, "ES256", "alg ES256 does not fit an RSA key; use RS256, RS384, RS512, PS256, PS384, PS512"},
		{k.RSA, "EdDSA", "alg EdDSA does not fit an RSA key"},
		{k.Ed, "ES256", "alg ES256 does not fit an Ed25519 key; use EdDSA"},
		{k.RSA, "HS256", "alg HS256 signs with client_secret (client_secret_jwt), not a private key"},
		{k.P256, "none", `unsupported alg "none"; for a P-256 key use ES256`},
		{k.P256, "ES512", `unsupported alg "ES512"`},
	}
	for _, c := range bad {
		_, err := SigningAlg(c.key, c.configured)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%T %q: error %v, want %q", c.key, c.configured, err, c.want)
		}
	}
}

// ---------------------------------------------------------------------------
// Signing

func TestAssertionSignerHeadersAndClaims(t *testing.T) {
	k := testkeys.Keys()
	cert := testkeys.SelfSignedCert(t, k.P256, "entra-app")
	s, err := NewAssertionSigner(k.P256, "", "key-1", cert)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	tok, err := s.Sign(now, AssertionClaims{
		Issuer: "client-1", Subject: "client-1", Audience: "https://idp.example/token",
		Extra: map[string]any{"scope": "a b"},
	})
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := testkeys.ParseJWT(t, tok, k.P256.Public())
	if hdr.Algorithm != "ES256" || hdr.KeyID != "key-1" || hdr.ExtraHeaders["typ"] != "JWT" {
		t.Errorf("header alg %q kid %q typ %v", hdr.Algorithm, hdr.KeyID, hdr.ExtraHeaders["typ"])
	}
	s1 := sha1.Sum(cert.Raw)
	s256 := sha256.Sum256(cert.Raw)
	if got, want := hdr.ExtraHeaders["x5t"], base64.RawURLEncoding.EncodeToString(s1[:]); got != want {
		t.Errorf("x5t %v, want %s", got, want)
	}
	if got, want := hdr.ExtraHeaders["x5t#S256"], base64.RawURLEncoding.EncodeToString(s256[:]); got != want {
		t.Errorf("x5t#S256 %v, want %s", got, want)
	}
	want := map[string]string{
		"iss":   `"client-1"`,
		"sub":   `"client-1"`,
		"aud":   `"https://idp.example/token"`, // a string, not a list
		"iat":   "1893553445",
		"exp":   "1893553505",
		"scope": `"a b"`,
	}
	for name, v := range want {
		if string(claims[name]) != v {
			t.Errorf("claim %s = %s, want %s", name, claims[name], v)
		}
	}
	if _, ok := claims["nbf"]; ok {
		t.Error("nbf set without notBefore")
	}
	var jti string
	if err := json.Unmarshal(claims["jti"], &jti); err != nil || len(jti) < 22 {
		t.Errorf("jti %s: want >= 128 bits of randomness", claims["jti"])
	}
	if len(claims) != 7 {
		t.Errorf("claims %v, want exactly iss sub aud iat exp jti scope", claims)
	}

	// nbf, the longest lifetime, no subject, no kid, no certificate
	plain, err := NewAssertionSigner(k.P256, jose.ES256, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err = plain.Sign(now, AssertionClaims{Issuer: "svc", Audience: "aud", Lifetime: maxAssertionLifetime, NotBefore: true})
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims = testkeys.ParseJWT(t, tok, k.P256.Public())
	if hdr.KeyID != "" || hdr.ExtraHeaders["x5t"] != nil || hdr.ExtraHeaders["x5t#S256"] != nil {
		t.Errorf("header %+v: want no kid, x5t, x5t#S256", hdr)
	}
	if string(claims["nbf"]) != "1893553445" || string(claims["exp"]) != "1893553745" || claims["sub"] != nil {
		t.Errorf("nbf %s exp %s sub %s", claims["nbf"], claims["exp"], claims["sub"])
	}
}

func TestAssertionSignerRefuses(t *testing.T) {
	k := testkeys.Keys()
	if _, err := NewAssertionSigner(k.P256, "", "", testkeys.SelfSignedCert(t, k.P256b, "other")); err == nil ||
		err.Error() != "certificate does not match private_key" {
		t.Errorf("mismatched certificate: %v", err)
	}
	if _, err := NewAssertionSigner(k.P256, jose.RS256, "", nil); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("wrong alg: %v", err)
	}
	s, err := NewAssertionSigner(k.Ed, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	base := AssertionClaims{Issuer: "c", Subject: "c", Audience: "a"}
	for name, c := range map[string]struct {
		mod  func(*AssertionClaims)
		want string
	}{
		"too-long":     {func(c *AssertionClaims) { c.Lifetime = maxAssertionLifetime + time.Second }, "assertion lifetime 5m1s is out of range"},
		"sub-second":   {func(c *AssertionClaims) { c.Lifetime = 500 * time.Millisecond }, "out of range"},
		"negative":     {func(c *AssertionClaims) { c.Lifetime = -time.Minute }, "out of range"},
		"no-issuer":    {func(c *AssertionClaims) { c.Issuer = "" }, "needs an issuer"},
		"no-audience":  {func(c *AssertionClaims) { c.Audience = "" }, "needs an audience"},
		"override-exp": {func(c *AssertionClaims) { c.Extra = map[string]any{"exp": 1} }, "claim exp is set by the signer"},
		"override-jti": {func(c *AssertionClaims) { c.Extra = map[string]any{"jti": "x"} }, "claim jti is set by the signer"},
	} {
		c2 := base
		c.mod(&c2)
		if _, err := s.Sign(now, c2); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
		}
	}
	if _, err := s.Sign(now, base); err != nil {
		t.Errorf("base claims: %v", err)
	}
}

func TestSecretAssertionSigner(t *testing.T) {
	secret := []byte("a-client-secret-of-32-bytes-long")
	s, err := NewSecretAssertionSigner(secret, "")
	if err != nil {
		t.Fatal(err)
	}
	orig := string(secret)
	secret[0] = 'X' // the signer keeps its own copy
	tok, err := s.Sign(time.Now(), AssertionClaims{Issuer: "c", Subject: "c", Audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := testkeys.ParseJWT(t, tok, []byte(orig))
	if hdr.Algorithm != "HS256" {
		t.Errorf("alg %s", hdr.Algorithm)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.HS256})
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.Claims([]byte("another-secret-of-32-bytes-long!"), new(map[string]any)); err == nil {
		t.Error("verified with another secret")
	}
	long := []byte(strings.Repeat("k", 64))
	if s, err := NewSecretAssertionSigner(long, "hs512"); err != nil || s.alg != jose.HS512 {
		t.Errorf("HS512: %v", err)
	}
	for alg, n := range map[jose.SignatureAlgorithm]int{jose.HS256: 31, jose.HS384: 47, jose.HS512: 63} {
		_, err := NewSecretAssertionSigner(long[:n], alg)
		if err == nil || !strings.Contains(err.Error(), "needs a client_secret of at least") || strings.Contains(err.Error(), string(long[:n])) {
			t.Errorf("%s with %d bytes: %v", alg, n, err)
		}
		if _, err := NewSecretAssertionSigner(long[:n+1], alg); err != nil {
			t.Errorf("%s with %d bytes: %v", alg, n+1, err)
		}
	}
	if _, err := NewSecretAssertionSigner([]byte(orig), jose.RS256); err == nil || !strings.Contains(err.Error(), "use HS256") {
		t.Errorf("RS256: %v", err)
	}
	if _, err := NewSecretAssertionSigner(nil, ""); err == nil {
		t.Error("empty secret accepted")
	}
}

// opaqueTestSigner hides a key's concrete type, as a KMS-backed signer
// would.
type opaqueTestSigner struct{ crypto.Signer }

func TestAssertionSignerOpaqueKey(t *testing.T) {
	k := testkeys.Keys()
	for _, key := range []crypto.Signer{k.RSA, k.P384, k.Ed} {
		s, err := NewAssertionSigner(opaqueTestSigner{key}, "", "", nil)
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		tok, err := s.Sign(time.Now(), AssertionClaims{Issuer: "c", Audience: "a"})
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		testkeys.ParseJWT(t, tok, key.Public())
	}
}

// One signer used from many goroutines: every jti differs (run with -race).
func TestAssertionSignerConcurrent(t *testing.T) {
	s, err := NewAssertionSigner(testkeys.Keys().P256, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				tok, err := s.Sign(time.Now(), AssertionClaims{Issuer: "c", Subject: "c", Audience: "a"})
				if err != nil {
					t.Error(err)
					return
				}
				_, claims := testkeys.ParseJWT(t, tok, testkeys.Keys().P256.Public())
				mu.Lock()
				seen[string(claims["jti"])] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != 200 {
		t.Fatalf("%d distinct jti in 200 assertions", len(seen))
	}
}

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

// ---------------------------------------------------------------------------
// Assertion file

func TestReadAssertionFile(t *testing.T) {
	const jwt1 = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrOHMifQ.c2lnbmF0dXJlLW9uZQ"
	const jwt2 = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrOHMiLCJuIjoyfQ.c2lnbmF0dXJlLXR3bw"
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p, want string) {
		t.Helper()
		got, err := ReadAssertionFile(p)
		if err != nil || got != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
	}

	write(path, "\n  "+jwt1+"\r\n")
	read(path, jwt1)
	// rewritten in place: the next read sees it
	write(path, jwt2+"\n")
	read(path, jwt2)
	// replaced by rename
	write(path+".new", jwt1)
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	read(path, jwt1)

	// Kubernetes projected volume: token -> ..data/token, ..data a symlink
	// to a timestamped directory swapped atomically.
	kdir := filepath.Join(dir, "k8s")
	for i, tok := range []string{jwt1, jwt2} {
		ts := filepath.Join(kdir, "..2030_01_0"+string(rune('1'+i)))
		if err := os.MkdirAll(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(ts, "token"), tok)
		tmp := filepath.Join(kdir, "..data_tmp")
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(kdir, "..data")); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := os.Symlink("..data/token", filepath.Join(kdir, "token")); err != nil {
				t.Fatal(err)
			}
		}
		read(filepath.Join(kdir, "token"), tok)
	}

	// errors name the path, never the content
	for _, c := range []struct {
		content, want string
	}{
		{"", "is empty"},
		{" \n\t\n", "is empty"},
		{"my-client-secret-value", "does not hold a JWT"},
		{"a.b", "does not hold a JWT"},
		{"a.b.c.d", "does not hold a JWT"},
		{".b.c", "does not hold a JWT"},
		{"a.b c.d", "does not hold a JWT"},
		{strings.Repeat("a", maxAssertionFileSize+1), "is larger than"},
	} {
		write(path, c.content)
		_, err := ReadAssertionFile(path)
		if err == nil || !strings.HasPrefix(err.Error(), "client_assertion_file: "+path+" ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("content %.20q: error %v, want %q", c.content, err, c.want)
		} else if c.content != "" && strings.TrimSpace(c.content) != "" && strings.Contains(err.Error(), c.content[:min(len(c.content), 12)]) {
			t.Errorf("error echoes the content: %v", err)
		}
	}
	// five parts: a JWE
	write(path, "a.b.c.d.e")
	read(path, "a.b.c.d.e")

	missing := filepath.Join(dir, "gone")
	if _, err := ReadAssertionFile(missing); err == nil || err.Error() != "client_assertion_file: "+missing+" does not exist" {
		t.Errorf("missing: %v", err)
	}
}

// ---------------------------------------------------------------------------
// Google service account key files

// A service account key file, as a path or as the JSON: its fields, and
// the errors of files that are not one. (The assertion the handler signs
// with it: the root package's TestGoogleServiceAccountAssertion.)
func TestLoadGoogleServiceAccount(t *testing.T) {
	k := testkeys.Keys()
	data := testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", nil)
	path := testkeys.WriteFile(t, "sa.json", data)
	for source, value := range map[string]string{"file": path, "inline": string(data)} {
		sa, err := LoadGoogleServiceAccount(value)
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if sa.ClientEmail != "robot@proj.iam.gserviceaccount.com" || sa.KeyID != "0123456789abcdef" || sa.TokenURI != "https://oauth2.googleapis.com/token" {
			t.Fatalf("%s: parsed %+v", source, sa)
		}
	}

	// private_key_id is optional: no kid then
	data = testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", func(m map[string]any) { delete(m, "private_key_id") })
	if sa, err := LoadGoogleServiceAccount(string(data)); err != nil || sa.KeyID != "" {
		t.Errorf("without private_key_id: %v", err)
	}

	keyPEM := testkeys.PKCS8PEM(t, k.RSA)
	for name, c := range map[string]struct {
		mod  func(map[string]any)
		want string
	}{
		"authorized-user": {func(m map[string]any) { m["type"] = "authorized_user" }, `is of type "authorized_user"; want a service account key file`},
		"no-type":         {func(m map[string]any) { delete(m, "type") }, "has no type"},
		"no-email":        {func(m map[string]any) { delete(m, "client_email") }, "has no client_email"},
		"no-key":          {func(m map[string]any) { delete(m, "private_key") }, "has no private_key"},
		"no-token-uri":    {func(m map[string]any) { delete(m, "token_uri") }, "has no token_uri"},
		"http-token-uri":  {func(m map[string]any) { m["token_uri"] = "http://oauth2.example/token" }, "token_uri http://oauth2.example/token must be https"},
		"bad-key": {func(m map[string]any) {
			m["private_key"] = strings.Replace(string(keyPEM), "\n", "\n!!", 3)
		}, "(its private_key) holds no PEM block"},
		"ec-key-type-wrong": {func(m map[string]any) { m["client_email"] = 42 }, "field client_email is not a string"},
	} {
		data := testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", c.mod)
		p := testkeys.WriteFile(t, "sa.json", data)
		_, err := LoadGoogleServiceAccount(p)
		if err == nil || !strings.HasPrefix(err.Error(), "service_account: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
			continue
		}
		testkeys.AssertNoKeyMaterial(t, "the error", err.Error(), keyPEM)
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v does not name the file", name, err)
		}
	}
	// not JSON: the syntax error's offset, not the text
	p := testkeys.WriteFile(t, "sa.json", []byte(`{"type": "service_account", "private_key": "MIIEv`+"\x01"+`"}`))
	if _, err := LoadGoogleServiceAccount(p); err == nil || !strings.Contains(err.Error(), "is not valid JSON (syntax error at byte") || strings.Contains(err.Error(), "MIIEv") {
		t.Errorf("invalid JSON: %v", err)
	}
	if _, err := LoadGoogleServiceAccount(filepath.Join(t.TempDir(), "none.json")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing: %v", err)
	}
}
