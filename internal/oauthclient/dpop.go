package oauthclient

// DPoP (RFC 9449): the key whose possession the client demonstrates, and
// the proofs it signs with it, one per HTTP request.
//
// A proof is made on every proxied request, so everything that is the same
// for every proof is computed once, when the key is made: the protected
// header (typ, alg and the public JWK, base64url-encoded), the thumbprint.
// Per proof there is only the claims object (appended by hand into a
// pooled buffer: no reflection, no encoding/json), its base64url encoding,
// the signature and the final string, the one allocation of this package's
// own. The signature is the standard library's, called directly (not
// through go-jose, which stays for verifying): ES256 as RFC 7518 §3.4's
// fixed-width r||s, read from the DER signature without math/big; EdDSA;
// RS256 (RSASSA-PKCS1-v1_5). BenchmarkDPoPProof measures it beside go-jose's
// Signer and beside the signature alone.
//
// ECDSA signatures of the standard library's P-256 keys are RFC 6979's
// (crypto/ecdsa's Sign with a nil random source): the per-signature secret
// is derived from the key and the message with HMAC-SHA-256, where the
// default, hedged signing draws randomness and derives it with an
// HMAC-SHA-512 DRBG, about a third of a signature's cost. Nothing is lost:
// every signed message holds a fresh 128-bit random jti, so no message is
// ever signed twice, which is what hedging protects against (fault attacks
// on deterministic signatures sign one message twice), and a deterministic
// secret cannot repeat for two messages as a random one from a broken
// generator could. Ed25519 is deterministic by design for the same reason.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// DPoPProofType is the typ header of a DPoP proof (RFC 9449 §4.2).
const DPoPProofType = "dpop+jwt"

// DPoP signing algorithms this package signs with: one per key type.
const (
	AlgES256 = "ES256" // EC P-256
	AlgEdDSA = "EdDSA" // Ed25519 (RFC 8037)
	AlgRS256 = "RS256" // RSA, 2048 bits or more
)

// minDPoPRSABits is the smallest RSA key accepted.
const minDPoPRSABits = 2048

var b64 = base64.RawURLEncoding

// DPoPKey signs DPoP proofs. It is immutable and safe for concurrent use.
type DPoPKey struct {
	key    crypto.Signer
	alg    jose.SignatureAlgorithm
	jwk    []byte // the public JWK, JSON
	jkt    string // its RFC 7638 SHA-256 thumbprint, base64url
	header []byte // base64url(protected header) "."
	sigLen int    // bytes in a signature

	// The standard library's key, when key is one, signed directly;
	// else key.Sign (a key in hardware, say).
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
	rsa *rsa.PrivateKey
}

// GenerateDPoPKey makes a new EC P-256 key (ES256), the default DPoP key.
func GenerateDPoPKey() (*DPoPKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a DPoP key: %w", err)
	}
	return NewDPoPKey(k)
}

// NewDPoPKey makes a DPoP key of key: EC P-256 (signing ES256), Ed25519
// (EdDSA) or RSA of 2048 bits or more (RS256). Any crypto.Signer with such
// a public key works (a key in hardware, say), though only the standard
// library's keys can be exported with MarshalPKCS8.
func NewDPoPKey(key crypto.Signer) (*DPoPKey, error) {
	if key == nil {
		return nil, errors.New("no DPoP key")
	}
	var (
		alg    jose.SignatureAlgorithm
		sigLen int
	)
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, fmt.Errorf("DPoP key on curve %s: use an EC P-256, Ed25519 or RSA key", pub.Curve.Params().Name)
		}
		alg, sigLen = jose.ES256, 64
	case ed25519.PublicKey:
		alg, sigLen = jose.EdDSA, ed25519.SignatureSize
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minDPoPRSABits {
			return nil, fmt.Errorf("DPoP key: RSA key of %d bits is too small; use %d bits or more", bits, minDPoPRSABits)
		}
		alg, sigLen = jose.RS256, pub.Size()
	default:
		return nil, fmt.Errorf("DPoP key of type %T: use an EC P-256, Ed25519 or RSA key", pub)
	}
	pub := jose.JSONWebKey{Key: key.Public()}
	jwk, err := pub.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("DPoP key: encoding its public JWK: %w", err)
	}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("DPoP key: computing its thumbprint: %w", err)
	}
	h := make([]byte, 0, 64+len(jwk))
	h = append(h, `{"typ":"`+DPoPProofType+`","alg":"`...)
	h = append(h, alg...)
	h = append(h, `","jwk":`...)
	h = append(h, jwk...)
	h = append(h, '}')
	header := append(b64.AppendEncode(nil, h), '.')
	k := &DPoPKey{
		key:    key,
		alg:    alg,
		jwk:    jwk,
		jkt:    b64.EncodeToString(tp),
		header: header,
		sigLen: sigLen,
	}
	switch sk := key.(type) {
	case *ecdsa.PrivateKey:
		k.ec = sk
	case ed25519.PrivateKey:
		k.ed = sk
	case *rsa.PrivateKey:
		k.rsa = sk
	}
	return k, nil
}

// Algorithm is the JWS algorithm the key signs with: ES256, EdDSA or RS256.
func (k *DPoPKey) Algorithm() string { return string(k.alg) }

// PublicJWK is the public key as a JWK (JSON), as the proofs carry it.
func (k *DPoPKey) PublicJWK() []byte { return append([]byte(nil), k.jwk...) }

// Public is the public key.
func (k *DPoPKey) Public() crypto.PublicKey { return k.key.Public() }

// Thumbprint is the key's JWK SHA-256 thumbprint (RFC 7638), base64url: the
// jkt that a bound token's cnf claim holds (RFC 9449 §6) and the dpop_jkt
// authorization request parameter (§10).
func (k *DPoPKey) Thumbprint() string { return k.jkt }

// MarshalPKCS8 is the private key as PKCS#8 DER, for storage: the caller
// keeps it encrypted. ParseDPoPKeyPKCS8 reads it back.
func (k *DPoPKey) MarshalPKCS8() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.key)
	if err != nil {
		return nil, fmt.Errorf("DPoP key of type %T cannot be exported", k.key)
	}
	return der, nil
}

// ParseDPoPKeyPKCS8 reads a key that MarshalPKCS8 wrote.
func ParseDPoPKeyPKCS8(der []byte) (*DPoPKey, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("DPoP key: the stored key is not valid PKCS#8")
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("DPoP key: the stored key of type %T cannot sign", k)
	}
	return NewDPoPKey(s)
}

// LoadDPoPKey loads a key from value: PEM text (it holds a "-----BEGIN"
// line; on one line with its line breaks escaped as \n too, as an
// environment variable often holds it) or the path of a PEM file, read as
// LoadPrivateKey reads private_key (keys.go): PKCS#8, SEC1 or PKCS#1
// blocks, other blocks (a certificate, EC PARAMETERS) skipped, more than
// one key an error. Errors start with "dpop_key: ", name the file (or "the
// inline PEM value") and never hold key material.
func LoadDPoPKey(value string) (*DPoPKey, error) {
	const field = "dpop_key"
	data, where, err := readPEMValue(field, value)
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKeyPEM(data, field, where)
	if err != nil {
		return nil, err
	}
	k, err := NewDPoPKey(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", field, where, err)
	}
	return k, nil
}

// ProofParams says what a proof is for.
type ProofParams struct {
	// Method is htm, the request's method.
	Method string
	// URL is htu, the request's target URI without query and fragment:
	// NormalizeHTU of a configured URL, computed once, with the request's
	// path appended as it is sent (or given as Path).
	URL string
	// Path, when set, is appended to URL to make htu: the request's
	// escaped path, starting with "/", so that a caller with a fixed base
	// URL does not build the htu string per request.
	Path string
	// AccessTokenHash is ath, AccessTokenHash(token), for a request to a
	// resource server; empty for the authorization server's endpoints.
	// Computed once per token.
	AccessTokenHash string
	// Nonce is the server's latest DPoP-Nonce for the URL's origin (see
	// Nonces); empty: none.
	Nonce string
	// Now is iat; zero: the current time.
	Now time.Time
}

// Proof makes a DPoP proof for one request: a JWT with typ dpop+jwt, the
// key's alg and public jwk in its header, and jti (16 random bytes), htm,
// htu, iat, and ath and nonce when given, in its claims.
func (k *DPoPKey) Proof(p ProofParams) (string, error) {
	if !isToken(p.Method) {
		return "", errors.New("DPoP proof: the method is not an HTTP method")
	}
	if p.URL == "" || strings.ContainsAny(p.URL, "?#") {
		return "", errors.New("DPoP proof: htu must be an absolute URL without query or fragment (see NormalizeHTU)")
	}
	if p.Path != "" && (p.Path[0] != '/' || strings.ContainsAny(p.Path, "?#")) {
		return "", errors.New("DPoP proof: the path must start with / and have no query or fragment")
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	// jti: 16 bytes from crypto/rand, one read (RFC 9449 §4.2 asks for
	// at least 96 bits of pseudorandom data; §11.1 has servers refuse a
	// jti seen before). A random prefix with a counter would be unique too
	// and save the read (about 0.2 µs of a proof's tens), but would tell
	// every resource server how many proofs this process made and link
	// them to it.
	var id [16]byte
	rand.Read(id[:])

	bp := proofBufs.Get().(*[]byte)
	b := append((*bp)[:0], `{"jti":"`...)
	b = b64.AppendEncode(b, id[:])
	b = append(b, `","htm":`...)
	b = appendJSONString(b, p.Method)
	b = append(b, `,"htu":"`...)
	b = appendJSONChars(b, p.URL)
	b = appendJSONChars(b, p.Path)
	b = append(b, `","iat":`...)
	b = strconv.AppendInt(b, now.Unix(), 10)
	if p.AccessTokenHash != "" {
		b = append(b, `,"ath":`...)
		b = appendJSONString(b, p.AccessTokenHash)
	}
	if p.Nonce != "" {
		b = append(b, `,"nonce":`...)
		b = appendJSONString(b, p.Nonce)
	}
	b = append(b, '}')

	// The proof follows the claims in the same buffer: header, claims
	// (base64url), ".", signature (base64url).
	n := len(b)
	b = append(b, k.header...)
	b = b64.AppendEncode(b, b[:n])
	input := b[n:]
	b, err := k.appendSignature(append(b, '.'), input)
	if err != nil {
		putProofBuf(bp, b)
		return "", fmt.Errorf("DPoP proof: signing: %w", err)
	}
	proof := string(b[n:])
	putProofBuf(bp, b)
	return proof, nil
}

// proofBufs hold a proof while it is made; most are well under 1 KiB.
var proofBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// putProofBuf returns b's buffer to the pool, unless a long URL or nonce
// made it large.
func putProofBuf(bp *[]byte, b []byte) {
	if cap(b) > 16<<10 {
		return
	}
	*bp = b[:0]
	proofBufs.Put(bp)
}

// appendSignature appends the base64url JWS signature of input (RFC 7515
// §5.1's signing input) to dst.
func (k *DPoPKey) appendSignature(dst, input []byte) ([]byte, error) {
	switch k.alg {
	case jose.ES256:
		h := sha256.Sum256(input)
		var (
			der []byte
			err error
		)
		if k.ec != nil {
			der, err = k.ec.Sign(nil, h[:], crypto.SHA256) // RFC 6979: see the file comment
		} else {
			der, err = k.key.Sign(rand.Reader, h[:], crypto.SHA256)
		}
		if err != nil {
			return dst, err
		}
		var rs [64]byte
		if err := ecdsaFixed(rs[:], der); err != nil {
			return dst, err
		}
		return b64.AppendEncode(dst, rs[:]), nil
	case jose.EdDSA:
		if k.ed != nil {
			return b64.AppendEncode(dst, ed25519.Sign(k.ed, input)), nil
		}
		sig, err := k.key.Sign(rand.Reader, input, crypto.Hash(0))
		if err != nil {
			return dst, err
		}
		if len(sig) != ed25519.SignatureSize {
			return dst, fmt.Errorf("the Ed25519 signer returned %d bytes, want %d", len(sig), ed25519.SignatureSize)
		}
		return b64.AppendEncode(dst, sig), nil
	case jose.RS256:
		h := sha256.Sum256(input)
		var (
			sig []byte
			err error
		)
		if k.rsa != nil {
			sig, err = rsa.SignPKCS1v15(nil, k.rsa, crypto.SHA256, h[:])
		} else {
			sig, err = k.key.Sign(rand.Reader, h[:], crypto.SHA256)
		}
		if err != nil {
			return dst, err
		}
		if len(sig) != k.sigLen {
			return dst, fmt.Errorf("the RSA signer returned %d bytes, want %d", len(sig), k.sigLen)
		}
		return b64.AppendEncode(dst, sig), nil
	}
	return dst, fmt.Errorf("no signer for %s", k.alg)
}

// ecdsaFixed writes the DER ECDSA signature der (SEQUENCE of the INTEGERs
// r and s) into dst as JWS has it (RFC 7518 §3.4): r and s big-endian,
// each left-padded to half of dst.
func ecdsaFixed(dst, der []byte) error {
	var seq, r, s cryptobyte.String
	in := cryptobyte.String(der)
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1(&r, cbasn1.INTEGER) || !seq.ReadASN1(&s, cbasn1.INTEGER) || !seq.Empty() {
		return errors.New("the ECDSA signer's signature is not DER")
	}
	half := len(dst) / 2
	if !putUnsigned(dst[:half], r) || !putUnsigned(dst[half:], s) {
		return errors.New("the ECDSA signature's r or s is out of range")
	}
	return nil
}

// putUnsigned writes the DER INTEGER content v, positive, right-aligned
// into dst, whose bytes are zero.
func putUnsigned(dst, v []byte) bool {
	if len(v) == 0 || v[0]&0x80 != 0 {
		return false // empty or negative
	}
	for len(v) > 0 && v[0] == 0 {
		v = v[1:]
	}
	if len(v) == 0 || len(v) > len(dst) {
		return false // zero, or too large
	}
	copy(dst[len(dst)-len(v):], v)
	return true
}

// AccessTokenHash is a proof's ath for token: the base64url SHA-256 of its
// ASCII value (RFC 9449 §4.2).
func AccessTokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return b64.EncodeToString(h[:])
}

// JWKThumbprint is the RFC 7638 SHA-256 thumbprint, base64url, of a public
// key (EC, Ed25519 or RSA).
func JWKThumbprint(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return b64.EncodeToString(tp), nil
}

// NormalizeHTU is raw as a proof's htu: an absolute http or https URL
// without query and fragment, normalised as RFC 9449 §4.3 has servers
// normalise before comparing (RFC 3986 §6.2.2 syntax-based: lower-case
// scheme and host, upper-case percent-encoding hex digits, unreserved
// characters decoded, dot segments removed; §6.2.3 scheme-based: the
// default port dropped, an empty path made "/"). Userinfo is refused: a
// target URI has none (RFC 9110 §4.2.4).
func NormalizeHTU(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("DPoP htu %s is not a URL", describeURL(raw))
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("DPoP htu %s: need an absolute http or https URL", describeURL(raw))
	}
	if u.Opaque != "" || u.Host == "" {
		return "", fmt.Errorf("DPoP htu %s: need an absolute URL with a host", describeURL(raw))
	}
	if u.User != nil {
		return "", fmt.Errorf("DPoP htu for %s: a URL with userinfo is not a target URI", scheme+"://"+u.Host)
	}
	host := strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	port := u.Port()
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	if port != "" {
		b.WriteByte(':')
		b.WriteString(port)
	}
	path := removeDotSegments(normalizePercent(u.EscapedPath()))
	if path == "" {
		path = "/"
	}
	b.WriteString(path)
	return b.String(), nil
}

// normalizePercent upper-cases the hex digits of percent-encodings and
// decodes those of unreserved characters (RFC 3986 §6.2.2.1, §6.2.2.2).
func normalizePercent(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(v) {
				b.WriteByte(v)
			} else {
				b.WriteByte('%')
				b.WriteByte(upperHex(p[i+1]))
				b.WriteByte(upperHex(p[i+2]))
			}
			i += 2
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// removeDotSegments is RFC 3986 §5.2.4.
func removeDotSegments(in string) string {
	if !strings.Contains(in, ".") {
		return in
	}
	var out []string
	segs := strings.Split(in, "/")
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	r := strings.Join(out, "/")
	if strings.HasPrefix(in, "/") && !strings.HasPrefix(r, "/") {
		r = "/" + r
	}
	return r
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return isAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~'
}

// isToken reports whether s is an RFC 9110 token (a method is one).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// appendJSONString appends s as a JSON string. Each byte of invalid UTF-8
// becomes U+FFFD, as encoding/json does.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = appendJSONChars(dst, s)
	return append(dst, '"')
}

// appendJSONChars appends s as the inside of a JSON string (without the
// quotes), escaped as appendJSONString escapes it.
func appendJSONChars(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x80 {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	return append(dst, s[start:]...)
}

// describeURL is raw as an error names it: quoted, without a password
// (url.URL.Redacted), shortened; never the text of a value that does not
// parse, which could be anything.
func describeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a value that does not parse as a URL)"
	}
	return strconv.Quote(Truncate(u.Redacted(), 200))
}
