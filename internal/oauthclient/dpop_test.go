package oauthclient

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// Test keys, made once: RSA key generation is slow.
var testKeys = sync.OnceValue(func() map[string]crypto.Signer {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return map[string]crypto.Signer{AlgES256: ec, AlgEdDSA: ed, AlgRS256: rk}
})

func testDPoPKey(t testing.TB, alg string) *DPoPKey {
	t.Helper()
	k, err := NewDPoPKey(testKeys()[alg])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verifiedProof is a proof as a resource server sees it after go-jose
// verified its signature with the key in its header.
type verifiedProof struct {
	header map[string]json.RawMessage // the protected header, as sent
	jwk    *jose.JSONWebKey
	claims map[string]any
}

// verifyProof checks a proof with go-jose (not with this package's code):
// compact form, alg in the allow-list, typ, a public jwk, the signature.
func verifyProof(t testing.TB, proof string) verifiedProof {
	t.Helper()
	jws, err := jose.ParseSigned(proof, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256})
	if err != nil {
		t.Fatalf("go-jose cannot parse the proof: %v", err)
	}
	if len(jws.Signatures) != 1 {
		t.Fatalf("%d signatures", len(jws.Signatures))
	}
	h := jws.Signatures[0].Protected
	if h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() || !h.JSONWebKey.Valid() {
		t.Fatalf("the proof's jwk is missing, private or invalid: %+v", h.JSONWebKey)
	}
	if typ, _ := h.ExtraHeaders["typ"].(string); typ != "dpop+jwt" {
		t.Fatalf("typ = %q, want dpop+jwt", typ)
	}
	payload, err := jws.Verify(h.JSONWebKey)
	if err != nil {
		t.Fatalf("the proof's signature does not verify with its jwk: %v", err)
	}
	var vp verifiedProof
	vp.jwk = h.JSONWebKey
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(proof, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &vp.header); err != nil {
		t.Fatalf("protected header %s: %v", raw, err)
	}
	d := json.NewDecoder(bytes.NewReader(payload))
	d.UseNumber()
	if err := d.Decode(&vp.claims); err != nil {
		t.Fatalf("claims %s: %v", payload, err)
	}
	return vp
}

func keysOf(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestDPoPProofVerifiesWithGoJose(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, alg := range []string{AlgES256, AlgEdDSA, AlgRS256} {
		k := testDPoPKey(t, alg)
		for _, tc := range []struct {
			name        string
			p           ProofParams
			wantClaims  []string
			wantATH     string
			wantNonce   string
			wantMethods string
		}{
			{"token request", ProofParams{Method: "POST", URL: "https://as.example.com/token", Now: now},
				[]string{"htm", "htu", "iat", "jti"}, "", "", "POST"},
			{"resource request", ProofParams{Method: "GET", URL: "https://api.example.com/v1/things", AccessTokenHash: AccessTokenHash("tok"), Now: now},
				[]string{"ath", "htm", "htu", "iat", "jti"}, AccessTokenHash("tok"), "", "GET"},
			{"with nonce", ProofParams{Method: "DELETE", URL: "https://api.example.com/", AccessTokenHash: AccessTokenHash("tok"), Nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v", Now: now},
				[]string{"ath", "htm", "htu", "iat", "jti", "nonce"}, AccessTokenHash("tok"), "eyJ7S_zG.eyJH0-Z.HX4w-7v", "DELETE"},
		} {
			t.Run(alg+"/"+tc.name, func(t *testing.T) {
				proof, err := k.Proof(tc.p)
				if err != nil {
					t.Fatal(err)
				}
				vp := verifyProof(t, proof)
				if got := strings.Join(keysOf(map[string]any{"typ": 0, "alg": 0, "jwk": 0}), ","); strings.Join(keysOfRaw(vp.header), ",") != got {
					t.Errorf("protected header members %v, want typ, alg, jwk only", keysOfRaw(vp.header))
				}
				if string(vp.header["alg"]) != `"`+alg+`"` {
					t.Errorf("alg %s, want %s", vp.header["alg"], alg)
				}
				if bytes.Contains(vp.header["jwk"], []byte(`"d"`)) {
					t.Fatalf("the jwk carries private key material")
				}
				tp, err := vp.jwk.Thumbprint(crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				if got := base64.RawURLEncoding.EncodeToString(tp); got != k.Thumbprint() {
					t.Errorf("thumbprint of the proof's jwk %s, key's %s", got, k.Thumbprint())
				}
				if got := keysOf(vp.claims); strings.Join(got, ",") != strings.Join(tc.wantClaims, ",") {
					t.Errorf("claims %v, want %v", got, tc.wantClaims)
				}
				if vp.claims["htm"] != tc.wantMethods || vp.claims["htu"] != tc.p.URL {
					t.Errorf("htm %v htu %v", vp.claims["htm"], vp.claims["htu"])
				}
				if iat, _ := vp.claims["iat"].(json.Number).Int64(); iat != now.Unix() {
					t.Errorf("iat %v, want %d", vp.claims["iat"], now.Unix())
				}
				if tc.wantATH != "" && vp.claims["ath"] != tc.wantATH {
					t.Errorf("ath %v, want %s", vp.claims["ath"], tc.wantATH)
				}
				if tc.wantNonce != "" && vp.claims["nonce"] != tc.wantNonce {
					t.Errorf("nonce %v, want %s", vp.claims["nonce"], tc.wantNonce)
				}
				jti, _ := vp.claims["jti"].(string)
				if b, err := base64.RawURLEncoding.DecodeString(jti); err != nil || len(b) != 16 {
					t.Errorf("jti %q is not 16 random bytes, base64url", jti)
				}
			})
		}
	}
}

func keysOfRaw(m map[string]json.RawMessage) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestDPoPProofIATDefaultsToNow(t *testing.T) {
	k := testDPoPKey(t, AlgES256)
	before := time.Now().Unix()
	proof, err := k.Proof(ProofParams{Method: "GET", URL: "https://api.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now().Unix()
	iat, _ := verifyProof(t, proof).claims["iat"].(json.Number).Int64()
	if iat < before || iat > after {
		t.Errorf("iat %d not within [%d, %d]", iat, before, after)
	}
}

// Every proof has its own jti, also when many are made at once (run with
// -race: the key is shared).
func TestDPoPProofJTIUnique(t *testing.T) {
	k := testDPoPKey(t, AlgEdDSA)
	const workers, each = 8, 250
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				proof, err := k.Proof(ProofParams{Method: "GET", URL: "https://api.example.com/x"})
				if err != nil {
					t.Error(err)
					return
				}
				payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(proof, ".")[1])
				var c struct {
					JTI string `json:"jti"`
				}
				json.Unmarshal(payload, &c)
				mu.Lock()
				if seen[c.JTI] {
					t.Errorf("jti %s repeated", c.JTI)
				}
				seen[c.JTI] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != workers*each {
		t.Errorf("%d distinct jti, want %d", len(seen), workers*each)
	}
}

// RFC 9449's examples: the proof key of §4.1 (Figure 3) and its thumbprint
// (§6.1), the access token and ath of §7.1 (Figure 12), and the token
// request proof of §4.1, which the verifier used by these tests accepts.
const (
	rfc9449JWK      = `{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`
	rfc9449JKT      = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	rfc9449Token    = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
	rfc9449ATH      = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
	rfc9449TokProof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19" +
		".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ" +
		".2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)

func TestDPoPRFC9449Examples(t *testing.T) {
	var jwk jose.JSONWebKey
	if err := json.Unmarshal([]byte(rfc9449JWK), &jwk); err != nil {
		t.Fatal(err)
	}
	tp, err := JWKThumbprint(jwk.Key)
	if err != nil {
		t.Fatal(err)
	}
	if tp != rfc9449JKT {
		t.Errorf("thumbprint of the RFC 9449 key: %s, want %s", tp, rfc9449JKT)
	}
	if got := AccessTokenHash(rfc9449Token); got != rfc9449ATH {
		t.Errorf("ath of the RFC 9449 token: %s, want %s", got, rfc9449ATH)
	}
	vp := verifyProof(t, rfc9449TokProof)
	if tp, _ := JWKThumbprint(vp.jwk.Key); tp != rfc9449JKT {
		t.Errorf("the RFC proof's key thumbprint %s", tp)
	}
	want := map[string]any{"jti": "-BwC3ESc6acc2lTc", "htm": "POST", "htu": "https://server.example.com/token", "iat": json.Number("1562262616")}
	for k, v := range want {
		if vp.claims[k] != v {
			t.Errorf("RFC proof claim %s = %v, want %v", k, vp.claims[k], v)
		}
	}
	// The same request's proof made here has the same claims but jti.
	k := testDPoPKey(t, AlgES256)
	proof, err := k.Proof(ProofParams{Method: "POST", URL: "https://server.example.com/token", Now: time.Unix(1562262616, 0)})
	if err != nil {
		t.Fatal(err)
	}
	mine := verifyProof(t, proof).claims
	delete(mine, "jti")
	delete(want, "jti")
	if len(mine) != len(want) {
		t.Errorf("claims %v, want %v and a jti", mine, want)
	}
	for k, v := range want {
		if mine[k] != v {
			t.Errorf("claim %s = %v, want %v", k, mine[k], v)
		}
	}
}

// Values that need escaping come out as JSON strings that decode to
// what was given (invalid UTF-8 as U+FFFD, like encoding/json).
func TestDPoPProofEscapesClaims(t *testing.T) {
	k := testDPoPKey(t, AlgEdDSA)
	for _, s := range []string{
		`https://api.example.com/a"b\c`,
		"https://api.example.com/\x01\x1f\n\r\t",
		"https://api.example.com/é/日本",
		"https://api.example.com/\xff\xfe",
		"https://api.example.com/</script>&",
	} {
		proof, err := k.Proof(ProofParams{Method: "GET", URL: s, Nonce: s})
		if err != nil {
			t.Fatal(err)
		}
		c := verifyProof(t, proof).claims
		var want string
		b, _ := json.Marshal(s)
		json.Unmarshal(b, &want)
		if c["htu"] != want || c["nonce"] != want {
			t.Errorf("%q: htu %q nonce %q, want %q", s, c["htu"], c["nonce"], want)
		}
	}
}

func TestDPoPProofRefusesBadParams(t *testing.T) {
	k := testDPoPKey(t, AlgES256)
	for _, p := range []ProofParams{
		{Method: "", URL: "https://a.example/"},
		{Method: "GE T", URL: "https://a.example/"},
		{Method: "GET", URL: ""},
		{Method: "GET", URL: "https://a.example/?q=1"},
		{Method: "GET", URL: "https://a.example/#f"},
	} {
		if _, err := k.Proof(p); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
}

func TestNewDPoPKeyAlgorithms(t *testing.T) {
	for alg, key := range testKeys() {
		k, err := NewDPoPKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if k.Algorithm() != alg {
			t.Errorf("%T signs %s, want %s", key, k.Algorithm(), alg)
		}
		tp, _ := JWKThumbprint(key.Public())
		if k.Thumbprint() != tp {
			t.Errorf("%s: Thumbprint %s, JWKThumbprint %s", alg, k.Thumbprint(), tp)
		}
		var jwk jose.JSONWebKey
		if err := json.Unmarshal(k.PublicJWK(), &jwk); err != nil || !jwk.IsPublic() {
			t.Errorf("%s: PublicJWK %s: %v", alg, k.PublicJWK(), err)
		}
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, tc := range []struct {
		key  crypto.Signer
		want string
	}{
		{p384, "curve P-384"},
		{small, "1024 bits is too small"},
		{nil, "no DPoP key"},
	} {
		_, err := NewDPoPKey(tc.key)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%T: error %v, want it to say %q", tc.key, err, tc.want)
		}
	}
}

// A generated key survives storage: PKCS#8 out and in, the same
// thumbprint, and proofs of the copy verify under the original's key.
func TestDPoPKeyPKCS8RoundTrip(t *testing.T) {
	for _, alg := range []string{"generated", AlgEdDSA, AlgRS256} {
		var k *DPoPKey
		if alg == "generated" {
			var err error
			if k, err = GenerateDPoPKey(); err != nil {
				t.Fatal(err)
			}
			if k.Algorithm() != AlgES256 {
				t.Errorf("a generated key signs %s, want ES256", k.Algorithm())
			}
		} else {
			k = testDPoPKey(t, alg)
		}
		der, err := k.MarshalPKCS8()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseDPoPKeyPKCS8(der)
		if err != nil {
			t.Fatal(err)
		}
		if back.Thumbprint() != k.Thumbprint() || back.Algorithm() != k.Algorithm() {
			t.Errorf("%s: after PKCS#8: %s %s, before %s %s", alg, back.Algorithm(), back.Thumbprint(), k.Algorithm(), k.Thumbprint())
		}
		proof, _ := back.Proof(ProofParams{Method: "GET", URL: "https://api.example.com/"})
		jws, err := jose.ParseSigned(proof, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(k.Algorithm())})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jws.Verify(k.Public()); err != nil {
			t.Errorf("%s: a proof of the stored copy does not verify with the original key: %v", alg, err)
		}
	}
	if _, err := ParseDPoPKeyPKCS8([]byte("not DER")); err == nil || strings.Contains(err.Error(), "not DER") {
		t.Errorf("garbage PKCS#8: %v", err)
	}
}

func TestLoadDPoPKey(t *testing.T) {
	keys := testKeys()
	ec := keys[AlgES256].(*ecdsa.PrivateKey)
	rk := keys[AlgRS256].(*rsa.PrivateKey)
	ed := keys[AlgEdDSA]
	pk8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	sec1, _ := x509.MarshalECPrivateKey(ec)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ecPEM := pemOfString("PRIVATE KEY", pk8(ec))

	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certDER := func() []byte {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ec.Public(), ec)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}()

	for _, tc := range []struct {
		name    string
		value   string
		wantAlg string
		wantErr string
	}{
		{"PKCS#8 EC inline", ecPEM, AlgES256, ""},
		{"SEC1 EC inline", pemOfString("EC PRIVATE KEY", sec1), AlgES256, ""},
		{"PKCS#1 RSA inline", pemOfString("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk)), AlgRS256, ""},
		{"PKCS#8 Ed25519 inline", pemOfString("PRIVATE KEY", pk8(ed)), AlgEdDSA, ""},
		{"escaped line breaks", strings.ReplaceAll(ecPEM, "\n", `\n`), AlgES256, ""},
		{"mislabelled block", pemOfString("RSA PRIVATE KEY", pk8(ec)), AlgES256, ""},
		{"file", write("ec.pem", ecPEM, 0o600), AlgES256, ""},
		{"certificate and key", write("both.pem", pemOfString("CERTIFICATE", certDER)+ecPEM, 0o600), AlgES256, ""},
		{"P-384", pemOfString("PRIVATE KEY", pk8(p384)), "", "curve P-384"},
		{"RSA 1024", pemOfString("PRIVATE KEY", pk8(small)), "", "too small"},
		{"encrypted PKCS#8", pemOfString("ENCRYPTED PRIVATE KEY", []byte{0x30, 1, 2}), "", "encrypted PEM key"},
		{"two keys", ecPEM + pemOfString("PRIVATE KEY", pk8(ed)), "", "more than one private key"},
		{"certificate only", write("cert.pem", pemOfString("CERTIFICATE", certDER), 0o600), "", "holds no private key (found CERTIFICATE)"},
		{"broken key block", pemOfString("PRIVATE KEY", []byte("garbage garbage garbage")), "", "not a valid private key"},
		{"no PEM in file", write("empty.pem", "hello\n", 0o600), "", "holds no PEM block"},
		{"missing file", filepath.Join(dir, "nope.pem"), "", "nope.pem does not exist"},
		{"unreadable file", write("secret.pem", ecPEM, 0o000), "", "permission denied"},
		{"empty", " ", "", "dpop_key: empty value"},
		{"bare base64 DER", base64.StdEncoding.EncodeToString(pk8(ec)), "", "neither PEM text"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "unreadable file" && os.Geteuid() == 0 {
				t.Skip("root reads any file")
			}
			k, err := LoadDPoPKey(tc.value)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if k.Algorithm() != tc.wantAlg {
					t.Errorf("alg %s, want %s", k.Algorithm(), tc.wantAlg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want it to say %q", err, tc.wantErr)
			}
			// No key material in the error: no line of a PEM body, no
			// stretch of base64 DER. (A path is named, as it should be.)
			if _, err := os.Stat(tc.value); err == nil || strings.HasPrefix(tc.value, dir) {
				return
			}
			for _, line := range strings.Split(tc.value, "\n") {
				if len(line) > 20 && !strings.HasPrefix(line, "-----") && strings.Contains(err.Error(), line) {
					t.Errorf("the error quotes key material: %v", err)
				}
			}
			if strings.Contains(err.Error(), "MII") {
				t.Errorf("the error quotes key material: %v", err)
			}
		})
	}
}

func TestNormalizeHTU(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"https://server.example.com/token", "https://server.example.com/token", ""},
		{"HTTPS://Server.Example.COM/token", "https://server.example.com/token", ""},
		{"https://server.example.com:443/token", "https://server.example.com/token", ""},
		{"http://server.example.com:80/token", "http://server.example.com/token", ""},
		{"https://server.example.com:8443/token", "https://server.example.com:8443/token", ""},
		{"http://server.example.com:443/", "http://server.example.com:443/", ""},
		{"https://server.example.com", "https://server.example.com/", ""},
		{"https://resource.example.org/protectedresource?x=1#frag", "https://resource.example.org/protectedresource", ""},
		{"https://api.example.com/a/./b/../c", "https://api.example.com/a/c", ""},
		{"https://api.example.com/a/b/..", "https://api.example.com/a/", ""},
		{"https://api.example.com/../x", "https://api.example.com/x", ""},
		{"https://api.example.com/%7euser/%2fa%2Fb", "https://api.example.com/~user/%2Fa%2Fb", ""},
		{"https://api.example.com/caf%c3%a9", "https://api.example.com/caf%C3%A9", ""},
		{"https://api.example.com/Case/Kept/", "https://api.example.com/Case/Kept/", ""},
		{"http://[::1]:8080/x", "http://[::1]:8080/x", ""},
		{"http://[2001:DB8::1]/x", "http://[2001:db8::1]/x", ""},
		{"http://127.0.0.1:9000", "http://127.0.0.1:9000/", ""},
		{"ftp://server.example.com/x", "", "absolute http or https"},
		{"/token", "", "absolute http or https"},
		{"https:opaque", "", "with a host"},
		{"https://user:pw@server.example.com/", "", "userinfo"},
		{"https://[::1/x", "", "not a URL"},
		{"https://user:pw@[::1/x", "", "not a URL"},
		{"ftp://user:pw@server.example.com/x", "", "absolute http or https"},
	} {
		got, err := NormalizeHTU(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %q, %v; want an error saying %q", tc.in, got, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "pw") {
				t.Errorf("%s: the error shows the password: %v", tc.in, err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case got != tc.want:
			t.Errorf("%s: %s, want %s", tc.in, got, tc.want)
		}
	}
}

// appendJSONString writes what encoding/json would read back as the same
// string as encoding/json's own encoding.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"b\s`, "\x00\x1f\x7f", "é日本", "\xff\xfe", "a\xc3", "\u2028", "</script>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		var back, want string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q encodes as %s, not JSON: %v", s, got, err)
		}
		b, _ := json.Marshal(s)
		json.Unmarshal(b, &want)
		if back != want {
			t.Fatalf("%q: decodes as %q, encoding/json's as %q", s, back, want)
		}
	})
}

// pemOfString is one PEM block as text.
func pemOfString(typ string, der []byte) string { return string(testkeys.PEM(typ, der)) }
