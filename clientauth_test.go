package oauthbearer

// Tests of clientauth.go: key and certificate loading from files and inline
// PEM, algorithm choice, assertion signing (verified with go-jose), the
// form parameters, the assertion file, and service account key files.

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// ---------------------------------------------------------------------------
// Test keys and PEM helpers

// clientAuthTestKeys are keys made once per test binary (RSA generation is
// slow under -race).
type clientAuthTestKeys struct {
	rsa, rsa2  *rsa.PrivateKey
	p256, p384 *ecdsa.PrivateKey
	p256b      *ecdsa.PrivateKey
	ed, ed2    ed25519.PrivateKey
}

var clientAuthKeys = sync.OnceValue(func() *clientAuthTestKeys {
	k := new(clientAuthTestKeys)
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.p256b, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.ed2, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return k
})

// pemOf encodes one PEM block.
func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// pkcs8PEM is key as a "PRIVATE KEY" block.
func pkcs8PEM(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("PRIVATE KEY", der)
}

// sec1PEM is an EC key as an "EC PRIVATE KEY" block.
func sec1PEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("EC PRIVATE KEY", der)
}

// writeTestFile writes data to name in a fresh temporary directory and
// returns the path.
func writeTestFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSignedCert makes a self-signed certificate for key.
func selfSignedCert(t *testing.T, key crypto.Signer, cn string) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// assertNoKeyMaterial fails if text holds a PEM armour line or any 16
// characters of the base64 body of one of the PEM texts.
func assertNoKeyMaterial(t *testing.T, text string, pems ...[]byte) {
	t.Helper()
	if strings.Contains(text, "-----") {
		t.Errorf("error holds PEM armour: %s", text)
	}
	for _, p := range pems {
		for block, rest := pem.Decode(p); block != nil; block, rest = pem.Decode(rest) {
			b64 := base64.StdEncoding.EncodeToString(block.Bytes)
			for i := 0; i+16 <= len(b64); i += 16 {
				if strings.Contains(text, b64[i:i+16]) {
					t.Fatalf("error holds PEM content: %s", text)
				}
			}
		}
	}
}

// parseTestJWT verifies a compact JWS with go-jose against key and returns
// its header and its claims as raw JSON values.
func parseTestJWT(t *testing.T, token string, key any) (jose.Header, map[string]json.RawMessage) {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{
		jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
		jose.ES256, jose.ES384, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
	})
	if err != nil {
		t.Fatalf("parsing the assertion: %v", err)
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(key, &claims); err != nil {
		t.Fatalf("verifying the assertion: %v", err)
	}
	return tok.Headers[0], claims
}

// ---------------------------------------------------------------------------
// Key loading

func TestLoadPrivateKeyFormats(t *testing.T) {
	k := clientAuthKeys()
	cert := selfSignedCert(t, k.p256, "combined")
	ecParams := pemOf("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})
	rsaPKCS8 := pkcs8PEM(t, k.rsa)
	cases := []struct {
		name string
		pem  []byte
		want crypto.Signer
	}{
		{"rsa-pkcs1", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.rsa)), k.rsa},
		{"rsa-pkcs8", rsaPKCS8, k.rsa},
		{"p256-sec1", sec1PEM(t, k.p256), k.p256},
		{"p256-pkcs8", pkcs8PEM(t, k.p256), k.p256},
		{"p384-sec1", sec1PEM(t, k.p384), k.p384},
		{"p384-pkcs8", pkcs8PEM(t, k.p384), k.p384},
		{"ed25519-pkcs8", pkcs8PEM(t, k.ed), k.ed},
		// openssl ecparam -genkey writes the parameters first.
		{"ec-parameters-then-key", append(ecParams, sec1PEM(t, k.p256)...), k.p256},
		// a certificate and its key in one file
		{"cert-and-key", append(pemOf("CERTIFICATE", cert.Raw), pkcs8PEM(t, k.p256)...), k.p256},
		// PKCS#8 DER under a PKCS#1 label
		{"mislabelled", pemOf("RSA PRIVATE KEY", mustDecodePEM(t, rsaPKCS8)), k.rsa},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeTestFile(t, "key.pem", c.pem)
			for source, value := range map[string]string{"file": path, "inline": string(c.pem)} {
				got, err := loadPrivateKey(value)
				if err != nil {
					t.Fatalf("%s: %v", source, err)
				}
				if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.want.Public()) {
					t.Fatalf("%s: loaded a different key", source)
				}
				if _, err := signingAlg(got, ""); err != nil {
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
	k := clientAuthKeys()
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	x25519, _ := ecdh.X25519().GenerateKey(rand.Reader)
	cert := selfSignedCert(t, k.p256, "only-a-cert")
	legacyEncrypted := pem.EncodeToMemory(&pem.Block{
		Type:    "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00112233445566778899AABBCCDDEEFF"},
		Bytes:   x509.MarshalPKCS1PrivateKey(k.rsa)[:64],
	})
	corrupt := x509.MarshalPKCS1PrivateKey(k.rsa)
	corrupt = corrupt[:len(corrupt)/2]

	cases := []struct {
		name   string
		pem    []byte
		want   string
		inline bool // also try it inline (it has a BEGIN line)
	}{
		{"garbage", []byte("this is not a key\n"), "holds no PEM block", false},
		{"legacy-encrypted", legacyEncrypted, "is an encrypted PEM key; decrypt it", true},
		{"pkcs8-encrypted", pemOf("ENCRYPTED PRIVATE KEY", mustDecodePEM(t, pkcs8PEM(t, k.p256))), "is an encrypted PEM key; decrypt it", true},
		{"p521", sec1PEM(t, p521), "unsupported EC curve P-521", true},
		{"p521-pkcs8", pkcs8PEM(t, p521), "unsupported EC curve P-521", true},
		{"p224", sec1PEM(t, p224), "unsupported EC curve P-224", true},
		{"rsa-1024", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "RSA key of 1024 bits is too small", true},
		{"x25519", pkcs8PEM(t, x25519), "unsupported key type", true},
		{"certificate-only", pemOf("CERTIFICATE", cert.Raw), "holds no private key (found CERTIFICATE)", true},
		{"two-keys", append(pkcs8PEM(t, k.p256), pkcs8PEM(t, k.p384)...), "more than one private key", true},
		{"openssh", pemOf("OPENSSH PRIVATE KEY", []byte("openssh-key-v1\x00 not really")), "is an OpenSSH key", true},
		{"corrupt", pemOf("RSA PRIVATE KEY", corrupt), "is not a valid private key", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeTestFile(t, "secret.key", c.pem)
			_, err := loadPrivateKey(path)
			if err == nil {
				t.Fatal("loaded")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "private_key: "+path) || !strings.Contains(msg, c.want) {
				t.Errorf("error %q, want it to start with private_key: %s and say %q", msg, path, c.want)
			}
			assertNoKeyMaterial(t, msg, c.pem)
			if !c.inline {
				return
			}
			_, err = loadPrivateKey(string(c.pem))
			if err == nil {
				t.Fatal("inline: loaded")
			}
			msg = err.Error()
			if !strings.HasPrefix(msg, "private_key: the inline PEM value") || !strings.Contains(msg, c.want) {
				t.Errorf("inline: error %q, want %q", msg, c.want)
			}
			assertNoKeyMaterial(t, msg, c.pem)
		})
	}

	t.Run("missing-file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "run", "secrets", "x.key")
		_, err := loadPrivateKey(path)
		if err == nil || err.Error() != "private_key: "+path+" does not exist" {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("unreadable-file", func(t *testing.T) {
		dir := t.TempDir() // a directory is not a key file
		_, err := loadPrivateKey(dir)
		if err == nil || !strings.HasPrefix(err.Error(), "private_key: "+dir+" cannot be read") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		for _, v := range []string{"", "  \n"} {
			if _, err := loadPrivateKey(v); err == nil || !strings.Contains(err.Error(), "private_key: empty value") {
				t.Fatalf("%q: error %v", v, err)
			}
		}
	})
	t.Run("bare-base64-is-not-echoed", func(t *testing.T) {
		der := mustDecodePEM(t, pkcs8PEM(t, k.p256))
		for _, v := range []string{base64.StdEncoding.EncodeToString(der), base64.RawURLEncoding.EncodeToString(der)} {
			_, err := loadPrivateKey(v)
			if err == nil {
				t.Fatal("loaded")
			}
			if strings.Contains(err.Error(), v[:16]) || !strings.Contains(err.Error(), "neither PEM text") {
				t.Fatalf("error %q", err)
			}
		}
	})
	t.Run("inline-with-escaped-newlines", func(t *testing.T) {
		p := string(pkcs8PEM(t, k.p256))
		got, err := loadPrivateKey(strings.ReplaceAll(p, "\n", `\n`))
		if err != nil || !got.Public().(*ecdsa.PublicKey).Equal(k.p256.Public()) {
			t.Fatalf("escaped: %v", err)
		}
	})
	t.Run("inline-without-end", func(t *testing.T) {
		p := pkcs8PEM(t, k.p256)
		cut := p[:len(p)-len("-----END PRIVATE KEY-----\n")]
		_, err := loadPrivateKey(string(cut))
		if err == nil || err.Error() != "private_key: the inline PEM value holds no PEM block" {
			t.Fatalf("error %v", err)
		}
		assertNoKeyMaterial(t, err.Error(), p)
	})
}

func TestLoadCertificates(t *testing.T) {
	k := clientAuthKeys()
	leaf := selfSignedCert(t, k.p256, "leaf")
	ca := selfSignedCert(t, k.rsa, "ca")
	chain := append(pemOf("CERTIFICATE", leaf.Raw), pemOf("CERTIFICATE", ca.Raw)...)
	path := writeTestFile(t, "chain.pem", append(chain, pkcs8PEM(t, k.p256)...))
	for source, value := range map[string]string{"file": path, "inline": string(chain)} {
		certs, err := loadCertificates(value)
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if len(certs) != 2 || !certs[0].Equal(leaf) || !certs[1].Equal(ca) {
			t.Fatalf("%s: got %d certificates, not leaf then ca", source, len(certs))
		}
	}

	keyOnly := pkcs8PEM(t, k.p256)
	badCert := pemOf("CERTIFICATE", []byte{0x30, 0x03, 0x02, 0x01, 0x01})
	for _, c := range []struct {
		name, want string
		data       []byte
	}{
		{"key-only", "holds no CERTIFICATE block", keyOnly},
		{"garbage", "holds no PEM block", []byte("hello")},
		{"malformed", "certificate 2 is not a valid X.509 certificate", append(pemOf("CERTIFICATE", leaf.Raw), badCert...)},
	} {
		p := writeTestFile(t, "cert.pem", c.data)
		_, err := loadCertificates(p)
		if err == nil || !strings.HasPrefix(err.Error(), "certificate: "+p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		if err != nil {
			assertNoKeyMaterial(t, err.Error(), keyOnly)
		}
	}
	missing := filepath.Join(t.TempDir(), "none.pem")
	if _, err := loadCertificates(missing); err == nil || err.Error() != "certificate: "+missing+" does not exist" {
		t.Errorf("missing: error %v", err)
	}
}

func TestCheckCertificateKey(t *testing.T) {
	k := clientAuthKeys()
	pairs := []struct{ key, other crypto.Signer }{
		{k.rsa, k.rsa2}, {k.p256, k.p256b}, {k.p384, k.p256}, {k.ed, k.ed2},
	}
	for _, p := range pairs {
		cert := selfSignedCert(t, p.key, "c")
		if err := checkCertificateKey(cert, p.key); err != nil {
			t.Errorf("%T: own key: %v", p.key, err)
		}
		err := checkCertificateKey(cert, p.other)
		if err == nil || err.Error() != "certificate does not match private_key" {
			t.Errorf("%T: other key: %v", p.key, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Algorithms

func TestSigningAlg(t *testing.T) {
	k := clientAuthKeys()
	ok := []struct {
		key        crypto.Signer
		configured string
		want       jose.SignatureAlgorithm
	}{
		{k.rsa, "", jose.RS256},
		{k.p256, "", jose.ES256},
		{k.p384, "", jose.ES384},
		{k.ed, "", jose.EdDSA},
		{k.rsa, "RS384", jose.RS384},
		{k.rsa, "RS512", jose.RS512},
		{k.rsa, "PS256", jose.PS256},
		{k.rsa, "ps384", jose.PS384},
		{k.rsa, "PS512", jose.PS512},
		{k.p256, "ES256", jose.ES256},
		{k.p384, "es384", jose.ES384},
		{k.ed, "eddsa", jose.EdDSA},
	}
	for _, c := range ok {
		got, err := signingAlg(c.key, c.configured)
		if err != nil || got != c.want {
			t.Errorf("%T %q: got %q, %v; want %q", c.key, c.configured, got, err, c.want)
		}
	}
	bad := []struct {
		key        crypto.Signer
		configured string
		want       string
	}{
		{k.p256, "ES384", "alg ES384 does not fit a P-256 key; use ES256"},
		{k.p384, "ES256", "alg ES256 does not fit a P-384 key; use ES384"},
		{k.p256, "RS256", "alg RS256 does not fit a P-256 key; use ES256"},
		{k.rsa, "ES256", "alg ES256 does not fit an RSA key; use RS256, RS384, RS512, PS256, PS384, PS512"},
		{k.rsa, "EdDSA", "alg EdDSA does not fit an RSA key"},
		{k.ed, "ES256", "alg ES256 does not fit an Ed25519 key; use EdDSA"},
		{k.rsa, "HS256", "alg HS256 signs with client_secret (client_secret_jwt), not a private key"},
		{k.p256, "none", `unsupported alg "none"; for a P-256 key use ES256`},
		{k.p256, "ES512", `unsupported alg "ES512"`},
	}
	for _, c := range bad {
		_, err := signingAlg(c.key, c.configured)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%T %q: error %v, want %q", c.key, c.configured, err, c.want)
		}
	}
}

// ---------------------------------------------------------------------------
// Signing

func TestAssertionSignerHeadersAndClaims(t *testing.T) {
	k := clientAuthKeys()
	cert := selfSignedCert(t, k.p256, "entra-app")
	s, err := newAssertionSigner(k.p256, "", "key-1", cert)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	tok, err := s.sign(now, assertionClaims{
		issuer: "client-1", subject: "client-1", audience: "https://idp.example/token",
		extra: map[string]any{"scope": "a b"},
	})
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := parseTestJWT(t, tok, k.p256.Public())
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
	plain, err := newAssertionSigner(k.p256, jose.ES256, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err = plain.sign(now, assertionClaims{issuer: "svc", audience: "aud", lifetime: maxAssertionLifetime, notBefore: true})
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims = parseTestJWT(t, tok, k.p256.Public())
	if hdr.KeyID != "" || hdr.ExtraHeaders["x5t"] != nil || hdr.ExtraHeaders["x5t#S256"] != nil {
		t.Errorf("header %+v: want no kid, x5t, x5t#S256", hdr)
	}
	if string(claims["nbf"]) != "1893553445" || string(claims["exp"]) != "1893553745" || claims["sub"] != nil {
		t.Errorf("nbf %s exp %s sub %s", claims["nbf"], claims["exp"], claims["sub"])
	}
}

func TestAssertionSignerRefuses(t *testing.T) {
	k := clientAuthKeys()
	if _, err := newAssertionSigner(k.p256, "", "", selfSignedCert(t, k.p256b, "other")); err == nil ||
		err.Error() != "certificate does not match private_key" {
		t.Errorf("mismatched certificate: %v", err)
	}
	if _, err := newAssertionSigner(k.p256, jose.RS256, "", nil); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("wrong alg: %v", err)
	}
	s, err := newAssertionSigner(k.ed, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	base := assertionClaims{issuer: "c", subject: "c", audience: "a"}
	for name, c := range map[string]struct {
		mod  func(*assertionClaims)
		want string
	}{
		"too-long":     {func(c *assertionClaims) { c.lifetime = maxAssertionLifetime + time.Second }, "assertion lifetime 5m1s is out of range"},
		"sub-second":   {func(c *assertionClaims) { c.lifetime = 500 * time.Millisecond }, "out of range"},
		"negative":     {func(c *assertionClaims) { c.lifetime = -time.Minute }, "out of range"},
		"no-issuer":    {func(c *assertionClaims) { c.issuer = "" }, "needs an issuer"},
		"no-audience":  {func(c *assertionClaims) { c.audience = "" }, "needs an audience"},
		"override-exp": {func(c *assertionClaims) { c.extra = map[string]any{"exp": 1} }, "claim exp is set by the signer"},
		"override-jti": {func(c *assertionClaims) { c.extra = map[string]any{"jti": "x"} }, "claim jti is set by the signer"},
	} {
		c2 := base
		c.mod(&c2)
		if _, err := s.sign(now, c2); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
		}
	}
	if _, err := s.sign(now, base); err != nil {
		t.Errorf("base claims: %v", err)
	}
}

func TestSecretAssertionSigner(t *testing.T) {
	secret := []byte("a-client-secret-of-32-bytes-long")
	s, err := newSecretAssertionSigner(secret, "")
	if err != nil {
		t.Fatal(err)
	}
	orig := string(secret)
	secret[0] = 'X' // the signer keeps its own copy
	tok, err := s.sign(time.Now(), assertionClaims{issuer: "c", subject: "c", audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := parseTestJWT(t, tok, []byte(orig))
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
	if s, err := newSecretAssertionSigner(long, "hs512"); err != nil || s.alg != jose.HS512 {
		t.Errorf("HS512: %v", err)
	}
	for alg, n := range map[jose.SignatureAlgorithm]int{jose.HS256: 31, jose.HS384: 47, jose.HS512: 63} {
		_, err := newSecretAssertionSigner(long[:n], alg)
		if err == nil || !strings.Contains(err.Error(), "needs a client_secret of at least") || strings.Contains(err.Error(), string(long[:n])) {
			t.Errorf("%s with %d bytes: %v", alg, n, err)
		}
		if _, err := newSecretAssertionSigner(long[:n+1], alg); err != nil {
			t.Errorf("%s with %d bytes: %v", alg, n+1, err)
		}
	}
	if _, err := newSecretAssertionSigner([]byte(orig), jose.RS256); err == nil || !strings.Contains(err.Error(), "use HS256") {
		t.Errorf("RS256: %v", err)
	}
	if _, err := newSecretAssertionSigner(nil, ""); err == nil {
		t.Error("empty secret accepted")
	}
}

// opaqueTestSigner hides a key's concrete type, as a KMS-backed signer
// would.
type opaqueTestSigner struct{ crypto.Signer }

func TestAssertionSignerOpaqueKey(t *testing.T) {
	k := clientAuthKeys()
	for _, key := range []crypto.Signer{k.rsa, k.p384, k.ed} {
		s, err := newAssertionSigner(opaqueTestSigner{key}, "", "", nil)
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		tok, err := s.sign(time.Now(), assertionClaims{issuer: "c", audience: "a"})
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		parseTestJWT(t, tok, key.Public())
	}
}

// One signer used from many goroutines: every jti differs (run with -race).
func TestAssertionSignerConcurrent(t *testing.T) {
	s, err := newAssertionSigner(clientAuthKeys().p256, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				tok, err := s.sign(time.Now(), assertionClaims{issuer: "c", subject: "c", audience: "a"})
				if err != nil {
					t.Error(err)
					return
				}
				_, claims := parseTestJWT(t, tok, clientAuthKeys().p256.Public())
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
		got, err := readAssertionFile(p)
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
		_, err := readAssertionFile(path)
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
	if _, err := readAssertionFile(missing); err == nil || err.Error() != "client_assertion_file: "+missing+" does not exist" {
		t.Errorf("missing: %v", err)
	}
}

// ---------------------------------------------------------------------------
// Google service account key files

// googleKeyJSON is a service account key file as Google issues it.
func googleKeyJSON(t *testing.T, key *rsa.PrivateKey, tokenURI string, mod func(map[string]any)) []byte {
	t.Helper()
	m := map[string]any{
		"type":                        "service_account",
		"project_id":                  "proj",
		"private_key_id":              "0123456789abcdef",
		"private_key":                 string(pkcs8PEM(t, key)),
		"client_email":                "robot@proj.iam.gserviceaccount.com",
		"client_id":                   "1234567890",
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   tokenURI,
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
		"universe_domain":             "googleapis.com",
	}
	if mod != nil {
		mod(m)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
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

func TestGoogleServiceAccount(t *testing.T) {
	k := clientAuthKeys()
	data := googleKeyJSON(t, k.rsa, "https://oauth2.googleapis.com/token", nil)
	path := writeTestFile(t, "sa.json", data)
	for source, value := range map[string]string{"file": path, "inline": string(data)} {
		sa, err := loadGoogleServiceAccount(value)
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if sa.clientEmail != "robot@proj.iam.gserviceaccount.com" || sa.keyID != "0123456789abcdef" || sa.tokenURI != "https://oauth2.googleapis.com/token" {
			t.Fatalf("%s: parsed %+v", source, sa)
		}
		// The grant's assertion, as the handler makes it: iss =
		// client_email, aud = token_uri, the scopes as a claim, and a
		// sub only for domain-wide delegation.
		assertion := func(subject string) (jose.Header, map[string]json.RawMessage) {
			t.Helper()
			return parseTestJWT(t, googleAssertion(t, value, "https://www.googleapis.com/auth/cloud-platform", subject), k.rsa.Public())
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

	// private_key_id is optional: no kid then
	data = googleKeyJSON(t, k.rsa, "https://oauth2.googleapis.com/token", func(m map[string]any) { delete(m, "private_key_id") })
	if sa, err := loadGoogleServiceAccount(string(data)); err != nil || sa.keyID != "" {
		t.Errorf("without private_key_id: %v", err)
	}

	keyPEM := pkcs8PEM(t, k.rsa)
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
		data := googleKeyJSON(t, k.rsa, "https://oauth2.googleapis.com/token", c.mod)
		p := writeTestFile(t, "sa.json", data)
		_, err := loadGoogleServiceAccount(p)
		if err == nil || !strings.HasPrefix(err.Error(), "service_account: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
			continue
		}
		assertNoKeyMaterial(t, err.Error(), keyPEM)
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v does not name the file", name, err)
		}
	}
	// not JSON: the syntax error's offset, not the text
	p := writeTestFile(t, "sa.json", []byte(`{"type": "service_account", "private_key": "MIIEv`+"\x01"+`"}`))
	if _, err := loadGoogleServiceAccount(p); err == nil || !strings.Contains(err.Error(), "is not valid JSON (syntax error at byte") || strings.Contains(err.Error(), "MIIEv") {
		t.Errorf("invalid JSON: %v", err)
	}
	if _, err := loadGoogleServiceAccount(filepath.Join(t.TempDir(), "none.json")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing: %v", err)
	}
}
