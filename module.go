// Package oauthbearer is a Caddy HTTP handler that obtains OAuth 2.0 access
// tokens from an API provider, caches and refreshes them, and sets
// `Authorization: Bearer <token>` (plus provider headers) on requests before
// reverse_proxy sends them upstream, so that apps that cannot speak OAuth
// can call OAuth APIs.
//
// A proxied request flows through three files:
//
//   - module.go: Handler.ServeHTTP finds the request's token source (the
//     credential set's, or for a grant the account's), asks it for a token,
//     sets the headers and calls the next handler; replay.go handles an
//     upstream 401.
//   - tokensource.go: tokenSource.Token returns the cached token (one
//     atomic load), refreshes it ahead of expiry in the background, and
//     makes concurrent misses wait for one fetch, with backoff after
//     failures. It gets tokens from a fetcher:
//   - endpoint.go (client credentials: the token request and its answer,
//     sent by internal/oauthclient, the OAuth client that knows nothing of
//     Caddy), or grant.go (a stored grant: taken from the storage, or
//     refreshed under the storage lock; store.go encrypts what is stored).
//
// The rest: config.go (the credential set and every configuration rule),
// caddyfile.go (both directives), pool.go (what is shared across routes
// and reloads), consent.go (the oauth_bearer_consent handler: connect,
// callback, status, disconnect), metrics.go, and providers/ (presets).
package oauthbearer

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Token stores.
const (
	tokenStoreStorage = "storage"
	tokenStoreMemory  = "memory"
)

// Upstream 401 modes.
const (
	upstream401Retry      = "retry"
	upstream401Invalidate = "invalidate"
	upstream401Off        = "off"
)

// Handler is the oauth_bearer handler: it sets an access token, and the
// provider's headers, on every request it handles. Tokens come from the
// client_credentials grant, or from a grant a person consented to through
// an oauth_bearer_consent handler with the same credentials.
type Handler struct {
	// Credentials name the provider and the client.
	Credentials

	// Grant is how tokens are obtained: client_credentials (the default),
	// jwt_bearer (RFC 7523: a signed assertion is the grant; the google
	// preset's default), authorization_code (a person consents once
	// through oauth_bearer_consent; this handler uses the stored grant) or
	// refresh_token (starting from RefreshToken, obtained elsewhere).
	Grant string `json:"grant,omitempty"`

	// Scopes are sent space-separated in the scope parameter of the token
	// request of the client_credentials and jwt_bearer grants (and as the
	// assertion's scope claim for a Google service account). For the
	// other grants the consent handler asks for scopes.
	Scopes []string `json:"scopes,omitempty"`

	// Audience is the Auth0-style audience parameter of the token request
	// of the client_credentials and jwt_bearer grants. Default: the
	// preset's (Bookable's is required).
	Audience string `json:"audience,omitempty"`

	// Resources are RFC 8707 resource indicators (absolute URIs without a
	// fragment) sent with the token request of the client_credentials and
	// jwt_bearer grants.
	Resources []string `json:"resources,omitempty"`

	// Params are extra parameters of the token request of the
	// client_credentials and jwt_bearer grants. grant_type, client_id and
	// client_secret cannot be set this way.
	Params map[string]string `json:"params,omitempty"`

	// Subject is the sub claim of grant jwt_bearer's assertion: the user
	// the token acts for (Salesforce: the username; Google: a user to
	// impersonate with domain-wide delegation). Default: the client id
	// with private_key (RFC 7523 §3 requires a sub); none for a Google
	// service account, as Google documents.
	Subject string `json:"subject,omitempty"`

	// RefreshToken seeds grant refresh_token for the default account;
	// once the grant is stored (and rotated), the stored one is used, until
	// a different RefreshToken is configured. Use {env.X} or {file./path}.
	RefreshToken string `json:"refresh_token,omitempty"`

	// Account names whose grant a request uses (authorization_code and
	// refresh_token grants), normally an authenticated identity such as
	// {http.auth.user.id}. Default: "default". A value taken from what the
	// client sends, such as {http.request.header.X-Account}, lets any
	// client of the proxy use any connected account.
	Account string `json:"account,omitempty"`

	// RefreshBefore is how long before expiry a token is replaced (default
	// 60s; half the lifetime for tokens that live less than twice that),
	// plus a random tenth of it at most, so that a fleet does not refresh
	// in lockstep. Handlers sharing a token replace it as early as the
	// earliest asks.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`

	// Headers are extra headers set on the upstream request, replacing
	// what the client sent. Values may use request placeholders.
	Headers map[string]string `json:"headers,omitempty"`

	// Org sets the preset's organisation header (Event Temple: X-API-ORG).
	Org string `json:"org,omitempty"`

	// TokenHeader is the header that carries the token. Default:
	// Authorization. With another header, the client's Authorization
	// header is removed.
	TokenHeader string `json:"token_header,omitempty"`

	// TokenPrefix precedes the token in TokenHeader. Left out: "Bearer"
	// for Authorization, nothing for other headers; "" means no prefix.
	TokenPrefix *string `json:"token_prefix,omitempty"`

	// TokenStore is where a token of the client_credentials or jwt_bearer
	// grant is kept: storage (the default: in memory and in Caddy's
	// storage, encrypted, so that every instance sharing the storage uses
	// one token and a restart fetches none) or memory (this process only;
	// nothing is written). Grants a person consented to are always kept in
	// the storage.
	TokenStore string `json:"token_store,omitempty"`

	// Upstream401 says what happens when the upstream answers 401 to an
	// injected token: retry (the default: drop the token and replay the
	// request once with a new one, when it can be replayed), invalidate
	// (drop the token, pass the 401 on) or off.
	Upstream401 string `json:"upstream_401,omitempty"`

	// ReplayMaxBody is the largest request body (by its Content-Length)
	// buffered so that the request can be replayed after a 401; a body of
	// unknown length streams and is not replayable. Default 64 KiB; -1:
	// only requests without a body are replayed.
	ReplayMaxBody int64 `json:"replay_max_body,omitempty"`

	source  *tokenSource // client_credentials: the credential set's
	grant   *grant       // other grants: the stored grant, with its accounts
	entry   shared       // the pool entry holding either
	poolKey string
	use     *use // what this handler gave the entry
	// released: Cleanup dropped the reference (once; the fields stay for
	// requests in flight).
	released bool

	provider     string
	logger       *zap.Logger
	account      string // a fixed account, or a template with placeholders
	accountPerRq bool
	tokenHeader  string // canonical header key
	tokenPrefix  string // with its trailing space, or empty
	headers      []upstreamHeader
	replayMax    int64
	last         atomic.Pointer[injected]
	dpop         *dpopInjector // nil without dpop (dpop.go)
}

// upstreamHeader is one extra header, its value resolved in Provision
// unless it holds request placeholders.
type upstreamHeader struct {
	key    string // canonical
	value  string
	perReq bool // value has placeholders to resolve per request
}

// injected caches the header value built for the last token seen, so the
// request path does not build a string.
type injected struct {
	tok   *token
	value string
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_bearer",
		New: func() caddy.Module { return new(Handler) },
	}
}

// grantType is the grant configured, else the preset's, else
// client_credentials.
func (h *Handler) grantType() string {
	p, _ := h.Credentials.preset()
	return firstNonEmpty(h.Grant, p.Grant, grantClientCredentials)
}

// check applies the configuration rules that hold before placeholders are
// resolved; the Caddyfile parser runs it too.
func (h *Handler) check() error {
	grant := h.grantType()
	// grant, token_store and upstream_401 values; scope, audience,
	// resource, param, refresh_token, subject and account only with the
	// grants that use them.
	if err := checkTable(h, grant); err != nil {
		return err
	}
	if err := h.Credentials.check(grant); err != nil {
		return err
	}
	if err := h.Credentials.checkRecordKey(grant, !machineGrant(grant) || h.TokenStore != tokenStoreMemory); err != nil {
		return err
	}
	if machineGrant(grant) {
		for name := range h.Params {
			switch name {
			case "grant_type", "client_id", "client_secret":
				return about(name, errField("param", "%q is set by the handler and cannot be overridden", name))
			case "":
				return errField("param", "empty parameter name")
			}
		}
		for _, r := range h.Resources {
			if err := checkResource(r); err != nil {
				return err
			}
		}
		if err := h.checkTokenParamPlaceholders(); err != nil {
			return err
		}
	} else {
		switch {
		case h.TokenStore == tokenStoreMemory:
			return errField("token_store", "grants are kept in the storage; memory is for the client_credentials and jwt_bearer grants")
		case grant == grantRefreshToken && h.RefreshToken == "":
			return errField("refresh_token", "is required by grant refresh_token")
		}
		if h.Account != "" && !strings.Contains(h.Account, "{") {
			if err := checkAccount(h.Account); err != nil {
				return errField("account", "%v", err)
			}
		}
	}
	if err := h.checkHeaders(); err != nil {
		return err
	}
	if err := h.checkDPoP(); err != nil {
		return err
	}
	if h.RefreshBefore < 0 {
		return errField("refresh_before", "must not be negative")
	}
	if h.ReplayMaxBody < -1 {
		return errField("replay_max_body", "must be -1 (no bodies), 0 (the default) or a size in bytes")
	}
	return nil
}

// checkHeaders: the token header and the extra headers are valid, distinct
// names.
func (h *Handler) checkHeaders() error {
	p, _ := h.Credentials.preset()
	tokenHeader := textproto.CanonicalMIMEHeaderKey(firstNonEmpty(h.TokenHeader, "Authorization"))
	if !httpguts.ValidHeaderFieldName(tokenHeader) {
		return errField("token_header", "%q is not a valid header name", h.TokenHeader)
	}
	seen := map[string]bool{}
	if h.Org != "" {
		if p.OrgHeader == "" {
			return errField("org", "provider %s has no organisation header; use header <name> <value>", p.Name)
		}
		seen[textproto.CanonicalMIMEHeaderKey(p.OrgHeader)] = true
	}
	for name := range h.Headers {
		key := textproto.CanonicalMIMEHeaderKey(name)
		switch {
		case !httpguts.ValidHeaderFieldName(name):
			return about(key, errField("header", "%q is not a valid header name", name))
		case key == tokenHeader:
			return about(key, errField("header", "%s carries the token (token_header); it cannot also be an extra header", key))
		case seen[key]:
			return about(key, errField("header", "%s is given twice (as org, or in another letter case)", key))
		}
		seen[key] = true
	}
	return nil
}

// checkResource: an RFC 8707 resource indicator is an absolute URI without
// a fragment (checked once resolved when it holds placeholders).
func checkResource(r string) error {
	if strings.Contains(r, "{") {
		return nil
	}
	if u, err := url.Parse(r); err != nil || !u.IsAbs() || u.Fragment != "" {
		return about(r, errField("resource", "%q is not an absolute URI without a fragment (RFC 8707)", r))
	}
	return nil
}

// Provision checks the configuration, resolves it and takes a reference to
// the shared token source or grant. It does no network I/O: tokens are
// fetched on first use.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	cs, bootstrap, err := h.configureShared(provisionReplacer())
	if err != nil {
		return err
	}
	h.use = &use{logger: h.logger, storage: contextStorage(ctx), refreshBefore: time.Duration(h.RefreshBefore)}

	if machineGrant(h.grantType()) {
		shared := h.TokenStore != tokenStoreMemory
		e, err := acquire(h.poolKey, h.use, func() (*sourceEntry, error) { return newSourceEntry(cs, h.poolKey, shared) })
		if err != nil {
			return err
		}
		h.entry, h.source = e, e.src
		h.setupDPoP(e.ep)
		return nil
	}

	g, err := acquire(h.poolKey, h.use, func() (*grant, error) { return newGrant(cs, h.poolKey, bootstrap) })
	if err != nil {
		return err
	}
	h.entry, h.grant = g, g
	h.setupDPoP(g.ep)
	g.warnDPoPMismatch(h.logger, h.use)
	g.startLoop() // grants are refreshed when they near expiry, used or not
	return nil
}

// configureShared configures the handler and names what it shares, in
// h.poolKey: the token source of its credential set (client_credentials,
// jwt_bearer; with token_store memory, one of its own), or the grant of its
// credentials seeded with bootstrap, the refresh token of grant
// refresh_token. Handlers with the same key share one; every field that
// decides which token is had is in the key (TestConfigSharingKeyCoversEveryField).
func (h *Handler) configureShared(repl *caddy.Replacer) (cs *credentialSet, bootstrap string, err error) {
	if cs, err = h.configure(repl); err != nil {
		return nil, "", err
	}
	if machineGrant(h.grantType()) {
		h.poolKey = "cc:" + cs.key()
		if h.TokenStore == tokenStoreMemory {
			h.poolKey += ":memory"
		}
		return cs, "", nil
	}
	if h.grantType() == grantRefreshToken {
		if bootstrap, err = resolveRequired(repl, "refresh_token", h.RefreshToken); err != nil {
			return nil, "", err
		}
	}
	h.poolKey = grantKey(cs, bootstrap)
	return cs, bootstrap, nil
}

// configure checks the configuration and resolves it: the credential set
// (with the client_credentials parameters), and what this handler sets on
// requests.
func (h *Handler) configure(repl *caddy.Replacer) (*credentialSet, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	cs, err := h.Credentials.resolve(repl, h.grantType())
	if err != nil {
		return nil, err
	}
	if machineGrant(h.grantType()) {
		if err := h.resolveTokenParams(repl, cs); err != nil {
			return nil, err
		}
	}
	if err := h.resolveHeaders(repl, cs.preset); err != nil {
		return nil, err
	}
	h.provider = cs.Provider
	h.account = firstNonEmpty(h.Account, defaultAccount)
	h.accountPerRq = strings.Contains(h.account, "{")
	h.replayMax = h.ReplayMaxBody
	if h.replayMax == 0 {
		h.replayMax = defaultReplayMaxBody
	}
	return cs, nil
}

// resolveTokenParams puts the client_credentials request's own parameters,
// resolved, into the credential set (they decide which token it gets).
func (h *Handler) resolveTokenParams(repl *caddy.Replacer, cs *credentialSet) error {
	cs.Scope = repl.ReplaceKnown(strings.Join(h.Scopes, " "), "")
	cs.Subject = repl.ReplaceKnown(h.Subject, "")
	cs.Audience = firstNonEmpty(repl.ReplaceKnown(h.Audience, ""), cs.preset.Audience)
	if cs.preset.RequiresAudience && cs.Audience == "" {
		return errField("audience", "is required by provider %s", cs.Provider)
	}
	for _, r := range h.Resources {
		r = repl.ReplaceKnown(r, "")
		if err := checkResource(r); err != nil {
			return err
		}
		cs.Resources = append(cs.Resources, r)
	}
	if len(h.Params) > 0 {
		cs.Params = make(map[string]string, len(h.Params))
		for k, v := range h.Params {
			cs.Params[k] = repl.ReplaceKnown(v, "")
		}
	}
	return nil
}

// resolveHeaders prepares the token header and the extra headers.
func (h *Handler) resolveHeaders(repl *caddy.Replacer, p providers.Provider) error {
	h.tokenHeader = textproto.CanonicalMIMEHeaderKey(firstNonEmpty(h.TokenHeader, "Authorization"))
	switch {
	case h.TokenPrefix != nil && *h.TokenPrefix != "":
		h.tokenPrefix = *h.TokenPrefix + " "
	case h.TokenPrefix == nil && h.tokenHeader == "Authorization":
		h.tokenPrefix = "Bearer "
	default:
		h.tokenPrefix = ""
	}
	h.headers = h.headers[:0]
	add := func(key, raw string) error {
		val := repl.ReplaceKnown(raw, "")
		if !httpguts.ValidHeaderFieldValue(val) {
			return errField("header", "the value of %s is not a valid header value", key)
		}
		uh := upstreamHeader{key: key, value: val, perReq: strings.Contains(val, "{")}
		if val == "" && !uh.perReq {
			return errField("header", "%s resolved to an empty value (is the variable or file set?)", key)
		}
		h.headers = append(h.headers, uh)
		return nil
	}
	if h.Org != "" {
		if err := add(textproto.CanonicalMIMEHeaderKey(p.OrgHeader), h.Org); err != nil {
			return err
		}
	}
	for k, v := range h.Headers {
		if err := add(textproto.CanonicalMIMEHeaderKey(k), v); err != nil {
			return err
		}
	}
	return nil
}

// Cleanup drops this configuration's reference to the shared source or
// grant.
//
// It writes nothing that ServeHTTP reads: a request still in flight when
// the old configuration is cleaned up (a client that left, a slow upstream)
// goes on with the source or grant it found.
func (h *Handler) Cleanup() error {
	if h.entry == nil || h.released {
		return nil
	}
	h.released = true
	return release(h.poolKey, h.entry, h.use)
}

// ServeHTTP sets the access token and the provider headers on the request
// and passes it on. Without a valid token the request is not forwarded.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	src, err := h.sourceFor(r)
	if err != nil {
		return h.refuse(w, r, err)
	}
	tok, err := src.Token(r.Context())
	if err != nil {
		return h.refuse(w, r, err)
	}
	if tok.dpopKey != nil && h.dpop == nil {
		return h.refuse(w, r, h.dpopMissing()) // a grant bound by a consent handler with dpop
	}
	if h.Upstream401 == upstream401Off && h.dpop == nil {
		h.inject(r, tok)
		return next.ServeHTTP(w, r)
	}
	return h.forward(w, r, next, src, tok) // replay.go: 401 handling
}

// sourceFor returns the token source of a request: the credential set's,
// or for a grant the account's.
func (h *Handler) sourceFor(r *http.Request) (*tokenSource, error) {
	if h.grant == nil {
		return h.source, nil
	}
	account := h.account
	if h.accountPerRq {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return nil, accountError{errors.New("no request replacer")}
		}
		if account = repl.ReplaceKnown(h.account, ""); account == "" {
			return nil, accountError{errors.New("the request names no account")}
		}
		if err := checkAccount(account); err != nil {
			return nil, accountError{err}
		}
	}
	return h.grant.sourceFor(account)
}

// accountError is a request that names no valid account.
type accountError struct{ error }

// inject sets the token and the extra headers on the request.
func (h *Handler) inject(r *http.Request, tok *token) {
	// The client's own credential is replaced, never forwarded.
	if h.tokenHeader != "Authorization" {
		r.Header.Del("Authorization")
	}
	if h.dpop != nil {
		h.dpop.inject(r, tok) // Authorization: DPoP and a fresh proof
	} else {
		setHeader(r.Header, h.tokenHeader, h.headerValue(tok))
	}
	if len(h.headers) == 0 {
		return
	}
	var repl *caddy.Replacer
	for i := range h.headers {
		hd := &h.headers[i]
		v := hd.value
		if hd.perReq {
			if repl == nil {
				repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			}
			if repl != nil {
				v = repl.ReplaceKnown(v, "")
			}
		}
		setHeader(r.Header, hd.key, v)
	}
}

// setHeader sets a single-valued header, reusing the request's own slice
// when it has one so that the common case does not allocate.
func setHeader(hdr http.Header, key, value string) {
	if vs := hdr[key]; len(vs) == 1 {
		vs[0] = value
		return
	}
	hdr[key] = []string{value}
}

// headerValue returns prefix+token: built with the token for the usual
// "Bearer ", else once per token and handler.
func (h *Handler) headerValue(tok *token) string {
	if h.tokenPrefix == "Bearer " && tok.bearer != "" {
		return tok.bearer
	}
	if c := h.last.Load(); c != nil && c.tok == tok {
		return c.value
	}
	c := &injected{tok: tok, value: h.tokenPrefix + tok.value}
	h.last.Store(c)
	return c.value
}

// refuse answers a request that gets no token, without forwarding it: 400
// when it names no valid account; 503 when its account needs consent (with
// where to connect it), or with Retry-After when the provider asked to wait
// or the source is backing off; 502 otherwise; 500 when the request is for
// one of the consent handler's own paths (the consent handler is not
// reached). The client sees the provider and the error code, never the
// provider's description (that is logged once per token request) nor
// anything secret.
//
// The refusal is returned as a caddyhttp.Error (with Retry-After and
// Cache-Control set on the response first), so that a site's handle_errors
// can shape it; where no handle_errors answers the request, Caddy would
// write the status alone, so the message is written here as plain text.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, err error) error {
	if r.Context().Err() != nil {
		// The client gave up while waiting; nobody reads an answer.
		return caddyhttp.Error(499, fmt.Errorf("client gave up waiting for a %s token", h.provider))
	}
	status, retryAfter, msg := h.refusal(r, err)
	w.Header().Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(retryAfter, 10))
	}
	herr := caddyhttp.Error(status, errors.New(msg))
	if handleErrorsAnswers(r, herr) {
		return herr
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
	return nil
}

// troubleshootingURL is README.md's Troubleshooting section, which leads to
// the table (docs/troubleshooting.md); TestDocsLinks checks the heading.
const troubleshootingURL = "https://github.com/oauthbearer/caddy-oauth-bearer#troubleshooting"

// refusal is the status, the Retry-After in seconds (0: none) and the
// message of a refused request.
func (h *Handler) refusal(r *http.Request, err error) (int, int64, string) {
	if h.grant != nil {
		if p := h.grant.env.consentPaths(); p != nil && p.has(r.URL.EscapedPath()) {
			h.logger.Error("a request for a consent endpoint reached oauth_bearer, which runs before oauth_bearer_consent: the consent handler is not reached",
				zap.String("path", r.URL.Path), zap.String("see", troubleshootingURL))
			return http.StatusInternalServerError, 0, fmt.Sprintf("oauth_bearer: %s is an oauth_bearer_consent endpoint, but oauth_bearer answered it: "+
				"the consent handler is not reached, because oauth_bearer runs first (a site-level oauth_bearer runs before route and handle blocks). "+
				"Put oauth_bearer_consent at site level, where it is ordered before oauth_bearer, or keep oauth_bearer off these paths; "+
				"see %s; the request was not forwarded", r.URL.Path, troubleshootingURL)
		}
	}
	var ae accountError
	if errors.As(err, &ae) {
		return http.StatusBadRequest, 0, fmt.Sprintf("oauth_bearer: %s; the request was not forwarded", ae.Error())
	}
	metrics.failedRequests.WithLabelValues(h.provider, resultClass(err)).Inc()
	var ce *ConsentError
	if errors.As(err, &ce) {
		where := "an administrator must connect it (no oauth_bearer_consent handler with these credentials is loaded)"
		if ce.Connect != "" {
			where = "connect it at " + ce.Connect
		}
		return http.StatusServiceUnavailable, 0, fmt.Sprintf("oauth_bearer: %s account %q needs consent (%s): %s; the request was not forwarded", h.provider, ce.Account, codeConsentRequired, where)
	}
	var te *TokenError
	var se *StorageError
	code, status, secs, retryIn := "token_unavailable", http.StatusBadGateway, int64(0), ""
	if errors.As(err, &se) {
		code = "storage_error"
	}
	if errors.As(err, &te) {
		code = te.Code
		if te.RetryAfter > 0 {
			secs = int64((min(te.RetryAfter, maxRetryAfter) + time.Second - 1) / time.Second)
			status, retryIn = http.StatusServiceUnavailable, fmt.Sprintf("; retry in %ds", secs)
		}
	}
	return status, secs, fmt.Sprintf("oauth_bearer: no access token from %s (%s)%s; the request was not forwarded", h.provider, code, retryIn)
}

// has reports whether path (escaped, as the consent handler compares it)
// is one of the consent endpoints.
func (p *consentPaths) has(path string) bool {
	return path == p.connect || path == p.callback || path == p.status || path == p.disconnect
}

// handleErrorsAnswers reports whether the server's error routes (a site's
// handle_errors) would answer err for r. They are looked at as the
// Caddyfile shapes them: per site, a route matching its hosts that holds a
// subroute, in it one route per handle_errors block (matching its status
// codes, if it names any). A route that matches and does more than hold
// subroutes answers.
func handleErrorsAnswers(r *http.Request, err error) bool {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.Errors == nil || len(srv.Errors.Routes) == 0 {
		return false
	}
	return routesAnswer(srv.Errors.Routes, srv.Errors.WithError(r, err))
}

func routesAnswer(routes caddyhttp.RouteList, r *http.Request) bool {
	for _, rt := range routes {
		if ok, err := rt.MatcherSets.AnyMatchWithError(r); err != nil || !ok {
			continue
		}
		for _, h := range rt.Handlers {
			sub, ok := h.(*caddyhttp.Subroute)
			if !ok || routesAnswer(sub.Routes, r) {
				return true
			}
		}
	}
	return false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
