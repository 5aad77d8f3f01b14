package oauthclient

// Client authentication (RFC 6749 §2.3): the client's credentials as a
// token request carries them (Client.authenticate), and what authenticating
// without a shared secret on the wire needs: the choice of a JWS algorithm,
// signed client assertions (RFC 7523 private_key_jwt, OIDC
// client_secret_jwt), the JWT bearer grant (RFC 7523 §2.1), an externally
// made assertion read from a file, and Google service account key files.
// The keys come from keys.go; the client certificate of tls from mtls.go.
//
// Nothing here reads configuration: the caller resolves it and gives the
// values. Errors name the configuration field and, when the value was a
// path, the file; they never contain key material, PEM text, a secret or an
// assertion.

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// Assertion lifetimes: exp is iat plus the lifetime. Five minutes is the
// longest that providers commonly accept (and what the test server allows);
// a short lifetime limits the use of an assertion captured in transit.
const (
	defaultAssertionLifetime = 60 * time.Second
	maxAssertionLifetime     = 5 * time.Minute
)

// maxAssertionFileSize caps what ReadAssertionFile reads: a JWT is a few
// KiB at most.
const maxAssertionFileSize = 64 << 10

// Wire constants of RFC 7521/7523.
const (
	// clientAssertionTypeJWT is the client_assertion_type of a JWT client
	// assertion (RFC 7523 §2.2).
	clientAssertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// grantTypeJWTBearer is the grant_type of the JWT bearer grant
	// (RFC 7523 §2.1).
	grantTypeJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"
)

// ---------------------------------------------------------------------------
// The client and its credentials on the wire

// Client is the OAuth client as a token endpoint knows it: its id and how
// it authenticates. It holds the secret: it is never logged.
type Client struct {
	// ID is the client_id; "" sends none.
	ID string
	// Auth is the method: providers.AuthBasic (client_secret_basic),
	// AuthBody (client_secret_post), AuthClientSecretJWT,
	// AuthPrivateKeyJWT, AuthTLS (RFC 8705) or AuthNone (a public client).
	Auth string
	// Secret is the client secret of basic, body and client_secret_jwt.
	Secret string
	// Signer signs the assertions of private_key_jwt and
	// client_secret_jwt, and of the JWT bearer grant.
	Signer *AssertionSigner
	// AssertionFile, when set, holds an assertion made elsewhere, read
	// again for every request, instead of one that Signer signs.
	AssertionFile string
	// AssertionAudience is the aud of the assertions; "" means the URL of
	// the endpoint they are sent to.
	AssertionAudience string
	// Certificate is the client certificate of tls.
	Certificate *ClientCert
}

// authenticate adds the client's credentials to a request to target:
// params for the body, or an Authorization header (Basic). A bearer
// credential (Cal.com's refresh) goes in the header instead, the client
// then authenticating in the body.
func (c *Client) authenticate(params url.Values, target string, bearer bool) (header string, err error) {
	if c.ID != "" {
		params.Set("client_id", c.ID)
	}
	switch c.Auth {
	case providers.AuthBasic:
		if bearer {
			params.Set("client_secret", c.Secret)
			return "", nil
		}
		params.Del("client_id")
		// RFC 6749 2.3.1: form-encode id and secret before Basic encoding.
		cred := url.QueryEscape(c.ID) + ":" + url.QueryEscape(c.Secret)
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(cred)), nil
	case providers.AuthBody:
		params.Set("client_secret", c.Secret)
	case providers.AuthClientSecretJWT, providers.AuthPrivateKeyJWT:
		assertion, err := c.clientAssertion(target)
		if err != nil {
			return "", err
		}
		setClientAssertion(params, assertion)
	}
	// tls: the certificate is the credential; none: nothing more.
	return "", nil
}

// clientAssertion is a fresh client assertion for a request to target, or
// the one the assertion file holds now. An error is a *fieldError.
func (c *Client) clientAssertion(target string) (string, error) {
	if c.AssertionFile != "" {
		return c.assertionFromFile()
	}
	return c.signAssertion(AssertionClaims{Issuer: c.ID, Subject: c.ID,
		Audience: cmp.Or(c.AssertionAudience, target)})
}

// bearerAssertion is the assertion of the JWT bearer grant (RFC 7523 2.1)
// for a request to target: iss the client (or the service account), sub
// the subject, else the client id when signed with private_key (none for
// a Google service account), the scope as a claim. An error is a
// *fieldError.
func (cfg *Config) bearerAssertion(target string) (string, error) {
	if cfg.Client.AssertionFile != "" {
		return cfg.Client.assertionFromFile()
	}
	c := AssertionClaims{Issuer: cfg.AssertionIssuer, Subject: cfg.AssertionSubject,
		Audience: cmp.Or(cfg.Client.AssertionAudience, target)}
	if cfg.Scope != "" {
		// Google wants the scope as a claim; RFC 7523 servers take the
		// parameter (grantParams), and claims they do not know are ignored.
		c.Extra = map[string]any{"scope": cfg.Scope}
	}
	return cfg.Client.signAssertion(c)
}

// assertionFromFile reads the assertion file for a token request.
func (c *Client) assertionFromFile() (string, error) {
	a, err := ReadAssertionFile(c.AssertionFile)
	if err != nil {
		return "", &fieldError{field: "client_assertion_file", err: err}
	}
	return a, nil
}

// signAssertion signs an assertion for a token request.
func (c *Client) signAssertion(claims AssertionClaims) (string, error) {
	a, err := c.Signer.Sign(time.Now(), claims)
	if err != nil {
		return "", &fieldError{field: cmp.Or(c.Signer.Field, "private_key"), err: err}
	}
	return a, nil
}

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

// fieldError is a failure, met while a token request is built, of what a
// configuration field gives: nothing is sent, and the token error
// (CodeLocalConfigError) names the field. Its message never holds key
// material or an assertion (the loaders and the signer see to that).
type fieldError struct {
	field string
	err   error
}

func (f *fieldError) Error() string {
	return f.field + ": " + strings.TrimPrefix(f.err.Error(), f.field+": ")
}

func (f *fieldError) Unwrap() error { return f.err }

// ---------------------------------------------------------------------------
// Algorithms

// rsaAlgs are the JWS algorithms an RSA key signs with.
var rsaAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}

// SigningAlg returns the JWS algorithm for key: configured (matched without
// regard to case) if given, else the key's default: RS256 for RSA, ES256 for
// P-256, ES384 for P-384, EdDSA for Ed25519. A configured algorithm that
// does not fit the key's type or curve is an error that names the ones that
// do.
func SigningAlg(key crypto.Signer, configured string) (jose.SignatureAlgorithm, error) {
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

// AssertionSigner mints signed JWTs for client authentication
// (private_key_jwt, client_secret_jwt) and for the JWT bearer grant. It is
// made once from the key and is safe for concurrent use; each sign call
// makes a fresh assertion with a new jti.
type AssertionSigner struct {
	signer jose.Signer
	alg    jose.SignatureAlgorithm
	// Field is the subdirective whose key signs (private_key,
	// service_account_file, client_secret): a signing failure names it.
	Field string
}

// AssertionClaims are the claims of one assertion.
type AssertionClaims struct {
	Issuer   string // iss; the client id for client authentication
	Subject  string // sub; the client id for client authentication; "" omits it
	Audience string // aud; the token endpoint URL or a configured audience
	// Lifetime is exp − iat, whole seconds: 0 means
	// defaultAssertionLifetime, and more than maxAssertionLifetime is an
	// error.
	Lifetime time.Duration
	// NotBefore also sets nbf to iat.
	NotBefore bool
	// Extra are further claims, e.g. "scope" for Google's JWT bearer grant.
	// They may not set a claim the signer sets (iss, sub, aud, exp, nbf,
	// iat, jti).
	Extra map[string]any
}

// NewAssertionSigner makes a signer from a private key. alg "" picks the
// key's default (see SigningAlg); a given alg must fit the key. kid, when
// not "", is the kid header. cert, when not nil, must hold key's public key;
// its thumbprints are sent as the x5t (SHA-1) and x5t#S256 (SHA-256)
// headers, which Entra ID uses to find the key. Every assertion has the typ
// header "JWT".
func NewAssertionSigner(key crypto.Signer, alg jose.SignatureAlgorithm, kid string, cert *x509.Certificate) (*AssertionSigner, error) {
	alg, err := SigningAlg(key, string(alg))
	if err != nil {
		return nil, err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	if cert != nil {
		if err := CheckCertificateKey(cert, key); err != nil {
			return nil, err
		}
		s1 := sha1.Sum(cert.Raw)
		opts = opts.WithHeader("x5t", base64.RawURLEncoding.EncodeToString(s1[:])).
			WithHeader("x5t#S256", CertThumbprint(cert))
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
	return &AssertionSigner{signer: s, alg: alg}, nil
}

// NewSecretAssertionSigner makes the client_secret_jwt signer: HMAC keyed
// with the client secret's bytes. alg "" means HS256; HS384 and HS512 are
// accepted too. The secret must be at least as long as the hash (32 bytes
// for HS256, 48 for HS384, 64 for HS512: RFC 7518 §3.2, which go-jose
// enforces when signing; checked here so that it is a configuration error).
func NewSecretAssertionSigner(secret []byte, alg jose.SignatureAlgorithm) (*AssertionSigner, error) {
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
	return &AssertionSigner{signer: s, alg: alg}, nil
}

// Alg is the JWS algorithm the signer signs with.
func (s *AssertionSigner) Alg() jose.SignatureAlgorithm { return s.alg }

// registeredClaims are the claims Sign sets itself.
var registeredClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}

// Sign mints one assertion at time now: iss, sub (unless ""), aud, iat =
// now, exp = iat + lifetime, nbf = iat if asked for, a fresh random jti of
// 128 bits or more, and the extra claims. The result is the compact JWS.
func (s *AssertionSigner) Sign(now time.Time, c AssertionClaims) (string, error) {
	lifetime := c.Lifetime
	if lifetime == 0 {
		lifetime = defaultAssertionLifetime
	}
	switch {
	case lifetime < time.Second || lifetime > maxAssertionLifetime:
		return "", fmt.Errorf("assertion lifetime %v is out of range; use 1s to %v", c.Lifetime, maxAssertionLifetime)
	case c.Issuer == "":
		return "", errors.New("assertion needs an issuer (iss)")
	case c.Audience == "":
		return "", errors.New("assertion needs an audience (aud)")
	}
	for _, name := range registeredClaims {
		if _, ok := c.Extra[name]; ok {
			return "", fmt.Errorf("assertion claim %s is set by the signer, not as an extra claim", name)
		}
	}
	iat := now.Unix()
	claims := jwt.Claims{
		Issuer:   c.Issuer,
		Subject:  c.Subject,
		Audience: jwt.Audience{c.Audience},
		IssuedAt: jwt.NewNumericDate(time.Unix(iat, 0)),
		Expiry:   jwt.NewNumericDate(time.Unix(iat+int64(lifetime/time.Second), 0)),
		// rand.Text: 26 base32 characters, 130 random bits.
		ID: rand.Text(),
	}
	if c.NotBefore {
		claims.NotBefore = claims.IssuedAt
	}
	b := jwt.Signed(s.signer).Claims(claims)
	if len(c.Extra) > 0 {
		b = b.Claims(c.Extra)
	}
	out, err := b.Serialize()
	if err != nil {
		return "", fmt.Errorf("signing the assertion (%s): %v", s.alg, err)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Assertion from a file

// ReadAssertionFile reads the client assertion that another program keeps
// in the file at path (client_assertion_file; e.g. a Kubernetes projected
// service account token, which the kubelet rotates in place). Call it for
// every token request: it never caches. Surrounding whitespace is trimmed.
// A missing or empty file, or one that does not hold a compact JWT (three
// or five dot-separated base64url parts), is an error that names the path,
// never the content.
func ReadAssertionFile(path string) (string, error) {
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

// GoogleServiceAccount is what signing a JWT bearer grant for a Google
// service account needs, from its JSON key file.
type GoogleServiceAccount struct {
	ClientEmail string        // iss (and the subject of the grant)
	KeyID       string        // private_key_id: the kid header; may be ""
	TokenURI    string        // aud, and where to send the grant
	Key         crypto.Signer // private_key
}

// LoadGoogleServiceAccount loads a Google service account key file given as
// its path or as the JSON itself (a value starting with "{", as an {env.…}
// placeholder gives it).
func LoadGoogleServiceAccount(value string) (*GoogleServiceAccount, error) {
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
func parseGoogleServiceAccount(data []byte, where string) (*GoogleServiceAccount, error) {
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
	return &GoogleServiceAccount{ClientEmail: f.ClientEmail, KeyID: f.PrivateKeyID, TokenURI: f.TokenURI, Key: key}, nil
}

// Signer makes the assertion Signer of the service account: its key, its
// default algorithm (RS256 for Google's RSA keys), kid = private_key_id.
func (sa *GoogleServiceAccount) Signer() (*AssertionSigner, error) {
	return NewAssertionSigner(sa.Key, "", sa.KeyID, nil)
}

// ---------------------------------------------------------------------------
// Endpoint URLs

// checkFetchedURL checks an endpoint URL read from a file or a document
// (not from the configuration): an absolute URL that credentials may be
// sent to (SecureEndpoint); name says which endpoint in errors.
func checkFetchedURL(name, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%s %q is not an absolute URL", name, raw)
	}
	if !SecureEndpoint(u) {
		return fmt.Errorf("%s %s must be https (http only on a loopback host)", name, raw)
	}
	return nil
}
