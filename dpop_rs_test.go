package oauthbearer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// A resource server for the tests that accepts only DPoP-bound access
// tokens, each request with a valid proof (RFC 9449 §4.3, §7): the
// signature with the key the proof carries, typ, alg against an allow-list,
// htm, htu against its own URL as configured, iat within a window, a jti
// never seen before, ath matching the token, the token's cnf.jkt equal to
// the proof key's thumbprint (from the authorization server's introspection
// endpoint, or from a JWT access token verified with the server's keys), and
// nonces: it issues one, requires it, rotates it (sending the new one on an
// answer), and answers a missing or stale one with 401, WWW-Authenticate:
// DPoP error="use_dpop_nonce" and DPoP-Nonce.
//
// It verifies with go-jose and its own code only, never with the client
// code under test (internal/oauthclient), so that a mistake there cannot
// cancel out here. It counts what it accepted and what it refused, and why.

// Refusal reasons, as dpopResourceServer counts them.
const (
	rsNoToken       = "no_token"        // no Authorization, or another scheme
	rsBearer        = "bearer_scheme"   // Authorization: Bearer for a DPoP-bound token
	rsNoProof       = "no_proof"        // no DPoP header field
	rsSeveralProofs = "several_proofs"  // more than one DPoP field
	rsUnparsable    = "proof_malformed" // not a compact JWS with a JSON header and claims
	rsAlg           = "alg"             // alg not in the allow-list
	rsTyp           = "typ"             // typ not dpop+jwt
	rsJWK           = "jwk"             // no public jwk in the header
	rsSignature     = "signature"       // the signature does not verify with the jwk
	rsHTM           = "htm"
	rsHTU           = "htu"
	rsIAT           = "iat"            // iat outside the window
	rsJTIReplay     = "jti_replay"     // jti seen before
	rsNonce         = "use_dpop_nonce" // nonce missing, stale or unknown
	rsATH           = "ath"
	rsTokenInactive = "token_inactive" // introspection: inactive; JWT: invalid
	rsJKT           = "jkt_mismatch"   // cnf.jkt is not the proof key's thumbprint
)

// dpopRSConfig configures a dpopResourceServer.
type dpopRSConfig struct {
	// Base is the resource server's URL as it sees its requests: htu must
	// be Base with the request's path. Default: the server's own URL.
	Base string
	// Algs are the proof algorithms accepted; default ES256, EdDSA, RS256.
	Algs []string
	// Window is how far iat may be from now; default 60 s.
	Window time.Duration
	// RequireNonce: every proof must carry the current (or the previous)
	// nonce.
	RequireNonce bool
	// RotateEvery rotates the nonce after that many accepted requests,
	// sending the new one on the answer (0: never).
	RotateEvery int
	// Introspect checks tokens at an introspection endpoint (RFC 7662)
	// with client_secret_basic.
	Introspect *rsIntrospection
	// JWT checks JWT access tokens (RFC 9068) instead.
	JWT *rsJWTCheck
	// Tokens, for the resource server's own tests: token → cnf.jkt, no
	// authorization server.
	Tokens map[string]string
	// Next answers accepted requests; default: 200 with JSON naming the
	// method and path.
	Next http.Handler
}

type rsIntrospection struct {
	URL, ClientID, ClientSecret string
}

type rsJWTCheck struct {
	JWKSURL, Issuer, Audience string
}

type dpopResourceServer struct {
	*httptest.Server
	cfg    dpopRSConfig
	base   *url.URL
	algs   map[string]bool
	client *http.Client

	mu        sync.Mutex
	nonce     string // current
	prevNonce string // still accepted: clients in flight
	jtis      map[string]time.Time
	accepted  int
	refused   map[string]int
	proofs    []map[string]any // claims of accepted proofs, in order
	tokens    map[string]rsTokenInfo
	jwks      *jose.JSONWebKeySet
	now       func() time.Time
}

type rsTokenInfo struct {
	active bool
	jkt    string
	exp    time.Time
}

func newDPoPResourceServer(t testing.TB, cfg dpopRSConfig) *dpopResourceServer {
	t.Helper()
	rs := &dpopResourceServer{
		cfg:     cfg,
		algs:    map[string]bool{},
		client:  &http.Client{Timeout: 10 * time.Second},
		jtis:    map[string]time.Time{},
		refused: map[string]int{},
		tokens:  map[string]rsTokenInfo{},
		now:     time.Now,
	}
	if len(cfg.Algs) == 0 {
		cfg.Algs = []string{"ES256", "EdDSA", "RS256"}
	}
	for _, a := range cfg.Algs {
		rs.algs[a] = true
	}
	if rs.cfg.Window == 0 {
		rs.cfg.Window = time.Minute
	}
	rs.cfg.Algs = cfg.Algs
	rs.nonce = rsRandom()
	rs.Server = httptest.NewServer(rs)
	t.Cleanup(rs.Close)
	base := cfg.Base
	if base == "" {
		base = rs.URL
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("resource server base %q: %v", base, err)
	}
	rs.base = u
	return rs
}

func rsRandom() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// counts returns how many requests were accepted and refused, by reason.
func (rs *dpopResourceServer) counts() (int, map[string]int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.accepted, maps.Clone(rs.refused)
}

// acceptedProofs returns the claims of the accepted proofs, in order.
func (rs *dpopResourceServer) acceptedProofs() []map[string]any {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]map[string]any(nil), rs.proofs...)
}

// currentNonce is the nonce proofs must carry now.
func (rs *dpopResourceServer) currentNonce() string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.nonce
}

// rotate makes a new nonce; the previous one stays accepted (requests in
// flight), the one before is refused from now on.
func (rs *dpopResourceServer) rotate() string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.rotateLocked()
}

func (rs *dpopResourceServer) rotateLocked() string {
	rs.prevNonce, rs.nonce = rs.nonce, rsRandom()
	return rs.nonce
}

// rsRefusal is a refused request: the reason counted, the status and the
// DPoP challenge's error code.
type rsRefusal struct {
	reason string
	status int
	code   string // invalid_dpop_proof, invalid_token, use_dpop_nonce
	desc   string
}

func (rs *dpopResourceServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	claims, refusal := rs.verify(r)
	if refusal != nil {
		rs.mu.Lock()
		rs.refused[refusal.reason]++
		nonce := rs.nonce
		rs.mu.Unlock()
		chal := `DPoP algs="` + strings.Join(rs.cfg.Algs, " ") + `"`
		if refusal.code != "" {
			chal += `, error="` + refusal.code + `", error_description="` + refusal.desc + `"`
		}
		if refusal.code == "use_dpop_nonce" || rs.cfg.RequireNonce {
			w.Header().Set("DPoP-Nonce", nonce)
		}
		w.Header().Set("WWW-Authenticate", chal)
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, refusal.reason, refusal.status)
		return
	}
	rs.mu.Lock()
	rs.accepted++
	rs.proofs = append(rs.proofs, claims)
	if rs.cfg.RotateEvery > 0 && rs.accepted%rs.cfg.RotateEvery == 0 {
		w.Header().Set("DPoP-Nonce", rs.rotateLocked())
	}
	rs.mu.Unlock()
	if rs.cfg.Next != nil {
		rs.cfg.Next.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"method":%q,"path":%q}`, r.Method, r.URL.Path)
}

func proofRefusal(reason, desc string) *rsRefusal {
	return &rsRefusal{reason: reason, status: http.StatusUnauthorized, code: "invalid_dpop_proof", desc: desc}
}

func tokenRefusal(reason, desc string) *rsRefusal {
	return &rsRefusal{reason: reason, status: http.StatusUnauthorized, code: "invalid_token", desc: desc}
}

// verify checks a request as RFC 9449 §4.3 and §7.1 say; it returns the
// proof's claims, or why it refuses.
func (rs *dpopResourceServer) verify(r *http.Request) (map[string]any, *rsRefusal) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	switch {
	case strings.EqualFold(scheme, "Bearer") && token != "":
		return nil, tokenRefusal(rsBearer, "DPoP-bound tokens are sent with the DPoP scheme")
	case !strings.EqualFold(scheme, "DPoP") || token == "":
		return nil, &rsRefusal{reason: rsNoToken, status: http.StatusUnauthorized}
	}
	proofs := r.Header.Values("DPoP")
	switch {
	case len(proofs) == 0:
		return nil, proofRefusal(rsNoProof, "no DPoP proof")
	case len(proofs) > 1:
		return nil, proofRefusal(rsSeveralProofs, "more than one DPoP proof")
	}
	jws, err := jose.ParseSigned(proofs[0], []jose.SignatureAlgorithm{
		jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
		jose.HS256, jose.HS384, jose.HS512,
	})
	if err != nil || len(jws.Signatures) != 1 || strings.Count(proofs[0], ".") != 2 {
		return nil, proofRefusal(rsUnparsable, "not a compact JWS")
	}
	h := jws.Signatures[0].Protected
	if !rs.algs[h.Algorithm] {
		return nil, proofRefusal(rsAlg, "alg not allowed")
	}
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != "dpop+jwt" {
		return nil, proofRefusal(rsTyp, "typ is not dpop+jwt")
	}
	if h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() || !h.JSONWebKey.Valid() {
		return nil, proofRefusal(rsJWK, "no public jwk")
	}
	payload, err := jws.Verify(h.JSONWebKey)
	if err != nil {
		return nil, proofRefusal(rsSignature, "the signature does not verify")
	}
	var claims map[string]any
	d := json.NewDecoder(strings.NewReader(string(payload)))
	d.UseNumber()
	if d.Decode(&claims) != nil {
		return nil, proofRefusal(rsUnparsable, "claims are not a JSON object")
	}
	jti, _ := claims["jti"].(string)
	htm, _ := claims["htm"].(string)
	htu, _ := claims["htu"].(string)
	ath, _ := claims["ath"].(string)
	nonce, _ := claims["nonce"].(string)
	iatNum, _ := claims["iat"].(json.Number)
	iat, iatErr := iatNum.Int64()
	if jti == "" || htm == "" || htu == "" || iatErr != nil {
		return nil, proofRefusal(rsUnparsable, "jti, htm, htu and iat are required")
	}
	if htm != r.Method {
		return nil, proofRefusal(rsHTM, "htm mismatch")
	}
	want := *rs.base
	want.Path = strings.TrimSuffix(rs.base.Path, "/") + r.URL.Path
	want.RawPath = ""
	if r.URL.RawPath != "" {
		want.RawPath = strings.TrimSuffix(rs.base.EscapedPath(), "/") + r.URL.RawPath
	}
	if got, err := url.Parse(htu); err != nil || rsNormalURI(got) != rsNormalURI(&want) {
		return nil, proofRefusal(rsHTU, "htu mismatch")
	}
	now := rs.now()
	if d := now.Sub(time.Unix(iat, 0)); d > rs.cfg.Window || d < -rs.cfg.Window {
		return nil, proofRefusal(rsIAT, "iat outside the window")
	}
	rs.mu.Lock()
	nonceOK := nonce != "" && (nonce == rs.nonce || nonce == rs.prevNonce)
	if rs.cfg.RequireNonce && !nonceOK {
		rs.mu.Unlock()
		return nil, &rsRefusal{reason: rsNonce, status: http.StatusUnauthorized, code: "use_dpop_nonce", desc: "Resource server requires nonce in DPoP proof"}
	}
	if _, seen := rs.jtis[jti]; seen {
		rs.mu.Unlock()
		return nil, proofRefusal(rsJTIReplay, "jti seen before")
	}
	rs.jtis[jti] = now
	if len(rs.jtis) > 100_000 {
		for k, at := range rs.jtis {
			if now.Sub(at) > 2*rs.cfg.Window {
				delete(rs.jtis, k)
			}
		}
	}
	rs.mu.Unlock()
	sum := sha256.Sum256([]byte(token))
	if ath != base64.RawURLEncoding.EncodeToString(sum[:]) {
		return nil, proofRefusal(rsATH, "ath mismatch")
	}
	info, err := rs.tokenInfo(r.Context(), token)
	if err != nil || !info.active || (!info.exp.IsZero() && now.After(info.exp)) {
		return nil, tokenRefusal(rsTokenInactive, "the token is not active")
	}
	tp, err := h.JSONWebKey.Thumbprint(crypto.SHA256)
	if err != nil || info.jkt != base64.RawURLEncoding.EncodeToString(tp) {
		return nil, tokenRefusal(rsJKT, "the token is bound to another key")
	}
	claims["_jkt"] = info.jkt // the proof key's thumbprint, for tests that compare keys
	return claims, nil
}

// rsNormalURI compares URIs as RFC 9449 §4.3 asks (syntax- and scheme-based
// normalisation, without query and fragment), in the resource server's own
// words.
func rsNormalURI(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if p := u.Port(); p != "" && !(scheme == "http" && p == "80") && !(scheme == "https" && p == "443") {
		host += ":" + p
	}
	path := u.EscapedPath()
	if dec, err := url.PathUnescape(path); err == nil {
		// Compare decoded, re-encoded paths: %7e and ~ are the same.
		path = (&url.URL{Path: dec}).EscapedPath()
	}
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path
}

// tokenInfo says whether token is active and to which key it is bound.
func (rs *dpopResourceServer) tokenInfo(ctx context.Context, token string) (rsTokenInfo, error) {
	if rs.cfg.Tokens != nil {
		jkt, ok := rs.cfg.Tokens[token]
		return rsTokenInfo{active: ok, jkt: jkt}, nil
	}
	rs.mu.Lock()
	info, ok := rs.tokens[token]
	rs.mu.Unlock()
	if ok {
		return info, nil
	}
	var err error
	switch {
	case rs.cfg.Introspect != nil:
		info, err = rs.introspect(ctx, token)
	case rs.cfg.JWT != nil:
		info, err = rs.checkJWT(ctx, token)
	default:
		err = errors.New("the resource server has no way to check tokens")
	}
	if err != nil {
		return info, err
	}
	if info.active {
		rs.mu.Lock()
		rs.tokens[token] = info
		rs.mu.Unlock()
	}
	return info, nil
}

func (rs *dpopResourceServer) introspect(ctx context.Context, token string) (rsTokenInfo, error) {
	in := rs.cfg.Introspect
	req, _ := http.NewRequestWithContext(ctx, "POST", in.URL, strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(url.QueryEscape(in.ClientID), url.QueryEscape(in.ClientSecret))
	resp, err := rs.client.Do(req)
	if err != nil {
		return rsTokenInfo{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != 200 {
		return rsTokenInfo{}, fmt.Errorf("introspection: HTTP %d: %s", resp.StatusCode, body)
	}
	var v struct {
		Active    bool   `json:"active"`
		TokenType string `json:"token_type"`
		Exp       int64  `json:"exp"`
		Cnf       struct {
			JKT string `json:"jkt"`
		} `json:"cnf"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return rsTokenInfo{}, fmt.Errorf("introspection: %v", err)
	}
	info := rsTokenInfo{active: v.Active, jkt: v.Cnf.JKT}
	if v.Exp > 0 {
		info.exp = time.Unix(v.Exp, 0)
	}
	return info, nil
}

func (rs *dpopResourceServer) checkJWT(ctx context.Context, token string) (rsTokenInfo, error) {
	c := rs.cfg.JWT
	rs.mu.Lock()
	keys := rs.jwks
	rs.mu.Unlock()
	if keys == nil {
		req, _ := http.NewRequestWithContext(ctx, "GET", c.JWKSURL, nil)
		resp, err := rs.client.Do(req)
		if err != nil {
			return rsTokenInfo{}, err
		}
		defer resp.Body.Close()
		keys = &jose.JSONWebKeySet{}
		if err := json.NewDecoder(resp.Body).Decode(keys); err != nil {
			return rsTokenInfo{}, fmt.Errorf("jwks: %v", err)
		}
		rs.mu.Lock()
		rs.jwks = keys
		rs.mu.Unlock()
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256, jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 {
		return rsTokenInfo{}, fmt.Errorf("access token: %v", err)
	}
	if typ, _ := tok.Headers[0].ExtraHeaders[jose.HeaderType].(string); !strings.EqualFold(typ, "at+jwt") && !strings.EqualFold(typ, "application/at+jwt") {
		return rsTokenInfo{}, fmt.Errorf("access token typ %q", typ)
	}
	ks := keys.Key(tok.Headers[0].KeyID)
	if len(ks) != 1 {
		return rsTokenInfo{}, fmt.Errorf("access token: no key %q in the jwks", tok.Headers[0].KeyID)
	}
	var std jwt.Claims
	var cnf struct {
		Cnf struct {
			JKT string `json:"jkt"`
		} `json:"cnf"`
	}
	if err := tok.Claims(ks[0].Key, &std, &cnf); err != nil {
		return rsTokenInfo{}, fmt.Errorf("access token: %v", err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: c.Issuer, AnyAudience: jwt.Audience{c.Audience}, Time: rs.now()}, 0); err != nil {
		return rsTokenInfo{}, fmt.Errorf("access token: %v", err)
	}
	return rsTokenInfo{active: true, jkt: cnf.Cnf.JKT, exp: std.Expiry.Time()}, nil
}

// ---------------------------------------------------------------------------
// The resource server's own test: proofs made with go-jose directly (not
// with internal/oauthclient), each defect refused for its reason.

// rsTestProof signs claims as a DPoP proof with go-jose's Signer; typ ""
// leaves typ out, embed false leaves the jwk out.
func rsTestProof(t testing.TB, key any, alg jose.SignatureAlgorithm, typ string, embed bool, claims map[string]any) string {
	t.Helper()
	opts := &jose.SignerOptions{EmbedJWK: embed}
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rsATHOf(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func rsThumbprint(t testing.TB, pub any) string {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

// rsSend sends method path to rs with the Authorization value and proofs.
func rsSend(t testing.TB, rs *dpopResourceServer, method, path, authz string, proofs ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, rs.URL+path, nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	for _, p := range proofs {
		req.Header.Add("DPoP", p)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestDPoPResourceServerVerifiesEveryProof(t *testing.T) {
	keyA, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, keyB, _ := ed25519.GenerateKey(rand.Reader)
	rs := newDPoPResourceServer(t, dpopRSConfig{
		Base:   "https://api.example.com",
		Tokens: map[string]string{"tok-A": rsThumbprint(t, keyA.Public()), "tok-B": rsThumbprint(t, keyB.Public())},
	})
	const path = "/v1/things"
	claims := func(mod func(c map[string]any)) map[string]any {
		c := map[string]any{"jti": rsRandom(), "htm": "GET", "htu": "https://api.example.com" + path, "iat": time.Now().Unix(), "ath": rsATHOf("tok-A")}
		if mod != nil {
			mod(c)
		}
		return c
	}
	proof := func(mod func(c map[string]any)) string {
		return rsTestProof(t, keyA, jose.ES256, "dpop+jwt", true, claims(mod))
	}
	valid := proof(nil)
	other := proof(nil)
	swapped := strings.Join(append(strings.Split(valid, ".")[:2], strings.Split(other, ".")[2]), ".")

	for _, tc := range []struct {
		name   string
		method string
		authz  string
		proofs []string
		want   string // "" accepted, else the reason
	}{
		{"valid", "GET", "DPoP tok-A", []string{valid}, ""},
		{"replayed", "GET", "DPoP tok-A", []string{valid}, rsJTIReplay},
		{"Ed25519 key, its own token", "GET", "DPoP tok-B", []string{rsTestProof(t, keyB, jose.EdDSA, "dpop+jwt", true, claims(func(c map[string]any) { c["ath"] = rsATHOf("tok-B") }))}, ""},
		{"scheme in lower case", "GET", "dpop tok-A", []string{proof(nil)}, ""},
		{"explicit default port in htu", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htu"] = "https://API.example.com:443" + path })}, ""},
		{"query in htu ignored", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htu"] = "https://api.example.com" + path + "?q=1" })}, ""},
		{"Bearer scheme", "GET", "Bearer tok-A", []string{proof(nil)}, rsBearer},
		{"no Authorization", "GET", "", []string{proof(nil)}, rsNoToken},
		{"no proof", "GET", "DPoP tok-A", nil, rsNoProof},
		{"two proofs", "GET", "DPoP tok-A", []string{proof(nil), proof(nil)}, rsSeveralProofs},
		{"not a JWS", "GET", "DPoP tok-A", []string{"not.a.jws"}, rsUnparsable},
		{"HS256", "GET", "DPoP tok-A", []string{rsTestProof(t, []byte("0123456789abcdef0123456789abcdef"), jose.HS256, "dpop+jwt", true, claims(nil))}, rsAlg},
		{"ES384 not allowed", "GET", "DPoP tok-A", []string{func() string {
			k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			return rsTestProof(t, k384, jose.ES384, "dpop+jwt", true, claims(nil))
		}()}, rsAlg},
		{"typ JWT", "GET", "DPoP tok-A", []string{rsTestProof(t, keyA, jose.ES256, "JWT", true, claims(nil))}, rsTyp},
		{"no typ", "GET", "DPoP tok-A", []string{rsTestProof(t, keyA, jose.ES256, "", true, claims(nil))}, rsTyp},
		{"no jwk", "GET", "DPoP tok-A", []string{rsTestProof(t, keyA, jose.ES256, "dpop+jwt", false, claims(nil))}, rsJWK},
		{"signature of another proof", "GET", "DPoP tok-A", []string{swapped}, rsSignature},
		{"htm", "POST", "DPoP tok-A", []string{proof(nil)}, rsHTM},
		{"htm case", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htm"] = "get" })}, rsHTM},
		{"htu path", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htu"] = "https://api.example.com/v1/other" })}, rsHTU},
		{"htu host", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htu"] = "https://evil.example.com" + path })}, rsHTU},
		{"htu scheme", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htu"] = "http://api.example.com" + path })}, rsHTU},
		{"htu is the listener, not the base", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["htu"] = rs.URL + path })}, rsHTU},
		{"iat old", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["iat"] = time.Now().Add(-2 * time.Minute).Unix() })}, rsIAT},
		{"iat ahead", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["iat"] = time.Now().Add(2 * time.Minute).Unix() })}, rsIAT},
		{"no jti", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { delete(c, "jti") })}, rsUnparsable},
		{"ath of another token", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { c["ath"] = rsATHOf("tok-B") })}, rsATH},
		{"no ath", "GET", "DPoP tok-A", []string{proof(func(c map[string]any) { delete(c, "ath") })}, rsATH},
		{"unknown token", "GET", "DPoP tok-X", []string{proof(func(c map[string]any) { c["ath"] = rsATHOf("tok-X") })}, rsTokenInactive},
		{"token bound to another key", "GET", "DPoP tok-B", []string{proof(func(c map[string]any) { c["ath"] = rsATHOf("tok-B") })}, rsJKT},
	} {
		acceptedBefore, refusedBefore := rs.counts()
		resp := rsSend(t, rs, tc.method, path, tc.authz, tc.proofs...)
		accepted, refused := rs.counts()
		if tc.want == "" {
			if resp.StatusCode != 200 || accepted != acceptedBefore+1 {
				t.Errorf("%s: HTTP %d, refused %v; want it accepted", tc.name, resp.StatusCode, refused)
			}
			continue
		}
		if resp.StatusCode != 401 || refused[tc.want] != refusedBefore[tc.want]+1 {
			t.Errorf("%s: HTTP %d, refused %v; want a 401 for %s", tc.name, resp.StatusCode, refused, tc.want)
		}
		code, _ := dpopChallengeCode(resp.Header)
		wantCode := map[string]string{rsNoToken: "", rsBearer: "invalid_token", rsTokenInactive: "invalid_token", rsJKT: "invalid_token"}[tc.want]
		if _, special := map[string]bool{rsNoToken: true, rsBearer: true, rsTokenInactive: true, rsJKT: true}[tc.want]; !special {
			wantCode = "invalid_dpop_proof"
		}
		if code != wantCode {
			t.Errorf("%s: WWW-Authenticate %q, want error %q", tc.name, resp.Header.Get("WWW-Authenticate"), wantCode)
		}
	}
}

// dpopChallengeCode is the error of the DPoP challenge, with the root
// package's parser.
func dpopChallengeCode(h http.Header) (string, bool) {
	for _, v := range h.Values("WWW-Authenticate") {
		for _, c := range oauthclient.ParseChallenges(v) {
			if strings.EqualFold(c.Scheme, "DPoP") {
				return c.Params["error"], true
			}
		}
	}
	return "", false
}

// Nonces: none or an unknown one is challenged with the current nonce; the
// current one is accepted; rotation sends the new one on a success, keeps
// the previous one valid and refuses the one before.
func TestDPoPResourceServerNonces(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rs := newDPoPResourceServer(t, dpopRSConfig{RequireNonce: true, RotateEvery: 2, Tokens: map[string]string{"tok": rsThumbprint(t, key.Public())}})
	send := func(nonce string) *http.Response {
		c := map[string]any{"jti": rsRandom(), "htm": "GET", "htu": rs.URL + "/x", "iat": time.Now().Unix(), "ath": rsATHOf("tok")}
		if nonce != "" {
			c["nonce"] = nonce
		}
		return rsSend(t, rs, "GET", "/x", "DPoP tok", rsTestProof(t, key, jose.ES256, "dpop+jwt", true, c))
	}
	first := rs.currentNonce()
	for _, n := range []string{"", "made-up"} {
		resp := send(n)
		code, _ := dpopChallengeCode(resp.Header)
		if resp.StatusCode != 401 || code != "use_dpop_nonce" || resp.Header.Get("DPoP-Nonce") != first {
			t.Fatalf("nonce %q: HTTP %d, %q, DPoP-Nonce %q; want 401 use_dpop_nonce with %s", n, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), resp.Header.Get("DPoP-Nonce"), first)
		}
	}
	if resp := send(first); resp.StatusCode != 200 || resp.Header.Get("DPoP-Nonce") != "" {
		t.Fatalf("current nonce: HTTP %d, DPoP-Nonce %q; want 200 without a new nonce", resp.StatusCode, resp.Header.Get("DPoP-Nonce"))
	}
	resp := send(first) // the second accepted: rotation
	second := resp.Header.Get("DPoP-Nonce")
	if resp.StatusCode != 200 || second == "" || second == first {
		t.Fatalf("rotation: HTTP %d, DPoP-Nonce %q", resp.StatusCode, second)
	}
	if resp := send(first); resp.StatusCode != 200 {
		t.Errorf("the previous nonce, just rotated: HTTP %d, want it still accepted", resp.StatusCode)
	}
	third := send(second).Header.Get("DPoP-Nonce") // fourth accepted: rotation
	if third == "" || third == second {
		t.Fatalf("second rotation: DPoP-Nonce %q", third)
	}
	if resp := send(first); resp.StatusCode != 401 || resp.Header.Get("DPoP-Nonce") != third {
		t.Errorf("a nonce two rotations old: HTTP %d, DPoP-Nonce %q; want 401 with %s", resp.StatusCode, resp.Header.Get("DPoP-Nonce"), third)
	}
	accepted, refused := rs.counts()
	if accepted != 4 || refused[rsNonce] != 3 || len(refused) != 1 {
		t.Errorf("accepted %d, refused %v; want 4 and 3 use_dpop_nonce", accepted, refused)
	}
}
