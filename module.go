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
//   - endpoint.go (client credentials: the token request and its answer),
//     or grant.go (a stored grant: taken from the storage, or refreshed
//     under the storage lock; store.go encrypts what is stored).
//
// The rest: config.go (the credential set and every configuration rule),
// caddyfile.go (both directives), pool.go (what is shared across routes
// and reloads), consent.go (the oauth_bearer_consent handler: connect,
// callback, status, disconnect), metrics.go, and providers/ (presets).
package oauthbearer

import (
	"errors"
	"fmt"
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

	// Scopes are sent space-separated in the scope parameter of the
	// client_credentials request. For the other grants the consent
	// handler asks for scopes.
	Scopes []string `json:"scopes,omitempty"`

	// Audience is the Auth0-style audience parameter of the
	// client_credentials request. Default: the preset's (Bookable's is
	// required).
	Audience string `json:"audience,omitempty"`

	// Resources are RFC 8707 resource indicators (absolute URIs without a
	// fragment) sent with the client_credentials request.
	Resources []string `json:"resources,omitempty"`

	// Params are extra parameters of the client_credentials request.
	// grant_type, client_id and client_secret cannot be set this way.
	Params map[string]string `json:"params,omitempty"`

	// Subject is the sub claim of grant jwt_bearer's assertion: the user
	// the token acts for (Salesforce: the username; Google: a user to
	// impersonate with domain-wide delegation).
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
	// 60s; half the lifetime for tokens that live less than twice that).
	// Handlers sharing a token replace it as early as the earliest asks.
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

	// TokenStore is where a client_credentials token is kept: storage (the
	// default: in memory and in Caddy's storage, encrypted, so that every
	// instance sharing the storage uses one token and a restart fetches
	// none) or memory (this process only; nothing is written).
	TokenStore string `json:"token_store,omitempty"`

	// Upstream401 says what happens when the upstream answers 401 to an
	// injected token: retry (the default: drop the token and replay the
	// request once with a new one, when it can be replayed), invalidate
	// (drop the token, pass the 401 on) or off.
	Upstream401 string `json:"upstream_401,omitempty"`

	// ReplayMaxBody is the largest request body buffered so that the
	// request can be replayed after a 401. Default 64 KiB; -1: only
	// requests without a body are replayed.
	ReplayMaxBody int64 `json:"replay_max_body,omitempty"`

	source  *tokenSource // client_credentials: the credential set's
	grant   *grant       // other grants: the stored grant, with its accounts
	entry   shared       // the pool entry holding either
	poolKey string
	use     *use // what this handler gave the entry

	provider     string
	logger       *zap.Logger
	account      string // a fixed account, or a template with placeholders
	accountPerRq bool
	tokenHeader  string // canonical header key
	tokenPrefix  string // with its trailing space, or empty
	headers      []upstreamHeader
	replayMax    int64
	last         atomic.Pointer[injected]
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
	if err := oneOf("grant", h.Grant, grantClientCredentials, grantAuthorizationCode, grantRefreshToken, grantJWTBearer); err != nil {
		return err
	}
	grant := h.grantType()
	if err := h.Credentials.check(grant); err != nil {
		return err
	}
	if err := oneOf("token_store", h.TokenStore, tokenStoreStorage, tokenStoreMemory); err != nil {
		return err
	}
	if h.Subject != "" && grant != grantJWTBearer {
		return errField("subject", "only for grant jwt_bearer")
	}
	if machineGrant(grant) {
		for _, f := range []struct{ field, value string }{{"refresh_token", h.RefreshToken}, {"account", h.Account}} {
			if f.value != "" {
				return errField(f.field, "only for the authorization_code and refresh_token grants")
			}
		}
		for name := range h.Params {
			switch name {
			case "grant_type", "client_id", "client_secret":
				return errField("param", "%q is set by the handler and cannot be overridden", name)
			case "":
				return errField("param", "empty parameter name")
			}
		}
		for _, r := range h.Resources {
			if err := checkResource(r); err != nil {
				return err
			}
		}
	} else {
		if len(h.Scopes) > 0 || h.Audience != "" || len(h.Resources) > 0 || len(h.Params) > 0 {
			field := map[bool]string{true: "scope", false: "audience, resource and param"}[len(h.Scopes) > 0]
			return errField(field, "only for the client_credentials and jwt_bearer grants (a grant's scopes are asked for by oauth_bearer_consent)")
		}
		switch {
		case h.TokenStore == tokenStoreMemory:
			return errField("token_store", "grants are kept in the storage; memory is for the client_credentials and jwt_bearer grants")
		case grant == grantRefreshToken && h.RefreshToken == "":
			return errField("refresh_token", "is required by grant refresh_token")
		case grant != grantRefreshToken && h.RefreshToken != "":
			return errField("refresh_token", "only for grant refresh_token")
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
	if err := oneOf("upstream_401", h.Upstream401, upstream401Retry, upstream401Invalidate, upstream401Off); err != nil {
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
			return errField("header", "%q is not a valid header name", name)
		case key == tokenHeader:
			return errField("header", "%s carries the token (token_header); it cannot also be an extra header", key)
		case seen[key]:
			return errField("header", "%s is given twice (as org, or in another letter case)", key)
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
		return errField("resource", "%q is not an absolute URI without a fragment (RFC 8707)", r)
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
	repl := provisionReplacer()
	cs, err := h.configure(repl)
	if err != nil {
		return err
	}
	h.use = &use{logger: h.logger, storage: contextStorage(ctx), refreshBefore: time.Duration(h.RefreshBefore)}

	if machineGrant(h.grantType()) {
		shared := h.TokenStore != tokenStoreMemory
		h.poolKey = "cc:" + cs.key()
		if !shared {
			h.poolKey += ":memory"
		}
		e, err := acquire(h.poolKey, h.use, func() (*sourceEntry, error) { return newSourceEntry(cs, h.poolKey, shared) })
		if err != nil {
			return err
		}
		h.entry, h.source = e, e.src
		return nil
	}

	bootstrap := ""
	if h.grantType() == grantRefreshToken {
		if bootstrap, err = resolveRequired(repl, "refresh_token", h.RefreshToken); err != nil {
			return err
		}
	}
	h.poolKey = grantKey(cs, bootstrap)
	g, err := acquire(h.poolKey, h.use, func() (*grant, error) { return newGrant(cs, h.poolKey, bootstrap) })
	if err != nil {
		return err
	}
	h.entry, h.grant = g, g
	g.startLoop() // grants are refreshed when they near expiry, used or not
	return nil
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
func (h *Handler) Cleanup() error {
	if h.entry == nil {
		return nil
	}
	err := release(h.poolKey, h.entry, h.use)
	h.entry, h.source, h.grant = nil, nil, nil
	return err
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
	if h.Upstream401 == upstream401Off {
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
	setHeader(r.Header, h.tokenHeader, h.headerValue(tok))
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
// or the source is backing off; 502 otherwise. The client sees the provider
// and the error code, never the provider's description (that is logged
// once per token request) nor anything secret.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, err error) error {
	if r.Context().Err() != nil {
		// The client gave up while waiting; nobody reads an answer.
		return caddyhttp.Error(499, fmt.Errorf("client gave up waiting for a %s token", h.provider))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	var ae accountError
	if errors.As(err, &ae) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "oauth_bearer: %s; the request was not forwarded\n", ae.Error())
		return nil
	}
	metrics.failedRequests.WithLabelValues(h.provider, resultClass(err)).Inc()
	var ce *ConsentError
	if errors.As(err, &ce) {
		where := "an administrator must connect it (no oauth_bearer_consent handler with these credentials is loaded)"
		if ce.Connect != "" {
			where = "connect it at " + ce.Connect
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "oauth_bearer: %s account %q needs consent (%s): %s; the request was not forwarded\n", h.provider, ce.Account, codeConsentRequired, where)
		return nil
	}
	var te *TokenError
	var se *StorageError
	code, status, retryIn := "token_unavailable", http.StatusBadGateway, ""
	if errors.As(err, &se) {
		code = "storage_error"
	}
	if errors.As(err, &te) {
		code = te.Code
		if te.RetryAfter > 0 {
			secs := int64((min(te.RetryAfter, maxRetryAfter) + time.Second - 1) / time.Second)
			status, retryIn = http.StatusServiceUnavailable, fmt.Sprintf("; retry in %ds", secs)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "oauth_bearer: no access token from %s (%s)%s; the request was not forwarded\n", h.provider, code, retryIn)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
