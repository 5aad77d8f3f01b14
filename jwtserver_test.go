package oauthbearer

// A token endpoint that verifies JWT client assertions and JWT bearer grants
// as a provider does (with go-jose, against registered keys), and the tests
// that run internal/oauthclient's assertions against it.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// jwtServerClient is a client registered with a jwtTokenServer.
type jwtServerClient struct {
	// key verifies its assertions: a public key (*rsa.PublicKey,
	// *ecdsa.PublicKey, ed25519.PublicKey) or an HMAC secret ([]byte).
	key any
	// certS256, when set, is the x5t#S256 its assertions must carry.
	certS256 string
}

// jwtServerGrant records one issued token.
type jwtServerGrant struct {
	clientID, grantType, jti, sub, scope, kid string
}

// jwtTokenServer is an OAuth token endpoint on 127.0.0.1 that accepts
// grant_type=client_credentials with a JWT client assertion, and the JWT
// bearer grant. It verifies the signature with go-jose against the key
// registered for the assertion's iss and checks every claim: iss = sub =
// the client id for client authentication; for the bearer grant sub is
// required (RFC 7523 §3) except from a Google service account
// (iss *.iam.gserviceaccount.com: Google documents sub only for
// domain-wide delegation); aud = its token URL or
// a configured audience, exp present, after now and at most 5 minutes after
// iat, iat not in the future, nbf if present not in the future, jti present
// and never seen before, x5t#S256 if a certificate is registered. Answers
// are RFC 6749 JSON.
type jwtTokenServer struct {
	srv      *httptest.Server
	tokenURL string

	mu        sync.Mutex
	clients   map[string]jwtServerClient
	audiences []string // accepted besides tokenURL
	seen      map[string]bool
	lastError string // error_description of the last refusal
	grants    []jwtServerGrant

	requests, issued, refused atomic.Int64
}

// jwtServerSkew is the clock skew allowed for iat and nbf; exp has none.
const jwtServerSkew = 30 * time.Second

// newJWTTokenServer starts a server; it stops with the test.
func newJWTTokenServer(t *testing.T) *jwtTokenServer {
	t.Helper()
	s := &jwtTokenServer{clients: map[string]jwtServerClient{}, seen: map[string]bool{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	s.tokenURL = s.srv.URL + "/token"
	return s
}

// register adds a client with the key that verifies its assertions.
func (s *jwtTokenServer) register(clientID string, key any, certS256 string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[clientID] = jwtServerClient{key: key, certS256: certS256}
}

// addAudience accepts aud as well as the token URL.
func (s *jwtTokenServer) addAudience(aud string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.audiences = append(s.audiences, aud)
}

// lastRefusal is the error_description of the last refused request.
func (s *jwtTokenServer) lastRefusal() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastError
}

// issuedGrants returns what was issued so far.
func (s *jwtTokenServer) issuedGrants() []jwtServerGrant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.grants)
}

func (s *jwtTokenServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if r.URL.Path != "/token" || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		s.refuse(w, http.StatusBadRequest, "invalid_request", "unparsable form")
		return
	}
	// Literal strings, not the client's constants: a typo there fails.
	switch gt := r.PostForm.Get("grant_type"); gt {
	case "client_credentials":
		if at := r.PostForm.Get("client_assertion_type"); at != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			s.refuse(w, http.StatusUnauthorized, "invalid_client", fmt.Sprintf("client_assertion_type %q is not jwt-bearer", at))
			return
		}
		if r.PostForm.Has("client_secret") {
			s.refuse(w, http.StatusUnauthorized, "invalid_client", "client_secret sent with client_assertion")
			return
		}
		g, err := s.verify(r.PostForm.Get("client_assertion"), false)
		if err == nil && r.PostForm.Has("client_id") && r.PostForm.Get("client_id") != g.clientID {
			err = fmt.Errorf("client_id %q is not the assertion's iss %q", r.PostForm.Get("client_id"), g.clientID)
		}
		if err != nil {
			s.refuse(w, http.StatusUnauthorized, "invalid_client", err.Error())
			return
		}
		g.grantType, g.scope = gt, r.PostForm.Get("scope")
		s.issue(w, g)
	case "refresh_token":
		// A refresh token it never issued, as any provider that also
		// serves refresh tokens answers.
		s.refuse(w, http.StatusBadRequest, "invalid_grant", "unknown refresh token")
	case "urn:ietf:params:oauth:grant-type:jwt-bearer":
		g, err := s.verify(r.PostForm.Get("assertion"), true)
		if err != nil {
			s.refuse(w, http.StatusBadRequest, "invalid_grant", err.Error())
			return
		}
		g.grantType = gt
		s.issue(w, g)
	default:
		s.refuse(w, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q", gt))
	}
}

// jwtServerAlgs are the algorithms the server accepts.
var jwtServerAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
}

// verify checks an assertion; for bearerGrant sub may be any subject (and
// only a Google service account may leave it out), and a scope claim is
// required (as Google does).
func (s *jwtTokenServer) verify(assertion string, bearerGrant bool) (jwtServerGrant, error) {
	var g jwtServerGrant
	if assertion == "" {
		return g, fmt.Errorf("no assertion")
	}
	tok, err := jwt.ParseSigned(assertion, jwtServerAlgs)
	if err != nil {
		return g, fmt.Errorf("malformed assertion: %v", err)
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return g, fmt.Errorf("malformed claims: %v", err)
	}
	s.mu.Lock()
	client, ok := s.clients[unverified.Issuer]
	audiences := append([]string{s.tokenURL}, s.audiences...)
	s.mu.Unlock()
	if !ok {
		return g, fmt.Errorf("unknown client (iss %q)", unverified.Issuer)
	}
	hdr := tok.Headers[0]
	if typ, ok := hdr.ExtraHeaders["typ"]; ok && typ != "JWT" {
		return g, fmt.Errorf("typ %v is not JWT", typ)
	}
	// The header's alg must fit the registered key: no HMAC keyed with a
	// public key, no RSA with an EC key.
	if !jwtAlgFitsKey(jose.SignatureAlgorithm(hdr.Algorithm), client.key) {
		return g, fmt.Errorf("alg %s does not fit the registered key", hdr.Algorithm)
	}
	var claims jwt.Claims
	var extra struct {
		Scope string `json:"scope"`
	}
	if err := tok.Claims(client.key, &claims, &extra); err != nil {
		return g, fmt.Errorf("signature does not verify with the registered key: %v", err)
	}
	now := time.Now()
	switch {
	case !bearerGrant && claims.Subject != claims.Issuer:
		return g, fmt.Errorf("sub %q is not the client id %q", claims.Subject, claims.Issuer)
	case bearerGrant && claims.Subject == "" && !strings.HasSuffix(claims.Issuer, ".iam.gserviceaccount.com"):
		return g, fmt.Errorf("no sub (RFC 7523 §3: the assertion must name its subject)")
	case !slices.ContainsFunc(audiences, claims.Audience.Contains):
		return g, fmt.Errorf("aud %v is not this token endpoint", []string(claims.Audience))
	case claims.Expiry == nil:
		return g, fmt.Errorf("no exp")
	case claims.IssuedAt == nil:
		return g, fmt.Errorf("no iat")
	case claims.Expiry.Time().Sub(claims.IssuedAt.Time()) > 5*time.Minute:
		return g, fmt.Errorf("exp is more than 5 minutes after iat")
	case !now.Before(claims.Expiry.Time()):
		return g, fmt.Errorf("expired at %s", claims.Expiry.Time().UTC().Format(time.RFC3339))
	case claims.IssuedAt.Time().After(now.Add(jwtServerSkew)):
		return g, fmt.Errorf("iat is in the future")
	case claims.NotBefore != nil && claims.NotBefore.Time().After(now.Add(jwtServerSkew)):
		return g, fmt.Errorf("nbf is in the future")
	case claims.ID == "":
		return g, fmt.Errorf("no jti")
	case bearerGrant && extra.Scope == "":
		return g, fmt.Errorf("no scope claim")
	}
	if client.certS256 != "" {
		if got, _ := hdr.ExtraHeaders["x5t#S256"].(string); got != client.certS256 {
			return g, fmt.Errorf("x5t#S256 %q does not match the registered certificate", got)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[claims.ID] {
		return g, fmt.Errorf("jti %s was used before", claims.ID)
	}
	s.seen[claims.ID] = true
	return jwtServerGrant{clientID: claims.Issuer, jti: claims.ID, sub: claims.Subject, scope: extra.Scope, kid: hdr.KeyID}, nil
}

// jwtAlgFitsKey reports whether alg is one that key verifies.
func jwtAlgFitsKey(alg jose.SignatureAlgorithm, key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return slices.Contains([]jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}, alg)
	case *ecdsa.PublicKey:
		return alg == jose.ES256 && k.Curve.Params().Name == "P-256" || alg == jose.ES384 && k.Curve.Params().Name == "P-384"
	case ed25519.PublicKey:
		return alg == jose.EdDSA
	case []byte:
		return alg == jose.HS256 || alg == jose.HS384 || alg == jose.HS512
	}
	return false
}

func (s *jwtTokenServer) issue(w http.ResponseWriter, g jwtServerGrant) {
	n := s.issued.Add(1)
	s.mu.Lock()
	s.grants = append(s.grants, g)
	s.mu.Unlock()
	resp := map[string]any{"access_token": "at-" + g.clientID + "-" + strconv.FormatInt(n, 10), "token_type": "Bearer", "expires_in": 3600}
	if g.scope != "" {
		resp["scope"] = g.scope
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(resp)
}

func (s *jwtTokenServer) refuse(w http.ResponseWriter, status int, code, desc string) {
	s.refused.Add(1)
	s.mu.Lock()
	s.lastError = desc
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// jwtServerAnswer is a decoded token endpoint answer.
type jwtServerAnswer struct {
	status           int
	AccessToken      string `json:"access_token"`
	TokenType        string `json:"token_type"`
	ExpiresIn        int    `json:"expires_in"`
	Scope            string `json:"scope"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// postToken sends form to the server's token URL over real HTTP.
func (s *jwtTokenServer) postToken(t *testing.T, form url.Values) jwtServerAnswer {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.PostForm(s.tokenURL, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := jwtServerAnswer{status: resp.StatusCode}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("decoding the answer (%d): %v", resp.StatusCode, err)
	}
	return a
}

// clientAssertionForm is a client_credentials request authenticated with
// assertion.
func clientAssertionForm(assertion string) url.Values {
	return url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
}

// wantIssued fails unless a is a token answer.
func wantIssued(t *testing.T, a jwtServerAnswer, s *jwtTokenServer) {
	t.Helper()
	if a.status != http.StatusOK || a.AccessToken == "" || a.TokenType != "Bearer" || a.ExpiresIn != 3600 {
		t.Fatalf("answer %+v; server said %q", a, s.lastRefusal())
	}
}

// wantRefused fails unless a is a refusal with code and a description
// holding desc.
func wantRefused(t *testing.T, a jwtServerAnswer, status int, code, desc string) {
	t.Helper()
	if a.status != status || a.Error != code || !strings.Contains(a.ErrorDescription, desc) || a.AccessToken != "" {
		t.Fatalf("answer %+v; want %d %s %q", a, status, code, desc)
	}
}

// ---------------------------------------------------------------------------
// Tests

// Every key type and algorithm, from a PEM file through LoadPrivateKey, is
// accepted by a verifying server.
func TestJWTServerAcceptsEachKeyAndAlg(t *testing.T) {
	s := newJWTTokenServer(t)
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
			a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: clientID, Subject: clientID, Audience: s.tokenURL})
			if err != nil {
				t.Fatal(err)
			}
			form := clientAssertionForm(a)
			form.Set("client_id", clientID)
			wantIssued(t, s.postToken(t, form), s)
			g := s.issuedGrants()
			if last := g[len(g)-1]; last.clientID != clientID || last.kid != "kid-"+clientID {
				t.Fatalf("issued to %+v", last)
			}
		})
	}
	if s.issued.Load() != int64(len(cases)) || s.refused.Load() != 0 {
		t.Fatalf("issued %d refused %d, want %d and 0", s.issued.Load(), s.refused.Load(), len(cases))
	}
}

// An assertion signed by another key than the registered one is refused,
// whatever the other key's type.
func TestJWTServerRefusesWrongKey(t *testing.T) {
	s := newJWTTokenServer(t)
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
		a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: id, Subject: id, Audience: s.tokenURL})
		if err != nil {
			t.Fatal(err)
		}
		wantRefused(t, s.postToken(t, clientAssertionForm(a)), http.StatusUnauthorized, "invalid_client", c.want)
	}
	if s.issued.Load() != 0 || s.refused.Load() != 5 {
		t.Fatalf("issued %d refused %d", s.issued.Load(), s.refused.Load())
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
	s := newJWTTokenServer(t)
	key := testkeys.Keys().P256
	s.register("c1", key.Public(), "")
	s.register("c2", testkeys.Keys().P384.Public(), "")
	s.addAudience("https://idp.example/")
	signer, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := oauthclient.AssertionClaims{Issuer: "c1", Subject: "c1", Audience: s.tokenURL}
	raw := func(mod func(m map[string]any)) string {
		m := map[string]any{"iss": "c1", "sub": "c1", "aud": s.tokenURL, "iat": now.Unix(), "exp": now.Unix() + 60, "jti": rand.Text()}
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
		a := s.postToken(t, clientAssertionForm(c.assertion))
		if c.want == "" {
			if a.status != http.StatusOK {
				t.Errorf("%s: refused: %s", c.name, a.ErrorDescription)
			}
			continue
		}
		if a.status != http.StatusUnauthorized || a.Error != "invalid_client" || !strings.Contains(a.ErrorDescription, c.want) {
			t.Errorf("%s: answer %+v, want invalid_client %q", c.name, a, c.want)
		}
		testkeys.AssertNoKeyMaterial(t, "the refusal", a.ErrorDescription, testkeys.PKCS8PEM(t, key))
	}

	// Replay: the same assertion twice.
	replay := signed(now, func(*oauthclient.AssertionClaims) {})
	wantIssued(t, s.postToken(t, clientAssertionForm(replay)), s)
	wantRefused(t, s.postToken(t, clientAssertionForm(replay)), http.StatusUnauthorized, "invalid_client", "was used before")

	// Form-level checks.
	form := clientAssertionForm(signed(now, func(*oauthclient.AssertionClaims) {}))
	form.Set("client_id", "c2")
	wantRefused(t, s.postToken(t, form), http.StatusUnauthorized, "invalid_client", `client_id "c2" is not the assertion's iss "c1"`)
	form = clientAssertionForm(signed(now, func(*oauthclient.AssertionClaims) {}))
	form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
	wantRefused(t, s.postToken(t, form), http.StatusUnauthorized, "invalid_client", "is not jwt-bearer")

	if r, i, f := s.requests.Load(), s.issued.Load(), s.refused.Load(); r != int64(len(cases))+4 || i+f != r || i != 5 {
		t.Fatalf("requests %d issued %d refused %d", r, i, f)
	}
}

// 100 assertions from one signer: the server, which refuses a jti it has
// seen, accepts them all, and all their jti differ.
func TestJWTServerJTINeverRepeats(t *testing.T) {
	s := newJWTTokenServer(t)
	key := testkeys.Keys().Ed
	s.register("c", key.Public(), "")
	signer, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now() // the same second for all: jti alone tells them apart
	for range 100 {
		a, err := signer.Sign(now, oauthclient.AssertionClaims{Issuer: "c", Subject: "c", Audience: s.tokenURL})
		if err != nil {
			t.Fatal(err)
		}
		wantIssued(t, s.postToken(t, clientAssertionForm(a)), s)
	}
	jtis := map[string]bool{}
	for _, g := range s.issuedGrants() {
		jtis[g.jti] = true
	}
	if len(jtis) != 100 || s.issued.Load() != 100 {
		t.Fatalf("%d distinct jti, %d issued; want 100", len(jtis), s.issued.Load())
	}
}

// x5t#S256: accepted with the registered certificate, refused without a
// certificate and with another certificate for the same key.
func TestJWTServerX5tS256(t *testing.T) {
	s := newJWTTokenServer(t)
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
		a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "app", Subject: "app", Audience: s.tokenURL})
		if err != nil {
			t.Fatal(err)
		}
		ans := s.postToken(t, clientAssertionForm(a))
		if c.want == "" {
			wantIssued(t, ans, s)
		} else {
			wantRefused(t, ans, http.StatusUnauthorized, "invalid_client", c.want)
		}
	}
}

// client_secret_jwt: HS256 keyed with the client secret.
func TestJWTServerClientSecretJWT(t *testing.T) {
	s := newJWTTokenServer(t)
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
		a, err := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "web", Subject: "web", Audience: s.tokenURL})
		if err != nil {
			t.Fatal(err)
		}
		ans := s.postToken(t, clientAssertionForm(a))
		if c.want == "" {
			wantIssued(t, ans, s)
			continue
		}
		wantRefused(t, ans, http.StatusUnauthorized, "invalid_client", c.want)
		if strings.Contains(ans.ErrorDescription, secret) {
			t.Fatal("the secret appears in the refusal")
		}
	}
	// An HMAC assertion for a client registered with a public key (the
	// classic alg confusion) is refused.
	s.register("rsa-client", testkeys.Keys().RSA.Public(), "")
	signer, _ := oauthclient.NewSecretAssertionSigner([]byte(secret), "")
	a, _ := signer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "rsa-client", Subject: "rsa-client", Audience: s.tokenURL})
	wantRefused(t, s.postToken(t, clientAssertionForm(a)), http.StatusUnauthorized, "invalid_client", "alg HS256 does not fit")
}

// A Google-shaped service account key file signs JWT bearer grants that the
// server accepts; without a scope claim the grant is refused.
func TestJWTServerGoogleServiceAccount(t *testing.T) {
	s := newJWTTokenServer(t)
	key := testkeys.Keys().RSA2
	path := testkeys.WriteFile(t, "sa.json", testkeys.GoogleKeyJSON(t, key, s.tokenURL, nil))
	s.register("robot@proj.iam.gserviceaccount.com", key.Public(), "")
	grant := func(scope, subject string) jwtServerAnswer {
		return s.postToken(t, url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"},
			"assertion": {googleAssertion(t, path, scope, subject)}})
	}
	ans := grant("https://www.googleapis.com/auth/cloud-platform", "")
	wantIssued(t, ans, s)
	if ans.Scope != "https://www.googleapis.com/auth/cloud-platform" {
		t.Errorf("scope %q", ans.Scope)
	}
	wantIssued(t, grant("scope-a", "user@example.com"), s) // domain-wide delegation
	g := s.issuedGrants()
	if len(g) != 2 || g[0].kid != "0123456789abcdef" || g[0].sub != "" || g[1].sub != "user@example.com" ||
		g[0].grantType != "urn:ietf:params:oauth:grant-type:jwt-bearer" || g[0].clientID != "robot@proj.iam.gserviceaccount.com" {
		t.Fatalf("grants %+v", g)
	}
	wantRefused(t, grant("", ""), http.StatusBadRequest, "invalid_grant", "no scope claim")
}

// client_assertion_file: an assertion made by another program and rotated
// in place is re-read for each request; a stale one would be refused as a
// replay.
func TestJWTServerAssertionFile(t *testing.T) {
	s := newJWTTokenServer(t)
	key := testkeys.Keys().P384
	s.register("workload", key.Public(), "")
	// the other program: kubelet, say
	issuer, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token")
	for range 3 {
		a, err := issuer.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "workload", Subject: "workload", Audience: s.tokenURL})
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
		wantIssued(t, s.postToken(t, clientAssertionForm(got)), s)
	}
	// the file not rotated: its assertion was used
	got, err := oauthclient.ReadAssertionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, s.postToken(t, clientAssertionForm(got)), http.StatusUnauthorized, "invalid_client", "was used before")
}
