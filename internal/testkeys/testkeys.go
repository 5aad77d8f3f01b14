// Package testkeys makes the keys, certificates and key files that the
// tests of the root package and of internal/oauthclient sign, load and
// present: one copy for both. Only tests import it.
package testkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Set is one key of each kind the client accepts, and a second one of some
// kinds (a key that does not match, a second client).
type Set struct {
	RSA, RSA2  *rsa.PrivateKey
	P256, P384 *ecdsa.PrivateKey
	P256b      *ecdsa.PrivateKey
	Ed, Ed2    ed25519.PrivateKey
}

// Keys is the Set, made once per test binary (RSA generation is slow under
// -race).
var Keys = sync.OnceValue(func() *Set {
	k := new(Set)
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var err error
	k.RSA, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.RSA2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.P256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.P256b, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.P384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	_, k.Ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.Ed2, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return k
})

// PEM encodes one PEM block.
func PEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// PKCS8PEM is key as a "PRIVATE KEY" block.
func PKCS8PEM(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return PEM("PRIVATE KEY", der)
}

// SEC1PEM is an EC key as an "EC PRIVATE KEY" block.
func SEC1PEM(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return PEM("EC PRIVATE KEY", der)
}

// WriteFile writes data to name in a fresh temporary directory and returns
// the path.
func WriteFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ReplaceFile replaces path by a new file, as cert-manager or a secret
// volume does (write, then rename).
func ReplaceFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// template is a certificate valid from an hour ago to an hour from now.
func template(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
}

func create(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// SelfSignedCert makes a self-signed certificate for key.
func SelfSignedCert(t testing.TB, key crypto.Signer, cn string) *x509.Certificate {
	t.Helper()
	tmpl := template(cn)
	return create(t, tmpl, tmpl, key.Public(), key)
}

// CA is a certificate authority for the tests of client certificates.
type CA struct {
	Key  crypto.Signer
	Cert *x509.Certificate
}

// NewCA makes a self-signed root CA.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	return newCA(t, name, nil)
}

// Intermediate makes a CA signed by ca.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	return newCA(t, name, ca)
}

// newCA makes a CA signed by parent, or self-signed when parent is nil.
func newCA(t testing.TB, name string, parent *CA) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := template(name)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign
	if parent == nil {
		return &CA{Key: key, Cert: create(t, tmpl, tmpl, key.Public(), key)}
	}
	return &CA{Key: key, Cert: create(t, tmpl, parent.Cert, key.Public(), parent.Key)}
}

// IssueClient makes a client certificate for key.
func (ca *CA) IssueClient(t testing.TB, cn string, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := template(cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return create(t, tmpl, ca.Cert, key.Public(), ca.Key)
}

// IssueServer makes a server certificate for 127.0.0.1.
func (ca *CA) IssueServer(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := template("127.0.0.1")
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	c := create(t, tmpl, ca.Cert, key.Public(), ca.Key)
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}
}

// GoogleKeyJSON is a service account key file as Google issues it, for key
// and tokenURI; mod, when not nil, changes its fields first.
func GoogleKeyJSON(t testing.TB, key *rsa.PrivateKey, tokenURI string, mod func(map[string]any)) []byte {
	t.Helper()
	m := map[string]any{
		"type":                        "service_account",
		"project_id":                  "proj",
		"private_key_id":              "0123456789abcdef",
		"private_key":                 string(PKCS8PEM(t, key)),
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

// ParseJWT verifies a compact JWS with go-jose against key and returns its
// header and its claims as raw JSON values.
func ParseJWT(t testing.TB, token string, key any) (jose.Header, map[string]json.RawMessage) {
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

// AssertNoKeyMaterial fails the test if text (an error, a log, an answer:
// where says which) holds PEM armour or any 16 characters of the base64
// body of a block of one of the PEM texts.
func AssertNoKeyMaterial(t testing.TB, where, text string, pems ...[]byte) {
	t.Helper()
	if strings.Contains(text, "-----") {
		t.Errorf("%s holds PEM armour: %s", where, text)
	}
	for _, p := range pems {
		for block, rest := pem.Decode(p); block != nil; block, rest = pem.Decode(rest) {
			b64 := base64.StdEncoding.EncodeToString(block.Bytes)
			for i := 0; i+16 <= len(b64); i += 16 {
				if strings.Contains(text, b64[i:i+16]) {
					t.Errorf("%s holds the content of a %s block", where, block.Type)
					break
				}
			}
		}
	}
}
