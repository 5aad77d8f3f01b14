package oauthbearer

// Client authentication without a shared secret sent on the wire: key
// material loading, the choice of a JWS algorithm, signed client assertions
// (RFC 7523 private_key_jwt, OIDC client_secret_jwt), the JWT bearer grant
// (RFC 7523 §2.1), an externally made assertion read from a file, and
// Google service account key files.
//
// Nothing here reads configuration or performs a token request: the token
// source calls these with values it resolved, and puts what they return into
// its request. Errors name the configuration field and, when the value was a
// path, the file; they never contain key material, PEM text, a secret or an
// assertion.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"net/url"
	"os"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// Wire constants of RFC 7521/7523.
const (
	// clientAssertionTypeJWT is the client_assertion_type of a JWT client
	// assertion (RFC 7523 §2.2).
	clientAssertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// grantTypeJWTBearer is the grant_type of the JWT bearer grant
	// (RFC 7523 §2.1).
	grantTypeJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"
)

// Assertion lifetimes: exp is iat plus the lifetime. Five minutes is the
// longest that providers commonly accept (and what the test server allows);
// a short lifetime limits the use of an assertion captured in transit.
const (
	defaultAssertionLifetime = 60 * time.Second
	maxAssertionLifetime     = 5 * time.Minute
)

// minRSABits is the smallest RSA key accepted; providers refuse smaller ones.
const minRSABits = 2048

// maxAssertionFileSize caps what readAssertionFile reads: a JWT is a few
// KiB at most.
const maxAssertionFileSize = 64 << 10

// pemBegin tells inline PEM from a path in a configuration value.
const pemBegin = "-----BEGIN"

// ---------------------------------------------------------------------------
// Key material

// loadPrivateKey loads the private key of the private_key field: value is
// either PEM text (it holds a "-----BEGIN" line, as a {file.…} or {env.…}
// placeholder gives it; on one line with its line breaks escaped as \n
// too) or the path of a PEM file. It accepts RSA keys
// (PKCS#1 or PKCS#8, at least 2048 bits), EC keys on P-256 or P-384 (SEC1 or
// PKCS#8) and Ed25519 keys (PKCS#8); other blocks in the file (a
// certificate, EC PARAMETERS) are skipped, and more than one key is an
// error. The key returned is an *rsa.PrivateKey, *ecdsa.PrivateKey or
// ed25519.PrivateKey.
func loadPrivateKey(value string) (crypto.Signer, error) {
	data, where, err := readPEMValue("private_key", value)
	if err != nil {
		return nil, err
	}
	return parsePrivateKeyPEM(data, "private_key", where)
}

// loadCertificates loads the certificate field: PEM text or the path of a
// PEM file, as for loadPrivateKey. It returns every CERTIFICATE block in
// order (the leaf first, as files conventionally hold them) and skips other
// blocks.
func loadCertificates(value string) ([]*x509.Certificate, error) {
	data, where, err := readPEMValue("certificate", value)
	if err != nil {
		return nil, err
	}
	return parseCertificatesPEM(data, "certificate", where)
}

// checkCertificateKey reports whether cert holds the public key of key:
// nil if it does, else an error saying the two do not match.
func checkCertificateKey(cert *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return errors.New("certificate does not match private_key")
	}
	return nil
}

// readPEMValue returns the bytes a key or certificate field names, and how
// errors should name their origin: the path, or "the inline PEM value".
func readPEMValue(field, value string) (data []byte, where string, err error) {
	if strings.TrimSpace(value) == "" {
		return nil, "", fmt.Errorf("%s: empty value; give a PEM file path or the PEM text", field)
	}
	if strings.Contains(value, pemBegin) {
		// An environment variable often holds PEM on one line with its
		// line breaks written as \n (as in a JSON string).
		if !strings.Contains(value, "\n") && strings.Contains(value, `\n`) {
			value = strings.ReplaceAll(value, `\n`, "\n")
		}
		return []byte(value), "the inline PEM value", nil
	}
	data, err = readConfigFile(field, value, 1<<20)
	if err != nil {
		return nil, "", err
	}
	return data, safePathName(value), nil
}

// readConfigFile reads the file at path for field, up to limit bytes, with
// errors that name the file (when path looks like one) and never the
// content.
func readConfigFile(field, path string, limit int64) ([]byte, error) {
	name := safePathName(path)
	f, err := os.Open(path)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if name == path {
				return nil, fmt.Errorf("%s: %s does not exist", field, name)
			}
			// Not a plausible path: most likely key material that lost its
			// PEM armour on the way (a bare base64 value, say).
			return nil, fmt.Errorf("%s: the value is neither PEM text (no %s line) nor the path of a file", field, pemBegin)
		case errors.Is(err, fs.ErrPermission):
			return nil, fmt.Errorf("%s: %s cannot be read: permission denied", field, name)
		}
		return nil, fmt.Errorf("%s: %s cannot be read: %v", field, name, pathErrCause(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %s cannot be read: %v", field, name, pathErrCause(err))
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %s is larger than %d bytes", field, name, limit)
	}
	return data, nil
}

// pathErrCause is the cause of a file error without the path (which the
// caller names itself, or deliberately does not).
func pathErrCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// safePathName is value as an error message may name it: the value itself
// when it looks like a path, else a neutral description. A value with a line
// break, a brace, or that is base64 of DER (an ASN.1 SEQUENCE) is likely
// key material or a JSON key file given where a path was expected, and is
// never echoed.
func safePathName(value string) string {
	const neutral = "the configured value"
	if len(value) > 4096 || strings.ContainsAny(value, "\r\n{}") {
		return neutral
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f {
			return neutral
		}
	}
	compact := strings.TrimRight(value, "=")
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		if der, err := enc.DecodeString(compact); err == nil && len(der) >= 32 && der[0] == 0x30 {
			return neutral
		}
	}
	return value
}

// pemBlocks yields the PEM blocks of data, in order, up to the first text
// that is not one.
func pemBlocks(data []byte) iter.Seq[*pem.Block] {
	return func(yield func(*pem.Block) bool) {
		for rest := data; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil || !yield(block) {
				return
			}
		}
	}
}

// parsePrivateKeyPEM finds and parses the one private key in PEM data; field
// and where name the origin in errors.
func parsePrivateKeyPEM(data []byte, field, where string) (crypto.Signer, error) {
	var (
		key    crypto.Signer
		blocks int
		others []string
	)
	for block := range pemBlocks(data) {
		blocks++
		switch block.Type {
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s: %s is an encrypted PEM key; decrypt it (openssl pkey -in key.pem -out plain.pem)", field, where)
		case "OPENSSH PRIVATE KEY":
			return nil, fmt.Errorf("%s: %s is an OpenSSH key; convert it to PKCS#8 PEM (ssh-keygen -p -m PKCS8 -f key)", field, where)
		case "DSA PRIVATE KEY":
			return nil, fmt.Errorf("%s: %s holds a DSA key; use an RSA, EC (P-256, P-384) or Ed25519 key", field, where)
		case "RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY":
			if strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
				return nil, fmt.Errorf("%s: %s is an encrypted PEM key; decrypt it (openssl pkey -in key.pem -out plain.pem)", field, where)
			}
			if key != nil {
				return nil, fmt.Errorf("%s: %s holds more than one private key; keep only the one to use", field, where)
			}
			k, err := parsePrivateKeyDER(block.Type, block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", field, where, err)
			}
			key = k
		default:
			others = append(others, block.Type)
		}
	}
	switch {
	case blocks == 0:
		return nil, fmt.Errorf("%s: %s holds no PEM block", field, where)
	case key == nil:
		return nil, fmt.Errorf("%s: %s holds no private key (found %s)", field, where, strings.Join(others, ", "))
	}
	return key, nil
}

// parsePrivateKeyDER parses a private key block's DER, trying the encoding
// its PEM type names first and then the others (mislabelled blocks are
// common), and checks that the key is of a supported kind and size. Errors
// describe the key, never its bytes.
func parsePrivateKeyDER(pemType string, der []byte) (crypto.Signer, error) {
	pkcs1 := func(b []byte) (any, error) { return x509.ParsePKCS1PrivateKey(b) }
	sec1 := func(b []byte) (any, error) { return x509.ParseECPrivateKey(b) }
	pkcs8 := x509.ParsePKCS8PrivateKey
	order := []func([]byte) (any, error){pkcs8, pkcs1, sec1}
	switch pemType {
	case "RSA PRIVATE KEY":
		order = []func([]byte) (any, error){pkcs1, pkcs8, sec1}
	case "EC PRIVATE KEY":
		order = []func([]byte) (any, error){sec1, pkcs8, pkcs1}
	}
	var parsed any
	for _, parse := range order {
		if k, err := parse(der); err == nil {
			parsed = k
			break
		}
	}
	switch k := parsed.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits is too small; use %d bits or more", bits, minRSABits)
		}
		return k, nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return k, nil
		}
		return nil, fmt.Errorf("unsupported EC curve %s; use P-256 or P-384", k.Curve.Params().Name)
	case ed25519.PrivateKey:
		return k, nil
	case nil:
		return nil, fmt.Errorf("the %s block is not a valid private key (PKCS#1, SEC1 or PKCS#8) or its curve is not supported", pemType)
	default:
		return nil, fmt.Errorf("unsupported key type %T; use an RSA, EC (P-256, P-384) or Ed25519 key", parsed)
	}
}

// parseCertificatesPEM parses every CERTIFICATE block in PEM data; field and
// where name the origin in errors.
func parseCertificatesPEM(data []byte, field, where string) ([]*x509.Certificate, error) {
	var (
		certs  []*x509.Certificate
		blocks int
	)
	for block := range pemBlocks(data) {
		blocks++
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: certificate %d is not a valid X.509 certificate", field, where, len(certs)+1)
		}
		certs = append(certs, c)
	}
	switch {
	case blocks == 0:
		return nil, fmt.Errorf("%s: %s holds no PEM block", field, where)
	case len(certs) == 0:
		return nil, fmt.Errorf("%s: %s holds no CERTIFICATE block", field, where)
	}
	return certs, nil
}

// ---------------------------------------------------------------------------
// Algorithms

// rsaAlgs are the JWS algorithms an RSA key signs with.
var rsaAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}

// signingAlg returns the JWS algorithm for key: configured (matched without
// regard to case) if given, else the key's default: RS256 for RSA, ES256 for
// P-256, ES384 for P-384, EdDSA for Ed25519. A configured algorithm that
// does not fit the key's type or curve is an error that names the ones that
// do.
func signingAlg(key crypto.Signer, configured string) (jose.SignatureAlgorithm, error) {
	var fits []jose.SignatureAlgorithm
	var kind string
	switch k := key.Public().(type) {
	case *rsa.PublicKey:
		fits, kind = rsaAlgs, "an RSA key"
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			fits, kind = []jose.SignatureAlgorithm{jose.ES256}, "a P-256 key"
		case elliptic.P384():
			fits, kind = []jose.SignatureAlgorithm{jose.ES384}, "a P-384 key"
		default:
			return "", fmt.Errorf("unsupported EC curve %s; use P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		fits, kind = []jose.SignatureAlgorithm{jose.EdDSA}, "an Ed25519 key"
	default:
		return "", fmt.Errorf("unsupported key type %T; use an RSA, EC (P-256, P-384) or Ed25519 key", k)
	}
	if configured == "" {
		return fits[0], nil
	}
	for _, a := range fits {
		if strings.EqualFold(configured, string(a)) {
			return a, nil
		}
	}
	names := make([]string, len(fits))
	for i, a := range fits {
		names[i] = string(a)
	}
	switch strings.ToUpper(configured) {
	case "HS256", "HS384", "HS512":
		return "", fmt.Errorf("alg %s signs with client_secret (client_secret_jwt), not a private key; for %s use %s", configured, kind, strings.Join(names, ", "))
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EDDSA":
		return "", fmt.Errorf("alg %s does not fit %s; use %s", configured, kind, strings.Join(names, ", "))
	}
	return "", fmt.Errorf("unsupported alg %q; for %s use %s", configured, kind, strings.Join(names, ", "))
}

// ---------------------------------------------------------------------------
// Signed assertions

// assertionSigner mints signed JWTs for client authentication
// (private_key_jwt, client_secret_jwt) and for the JWT bearer grant. It is
// made once from the key and is safe for concurrent use; each sign call
// makes a fresh assertion with a new jti.
type assertionSigner struct {
	signer jose.Signer
	alg    jose.SignatureAlgorithm
	// field is the subdirective whose key signs (private_key,
	// service_account_file, client_secret): a signing failure names it.
	field string
}

// assertionClaims are the claims of one assertion.
type assertionClaims struct {
	issuer   string // iss; the client id for client authentication
	subject  string // sub; the client id for client authentication; "" omits it
	audience string // aud; the token endpoint URL or a configured audience
	// lifetime is exp − iat, whole seconds: 0 means
	// defaultAssertionLifetime, and more than maxAssertionLifetime is an
	// error.
	lifetime time.Duration
	// notBefore also sets nbf to iat.
	notBefore bool
	// extra are further claims, e.g. "scope" for Google's JWT bearer grant.
	// They may not set a claim the signer sets (iss, sub, aud, exp, nbf,
	// iat, jti).
	extra map[string]any
}

// newAssertionSigner makes a signer from a private key. alg "" picks the
// key's default (see signingAlg); a given alg must fit the key. kid, when
// not "", is the kid header. cert, when not nil, must hold key's public key;
// its thumbprints are sent as the x5t (SHA-1) and x5t#S256 (SHA-256)
// headers, which Entra ID uses to find the key. Every assertion has the typ
// header "JWT".
func newAssertionSigner(key crypto.Signer, alg jose.SignatureAlgorithm, kid string, cert *x509.Certificate) (*assertionSigner, error) {
	alg, err := signingAlg(key, string(alg))
	if err != nil {
		return nil, err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	if cert != nil {
		if err := checkCertificateKey(cert, key); err != nil {
			return nil, err
		}
		s1 := sha1.Sum(cert.Raw)
		opts = opts.WithHeader("x5t", base64.RawURLEncoding.EncodeToString(s1[:])).
			WithHeader("x5t#S256", certThumbprint(cert))
	}
	// go-jose signs with the concrete key types directly; any other signer
	// (a KMS or HSM key, later) goes through its opaque-signer adapter.
	var signingKey any = key
	switch key.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
	default:
		signingKey = cryptosigner.Opaque(key)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: signingKey}, opts)
	if err != nil {
		return nil, fmt.Errorf("private_key: cannot sign with %s: %v", alg, err)
	}
	return &assertionSigner{signer: s, alg: alg}, nil
}

// newSecretAssertionSigner makes the client_secret_jwt signer: HMAC keyed
// with the client secret's bytes. alg "" means HS256; HS384 and HS512 are
// accepted too. The secret must be at least as long as the hash (32 bytes
// for HS256, 48 for HS384, 64 for HS512: RFC 7518 §3.2, which go-jose
// enforces when signing; checked here so that it is a configuration error).
func newSecretAssertionSigner(secret []byte, alg jose.SignatureAlgorithm) (*assertionSigner, error) {
	if len(secret) == 0 {
		return nil, errors.New("client_secret_jwt needs a client_secret")
	}
	var minLen int
	switch strings.ToUpper(string(alg)) {
	case "", "HS256":
		alg, minLen = jose.HS256, 32
	case "HS384":
		alg, minLen = jose.HS384, 48
	case "HS512":
		alg, minLen = jose.HS512, 64
	default:
		return nil, fmt.Errorf("alg %s does not fit client_secret_jwt; use HS256, HS384 or HS512", alg)
	}
	if len(secret) < minLen {
		return nil, fmt.Errorf("client_secret_jwt with %s needs a client_secret of at least %d bytes (RFC 7518 §3.2); this one is shorter", alg, minLen)
	}
	key := bytes.Clone(secret)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("client_secret_jwt: cannot sign with %s: %v", alg, err)
	}
	return &assertionSigner{signer: s, alg: alg}, nil
}

// registeredClaims are the claims sign sets itself.
var registeredClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}

// sign mints one assertion at time now: iss, sub (unless ""), aud, iat =
// now, exp = iat + lifetime, nbf = iat if asked for, a fresh random jti of
// 128 bits or more, and the extra claims. The result is the compact JWS.
func (s *assertionSigner) sign(now time.Time, c assertionClaims) (string, error) {
	lifetime := c.lifetime
	if lifetime == 0 {
		lifetime = defaultAssertionLifetime
	}
	switch {
	case lifetime < time.Second || lifetime > maxAssertionLifetime:
		return "", fmt.Errorf("assertion lifetime %v is out of range; use 1s to %v", c.lifetime, maxAssertionLifetime)
	case c.issuer == "":
		return "", errors.New("assertion needs an issuer (iss)")
	case c.audience == "":
		return "", errors.New("assertion needs an audience (aud)")
	}
	for _, name := range registeredClaims {
		if _, ok := c.extra[name]; ok {
			return "", fmt.Errorf("assertion claim %s is set by the signer, not as an extra claim", name)
		}
	}
	iat := now.Unix()
	claims := jwt.Claims{
		Issuer:   c.issuer,
		Subject:  c.subject,
		Audience: jwt.Audience{c.audience},
		IssuedAt: jwt.NewNumericDate(time.Unix(iat, 0)),
		Expiry:   jwt.NewNumericDate(time.Unix(iat+int64(lifetime/time.Second), 0)),
		// rand.Text: 26 base32 characters, 130 random bits.
		ID: rand.Text(),
	}
	if c.notBefore {
		claims.NotBefore = claims.IssuedAt
	}
	b := jwt.Signed(s.signer).Claims(claims)
	if len(c.extra) > 0 {
		b = b.Claims(c.extra)
	}
	out, err := b.Serialize()
	if err != nil {
		return "", fmt.Errorf("signing the assertion (%s): %v", s.alg, err)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Form parameters

// setClientAssertion puts a JWT client assertion into a token request's
// form (RFC 7523 §2.2): client_assertion_type and client_assertion. The
// caller decides whether to send client_id too (optional per RFC 7521 §4.2,
// required by some providers) and sends no client_secret.
func setClientAssertion(form url.Values, assertion string) {
	form.Set("client_assertion_type", clientAssertionTypeJWT)
	form.Set("client_assertion", assertion)
}

// setJWTBearerGrant makes a token request's form the JWT bearer grant
// (RFC 7523 §2.1): grant_type and assertion.
func setJWTBearerGrant(form url.Values, assertion string) {
	form.Set("grant_type", grantTypeJWTBearer)
	form.Set("assertion", assertion)
}

// ---------------------------------------------------------------------------
// Assertion from a file

// readAssertionFile reads the client assertion that another program keeps
// in the file at path (client_assertion_file; e.g. a Kubernetes projected
// service account token, which the kubelet rotates in place). Call it for
// every token request: it never caches. Surrounding whitespace is trimmed.
// A missing or empty file, or one that does not hold a compact JWT (three
// or five dot-separated base64url parts), is an error that names the path,
// never the content.
func readAssertionFile(path string) (string, error) {
	const field = "client_assertion_file"
	data, err := readConfigFile(field, path, maxAssertionFileSize)
	if err != nil {
		return "", err
	}
	name := safePathName(path)
	a := strings.TrimSpace(string(data))
	if a == "" {
		return "", fmt.Errorf("%s: %s is empty", field, name)
	}
	if !compactJWTShape(a) {
		return "", fmt.Errorf("%s: %s does not hold a JWT (want three dot-separated base64url parts)", field, name)
	}
	return a, nil
}

// compactJWTShape reports whether s looks like a compact JWS (3 parts) or
// JWE (5 parts): dot-separated base64url, the first part non-empty.
func compactJWTShape(s string) bool {
	parts := strings.Split(s, ".")
	if (len(parts) != 3 && len(parts) != 5) || parts[0] == "" {
		return false
	}
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Google service account key files

// googleServiceAccount is what signing a JWT bearer grant for a Google
// service account needs, from its JSON key file.
type googleServiceAccount struct {
	clientEmail string        // iss (and the subject of the grant)
	keyID       string        // private_key_id: the kid header; may be ""
	tokenURI    string        // aud, and where to send the grant
	key         crypto.Signer // private_key
}

// loadGoogleServiceAccount loads a Google service account key file given as
// its path or as the JSON itself (a value starting with "{", as an {env.…}
// placeholder gives it).
func loadGoogleServiceAccount(value string) (*googleServiceAccount, error) {
	const field = "service_account"
	if strings.HasPrefix(strings.TrimSpace(value), "{") {
		return parseGoogleServiceAccount([]byte(value), "the inline JSON value")
	}
	if strings.TrimSpace(value) == "" {
		return nil, fmt.Errorf("%s: empty value; give the key file's path or its JSON", field)
	}
	data, err := readConfigFile(field, value, 1<<20)
	if err != nil {
		return nil, err
	}
	return parseGoogleServiceAccount(data, safePathName(value))
}

// parseGoogleServiceAccount parses a service account key file's JSON; where
// names its origin in errors. type must be "service_account", and
// client_email, private_key and token_uri must be present; private_key_id
// is optional (Google finds the key without a kid, more slowly).
func parseGoogleServiceAccount(data []byte, where string) (*googleServiceAccount, error) {
	const field = "service_account"
	var f struct {
		Type         string `json:"type"`
		ClientEmail  string `json:"client_email"`
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		// json's messages can quote a character of the input: not repeated.
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return nil, fmt.Errorf("%s: %s is not valid JSON (syntax error at byte %d)", field, where, se.Offset)
		case errors.As(err, &te):
			return nil, fmt.Errorf("%s: %s: field %s is not a %s", field, where, te.Field, te.Type)
		}
		return nil, fmt.Errorf("%s: %s is not a JSON object", field, where)
	}
	switch {
	case f.Type != "service_account":
		if f.Type == "" {
			return nil, fmt.Errorf("%s: %s has no type; want a service account key file (type service_account)", field, where)
		}
		t := f.Type
		if len(t) > 40 {
			t = t[:40] + "…"
		}
		return nil, fmt.Errorf("%s: %s is of type %q; want a service account key file (type service_account)", field, where, t)
	case f.ClientEmail == "":
		return nil, fmt.Errorf("%s: %s has no client_email", field, where)
	case f.PrivateKey == "":
		return nil, fmt.Errorf("%s: %s has no private_key", field, where)
	case f.TokenURI == "":
		return nil, fmt.Errorf("%s: %s has no token_uri", field, where)
	}
	if err := checkFetchedURL(field+": "+where+": token_uri", f.TokenURI); err != nil {
		return nil, err
	}
	key, err := parsePrivateKeyPEM([]byte(f.PrivateKey), field, where+" (its private_key)")
	if err != nil {
		return nil, err
	}
	return &googleServiceAccount{clientEmail: f.ClientEmail, keyID: f.PrivateKeyID, tokenURI: f.TokenURI, key: key}, nil
}

// signer makes the assertion signer of the service account: its key, its
// default algorithm (RS256 for Google's RSA keys), kid = private_key_id.
func (sa *googleServiceAccount) signer() (*assertionSigner, error) {
	return newAssertionSigner(sa.key, "", sa.keyID, nil)
}

// ---------------------------------------------------------------------------
// Endpoint URLs

// checkFetchedURL checks an endpoint URL read from a file or a document
// (not from the configuration): an absolute URL that credentials may be
// sent to (oauthclient.SecureEndpoint); name says which endpoint in errors.
func checkFetchedURL(name, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%s %q is not an absolute URL", name, raw)
	}
	if !oauthclient.SecureEndpoint(u) {
		return fmt.Errorf("%s %s must be https (http only on a loopback host)", name, raw)
	}
	return nil
}

// ---------------------------------------------------------------------------
// The configuration of client authentication, and its use on the wire

// clientAuthMethod is the method a configuration uses: client_auth, else
// what its credentials imply (with grant jwt_bearer the assertion is the
// authentication: none; a client assertion file or a private key:
// private_key_jwt; a client certificate: tls), else the preset's.
func (c *Credentials) clientAuthMethod(p providers.Provider, grant string) string {
	switch {
	case c.ClientAuth != "":
		return c.ClientAuth
	case grant == grantJWTBearer:
		return providers.AuthNone
	case c.ClientAssertionFile != "" || c.PrivateKey != "":
		return providers.AuthPrivateKeyJWT
	case c.TLSClientCert != "":
		return providers.AuthTLS
	}
	return p.ClientAuth
}

// checkClientAuth applies the rules of client authentication that hold
// before placeholders are resolved.
func (c *Credentials) checkClientAuth(p providers.Provider, grant string) error {
	method := c.clientAuthMethod(p, grant)
	if c.ClientAssertionFile != "" && method != providers.AuthPrivateKeyJWT && grant != grantJWTBearer {
		return errField("client_assertion_file", "is client_auth private_key_jwt: it cannot be combined with client_auth %s", method)
	}
	if c.ClientAssertionFile != "" && c.PrivateKey != "" {
		return errField("client_assertion_file", "an assertion is either read from a file or signed with private_key, not both")
	}
	if grant == grantJWTBearer {
		if c.ServiceAccountFile == "" && c.PrivateKey == "" && c.ClientAssertionFile == "" {
			return errField("private_key", "grant jwt_bearer needs an assertion: give private_key, service_account_file or client_assertion_file")
		}
		if c.ServiceAccountFile != "" && c.PrivateKey != "" {
			return errField("service_account_file", "holds the private key already; leave out private_key")
		}
	}
	if c.ClientID == "" && c.ServiceAccountFile == "" {
		return errField("client_id", "is required")
	}
	needsSecret := method == providers.AuthBody || method == providers.AuthBasic || method == providers.AuthClientSecretJWT
	switch {
	case needsSecret && c.ClientSecret == "":
		return errField("client_secret", "is required (client_auth %s)", method)
	case !needsSecret && c.ClientSecret != "":
		return errField("client_secret", "is not used with client_auth %s; leave it out", method)
	}
	switch method {
	case providers.AuthPrivateKeyJWT:
		if c.PrivateKey == "" && c.ClientAssertionFile == "" {
			return errField("client_auth", "private_key_jwt needs private_key (or client_assertion_file)")
		}
		if grant == grantJWTBearer && c.ClientAssertionFile == "" && c.ServiceAccountFile != "" {
			return errField("client_auth", "private_key_jwt with grant jwt_bearer signs the client's assertion with private_key; the service account's key signs the grant")
		}
	case providers.AuthTLS:
		if c.TLSClientCert == "" || c.TLSClientKey == "" {
			return errField("client_auth", "tls needs tls_client_cert <certificate> <key>")
		}
	}
	if c.TLSClientCert != "" && method != providers.AuthTLS {
		return errField("tls_client_cert", "only with client_auth tls")
	}
	signs := c.PrivateKey != "" || c.ServiceAccountFile != "" || method == providers.AuthClientSecretJWT
	for _, f := range []struct{ field, value string }{{"certificate", c.Certificate}, {"key_id", c.KeyID}, {"signing_alg", c.SigningAlg}} {
		if f.value != "" && c.PrivateKey == "" && !(f.field == "signing_alg" && signs) {
			return errField(f.field, "only with private_key (signing_alg: or client_auth client_secret_jwt)")
		}
	}
	if c.AssertionAudience != "" && method != providers.AuthPrivateKeyJWT && method != providers.AuthClientSecretJWT && grant != grantJWTBearer {
		return errField("assertion_audience", "only with client_auth private_key_jwt or client_secret_jwt, or grant jwt_bearer")
	}
	return nil
}

// resolveClientAuth resolves the client's identity and credentials into
// cs: the id and secret, and the signer, the assertion file or the client
// certificate, reading local files now so that a key that does not parse,
// an algorithm that does not fit it, a certificate that does not match it
// or an assertion file that cannot be read stop the configuration from
// loading.
func (c *Credentials) resolveClientAuth(repl *caddy.Replacer, cs *credentialSet) error {
	var err error
	if c.ClientID != "" {
		if cs.ClientID, err = resolveRequired(repl, "client_id", c.ClientID); err != nil {
			return err
		}
	}
	if c.ClientSecret != "" {
		if cs.clientSecret, err = resolveRequired(repl, "client_secret", c.ClientSecret); err != nil {
			return err
		}
	}
	cs.AssertionAudience = repl.ReplaceKnown(c.AssertionAudience, "")
	digest := sha256.New()
	switch {
	case c.ServiceAccountFile != "":
		sa, err := loadGoogleServiceAccount(repl.ReplaceKnown(c.ServiceAccountFile, ""))
		if err != nil {
			return fieldErr("service_account_file", err)
		}
		if cs.signer, err = sa.signer(); err != nil {
			return fieldErr("service_account_file", err)
		}
		if err := cs.addKeyMaterial("service_account_file", sa.key); err != nil {
			return fieldErr("service_account_file", err)
		}
		cs.signer.field = "service_account_file"
		// No sub unless subject is set: Google documents sub only for
		// domain-wide delegation, and its client libraries send none.
		cs.assertionIssuer, cs.scopeInAssertion = sa.clientEmail, true
		cs.ClientID = firstNonEmpty(cs.ClientID, sa.clientEmail)
		if cs.TokenURL == "" && cs.Issuer == "" {
			cs.TokenURL = sa.tokenURI
		}
		cs.AssertionAudience = firstNonEmpty(cs.AssertionAudience, sa.tokenURI)
		digest.Write([]byte(sa.clientEmail + "\x00" + sa.keyID))
	case c.PrivateKey != "":
		key, err := loadPrivateKey(repl.ReplaceKnown(c.PrivateKey, ""))
		if err != nil {
			return fieldErr("private_key", err)
		}
		var cert *x509.Certificate
		if c.Certificate != "" {
			certs, err := loadCertificates(repl.ReplaceKnown(c.Certificate, ""))
			if err != nil {
				return fieldErr("certificate", err)
			}
			cert = certs[0]
			if err := checkCertificateKey(cert, key); err != nil {
				return errField("certificate", "%v", err)
			}
		}
		alg, err := signingAlg(key, c.SigningAlg)
		if err != nil {
			return errField("signing_alg", "%v", err)
		}
		if cs.signer, err = newAssertionSigner(key, alg, repl.ReplaceKnown(c.KeyID, ""), cert); err != nil {
			return errField("private_key", "%v", err)
		}
		if err := cs.addKeyMaterial("private_key", key); err != nil {
			return fieldErr("private_key", err)
		}
		cs.signer.field = "private_key"
		// The JWT bearer grant's sub when subject is not set: the client
		// acting for itself (RFC 7523 §3 requires a sub; §2.2 names the
		// client id as the client's own).
		cs.assertionIssuer, cs.assertionSubject = cs.ClientID, cs.ClientID
		pub, _ := x509.MarshalPKIXPublicKey(key.Public())
		digest.Write(pub)
		digest.Write([]byte(c.KeyID + "\x00" + string(alg)))
		if cert != nil {
			// Its thumbprints are sent: a certificate renewed for the
			// same key is another credential.
			digest.Write([]byte("\x00certificate\x00"))
			digest.Write(cert.Raw)
		}
	case cs.ClientAuth == providers.AuthClientSecretJWT:
		alg := firstNonEmpty(c.SigningAlg, string(jose.HS256))
		if cs.signer, err = newSecretAssertionSigner([]byte(cs.clientSecret), jose.SignatureAlgorithm(alg)); err != nil {
			return errField("client_secret", "%v", err)
		}
		cs.signer.field = "client_secret"
		digest.Write([]byte("client_secret_jwt\x00" + alg)) // the secret is hashed into the key apart
	}
	if c.ClientAssertionFile != "" {
		cs.AssertionFile = repl.ReplaceKnown(c.ClientAssertionFile, "")
		if _, err := readAssertionFile(cs.AssertionFile); err != nil {
			return fieldErr("client_assertion_file", err)
		}
	}
	if c.TLSClientCert != "" {
		certFile, keyFile := repl.ReplaceKnown(c.TLSClientCert, ""), repl.ReplaceKnown(c.TLSClientKey, "")
		if cs.tlsCert, err = newClientCert(certFile, keyFile); err != nil {
			return fieldErr("tls_client_cert", err)
		}
		// The key loaded now: a key rotated later (cert-manager) is used
		// for handshakes, but records stay sealed with this one until the
		// next configuration load.
		if pair, _ := cs.tlsCert.current(); pair != nil {
			if err := cs.addKeyMaterial("tls_client_key", pair.PrivateKey); err != nil {
				return fieldErr("tls_client_cert", err)
			}
		}
		digest.Write([]byte(certFile + "\x00" + keyFile))
	}
	cs.keyDigest = digest.Sum(nil)
	return nil
}

// authenticate adds the client's credentials to a request to target:
// params for the body, or an Authorization header (Basic). A bearer
// credential (Cal.com's refresh) goes in the header instead, the client
// then authenticating in the body.
func (cs *credentialSet) authenticate(params url.Values, target string, bearer bool) (header string, err error) {
	if cs.ClientID != "" {
		params.Set("client_id", cs.ClientID)
	}
	switch cs.ClientAuth {
	case providers.AuthBasic:
		if bearer {
			params.Set("client_secret", cs.clientSecret)
			return "", nil
		}
		params.Del("client_id")
		// RFC 6749 2.3.1: form-encode id and secret before Basic encoding.
		cred := url.QueryEscape(cs.ClientID) + ":" + url.QueryEscape(cs.clientSecret)
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(cred)), nil
	case providers.AuthBody:
		params.Set("client_secret", cs.clientSecret)
	case providers.AuthClientSecretJWT, providers.AuthPrivateKeyJWT:
		assertion, err := cs.clientAssertion(target)
		if err != nil {
			return "", err
		}
		setClientAssertion(params, assertion)
	}
	// tls: the certificate is the credential; none: nothing more.
	return "", nil
}

// clientAssertion is a fresh client assertion for a request to target, or
// the one the assertion file holds now. An error is a *fieldFailure.
func (cs *credentialSet) clientAssertion(target string) (string, error) {
	if cs.AssertionFile != "" {
		return cs.assertionFromFile()
	}
	return cs.signAssertion(assertionClaims{issuer: cs.ClientID, subject: cs.ClientID,
		audience: firstNonEmpty(cs.AssertionAudience, target)})
}

// bearerAssertion is the assertion of the JWT bearer grant (RFC 7523 2.1)
// for a request to target: iss the client (or the service account), sub
// the subject, else the client id when signed with private_key (none for
// a Google service account), the scope as a claim. An error is a
// *fieldFailure.
func (cs *credentialSet) bearerAssertion(target string) (string, error) {
	if cs.AssertionFile != "" {
		return cs.assertionFromFile()
	}
	c := assertionClaims{issuer: cs.assertionIssuer, subject: firstNonEmpty(cs.Subject, cs.assertionSubject),
		audience: firstNonEmpty(cs.AssertionAudience, target)}
	if cs.Scope != "" {
		// Google wants the scope as a claim; RFC 7523 servers take the
		// parameter (grantParams), and claims they do not know are ignored.
		c.extra = map[string]any{"scope": cs.Scope}
	}
	return cs.signAssertion(c)
}

// assertionFromFile reads the assertion file for a token request.
func (cs *credentialSet) assertionFromFile() (string, error) {
	a, err := readAssertionFile(cs.AssertionFile)
	if err != nil {
		return "", &fieldFailure{field: "client_assertion_file", err: err}
	}
	return a, nil
}

// signAssertion signs an assertion for a token request.
func (cs *credentialSet) signAssertion(c assertionClaims) (string, error) {
	a, err := cs.signer.sign(time.Now(), c)
	if err != nil {
		return "", &fieldFailure{field: firstNonEmpty(cs.signer.field, "private_key"), err: err}
	}
	return a, nil
}

// fieldFailure is a failure, met while a token request is built, of what a
// subdirective gives: nothing is sent, and the token error
// (local_config_error) names the subdirective. Its message never holds
// key material or an assertion (the loaders and the signer see to that).
type fieldFailure struct {
	field string
	err   error
}

func (f *fieldFailure) Error() string {
	return f.field + ": " + strings.TrimPrefix(f.err.Error(), f.field+": ")
}

func (f *fieldFailure) Unwrap() error { return f.err }

// fieldErr is a configuration error of field from an error that may name
// the field already (the loaders above do), without saying it twice.
func fieldErr(field string, err error) error {
	msg := err.Error()
	for _, prefix := range []string{field + ": ", "service_account: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	return errField(field, "%s", msg)
}
