package oauthclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

// The proof's own signing (dpop.go: appendSignature, ecdsaFixed) and the
// pooled buffer, checked with go-jose as the verifier.

// opaqueSigner hides a key's type: NewDPoPKey sees a crypto.Signer that is
// not the standard library's, as a key in hardware is, and signs through
// its Sign method.
type opaqueSigner struct{ s crypto.Signer }

func (o opaqueSigner) Public() crypto.PublicKey { return o.s.Public() }
func (o opaqueSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return o.s.Sign(r, digest, opts)
}

// Proofs of every algorithm verify with go-jose, signed both ways: with the
// standard library's key directly, and through crypto.Signer.Sign; the
// JWS signature has the size RFC 7518 gives it (ES256: r||s, 64 bytes).
func TestDPoPProofSignersVerifyWithGoJose(t *testing.T) {
	for _, alg := range []string{AlgES256, AlgEdDSA, AlgRS256} {
		for _, opaque := range []bool{false, true} {
			key := testKeys()[alg]
			name := alg + "/stdlib"
			if opaque {
				key, name = opaqueSigner{key}, alg+"/crypto.Signer"
			}
			t.Run(name, func(t *testing.T) {
				k, err := NewDPoPKey(key)
				if err != nil {
					t.Fatal(err)
				}
				if (k.ec != nil || k.ed != nil || k.rsa != nil) == opaque {
					t.Fatalf("opaque %v, but the standard library's key is set: %v %v %v", opaque, k.ec != nil, k.ed != nil, k.rsa != nil)
				}
				want := map[string]int{AlgES256: 64, AlgEdDSA: 64, AlgRS256: 256}[alg]
				for i := range 20 { // ECDSA: r or s shorter than 32 bytes now and then
					proof, err := k.Proof(ProofParams{Method: "GET", URL: "https://api.example.com", Path: "/v1/x/" + string(rune('a'+i))})
					if err != nil {
						t.Fatal(err)
					}
					vp := verifyProof(t, proof)
					if tp, _ := JWKThumbprint(vp.jwk.Key); tp != k.Thumbprint() {
						t.Fatalf("the proof carries key %s, want %s", tp, k.Thumbprint())
					}
					sig, err := base64.RawURLEncoding.DecodeString(proof[strings.LastIndexByte(proof, '.')+1:])
					if err != nil || len(sig) != want {
						t.Fatalf("signature of %d bytes (%v), want %d", len(sig), err, want)
					}
				}
			})
		}
	}
}

// ecdsaFixed gives r and s of a DER signature as big-endian 32-byte
// halves, as encoding/asn1 and math/big read them, for many signatures
// (some with r or s of fewer than 32 significant bytes, or a 0x00 sign
// byte); it refuses what is not one.
func TestECDSAFixed(t *testing.T) {
	key := testKeys()[AlgES256].(*ecdsa.PrivateKey)
	for i := range 2000 {
		h := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		der, err := ecdsa.SignASN1(rand.Reader, key, h[:])
		if err != nil {
			t.Fatal(err)
		}
		var want struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &want); err != nil {
			t.Fatal(err)
		}
		var got [64]byte
		if err := ecdsaFixed(got[:], der); err != nil {
			t.Fatalf("%x: %v", der, err)
		}
		if new(big.Int).SetBytes(got[:32]).Cmp(want.R) != 0 || new(big.Int).SetBytes(got[32:]).Cmp(want.S) != 0 {
			t.Fatalf("%x: r||s %x, want r %x s %x", der, got, want.R, want.S)
		}
		if !ecdsa.Verify(&key.PublicKey, h[:], new(big.Int).SetBytes(got[:32]), new(big.Int).SetBytes(got[32:])) {
			t.Fatalf("r||s %x does not verify", got)
		}
	}
	short := func(r, s []byte) []byte {
		b, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)})
		return b
	}
	var got [64]byte
	if err := ecdsaFixed(got[:], short([]byte{1}, []byte{0xff, 2})); err != nil || got[31] != 1 || got[62] != 0xff || got[63] != 2 {
		t.Errorf("short r and s: %x, %v", got, err)
	}
	big33 := append([]byte{1}, make([]byte, 32)...)
	for name, der := range map[string][]byte{
		"empty":            nil,
		"not a sequence":   {0x04, 0x02, 0x01, 0x01},
		"one integer":      {0x30, 0x03, 0x02, 0x01, 0x01},
		"trailing":         append(short([]byte{1}, []byte{1}), 0),
		"negative r":       {0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01},
		"zero s":           {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00},
		"r of 33 bytes":    short(big33, []byte{1}),
		"extra in the seq": {0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01},
	} {
		var out [64]byte
		if err := ecdsaFixed(out[:], der); err == nil {
			t.Errorf("%s (%x): no error", name, der)
		}
	}
}

// Many proofs at once from two keys of each algorithm that is fast enough
// (the pooled buffer, the keys' precomputed headers): every proof verifies
// with go-jose, carries the key that made it (a header of the other key
// would not verify, or name the wrong thumbprint), its own htu, and a jti
// no other proof has. Run with -race.
func TestDPoPProofsConcurrentKeysAndJTI(t *testing.T) {
	other := map[string]*DPoPKey{}
	for _, alg := range []string{AlgES256, AlgEdDSA} {
		k, err := NewDPoPKey(opaqueSigner{testKeys()[alg]}) // the same key signing the other way...
		if err != nil {
			t.Fatal(err)
		}
		other[alg] = k
	}
	g, err := GenerateDPoPKey() // ...and another key
	if err != nil {
		t.Fatal(err)
	}
	keys := []*DPoPKey{testDPoPKey(t, AlgES256), testDPoPKey(t, AlgEdDSA), other[AlgES256], other[AlgEdDSA], g}
	const workers, each = 8, 150
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				k := keys[(w+i)%len(keys)]
				path := "/w/" + strings.Repeat("p", (w*each+i)%700) // some beyond the pool's first 1 KiB
				nonce := strings.Repeat("n", i%40)
				proof, err := k.Proof(ProofParams{Method: "PATCH", URL: "https://api.example.com", Path: path, Nonce: nonce, AccessTokenHash: AccessTokenHash(path)})
				if err != nil {
					t.Error(err)
					return
				}
				vp := verifyProof(t, proof)
				if tp, _ := JWKThumbprint(vp.jwk.Key); tp != k.Thumbprint() {
					t.Errorf("a proof of key %s carries key %s", k.Thumbprint(), tp)
				}
				if vp.claims["htu"] != "https://api.example.com"+path || vp.claims["ath"] != AccessTokenHash(path) || (nonce != "" && vp.claims["nonce"] != nonce) {
					t.Errorf("claims %v, want htu ...%s", vp.claims, path)
				}
				jti, _ := vp.claims["jti"].(string)
				if b, err := base64.RawURLEncoding.DecodeString(jti); err != nil || len(b) != 16 {
					t.Errorf("jti %q is not 16 bytes, base64url", jti)
				}
				mu.Lock()
				if seen[jti] {
					t.Errorf("jti %s repeated", jti)
				}
				seen[jti] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != workers*each {
		t.Errorf("%d distinct jti, want %d", len(seen), workers*each)
	}
}

// Whatever Proof is asked, the proof it makes (when it makes one) has, as
// go-jose reads it, exactly the claims asked: htm, htu = URL+Path, iat,
// ath and nonce when given and not otherwise, and a jti; and it refuses
// only what is not a method, URL or path.
func FuzzDPoPProofClaims(f *testing.F) {
	f.Add("GET", "https://api.example.com", "/v1/x", "ath-value", "nonce", int64(1_700_000_000))
	f.Add("POST", "https://as.example.com/token", "", "", "", int64(1))
	f.Add("M-SEARCH", "http://[::1]:8080/a%20b", "/é\"\\\x01", "x\xff", "\u2028</script>", int64(-5))
	f.Add("GET", "https://a.example/?q", "/p", "", "", int64(0))
	f.Add("GET", "https://a.example", "p#f", "", "", int64(0))
	k := testDPoPKey(f, AlgEdDSA)
	f.Fuzz(func(t *testing.T, method, u, path, ath, nonce string, iat int64) {
		var now time.Time
		if iat != 0 {
			now = time.Unix(iat, 0)
		}
		before := time.Now().Unix()
		proof, err := k.Proof(ProofParams{Method: method, URL: u, Path: path, AccessTokenHash: ath, Nonce: nonce, Now: now})
		after := time.Now().Unix()
		valid := isToken(method) && u != "" && !strings.ContainsAny(u, "?#") &&
			(path == "" || (path[0] == '/' && !strings.ContainsAny(path, "?#")))
		if err != nil || !valid {
			if valid || err == nil {
				t.Fatalf("Proof(%q, %q, %q): error %v, valid %v", method, u, path, err, valid)
			}
			return
		}
		c := verifyProof(t, proof).claims
		str := func(s string) string { // as a JSON string reads back
			b, _ := json.Marshal(s)
			var back string
			json.Unmarshal(b, &back)
			return back
		}
		want := map[string]string{"htm": method, "htu": str(u + path), "ath": str(ath), "nonce": str(nonce)}
		for name, w := range want {
			got, present := c[name]
			if w == "" && (name == "ath" || name == "nonce") {
				if present {
					t.Errorf("%s %v present, not asked", name, got)
				}
				continue
			}
			if got != w {
				t.Errorf("%s = %q, want %q", name, got, w)
			}
		}
		got, _ := c["iat"].(json.Number).Int64()
		if (iat != 0 && got != iat) || (iat == 0 && (got < before || got > after)) {
			t.Errorf("iat %v, want %d (0: now)", c["iat"], iat)
		}
		if jti, _ := c["jti"].(string); len(jti) != 22 {
			t.Errorf("jti %q", jti)
		}
		if len(c) != 4+btoi(ath != "")+btoi(nonce != "") {
			t.Errorf("claims %v: more or fewer than asked", keysOf(c))
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
