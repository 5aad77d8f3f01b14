package oauthbearer

// grantAS: a configurable OAuth 2.0 authorization server for tests of
// grants (authorization code and refresh token) across a fleet, with the
// behaviours of real providers that make a redundant or a lost redemption
// costly. One server, every behaviour a switch, so that each test says
// which provider it stands for:
//
//   - rotation (the default): each refresh returns a new refresh token and
//     the one presented dies; KeepRefreshToken: no rotation (Google, many
//     Doorkeeper setups);
//   - ReuseRevokesGrant: presenting a refresh token that was rotated away
//     revokes every token of its grant (RFC 9700 4.14.2 reuse detection:
//     Auth0, Okta);
//   - RevokeEarlierAccess: each rotation revokes the access tokens issued
//     before it in the grant, with no grace period (providers that keep one
//     live access token per grant);
//   - RevocationEndsUser: revoking any token ends every grant of its client
//     and user (Auth0's "refresh token revocation deletes grant", Google);
//   - a delay on every token answer (setDelay: a slow or distant provider),
//     refusals of refresh requests with a status, an OAuth error code and a
//     Retry-After (refuse), and one-off answers that a client must reject
//     although they are 2xx (quirkNext: an odd token_type, a byte not
//     allowed in a header, a JWT that has already expired).
//
// What it counts: every redemption (a refresh that succeeded) with its
// grant and how long the grant's newest access token had left when it came
// (redemptions, redundant: a redemption of a grant whose newest access
// token was not due is one a client should never make), every refresh
// attempt, invalid_grant answers, code exchanges and revocations.
//
// /authorize approves at once for the user set with setUser (default
// "user-1") and redirects back with a code; PKCE S256 is checked when the
// client sends a challenge. The token endpoint takes form or JSON bodies
// and the client's credentials in the body or as Basic. newGrantAPI is a
// resource server that accepts the live access tokens of a grantAS.
//
// A later consolidation of the test servers may fold codeAS
// (authserver_test.go, strict about the wire) and this one together; this
// one is about behaviour across time and instances, not about the wire.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// grantAS is the server. Create it with newGrantAS; set the behaviour
// fields before the first request (the atomics and setters at any time).
type grantAS struct {
	*httptest.Server
	t testing.TB

	ClientID, Secret string
	RedirectURI      string // registered; /authorize and the code exchange must match it

	// Now is the server's clock (default time.Now): a test on a fake clock
	// gives it the same one.
	Now func() time.Time

	AccessLifetime      time.Duration // default 1 h
	KeepRefreshToken    bool          // no rotation
	ReuseRevokesGrant   bool
	RevokeEarlierAccess bool
	RevocationEndsUser  bool

	// Counters: successful redemptions (refreshes), every refresh request
	// answered, invalid_grant answers, successful code exchanges,
	// revocation calls; Arrivals counts every token request as it
	// arrives, before the delay (one in flight is counted).
	Redemptions, RefreshAttempts, InvalidGrants, CodeExchanges, Revocations, Arrivals atomic.Int64

	delay   atomic.Int64 // ns every token answer waits
	refusal atomic.Pointer[gasRefusal]
	user    atomic.Pointer[string]

	mu      sync.Mutex
	grants  map[string]*gasGrant
	refresh map[string]*gasToken
	access  map[string]*gasToken
	codes   map[string]*gasCode
	quirks  []string
	log     []gasRedemption
}

// gasGrant is one grant: what one consent (or one seed) of a user gave.
type gasGrant struct {
	id, user     string
	redemptions  int
	newestExpiry time.Time // of its newest access token
	ended        bool
	access       []string // its live access tokens (revoking them is not a walk through every grant's)
}

type gasToken struct {
	grant   *gasGrant
	expires time.Time // access tokens
	issued  time.Time
	dead    bool // revoked, or (refresh tokens) used
	rotated bool // refresh tokens: replaced by a rotation
}

type gasCode struct {
	grant     *gasGrant
	challenge string
	expires   time.Time
	used      bool
}

// gasRefusal is how refresh requests are answered while set.
type gasRefusal struct {
	status     int
	code       string
	retryAfter int // seconds; 0: no Retry-After
}

// gasRedemption is one successful refresh.
type gasRedemption struct {
	At    time.Time
	Grant string
	// NewestLeft is how long the grant's newest access token had left
	// when the refresh came (negative: expired).
	NewestLeft time.Duration
}

// newGrantAS starts a server for client "fleet-app" / "fleet-secret-5c1"
// whose registered redirect URI is redirectURI ("" when no test consents).
func newGrantAS(t testing.TB, redirectURI string) *grantAS {
	as := &grantAS{t: t, ClientID: "fleet-app", Secret: "fleet-secret-5c1", RedirectURI: redirectURI,
		AccessLifetime: time.Hour, grants: map[string]*gasGrant{}, refresh: map[string]*gasToken{},
		access: map[string]*gasToken{}, codes: map[string]*gasCode{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/authorize", as.serveAuthorize)
	mux.HandleFunc("/token", as.serveToken)
	mux.HandleFunc("/revoke", as.serveRevoke)
	as.Server = httptest.NewServer(mux)
	t.Cleanup(as.Close)
	return as
}

func (as *grantAS) authorizeURL() string { return as.URL + "/authorize" }
func (as *grantAS) tokenURL() string     { return as.URL + "/token" }
func (as *grantAS) revokeURL() string    { return as.URL + "/revoke" }

func (as *grantAS) now() time.Time {
	if as.Now != nil {
		return as.Now()
	}
	return time.Now()
}

// setUser names the user who consents at the next /authorize.
func (as *grantAS) setUser(u string) { as.user.Store(&u) }

func (as *grantAS) currentUser() string {
	if u := as.user.Load(); u != nil {
		return *u
	}
	return "user-1"
}

// setDelay makes every token endpoint answer wait d (0: none).
func (as *grantAS) setDelay(d time.Duration) { as.delay.Store(int64(d)) }

// refuse makes refresh requests fail with status and an OAuth error code,
// with Retry-After when retryAfter > 0; status 0 stops refusing.
func (as *grantAS) refuse(status int, code string, retryAfter int) {
	if status == 0 {
		as.refusal.Store(nil)
		return
	}
	as.refusal.Store(&gasRefusal{status: status, code: code, retryAfter: retryAfter})
}

// quirkNext makes the next successful refresh answer one a client must
// reject although it is 2xx (the refresh token is rotated all the same):
// "token_type" (token_type "mac"), "bad_byte" (an access token with a
// space), "expired_jwt" (a JWT access token whose exp has passed, no
// expires_in).
func (as *grantAS) quirkNext(kind string) {
	as.mu.Lock()
	as.quirks = append(as.quirks, kind)
	as.mu.Unlock()
}

// gasSeed is a grant made without a consent, for seeding the storage.
type gasSeed struct {
	Grant, RefreshToken, AccessToken string
	Obtained, Expiry                 time.Time
}

// seed makes a grant for user as a consent would, with an access token
// issued at obtained (so that its expiry can be anywhere in its lifetime).
func (as *grantAS) seed(user string, obtained time.Time) gasSeed {
	as.mu.Lock()
	defer as.mu.Unlock()
	g := as.newGrantLocked(user)
	at, rt, exp := as.issueLocked(g, obtained)
	return gasSeed{Grant: g.id, RefreshToken: rt, AccessToken: at, Obtained: obtained, Expiry: exp}
}

func (as *grantAS) newGrantLocked(user string) *gasGrant {
	g := &gasGrant{id: "g_" + casRandom(9), user: user}
	as.grants[g.id] = g
	return g
}

// issueLocked mints an access token issued at and a refresh token of g.
func (as *grantAS) issueLocked(g *gasGrant, at time.Time) (access, refresh string, expiry time.Time) {
	access, refresh = "at_"+casRandom(18), "rt_"+casRandom(18)
	expiry = at.Add(as.AccessLifetime)
	as.access[access] = &gasToken{grant: g, expires: expiry, issued: at}
	g.access = append(g.access, access)
	as.refresh[refresh] = &gasToken{grant: g, issued: at}
	g.newestExpiry = expiry
	return access, refresh, expiry
}

// validAccess reports whether tok is a live access token.
func (as *grantAS) validAccess(tok string) bool {
	as.mu.Lock()
	defer as.mu.Unlock()
	at, ok := as.access[tok]
	return ok && !at.dead && !at.grant.ended && as.now().Before(at.expires)
}

// redemptions returns every successful refresh, in order.
func (as *grantAS) redemptions() []gasRedemption {
	as.mu.Lock()
	defer as.mu.Unlock()
	return slices.Clone(as.log)
}

// redundant returns the redemptions of a grant whose newest access token
// still had more than due left: a client refreshing ahead by at most due
// never makes one.
func (as *grantAS) redundant(due time.Duration) []gasRedemption {
	var out []gasRedemption
	for _, r := range as.redemptions() {
		if r.NewestLeft > due {
			out = append(out, r)
		}
	}
	return out
}

// liveRefreshTokens counts the refresh tokens a refresh would accept.
func (as *grantAS) liveRefreshTokens() int {
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
func (as *grantAS) endedGrants() int {
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

func (as *grantAS) wait(r *http.Request) bool {
	if d := time.Duration(as.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return false
		}
	}
	return true
}

func (as *grantAS) oauthError(w http.ResponseWriter, status int, code, desc string, retryAfter int) {
	if code == "invalid_grant" {
		as.InvalidGrants.Add(1)
	}
	if retryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(retryAfter))
	}
	casWriteJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// ---- /authorize ----

func (as *grantAS) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != as.ClientID || q.Get("redirect_uri") != as.RedirectURI || q.Get("response_type") != "code" || q.Get("state") == "" {
		http.Error(w, "bad authorization request", http.StatusBadRequest)
		return
	}
	as.mu.Lock()
	code := "ac_" + casRandom(18)
	as.codes[code] = &gasCode{grant: as.newGrantLocked(as.currentUser()), challenge: q.Get("code_challenge"), expires: as.now().Add(time.Minute)}
	as.mu.Unlock()
	u, _ := url.Parse(as.RedirectURI)
	v := u.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	u.RawQuery = v.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// ---- /token ----

// gasParams reads a form or JSON body and the client's credentials (body
// or Basic).
func gasParams(r *http.Request) (map[string]string, string, string) {
	p, err := casParams(r)
	if err != nil {
		return nil, "", ""
	}
	id, secret := p["client_id"], p["client_secret"]
	if u, pw, ok := r.BasicAuth(); ok {
		uid, _ := url.QueryUnescape(u)
		usec, _ := url.QueryUnescape(pw)
		id, secret = uid, usec
	}
	return p, id, secret
}

func (as *grantAS) serveToken(w http.ResponseWriter, r *http.Request) {
	as.Arrivals.Add(1)
	if !as.wait(r) {
		return
	}
	p, id, secret := gasParams(r)
	switch {
	case p == nil:
		as.oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable body", 0)
		return
	case id != as.ClientID || secret != as.Secret:
		as.oauthError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed", 0)
		return
	}
	switch p["grant_type"] {
	case "authorization_code":
		as.exchange(w, p)
	case "refresh_token":
		as.redeem(w, p)
	default:
		as.oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type "+p["grant_type"], 0)
	}
}

func (as *grantAS) exchange(w http.ResponseWriter, p map[string]string) {
	as.mu.Lock()
	c, ok := as.codes[p["code"]]
	switch {
	case !ok || c.used || !as.now().Before(c.expires) || p["redirect_uri"] != as.RedirectURI:
		as.mu.Unlock()
		as.oauthError(w, http.StatusBadRequest, "invalid_grant", "the authorization code is invalid", 0)
		return
	case c.challenge != "" && casS256(p["code_verifier"]) != c.challenge:
		as.mu.Unlock()
		as.oauthError(w, http.StatusBadRequest, "invalid_grant", "code_verifier does not match", 0)
		return
	}
	c.used = true
	now := as.now()
	at, rt, _ := as.issueLocked(c.grant, now)
	as.mu.Unlock()
	as.CodeExchanges.Add(1)
	casWriteJSON(w, http.StatusOK, map[string]any{"access_token": at, "token_type": "Bearer",
		"expires_in": int(as.AccessLifetime / time.Second), "refresh_token": rt})
}

func (as *grantAS) redeem(w http.ResponseWriter, p map[string]string) {
	as.RefreshAttempts.Add(1)
	if ref := as.refusal.Load(); ref != nil {
		as.oauthError(w, ref.status, ref.code, "refused by the test", ref.retryAfter)
		return
	}
	now := as.now()
	as.mu.Lock()
	rt, ok := as.refresh[p["refresh_token"]]
	if !ok || rt.dead || rt.grant.ended {
		if ok && rt.rotated && as.ReuseRevokesGrant {
			rt.grant.ended = true
		}
		as.mu.Unlock()
		as.oauthError(w, http.StatusBadRequest, "invalid_grant", "the refresh token is invalid", 0)
		return
	}
	g := rt.grant
	g.redemptions++
	as.log = append(as.log, gasRedemption{At: now, Grant: g.id, NewestLeft: g.newestExpiry.Sub(now)})
	if as.RevokeEarlierAccess {
		as.revokeAccessLocked(g)
	}
	at, newRT, _ := as.issueLocked(g, now)
	if as.KeepRefreshToken {
		delete(as.refresh, newRT)
		newRT = ""
	} else {
		rt.dead, rt.rotated = true, true
	}
	var quirk string
	if len(as.quirks) > 0 {
		quirk, as.quirks = as.quirks[0], as.quirks[1:]
	}
	as.mu.Unlock()
	as.Redemptions.Add(1)
	resp := map[string]any{"access_token": at, "token_type": "Bearer", "expires_in": int(as.AccessLifetime / time.Second)}
	if newRT != "" {
		resp["refresh_token"] = newRT
	}
	switch quirk {
	case "token_type":
		resp["token_type"] = "mac"
	case "bad_byte":
		resp["access_token"] = "at_with a_space"
	case "expired_jwt":
		delete(resp, "expires_in")
		claims, _ := json.Marshal(map[string]any{"exp": now.Add(-time.Minute).Unix(), "iat": now.Add(-time.Hour).Unix()})
		resp["access_token"] = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
			base64.RawURLEncoding.EncodeToString(claims) + "." + casRandom(8)
	}
	casWriteJSON(w, http.StatusOK, resp)
}

// revokeAccessLocked revokes every access token of g issued so far.
func (as *grantAS) revokeAccessLocked(g *gasGrant) {
	for _, tok := range g.access {
		if at := as.access[tok]; at != nil {
			at.dead = true
		}
	}
	g.access = g.access[:0]
}

// ---- /revoke (RFC 7009) ----

func (as *grantAS) serveRevoke(w http.ResponseWriter, r *http.Request) {
	p, id, secret := gasParams(r)
	if p == nil || id != as.ClientID || secret != as.Secret {
		as.oauthError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed", 0)
		return
	}
	as.Revocations.Add(1)
	as.mu.Lock()
	defer as.mu.Unlock()
	var g *gasGrant
	if rt, ok := as.refresh[p["token"]]; ok {
		rt.dead, g = true, rt.grant
		// Revoking a refresh token revokes its grant's access tokens.
		as.revokeAccessLocked(g)
	} else if at, ok := as.access[p["token"]]; ok {
		at.dead, g = true, at.grant
	}
	if g != nil && as.RevocationEndsUser {
		for _, other := range as.grants {
			if other.user == g.user {
				other.ended = true
			}
		}
	}
	casWriteJSON(w, http.StatusOK, map[string]any{})
}

// ---- the API behind the proxy ----

// grantAPI is a resource server that answers 200 to a live access token of
// its grantAS and 401 invalid_token to anything else.
type grantAPI struct {
	*httptest.Server
	OK, Unauthorized atomic.Int64
	mu               sync.Mutex
	seen             []string
}

func newGrantAPI(t testing.TB, as *grantAS) *grantAPI {
	api := &grantAPI{}
	api.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authz := r.Header.Get("Authorization")
		api.mu.Lock()
		api.seen = append(api.seen, authz)
		api.mu.Unlock()
		if tok, ok := strings.CutPrefix(authz, "Bearer "); !ok || !as.validAccess(tok) {
			api.Unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		api.OK.Add(1)
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	t.Cleanup(api.Close)
	return api
}

func (api *grantAPI) hostport() string { return strings.TrimPrefix(api.URL, "http://") }

// last returns the access token of the last request ("" when none).
func (api *grantAPI) last() string {
	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.seen) == 0 {
		return ""
	}
	return strings.TrimPrefix(api.seen[len(api.seen)-1], "Bearer ")
}
