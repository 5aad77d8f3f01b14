package oauthbearer

// fakeAS is the one OAuth 2.0 authorization server of the tests: every test
// that needs a token endpoint, an authorization endpoint, revocation or
// discovery metadata uses it. In a minute:
//
//	as := newFakeAS(t)         // client as.ClientID / as.Secret, on 127.0.0.1
//	as.Format = "json"         // settings: before the first request
//	... a Caddy with token_url as.tokenURL() ...
//	as.issued()                // what happened: from the recorder
//
// Endpoints under as.URL: /oauth/token, /oauth/authorize, /oauth/revoke,
// /oauth/refresh (Cal.com's, with SeparateRefresh) and the RFC 8414
// metadata at /.well-known/oauth-authorization-server (its issuer is
// as.URL; setMetadata replaces the document).
//
// It speaks every grant the module does: client_credentials,
// authorization_code (PKCE S256, the redirect URI matched byte for byte),
// refresh_token (rotation by default; KeepRefreshToken, ReuseRevokesGrant,
// RevokeEarlierAccess, RevocationEndsUser) and the JWT bearer grant (RFC
// 7523). And every client authentication: client_secret_basic and _post
// (ClientAuth "basic" or "body" allows one only), private_key_jwt and
// client_secret_jwt (register the client's key; go-jose verifies each
// assertion: signature, alg, iss, sub, aud, exp, iat, nbf, jti once,
// x5t#S256), a TLS client certificate (newFakeASTLS with a tls.Config that
// asks for one), and none for the JWT bearer grant. Bodies are form or
// JSON (Format allows one only, as IdentityServer and Event Temple do);
// Want names parameters that must come with given values.

// Tokens are named by Mint (default tok-<n>-<random>, n counting the
// access tokens issued) and live Lifetime (default 1 h; NoExpiresIn,
// JWTAccess). Misbehaviour on demand: refuse (an OAuth error for every
// token request), setDelay, hold (token requests wait until released),
// holdRefreshes, quirkNext (a 2xx a client must reject), answerWith (a
// canned answer: a 500 page, a redirect, a body too large).
//
// It answers a client that gets something wrong as a real server does (RFC
// 6749 5.2 errors, logged with t.Logf); its choices where the RFCs leave
// them open: parameters come in the body only (a query string, a repeated
// parameter other than RFC 8707's resource, a non-string JSON value are
// invalid_request; an empty one counts as absent); a refused code exchange does not consume the code, a
// second use of a used one revokes what it gave; a refresh leaves the
// previous access token valid until it expires (unless
// RevokeEarlierAccess); revoking a refresh token revokes its grant's access
// tokens. RevokeEarlierDirect keeps one live client_credentials (or JWT
// bearer) token per server, as providers that allow one token per client
// do.
//
// The recorder keeps every request it receives (asRequest: the parameters,
// headers, format, client authentication and the answer), and every test
// asks it the same way: log, last, count and the counts named after what
// they count (issued, tokenRequests, refreshes, invalidGrants...).
//
// The API behind the proxy is upstream (newUpstream, or newAPI for one that
// accepts only this server's live access tokens), the tests' clock
// fakeClock (useFakeClock): both in harness_test.go.
//
// Servers that stay apart: the Caddy-free tests of the OAuth wire
// (endpoint_test.go, discovery_test.go, mtls_test.go...) keep small
// servers of their own in internal/oauthclient, which cannot use this
// package's test helpers; oidc_test.go runs a real
// provider (oidc-provider) and dpop_rs_test.go a DPoP resource server; the
// token endpoint of BenchmarkSourceMemory is a child process, so that its
// memory is not counted with the token sources'.

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The wire's names, spelt out here rather than taken from the production
// code: a typo there fails here.
const (
	asAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	asJWTBearer     = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	asCodeLifetime  = 60 * time.Second
	asSkew          = 30 * time.Second // allowed for an assertion's iat and nbf
)

// fakeAS is the server. Create it with newFakeAS or newFakeASTLS and set
// its fields before the first request; the setters work at any time.
type fakeAS struct {
	*httptest.Server
	t testing.TB

	// The registered client: ClientID with Secret (client_secret_basic,
	// _post and _jwt), and RedirectURI, which /authorize and the code
	// exchange must match byte for byte.
	ClientID, Secret, RedirectURI string
	// ClientAuth: "basic" or "body" accepts that way of sending the
	// secret only; "" either (never both at once). Assertions and
	// certificates are accepted whatever it says.
	ClientAuth string
	// Format: "json" or "form" accepts that body only (400
	// invalid_request to the other); "" both.
	Format string
	// Want: parameters every token request must carry with these values.
	Want map[string]string
	// RequirePKCE (the default): /authorize refuses a request without an
	// S256 code_challenge.
	RequirePKCE bool
	// ScopeSep separates /authorize's scopes (Event Temple ","; default
	// " "); RequireScope refuses an authorization without one.
	ScopeSep     string
	RequireScope bool
	// Lifetime of access tokens (default 1 h), said in expires_in unless
	// NoExpiresIn; JWTAccess makes them unsigned JWTs whose exp says it,
	// without expires_in (Cal.com).
	Lifetime    time.Duration
	NoExpiresIn bool
	JWTAccess   bool
	// CreatedAt: answers carry created_at, as Doorkeeper's do.
	CreatedAt bool
	// Mint names the n-th access token issued, for client (default
	// "tok-<n>-<16 hex digits>").
	Mint func(client string, n int) string
	// Refresh tokens: none at all (NoRefreshToken), no rotation
	// (KeepRefreshToken: Google, many Doorkeeper setups); reuse of one
	// rotated away revokes its grant (ReuseRevokesGrant: RFC 9700
	// 4.14.2, Auth0, Okta); each rotation revokes the grant's earlier
	// access tokens (RevokeEarlierAccess); revoking any token ends every
	// grant of its user (RevocationEndsUser: Auth0, Google).
	NoRefreshToken, KeepRefreshToken, ReuseRevokesGrant, RevokeEarlierAccess, RevocationEndsUser bool
	// RevokeEarlierDirect: each client_credentials or JWT bearer token
	// revokes those issued before it (one live token per client).
	RevokeEarlierDirect bool
	// SeparateRefresh makes it Cal.com-shaped: refresh tokens are
	// redeemed only at /oauth/refresh, as "Authorization: Bearer <rt>".
	SeparateRefresh bool
	// InvalidGrantDescription, when set, makes the error_description of
	// a refused refresh token (what some providers echo back).
	InvalidGrantDescription func(refreshToken string) string
	// Now is the server's clock (default time.Now): a test on a fake
	// clock gives it the same one, so that expiries agree.
	Now func() time.Time
	// Deny: /authorize redirects back with access_denied.
	Deny atomic.Bool

	arrived chan struct{} // a value per held request
	delay   atomic.Int64  // ns every token answer waits
	refusal atomic.Pointer[asRefusal]
	canned  atomic.Pointer[http.HandlerFunc]

	mu          sync.Mutex
	holds       map[string]chan struct{} // path → the gate its requests wait on
	holdRefresh chan struct{}            // see holdRefreshes
	refreshHeld chan struct{}
	clients     map[string]asClient // assertion clients, by iss
	audiences   []string            // accepted as aud besides the token URL
	jtis        map[string]bool
	metadata    map[string]any // nil: the default document
	metaStatus  int
	metaCache   string
	grants      []*asGrant
	codes       map[string]*asCode
	access      map[string]*asToken
	refresh     map[string]*asToken
	quirks      []string
	lastScope   []string
	minted      int
	reqs        []*asRequest
	direct      []string // live client_credentials and JWT bearer tokens (RevokeEarlierDirect)
}

// asClient is a client whose assertions the server verifies: key is a
// public key or an HMAC secret ([]byte); certS256, when set, the x5t#S256
// its assertions must carry.
type asClient struct {
	key      any
	certS256 string
}

// asGrant is what one consent (or one seed, or one pasted refresh token)
// gave.
type asGrant struct {
	id, user     string
	scope        []string // nil: any
	newestExpiry time.Time
	ended        bool
	access       []string // its live access tokens: revoking them walks these, not every token issued
}

type asToken struct {
	grant   *asGrant // nil for client_credentials and JWT bearer tokens
	scope   []string
	expires time.Time // access tokens
	dead    bool      // revoked, or (refresh tokens) used
	rotated bool      // refresh tokens: replaced by a rotation
}

type asCode struct {
	grant       *asGrant
	redirectURI string
	challenge   string
	scope       []string
	expires     time.Time
	used        bool
}

type asRefusal struct {
	status     int
	code       string
	retryAfter int
}

// asRequest is one request as the recorder keeps it. Status is 0 while it
// is in flight (and stays 0 when its sender gave up: Aborted).
type asRequest struct {
	At           time.Time
	Method, Path string
	Header       http.Header
	Remote       string
	Format       string            // "form" or "json"
	Params       map[string]string // the body's (the query's at /authorize)
	Values       url.Values        // the same, each with all its values
	GrantType    string
	// How the client authenticated ("client_secret_basic",
	// "client_secret_post", "private_key_jwt", "client_secret_jwt",
	// "tls_client_auth"; "" for none), and as whom.
	Auth, Client string
	// An assertion as sent (client_assertion, or the JWT bearer grant's),
	// its header and, once verified, its claims.
	Assertion      string
	JOSE           map[string]any
	JTI, Sub, KID  string
	Scope          string // granted
	Status         int
	Error, Desc    string // of a refusal
	Token, Refresh string // issued
	GrantID        string // the grant a code exchange or refresh served
	NewestLeft     time.Duration
	Aborted        bool
}

// newFakeAS starts a server for client "client-1" with a secret that
// Basic must form-encode.
func newFakeAS(t testing.TB) *fakeAS {
	as := newUnstartedFakeAS(t)
	as.Start()
	return as
}

// newFakeASTLS starts it behind TLS: with cfg (a server certificate, and
// client CAs when it asks for client certificates), or httptest's
// certificate, which nobody trusts, when cfg is nil.
func newFakeASTLS(t testing.TB, cfg *tls.Config) *fakeAS {
	as := newUnstartedFakeAS(t)
	if cfg != nil {
		as.TLS = cfg
		as.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes
	}
	as.StartTLS()
	return as
}

func newUnstartedFakeAS(t testing.TB) *fakeAS {
	as := &fakeAS{t: t, ClientID: "client-1", Secret: "s3cr3t:+/%-value", RequirePKCE: true, ScopeSep: " ",
		Lifetime: time.Hour, arrived: make(chan struct{}, 1000), holds: map[string]chan struct{}{},
		clients: map[string]asClient{}, jtis: map[string]bool{}, codes: map[string]*asCode{},
		access: map[string]*asToken{}, refresh: map[string]*asToken{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/oauth/token", as.serveToken)
	mux.HandleFunc("/oauth/refresh", as.serveToken)
	mux.HandleFunc("/oauth/authorize", as.serveAuthorize)
	mux.HandleFunc("/oauth/revoke", as.serveRevoke)
	mux.HandleFunc("/.well-known/oauth-authorization-server", as.serveMetadata)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rec := as.arrive(r)
		as.oauthError(w, rec, http.StatusNotFound, "not_found", r.Method+" "+r.URL.Path)
	})
	as.Server = httptest.NewUnstartedServer(mux)
	t.Cleanup(func() {
		as.releaseAll() // a test that failed while holding requests
		as.Close()
	})
	return as
}

func (as *fakeAS) tokenURL() string     { return as.URL + "/oauth/token" }
func (as *fakeAS) authorizeURL() string { return as.URL + "/oauth/authorize" }
func (as *fakeAS) revokeURL() string    { return as.URL + "/oauth/revoke" }
func (as *fakeAS) refreshURL() string   { return as.URL + "/oauth/refresh" }

// logf logs a refusal in a test; a benchmark prints every line it logs,
// so there it says nothing.
func (as *fakeAS) logf(format string, args ...any) {
	if _, bench := as.t.(*testing.B); !bench {
		as.t.Logf(format, args...)
	}
}

func (as *fakeAS) now() time.Time {
	if as.Now != nil {
		return as.Now()
	}
	return time.Now()
}

// mintPrefixed is a Mint that names tokens <prefix>-<n>-<random>, as the
// default does with "tok".
func mintPrefixed(prefix string) func(string, int) string {
	return func(_ string, n int) string { return fmt.Sprintf("%s-%d-%s", prefix, n, randomHex(8)) }
}

// credentials are the subdirectives that name its token endpoint and its
// client, for an oauth_bearer block (e2eSite).
func (as *fakeAS) credentials() string {
	return fmt.Sprintf("\t\ttoken_url     %s\n\t\tclient_id     %s\n\t\tclient_secret \"%s\"", as.tokenURL(), as.ClientID, as.Secret)
}

// ---- settings that change at any time ----

// register makes clientID a client that authenticates with assertions
// verified by key (a public key, or the secret as []byte for
// client_secret_jwt); certS256, when set, is the x5t#S256 they must carry.
// An iss ending in .iam.gserviceaccount.com is a Google service account.
func (as *fakeAS) register(clientID string, key any, certS256 string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.clients[clientID] = asClient{key: key, certS256: certS256}
}

// addAudience accepts aud in assertions as well as the token URL.
func (as *fakeAS) addAudience(aud string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.audiences = append(as.audiences, aud)
}

// refuse answers every token request, once its client is authenticated,
// with status and an OAuth error code (Retry-After when retryAfter > 0);
// status 0 stops.
func (as *fakeAS) refuse(status int, code string, retryAfter int) {
	if status == 0 {
		as.refusal.Store(nil)
		return
	}
	as.refusal.Store(&asRefusal{status: status, code: code, retryAfter: retryAfter})
}

// setDelay makes every token answer wait d (0: none).
func (as *fakeAS) setDelay(d time.Duration) { as.delay.Store(int64(d)) }

// answerWith makes the token endpoint answer with h, after recording the
// request (nil: answer as a server does).
func (as *fakeAS) answerWith(h http.HandlerFunc) {
	if h == nil {
		as.canned.Store(nil)
		return
	}
	as.canned.Store(&h)
}

// hold makes token requests wait, as they arrive, until release is called
// (or their sender gives up); each announces itself (waitArrived).
func (as *fakeAS) hold() (release func()) { return as.holdPath("/oauth/token") }

// holdPath is hold for the requests to path.
func (as *fakeAS) holdPath(path string) (release func()) {
	gate := make(chan struct{})
	as.mu.Lock()
	as.holds[path] = gate
	as.mu.Unlock()
	return func() {
		as.mu.Lock()
		defer as.mu.Unlock()
		if as.holds[path] == gate {
			delete(as.holds, path)
			close(gate)
		}
	}
}

// releaseAll lets every held request go.
func (as *fakeAS) releaseAll() {
	as.mu.Lock()
	defer as.mu.Unlock()
	for path, gate := range as.holds {
		delete(as.holds, path)
		close(gate)
	}
	if as.holdRefresh != nil {
		close(as.holdRefresh)
		as.holdRefresh = nil
	}
}

// waitArrived waits until a held request has arrived.
func (as *fakeAS) waitArrived(t testing.TB) {
	t.Helper()
	select {
	case <-as.arrived:
	case <-time.After(15 * time.Second):
		t.Fatal("no held request reached the authorization server")
	}
}

// holdRefreshes makes each successful refresh wait, after the refresh
// token was rotated and before the answer is sent, until release is
// called; held receives a value when a refresh waits.
func (as *fakeAS) holdRefreshes() (held <-chan struct{}, release func()) {
	hold, h := make(chan struct{}), make(chan struct{}, 1)
	as.mu.Lock()
	as.holdRefresh, as.refreshHeld = hold, h
	as.mu.Unlock()
	return h, func() {
		as.mu.Lock()
		defer as.mu.Unlock()
		if as.holdRefresh == hold {
			as.holdRefresh = nil
			close(hold)
		}
	}
}

// quirkNext makes the next token answer one a client must reject although
// it is 2xx (a refresh token is rotated all the same): "token_type" (token
// type "mac"), "bad_byte" (an access token with a space), "expired_jwt" (a
// JWT access token whose exp has passed, no expires_in).
func (as *fakeAS) quirkNext(kind string) {
	as.mu.Lock()
	as.quirks = append(as.quirks, kind)
	as.mu.Unlock()
}

// setMetadata makes the metadata endpoint answer doc, or status when it
// is not 0 or 200.
func (as *fakeAS) setMetadata(doc map[string]any, status int) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.metadata, as.metaStatus = doc, status
}

// setCacheControl sets the metadata's Cache-Control header ("": none).
func (as *fakeAS) setCacheControl(v string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.metaCache = v
}

// ---- the recorder ----

// log returns every request received so far, in order.
func (as *fakeAS) log() []asRequest {
	as.mu.Lock()
	defer as.mu.Unlock()
	out := make([]asRequest, len(as.reqs))
	for i, r := range as.reqs {
		out[i] = *r
	}
	return out
}

// count counts the requests for which match is true.
func (as *fakeAS) count(match func(r *asRequest) bool) int64 {
	as.mu.Lock()
	defer as.mu.Unlock()
	var n int64
	for _, r := range as.reqs {
		if match(r) {
			n++
		}
	}
	return n
}

// tokenLog returns the requests to the token endpoints.
func (as *fakeAS) tokenLog() []asRequest {
	var out []asRequest
	for _, r := range as.log() {
		if r.isToken() {
			out = append(out, r)
		}
	}
	return out
}

// last returns the last token request; it fails the test when there was
// none.
func (as *fakeAS) last(t testing.TB) asRequest {
	t.Helper()
	l := as.tokenLog()
	if len(l) == 0 {
		t.Fatal("the authorization server received no token request")
	}
	return l[len(l)-1]
}

func (r *asRequest) isToken() bool { return r.Path == "/oauth/token" || r.Path == "/oauth/refresh" }

// tokenRequests counts the token requests that arrived (in flight ones
// too).
func (as *fakeAS) tokenRequests() int64 { return as.count((*asRequest).isToken) }

// issued counts the token answers that issued an access token.
func (as *fakeAS) issued() int64 {
	return as.count(func(r *asRequest) bool { return r.isToken() && r.Token != "" })
}

// refused counts the token requests answered with an error.
func (as *fakeAS) refused() int64 {
	return as.count(func(r *asRequest) bool { return r.isToken() && r.Error != "" })
}

// lastRefusal is the error_description of the last refused request ("").
func (as *fakeAS) lastRefusal() string {
	l := as.log()
	for i := len(l) - 1; i >= 0; i-- {
		if l[i].Error != "" {
			return l[i].Desc
		}
	}
	return ""
}

func (as *fakeAS) countGrant(grantType string, ok bool) int64 {
	return as.count(func(r *asRequest) bool {
		return r.isToken() && r.GrantType == grantType && r.Status != 0 && (!ok || r.Token != "")
	})
}

// refreshes counts successful refreshes, refreshAttempts every refresh
// answered, codeExchanges successful code exchanges.
func (as *fakeAS) refreshes() int64       { return as.countGrant("refresh_token", true) }
func (as *fakeAS) refreshAttempts() int64 { return as.countGrant("refresh_token", false) }
func (as *fakeAS) codeExchanges() int64   { return as.countGrant("authorization_code", true) }

// invalidGrants counts invalid_grant answers (codes and refresh tokens).
func (as *fakeAS) invalidGrants() int64 {
	return as.count(func(r *asRequest) bool { return r.Error == "invalid_grant" })
}

// revocations counts the authenticated revocation requests.
func (as *fakeAS) revocations() int64 {
	return as.count(func(r *asRequest) bool { return r.Path == "/oauth/revoke" && r.Status == http.StatusOK })
}

// approvals counts the authorizations that gave a code.
func (as *fakeAS) approvals() int64 {
	return as.count(func(r *asRequest) bool {
		return r.Path == "/oauth/authorize" && r.Status == http.StatusFound && r.Error == ""
	})
}

// aborted counts the requests whose sender gave up while they were held or
// delayed.
func (as *fakeAS) aborted() int64 {
	return as.count(func(r *asRequest) bool { return r.Aborted })
}

// metadataReads counts the requests for the metadata.
func (as *fakeAS) metadataReads() int64 {
	return as.count(func(r *asRequest) bool { return strings.HasPrefix(r.Path, "/.well-known/") })
}

// formats returns the body format of each token request, in order.
func (as *fakeAS) formats() []string {
	var out []string
	for _, r := range as.tokenLog() {
		out = append(out, r.Format)
	}
	return out
}

// redemptions returns the successful refreshes, in order.
func (as *fakeAS) redemptions() []asRequest {
	var out []asRequest
	for _, r := range as.tokenLog() {
		if r.GrantType == "refresh_token" && r.Token != "" {
			out = append(out, r)
		}
	}
	return out
}

// redundant returns the redemptions of a grant whose newest access token
// still had more than due left: a client refreshing ahead by at most due
// never makes one.
func (as *fakeAS) redundant(due time.Duration) []asRequest {
	var out []asRequest
	for _, r := range as.redemptions() {
		if r.NewestLeft > due {
			out = append(out, r)
		}
	}
	return out
}

// assertions returns the token requests that carried an assertion
// (verified or refused), in order.
func (as *fakeAS) assertions() []asRequest {
	var out []asRequest
	for _, r := range as.tokenLog() {
		if r.Assertion != "" {
			out = append(out, r)
		}
	}
	return out
}

// issuedLog returns the token requests that issued an access token.
func (as *fakeAS) issuedLog() []asRequest {
	var out []asRequest
	for _, r := range as.tokenLog() {
		if r.Token != "" {
			out = append(out, r)
		}
	}
	return out
}

// sentAssertions returns the assertions sent, in order.
func (as *fakeAS) sentAssertions() []string {
	var out []string
	for _, r := range as.assertions() {
		out = append(out, r.Assertion)
	}
	return out
}

// form returns the request's parameters, each with all its values.
func (r asRequest) form() url.Values { return r.Values }

// assertionParam names the parameter that carried the assertion.
func (r asRequest) assertionParam() string {
	if r.Params["client_assertion"] != "" {
		return "client_assertion"
	}
	return "assertion"
}

// tokenClients counts the client addresses (connections) token requests
// came from.
func (as *fakeAS) tokenClients() int {
	seen := map[string]bool{}
	for _, r := range as.tokenLog() {
		seen[r.Remote] = true
	}
	return len(seen)
}

// secrets returns every code, access token and refresh token the server
// issued (or seeded) and every assertion it received: none may appear in a
// log or an answer.
func (as *fakeAS) secrets() []string {
	var out []string
	for _, r := range as.log() {
		if r.Assertion != "" {
			out = append(out, r.Assertion)
		}
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	for _, m := range []map[string]*asToken{as.access, as.refresh} {
		for k := range m {
			out = append(out, k)
		}
	}
	for k := range as.codes {
		out = append(out, k)
	}
	return out
}

// arrive records r as it arrives and returns its record.
func (as *fakeAS) arrive(r *http.Request) *asRequest {
	rec := &asRequest{At: as.now(), Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Remote: r.RemoteAddr}
	as.mu.Lock()
	as.reqs = append(as.reqs, rec)
	as.mu.Unlock()
	return rec
}

// update changes a record under the lock.
func (as *fakeAS) update(fn func()) {
	as.mu.Lock()
	fn()
	as.mu.Unlock()
}

// ---- what the server knows ----

// validAccess reports whether tok is a live access token: issued here,
// not expired on the server's clock, not revoked.
func (as *fakeAS) validAccess(tok string) bool {
	as.mu.Lock()
	defer as.mu.Unlock()
	at, ok := as.access[tok]
	return ok && !at.dead && (at.grant == nil || !at.grant.ended) && as.now().Before(at.expires)
}

// revokeAccess kills one access token, as a provider does when it revokes
// a token but not the grant.
func (as *fakeAS) revokeAccess(tok string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	if at, ok := as.access[tok]; ok {
		at.dead = true
	}
}

// accessTokens returns the access tokens issued (or seeded) so far.
func (as *fakeAS) accessTokens() map[string]bool {
	as.mu.Lock()
	defer as.mu.Unlock()
	m := map[string]bool{}
	for tok := range as.access {
		m[tok] = true
	}
	return m
}

// refreshTokens returns the refresh tokens issued, split into those a
// refresh would accept and the dead ones.
func (as *fakeAS) refreshTokens() (live, dead []string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	for rt, tok := range as.refresh {
		if tok.dead || tok.grant.ended {
			dead = append(dead, rt)
		} else {
			live = append(live, rt)
		}
	}
	return live, dead
}

// setRefreshTokensDead kills every refresh token issued so far, as a
// person revoking the app at the provider does (false brings them back).
func (as *fakeAS) setRefreshTokensDead(dead bool) {
	as.mu.Lock()
	defer as.mu.Unlock()
	for _, rt := range as.refresh {
		rt.dead = dead
	}
}

// liveRefreshTokens counts the refresh tokens a refresh would accept.
func (as *fakeAS) liveRefreshTokens() int {
	as.mu.Lock()
	defer as.mu.Unlock()
	n := 0
	for _, rt := range as.refresh {
		if !rt.dead && !rt.grant.ended {
			n++
		}
	}
	return n
}

// endedGrants counts the grants revoked as a whole.
func (as *fakeAS) endedGrants() int {
	as.mu.Lock()
	defer as.mu.Unlock()
	n := 0
	for _, g := range as.grants {
		if g.ended {
			n++
		}
	}
	return n
}

// authorizedScopes returns the scopes of the last successful
// authorization, as split by ScopeSep.
func (as *fakeAS) authorizedScopes() []string {
	as.mu.Lock()
	defer as.mu.Unlock()
	return slices.Clone(as.lastScope)
}

// issueRefreshToken mints a refresh token of a new grant without a
// consent, as an operator bootstrapping a client would paste one. Its
// grant has no scope: a refresh may ask for any.
func (as *fakeAS) issueRefreshToken() string {
	as.mu.Lock()
	defer as.mu.Unlock()
	rt := "rt_" + asRandom(24)
	as.refresh[rt] = &asToken{grant: as.newGrantLocked("user-1", nil)}
	return rt
}

// asSeed is a grant made without a consent, for seeding the storage.
type asSeed struct {
	Grant, RefreshToken, AccessToken string
	Obtained, Expiry                 time.Time
}

// seed makes a grant for user as a consent would, its access token issued
// at obtained (so that its expiry can be anywhere in its lifetime).
func (as *fakeAS) seed(user string, obtained time.Time) asSeed {
	as.mu.Lock()
	defer as.mu.Unlock()
	g := as.newGrantLocked(user, nil)
	at, exp := as.mintAccessLocked(as.ClientID, g, nil, obtained)
	rt := "rt_" + asRandom(24)
	as.refresh[rt] = &asToken{grant: g}
	return asSeed{Grant: g.id, RefreshToken: rt, AccessToken: at, Obtained: obtained, Expiry: exp}
}

func (as *fakeAS) newGrantLocked(user string, scope []string) *asGrant {
	g := &asGrant{id: "g_" + asRandom(9), user: user, scope: scope}
	as.grants = append(as.grants, g)
	return g
}

// mintAccessLocked issues an access token of g (nil: none) issued at.
func (as *fakeAS) mintAccessLocked(client string, g *asGrant, scope []string, at time.Time) (string, time.Time) {
	as.minted++
	life := as.Lifetime
	if life <= 0 {
		life = time.Hour
	}
	expires := at.Add(life)
	var tok string
	switch {
	case as.JWTAccess:
		exp := at.Unix() + int64(life/time.Second)
		tok, expires = asJWT(map[string]any{"exp": exp, "iat": at.Unix(), "jti": asRandom(12)}), time.Unix(exp, 0)
	case as.Mint != nil:
		tok = as.Mint(client, as.minted)
	default:
		tok = mintPrefixed("tok")(client, as.minted)
	}
	as.access[tok] = &asToken{grant: g, scope: scope, expires: expires}
	if g != nil {
		g.newestExpiry = expires
		g.access = append(g.access, tok)
	}
	return tok, expires
}

// answerLocked issues an access token (and, for a grant, a refresh token
// unless NoRefreshToken) and returns the token response.
func (as *fakeAS) answerLocked(rec *asRequest, g *asGrant, accessScope, refreshScope []string, now time.Time) map[string]any {
	at, _ := as.mintAccessLocked(rec.Client, g, accessScope, now)
	resp := map[string]any{"access_token": at, "token_type": "Bearer"}
	if as.CreatedAt {
		resp["created_at"] = now.Unix()
	}
	if !as.NoExpiresIn && !as.JWTAccess {
		resp["expires_in"] = int(as.Lifetime / time.Second)
	}
	if len(accessScope) > 0 {
		resp["scope"] = strings.Join(accessScope, " ")
	}
	if g != nil && !as.NoRefreshToken {
		rt := "rt_" + asRandom(24)
		as.refresh[rt] = &asToken{grant: g, scope: refreshScope}
		resp["refresh_token"] = rt
		rec.Refresh = rt
	}
	rec.Token, rec.Scope = at, strings.Join(accessScope, " ")
	if g != nil {
		rec.GrantID = g.id
	}
	if len(as.quirks) > 0 {
		quirk := as.quirks[0]
		as.quirks = as.quirks[1:]
		switch quirk {
		case "token_type":
			resp["token_type"] = "mac"
		case "bad_byte":
			resp["access_token"] = "at_with a_space"
		case "expired_jwt":
			delete(resp, "expires_in")
			resp["access_token"] = asJWT(map[string]any{"exp": now.Add(-time.Minute).Unix(), "iat": now.Add(-time.Hour).Unix()})
		}
	}
	return resp
}

// revokeGrantLocked ends g: every token of it dies.
func (as *fakeAS) revokeGrantLocked(g *asGrant) {
	g.ended = true
	for _, t := range as.refresh {
		if t.grant == g {
			t.dead = true
		}
	}
	for _, t := range as.access {
		if t.grant == g {
			t.dead = true
		}
	}
}

// ---- answers ----

func (as *fakeAS) oauthError(w http.ResponseWriter, rec *asRequest, status int, code, desc string) {
	as.refuseWith(w, rec, status, code, desc, 0)
}

func (as *fakeAS) refuseWith(w http.ResponseWriter, rec *asRequest, status int, code, desc string, retryAfter int) {
	as.update(func() { rec.Status, rec.Error, rec.Desc = status, code, desc })
	as.logf("fakeAS: %s %s: %d %s: %s", rec.Method, rec.Path, status, code, desc)
	if retryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(retryAfter))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="fakeAS"`)
	}
	asWriteJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

func asWriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// wait holds a request while its path is held and delays a token request;
// false when its sender gave up meanwhile.
func (as *fakeAS) wait(r *http.Request, rec *asRequest) bool {
	as.mu.Lock()
	gate := as.holds[r.URL.Path]
	as.mu.Unlock()
	if gate != nil {
		select {
		case as.arrived <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-r.Context().Done():
			as.update(func() { rec.Aborted = true })
			return false
		}
	}
	if d := time.Duration(as.delay.Load()); d > 0 && rec.isToken() {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			as.update(func() { rec.Aborted = true })
			return false
		}
	}
	return true
}

// ---- /oauth/authorize ----

func (as *fakeAS) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	rec := as.arrive(r)
	if !as.wait(r, rec) {
		return
	}
	plain := func(status int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		as.update(func() { rec.Status, rec.Error, rec.Desc = status, "invalid_request", msg })
		as.logf("fakeAS: %s %s: %d %s", r.Method, r.URL.Path, status, msg)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		io.WriteString(w, msg+"\n")
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		plain(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		plain(http.StatusBadRequest, "malformed query: %v", err)
		return
	}
	params := map[string]string{}
	for k := range q {
		params[k] = q.Get(k)
	}
	as.update(func() { rec.Params, rec.Values, rec.Client = params, q, q.Get("client_id") })
	// Until client_id and redirect_uri are known good, nothing is sent to
	// the redirect URI (RFC 6749 4.1.2.1).
	if len(q["client_id"]) != 1 || q.Get("client_id") != as.ClientID {
		plain(http.StatusBadRequest, "invalid_request: unknown or repeated client_id %q", q["client_id"])
		return
	}
	if len(q["redirect_uri"]) != 1 || q.Get("redirect_uri") != as.RedirectURI {
		plain(http.StatusBadRequest, "invalid_request: redirect_uri %q does not match the registered %q", q["redirect_uri"], as.RedirectURI)
		return
	}
	state := q.Get("state")
	fail := func(code, desc string) {
		as.update(func() { rec.Status, rec.Error, rec.Desc = http.StatusFound, code, desc })
		as.logf("fakeAS: GET /oauth/authorize: redirecting with %s: %s", code, desc)
		v := url.Values{"error": {code}, "error_description": {desc}}
		if state != "" {
			v.Set("state", state)
		}
		as.redirect(w, v)
	}
	for k, vs := range q {
		if len(vs) > 1 {
			fail("invalid_request", "parameter "+k+" is repeated")
			return
		}
	}
	if state == "" {
		fail("invalid_request", "state is required")
		return
	}
	switch rt := q.Get("response_type"); rt {
	case "code":
	case "":
		fail("invalid_request", "response_type is required")
		return
	default:
		fail("unsupported_response_type", "response_type must be code, not "+rt)
		return
	}
	var scope []string
	if s := q.Get("scope"); s != "" {
		scope = strings.Split(s, as.ScopeSep)
		for _, sc := range scope {
			if !asScopeToken(sc) {
				fail("invalid_scope", fmt.Sprintf("%q is not a scope (scopes are separated by %q)", sc, as.ScopeSep))
				return
			}
		}
	} else if as.RequireScope {
		fail("invalid_request", "scope is required")
		return
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	switch {
	case challenge == "" && method != "":
		fail("invalid_request", "code_challenge_method without code_challenge")
		return
	case challenge == "" && as.RequirePKCE:
		fail("invalid_request", "code challenge required")
		return
	case challenge != "" && method != "S256":
		// A missing method means plain (RFC 7636 4.3).
		fail("invalid_request", "transform algorithm not supported: code_challenge_method must be S256")
		return
	case challenge != "" && !asValidChallenge(challenge):
		fail("invalid_request", "code_challenge must be 43 base64url characters")
		return
	}
	if as.Deny.Load() {
		fail("access_denied", "The user denied access")
		return
	}
	code := "ac_" + asRandom(24)
	as.mu.Lock()
	as.codes[code] = &asCode{grant: as.newGrantLocked("user-1", scope), redirectURI: as.RedirectURI, challenge: challenge,
		scope: scope, expires: as.now().Add(asCodeLifetime)}
	as.lastScope = slices.Clone(scope)
	rec.Status = http.StatusFound
	as.mu.Unlock()
	as.redirect(w, url.Values{"code": {code}, "state": {state}})
}

// redirect answers 302 to the registered redirect URI with params added
// to the query it already has (RFC 6749 3.1.2).
func (as *fakeAS) redirect(w http.ResponseWriter, params url.Values) {
	u, err := url.Parse(as.RedirectURI)
	if err != nil {
		http.Error(w, "registered redirect_uri is not a URL: "+err.Error(), http.StatusInternalServerError)
		return
	}
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Location", u.String())
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusFound)
}

// ---- /oauth/token and /oauth/refresh ----

func (as *fakeAS) serveToken(w http.ResponseWriter, r *http.Request) {
	rec := as.arrive(r)
	if !as.wait(r, rec) {
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		as.oauthError(w, rec, http.StatusMethodNotAllowed, "invalid_request", "the token endpoint takes POST")
		return
	}
	p, all, format, err := asParams(r)
	as.update(func() {
		rec.Params, rec.Values, rec.Format, rec.GrantType = p, all, format, p["grant_type"]
		if a := cmp.Or(p["client_assertion"], p["assertion"]); a != "" {
			rec.Assertion, rec.JOSE = a, joseHeader(a)
		}
	})
	if h := as.canned.Load(); h != nil {
		sw := &asStatusWriter{ResponseWriter: w}
		(*h)(sw, r)
		as.update(func() { rec.Status = sw.status })
		return
	}
	switch {
	case err != nil:
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", err.Error())
		return
	case as.Format != "" && format != as.Format:
		// What IdentityServer does with a JSON body, and what a JSON-only
		// API does with a form.
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "unsupported content type "+r.Header.Get("Content-Type"))
		return
	}
	grantType := p["grant_type"]
	// Cal.com's refresh: the refresh token as a bearer token, the
	// client's credentials in the body.
	bearerRT := ""
	if scheme, rest, _ := strings.Cut(r.Header.Get("Authorization"), " "); strings.EqualFold(scheme, "Bearer") {
		switch {
		case grantType != "refresh_token":
			as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "a Bearer Authorization header is only accepted with grant_type=refresh_token")
			return
		case p["refresh_token"] != "":
			as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "refresh token both in the body and in the Authorization header")
			return
		}
		if bearerRT = strings.TrimSpace(rest); bearerRT == "" {
			as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "empty Bearer Authorization header")
			return
		}
	}
	if as.SeparateRefresh {
		switch {
		case r.URL.Path == "/oauth/token" && grantType == "refresh_token":
			as.oauthError(w, rec, http.StatusBadRequest, "unsupported_grant_type", "refresh tokens are redeemed at /oauth/refresh")
			return
		case r.URL.Path == "/oauth/refresh" && (grantType != "refresh_token" || bearerRT == ""):
			as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "/oauth/refresh takes grant_type=refresh_token with the refresh token as a Bearer credential")
			return
		}
	} else if r.URL.Path != "/oauth/token" {
		as.oauthError(w, rec, http.StatusNotFound, "invalid_request", "no such endpoint")
		return
	}
	mode := as.ClientAuth
	if bearerRT != "" {
		mode = "body"
	}
	// The JWT bearer grant authenticates by itself (Google's service
	// accounts send nothing else).
	bearerGrant := grantType == asJWTBearer
	if !as.authenticate(w, r, rec, p, mode, bearerGrant) {
		return
	}
	if ref := as.refusal.Load(); ref != nil {
		as.refuseWith(w, rec, ref.status, ref.code, "refused by the test", ref.retryAfter)
		return
	}
	for k, v := range as.Want {
		if p[k] != v {
			as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", fmt.Sprintf("%s must be %q, got %q", k, v, p[k]))
			return
		}
	}
	switch grantType {
	case "client_credentials":
		as.issueDirect(w, rec, p["scope"])
	case asJWTBearer:
		claims, err := as.verifyAssertion(p["assertion"], true)
		if err != nil {
			as.oauthError(w, rec, http.StatusBadRequest, "invalid_grant", err.Error())
			return
		}
		as.update(func() { claims.into(rec); rec.Client = claims.iss })
		as.issueDirect(w, rec, claims.scope)
	case "authorization_code":
		as.exchangeCode(w, rec, p)
	case "refresh_token":
		as.redeem(w, rec, p, bearerRT)
	case "":
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "grant_type is required")
	default:
		as.oauthError(w, rec, http.StatusBadRequest, "unsupported_grant_type", "grant_type "+grantType+" is not supported")
	}
}

// issueDirect answers a grant that gives a token without a grant to
// refresh: client_credentials and the JWT bearer grant.
func (as *fakeAS) issueDirect(w http.ResponseWriter, rec *asRequest, scope string) {
	var sc []string
	if scope != "" {
		sc = strings.Split(scope, " ")
	}
	as.mu.Lock()
	if as.RevokeEarlierDirect {
		for _, tok := range as.direct {
			if at := as.access[tok]; at != nil {
				at.dead = true
			}
		}
		as.direct = as.direct[:0]
	}
	resp := as.answerLocked(rec, nil, sc, nil, as.now())
	if as.RevokeEarlierDirect {
		as.direct = append(as.direct, rec.Token)
	}
	rec.Status = http.StatusOK
	as.mu.Unlock()
	asWriteJSON(w, http.StatusOK, resp)
}

func (as *fakeAS) exchangeCode(w http.ResponseWriter, rec *asRequest, p map[string]string) {
	code := p["code"]
	if code == "" {
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "code is required")
		return
	}
	now := as.now()
	as.mu.Lock()
	desc := func() string {
		c, ok := as.codes[code]
		switch {
		case !ok:
			return "The authorization code is invalid"
		case c.used:
			// RFC 6749 4.1.2: a code used twice revokes what it gave.
			as.revokeGrantLocked(c.grant)
			return "The authorization code was already used; the tokens issued from it are revoked"
		case !now.Before(c.expires):
			return "The authorization code has expired"
		case p["redirect_uri"] != c.redirectURI:
			return fmt.Sprintf("redirect_uri %q does not match the authorization request's %q", p["redirect_uri"], c.redirectURI)
		}
		v := p["code_verifier"]
		switch {
		case c.challenge == "" && v != "":
			return "code_verifier sent, but the authorization request had no code_challenge"
		case c.challenge == "":
		case v == "":
			return "code_verifier is required"
		case !asValidVerifier(v):
			return "code_verifier must be 43-128 unreserved characters"
		case asS256(v) != c.challenge:
			return "code_verifier does not match the code_challenge"
		}
		return ""
	}()
	if desc != "" {
		as.mu.Unlock()
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_grant", desc)
		return
	}
	c := as.codes[code]
	c.used = true
	resp := as.answerLocked(rec, c.grant, c.scope, c.scope, now)
	rec.Status = http.StatusOK
	as.mu.Unlock()
	asWriteJSON(w, http.StatusOK, resp)
}

func (as *fakeAS) redeem(w http.ResponseWriter, rec *asRequest, p map[string]string, bearerRT string) {
	rt := p["refresh_token"]
	if rt == "" {
		rt = bearerRT
	}
	if rt == "" {
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "refresh_token is required")
		return
	}
	var asked []string
	if s := p["scope"]; s != "" {
		asked = strings.Split(s, " ")
		for _, sc := range asked {
			if !asScopeToken(sc) {
				as.oauthError(w, rec, http.StatusBadRequest, "invalid_scope", fmt.Sprintf("%q is not a scope (scopes are separated by spaces)", sc))
				return
			}
		}
	}
	now := as.now()
	as.mu.Lock()
	tok, ok := as.refresh[rt]
	if !ok || tok.dead || tok.grant.ended {
		if ok && tok.rotated && as.ReuseRevokesGrant {
			as.revokeGrantLocked(tok.grant)
		}
		as.mu.Unlock()
		desc := "The refresh token is invalid"
		if as.InvalidGrantDescription != nil {
			desc = as.InvalidGrantDescription(rt)
		}
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_grant", desc)
		return
	}
	g := tok.grant
	scope := tok.scope
	if asked != nil {
		for _, sc := range asked {
			if tok.scope != nil && !slices.Contains(tok.scope, sc) {
				as.mu.Unlock()
				as.oauthError(w, rec, http.StatusBadRequest, "invalid_scope", "scope "+sc+" was not granted")
				return
			}
		}
		scope = asked
	}
	rec.NewestLeft = g.newestExpiry.Sub(now)
	if as.RevokeEarlierAccess {
		for _, tok := range g.access {
			if at := as.access[tok]; at != nil {
				at.dead = true
			}
		}
		g.access = g.access[:0]
	}
	noRotation := as.KeepRefreshToken
	if !noRotation {
		// Rotation: the refresh token dies now, a new one replaces it with
		// the grant's scope (RFC 6749 6).
		tok.dead, tok.rotated = true, true
	}
	resp := as.answerLocked(rec, g, scope, tok.scope, now)
	if noRotation {
		delete(as.refresh, rec.Refresh)
		delete(resp, "refresh_token")
		rec.Refresh = ""
	}
	rec.Status = http.StatusOK
	hold, held := as.holdRefresh, as.refreshHeld
	as.mu.Unlock()
	if hold != nil {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
	}
	asWriteJSON(w, http.StatusOK, resp)
}

// ---- /oauth/revoke (RFC 7009) ----

func (as *fakeAS) serveRevoke(w http.ResponseWriter, r *http.Request) {
	rec := as.arrive(r)
	if !as.wait(r, rec) {
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		as.oauthError(w, rec, http.StatusMethodNotAllowed, "invalid_request", "the revocation endpoint takes POST")
		return
	}
	p, all, format, err := asParams(r)
	as.update(func() { rec.Params, rec.Values, rec.Format = p, all, format })
	if err != nil {
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if !as.authenticate(w, r, rec, p, "", false) {
		return
	}
	tok := p["token"]
	if tok == "" {
		as.oauthError(w, rec, http.StatusBadRequest, "invalid_request", "token is required")
		return
	}
	// token_type_hint is only a hint (RFC 7009 2.1): both kinds are looked up.
	as.mu.Lock()
	var g *asGrant
	if rt, ok := as.refresh[tok]; ok {
		rt.dead, g = true, rt.grant
		for _, at := range as.access {
			if at.grant == g {
				at.dead = true
			}
		}
	} else if at, ok := as.access[tok]; ok {
		at.dead, g = true, at.grant
	}
	if g != nil && as.RevocationEndsUser {
		for _, other := range as.grants {
			if other.user == g.user {
				as.revokeGrantLocked(other)
			}
		}
	}
	rec.Status = http.StatusOK
	as.mu.Unlock()
	asWriteJSON(w, http.StatusOK, map[string]any{})
}

// ---- /.well-known/oauth-authorization-server (RFC 8414) ----

func (as *fakeAS) serveMetadata(w http.ResponseWriter, r *http.Request) {
	rec := as.arrive(r)
	as.mu.Lock()
	doc, status, cache := as.metadata, as.metaStatus, as.metaCache
	as.mu.Unlock()
	if status != 0 && status != http.StatusOK {
		as.update(func() { rec.Status = status })
		http.Error(w, "temporarily unavailable", status)
		return
	}
	if doc == nil {
		doc = map[string]any{"issuer": as.URL, "token_endpoint": as.tokenURL(), "authorization_endpoint": as.authorizeURL(),
			"revocation_endpoint": as.revokeURL(), "response_types_supported": []string{"code"},
			"grant_types_supported":                 []string{"authorization_code", "client_credentials", "refresh_token", asJWTBearer},
			"code_challenge_methods_supported":      []string{"S256"},
			"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post", "private_key_jwt", "client_secret_jwt", "tls_client_auth", "none"}}
	}
	as.update(func() { rec.Status = http.StatusOK })
	if cache != "" {
		w.Header().Set("Cache-Control", cache)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(doc)
}

// ---- client authentication ----

// authenticate checks the client's credentials: a TLS client
// certificate, an assertion, Basic (RFC 6749 2.3.1: each part
// form-urlencoded) or client_secret in the body; mode "body" or "basic"
// allows only that way of sending the secret. More than one way at once
// is refused (RFC 6749 2.3). A JWT bearer grant (selfAuth) needs none. On
// failure it answers and returns false.
func (as *fakeAS) authenticate(w http.ResponseWriter, r *http.Request, rec *asRequest, p map[string]string, mode string, selfAuth bool) bool {
	deny := func(status int, code, desc string) bool {
		as.oauthError(w, rec, status, code, desc)
		return false
	}
	ok := func(method, client string) bool {
		as.update(func() { rec.Auth, rec.Client = method, client })
		return true
	}
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	basic := strings.EqualFold(scheme, "Basic")
	_, bodySecret := p["client_secret"]
	_, assertion := p["client_assertion"]
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cn := r.TLS.PeerCertificates[0].Subject.CommonName
		switch {
		case p["client_id"] != cn:
			return deny(http.StatusUnauthorized, "invalid_client", fmt.Sprintf("client_id %q is not the certificate's %q", p["client_id"], cn))
		case basic || bodySecret || assertion:
			return deny(http.StatusBadRequest, "invalid_request", "a second client credential besides the certificate")
		}
		return ok("tls_client_auth", cn)
	}
	n := 0
	for _, used := range []bool{basic, bodySecret, assertion} {
		if used {
			n++
		}
	}
	if n > 1 {
		return deny(http.StatusBadRequest, "invalid_request", "more than one client authentication method")
	}
	var id, secret, method string
	switch {
	case assertion:
		if at := p["client_assertion_type"]; at != asAssertionType {
			return deny(http.StatusUnauthorized, "invalid_client", fmt.Sprintf("client_assertion_type %q is not jwt-bearer", at))
		}
		claims, err := as.verifyAssertion(p["client_assertion"], false)
		if err == nil && p["client_id"] != "" && p["client_id"] != claims.iss {
			err = fmt.Errorf("client_id %q is not the assertion's iss %q", p["client_id"], claims.iss)
		}
		if err != nil {
			return deny(http.StatusUnauthorized, "invalid_client", err.Error())
		}
		as.update(func() { claims.into(rec) })
		method = "private_key_jwt"
		if _, hmac := claims.key.([]byte); hmac {
			method = "client_secret_jwt"
		}
		return ok(method, claims.iss)
	case basic:
		if mode == "body" {
			return deny(http.StatusUnauthorized, "invalid_client", "this client authenticates with client_id and client_secret in the body, not Basic")
		}
		dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
		u, pw, found := strings.Cut(string(dec), ":")
		if err != nil || !found {
			return deny(http.StatusUnauthorized, "invalid_client", "malformed Basic credentials")
		}
		var err1, err2 error
		id, err1 = url.QueryUnescape(u)
		secret, err2 = url.QueryUnescape(pw)
		if err1 != nil || err2 != nil {
			return deny(http.StatusUnauthorized, "invalid_client", "Basic credentials are not form-urlencoded (RFC 6749 2.3.1)")
		}
		if bid, has := p["client_id"]; has && bid != id {
			return deny(http.StatusUnauthorized, "invalid_client", "client_id in the body differs from the Basic user")
		}
		method = "client_secret_basic"
	case bodySecret:
		if mode == "basic" {
			return deny(http.StatusUnauthorized, "invalid_client", "this client authenticates with HTTP Basic, not client_secret in the body")
		}
		id, secret, method = p["client_id"], p["client_secret"], "client_secret_post"
	case selfAuth:
		return true
	default:
		return deny(http.StatusUnauthorized, "invalid_client", "client authentication required")
	}
	if subtle.ConstantTimeCompare([]byte(id), []byte(as.ClientID)) != 1 ||
		subtle.ConstantTimeCompare([]byte(secret), []byte(as.Secret)) != 1 {
		return deny(http.StatusUnauthorized, "invalid_client", "client authentication failed")
	}
	return ok(method, id)
}

// asClaims is what a verified assertion says.
type asClaims struct {
	iss, sub, jti, kid, scope string
	key                       any
}

func (c asClaims) into(rec *asRequest) {
	rec.JTI, rec.Sub, rec.KID = c.jti, c.sub, c.kid
}

// asAlgs are the algorithms the server accepts.
var asAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512}

// verifyAssertion checks an assertion against the key registered for its
// iss: for client authentication iss = sub = the client; for the JWT
// bearer grant (bearerGrant) sub names the subject (RFC 7523 3), which only
// a Google service account may leave out, and a scope claim is required
// (as Google does). aud is the token URL or an added audience; exp within
// 5 minutes of iat and not passed, iat and nbf not in the future; jti
// present and never seen; x5t#S256 when a certificate is registered.
func (as *fakeAS) verifyAssertion(assertion string, bearerGrant bool) (asClaims, error) {
	var c asClaims
	if assertion == "" {
		return c, errors.New("no assertion")
	}
	tok, err := jwt.ParseSigned(assertion, asAlgs)
	if err != nil {
		return c, fmt.Errorf("malformed assertion: %v", err)
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return c, fmt.Errorf("malformed claims: %v", err)
	}
	as.mu.Lock()
	client, ok := as.clients[unverified.Issuer]
	audiences := append([]string{as.tokenURL()}, as.audiences...)
	as.mu.Unlock()
	if !ok {
		return c, fmt.Errorf("unknown client (iss %q)", unverified.Issuer)
	}
	hdr := tok.Headers[0]
	if typ, ok := hdr.ExtraHeaders["typ"]; ok && typ != "JWT" {
		return c, fmt.Errorf("typ %v is not JWT", typ)
	}
	if !asAlgFitsKey(jose.SignatureAlgorithm(hdr.Algorithm), client.key) {
		return c, fmt.Errorf("alg %s does not fit the registered key", hdr.Algorithm)
	}
	var claims jwt.Claims
	var extra struct {
		Scope string `json:"scope"`
	}
	if err := tok.Claims(client.key, &claims, &extra); err != nil {
		return c, fmt.Errorf("signature does not verify with the registered key: %v", err)
	}
	now := as.now()
	switch {
	case !bearerGrant && claims.Subject != claims.Issuer:
		return c, fmt.Errorf("sub %q is not the client id %q", claims.Subject, claims.Issuer)
	case bearerGrant && claims.Subject == "" && !strings.HasSuffix(claims.Issuer, ".iam.gserviceaccount.com"):
		return c, errors.New("no sub (RFC 7523 §3: the assertion must name its subject)")
	case !slices.ContainsFunc(audiences, claims.Audience.Contains):
		return c, fmt.Errorf("aud %v is not this token endpoint", []string(claims.Audience))
	case claims.Expiry == nil:
		return c, errors.New("no exp")
	case claims.IssuedAt == nil:
		return c, errors.New("no iat")
	case claims.Expiry.Time().Sub(claims.IssuedAt.Time()) > 5*time.Minute:
		return c, errors.New("exp is more than 5 minutes after iat")
	case !now.Before(claims.Expiry.Time()):
		return c, fmt.Errorf("expired at %s", claims.Expiry.Time().UTC().Format(time.RFC3339))
	case claims.IssuedAt.Time().After(now.Add(asSkew)):
		return c, errors.New("iat is in the future")
	case claims.NotBefore != nil && claims.NotBefore.Time().After(now.Add(asSkew)):
		return c, errors.New("nbf is in the future")
	case claims.ID == "":
		return c, errors.New("no jti")
	case bearerGrant && extra.Scope == "":
		return c, errors.New("no scope claim")
	}
	if client.certS256 != "" {
		if got, _ := hdr.ExtraHeaders["x5t#S256"].(string); got != client.certS256 {
			return c, fmt.Errorf("x5t#S256 %q does not match the registered certificate", got)
		}
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.jtis[claims.ID] {
		return c, fmt.Errorf("jti %s was used before", claims.ID)
	}
	as.jtis[claims.ID] = true
	return asClaims{iss: claims.Issuer, sub: claims.Subject, jti: claims.ID, kid: hdr.KeyID, scope: extra.Scope,
		key: client.key}, nil
}

// asAlgFitsKey reports whether alg is one that key verifies: no HMAC
// keyed with a public key, no RSA with an EC key.
func asAlgFitsKey(alg jose.SignatureAlgorithm, key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return slices.Contains(asAlgs[:6], alg)
	case *ecdsa.PublicKey:
		return alg == jose.ES256 && k.Curve.Params().Name == "P-256" || alg == jose.ES384 && k.Curve.Params().Name == "P-384"
	case ed25519.PublicKey:
		return alg == jose.EdDSA
	case []byte:
		return alg == jose.HS256 || alg == jose.HS384 || alg == jose.HS512
	}
	return false
}

// joseHeader decodes the header of a compact JWS; nil if it is not one.
func joseHeader(compact string) map[string]any {
	part, _, _ := strings.Cut(compact, ".")
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return nil
	}
	var h map[string]any
	if json.Unmarshal(b, &h) != nil {
		return nil
	}
	return h
}

// ---- the wire ----

// asParams reads a token or revocation request's parameters from a
// form-urlencoded or JSON body, and says which it was: each parameter once
// (a repeated one is invalid_request, except resource: RFC 8707), and all
// of them with every value. Empty values count as absent.
func asParams(r *http.Request) (map[string]string, url.Values, string, error) {
	p, all := map[string]string{}, url.Values{}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return p, all, "", fmt.Errorf("bad or missing Content-Type %q", r.Header.Get("Content-Type"))
	}
	format := map[string]string{"application/x-www-form-urlencoded": "form", "application/json": "json"}[mt]
	if r.URL.RawQuery != "" {
		return p, all, format, errors.New("parameters must be sent in the body, not in the URL")
	}
	const limit = 1 << 20
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return p, all, format, fmt.Errorf("reading the body: %v", err)
	}
	if len(body) > limit {
		return p, all, format, errors.New("body larger than 1 MiB")
	}
	switch format {
	case "form":
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return p, all, format, fmt.Errorf("malformed form body: %v", err)
		}
		for k, vs := range vals {
			if len(vs) > 1 && k != "resource" {
				return p, all, format, fmt.Errorf("parameter %s is repeated", k)
			}
			if vs[0] != "" {
				p[k], all[k] = vs[0], vs
			}
		}
	case "json":
		var obj map[string]any
		if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
			return p, all, format, errors.New("the body is not a JSON object")
		}
		for k, v := range obj {
			switch v := v.(type) {
			case nil:
			case string:
				if v != "" {
					p[k] = v
					all.Set(k, v)
				}
			default:
				return p, all, format, fmt.Errorf("parameter %s must be a string", k)
			}
		}
	default:
		return p, all, format, fmt.Errorf("unsupported Content-Type %s", mt)
	}
	return p, all, format, nil
}

// asStatusWriter remembers the status of a canned answer.
type asStatusWriter struct {
	http.ResponseWriter
	status int
}

func (w *asStatusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *asStatusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// asRandom returns n random bytes from crypto/rand, base64url-encoded.
func asRandom(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// asS256 is the PKCE S256 transform: BASE64URL(SHA256(verifier)).
func asS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// asValidVerifier: 43-128 characters of [A-Za-z0-9-._~] (RFC 7636 4.1).
func asValidVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for _, c := range []byte(v) {
		if !asAlnum(c) && !strings.ContainsRune("-._~", rune(c)) {
			return false
		}
	}
	return true
}

// asValidChallenge: an unpadded base64url SHA-256 (43 characters).
func asValidChallenge(c string) bool {
	if len(c) != 43 {
		return false
	}
	for _, ch := range []byte(c) {
		if !asAlnum(ch) && ch != '-' && ch != '_' {
			return false
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(c)
	return err == nil && len(b) == sha256.Size
}

func asAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// asScopeToken: a non-empty scope-token of NQCHARs (RFC 6749 3.3), so a
// space, a quote or a backslash is not part of one.
func asScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// asJWT returns an unsigned JWT ({"alg":"none"}) with claims and a random
// signature segment.
func asJWT(claims map[string]any) string {
	payload, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(payload) + "." + asRandom(16)
}

// ---- talking to it directly (its self-tests, and tests that play a
// client) ----

var asNoRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// asPKCE returns a fresh verifier and its S256 challenge.
func asPKCE() (verifier, challenge string) {
	verifier = asRandom(32)
	return verifier, asS256(verifier)
}

// asAuthorize sends GET /oauth/authorize and returns the status, the
// query of the Location header (nil without one) and the body.
func asAuthorize(t *testing.T, as *fakeAS, q url.Values) (int, url.Values, string) {
	t.Helper()
	resp, err := asNoRedirect.Get(as.authorizeURL() + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var loc url.Values
	if l := resp.Header.Get("Location"); l != "" {
		u, err := url.Parse(l)
		if err != nil {
			t.Fatalf("bad Location %q: %v", l, err)
		}
		loc = u.Query()
	}
	return resp.StatusCode, loc, string(body)
}

// asPost POSTs body (url.Values as a form, anything else as JSON) with
// optional headers (name, value pairs) and decodes the JSON answer.
func asPost(t *testing.T, u string, body any, hdr ...string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	ct := "application/json"
	if form, ok := body.(url.Values); ok {
		rd, ct = strings.NewReader(form.Encode()), "application/x-www-form-urlencoded"
	} else {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(http.MethodPost, u, rd)
	req.Header.Set("Content-Type", ct)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := asNoRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: status %d, body not JSON: %v", u, resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

// asWantError checks an OAuth error answer.
func asWantError(t *testing.T, what string, status int, body map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || body["error"] != wantCode {
		t.Errorf("%s: got %d %v, want %d %s", what, status, body, wantStatus, wantCode)
	}
}

// asGet sends a GET with an Authorization ("" none) and returns the status,
// the body and the WWW-Authenticate header.
func asGet(t *testing.T, u, authz string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := asNoRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("WWW-Authenticate")
}

// The client-credentials wire: the body formats and ways of
// authenticating it is told to accept, the parameters it wants, and what
// the recorder keeps of each request.
func TestFakeASClientCredentials(t *testing.T) {
	as := newFakeAS(t)
	as.Format, as.ClientAuth, as.Want = "form", "basic", map[string]string{"audience": "api"}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(as.ClientID)+":"+url.QueryEscape(as.Secret)))
	rawBasic := "Basic " + base64.StdEncoding.EncodeToString([]byte(as.ClientID+":"+as.Secret))
	form := url.Values{"grant_type": {"client_credentials"}, "audience": {"api"}, "scope": {"read"}}
	for name, c := range map[string]struct {
		body       any
		hdr        []string
		wantStatus int
		want       string
	}{
		"JSON to a form server":  {map[string]string{"grant_type": "client_credentials", "audience": "api"}, []string{"Authorization", basic}, 400, "invalid_request"},
		"secret in the body":     {url.Values{"grant_type": {"client_credentials"}, "audience": {"api"}, "client_id": {as.ClientID}, "client_secret": {as.Secret}}, nil, 401, "invalid_client"},
		"Basic not form-encoded": {form, []string{"Authorization", rawBasic}, 401, "invalid_client"},
		"no audience":            {url.Values{"grant_type": {"client_credentials"}}, []string{"Authorization", basic}, 400, "invalid_request"},
		"no client":              {form, nil, 401, "invalid_client"},
	} {
		st, b := asPost(t, as.tokenURL(), c.body, c.hdr...)
		asWantError(t, name, st, b, c.wantStatus, c.want)
	}
	st, tok := asPost(t, as.tokenURL(), form, "Authorization", basic)
	at, _ := tok["access_token"].(string)
	if st != 200 || !strings.HasPrefix(at, "tok-1-") || tok["expires_in"] != 3600.0 || tok["scope"] != "read" || tok["refresh_token"] != nil || !as.validAccess(at) {
		t.Fatalf("token: %d %v", st, tok)
	}
	last := as.last(t)
	if last.Format != "form" || last.Auth != "client_secret_basic" || last.Client != as.ClientID || last.GrantType != "client_credentials" ||
		last.Params["audience"] != "api" || last.Token != at || last.Status != 200 || last.Header.Get("Authorization") != basic {
		t.Errorf("recorded %+v", last)
	}
	if f := as.formats(); as.tokenRequests() != 6 || as.issued() != 1 || as.refused() != 5 || strings.Count(strings.Join(f, " "), "json") != 1 || f[5] != "form" {
		t.Errorf("recorder: %d requests, %d issued, %d refused, formats %q", as.tokenRequests(), as.issued(), as.refused(), as.formats())
	}
	as.refuse(http.StatusServiceUnavailable, "temporarily_unavailable", 30)
	st, e := asPost(t, as.tokenURL(), form, "Authorization", basic)
	asWantError(t, "refused by the test", st, e, 503, "temporarily_unavailable")
	as.refuse(0, "", 0)
	as.Mint = func(client string, n int) string { return fmt.Sprintf("at-%s-%d", client, n) }
	as.NoExpiresIn = true
	if st, tok := asPost(t, as.tokenURL(), form, "Authorization", basic); st != 200 || tok["access_token"] != "at-client-1-2" || tok["expires_in"] != nil {
		t.Errorf("minted by Mint, without expires_in: %d %v", st, tok)
	}
}

// Assertions (private_key_jwt, client_secret_jwt, the JWT bearer grant)
// are verified as a provider does: a key that does not fit, a wrong claim
// or a replay is refused with what is wrong.
func TestFakeASVerifiesAssertions(t *testing.T) {
	as := newFakeAS(t)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	secret := []byte("a-client-secret-of-at-least-thirty-two-bytes")
	as.register("ec", p256.Public(), "")
	as.register("ec384", p384.Public(), "")
	as.register("hs", secret, "")
	as.register("robot@p.iam.gserviceaccount.com", p256.Public(), "")
	as.addAudience("https://idp.example/")
	now := time.Now()
	sign := func(key any, alg jose.SignatureAlgorithm, mod func(m map[string]any)) string {
		m := map[string]any{"iss": "ec", "sub": "ec", "aud": as.tokenURL(), "iat": now.Unix(), "exp": now.Unix() + 60, "jti": asRandom(12)}
		mod(m)
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := jwt.Signed(sig).Claims(m).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ec := func(mod func(m map[string]any)) string { return sign(p256, jose.ES256, mod) }
	same := func(map[string]any) {}
	clientAuth := func(a string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {asAssertionType}, "client_assertion": {a}}
	}
	for _, c := range []struct {
		name, assertion, want string // want "": accepted
	}{
		{"good", ec(same), ""},
		{"added audience", ec(func(m map[string]any) { m["aud"] = "https://idp.example/" }), ""},
		{"client_secret_jwt", sign(secret, jose.HS256, func(m map[string]any) { m["iss"], m["sub"] = "hs", "hs" }), ""},
		{"HMAC for a public key", sign(secret, jose.HS256, same), "alg HS256 does not fit"},
		{"another key", sign(p384, jose.ES384, same), "alg ES384 does not fit"},
		{"another client's key", ec(func(m map[string]any) { m["iss"], m["sub"] = "ec384", "ec384" }), "alg ES256 does not fit"},
		{"unknown iss", ec(func(m map[string]any) { m["iss"], m["sub"] = "c9", "c9" }), `unknown client (iss "c9")`},
		{"sub differs", ec(func(m map[string]any) { m["sub"] = "someone" }), `sub "someone" is not the client id "ec"`},
		{"aud other", ec(func(m map[string]any) { m["aud"] = "https://elsewhere/token" }), "is not this token endpoint"},
		{"expired", ec(func(m map[string]any) { m["exp"] = now.Unix() - 1 }), "expired at"},
		{"no exp", ec(func(m map[string]any) { delete(m, "exp") }), "no exp"},
		{"no iat", ec(func(m map[string]any) { delete(m, "iat") }), "no iat"},
		{"too long", ec(func(m map[string]any) { m["exp"] = now.Unix() + 301 }), "exp is more than 5 minutes after iat"},
		{"iat future", ec(func(m map[string]any) { m["iat"], m["exp"] = now.Unix()+120, now.Unix()+180 }), "iat is in the future"},
		{"nbf future", ec(func(m map[string]any) { m["nbf"] = now.Unix() + 120 }), "nbf is in the future"},
		{"no jti", ec(func(m map[string]any) { delete(m, "jti") }), "no jti"},
		{"garbage", "not.a.jwt", "malformed assertion"},
	} {
		st, b := asPost(t, as.tokenURL(), clientAuth(c.assertion))
		if c.want == "" {
			if st != 200 {
				t.Errorf("%s: refused: %v", c.name, b)
			}
			continue
		}
		if desc, _ := b["error_description"].(string); st != 401 || b["error"] != "invalid_client" || !strings.Contains(desc, c.want) {
			t.Errorf("%s: %d %v, want invalid_client %q", c.name, st, b, c.want)
		}
	}
	replay := ec(same)
	if st, _ := asPost(t, as.tokenURL(), clientAuth(replay)); st != 200 {
		t.Fatal("a good assertion refused")
	}
	if st, b := asPost(t, as.tokenURL(), clientAuth(replay)); st != 401 || !strings.Contains(fmt.Sprint(b["error_description"]), "was used before") {
		t.Errorf("replay: %d %v", st, b)
	}
	form := clientAuth(ec(same))
	form.Set("client_secret", as.Secret)
	st, b := asPost(t, as.tokenURL(), form)
	asWantError(t, "assertion and secret", st, b, 400, "invalid_request")
	got := as.assertions()
	if len(got) != 20 || got[0].Auth != "private_key_jwt" || got[2].Auth != "client_secret_jwt" || got[3].Auth != "" ||
		got[0].JOSE["alg"] != "ES256" || got[3].JOSE["alg"] != "HS256" || got[0].JTI == "" || got[0].Client != "ec" {
		t.Errorf("%d assertions recorded; the first: %s %s %v %q", len(got), got[0].Auth, got[0].Client, got[0].JOSE, got[0].JTI)
	}
	// The JWT bearer grant: sub required except from a Google service
	// account, and a scope claim.
	bearer := func(a string) url.Values { return url.Values{"grant_type": {asJWTBearer}, "assertion": {a}} }
	robot := func(mod func(m map[string]any)) string {
		return ec(func(m map[string]any) {
			m["iss"], m["scope"] = "robot@p.iam.gserviceaccount.com", "cloud"
			delete(m, "sub")
			mod(m)
		})
	}
	if st, tok := asPost(t, as.tokenURL(), bearer(robot(same))); st != 200 || tok["scope"] != "cloud" {
		t.Errorf("service account: %d %v", st, tok)
	}
	st, b = asPost(t, as.tokenURL(), bearer(robot(func(m map[string]any) { delete(m, "scope") })))
	asWantError(t, "no scope claim", st, b, 400, "invalid_grant")
	st, b = asPost(t, as.tokenURL(), bearer(ec(func(m map[string]any) { m["scope"] = "x"; delete(m, "sub") })))
	asWantError(t, "bearer grant without sub", st, b, 400, "invalid_grant")
}

func TestFakeASStrictness(t *testing.T) {
	const redirect = "http://127.0.0.1:1/cb?tenant=a%2Fb"
	as := newFakeAS(t)
	as.RedirectURI, as.RequireScope, as.CreatedAt = redirect, true, true
	api := newAPI(t, as)
	verifier, challenge := asPKCE()
	authQ := func(mod func(url.Values)) url.Values {
		q := url.Values{"client_id": {as.ClientID}, "response_type": {"code"}, "redirect_uri": {redirect},
			"state": {"st-1"}, "scope": {"read write"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
		if mod != nil {
			mod(q)
		}
		return q
	}

	// Refused before the redirect URI is trusted: 400, nothing sent back.
	for name, mod := range map[string]func(url.Values){
		"unknown client":       func(q url.Values) { q.Set("client_id", "app-2") },
		"decoded redirect_uri": func(q url.Values) { q.Set("redirect_uri", "http://127.0.0.1:1/cb?tenant=a/b") },
		"trailing slash":       func(q url.Values) { q.Set("redirect_uri", "http://127.0.0.1:1/cb/?tenant=a%2Fb") },
		"no redirect_uri":      func(q url.Values) { q.Del("redirect_uri") },
	} {
		if st, loc, _ := asAuthorize(t, as, authQ(mod)); st != http.StatusBadRequest || loc != nil {
			t.Errorf("authorize, %s: got %d %v, want 400 without a redirect", name, st, loc)
		}
	}
	// Refused with a redirect back carrying the error and the state.
	for name, c := range map[string]struct {
		mod  func(url.Values)
		want string
	}{
		"no PKCE":         {func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") }, "invalid_request"},
		"plain PKCE":      {func(q url.Values) { q.Set("code_challenge", verifier); q.Set("code_challenge_method", "plain") }, "invalid_request"},
		"no method":       {func(q url.Values) { q.Del("code_challenge_method") }, "invalid_request"},
		"short challenge": {func(q url.Values) { q.Set("code_challenge", challenge[:42]) }, "invalid_request"},
		"no scope":        {func(q url.Values) { q.Del("scope") }, "invalid_request"},
		"double space":    {func(q url.Values) { q.Set("scope", "read  write") }, "invalid_scope"},
		"implicit grant":  {func(q url.Values) { q.Set("response_type", "token") }, "unsupported_response_type"},
		"no state":        {func(q url.Values) { q.Del("state") }, "invalid_request"},
	} {
		st, loc, _ := asAuthorize(t, as, authQ(c.mod))
		wantState := "st-1"
		if name == "no state" {
			wantState = ""
		}
		if st != http.StatusFound || loc.Get("error") != c.want || loc.Get("state") != wantState || loc.Get("tenant") != "a/b" || loc.Get("code") != "" {
			t.Errorf("authorize, %s: got %d %v, want 302 with error=%s state=%q and the redirect URI's own query", name, st, loc, c.want, wantState)
		}
	}
	as.Deny.Store(true)
	if st, loc, _ := asAuthorize(t, as, authQ(nil)); st != http.StatusFound || loc.Get("error") != "access_denied" ||
		loc.Get("error_description") != "The user denied access" || loc.Get("state") != "st-1" {
		t.Errorf("authorize, denied: got %d %v", st, loc)
	}
	as.Deny.Store(false)
	if n := as.approvals(); n != 0 {
		t.Errorf("Authorizations = %d after refusals only", n)
	}

	// Authorize, then exchange the code.
	st, loc, body := asAuthorize(t, as, authQ(nil))
	code := loc.Get("code")
	if st != http.StatusFound || code == "" || loc.Get("state") != "st-1" || loc.Get("tenant") != "a/b" {
		t.Fatalf("authorize: got %d %v %q", st, loc, body)
	}
	if got := as.authorizedScopes(); !slices.Equal(got, []string{"read", "write"}) {
		t.Errorf("authorizedScopes = %q", got)
	}
	exch := func(mod func(url.Values)) url.Values {
		f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
			"code_verifier": {verifier}, "client_id": {as.ClientID}, "client_secret": {as.Secret}}
		if mod != nil {
			mod(f)
		}
		return f
	}
	otherVerifier, _ := asPKCE()
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(as.ClientID)+":"+url.QueryEscape(as.Secret)))
	for name, c := range map[string]struct {
		form       url.Values
		hdr        []string
		wantStatus int
		want       string
	}{
		"wrong redirect_uri": {exch(func(f url.Values) { f.Set("redirect_uri", "http://127.0.0.1:1/cb?tenant=a/b") }), nil, 400, "invalid_grant"},
		"no redirect_uri":    {exch(func(f url.Values) { f.Del("redirect_uri") }), nil, 400, "invalid_grant"},
		"wrong verifier":     {exch(func(f url.Values) { f.Set("code_verifier", otherVerifier) }), nil, 400, "invalid_grant"},
		"short verifier":     {exch(func(f url.Values) { f.Set("code_verifier", verifier[:42]) }), nil, 400, "invalid_grant"},
		"challenge sent":     {exch(func(f url.Values) { f.Set("code_verifier", challenge) }), nil, 400, "invalid_grant"},
		"no verifier":        {exch(func(f url.Values) { f.Del("code_verifier") }), nil, 400, "invalid_grant"},
		"unknown code":       {exch(func(f url.Values) { f.Set("code", "ac_nope") }), nil, 400, "invalid_grant"},
		"wrong secret":       {exch(func(f url.Values) { f.Set("client_secret", "nope") }), nil, 401, "invalid_client"},
		"no client auth":     {exch(func(f url.Values) { f.Del("client_secret") }), nil, 401, "invalid_client"},
		"two auth methods":   {exch(nil), []string{"Authorization", basic}, 400, "invalid_request"},
		"password grant":     {exch(func(f url.Values) { f.Set("grant_type", "password") }), nil, 400, "unsupported_grant_type"},
		"no grant_type":      {exch(func(f url.Values) { f.Del("grant_type") }), nil, 400, "invalid_request"},
	} {
		st, b := asPost(t, as.tokenURL(), c.form, c.hdr...)
		asWantError(t, "exchange, "+name, st, b, c.wantStatus, c.want)
	}
	if n := as.invalidGrants(); n != 7 {
		t.Errorf("InvalidGrants = %d, want 7", n)
	}
	// Refused attempts did not consume the code. This one is JSON.
	st, tok := asPost(t, as.tokenURL(), map[string]string{"grant_type": "authorization_code", "code": code,
		"redirect_uri": redirect, "code_verifier": verifier, "client_id": as.ClientID, "client_secret": as.Secret})
	at0, _ := tok["access_token"].(string)
	rt0, _ := tok["refresh_token"].(string)
	created, _ := tok["created_at"].(float64)
	if st != 200 || at0 == "" || rt0 == "" || tok["token_type"] != "Bearer" || tok["expires_in"] != 3600.0 ||
		tok["scope"] != "read write" || time.Since(time.Unix(int64(created), 0)).Abs() > 5*time.Second {
		t.Fatalf("exchange: got %d %v", st, tok)
	}
	if as.codeExchanges() != 1 || !as.validAccess(at0) || as.validAccess(rt0) || as.liveRefreshTokens() != 1 {
		t.Errorf("after exchange: exchanges %d, access valid %v, refresh counted as access %v, live refresh %d",
			as.codeExchanges(), as.validAccess(at0), as.validAccess(rt0), as.liveRefreshTokens())
	}

	// The API accepts exactly "Bearer <live access token>".
	if st, b, _ := asGet(t, api.URL+"/v1/items", "Bearer "+at0); st != 200 || b != "ok /v1/items" {
		t.Errorf("API with the token: %d %q", st, b)
	}
	for _, authz := range []string{"", "Bearer " + rt0, "bearer " + at0, "Bearer at_nope"} {
		if st, _, wa := asGet(t, api.URL+"/v1/items", authz); st != 401 || !strings.Contains(wa, `error="invalid_token"`) {
			t.Errorf("API with Authorization %q: %d, WWW-Authenticate %q", authz, st, wa)
		}
	}
	if api.answered(200) != 1 || api.answered(401) != 4 || len(api.authorizations()) != 5 || api.authorizations()[0] != "Bearer "+at0 {
		t.Errorf("API counters: ok %d, 401 %d, seen %q", api.answered(200), api.answered(401), api.authorizations())
	}

	// Refresh (form, RFC 6749 2.3.1 Basic): rotation.
	st, tok = asPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt0}}, "Authorization", basic)
	at1, _ := tok["access_token"].(string)
	rt1, _ := tok["refresh_token"].(string)
	if st != 200 || at1 == "" || rt1 == "" || rt1 == rt0 || at1 == at0 || tok["scope"] != "read write" {
		t.Fatalf("refresh: got %d %v", st, tok)
	}
	if as.refreshes() != 1 || as.liveRefreshTokens() != 1 || !as.validAccess(at1) {
		t.Errorf("after refresh: refreshes %d, live %d, new access valid %v", as.refreshes(), as.liveRefreshTokens(), as.validAccess(at1))
	}
	st, e := asPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt0},
		"client_id": {as.ClientID}, "client_secret": {as.Secret}})
	asWantError(t, "refresh with the rotated-away token", st, e, 400, "invalid_grant")
	if e["error_description"] != "The refresh token is invalid" || as.invalidGrants() != 8 {
		t.Errorf("old refresh token: %v, InvalidGrants %d", e, as.invalidGrants())
	}
	// A narrower scope is fine, a wider one is not.
	st, e = asPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}, "scope": {"read admin"}}, "Authorization", basic)
	asWantError(t, "refresh asking for more scope", st, e, 400, "invalid_scope")

	// Cal.com style: the refresh token as a bearer token, client auth in the body.
	calBody := url.Values{"grant_type": {"refresh_token"}, "client_id": {as.ClientID}, "client_secret": {as.Secret}}
	st, e = asPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}}, "Authorization", "Bearer "+rt1)
	asWantError(t, "bearer refresh without client auth", st, e, 401, "invalid_client")
	st, tok = asPost(t, as.tokenURL(), calBody, "Authorization", "Bearer "+rt1)
	at2, _ := tok["access_token"].(string)
	rt2, _ := tok["refresh_token"].(string)
	if st != 200 || at2 == "" || rt2 == "" || rt2 == rt1 {
		t.Fatalf("bearer refresh: got %d %v", st, tok)
	}
	both := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt2}, "client_id": {as.ClientID}, "client_secret": {as.Secret}}
	st, e = asPost(t, as.tokenURL(), both, "Authorization", "Bearer "+rt2)
	asWantError(t, "refresh token in body and header", st, e, 400, "invalid_request")

	// Revocation.
	st, e = asPost(t, as.revokeURL(), url.Values{"token": {rt2}})
	asWantError(t, "revoke without client auth", st, e, 401, "invalid_client")
	st, e = asPost(t, as.revokeURL(), map[string]string{"token": "rt_unknown", "client_id": as.ClientID, "client_secret": as.Secret})
	if st != 200 || len(e) != 0 {
		t.Errorf("revoke an unknown token: %d %v, want 200 {}", st, e)
	}
	st, e = asPost(t, as.revokeURL(), map[string]string{"token": rt2, "client_id": as.ClientID, "client_secret": as.Secret})
	if st != 200 || len(e) != 0 || as.revocations() != 2 {
		t.Errorf("revoke (Event Temple JSON): %d %v, Revocations %d", st, e, as.revocations())
	}
	if as.liveRefreshTokens() != 0 || as.validAccess(at2) || as.validAccess(at0) {
		t.Errorf("after revoking the refresh token: live %d, its grant's access tokens valid: %v %v",
			as.liveRefreshTokens(), as.validAccess(at2), as.validAccess(at0))
	}
	st, e = asPost(t, as.tokenURL(), calBody, "Authorization", "Bearer "+rt2)
	asWantError(t, "refresh with a revoked token", st, e, 400, "invalid_grant")

	// A second authorization; its code used twice revokes what it gave.
	_, loc, _ = asAuthorize(t, as, authQ(nil))
	code = loc.Get("code")
	st, tok = asPost(t, as.tokenURL(), exch(nil))
	at3, _ := tok["access_token"].(string)
	rt3, _ := tok["refresh_token"].(string)
	if st != 200 || !as.validAccess(at3) {
		t.Fatalf("second exchange: %d %v", st, tok)
	}
	st, e = asPost(t, as.tokenURL(), exch(nil))
	asWantError(t, "reused code", st, e, 400, "invalid_grant")
	if as.validAccess(at3) || as.liveRefreshTokens() != 0 {
		t.Errorf("tokens of a reused code still valid: access %v, live refresh %d", as.validAccess(at3), as.liveRefreshTokens())
	}
	st, e = asPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt3}}, "Authorization", basic)
	asWantError(t, "refresh token of a reused code", st, e, 400, "invalid_grant")
	// RFC 7009 form revocation of an access token, with Basic.
	_, loc, _ = asAuthorize(t, as, authQ(nil))
	code = loc.Get("code")
	_, tok = asPost(t, as.tokenURL(), exch(nil))
	at4, _ := tok["access_token"].(string)
	if st, e := asPost(t, as.revokeURL(), url.Values{"token": {at4}, "token_type_hint": {"access_token"}}, "Authorization", basic); st != 200 || as.validAccess(at4) || as.liveRefreshTokens() != 1 {
		t.Errorf("revoke an access token: %d %v, still valid %v, live refresh %d", st, e, as.validAccess(at4), as.liveRefreshTokens())
	}

	// Two processes refreshing the same token at once: one wins.
	rt := as.issueRefreshToken()
	var wg sync.WaitGroup
	var won, lost atomic.Int64
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, b := asPost(t, as.tokenURL(), map[string]string{"grant_type": "refresh_token", "refresh_token": rt,
				"client_id": as.ClientID, "client_secret": as.Secret})
			switch {
			case st == 200:
				won.Add(1)
			case st == 400 && b["error"] == "invalid_grant":
				lost.Add(1)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 || lost.Load() != 5 {
		t.Errorf("concurrent refreshes: %d won, %d lost, want 1 and 5", won.Load(), lost.Load())
	}

	// Cal.com-style lifetimes: a JWT access token, no expires_in.
	as.JWTAccess, as.Lifetime = true, 1800*time.Second
	st, tok = asPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {as.issueRefreshToken()}}, "Authorization", basic)
	jwt, _ := tok["access_token"].(string)
	_, hasExpiresIn := tok["expires_in"]
	if st != 200 || hasExpiresIn || !strings.HasPrefix(jwt, "eyJ") || !as.validAccess(jwt) {
		t.Fatalf("JWT mode: %d %v", st, tok)
	}
	parts := strings.Split(jwt, ".")
	var claims struct{ Iat, Exp int64 }
	if len(parts) == 3 {
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		json.Unmarshal(payload, &claims)
	}
	if claims.Exp-claims.Iat != 1800 {
		t.Errorf("JWT claims iat %d exp %d, want a lifetime of 1800s", claims.Iat, claims.Exp)
	}
	if hdr, _ := base64.RawURLEncoding.DecodeString(parts[0]); len(parts) != 3 || !strings.Contains(string(hdr), `"alg":"none"`) {
		t.Errorf("JWT header %q", hdr)
	}

	// Event Temple: comma-separated scopes at /authorize, client auth only in the body.
	et := newFakeAS(t)
	et.RedirectURI = "http://127.0.0.1:1/et"
	et.ScopeSep, et.ClientAuth = ",", "body"
	q := url.Values{"client_id": {et.ClientID}, "response_type": {"code"}, "redirect_uri": {et.RedirectURI},
		"state": {"x"}, "scope": {"crm_read crm_manage"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	if _, loc, _ := asAuthorize(t, et, q); loc.Get("error") != "invalid_scope" {
		t.Errorf("space-separated scopes with ScopeSep %q: %v", et.ScopeSep, loc)
	}
	q.Set("scope", "crm_read,crm_manage")
	_, loc, _ = asAuthorize(t, et, q)
	etForm := url.Values{"grant_type": {"authorization_code"}, "code": {loc.Get("code")}, "redirect_uri": {et.RedirectURI}, "code_verifier": {verifier}}
	st, e = asPost(t, et.tokenURL(), etForm, "Authorization", basic)
	asWantError(t, "Basic where the body is required", st, e, 401, "invalid_client")
	etForm.Set("client_id", et.ClientID)
	etForm.Set("client_secret", et.Secret)
	if st, tok := asPost(t, et.tokenURL(), etForm); st != 200 || tok["scope"] != "crm_read crm_manage" {
		t.Errorf("Event Temple exchange: %d %v", st, tok)
	}
	et.ClientAuth = "basic"
	st, e = asPost(t, et.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {et.issueRefreshToken()},
		"client_id": {et.ClientID}, "client_secret": {et.Secret}})
	asWantError(t, "body credentials where Basic is required", st, e, 401, "invalid_client")
}
