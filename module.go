// Package oauthbearer is a Caddy HTTP handler that obtains OAuth 2.0 access
// tokens from an API provider, caches and refreshes them, and sets
// `Authorization: Bearer <token>` (plus provider headers) on requests before
// reverse_proxy sends them upstream, so that apps that cannot speak OAuth
// can call OAuth APIs.
//
// A request flows: ServeHTTP (this file) → tokenSource.Token
// (tokensource.go: cache, singleflight, backoff) → endpoint.fetch
// (endpoint.go: the token request and response), or for a stored grant
// grants.refresh (grant.go: storage, lock, rotation) → headers set → next
// handler. The consent endpoints of the authorization-code grant are in
// consent.go, metrics in metrics.go, presets in providers/.
package oauthbearer

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
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

// Defaults.
const (
	defaultRefreshBefore   = 60 * time.Second
	defaultTimeout         = 10 * time.Second
	defaultDefaultLifetime = 10 * time.Minute
	defaultReplayMaxBody   = 64 << 10
)

// Upstream 401 modes.
const (
	upstream401Retry      = "retry"
	upstream401Invalidate = "invalidate"
	upstream401Off        = "off"
)

// Handler injects an OAuth 2.0 access token, obtained with the
// client_credentials grant, into every request it handles.
type Handler struct {
	// Provider names a preset (eventtemple, eventbookings, bookable,
	// generic). Empty means generic, which requires token_url.
	Provider string `json:"provider,omitempty"`
	// Environment selects one of the preset's token endpoints (Bookable:
	// production, sandbox).
	Environment string `json:"environment,omitempty"`
	// TokenURL overrides the preset's token endpoint.
	TokenURL string `json:"token_url,omitempty"`

	// ClientID and ClientSecret are resolved once in Provision; use
	// {env.X} or {file./path} placeholders to keep them out of the JSON.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`

	// Scopes are sent space-separated in the scope parameter.
	Scopes []string `json:"scopes,omitempty"`
	// Audience is the Auth0-style audience parameter.
	Audience string `json:"audience,omitempty"`
	// Resources are RFC 8707 resource indicators (absolute URIs).
	Resources []string `json:"resources,omitempty"`
	// Params are extra token request parameters.
	Params map[string]string `json:"params,omitempty"`

	// RequestFormat of the token request body: json, form or auto.
	RequestFormat string `json:"request_format,omitempty"`
	// ClientAuth is body (client_secret_post) or basic (client_secret_basic).
	ClientAuth string `json:"client_auth,omitempty"`

	// RefreshBefore is how long before expiry a token is replaced
	// (default 60s; half the lifetime for tokens living less than twice that).
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`
	// DefaultLifetime applies to tokens whose lifetime is unknown (no
	// expires_in and not a JWT with exp). Default 10m.
	DefaultLifetime caddy.Duration `json:"default_lifetime,omitempty"`
	// Timeout bounds one token request. Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Headers are extra upstream request headers; values may use request
	// placeholders.
	Headers map[string]string `json:"headers,omitempty"`
	// Org is the provider's organisation header shorthand (Event Temple:
	// X-API-ORG).
	Org string `json:"org,omitempty"`
	// TokenHeader is the header that carries the token (default
	// Authorization) and TokenPrefix what precedes it (default "Bearer"
	// for Authorization, nothing for other headers).
	TokenHeader string  `json:"token_header,omitempty"`
	TokenPrefix *string `json:"token_prefix,omitempty"`

	// CAFile is a PEM file of extra CA certificates to trust for the token
	// endpoint (corporate providers), besides the system roots.
	CAFile string `json:"ca_file,omitempty"`
	// Upstream401 says what happens when the upstream answers 401 to an
	// injected token: retry (default: drop the token and replay the request
	// once with a new one, when it can be replayed), invalidate (drop the
	// token, pass the 401 on) or off.
	Upstream401 string `json:"upstream_401,omitempty"`
	// ReplayMaxBody is the largest request body buffered so that the
	// request can be replayed after a 401 (default 64 KiB; -1: only
	// requests without a body are replayed). Larger and streaming bodies
	// are never buffered and never replayed.
	ReplayMaxBody int64 `json:"replay_max_body,omitempty"`

	// Grant is client_credentials (default), authorization_code (a person
	// consents through the consent endpoints) or refresh_token (start from
	// RefreshToken, obtained elsewhere).
	Grant string `json:"grant,omitempty"`
	// RedirectURI makes this handler the consent endpoint of an
	// authorization_code grant: it serves connect, callback (the path of
	// RedirectURI), status and disconnect, and nothing else.
	RedirectURI string `json:"redirect_uri,omitempty"`
	// ConnectPath, StatusPath and DisconnectPath default to connect, status
	// and disconnect beside the callback path.
	ConnectPath    string `json:"connect_path,omitempty"`
	StatusPath     string `json:"status_path,omitempty"`
	DisconnectPath string `json:"disconnect_path,omitempty"`
	// AuthorizeURL, RefreshURL and RevokeURL override the preset's.
	AuthorizeURL string `json:"authorize_url,omitempty"`
	RefreshURL   string `json:"refresh_url,omitempty"`
	RevokeURL    string `json:"revoke_url,omitempty"`
	// PKCE (S256) is on unless set to false.
	PKCE *bool `json:"pkce,omitempty"`
	// RefreshToken seeds a refresh_token grant; once the grant is stored
	// (and rotated), the stored one wins. Use {env.X} or {file./path}.
	RefreshToken string `json:"refresh_token,omitempty"`
	// Account selects whose grant a request uses, usually a placeholder
	// such as {http.request.header.X-Account}; default "default".
	Account string `json:"account,omitempty"`

	preset         providers.Provider
	cfg            sourceConfig
	source         *tokenSource // client_credentials
	grants         *grants      // authorization_code, refresh_token
	poolKey        string
	paths          consentPaths // set on a consent handler
	clock          func() time.Time
	logger         *zap.Logger
	authorizeURL   string
	resolvedScopes []string
	bootstrap      string
	tokenHeader    string // canonical header key
	tokenPrefix    string // with its trailing space, or empty
	headers        []upstreamHeader
	last           atomic.Pointer[injected]
}

// upstreamHeader is one extra header, its value resolved in Provision
// unless it holds request placeholders.
type upstreamHeader struct {
	key      string // canonical
	value    string
	perReq   bool // value has placeholders to resolve per request
	valueSet []string
}

// injected caches the header value built for the last token seen, so the
// per-request path does not build a string.
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

// Provision resolves the configuration and takes a reference to the shared
// token source. It does no network I/O: tokens are fetched on first use.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	cfg, err := h.resolve(provisionReplacer())
	if err != nil {
		return err
	}
	h.cfg = cfg
	h.clock = timeNow
	if cfg.Grant == "" {
		h.poolKey = cfg.key()
		val, _, err := sources.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
			return newTokenSource(cfg), nil
		})
		if err != nil {
			return err
		}
		h.source = val.(*tokenSource)
		return nil
	}
	// Grants are shared by the consent handler and the proxying handlers:
	// what only the consent request uses (scope) is not part of the key.
	gcfg := cfg
	gcfg.Scope, gcfg.Audience, gcfg.Resources, gcfg.Params = "", "", nil, nil
	bh := sha256.Sum256([]byte(h.bootstrap))
	h.poolKey = "grants:" + gcfg.key() + ":" + hex.EncodeToString(bh[:8])
	storage := ctx.Storage()
	val, _, err := sources.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		return newGrants(gcfg, storage, h.bootstrap, h.logger)
	})
	if err != nil {
		return err
	}
	h.grants = val.(*grants)
	if h.paths.connect != "" {
		registerConsent(h.grants.id, &h.paths)
	}
	return nil
}

// resolve checks the configuration, fills in the preset's defaults and
// resolves {env.*}/{file.*} placeholders into the source configuration.
// Errors name the offending field.
func (h *Handler) resolve(repl *caddy.Replacer) (sourceConfig, error) {
	name := h.Provider
	if name == "" {
		name = providers.Generic
	}
	p, ok := providers.Lookup(name)
	if !ok {
		return sourceConfig{}, fmt.Errorf("unknown provider %q (known: %s)", name, strings.Join(providers.Names(), ", "))
	}
	h.preset = p

	cfg := sourceConfig{
		Provider:        name,
		Scope:           repl.ReplaceKnown(strings.Join(h.Scopes, " "), ""),
		Audience:        firstNonEmpty(repl.ReplaceKnown(h.Audience, ""), p.Audience),
		Format:          firstNonEmpty(h.RequestFormat, p.RequestFormat),
		PreferredFormat: firstNonEmpty(p.PreferredFormat, p.RequestFormat),
		ClientAuth:      firstNonEmpty(h.ClientAuth, p.ClientAuth),
		RefreshBefore:   firstDuration(h.RefreshBefore, p.RefreshBefore, defaultRefreshBefore),
		DefaultLifetime: firstDuration(h.DefaultLifetime, 0, defaultDefaultLifetime),
		Timeout:         firstDuration(h.Timeout, 0, defaultTimeout),
	}
	if cfg.PreferredFormat == providers.FormatAuto {
		cfg.PreferredFormat = providers.FormatForm
	}
	if cfg.Format != providers.FormatAuto {
		cfg.PreferredFormat = ""
	}
	switch cfg.Format {
	case providers.FormatJSON, providers.FormatForm, providers.FormatAuto:
	default:
		return cfg, fmt.Errorf("request_format: %q is not json, form or auto", cfg.Format)
	}
	switch cfg.ClientAuth {
	case providers.AuthBody, providers.AuthBasic:
	default:
		return cfg, fmt.Errorf("client_auth: %q is not body or basic", cfg.ClientAuth)
	}
	for field, d := range map[string]time.Duration{"refresh_before": time.Duration(h.RefreshBefore),
		"default_lifetime": time.Duration(h.DefaultLifetime), "timeout": time.Duration(h.Timeout)} {
		if d < 0 {
			return cfg, fmt.Errorf("%s: must not be negative", field)
		}
	}

	// Token endpoint.
	if h.Environment != "" {
		if _, err := p.TokenURL(h.Environment); err != nil {
			return cfg, fmt.Errorf("environment: %w", err)
		}
	}
	if h.TokenURL != "" {
		cfg.TokenURL = repl.ReplaceKnown(h.TokenURL, "")
	} else {
		u, err := p.TokenURL(h.Environment)
		if err != nil {
			return cfg, fmt.Errorf("token_url is required for provider %s", name)
		}
		cfg.TokenURL = u
	}
	if err := checkTokenURL(cfg.TokenURL); err != nil {
		return cfg, fmt.Errorf("token_url: %w", err)
	}

	// Credentials: resolved now, never kept in exported fields.
	cfg.ClientID = repl.ReplaceKnown(h.ClientID, "")
	cfg.clientSecret = repl.ReplaceKnown(h.ClientSecret, "")
	if h.ClientID == "" {
		return cfg, errors.New("client_id is required")
	}
	if h.ClientSecret == "" {
		return cfg, errors.New("client_secret is required")
	}
	if cfg.ClientID == "" {
		return cfg, fmt.Errorf("client_id %s resolved to an empty value (is the variable or file set?)", h.ClientID)
	}
	if cfg.clientSecret == "" {
		return cfg, fmt.Errorf("client_secret %s resolved to an empty value (is the variable or file set?)", placeholderOnly(h.ClientSecret))
	}
	if p.RequiresAudience && cfg.Audience == "" {
		return cfg, fmt.Errorf("audience is required by provider %s", name)
	}
	for _, r := range h.Resources {
		r = repl.ReplaceKnown(r, "")
		if u, err := url.Parse(r); err != nil || !u.IsAbs() || u.Fragment != "" {
			return cfg, fmt.Errorf("resource: %q is not an absolute URI without a fragment (RFC 8707)", r)
		}
		cfg.Resources = append(cfg.Resources, r)
	}
	if len(h.Params) > 0 {
		cfg.Params = make(map[string]string, len(h.Params))
		for k, v := range h.Params {
			switch k {
			case "grant_type", "client_id", "client_secret":
				return cfg, fmt.Errorf("param: %q is set by the handler and cannot be overridden", k)
			case "":
				return cfg, errors.New("param: empty parameter name")
			}
			cfg.Params[k] = repl.ReplaceKnown(v, "")
		}
	}

	if h.CAFile != "" {
		cfg.CAFile = repl.ReplaceKnown(h.CAFile, "")
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return cfg, fmt.Errorf("ca_file: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
		cfg.caPEM = pem
	}
	switch h.Upstream401 {
	case "", upstream401Retry, upstream401Invalidate, upstream401Off:
	default:
		return cfg, fmt.Errorf("upstream_401: %q is not retry, invalidate or off", h.Upstream401)
	}

	if err := h.resolveGrant(&cfg, p, repl); err != nil {
		return cfg, err
	}

	// Upstream headers.
	h.tokenHeader = textproto.CanonicalMIMEHeaderKey(firstNonEmpty(h.TokenHeader, "Authorization"))
	if !httpguts.ValidHeaderFieldName(h.tokenHeader) {
		return cfg, fmt.Errorf("token_header: %q is not a valid header name", h.TokenHeader)
	}
	switch {
	case h.TokenPrefix != nil && *h.TokenPrefix != "":
		h.tokenPrefix = *h.TokenPrefix + " "
	case h.TokenPrefix == nil && h.tokenHeader == "Authorization":
		h.tokenPrefix = "Bearer "
	}
	hdrs := make(map[string]string, len(h.Headers)+1)
	if h.Org != "" {
		if p.OrgHeader == "" {
			return cfg, fmt.Errorf("org: provider %s has no organisation header; use header <name> <value>", name)
		}
		hdrs[textproto.CanonicalMIMEHeaderKey(p.OrgHeader)] = h.Org
	}
	for k, v := range h.Headers {
		key := textproto.CanonicalMIMEHeaderKey(k)
		if _, dup := hdrs[key]; dup {
			return cfg, fmt.Errorf("header: %s is given twice (as org, or in another letter case)", key)
		}
		hdrs[key] = v
	}
	h.headers = h.headers[:0]
	for k, v := range hdrs {
		key := textproto.CanonicalMIMEHeaderKey(k)
		if !httpguts.ValidHeaderFieldName(key) {
			return cfg, fmt.Errorf("header: %q is not a valid header name", k)
		}
		if key == h.tokenHeader {
			return cfg, fmt.Errorf("header: %s carries the token; it cannot be set as an extra header", key)
		}
		val := repl.ReplaceKnown(v, "")
		if !httpguts.ValidHeaderFieldValue(val) {
			return cfg, fmt.Errorf("header: the value of %s is not a valid header value", key)
		}
		uh := upstreamHeader{key: key, value: val, perReq: strings.Contains(val, "{")}
		if val == "" && !uh.perReq {
			return cfg, fmt.Errorf("header: %s resolved to an empty value (is the variable or file set?)", key)
		}
		h.headers = append(h.headers, uh)
	}
	return cfg, nil
}

// resolveGrant checks and fills in what the authorization_code and
// refresh_token grants need.
func (h *Handler) resolveGrant(cfg *sourceConfig, p providers.Provider, repl *caddy.Replacer) error {
	h.paths, h.authorizeURL, h.bootstrap, h.resolvedScopes = consentPaths{}, "", "", nil
	switch h.Grant {
	case "", grantClientCredentials:
		for field, v := range map[string]string{"redirect_uri": h.RedirectURI, "refresh_token": h.RefreshToken,
			"account": h.Account, "authorize_url": h.AuthorizeURL, "refresh_url": h.RefreshURL, "revoke_url": h.RevokeURL,
			"connect_path": h.ConnectPath, "status_path": h.StatusPath, "disconnect_path": h.DisconnectPath} {
			if v != "" {
				return fmt.Errorf("%s: only for grant authorization_code or refresh_token", field)
			}
		}
		return nil
	case grantAuthorizationCode, grantRefreshToken:
	default:
		return fmt.Errorf("grant: %q is not client_credentials, authorization_code or refresh_token", h.Grant)
	}
	cfg.Grant = h.Grant
	if cfg.Audience != "" && cfg.Audience != p.Audience || len(cfg.Resources) > 0 || len(cfg.Params) > 0 {
		return errors.New("audience, resource and param apply to the client_credentials grant only")
	}
	cfg.Audience = ""
	if cfg.Format == providers.FormatAuto {
		// A code is single-use: no format probing with it.
		cfg.Format, cfg.PreferredFormat = cfg.PreferredFormat, ""
	}
	cfg.RefreshURL = repl.ReplaceKnown(firstNonEmpty(h.RefreshURL, p.RefreshURL), "")
	cfg.RevokeURL = repl.ReplaceKnown(firstNonEmpty(h.RevokeURL, p.RevokeURL), "")
	cfg.RefreshBearer = p.RefreshBearer
	for field, u := range map[string]string{"refresh_url": cfg.RefreshURL, "revoke_url": cfg.RevokeURL} {
		if u != "" {
			if err := checkTokenURL(u); err != nil {
				return fmt.Errorf("%s: %w", field, err)
			}
		}
	}
	if h.Account != "" && !strings.Contains(h.Account, "{") {
		if err := checkAccount(h.Account); err != nil {
			return fmt.Errorf("account: %w", err)
		}
	}
	if h.Grant == grantRefreshToken {
		if h.RedirectURI != "" {
			return errors.New("redirect_uri: only for grant authorization_code")
		}
		if h.RefreshToken == "" {
			return errors.New("refresh_token is required for grant refresh_token")
		}
		h.bootstrap = repl.ReplaceKnown(h.RefreshToken, "")
		if h.bootstrap == "" {
			return fmt.Errorf("refresh_token %s resolved to an empty value (is the variable or file set?)", placeholderOnly(h.RefreshToken))
		}
		return nil
	}
	if h.RefreshToken != "" {
		return errors.New("refresh_token: only for grant refresh_token")
	}
	if h.RedirectURI == "" {
		for field, v := range map[string]string{"connect_path": h.ConnectPath, "status_path": h.StatusPath, "disconnect_path": h.DisconnectPath} {
			if v != "" {
				return fmt.Errorf("%s: only on the consent handler (the one with redirect_uri)", field)
			}
		}
		return nil // a proxying handler: uses the grant the consent handler stores
	}
	paths, err := deriveConsentPaths(repl.ReplaceKnown(h.RedirectURI, ""), h.ConnectPath, h.StatusPath, h.DisconnectPath)
	if err != nil {
		return err
	}
	h.paths = paths
	h.authorizeURL = repl.ReplaceKnown(firstNonEmpty(h.AuthorizeURL, p.AuthorizeURL), "")
	if h.authorizeURL == "" {
		return fmt.Errorf("authorize_url is required: provider %s has none built in", p.Name)
	}
	if u, err := url.Parse(h.authorizeURL); err != nil || u.Host == "" || (u.Scheme != "https" && !isLoopback(u.Hostname())) {
		return fmt.Errorf("authorize_url: %q is not an https URL", h.authorizeURL)
	}
	for _, sc := range h.Scopes {
		h.resolvedScopes = append(h.resolvedScopes, repl.ReplaceKnown(sc, ""))
	}
	return nil
}

// provisionReplacer resolves {env.*} and {file.*} placeholders, the ones
// that hold configuration and secrets. Everything else ({time.*},
// {system.*}, {http.*}) is left for the request's replacer, so that a header
// value such as {time.now.unix} is fresh on every request.
func provisionReplacer() *caddy.Replacer {
	full := caddy.NewReplacer()
	r := caddy.NewEmptyReplacer()
	r.Map(func(key string) (any, bool) {
		if strings.HasPrefix(key, "env.") || strings.HasPrefix(key, "file.") {
			return full.Get(key)
		}
		return nil, false
	})
	return r
}

// checkTokenURL accepts https URLs, and plain http only to a loopback host
// (a local stand-in or a sidecar): credentials never cross a network in
// clear text.
func checkTokenURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", raw, err)
	}
	if u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	if u.User != nil {
		return errors.New("the URL must not carry credentials; use client_id and client_secret")
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return fmt.Errorf("%q uses plain http to a non-loopback host; use https", raw)
	}
	return nil
}

// Validate checks what Provision could not (kept for symmetry with other
// modules; all checks happen while resolving).
func (h *Handler) Validate() error {
	if h.source == nil && h.grants == nil {
		return errors.New("not provisioned")
	}
	return nil
}

// Cleanup drops this configuration's reference to the shared token source.
func (h *Handler) Cleanup() error {
	if h.source == nil && h.grants == nil {
		return nil
	}
	if h.grants != nil && h.paths.connect != "" {
		unregisterConsent(h.grants.id, &h.paths)
	}
	_, err := sources.Delete(h.poolKey)
	h.source, h.grants = nil, nil
	return err
}

// ServeHTTP sets the access token and the provider headers on the request
// and passes it on. Without a valid token the request is not forwarded.
// When the upstream refuses the token with a 401, the token is dropped and
// the request replayed once with a new one (see Upstream401).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.paths.callback != "" {
		return h.serveConsent(w, r)
	}
	src := h.source
	account := ""
	if h.grants != nil {
		if h.grants.isConsentPath(r.URL.EscapedPath()) {
			// The consent handler's endpoints pass untouched, on to the
			// route that guards and serves them.
			return next.ServeHTTP(w, r)
		}
		var err error
		if account, err = h.requestAccount(r); err != nil {
			http.Error(w, "oauth_bearer: "+err.Error()+"; the request was not forwarded", http.StatusBadRequest)
			return nil
		}
		src = h.grants.source(account)
	}
	tok, err := src.Token(r.Context(), h.logger)
	if err != nil {
		if h.grants != nil && isConsent(err) {
			return h.consentNeeded(w, r, account, src, err)
		}
		return h.fail(w, r, err)
	}
	if h.Upstream401 == upstream401Off {
		h.inject(r, tok)
		return next.ServeHTTP(w, r)
	}

	var body []byte
	replayable := false
	if h.Upstream401 != upstream401Invalidate {
		if body, replayable, err = h.bufferBody(r); err != nil {
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
		}
	}
	var before *headerSnapshot
	if replayable {
		// The response header as it is before the upstream answers,
		// restored for a replay. Pooled: nearly every request discards it.
		before = snapshotPool.Get().(*headerSnapshot)
		before.take(w.Header())
		defer snapshotPool.Put(before)
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	rec := caddyhttp.NewResponseRecorder(w, buf, tokenRejected)

	h.inject(r, tok)
	err = next.ServeHTTP(rec, r)
	if err != nil || !rec.Buffered() || rec.Status() != http.StatusUnauthorized {
		return err
	}

	// The upstream refused the token.
	retry := src.reject(tok)
	if !retry || !replayable {
		action := "passed"
		if retry {
			action = "invalidated"
		}
		metrics.upstream401.WithLabelValues(h.cfg.Provider, action).Inc()
		h.logger.Warn("upstream refused the token",
			zap.String("provider", h.cfg.Provider),
			zap.String("action", action),
			zap.Duration("token_age", src.now().Sub(tok.obtained)),
			zap.Bool("replayable", replayable))
		return rec.WriteResponse()
	}
	metrics.upstream401.WithLabelValues(h.cfg.Provider, "retried").Inc()
	h.logger.Info("upstream refused the token; retrying with a new one",
		zap.String("provider", h.cfg.Provider),
		zap.Duration("token_age", src.now().Sub(tok.obtained)))
	before.restore(w.Header())
	if tok, err = src.Token(r.Context(), h.logger); err != nil {
		return h.fail(w, r, err)
	}
	if body != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	h.inject(r, tok)
	return next.ServeHTTP(w, r)
}

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

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// headerSnapshot is a copy of a header whose map and value storage are
// reused from request to request (http.Header.Clone allocates both).
type headerSnapshot struct {
	hdr  http.Header
	vals []string
}

var snapshotPool = sync.Pool{New: func() any { return &headerSnapshot{hdr: make(http.Header)} }}

// take copies h.
func (s *headerSnapshot) take(h http.Header) {
	clear(s.hdr)
	s.vals = s.vals[:0]
	for k, vs := range h {
		n := len(s.vals)
		s.vals = append(s.vals, vs...)
		s.hdr[k] = s.vals[n:len(s.vals):len(s.vals)]
	}
}

// restore makes h what it was when take copied it. The values are copied
// out: the snapshot's storage goes back to the pool.
func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	for k, vs := range s.hdr {
		h[k] = append([]string(nil), vs...)
	}
}

// tokenRejected reports an upstream answer that refuses the token: a 401
// with no challenge, or with a Bearer challenge whose error is absent or
// invalid_token. Other challenges (Basic, Bearer invalid_request) and every
// 403 (insufficient_scope) are not fixed by a new token.
func tokenRejected(status int, hdr http.Header) bool {
	if status != http.StatusUnauthorized {
		return false
	}
	challenges := hdr.Values("Www-Authenticate")
	if len(challenges) == 0 {
		return true
	}
	for _, c := range challenges {
		scheme, params, _ := strings.Cut(strings.TrimSpace(c), " ")
		if !strings.EqualFold(scheme, "Bearer") {
			continue
		}
		lower := strings.ToLower(params)
		if !strings.Contains(lower, "error=") || strings.Contains(lower, `error="invalid_token"`) ||
			strings.Contains(lower, "error=invalid_token") {
			return true
		}
	}
	return false
}

// bufferBody makes the request body replayable when it is small enough:
// no body, or one of at most ReplayMaxBody bytes, is read into memory. A
// larger or longer streaming body is left to stream (what was read is put
// back in front of it) and the request is not replayable.
func (h *Handler) bufferBody(r *http.Request) ([]byte, bool, error) {
	// Content-Length 0 is a request without a body (an unknown length is
	// -1); reverse_proxy sends none then. Caddy wraps even http.NoBody in
	// a reader of its own, so reading it would cost every GET a 512-byte
	// buffer, two wrappers and a read that moves the connection's deadline.
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, true, nil
	}
	limit := h.ReplayMaxBody
	if limit == 0 {
		limit = defaultReplayMaxBody
	}
	if limit < 0 || r.ContentLength > limit {
		return nil, false, nil
	}
	orig := r.Body
	b, err := io.ReadAll(io.LimitReader(orig, limit+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(b)) > limit {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(b), orig), orig}
		return nil, false, nil
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, true, nil
}

// requestAccount names the account whose grant a request uses.
func (h *Handler) requestAccount(r *http.Request) (string, error) {
	if h.Account == "" {
		return defaultAccount, nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return "", errors.New("no request replacer")
	}
	a := repl.ReplaceKnown(h.Account, "")
	if a == "" {
		return "", errors.New("the request names no account")
	}
	return a, checkAccount(a)
}

// consentNeeded answers a request whose account has no usable grant: 503,
// naming the account's connect endpoint.
func (h *Handler) consentNeeded(w http.ResponseWriter, r *http.Request, account string, src *tokenSource, err error) error {
	var te *TokenError
	if errors.As(err, &te) && strings.HasPrefix(te.Description, "no grant is stored") {
		h.grants.forget(account, src) // keep nothing for accounts that do not exist
	}
	metrics.failedRequests.WithLabelValues(h.cfg.Provider, codeConsentRequired).Inc()
	where := "an administrator must connect it (no consent endpoint is configured for it)"
	if p := h.grants.consentFor(); p != nil {
		where = "connect it at " + p.connect + "?account=" + url.QueryEscape(account)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "oauth_bearer: %s account %q needs consent (%s): %s; the request was not forwarded\n",
		h.cfg.Provider, account, codeConsentRequired, where)
	return nil
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

// headerValue returns prefix+token, built once per token and handler.
func (h *Handler) headerValue(tok *token) string {
	if c := h.last.Load(); c != nil && c.tok == tok {
		return c.value
	}
	c := &injected{tok: tok, value: h.tokenPrefix + tok.value}
	h.last.Store(c)
	return c.value
}

// fail answers a request that cannot get a token: 502, or 503 with
// Retry-After when the provider asked to wait or the source is backing off.
// The client sees the provider and the error code, never the provider's
// description (that is logged once per token request) nor anything secret.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) error {
	if r.Context().Err() != nil {
		// The client gave up while waiting; nobody reads an answer.
		return caddyhttp.Error(499, fmt.Errorf("client gave up waiting for a %s token", h.cfg.Provider))
	}
	metrics.failedRequests.WithLabelValues(h.cfg.Provider, resultClass(err)).Inc()
	code, status, retryIn := "token_unavailable", http.StatusBadGateway, ""
	var te *TokenError
	if errors.As(err, &te) {
		code = te.Code
		if te.RetryAfter > 0 {
			secs := int64((min(te.RetryAfter, maxRetryAfter) + time.Second - 1) / time.Second)
			status, retryIn = http.StatusServiceUnavailable, fmt.Sprintf("; retry in %ds", secs)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, "oauth_bearer: no access token from %s (%s)%s; the request was not forwarded\n", h.cfg.Provider, code, retryIn)
	return nil
}

func firstDuration(ds ...any) time.Duration {
	for _, d := range ds {
		var v time.Duration
		switch d := d.(type) {
		case caddy.Duration:
			v = time.Duration(d)
		case time.Duration:
			v = d
		}
		if v > 0 {
			return v
		}
	}
	return 0
}

// placeholderOnly returns s when it is a placeholder (safe to print), and a
// neutral word otherwise (a literal secret must not be echoed).
func placeholderOnly(s string) string {
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
		return s
	}
	return "(literal value)"
}

func isLoopback(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
