package oauthclient

// The token endpoint and the revocation endpoint of one provider, for one
// client: the token, refresh and revocation requests as the provider
// expects them (body format, client authentication, the JWT bearer grant)
// and their answers, turned into a Token or a *TokenError. The endpoints
// are configured or discovered from the issuer (discovery.go); the client
// authenticates as clientauth.go says.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// maxTokenResponse caps what is read of a token endpoint's answer.
const maxTokenResponse = 1 << 20

// maxLifetime caps how long a token is cached, whatever the provider says:
// a token is never treated as eternal.
const maxLifetime = 24 * time.Hour

// grantClientCredentials is the client credentials grant (RFC 6749 §4.4).
const grantClientCredentials = "client_credentials"

// Config is what an Endpoint needs to know: the provider's endpoints, the
// client, the parameters of its token requests, and the clock and the
// metrics of its owner. It holds the client's secret and keys: it is never
// logged or marshalled.
type Config struct {
	// Provider names the provider in errors (TokenError.Provider).
	Provider string
	// Grant is what ClientCredentials asks for: providers.GrantJWTBearer
	// (RFC 7523 §2.1, the assertion signed by Client.Signer or read from
	// Client.AssertionFile), else the client credentials grant.
	Grant string
	// TokenURL is the token endpoint; "" discovers it from Issuer.
	TokenURL string
	// Issuer is the authorization server whose metadata names the
	// endpoints that are not configured (RFC 8414).
	Issuer string
	// RefreshURL is where refresh tokens are redeemed, when not at the
	// token endpoint (Cal.com).
	RefreshURL string
	// RevokeURL is the revocation endpoint; "" discovers it from Issuer.
	RevokeURL string
	// Format is the body of requests: providers.FormatForm, FormatJSON, or
	// FormatAuto (PreferredFormat first, the other once if the server
	// refuses it; the one that worked is kept).
	Format, PreferredFormat string
	// RefreshBearer sends the refresh token as Authorization: Bearer, the
	// client then authenticating in the body (Cal.com).
	RefreshBearer bool
	// Timeout bounds each call (a token request, a discovery).
	Timeout time.Duration
	// DefaultLifetime is a token's lifetime when its answer gives none and
	// it is not a JWT with exp.
	DefaultLifetime time.Duration
	// RootCAs are PEM certificates trusted besides the system roots.
	RootCAs []byte
	// UserAgent is sent with every request.
	UserAgent string

	// The client credentials and JWT bearer grants' own parameters.
	Scope     string
	Audience  string
	Resources []string
	Params    map[string]string
	// The JWT bearer grant's iss and sub claims ("" omits sub), and
	// whether the scope is a claim only (Google), not a parameter too.
	AssertionIssuer, AssertionSubject string
	ScopeInAssertion                  bool

	// Client is the client and how it authenticates.
	Client Client

	// Now is the owner's clock: it stamps when a token was obtained and
	// ages the discovered metadata. nil: time.Now.
	Now func() time.Time
	// Observe, when not nil, is told of every token request: how long it
	// took (real time) and its outcome (nil or the error returned).
	Observe func(elapsed time.Duration, err error)
}

// redact is Redact with the client's secret.
func (cfg *Config) redact(s string) string { return Redact(cfg.Client.Secret, s) }

// Endpoint talks to one provider for one client: it builds the token,
// refresh and revocation requests the provider expects and turns the
// answers into a Token or a *TokenError. It owns its connection pool:
// whoever made it closes it (Close). It is safe for concurrent use.
type Endpoint struct {
	cfg    Config
	client *http.Client
	// discovered is the issuer's metadata, once read (with issuer); read
	// again when its lifetime ends or an endpoint it names fails.
	discovered atomic.Pointer[Metadata]
	discovery  sync.Mutex // one discovery at a time
	// format is the request format in use; with FormatAuto it starts as
	// the preferred one and switches once if the server refuses it.
	format atomic.Value // string
	// nonces are the DPoP nonces of the token endpoint's origin (RFC 9449
	// §8), kept from every answer to a request with a proof.
	nonces Nonces
}

// dpopKeyCtx carries the DPoP key of one call (WithDPoPKey).
type dpopKeyCtx struct{}

// WithDPoPKey makes the token requests of the calls made with ctx
// (ClientCredentials, ExchangeCode, Refresh) carry a DPoP proof signed with
// key (RFC 9449 §5): htm POST, htu the endpoint, the endpoint's latest
// nonce. An answer 400 use_dpop_nonce with a DPoP-Nonce is asked again
// once with it. The key is the caller's per call, not the Endpoint's: the
// caller decides which key a token is bound to (a key kept in shared
// storage with the token it is bound to). A token answered with
// token_type DPoP is then accepted (Token.TokenType says which).
func WithDPoPKey(ctx context.Context, key *DPoPKey) context.Context {
	if key == nil {
		return ctx
	}
	return context.WithValue(ctx, dpopKeyCtx{}, key)
}

// dpopKeyOf is the DPoP key WithDPoPKey put in ctx, nil if none.
func dpopKeyOf(ctx context.Context) *DPoPKey {
	k, _ := ctx.Value(dpopKeyCtx{}).(*DPoPKey)
	return k
}

// Nonces are the DPoP nonces the endpoint's servers gave.
func (e *Endpoint) Nonces() *Nonces { return &e.nonces }

// NewEndpoint makes the endpoint of cfg. It sends nothing.
func NewEndpoint(cfg Config) *Endpoint {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	transport := &http.Transport{
		// A pool of its own: token requests never share connections with
		// the proxied traffic. HTTPS_PROXY is honoured, as Caddy does.
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
	}
	if cfg.Client.Certificate != nil {
		// client_auth tls: the client certificate, read again when its
		// files change (mtls.go).
		transport.TLSClientConfig = cfg.Client.Certificate.TLSConfig()
	}
	if len(cfg.RootCAs) > 0 {
		// The system roots plus the extra CAs (which the caller checked).
		roots, err := x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		roots.AppendCertsFromPEM(cfg.RootCAs)
		if transport.TLSClientConfig == nil {
			transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		transport.TLSClientConfig.RootCAs = roots
	}
	e := &Endpoint{
		cfg: cfg,
		client: &http.Client{
			Transport: transport,
			// Credentials are never sent to a second address: a redirect
			// from the token endpoint is an error.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	f := cfg.Format
	if f == providers.FormatAuto {
		f = cfg.PreferredFormat
	}
	e.format.Store(f)
	return e
}

// Close frees the endpoint's idle connections.
func (e *Endpoint) Close() { e.client.CloseIdleConnections() }

// Format is the request format in use (with FormatAuto: the one that
// worked last).
func (e *Endpoint) Format() string { return e.format.Load().(string) }

// UseFormat makes format the one in use, as another instance found it to
// work (with FormatAuto; ignored otherwise).
func (e *Endpoint) UseFormat(format string) {
	if e.cfg.Format == providers.FormatAuto && format != "" {
		e.format.Store(format)
	}
}

// ClientCredentials performs one token request of the configured grant
// (client credentials, or the JWT bearer grant with a fresh assertion):
// two with request format auto when the first format is refused, within
// the configured timeout.
func (e *Endpoint) ClientCredentials(ctx context.Context) (*Token, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	target, err := e.tokenURL(ctx)
	if err != nil {
		return nil, err
	}
	format := e.format.Load().(string)
	tok, err := e.tokenCall(ctx, target, format, e.grantParams, "")
	if err == nil || e.cfg.Format != providers.FormatAuto || !formatRefused(err) {
		return tok, err
	}
	other := providers.FormatForm
	if format == providers.FormatForm {
		other = providers.FormatJSON
	}
	tok, err2 := e.tokenCall(ctx, target, other, e.grantParams, "")
	if err2 != nil {
		// Report the answer to the preferred format: it is the one the
		// provider documents, so its error is the more useful one.
		if formatRefused(err2) {
			return nil, err
		}
		return nil, err2
	}
	e.format.Store(other)
	return tok, nil
}

// formatRefused reports whether an error means "wrong body format".
func formatRefused(err error) bool {
	var te *TokenError
	if !errors.As(err, &te) {
		return false
	}
	return te.Status == http.StatusUnsupportedMediaType ||
		(te.Status == http.StatusBadRequest && te.Code == "invalid_request")
}

// grantParams returns the parameters of a client_credentials or JWT bearer
// token request to target, client authentication excluded.
func (e *Endpoint) grantParams(target string) (url.Values, error) {
	v := url.Values{}
	if e.cfg.Grant == providers.GrantJWTBearer {
		assertion, err := e.cfg.bearerAssertion(target)
		if err != nil {
			return nil, err
		}
		setJWTBearerGrant(v, assertion)
		if e.cfg.Scope != "" && !e.cfg.ScopeInAssertion {
			v.Set("scope", e.cfg.Scope)
		}
	} else {
		v.Set("grant_type", grantClientCredentials)
		if e.cfg.Scope != "" {
			v.Set("scope", e.cfg.Scope)
		}
	}
	if e.cfg.Audience != "" {
		v.Set("audience", e.cfg.Audience)
	}
	for _, r := range e.cfg.Resources {
		v.Add("resource", r)
	}
	for k, val := range e.cfg.Params {
		v.Set(k, val)
	}
	return v, nil
}

// fixedParams makes a parameter builder of fixed parameters.
func fixedParams(p url.Values) func(string) (url.Values, error) {
	return func(string) (url.Values, error) {
		c := url.Values{}
		for k, v := range p {
			c[k] = append([]string(nil), v...)
		}
		return c, nil
	}
}

// ExchangeCode redeems an authorization code (RFC 6749 4.1.3, with the PKCE
// verifier of RFC 7636). A code is single-use, so the request is made once,
// in the format in use: never the format fallback of FormatAuto.
func (e *Endpoint) ExchangeCode(ctx context.Context, code, verifier, redirectURI string) (*Token, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	target, err := e.tokenURL(ctx)
	if err != nil {
		return nil, err
	}
	p := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}}
	if verifier != "" {
		p.Set("code_verifier", verifier)
	}
	return e.tokenCall(ctx, target, e.format.Load().(string), fixedParams(p), "")
}

// Refresh redeems a refresh token (RFC 6749 section 6) at the refresh URL
// (the token URL unless the provider has its own). Providers that take the
// refresh token as a bearer credential (Cal.com) get it in the
// Authorization header instead of the body.
func (e *Endpoint) Refresh(ctx context.Context, refreshToken string) (*Token, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	p := url.Values{"grant_type": {"refresh_token"}}
	bearer := ""
	if e.cfg.RefreshBearer {
		bearer = refreshToken
	} else {
		p.Set("refresh_token", refreshToken)
	}
	target, err := e.tokenURL(ctx)
	if err != nil {
		return nil, err
	}
	return e.tokenCall(ctx, cmp.Or(e.cfg.RefreshURL, target), e.format.Load().(string), fixedParams(p), bearer)
}

// revocationURL is the revocation endpoint: revoke_url (or the preset's),
// else the one the issuer's metadata names (its mTLS alias with a client
// certificate); "" when there is none.
func (e *Endpoint) revocationURL(ctx context.Context) (string, error) {
	if e.cfg.RevokeURL != "" {
		return e.cfg.RevokeURL, nil
	}
	d, err := e.Discover(ctx)
	if err != nil || d == nil {
		return "", err
	}
	if e.cfg.Client.Certificate != nil && d.MTLSEndpointAliases.RevocationEndpoint != "" {
		return d.MTLSEndpointAliases.RevocationEndpoint, nil
	}
	return d.RevocationEndpoint, nil
}

// CanRevoke reports whether tokens can be revoked at the provider: it has
// a revocation endpoint, configured or discovered (discovering now if need
// be). A discovery that fails counts as yes, so that Revoke reports it.
func (e *Endpoint) CanRevoke(ctx context.Context) bool {
	target, err := e.revocationURL(ctx)
	return err != nil || target != ""
}

// Revoke revokes a token at the provider (RFC 7009, or the provider's own
// call with the same parameters); hint is its token_type_hint ("" for
// none). Unknown tokens are not an error there; no revocation endpoint
// (CanRevoke false) is not one either.
func (e *Endpoint) Revoke(ctx context.Context, tok, hint string) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	target, err := e.revocationURL(ctx)
	if err != nil || target == "" {
		return err
	}
	p := url.Values{"token": {tok}}
	if hint != "" {
		p.Set("token_type_hint", hint)
	}
	resp, body, _, err := e.do(ctx, target, e.format.Load().(string), fixedParams(p), "")
	if err != nil {
		return err
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	if _, perr := parseTokenResponse(&e.cfg, resp, body, time.Now(), false); perr != nil {
		return perr
	}
	return e.localError(fmt.Sprintf("http_%d", resp.StatusCode), "revocation refused")
}

// tokenCall posts a token request, parses the answer and tells Observe.
// params builds the request's parameters for its target (a JWT assertion
// names the endpoint it is sent to).
func (e *Endpoint) tokenCall(ctx context.Context, target, format string, params func(string) (url.Values, error), bearer string) (*Token, error) {
	began := time.Now()
	resp, body, start, err := e.do(ctx, target, format, params, bearer)
	var tok *Token
	if err == nil {
		tok, err = parseTokenResponse(&e.cfg, resp, body, start, dpopKeyOf(ctx) != nil)
	}
	if e.cfg.Observe != nil {
		e.cfg.Observe(time.Since(began), err)
	}
	return tok, err
}

// do posts params to target with client authentication and reads at most
// maxTokenResponse of the answer.
func (e *Endpoint) do(ctx context.Context, target, format string, params func(string) (url.Values, error), bearer string) (*http.Response, []byte, time.Time, error) {
	key := dpopKeyOf(ctx)
	for attempt := 0; ; attempt++ {
		resp, body, start, err := e.doOnce(ctx, target, format, params, bearer, key)
		if key == nil || err != nil {
			return resp, body, start, err
		}
		origin := originOrEmpty(target)
		e.nonces.Observe(origin, resp.Header)
		if _, ok := TokenNonceChallenge(resp.StatusCode, resp.Header, body); ok && attempt == 0 {
			continue // asked again once, with the nonce (RFC 9449 §8)
		}
		return resp, body, start, err
	}
}

// originOrEmpty is the origin of target, "" if it has none.
func originOrEmpty(target string) string {
	o, _ := Origin(target)
	return o
}

// doOnce is one request of do, with a DPoP proof when key is set.
func (e *Endpoint) doOnce(ctx context.Context, target, format string, params func(string) (url.Values, error), bearer string, key *DPoPKey) (*http.Response, []byte, time.Time, error) {
	start := e.cfg.Now()
	p, err := params(target)
	if err == nil {
		var req *http.Request
		if req, err = e.newRequest(ctx, target, format, p, bearer); err == nil && key != nil {
			err = e.addProof(req, target, key)
		}
		if err == nil {
			resp, body, start, err := e.send(ctx, req, start)
			var te *TokenError
			transport := errors.As(err, &te) && te.Status == 0 && !errors.Is(ctx.Err(), context.Canceled)
			if transport || resp != nil && resp.StatusCode == http.StatusNotFound {
				e.endpointFailed(target)
			}
			return resp, body, start, err
		}
	}
	// Nothing was sent: a failure of what a configuration field gives (an
	// assertion file, a key that fails to sign), never the provider's
	// invalid_request.
	return nil, nil, start, e.localError(CodeLocalConfigError, err.Error())
}

// addProof puts a DPoP proof for target on req: htm POST, htu target
// without query and fragment, the origin's latest nonce.
func (e *Endpoint) addProof(req *http.Request, target string, key *DPoPKey) error {
	htu, err := NormalizeHTU(target)
	if err != nil {
		return err
	}
	proof, err := key.Proof(ProofParams{Method: http.MethodPost, URL: htu, Nonce: e.nonces.Get(originOrEmpty(target))})
	if err != nil {
		return err
	}
	req.Header.Set("DPoP", proof)
	return nil
}

// send sends a request and reads at most maxTokenResponse of the answer.
func (e *Endpoint) send(ctx context.Context, req *http.Request, start time.Time) (*http.Response, []byte, time.Time, error) {
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, nil, start, e.transportError(ctx, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil {
		return nil, nil, start, e.transportError(ctx, err)
	}
	if len(body) > maxTokenResponse {
		return nil, nil, start, &TokenError{Provider: e.cfg.Provider, Status: resp.StatusCode, Code: "response_too_large",
			Description: "token response exceeds 1 MiB"}
	}
	return resp, body, start, nil
}

// newRequest builds the HTTP request for one call to the provider. With a
// bearer credential (a refresh token sent as Authorization: Bearer), the
// client authenticates in the body.
func (e *Endpoint) newRequest(ctx context.Context, target, format string, params url.Values, bearer string) (*http.Request, error) {
	authorization, err := e.cfg.Client.authenticate(params, target, bearer != "")
	if err != nil {
		return nil, err
	}
	var body []byte
	var contentType string
	if format == providers.FormatJSON {
		obj := make(map[string]any, len(params))
		for k, vs := range params {
			if len(vs) == 1 {
				obj[k] = vs[0]
			} else {
				obj[k] = vs
			}
		}
		b, err := json.Marshal(obj)
		if err != nil {
			return nil, err
		}
		body, contentType = b, "application/json"
	} else {
		body, contentType = []byte(params.Encode()), "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, &fieldError{field: "token_url", err: err}
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	if e.cfg.UserAgent != "" {
		req.Header.Set("User-Agent", e.cfg.UserAgent)
	}
	switch {
	case bearer != "":
		req.Header.Set("Authorization", "Bearer "+bearer)
	case authorization != "":
		req.Header.Set("Authorization", authorization)
	}
	return req, nil
}

// tokenURL is the token endpoint: configured, or discovered from the
// issuer (its mTLS alias with client_auth tls).
func (e *Endpoint) tokenURL(ctx context.Context) (string, error) {
	if e.cfg.TokenURL != "" {
		return e.cfg.TokenURL, nil
	}
	d, err := e.Discover(ctx)
	if err != nil {
		return "", err
	}
	if e.cfg.Client.Certificate != nil {
		return d.mtlsTokenEndpoint(), nil
	}
	return d.TokenEndpoint, nil
}

// KnownTokenURL is the token endpoint as far as it is known without a
// request: configured, or named by the metadata read so far; "" when
// neither (an issuer not asked yet).
func (e *Endpoint) KnownTokenURL() string {
	if e.cfg.TokenURL != "" {
		return e.cfg.TokenURL
	}
	d := e.discovered.Load()
	switch {
	case d == nil:
		return ""
	case e.cfg.Client.Certificate != nil:
		return d.mtlsTokenEndpoint()
	}
	return d.TokenEndpoint
}

// Discover returns the issuer's metadata, read when there is none yet,
// when its lifetime (Cache-Control, default a day) has ended, or after an
// endpoint it names failed at transport level or answered 404; nil without
// an issuer. When reading it again fails, a document whose lifetime merely
// ended is used for another minute (the issuer's metadata server being
// down must not stop tokens); a failure with no usable document is a token
// error, backed off like one.
func (e *Endpoint) Discover(ctx context.Context) (*Metadata, error) {
	if e.cfg.Issuer == "" {
		return nil, nil
	}
	if d := e.discovered.Load(); d.fresh(e.cfg.Now()) {
		return d, nil
	}
	e.discovery.Lock()
	defer e.discovery.Unlock()
	now := e.cfg.Now()
	old := e.discovered.Load()
	if old.fresh(now) {
		return old, nil
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	d, err := discoverIssuer(ctx, e.client, e.cfg.Issuer)
	if err != nil {
		if old != nil && !old.failed {
			kept := *old
			kept.Expires = now.Add(minDiscoveryLifetime)
			e.discovered.Store(&kept)
			return &kept, nil
		}
		code := "discovery_failed"
		if ctx.Err() != nil {
			code = "timeout"
		}
		return nil, &TokenError{Provider: e.cfg.Provider, Code: code, Description: e.cfg.redact(err.Error())}
	}
	d.Fetched, d.Expires = now, now.Add(d.lifetime)
	e.discovered.Store(d)
	return d, nil
}

// AdoptMetadata takes a document another instance (or an earlier process)
// stored, when it is within its lifetime and newer than the one in use.
func (e *Endpoint) AdoptMetadata(d *Metadata) {
	if e.cfg.Issuer == "" || !d.fresh(e.cfg.Now()) || d.check(e.cfg.Issuer) != nil {
		return
	}
	if cur := e.discovered.Load(); cur == nil || d.Fetched.After(cur.Fetched) {
		e.discovered.CompareAndSwap(cur, d)
	}
}

// SharedMetadata is the document to store for the other instances: the
// one in use, unless an endpoint it names has failed; nil without one.
func (e *Endpoint) SharedMetadata() *Metadata {
	if d := e.discovered.Load(); d != nil && !d.failed {
		return d
	}
	return nil
}

// endpointFailed notes that target failed at transport level or answered
// 404: if the discovered document names it, the issuer is asked again at
// the next use (the provider may have moved it).
func (e *Endpoint) endpointFailed(target string) {
	d := e.discovered.Load()
	if d == nil || d.failed || !d.names(target) {
		return
	}
	failed := *d
	failed.failed = true
	e.discovered.CompareAndSwap(d, &failed)
}

func (e *Endpoint) localError(code, desc string) *TokenError {
	return &TokenError{Provider: e.cfg.Provider, Code: code, Description: e.cfg.redact(desc)}
}

func (e *Endpoint) transportError(ctx context.Context, err error) *TokenError {
	code := "unreachable"
	var ne net.Error
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr):
		code = "tls_error" // never skipped: trust an extra CA with ca_file
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) || ctx.Err() != nil:
		code = "timeout"
	}
	return e.localError(code, err.Error())
}

// CodeLocalConfigError is the code of a token request that failed on this
// side before anything was sent: what a configuration field gives could
// not be used (the client_assertion_file is missing, the private_key
// failed to sign). The description starts with the field. No provider
// sends this code: it is never mistaken for the provider's answer.
const CodeLocalConfigError = "local_config_error"

// TokenError is a failure to obtain a token. Code is the provider's OAuth
// error code when it gave one, else a short local code (unreachable,
// timeout, http_502, invalid_response, local_config_error, ...).
type TokenError struct {
	Provider    string
	Status      int // HTTP status of the answer; 0 when none came
	Code        string
	Description string // the provider's error_description, secrets redacted
	// RetryAfter is how long the provider asked to wait (Retry-After,
	// X-RateLimit-Reset), or, with Backoff, how long until the next attempt.
	RetryAfter time.Duration
	// Backoff marks an error returned without a request because the
	// source is waiting after earlier failures.
	Backoff bool

	// rotated: see Rotated. Never printed.
	rotated string
}

// Rotated is the refresh token of a 2xx answer that was rejected for the
// rest of it ("" if none): the provider may have revoked the one sent, so
// the caller keeps it all the same.
func (e *TokenError) Rotated() string { return e.rotated }

// RateLimited reports an answer that means "too many requests": 429, 503
// with a wait, slow_down, and Auth0's HTTP 500 access_denied about limits.
func (e *TokenError) RateLimited() bool {
	return e.Status == http.StatusTooManyRequests ||
		(e.Status == http.StatusServiceUnavailable && e.RetryAfter > 0) ||
		e.Code == "slow_down" ||
		(e.Status == http.StatusInternalServerError && e.Code == "access_denied" &&
			strings.Contains(strings.ToLower(e.Description), "limit"))
}

// Permanent reports an error that retrying cannot fix: the credentials or
// the grant's parameters are refused.
func (e *TokenError) Permanent() bool {
	if e.RateLimited() {
		return false
	}
	switch e.Code {
	case "invalid_client", "unauthorized_client", "invalid_scope", "access_denied", "unsupported_grant_type":
		return true
	}
	return false
}

func (e *TokenError) Error() string {
	var b strings.Builder
	b.WriteString(e.Provider)
	b.WriteString(" token request failed: ")
	b.WriteString(e.Code)
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	if e.Description != "" {
		b.WriteString(": ")
		b.WriteString(e.Description)
	}
	return b.String()
}

// tokenResponse is the union of the fields token endpoints answer with.
type tokenResponse struct {
	AccessToken      string          `json:"access_token"`
	TokenType        string          `json:"token_type"`
	ExpiresIn        json.RawMessage `json:"expires_in"`
	RefreshToken     string          `json:"refresh_token"`
	Scope            string          `json:"scope"`
	CreatedAt        json.RawMessage `json:"created_at"`
	Error            string          `json:"error"`
	ErrorDescription string          `json:"error_description"`
	Message          string          `json:"message"` // non-RFC errors: {"message": "..."}
	Title            string          `json:"title"`   // application/problem+json
	Detail           string          `json:"detail"`
}

// Token is an access token a token endpoint gave.
type Token struct {
	AccessToken  string
	Scope        string // as the answer gave it; "" when it gave none
	RefreshToken string // "" when the answer holds none
	// Obtained is when the request that got it was sent (by Config.Now);
	// Expiry is when it expires, never more than a day later.
	Obtained, Expiry time.Time
	// LifetimeFrom says where the lifetime came from: expires_in,
	// jwt_exp (the token's own exp claim) or default_lifetime.
	LifetimeFrom string
	// TokenType is TokenTypeBearer, or TokenTypeDPoP for a token bound to
	// the key of the request's proof (WithDPoPKey).
	TokenType string
}

// Token types (RFC 6750, RFC 9449 §5).
const (
	TokenTypeBearer = "Bearer"
	TokenTypeDPoP   = "DPoP"
)

// parseTokenResponse turns a token endpoint's answer into a token.
// start is when the request was sent.
//
// With dpop (the request carried a proof), token_type DPoP is accepted
// too; Token.TokenType says which the answer gave.
func parseTokenResponse(cfg *Config, resp *http.Response, body []byte, start time.Time, dpop bool) (*Token, error) {
	var rotated string // once the answer is known to be a 2xx, its refresh token
	fail := func(code, desc string) *TokenError {
		// The code is the provider's text too (its error field).
		return &TokenError{Provider: cfg.Provider, Status: resp.StatusCode, Code: Truncate(cfg.redact(code), 64),
			Description: cfg.redact(desc), RetryAfter: retryAfter(resp.Header, start), rotated: rotated}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, fail("unexpected_redirect", "the token endpoint redirected to "+safeLocation(resp.Header.Get("Location"))+"; redirects are not followed with credentials")
	}
	var tr tokenResponse
	mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
		if resp.StatusCode >= 400 {
			return nil, fail(fmt.Sprintf("http_%d", resp.StatusCode), "empty body")
		}
		return nil, fail("invalid_response", "empty body")
	case trimmed[0] == '{':
		if err := json.Unmarshal(trimmed, &tr); err != nil {
			if resp.StatusCode >= 400 {
				return nil, fail(fmt.Sprintf("http_%d", resp.StatusCode), "unparseable JSON body")
			}
			return nil, fail("invalid_response", "token response is not valid JSON: "+err.Error())
		}
	case mediaType == "application/x-www-form-urlencoded" || (resp.StatusCode < 300 && mediaType != "text/html"):
		// Some servers (GitHub) answer form-encoded bodies.
		vals, err := url.ParseQuery(string(trimmed))
		if err != nil || (vals.Get("access_token") == "" && vals.Get("error") == "") {
			if resp.StatusCode >= 400 {
				return nil, fail(fmt.Sprintf("http_%d", resp.StatusCode), describeBody(mediaType, trimmed))
			}
			return nil, fail("invalid_response", "token response is neither JSON nor form-encoded ("+describeBody(mediaType, trimmed)+")")
		}
		tr.AccessToken, tr.TokenType, tr.Scope = vals.Get("access_token"), vals.Get("token_type"), vals.Get("scope")
		tr.RefreshToken, tr.Error, tr.ErrorDescription = vals.Get("refresh_token"), vals.Get("error"), vals.Get("error_description")
		if s := vals.Get("expires_in"); s != "" {
			tr.ExpiresIn = json.RawMessage(strconv.Quote(s))
		}
	default:
		return nil, fail(fmt.Sprintf("http_%d", resp.StatusCode), describeBody(mediaType, trimmed))
	}

	if tr.Error != "" {
		// An error field fails the request even on HTTP 200.
		return nil, fail(tr.Error, tr.ErrorDescription)
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		desc := cmp.Or(tr.Message, tr.Detail, tr.Title, tr.ErrorDescription)
		return nil, fail(fmt.Sprintf("http_%d", resp.StatusCode), desc)
	}
	rotated = tr.RefreshToken
	if tr.AccessToken == "" {
		return nil, fail("invalid_response", "token response has no access_token")
	}
	if !validTokenValue(tr.AccessToken) {
		return nil, fail("invalid_response", "access_token holds bytes that cannot be sent in a header (only visible ASCII is)")
	}
	tokenType := TokenTypeBearer
	switch tt := tr.TokenType; {
	case tt == "" || strings.EqualFold(tt, TokenTypeBearer):
	case dpop && strings.EqualFold(tt, TokenTypeDPoP):
		tokenType = TokenTypeDPoP
	case dpop:
		return nil, fail("unsupported_token_type", "token_type "+strconv.Quote(Truncate(tt, 32))+" is neither DPoP nor Bearer")
	default:
		return nil, fail("unsupported_token_type", "token_type "+strconv.Quote(Truncate(tt, 32))+" is not Bearer")
	}

	tok := &Token{AccessToken: tr.AccessToken, Scope: tr.Scope, RefreshToken: tr.RefreshToken, Obtained: start, TokenType: tokenType}
	lifetime, ok := parseSeconds(tr.ExpiresIn)
	switch {
	case ok && lifetime > 0:
		tok.LifetimeFrom = "expires_in"
		// created_at (Doorkeeper) anchors the expiry at the moment the
		// token was minted, when that moment is recent; Doorkeeper answers
		// a reused token with its old created_at and the remaining
		// lifetime, so an older created_at is ignored.
		if created, ok := parseSeconds(tr.CreatedAt); ok {
			at := time.Unix(int64(created.Seconds()), 0)
			if !at.After(start) && start.Sub(at) < 5*time.Minute {
				lifetime -= start.Sub(at)
			}
		}
	default:
		if jwtLife, ok := jwtLifetime(tr.AccessToken, start); ok {
			if jwtLife <= 0 {
				return nil, fail("invalid_response", "the access token (a JWT) had expired when it arrived, by its exp claim")
			}
			lifetime, tok.LifetimeFrom = jwtLife, "jwt_exp"
		} else {
			lifetime, tok.LifetimeFrom = cfg.DefaultLifetime, "default_lifetime"
		}
	}
	tok.Expiry = start.Add(min(lifetime, maxLifetime))
	return tok, nil
}

// parseSeconds reads a JSON number or numeric string as seconds.
func parseSeconds(raw json.RawMessage) (time.Duration, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, false
	}
	if unq, err := strconv.Unquote(s); err == nil {
		s = strings.TrimSpace(unq)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != f { // NaN
		return 0, false
	}
	if f > maxLifetime.Seconds()*365*100 {
		f = maxLifetime.Seconds() * 365 * 100 // avoid overflow; capped later
	}
	if f < -maxLifetime.Seconds()*365*100 {
		f = -maxLifetime.Seconds() * 365 * 100
	}
	return time.Duration(f * float64(time.Second)), true
}

// jwtLifetime reads exp (and iat) from an access token that is a JWT. The
// signature is not checked: the value only schedules the refresh. The
// lifetime is the smaller of exp-iat (immune to a clock skew that would
// make exp-now too long) and exp-now (right for a token handed out again
// long after iat). ok reports whether the token is a JWT with exp; the
// lifetime may then be zero or negative: the token has expired.
func jwtLifetime(tok string, now time.Time) (time.Duration, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return 0, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return 0, false
	}
	var claims struct {
		Exp json.RawMessage `json:"exp"`
		Iat json.RawMessage `json:"iat"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return 0, false
	}
	exp, ok := parseSeconds(claims.Exp)
	if !ok {
		return 0, false
	}
	life := time.Unix(int64(exp.Seconds()), 0).Sub(now)
	if iat, ok := parseSeconds(claims.Iat); ok {
		life = min(life, exp-iat)
	}
	return life, true
}

// retryAfter reads Retry-After (seconds or HTTP date) or X-RateLimit-Reset
// (unix time) from a response.
func retryAfter(h http.Header, now time.Time) time.Duration {
	if v := h.Get("Retry-After"); v != "" {
		if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && secs >= 0 {
			return time.Duration(secs) * time.Second
		}
		if t, err := http.ParseTime(v); err == nil {
			if d := t.Sub(now); d > 0 {
				return d
			}
		}
	}
	if v := h.Get("X-RateLimit-Reset"); v != "" {
		if unix, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			if d := time.Unix(unix, 0).Sub(now); d > 0 {
				return d
			}
		}
	}
	return 0
}

// describeBody says what a non-token body was, without echoing much of it.
func describeBody(mediaType string, body []byte) string {
	if mediaType == "" {
		mediaType = "no content type"
	}
	return fmt.Sprintf("%s body of %d bytes", mediaType, len(body))
}

// safeLocation reports a redirect target without its query, which could
// carry anything.
func safeLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil || loc == "" {
		return "an unparseable location"
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

// validTokenValue reports whether an access token can be sent as it is in
// a header: visible ASCII only (RFC 6750's b64token is a subset). Anything
// else would make every request fail, or be mangled on the way.
func validTokenValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] >= 0x7f {
			return false
		}
	}
	return true
}
