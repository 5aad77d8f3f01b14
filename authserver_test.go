package oauthbearer

// A strict OAuth 2.0 authorization server for tests of the
// authorization-code grant (RFC 6749, RFC 7636 PKCE, RFC 7009 revocation,
// RFC 9700), with the quirks of the providers in the shared notes: Event
// Temple (Doorkeeper: comma-separated scopes at /authorize, JSON bodies,
// rotating refresh tokens, JSON revocation) and Cal.com (a JWT access token
// and no expires_in, the refresh token as "Authorization: Bearer").
//
// It answers like a real server does when a client gets something wrong,
// and logs every refusal with t.Logf. Choices the RFCs leave open:
//   - Token and revocation requests take their parameters from the body
//     only (form or JSON; a query string is refused), a repeated parameter
//     is invalid_request, and an empty one counts as absent (RFC 6749 3.2).
//   - A refused code exchange does not consume the code; only a successful
//     one does. Using it again revokes everything issued from it.
//   - A refresh leaves the previous access token valid until it expires.
//     Revoking a refresh token also revokes the access tokens of its grant
//     (RFC 7009 2.1); revoking an access token revokes only that token.
//   - InvalidGrants counts every invalid_grant answer (codes and refresh
//     tokens). Authorizations, CodeExchanges and Refreshes count successes;
//     Revocations counts authenticated revocation requests.
//   - Configuration fields are read by the handlers: set them between
//     requests, not while one is in flight (Deny is atomic and can change
//     at any time).

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
)

// casCodeLifetime is how long an authorization code can be exchanged.
const casCodeLifetime = 60 * time.Second

// codeAS is the authorization server. Create it with newCodeAS.
type codeAS struct {
	*httptest.Server
	t *testing.T

	ClientID, Secret string
	RedirectURI      string        // must match byte-for-byte in /authorize and in the code exchange
	RequirePKCE      bool          // S256 only; plain is refused
	ScopeSep         string        // separator expected in /authorize's scope (Event Temple ",", default " ")
	AccessLifetime   int           // expires_in seconds; 0 = omit expires_in and issue a JWT access token whose exp is now+JWTLifetime
	JWTLifetime      time.Duration // default 1800s
	ClientAuth       string        // "body" (client_id/client_secret in the body) or "basic"; "" accepts both
	Deny             atomic.Bool   // /authorize redirects back with error=access_denied
	// SeparateRefresh makes it Cal.com-shaped: refresh tokens are redeemed
	// only at /oauth/refresh, and only as "Authorization: Bearer <rt>";
	// the token endpoint refuses grant_type=refresh_token.
	SeparateRefresh bool
	// NoRefreshToken: token responses carry no refresh token.
	NoRefreshToken bool
	// Now is the server's clock (default time.Now): a test on a fake clock
	// gives it the same one, so that expiries agree.
	Now func() time.Time
	// ReuseRevokesGrant: presenting a refresh token that was already
	// rotated away also revokes the live tokens of its grant (RFC 9700
	// 4.14.2 replay detection). Off by default.
	ReuseRevokesGrant bool
	// InvalidGrantDescription, when set, makes the error_description of a
	// refused refresh token (what some providers echo back).
	InvalidGrantDescription func(refreshToken string) string

	// counters
	Authorizations, CodeExchanges, Refreshes, InvalidGrants, Revocations atomic.Int64

	mu          sync.Mutex
	clients     map[string]bool // remote addresses of token requests
	holdRefresh chan struct{}   // see holdRefreshes
	refreshHeld chan struct{}
	codes       map[string]*casCode
	refreshes   map[string]*casToken
	accesses    map[string]*casToken
	lastScope   []string // of the last successful authorization
}

// casCode is an authorization code and what it is bound to.
type casCode struct {
	grant       string // id shared by every token issued from this code
	redirectURI string
	challenge   string // S256 code_challenge; "" without PKCE
	scope       []string
	expires     time.Time
	used        bool
}

// casToken is an access or a refresh token.
type casToken struct {
	grant   string
	scope   []string
	expires time.Time // access tokens only
	dead    bool      // revoked, or (refresh tokens) used
	used    bool      // refresh tokens: rotated away
}

// newCodeAS starts an authorization server on 127.0.0.1 for one client
// ("app-1" / "app-secret-9f8e") whose registered redirect URI is
// redirectURI. PKCE (S256) is required, access tokens last 3600 s, and
// client authentication may use the body or Basic.
func newCodeAS(t *testing.T, redirectURI string) *codeAS {
	t.Helper()
	a := &codeAS{
		t:              t,
		ClientID:       "app-1",
		Secret:         "app-secret-9f8e",
		RedirectURI:    redirectURI,
		RequirePKCE:    true,
		ScopeSep:       " ",
		AccessLifetime: 3600,
		JWTLifetime:    1800 * time.Second,
		codes:          map[string]*casCode{},
		refreshes:      map[string]*casToken{},
		accesses:       map[string]*casToken{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/oauth/authorize", a.serveAuthorize)
	mux.HandleFunc("/oauth/token", a.serveToken)
	mux.HandleFunc("/oauth/refresh", a.serveToken)
	mux.HandleFunc("/oauth/revoke", a.serveRevoke)
	a.Server = httptest.NewServer(mux)
	t.Cleanup(a.Close)
	return a
}

func (a *codeAS) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func (a *codeAS) authorizeURL() string { return a.URL + "/oauth/authorize" }
func (a *codeAS) tokenURL() string     { return a.URL + "/oauth/token" }
func (a *codeAS) revokeURL() string    { return a.URL + "/oauth/revoke" }
func (a *codeAS) refreshURL() string   { return a.URL + "/oauth/refresh" }

// validAccess reports whether token was issued as an access token, has not
// expired (by real time) and has not been revoked.
func (a *codeAS) validAccess(token string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.accesses[token]
	return ok && !at.dead && a.now().Before(at.expires)
}

// tokenClients counts the client addresses (connections) that token
// requests came from.
func (a *codeAS) tokenClients() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.clients)
}

// holdRefreshes makes each successful refresh wait, after the refresh
// token was rotated and before the answer is sent, until release is
// called; held receives a value when a refresh waits.
func (a *codeAS) holdRefreshes() (held <-chan struct{}, release func()) {
	hold, h := make(chan struct{}), make(chan struct{}, 1)
	a.mu.Lock()
	a.holdRefresh, a.refreshHeld = hold, h
	a.mu.Unlock()
	return h, func() {
		a.mu.Lock()
		a.holdRefresh = nil
		a.mu.Unlock()
		close(hold)
	}
}

// revokeAccess kills one access token, as a provider does when it revokes
// a token but not the grant.
func (a *codeAS) revokeAccess(token string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at, ok := a.accesses[token]; ok {
		at.dead = true
	}
}

// liveRefreshTokens counts the refresh tokens that a refresh would accept.
func (a *codeAS) liveRefreshTokens() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, rt := range a.refreshes {
		if !rt.dead {
			n++
		}
	}
	return n
}

// issueRefreshToken mints a valid refresh token of a new grant without
// going through /authorize, as an operator bootstrapping a client would
// paste one. Its grant has no scope: a refresh may ask for any.
func (a *codeAS) issueRefreshToken() string {
	rt := "rt_" + casRandom(32)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refreshes[rt] = &casToken{grant: "g_" + casRandom(12)}
	return rt
}

// authorizedScopes returns the scopes of the last successful
// authorization, as split by ScopeSep.
func (a *codeAS) authorizedScopes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.lastScope)
}

// ---- /oauth/authorize ----

func (a *codeAS) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	plain := func(status int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		a.t.Logf("codeAS: %s %s: %d %s", r.Method, r.URL.Path, status, msg)
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
	// Until client_id and redirect_uri are known good, nothing is sent to
	// the redirect URI (RFC 6749 4.1.2.1).
	if len(q["client_id"]) != 1 || q.Get("client_id") != a.ClientID {
		plain(http.StatusBadRequest, "invalid_request: unknown or repeated client_id %q", q["client_id"])
		return
	}
	if len(q["redirect_uri"]) != 1 || q.Get("redirect_uri") != a.RedirectURI {
		plain(http.StatusBadRequest, "invalid_request: redirect_uri %q does not match the registered %q", q["redirect_uri"], a.RedirectURI)
		return
	}
	state := q.Get("state")
	fail := func(code, desc string) {
		a.t.Logf("codeAS: GET /oauth/authorize: redirecting with %s: %s", code, desc)
		v := url.Values{"error": {code}, "error_description": {desc}}
		if state != "" {
			v.Set("state", state)
		}
		a.redirect(w, v)
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
	scopeParam := q.Get("scope")
	if scopeParam == "" {
		fail("invalid_request", "scope is required")
		return
	}
	sep := a.ScopeSep
	if sep == "" {
		sep = " "
	}
	scope := strings.Split(scopeParam, sep)
	for _, s := range scope {
		if !casScopeToken(s) {
			fail("invalid_scope", fmt.Sprintf("%q is not a scope (scopes are separated by %q)", s, sep))
			return
		}
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	switch {
	case challenge == "" && method != "":
		fail("invalid_request", "code_challenge_method without code_challenge")
		return
	case challenge == "" && a.RequirePKCE:
		fail("invalid_request", "code challenge required")
		return
	case challenge != "" && method != "S256":
		// A missing method means plain (RFC 7636 4.3).
		fail("invalid_request", "transform algorithm not supported: code_challenge_method must be S256")
		return
	case challenge != "" && !casValidChallenge(challenge):
		fail("invalid_request", "code_challenge must be 43 base64url characters")
		return
	}
	if a.Deny.Load() {
		fail("access_denied", "The user denied access")
		return
	}
	code := "ac_" + casRandom(24)
	a.mu.Lock()
	a.codes[code] = &casCode{
		grant:       "g_" + casRandom(12),
		redirectURI: a.RedirectURI,
		challenge:   challenge,
		scope:       scope,
		expires:     a.now().Add(casCodeLifetime),
	}
	a.lastScope = slices.Clone(scope)
	a.mu.Unlock()
	a.Authorizations.Add(1)
	a.redirect(w, url.Values{"code": {code}, "state": {state}})
}

// redirect answers 302 to the registered redirect URI with params added
// to the query it already has (RFC 6749 3.1.2).
func (a *codeAS) redirect(w http.ResponseWriter, params url.Values) {
	u, err := url.Parse(a.RedirectURI)
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

// ---- /oauth/token ----

func (a *codeAS) serveToken(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	if a.clients == nil {
		a.clients = map[string]bool{}
	}
	a.clients[r.RemoteAddr] = true
	a.mu.Unlock()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		a.oauthError(w, r, http.StatusMethodNotAllowed, "invalid_request", "the token endpoint takes POST")
		return
	}
	p, err := casParams(r)
	if err != nil {
		a.oauthError(w, r, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	grantType := p["grant_type"]
	// Cal.com's newer refresh endpoint: the refresh token as a bearer
	// token, the client's credentials in the body.
	bearerRT := ""
	if scheme, rest, _ := strings.Cut(r.Header.Get("Authorization"), " "); strings.EqualFold(scheme, "Bearer") {
		switch {
		case grantType != "refresh_token":
			a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "a Bearer Authorization header is only accepted with grant_type=refresh_token")
			return
		case p["refresh_token"] != "":
			a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "refresh token both in the body and in the Authorization header")
			return
		}
		bearerRT = strings.TrimSpace(rest)
		if bearerRT == "" {
			a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "empty Bearer Authorization header")
			return
		}
	}
	if a.SeparateRefresh {
		switch {
		case r.URL.Path == "/oauth/token" && grantType == "refresh_token":
			a.oauthError(w, r, http.StatusBadRequest, "unsupported_grant_type", "refresh tokens are redeemed at /oauth/refresh")
			return
		case r.URL.Path == "/oauth/refresh" && (grantType != "refresh_token" || bearerRT == ""):
			a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "/oauth/refresh takes grant_type=refresh_token with the refresh token as a Bearer credential")
			return
		}
	} else if r.URL.Path != "/oauth/token" {
		a.oauthError(w, r, http.StatusNotFound, "invalid_request", "no such endpoint")
		return
	}
	mode := a.ClientAuth
	if bearerRT != "" {
		mode = "body"
	}
	if !a.authenticate(w, r, p, mode) {
		return
	}
	switch grantType {
	case "authorization_code":
		a.exchangeCode(w, r, p)
	case "refresh_token":
		a.refresh(w, r, p, bearerRT)
	case "":
		a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "grant_type is required")
	default:
		a.oauthError(w, r, http.StatusBadRequest, "unsupported_grant_type", "grant_type "+grantType+" is not supported")
	}
}

func (a *codeAS) exchangeCode(w http.ResponseWriter, r *http.Request, p map[string]string) {
	code := p["code"]
	if code == "" {
		a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "code is required")
		return
	}
	now := a.now()
	resp, desc := func() (map[string]any, string) {
		a.mu.Lock()
		defer a.mu.Unlock()
		c, ok := a.codes[code]
		switch {
		case !ok:
			return nil, "The authorization code is invalid"
		case c.used:
			// RFC 6749 4.1.2: a code used twice revokes what it gave.
			a.revokeGrantLocked(c.grant)
			return nil, "The authorization code was already used; the tokens issued from it are revoked"
		case !now.Before(c.expires):
			return nil, "The authorization code has expired"
		case p["redirect_uri"] != c.redirectURI:
			return nil, fmt.Sprintf("redirect_uri %q does not match the authorization request's %q", p["redirect_uri"], c.redirectURI)
		}
		v := p["code_verifier"]
		switch {
		case c.challenge == "" && v != "":
			return nil, "code_verifier sent, but the authorization request had no code_challenge"
		case c.challenge == "":
		case v == "":
			return nil, "code_verifier is required"
		case !casValidVerifier(v):
			return nil, "code_verifier must be 43-128 unreserved characters"
		case casS256(v) != c.challenge:
			return nil, "code_verifier does not match the code_challenge"
		}
		c.used = true
		return a.issueLocked(c.grant, c.scope, c.scope, now), ""
	}()
	if resp == nil {
		a.oauthError(w, r, http.StatusBadRequest, "invalid_grant", desc)
		return
	}
	a.CodeExchanges.Add(1)
	casWriteJSON(w, http.StatusOK, resp)
}

func (a *codeAS) refresh(w http.ResponseWriter, r *http.Request, p map[string]string, bearerRT string) {
	rt := p["refresh_token"]
	if rt == "" {
		rt = bearerRT
	}
	if rt == "" {
		a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "refresh_token is required")
		return
	}
	var asked []string
	if s := p["scope"]; s != "" {
		asked = strings.Split(s, " ")
		for _, sc := range asked {
			if !casScopeToken(sc) {
				a.oauthError(w, r, http.StatusBadRequest, "invalid_scope", fmt.Sprintf("%q is not a scope (scopes are separated by spaces)", sc))
				return
			}
		}
	}
	now := a.now()
	var errCode, desc string
	resp := func() map[string]any {
		a.mu.Lock()
		defer a.mu.Unlock()
		tok, ok := a.refreshes[rt]
		if !ok || tok.dead {
			if ok && tok.used && a.ReuseRevokesGrant {
				a.revokeGrantLocked(tok.grant)
			}
			errCode, desc = "invalid_grant", "The refresh token is invalid"
			if a.InvalidGrantDescription != nil {
				desc = a.InvalidGrantDescription(rt)
			}
			return nil
		}
		scope := tok.scope
		if asked != nil {
			for _, sc := range asked {
				if tok.scope != nil && !slices.Contains(tok.scope, sc) {
					errCode, desc = "invalid_scope", "scope "+sc+" was not granted"
					return nil
				}
			}
			scope = asked
		}
		// Rotation: the refresh token dies now, a new one replaces it
		// with the grant's scope (RFC 6749 6).
		tok.dead, tok.used = true, true
		return a.issueLocked(tok.grant, scope, tok.scope, now)
	}()
	if resp == nil {
		a.oauthError(w, r, http.StatusBadRequest, errCode, desc)
		return
	}
	a.Refreshes.Add(1)
	a.mu.Lock()
	hold, held := a.holdRefresh, a.refreshHeld
	a.mu.Unlock()
	if hold != nil {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
	}
	casWriteJSON(w, http.StatusOK, resp)
}

// issueLocked mints an access token with accessScope and a refresh token
// with refreshScope, both of grant, and returns the token response.
func (a *codeAS) issueLocked(grant string, accessScope, refreshScope []string, now time.Time) map[string]any {
	var at string
	var expires time.Time
	if a.AccessLifetime > 0 {
		at = "at_" + casRandom(32)
		expires = now.Add(time.Duration(a.AccessLifetime) * time.Second)
	} else {
		life := a.JWTLifetime
		if life <= 0 {
			life = 1800 * time.Second
		}
		iat := now.Unix()
		exp := iat + int64(life/time.Second)
		at = casJWT(map[string]any{"exp": exp, "iat": iat, "jti": casRandom(12)})
		expires = time.Unix(exp, 0)
	}
	a.accesses[at] = &casToken{grant: grant, scope: accessScope, expires: expires}
	resp := map[string]any{
		"access_token": at,
		"token_type":   "Bearer",
		"created_at":   now.Unix(),
	}
	if !a.NoRefreshToken {
		rt := "rt_" + casRandom(32)
		a.refreshes[rt] = &casToken{grant: grant, scope: refreshScope}
		resp["refresh_token"] = rt
	}
	if a.AccessLifetime > 0 {
		resp["expires_in"] = a.AccessLifetime
	}
	if len(accessScope) > 0 {
		resp["scope"] = strings.Join(accessScope, " ")
	}
	return resp
}

// revokeGrantLocked kills every token of grant.
func (a *codeAS) revokeGrantLocked(grant string) {
	for _, t := range a.refreshes {
		if t.grant == grant {
			t.dead = true
		}
	}
	for _, t := range a.accesses {
		if t.grant == grant {
			t.dead = true
		}
	}
}

// ---- /oauth/revoke ----

func (a *codeAS) serveRevoke(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		a.oauthError(w, r, http.StatusMethodNotAllowed, "invalid_request", "the revocation endpoint takes POST")
		return
	}
	p, err := casParams(r)
	if err != nil {
		a.oauthError(w, r, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if !a.authenticate(w, r, p, "") {
		return
	}
	tok := p["token"]
	if tok == "" {
		a.oauthError(w, r, http.StatusBadRequest, "invalid_request", "token is required")
		return
	}
	// token_type_hint is only a hint (RFC 7009 2.1): both kinds are looked up.
	a.mu.Lock()
	if rt, ok := a.refreshes[tok]; ok {
		rt.dead = true
		for _, at := range a.accesses {
			if at.grant == rt.grant {
				at.dead = true
			}
		}
	} else if at, ok := a.accesses[tok]; ok {
		at.dead = true
	}
	a.mu.Unlock()
	a.Revocations.Add(1)
	casWriteJSON(w, http.StatusOK, map[string]any{})
}

// ---- shared by the endpoints ----

// authenticate checks the client's credentials: mode "body" wants
// client_id and client_secret in the body, "basic" wants RFC 6749 2.3.1
// Basic (each part form-urlencoded before base64), "" accepts either. Using
// both at once is refused (RFC 6749 2.3). On failure it answers and returns
// false.
func (a *codeAS) authenticate(w http.ResponseWriter, r *http.Request, p map[string]string, mode string) bool {
	deny := func(status int, code, desc string) bool {
		a.oauthError(w, r, status, code, desc)
		return false
	}
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	basic := strings.EqualFold(scheme, "Basic")
	_, bodySecret := p["client_secret"]
	var id, secret string
	switch {
	case basic && bodySecret:
		return deny(http.StatusBadRequest, "invalid_request", "more than one client authentication method (Basic and client_secret in the body)")
	case basic:
		if mode == "body" {
			return deny(http.StatusUnauthorized, "invalid_client", "this client authenticates with client_id and client_secret in the body, not Basic")
		}
		dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
		u, pw, ok := strings.Cut(string(dec), ":")
		if err != nil || !ok {
			return deny(http.StatusUnauthorized, "invalid_client", "malformed Basic credentials")
		}
		var err1, err2 error
		id, err1 = url.QueryUnescape(u)
		secret, err2 = url.QueryUnescape(pw)
		if err1 != nil || err2 != nil {
			return deny(http.StatusUnauthorized, "invalid_client", "Basic credentials are not form-urlencoded (RFC 6749 2.3.1)")
		}
		if bid, ok := p["client_id"]; ok && bid != id {
			return deny(http.StatusUnauthorized, "invalid_client", "client_id in the body differs from the Basic user")
		}
	case bodySecret:
		if mode == "basic" {
			return deny(http.StatusUnauthorized, "invalid_client", "this client authenticates with HTTP Basic, not client_secret in the body")
		}
		id, secret = p["client_id"], p["client_secret"]
	default:
		return deny(http.StatusUnauthorized, "invalid_client", "client authentication required")
	}
	if subtle.ConstantTimeCompare([]byte(id), []byte(a.ClientID)) != 1 ||
		subtle.ConstantTimeCompare([]byte(secret), []byte(a.Secret)) != 1 {
		return deny(http.StatusUnauthorized, "invalid_client", "client authentication failed")
	}
	return true
}

// oauthError answers with an RFC 6749 5.2 error body.
func (a *codeAS) oauthError(w http.ResponseWriter, r *http.Request, status int, code, desc string) {
	if code == "invalid_grant" {
		a.InvalidGrants.Add(1)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="codeAS"`)
	}
	a.t.Logf("codeAS: %s %s: %d %s: %s", r.Method, r.URL.Path, status, code, desc)
	casWriteJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

func casWriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// casParams reads a token or revocation request's parameters from a
// form-urlencoded or JSON body. Empty values count as absent.
func casParams(r *http.Request) (map[string]string, error) {
	if r.URL.RawQuery != "" {
		return nil, errors.New("parameters must be sent in the body, not in the URL")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("bad or missing Content-Type %q", r.Header.Get("Content-Type"))
	}
	const limit = 1 << 20
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading the body: %v", err)
	}
	if len(body) > limit {
		return nil, errors.New("body larger than 1 MiB")
	}
	p := map[string]string{}
	switch mt {
	case "application/x-www-form-urlencoded":
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, fmt.Errorf("malformed form body: %v", err)
		}
		for k, vs := range vals {
			if len(vs) > 1 {
				return nil, fmt.Errorf("parameter %s is repeated", k)
			}
			if vs[0] != "" {
				p[k] = vs[0]
			}
		}
	case "application/json":
		var obj map[string]any
		if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
			return nil, errors.New("the body is not a JSON object")
		}
		for k, v := range obj {
			switch v := v.(type) {
			case nil:
			case string:
				if v != "" {
					p[k] = v
				}
			default:
				return nil, fmt.Errorf("parameter %s must be a string", k)
			}
		}
	default:
		return nil, fmt.Errorf("unsupported Content-Type %s", mt)
	}
	return p, nil
}

// casRandom returns n random bytes from crypto/rand, base64url-encoded.
func casRandom(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// casS256 is the PKCE S256 transform: BASE64URL(SHA256(verifier)).
func casS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// casValidVerifier: 43-128 characters of [A-Za-z0-9-._~] (RFC 7636 4.1).
func casValidVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for _, c := range []byte(v) {
		if !casAlnum(c) && !strings.ContainsRune("-._~", rune(c)) {
			return false
		}
	}
	return true
}

// casValidChallenge: an unpadded base64url SHA-256 (43 characters).
func casValidChallenge(c string) bool {
	if len(c) != 43 {
		return false
	}
	for _, ch := range []byte(c) {
		if !casAlnum(ch) && ch != '-' && ch != '_' {
			return false
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(c)
	return err == nil && len(b) == sha256.Size
}

func casAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// casScopeToken: a non-empty scope-token of NQCHARs (RFC 6749 3.3), so a
// space, a quote or a backslash is not part of one.
func casScopeToken(s string) bool {
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

// casJWT returns an unsigned JWT ({"alg":"none"}) with claims and a
// random signature segment.
func casJWT(claims map[string]any) string {
	payload, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(payload) + "." + casRandom(16)
}

// ---- the API behind the proxy ----

// apiUpstream is a resource server that accepts the access tokens of as.
type apiUpstream struct {
	*httptest.Server
	as               *codeAS
	OK, Unauthorized atomic.Int64 // 200s and 401s answered
	mu               sync.Mutex
	seen             []string // Authorization of every request, in order
}

// newAPIUpstream answers 200 "ok <path>" when Authorization is exactly
// "Bearer <token>" with a token as.validAccess accepts, else 401 with
// WWW-Authenticate: Bearer error="invalid_token" (RFC 6750 3.1).
func newAPIUpstream(t *testing.T, as *codeAS) *apiUpstream {
	u := &apiUpstream{as: as}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authz := r.Header.Get("Authorization")
		u.mu.Lock()
		u.seen = append(u.seen, authz)
		u.mu.Unlock()
		tok, ok := strings.CutPrefix(authz, "Bearer ")
		if !ok || !as.validAccess(tok) {
			u.Unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer realm="api", error="invalid_token", error_description="The access token is missing, invalid, expired or revoked"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid_token"}`)
			return
		}
		u.OK.Add(1)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

// authorizations returns the Authorization header of every request, in
// order ("" when there was none).
func (u *apiUpstream) authorizations() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

func (u *apiUpstream) hostport() string { return strings.TrimPrefix(u.URL, "http://") }

// ---- self-test ----

var casNoRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// casPKCE returns a fresh verifier and its S256 challenge.
func casPKCE() (verifier, challenge string) {
	verifier = casRandom(32)
	return verifier, casS256(verifier)
}

// casAuthorize sends GET /oauth/authorize and returns the status, the
// query of the Location header (nil without one) and the body.
func casAuthorize(t *testing.T, as *codeAS, q url.Values) (int, url.Values, string) {
	t.Helper()
	resp, err := casNoRedirect.Get(as.authorizeURL() + "?" + q.Encode())
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

// casPost POSTs body (url.Values as a form, anything else as JSON) with
// optional headers (name, value pairs) and decodes the JSON answer.
func casPost(t *testing.T, u string, body any, hdr ...string) (int, map[string]any) {
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
	resp, err := casNoRedirect.Do(req)
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

// casWantError checks an OAuth error answer.
func casWantError(t *testing.T, what string, status int, body map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || body["error"] != wantCode {
		t.Errorf("%s: got %d %v, want %d %s", what, status, body, wantStatus, wantCode)
	}
}

func casGetAPI(t *testing.T, api *apiUpstream, path, authz string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, api.URL+path, nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := casNoRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("WWW-Authenticate")
}

func TestCodeASStrictness(t *testing.T) {
	const redirect = "http://127.0.0.1:1/cb?tenant=a%2Fb"
	as := newCodeAS(t, redirect)
	api := newAPIUpstream(t, as)
	verifier, challenge := casPKCE()
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
		if st, loc, _ := casAuthorize(t, as, authQ(mod)); st != http.StatusBadRequest || loc != nil {
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
		st, loc, _ := casAuthorize(t, as, authQ(c.mod))
		wantState := "st-1"
		if name == "no state" {
			wantState = ""
		}
		if st != http.StatusFound || loc.Get("error") != c.want || loc.Get("state") != wantState || loc.Get("tenant") != "a/b" || loc.Get("code") != "" {
			t.Errorf("authorize, %s: got %d %v, want 302 with error=%s state=%q and the redirect URI's own query", name, st, loc, c.want, wantState)
		}
	}
	as.Deny.Store(true)
	if st, loc, _ := casAuthorize(t, as, authQ(nil)); st != http.StatusFound || loc.Get("error") != "access_denied" ||
		loc.Get("error_description") != "The user denied access" || loc.Get("state") != "st-1" {
		t.Errorf("authorize, denied: got %d %v", st, loc)
	}
	as.Deny.Store(false)
	if n := as.Authorizations.Load(); n != 0 {
		t.Errorf("Authorizations = %d after refusals only", n)
	}

	// Authorize, then exchange the code.
	st, loc, body := casAuthorize(t, as, authQ(nil))
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
	otherVerifier, _ := casPKCE()
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
		st, b := casPost(t, as.tokenURL(), c.form, c.hdr...)
		casWantError(t, "exchange, "+name, st, b, c.wantStatus, c.want)
	}
	if n := as.InvalidGrants.Load(); n != 7 {
		t.Errorf("InvalidGrants = %d, want 7", n)
	}
	// Refused attempts did not consume the code. This one is JSON.
	st, tok := casPost(t, as.tokenURL(), map[string]string{"grant_type": "authorization_code", "code": code,
		"redirect_uri": redirect, "code_verifier": verifier, "client_id": as.ClientID, "client_secret": as.Secret})
	at0, _ := tok["access_token"].(string)
	rt0, _ := tok["refresh_token"].(string)
	created, _ := tok["created_at"].(float64)
	if st != 200 || at0 == "" || rt0 == "" || tok["token_type"] != "Bearer" || tok["expires_in"] != 3600.0 ||
		tok["scope"] != "read write" || time.Since(time.Unix(int64(created), 0)).Abs() > 5*time.Second {
		t.Fatalf("exchange: got %d %v", st, tok)
	}
	if as.CodeExchanges.Load() != 1 || !as.validAccess(at0) || as.validAccess(rt0) || as.liveRefreshTokens() != 1 {
		t.Errorf("after exchange: exchanges %d, access valid %v, refresh counted as access %v, live refresh %d",
			as.CodeExchanges.Load(), as.validAccess(at0), as.validAccess(rt0), as.liveRefreshTokens())
	}

	// The API accepts exactly "Bearer <live access token>".
	if st, b, _ := casGetAPI(t, api, "/v1/items", "Bearer "+at0); st != 200 || b != "ok /v1/items" {
		t.Errorf("API with the token: %d %q", st, b)
	}
	for _, authz := range []string{"", "Bearer " + rt0, "bearer " + at0, "Bearer at_nope"} {
		if st, _, wa := casGetAPI(t, api, "/v1/items", authz); st != 401 || !strings.Contains(wa, `error="invalid_token"`) {
			t.Errorf("API with Authorization %q: %d, WWW-Authenticate %q", authz, st, wa)
		}
	}
	if api.OK.Load() != 1 || api.Unauthorized.Load() != 4 || len(api.authorizations()) != 5 || api.authorizations()[0] != "Bearer "+at0 {
		t.Errorf("API counters: ok %d, 401 %d, seen %q", api.OK.Load(), api.Unauthorized.Load(), api.authorizations())
	}

	// Refresh (form, RFC 6749 2.3.1 Basic): rotation.
	st, tok = casPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt0}}, "Authorization", basic)
	at1, _ := tok["access_token"].(string)
	rt1, _ := tok["refresh_token"].(string)
	if st != 200 || at1 == "" || rt1 == "" || rt1 == rt0 || at1 == at0 || tok["scope"] != "read write" {
		t.Fatalf("refresh: got %d %v", st, tok)
	}
	if as.Refreshes.Load() != 1 || as.liveRefreshTokens() != 1 || !as.validAccess(at1) {
		t.Errorf("after refresh: refreshes %d, live %d, new access valid %v", as.Refreshes.Load(), as.liveRefreshTokens(), as.validAccess(at1))
	}
	st, e := casPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt0},
		"client_id": {as.ClientID}, "client_secret": {as.Secret}})
	casWantError(t, "refresh with the rotated-away token", st, e, 400, "invalid_grant")
	if e["error_description"] != "The refresh token is invalid" || as.InvalidGrants.Load() != 8 {
		t.Errorf("old refresh token: %v, InvalidGrants %d", e, as.InvalidGrants.Load())
	}
	// A narrower scope is fine, a wider one is not.
	st, e = casPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}, "scope": {"read admin"}}, "Authorization", basic)
	casWantError(t, "refresh asking for more scope", st, e, 400, "invalid_scope")

	// Cal.com style: the refresh token as a bearer token, client auth in the body.
	calBody := url.Values{"grant_type": {"refresh_token"}, "client_id": {as.ClientID}, "client_secret": {as.Secret}}
	st, e = casPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}}, "Authorization", "Bearer "+rt1)
	casWantError(t, "bearer refresh without client auth", st, e, 401, "invalid_client")
	st, tok = casPost(t, as.tokenURL(), calBody, "Authorization", "Bearer "+rt1)
	at2, _ := tok["access_token"].(string)
	rt2, _ := tok["refresh_token"].(string)
	if st != 200 || at2 == "" || rt2 == "" || rt2 == rt1 {
		t.Fatalf("bearer refresh: got %d %v", st, tok)
	}
	both := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt2}, "client_id": {as.ClientID}, "client_secret": {as.Secret}}
	st, e = casPost(t, as.tokenURL(), both, "Authorization", "Bearer "+rt2)
	casWantError(t, "refresh token in body and header", st, e, 400, "invalid_request")

	// Revocation.
	st, e = casPost(t, as.revokeURL(), url.Values{"token": {rt2}})
	casWantError(t, "revoke without client auth", st, e, 401, "invalid_client")
	st, e = casPost(t, as.revokeURL(), map[string]string{"token": "rt_unknown", "client_id": as.ClientID, "client_secret": as.Secret})
	if st != 200 || len(e) != 0 {
		t.Errorf("revoke an unknown token: %d %v, want 200 {}", st, e)
	}
	st, e = casPost(t, as.revokeURL(), map[string]string{"token": rt2, "client_id": as.ClientID, "client_secret": as.Secret})
	if st != 200 || len(e) != 0 || as.Revocations.Load() != 2 {
		t.Errorf("revoke (Event Temple JSON): %d %v, Revocations %d", st, e, as.Revocations.Load())
	}
	if as.liveRefreshTokens() != 0 || as.validAccess(at2) || as.validAccess(at0) {
		t.Errorf("after revoking the refresh token: live %d, its grant's access tokens valid: %v %v",
			as.liveRefreshTokens(), as.validAccess(at2), as.validAccess(at0))
	}
	st, e = casPost(t, as.tokenURL(), calBody, "Authorization", "Bearer "+rt2)
	casWantError(t, "refresh with a revoked token", st, e, 400, "invalid_grant")

	// A second authorization; its code used twice revokes what it gave.
	_, loc, _ = casAuthorize(t, as, authQ(nil))
	code = loc.Get("code")
	st, tok = casPost(t, as.tokenURL(), exch(nil))
	at3, _ := tok["access_token"].(string)
	rt3, _ := tok["refresh_token"].(string)
	if st != 200 || !as.validAccess(at3) {
		t.Fatalf("second exchange: %d %v", st, tok)
	}
	st, e = casPost(t, as.tokenURL(), exch(nil))
	casWantError(t, "reused code", st, e, 400, "invalid_grant")
	if as.validAccess(at3) || as.liveRefreshTokens() != 0 {
		t.Errorf("tokens of a reused code still valid: access %v, live refresh %d", as.validAccess(at3), as.liveRefreshTokens())
	}
	st, e = casPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt3}}, "Authorization", basic)
	casWantError(t, "refresh token of a reused code", st, e, 400, "invalid_grant")
	// RFC 7009 form revocation of an access token, with Basic.
	_, loc, _ = casAuthorize(t, as, authQ(nil))
	code = loc.Get("code")
	_, tok = casPost(t, as.tokenURL(), exch(nil))
	at4, _ := tok["access_token"].(string)
	if st, e := casPost(t, as.revokeURL(), url.Values{"token": {at4}, "token_type_hint": {"access_token"}}, "Authorization", basic); st != 200 || as.validAccess(at4) || as.liveRefreshTokens() != 1 {
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
			st, b := casPost(t, as.tokenURL(), map[string]string{"grant_type": "refresh_token", "refresh_token": rt,
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
	as.AccessLifetime = 0
	st, tok = casPost(t, as.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {as.issueRefreshToken()}}, "Authorization", basic)
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
	et := newCodeAS(t, "http://127.0.0.1:1/et")
	et.ScopeSep, et.ClientAuth = ",", "body"
	q := url.Values{"client_id": {et.ClientID}, "response_type": {"code"}, "redirect_uri": {et.RedirectURI},
		"state": {"x"}, "scope": {"crm_read crm_manage"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	if _, loc, _ := casAuthorize(t, et, q); loc.Get("error") != "invalid_scope" {
		t.Errorf("space-separated scopes with ScopeSep %q: %v", et.ScopeSep, loc)
	}
	q.Set("scope", "crm_read,crm_manage")
	_, loc, _ = casAuthorize(t, et, q)
	etForm := url.Values{"grant_type": {"authorization_code"}, "code": {loc.Get("code")}, "redirect_uri": {et.RedirectURI}, "code_verifier": {verifier}}
	st, e = casPost(t, et.tokenURL(), etForm, "Authorization", basic)
	casWantError(t, "Basic where the body is required", st, e, 401, "invalid_client")
	etForm.Set("client_id", et.ClientID)
	etForm.Set("client_secret", et.Secret)
	if st, tok := casPost(t, et.tokenURL(), etForm); st != 200 || tok["scope"] != "crm_read crm_manage" {
		t.Errorf("Event Temple exchange: %d %v", st, tok)
	}
	et.ClientAuth = "basic"
	st, e = casPost(t, et.tokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {et.issueRefreshToken()},
		"client_id": {et.ClientID}, "client_secret": {et.Secret}})
	casWantError(t, "body credentials where Basic is required", st, e, 401, "invalid_client")
}
