package oauthclient

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/benchcpu"
)

// The cost of a proof, made on every proxied request (go test -run '^$'
// -bench DPoP -benchmem ./internal/oauthclient):
//
//   - BenchmarkDPoPProof: this package's way (precomputed header, claims
//     appended by hand into a pooled buffer, the standard library's
//     signature called directly);
//   - BenchmarkDPoPProofGoJoseSigner: the straightforward way, go-jose's
//     Signer with EmbedJWK and typ, the claims through encoding/json: what
//     the precomputation saves;
//   - BenchmarkDPoPSignatureOnly: the same signing input signed and
//     encoded as Proof does, and nothing else: the floor, what no
//     precomputation can remove.

var benchAlgs = []string{AlgES256, AlgEdDSA, AlgRS256}

const benchHTU = "https://api.example.com/v1/customers/12345/orders"

func BenchmarkDPoPProof(b *testing.B) {
	ath := AccessTokenHash("an access token of a realistic length, something like 40-1000 bytes")
	for _, alg := range benchAlgs {
		k := testDPoPKey(b, alg)
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			defer benchcpu.PerOp(b)()
			for b.Loop() {
				if _, err := k.Proof(ProofParams{Method: "GET", URL: benchHTU, AccessTokenHash: ath, Nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDPoPProofGoJoseSigner(b *testing.B) {
	ath := AccessTokenHash("an access token of a realistic length, something like 40-1000 bytes")
	type claims struct {
		JTI   string `json:"jti"`
		HTM   string `json:"htm"`
		HTU   string `json:"htu"`
		IAT   int64  `json:"iat"`
		ATH   string `json:"ath,omitempty"`
		Nonce string `json:"nonce,omitempty"`
	}
	for _, alg := range benchAlgs {
		key := testKeys()[alg]
		b.Run(alg, func(b *testing.B) {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key},
				(&jose.SignerOptions{EmbedJWK: true}).WithType(DPoPProofType))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			defer benchcpu.PerOp(b)()
			for b.Loop() {
				var id [16]byte
				rand.Read(id[:])
				payload, err := json.Marshal(claims{base64.RawURLEncoding.EncodeToString(id[:]), "GET", benchHTU, time.Now().Unix(), ath, "eyJ7S_zG.eyJH0-Z.HX4w-7v"})
				if err != nil {
					b.Fatal(err)
				}
				jws, err := s.Sign(payload)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := jws.CompactSerialize(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDPoPSignatureOnly(b *testing.B) {
	for _, alg := range benchAlgs {
		k := testDPoPKey(b, alg)
		proof, _ := k.Proof(ProofParams{Method: "GET", URL: benchHTU, AccessTokenHash: AccessTokenHash("t"), Nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v"})
		input := []byte(proof[:len(proof)-b64.EncodedLen(k.sigLen)-1])
		b.Run(alg, func(b *testing.B) {
			dst := make([]byte, 0, 1024)
			b.ReportAllocs()
			defer benchcpu.PerOp(b)()
			for b.Loop() {
				if _, err := k.appendSignature(dst, input); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAccessTokenHash(b *testing.B) {
	tok := "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.a-payload-of-about-a-thousand-bytes-is-common-for-jwt-access-tokens"
	b.ReportAllocs()
	for b.Loop() {
		AccessTokenHash(tok)
	}
}

func BenchmarkNoncesGet(b *testing.B) {
	var n Nonces
	n.Set("https://api.example.com:443", "eyJ7S_zG.eyJH0-Z.HX4w-7v")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if n.Get("https://api.example.com:443") == "" {
				b.Fatal("no nonce")
			}
		}
	})
}
