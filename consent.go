package oauthbearer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// consent.go: the oauth_bearer_consent handler, the endpoints through which
// a person connects an account to the provider (the authorization-code
// grant): connect (a page with a button; its POST redirects to the
// provider), callback (redeems the code and stores the grant), status
// (JSON, or the accounts page) and disconnect (a confirmation page; its
// POST disconnects). Guard them with basic_auth or forward_auth: whoever
// can use connect can attach an account to the proxy. With account set
// (typically {http.auth.user.id}), every endpoint acts on the signed-in
// person's account only; without it, on any account (operator mode).

func init() {
	caddy.RegisterModule(new(ConsentHandler))
}

// stateLifetime bounds how long a person may take to consent.
const stateLifetime = 10 * time.Minute

// ConsentHandler is the oauth_bearer_consent handler. It serves the
// consent endpoints of an authorization_code grant and passes every other
// request on. The oauth_bearer handlers with the same credentials use the
// grants it stores.
type ConsentHandler struct {
	// Credentials name the provider and the client, as in oauth_bearer.
	Credentials

	// RedirectURI is the callback URL registered with the provider, byte
	// for byte. Its path is the callback endpoint; connect, status and
	// disconnect sit beside it unless their paths are set.
	RedirectURI string `json:"redirect_uri,omitempty"`

	// AuthorizeURL overrides the preset's authorization endpoint.
	AuthorizeURL string `json:"authorize_url,omitempty"`

	// Scopes are asked for at the authorization endpoint, joined as the
	// preset says (Event Temple: commas; others: spaces).
	Scopes []string `json:"scopes,omitempty"`

	// PKCE (S256) is used unless set to false (for providers that reject
	// it).
	PKCE *bool `json:"pkce,omitempty"`

	// ConnectPath is the path of the connect endpoint. Default: connect
	// beside the callback.
	ConnectPath string `json:"connect_path,omitempty"`

	// StatusPath is the path of the status endpoint. Default: status
	// beside the callback.
	StatusPath string `json:"status_path,omitempty"`

	// DisconnectPath is the path of the disconnect endpoint. Default:
	// disconnect beside the callback.
	DisconnectPath string `json:"disconnect_path,omitempty"`

	// Account binds the endpoints to the signed-in person's account,
	// typically {http.auth.user.id} (the same as the injector's): each
	// endpoint acts on that account only, a request naming another one
	// is refused (403, logged), and status shows that account alone.
	// Empty: operator mode, where whoever passes the guard may act on any
	// account and see them all.
	Account string `json:"account,omitempty"`

	// Prompt is sent to the authorization endpoint as prompt (login,
	// consent, select_account, space-separated), so that connecting a
	// second account does not silently reuse the provider session of the
	// first.
	Prompt string `json:"prompt,omitempty"`

	// DisplayName is the provider's name on the pages. Default: the
	// preset's title.
	DisplayName string `json:"display_name,omitempty"`

	// PAR says when the authorization request is pushed to the provider
	// (RFC 9126), authenticated as the token requests are, and the browser
	// sent on with client_id and the request_uri alone: auto (the
	// default) when par_url is set or the issuer's metadata names a
	// pushed_authorization_request_endpoint; on: always (with no endpoint
	// known, connect fails with an error page, never a plain redirect);
	// off: never.
	PAR string `json:"par,omitempty"`

	// PARURL is the pushed authorization request endpoint. Default: the
	// one the issuer's metadata names.
	PARURL string `json:"par_url,omitempty"`

	grant        *grant
	poolKey      string
	use          *use
	released     bool // Cleanup dropped the reference (the fields stay for requests in flight)
	paths        consentPaths
	authorizeURL string
	formAction   string // the provider's origin, allowed as a form target
	scope        string
	title        string // the provider's name on the pages
	prompt       string
	parURL       string // par_url, resolved
	logger       *zap.Logger
}

// consentPaths are the endpoint paths, derived from redirect_uri unless
// set.
type consentPaths struct {
	redirect                              string // redirect_uri, resolved
	connect, callback, status, disconnect string
}

// CaddyModule returns the Caddy module information.
func (*ConsentHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_bearer_consent",
		New: func() caddy.Module { return new(ConsentHandler) },
	}
}

// check applies the configuration rules that hold before placeholders are
// resolved; the Caddyfile parser runs it too.
func (h *ConsentHandler) check() error {
	if err := h.Credentials.check(grantAuthorizationCode); err != nil {
		return err
	}
	if err := h.Credentials.checkRecordKey(grantAuthorizationCode, true); err != nil {
		return err
	}
	if h.RedirectURI == "" {
		return errField("redirect_uri", "is required: the callback URL registered with the provider")
	}
	if !strings.Contains(h.RedirectURI, "{") {
		if _, err := consentPathsFor(h.RedirectURI, "", "", ""); err != nil {
			return err
		}
	}
	p, _ := h.Credentials.preset()
	if h.AuthorizeURL == "" && p.AuthorizeURL == "" && p.AuthorizeURLTemplate == "" && h.Issuer == "" {
		return errField("authorize_url", "is required: provider %s has none built in (or give issuer)", p.Name)
	}
	if err := checkEndpointURL("authorize_url", h.AuthorizeURL); err != nil {
		return err
	}
	for _, s := range h.Scopes {
		if err := checkLoadTime("scope", "", s); err != nil {
			return err
		}
	}
	for _, f := range []struct{ field, value string }{{"connect_path", h.ConnectPath}, {"status_path", h.StatusPath}, {"disconnect_path", h.DisconnectPath}} {
		if f.value != "" && !strings.HasPrefix(f.value, "/") {
			return errField(f.field, "%q must start with /", f.value)
		}
	}
	if h.Account != "" && !strings.Contains(h.Account, "{") {
		if err := checkAccount(h.Account); err != nil {
			return errField("account", "%v", err)
		}
	}
	if err := checkTable(h, grantAuthorizationCode); err != nil {
		return err
	}
	if err := h.Credentials.checkDPoP(); err != nil {
		return err
	}
	if err := checkEndpointURL("par_url", h.PARURL); err != nil {
		return err
	}
	switch {
	case h.PAR == parOff && h.PARURL != "":
		return errField("par", "is off, but par_url is set: remove one of them")
	case h.PAR == parOn && h.PARURL == "" && h.Issuer == "":
		return errField("par", "is on, but no pushed authorization request endpoint can be known: set par_url, or issuer to discover it")
	}
	if h.Prompt != "" && strings.TrimSpace(h.Prompt) == "" {
		return errField("prompt", "is empty (use login, consent or select_account)")
	}
	for _, p := range strings.Fields(h.Prompt) {
		switch p {
		case "login", "consent", "select_account":
		case "none":
			return errField("prompt", "none asks the provider not to show any page, which cannot grant consent; use login, consent or select_account")
		default:
			return errField("prompt", "%q is not one of login, consent, select_account", truncate(p, 64))
		}
	}
	return nil
}

// consentPathsFor derives the endpoint paths from the redirect URI.
func consentPathsFor(redirectURI, connect, status, disconnect string) (consentPaths, error) {
	u, err := url.Parse(redirectURI)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Fragment != "" {
		return consentPaths{}, errField("redirect_uri", "%q is not an absolute URL without a fragment", redirectURI)
	}
	if u.Scheme != "https" && !oauthclient.IsLoopback(u.Hostname()) {
		return consentPaths{}, errField("redirect_uri", "%q must use https (plain http only to a loopback host)", redirectURI)
	}
	cb := u.EscapedPath()
	if cb == "" {
		cb = "/"
	}
	base := strings.TrimSuffix(path.Dir(cb), "/")
	return consentPaths{
		redirect:   redirectURI,
		callback:   cb,
		connect:    firstNonEmpty(connect, base+"/connect"),
		status:     firstNonEmpty(status, base+"/status"),
		disconnect: firstNonEmpty(disconnect, base+"/disconnect"),
	}, nil
}

// Provision checks and resolves the configuration and takes a reference to
// the grant it shares with the oauth_bearer handlers. No network I/O.
func (h *ConsentHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		return err
	}
	h.use = &use{logger: h.logger, storage: contextStorage(ctx), consent: &h.paths}
	h.poolKey = grantKey(cs, "")
	g, err := acquire(h.poolKey, h.use, func() (*grant, error) { return newGrant(cs, h.poolKey, "") })
	if err != nil {
		return err
	}
	h.grant = g
	g.warnDPoPMismatch(h.logger, h.use)
	return nil
}

// configure checks the configuration and resolves it: the credential set,
// the endpoint paths and what the authorization request carries.
func (h *ConsentHandler) configure(repl *caddy.Replacer) (*credentialSet, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	cs, err := h.Credentials.resolve(repl, grantAuthorizationCode)
	if err != nil {
		return nil, err
	}
	redirect, err := resolveRequired(repl, "redirect_uri", h.RedirectURI)
	if err != nil {
		return nil, err
	}
	if h.paths, err = consentPathsFor(redirect, h.ConnectPath, h.StatusPath, h.DisconnectPath); err != nil {
		return nil, err
	}
	params := map[string]string{}
	for k, v := range h.ProviderParams {
		params[k] = repl.ReplaceKnown(v, "")
	}
	fromPreset, err := presetURL(cs.preset, cs.preset.AuthorizeURLTemplate, params)
	if err != nil {
		return nil, err
	}
	if h.authorizeURL, err = resolveURL(repl, "authorize_url", firstNonEmpty(h.AuthorizeURL, fromPreset, cs.preset.AuthorizeURL)); err != nil {
		return nil, err
	}
	if h.authorizeURL != "" {
		au, _ := url.Parse(h.authorizeURL)
		h.formAction = au.Scheme + "://" + au.Host
	}
	scopes := make([]string, len(h.Scopes))
	for i, s := range h.Scopes {
		scopes[i] = repl.ReplaceKnown(s, "")
	}
	h.scope = strings.Join(scopes, cs.preset.ScopeSeparator)
	h.title = firstNonEmpty(strings.TrimSpace(repl.ReplaceKnown(h.DisplayName, "")), cs.preset.Title)
	h.prompt = strings.Join(strings.Fields(h.Prompt), " ")
	if h.parURL, err = resolveURL(repl, "par_url", h.PARURL); err != nil {
		return nil, err
	}
	return cs, nil
}

// Cleanup drops this configuration's reference to the grant.
// It writes nothing that ServeHTTP reads: a callback or disconnect that
// completes after its browser left may outlive the configuration.
func (h *ConsentHandler) Cleanup() error {
	if h.grant == nil || h.released {
		return nil
	}
	h.released = true
	return release(h.poolKey, h.grant, h.use)
}

// ServeHTTP answers the consent endpoints and passes other requests on.
func (h *ConsentHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var serve func(http.ResponseWriter, *http.Request) error
	switch r.URL.EscapedPath() {
	case h.paths.connect:
		serve = h.connect
	case h.paths.callback:
		serve = h.callback
	case h.paths.status:
		serve = h.status
	case h.paths.disconnect:
		serve = h.disconnect
	default:
		return next.ServeHTTP(w, r)
	}
	w.Header().Set("Cache-Control", "no-store")
	// same-origin, not no-referrer: a browser without Fetch Metadata (or
	// behind a proxy that strips Sec-Fetch-*) then sends the pages' own
	// POSTs with their Origin, which sameOrigin accepts, rather than
	// Origin: null, which it refuses. Other sites get no referrer.
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	return serve(w, r)
}

// refusal is a request the endpoints refuse: its status, what the person
// reads, and for the log why (403s are logged at warn).
type refusal struct {
	status int
	msg    string
	reason string // for the log
	named  string // the account the request named, for the log and the form
}

// requestAccount returns the account a request acts on and, with account
// set, the signed-in person's account (user). The request names an account
// in the query, or in the form field of a POST; absent, it is the
// signed-in account, or the default one in operator mode. With account
// set, naming another account is refused.
func (h *ConsentHandler) requestAccount(r *http.Request) (account, user string, ref *refusal) {
	named := r.FormValue("account")
	user, ref = h.signedIn(r)
	if ref != nil {
		return "", "", ref
	}
	if user != "" {
		if named != "" && named != user {
			return "", user, &refusal{status: http.StatusForbidden, reason: "another account",
				msg: fmt.Sprintf("You are signed in as %s: you can only act on that account here.", user), named: named}
		}
		return user, user, nil
	}
	if named == "" {
		return defaultAccount, "", nil
	}
	if err := checkAccount(named); err != nil {
		return "", "", &refusal{status: http.StatusBadRequest, reason: "invalid account name", msg: err.Error(), named: named}
	}
	return named, "", nil
}

// signedIn resolves account for a request: the signed-in person's account;
// "" in operator mode.
func (h *ConsentHandler) signedIn(r *http.Request) (string, *refusal) {
	if h.Account == "" {
		return "", nil
	}
	user := h.Account
	if strings.Contains(user, "{") {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return "", &refusal{status: http.StatusForbidden, reason: "no signed-in account", msg: "Nobody is signed in."}
		}
		user = repl.ReplaceKnown(user, "")
	}
	if user == "" {
		return "", &refusal{status: http.StatusForbidden, reason: "no signed-in account (account " + h.Account + " is empty)",
			msg: "Nobody is signed in: these pages act on the signed-in person's account."}
	}
	if err := checkAccount(user); err != nil {
		return "", &refusal{status: http.StatusForbidden, reason: "the signed-in account name is not valid", msg: err.Error(), named: user}
	}
	return user, nil
}

// refuse answers a refused request: a page for a browser, plain text for
// others; 403s are logged at warn with who asked and from where.
func (h *ConsentHandler) refuse(w http.ResponseWriter, r *http.Request, ref *refusal, user string) error {
	if ref.status == http.StatusForbidden {
		h.logger.Warn("consent request refused", zap.String("reason", ref.reason),
			zap.String("provider", h.grant.cfg.Provider), zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.String("remote_addr", r.RemoteAddr), zap.String("origin", r.Header.Get("Origin")),
			zap.String("sec_fetch_site", r.Header.Get("Sec-Fetch-Site")),
			zap.String("user", user), zap.String("account", truncate(ref.named, 128)))
	}
	if !wantsHTML(r) {
		http.Error(w, ref.msg, ref.status)
		return nil
	}
	v := &view{Title: "Refused", Message: ref.msg, User: user, Links: h.homeLinks(user, "")}
	if ref.status == http.StatusBadRequest {
		v.Title = "Not a valid account name"
	}
	return h.render(w, r, ref.status, "message", v)
}

// sameOrigin refuses what a browser marks as coming from another site: a
// cross-site form must not act with the browser's cached credentials for
// the consent endpoints (Sec-Fetch-Site, else Origin; clients that send
// neither are not browsers).
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
	}
	return true
}

// refuseCrossSite refuses a request sameOrigin refuses.
func (h *ConsentHandler) refuseCrossSite(w http.ResponseWriter, r *http.Request) error {
	user, _ := h.signedIn(r)
	return h.refuse(w, r, &refusal{status: http.StatusForbidden, reason: "cross-site request", named: r.FormValue("account"),
		msg: "This request came from another site and was refused: use the buttons on this site's own pages."}, user)
}

// connect: GET shows a page with a button for the account; its POST (same
// origin only) sends the browser to the provider with a fresh state, whose
// PKCE verifier and account travel in an encrypted cookie of their own:
// with the authorization request's parameters, or, pushed to the provider
// first (par), with client_id and the request_uri alone.
func (h *ConsentHandler) connect(w http.ResponseWriter, r *http.Request) error {
	cr, answered, err := h.begin(w, r, "connect", h.refuseConnect)
	if answered {
		return err
	}
	account, user := cr.account, cr.user
	if !cr.post {
		return h.connectPage(w, r, http.StatusOK, account, user, "")
	}
	st := pendingState{State: randomToken(32), Account: account, Expires: h.grant.now().Add(stateLifetime)}
	q := url.Values{
		"client_id":     {h.grant.cfg.ClientID},
		"redirect_uri":  {h.paths.redirect},
		"response_type": {"code"},
		"state":         {st.State},
	}
	if h.scope != "" {
		q.Set("scope", h.scope)
	}
	if h.prompt != "" {
		q.Set("prompt", h.prompt)
	}
	// With dpop, the grant's key is made now: its thumbprint goes in the
	// authorization request (dpop_jkt, RFC 9449 §10), binding the code to
	// it, and the key waits in the sealed state cookie for the callback.
	key, der, err := h.grant.newDPoPKey()
	if err != nil {
		h.logger.Error("making the grant's DPoP key failed", zap.String("provider", h.grant.cfg.Provider), zap.Error(err))
		return h.render(w, r, http.StatusInternalServerError, "message", &view{Title: "Not connected", User: user,
			Message: "The grant's DPoP key cannot be made; see the server log.", Links: h.homeLinks(user, account)})
	}
	if key != nil {
		st.DPoPKey, st.JKT = der, key.Thumbprint()
		q.Set("dpop_jkt", st.JKT)
	}
	if h.PKCE == nil || *h.PKCE {
		st.Verifier = randomToken(48) // 64 characters of base64url: within RFC 7636's 43-128
		sum := sha256.Sum256([]byte(st.Verifier))
		q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
		q.Set("code_challenge_method", "S256")
	}
	authorizeURL, err := h.authorizeEndpoint(r.Context())
	if err != nil {
		h.logger.Error("discovering the authorization endpoint failed", zap.String("provider", h.grant.cfg.Provider), zap.Error(err))
		return h.render(w, r, http.StatusBadGateway, "message", &view{Title: "Not connected", User: user,
			Message: "The provider's authorization endpoint cannot be found (discovery failed); see the server log.",
			Links:   h.homeLinks(user, account)})
	}
	sep := "?"
	if strings.Contains(authorizeURL, "?") {
		sep = "&"
	}
	target := authorizeURL + sep + q.Encode()
	pushed, failure := h.pushAuthorization(r, authorizeURL, q)
	if failure != nil {
		return h.render(w, r, failure.status, "message", &view{Title: "Not connected", User: user,
			Message: failure.msg, Links: h.homeLinks(user, account)})
	}
	if pushed != "" {
		target = pushed
	}
	http.SetCookie(w, h.stateCookie(st.State, h.sealState(st), int(stateLifetime/time.Second)))
	h.logger.Info("consent started", zap.String("provider", h.grant.cfg.Provider), zap.String("account", account), zap.Bool("pushed", pushed != ""))
	http.Redirect(w, r, target, http.StatusSeeOther)
	return nil
}

// consentRequest is a request to connect or disconnect, past begin.
type consentRequest struct {
	account, user string
	post          bool // act (else show the page)
}

// begin is the prologue of connect and disconnect: GET (and HEAD) show
// the page, POST acts, other methods are answered 405 with Allow; a POST
// must come from the same origin; the account is the one the request may
// act on (refused with refuse otherwise). answered: the request was
// answered (err is the answer's).
func (h *ConsentHandler) begin(w http.ResponseWriter, r *http.Request, action string,
	refuse func(http.ResponseWriter, *http.Request, *refusal, string) error) (cr consentRequest, answered bool, err error) {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "use GET for the page, POST to "+action, http.StatusMethodNotAllowed)
		return cr, true, nil
	}
	cr.post = r.Method == http.MethodPost
	if cr.post && !sameOrigin(r) {
		return cr, true, h.refuseCrossSite(w, r)
	}
	var ref *refusal
	if cr.account, cr.user, ref = h.requestAccount(r); ref != nil {
		return cr, true, refuse(w, r, ref, cr.user)
	}
	return cr, false, nil
}

// refuseConnect answers a refused connect: a name the handler refuses
// comes back on the connect page, with the message and the form filled.
func (h *ConsentHandler) refuseConnect(w http.ResponseWriter, r *http.Request, ref *refusal, user string) error {
	if ref.status == http.StatusBadRequest && wantsHTML(r) {
		return h.connectPage(w, r, http.StatusBadRequest, ref.named, user, ref.msg)
	}
	return h.refuse(w, r, ref, user)
}

// connectPage shows the connect form for account; for an account that is
// connected, it says so, and that connecting again replaces the grant.
func (h *ConsentHandler) connectPage(w http.ResponseWriter, r *http.Request, status int, account, user, errMsg string) error {
	v := &view{Title: "Connect to " + h.title, User: user, Bound: user != "", Account: account, Error: errMsg,
		ConnectAction: h.paths.connect, Pattern: accountPattern, Hint: accountHint, Links: h.homeLinks(user, "")}
	if errMsg == "" {
		row, err := h.row(r.Context(), account)
		if err != nil {
			h.logger.Error("reading the grant failed", zap.String("account", account), zap.Error(err))
		} else if row.Stored {
			v.Row = row
		}
	}
	return h.render(w, r, status, "connect", v)
}

// authorizeEndpoint is the provider's authorization endpoint: configured,
// from the preset, or discovered from the issuer.
func (h *ConsentHandler) authorizeEndpoint(ctx context.Context) (string, error) {
	if h.authorizeURL != "" {
		return h.authorizeURL, nil
	}
	u, err := h.grant.discoveredAuthorizeEndpoint(ctx)
	if err != nil {
		return "", err
	}
	if u == "" {
		return "", fmt.Errorf("the issuer's metadata names no authorization_endpoint")
	}
	return u, nil
}

// formActionOf is the origin the pages' forms may be sent on to (the
// connect form's redirect goes to the provider).
func (h *ConsentHandler) formActionOf(ctx context.Context) string {
	if h.formAction != "" {
		return h.formAction
	}
	if u, err := h.authorizeEndpoint(ctx); err == nil {
		if pu, err := url.Parse(u); err == nil {
			return pu.Scheme + "://" + pu.Host
		}
	}
	return ""
}

// pendingState travels, encrypted, in the state cookie: the browser that
// started the flow is the one that must finish it. Once the flow is
// complete, the cookie says so (Done), so that reloading the success page
// shows the account's state instead of an error.
type pendingState struct {
	State    string    `json:"s"`
	Verifier string    `json:"v,omitempty"`
	Account  string    `json:"a"`
	Expires  time.Time `json:"e"`
	Done     bool      `json:"d,omitempty"`
	// With dpop: the grant's key (PKCS#8; none for dpop_key) and its
	// thumbprint, sent as dpop_jkt.
	DPoPKey []byte `json:"k,omitempty"`
	JKT     string `json:"j,omitempty"`
}

// stateDPoPKey is the key a consent started with (nil without dpop): the
// one made at connect, or dpop_key, which must be the one whose thumbprint
// was sent.
func (h *ConsentHandler) stateDPoPKey(st pendingState) (*oauthclient.DPoPKey, error) {
	switch {
	case len(st.DPoPKey) > 0:
		return h.grant.parseDPoPKey(st.Account, st.DPoPKey)
	case st.JKT == "":
		return nil, nil
	case h.grant.cfg.dpopKey != nil && h.grant.cfg.dpopKey.Thumbprint() == st.JKT:
		return h.grant.cfg.dpopKey, nil
	}
	return nil, errors.New("the sign-in was started with the dpop_key " + st.JKT + ", which this configuration does not have")
}

// sealState is the state cookie's value: st, encrypted.
func (h *ConsentHandler) sealState(st pendingState) string {
	plain, _ := json.Marshal(st)
	return base64.RawURLEncoding.EncodeToString(h.grant.sealState(plain))
}

// openState reads a state cookie's value.
func (h *ConsentHandler) openState(value string) (pendingState, error) {
	var st pendingState
	sealed, err := base64.RawURLEncoding.DecodeString(value)
	if err == nil {
		var plain []byte
		if plain, err = h.grant.openState(sealed); err == nil {
			err = json.Unmarshal(plain, &st)
		}
	}
	return st, err
}

// stateCookie is the cookie of one pending consent: named after its state,
// so that two consents started in one browser do not clobber each other,
// and sent only to the callback.
func (h *ConsentHandler) stateCookie(state, value string, maxAge int) *http.Cookie {
	sum := sha256.Sum256([]byte(state))
	return &http.Cookie{
		Name:     "oauth_bearer_state_" + hex.EncodeToString(sum[:8]),
		Value:    value,
		Path:     h.paths.callback,
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   strings.HasPrefix(h.paths.redirect, "https:"),
		SameSite: http.SameSiteLaxMode, // the provider's redirect back is a top-level GET
	}
}

// workBound bounds what the callback and disconnect do once started, apart
// from the request: the person's browser may leave (or the connection
// drop) while the provider answers, and a code redeemed or a token revoked
// must still be stored or deleted. It covers two calls to the provider
// (their own timeout each), two lock waits (the account's, the event
// log's) and a few storage operations.
func (h *ConsentHandler) workBound() time.Duration {
	return 2*h.grant.cfg.Timeout + 2*lockWait(h.grant.cfg.Timeout) + 4*storageTimeout
}

func (h *ConsentHandler) callback(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	provider := h.grant.cfg.Provider
	user, ref := h.signedIn(r)
	if ref != nil {
		return h.refuse(w, r, ref, user)
	}
	account := ""
	fail := func(status int, msg string) error {
		h.logger.Warn("consent callback refused", zap.String("provider", provider), zap.String("account", account), zap.String("reason", msg))
		return h.render(w, r, status, "message", &view{Title: "Not connected", Message: msg, User: user,
			Links: h.startAgainLinks(user, account)})
	}
	state := q.Get("state")
	c, err := r.Cookie(h.stateCookie(state, "", 0).Name)
	if state == "" || err != nil {
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: this browser did not start it (the state cookie is missing or expired).")
	}
	st, err := h.openState(c.Value)
	switch {
	case err != nil:
		http.SetCookie(w, h.stateCookie(state, "", -1))
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: the state cookie is not valid.")
	case subtle.ConstantTimeCompare([]byte(st.State), []byte(state)) != 1:
		http.SetCookie(w, h.stateCookie(state, "", -1))
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: the state does not match.")
	}
	account = st.Account
	if user != "" && st.Account != user {
		http.SetCookie(w, h.stateCookie(state, "", -1))
		return h.refuse(w, r, &refusal{status: http.StatusForbidden, reason: "another account", named: st.Account,
			msg: fmt.Sprintf("This sign-in was started for another account than yours (%s); nothing was stored.", user)}, user)
	}
	if st.Done {
		// The success page reloaded (its URL still holds code and
		// state): say how the account is now.
		return h.connectedPage(w, r, account, user, true)
	}
	// One use: the cookie goes whatever happens next (on success it is
	// replaced by one that says the flow is complete).
	http.SetCookie(w, h.stateCookie(state, "", -1))
	switch {
	case h.grant.now().After(st.Expires):
		return fail(http.StatusBadRequest, "The sign-in took too long and expired.")
	case !h.grant.consent.useState(st.State, st.Expires):
		return fail(http.StatusBadRequest, "This sign-in was already completed; a callback is used once.")
	}
	if err := h.checkIssuer(r.Context(), q, account); err != nil {
		return h.issuerMismatchPage(w, r, user, account, err)
	}
	if e := q.Get("error"); e != "" {
		msg := fmt.Sprintf("The provider answered %s", truncate(e, 64))
		if d := q.Get("error_description"); d != "" {
			msg += ": " + truncate(h.grant.cfg.redact(d), 200)
		}
		return fail(http.StatusBadRequest, msg+". Nothing was stored.")
	}
	code := q.Get("code")
	if code == "" {
		return fail(http.StatusBadRequest, "The provider sent no authorization code.")
	}
	// From here on the code is redeemed and the grant stored whatever the
	// browser does: a code is single-use, and a grant redeemed but not
	// stored is lost.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.workBound())
	defer cancel()
	key, err := h.stateDPoPKey(st)
	if err != nil {
		h.logger.Error("the consent's DPoP key is not usable", zap.String("provider", provider), zap.String("account", st.Account), zap.Error(err))
		return h.render(w, r, http.StatusInternalServerError, "message", &view{Title: "Not connected", User: user,
			Message: "The grant's DPoP key is not usable (the configuration changed during the sign-in?); start again. Nothing was stored.",
			Links:   h.startAgainLinks(user, account)})
	}
	tok, bound, err := h.grant.exchangeCode(ctx, code, st.Verifier, h.paths.redirect, key, st.DPoPKey)
	if err != nil {
		var te *TokenError
		code := "error"
		if errors.As(err, &te) {
			code = te.Code
			h.logger.Error("authorization code exchange failed", zap.String("provider", provider),
				zap.String("account", st.Account), zap.String("error", te.Code), zap.Int("status", te.Status),
				zap.String("error_description", te.Description))
		}
		return h.render(w, r, http.StatusBadGateway, "message", &view{Title: "Not connected", User: user,
			Message: fmt.Sprintf("The provider refused the authorization code (%s). Nothing was stored.", code),
			Links:   h.startAgainLinks(user, account)})
	}
	if tok.refreshToken == "" {
		h.logger.Warn("the provider returned no refresh token: consent will be needed again when the access token expires",
			zap.String("provider", provider), zap.String("account", st.Account))
	}
	if err := h.grant.consent.connect(ctx, st.Account, tok, bound); err != nil {
		h.logger.Error("storing the grant failed", zap.String("provider", provider), zap.String("account", st.Account), zap.Error(err))
		return h.render(w, r, http.StatusInternalServerError, "message", &view{Title: "Not connected", User: user,
			Message: "The grant could not be stored; see the server log.", Links: h.startAgainLinks(user, account)})
	}
	metrics.consents.WithLabelValues(provider, "connected").Inc()
	h.logger.Info("account connected", zap.String("provider", provider), zap.String("account", st.Account),
		zap.String("scope", tok.scope), zap.Bool("refresh_token", tok.refreshToken != ""))
	done := st
	done.Verifier, done.Done, done.DPoPKey = "", true, nil
	http.SetCookie(w, h.stateCookie(state, h.sealState(done), int(stateLifetime/time.Second)))
	return h.connectedPage(w, r, account, user, false)
}

// connectedPage is the end of a flow: the success page, or, reloaded, the
// account's state now.
func (h *ConsentHandler) connectedPage(w http.ResponseWriter, r *http.Request, account, user string, reloaded bool) error {
	v := &view{Title: "Connected", User: user, Success: true, Links: h.homeLinks(user, "")}
	if user == "" {
		v.Links = append(v.Links, pageLink{Href: h.paths.connect, Text: "Connect another account"})
	}
	v.Message = fmt.Sprintf("%s is connected to %s.", account, h.title)
	v.More = []string{"Requests for " + account + " now carry its access token. You can close this window."}
	if reloaded {
		row, err := h.row(r.Context(), account)
		switch {
		case err != nil:
			h.logger.Error("reading the grant failed", zap.String("account", account), zap.Error(err))
			v.Title, v.Success, v.Message, v.More = "Connected?", false, "The state of "+account+" cannot be read; see the server log.", nil
		case !row.Connected:
			v.Title, v.Success, v.More = "Not connected", false, nil
			v.Message = fmt.Sprintf("%s is not connected to %s now.", account, h.title)
			if row.Reason != "" {
				v.Message = fmt.Sprintf("%s is not connected to %s now: %s.", account, h.title, strings.TrimSuffix(row.Reason, "."))
			}
			v.Links = h.startAgainLinks(user, account)
		case row.ConnectedAt != nil:
			v.Message = fmt.Sprintf("%s is connected to %s (since %s).", account, h.title, row.ConnectedAt.Exact)
			v.More = nil
		}
	}
	return h.render(w, r, http.StatusOK, "message", v)
}

func (h *ConsentHandler) status(w http.ResponseWriter, r *http.Request) error {
	if wantsHTML(r) {
		return h.accountsPage(w, r)
	}
	account, user, ref := h.requestAccount(r)
	if ref != nil {
		return h.refuse(w, r, ref, user)
	}
	st, err := h.grant.status(r.Context(), account)
	if err != nil {
		h.logger.Error("reading the grant failed", zap.String("account", account), zap.Error(err))
		http.Error(w, "oauth_bearer: the grant cannot be read; see the server log", http.StatusInternalServerError)
		return nil
	}
	st.Connect = h.paths.connect + "?account=" + url.QueryEscape(account)
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(st)
}

// disconnect: GET asks for confirmation (a page whose button POSTs); POST
// (same origin only) revokes the grant at the provider and deletes it. An
// account with no grant answers 404.
func (h *ConsentHandler) disconnect(w http.ResponseWriter, r *http.Request) error {
	cr, answered, err := h.begin(w, r, "disconnect", h.refuse)
	if answered {
		return err
	}
	account, user, post := cr.account, cr.user, cr.post
	stored, err := h.grant.hasGrant(r.Context(), account)
	if err != nil {
		h.logger.Error("reading the grant failed", zap.String("account", account), zap.Error(err))
		return h.failPage(w, r, user, "oauth_bearer: the grant cannot be read; see the server log")
	}
	if !stored {
		msg := account + " is not connected: there is nothing to disconnect."
		if !wantsHTML(r) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			return json.NewEncoder(w).Encode(map[string]any{"account": account, "disconnected": false, "error": "not_connected", "error_description": msg})
		}
		return h.render(w, r, http.StatusNotFound, "message", &view{Title: "Not connected", Message: msg, User: user,
			Links: h.startAgainLinks(user, account)})
	}
	if !post {
		return h.render(w, r, http.StatusOK, "disconnect", &view{Title: "Disconnect " + account + "?", User: user,
			Account: account, DisconnectAction: h.paths.disconnect, StatusURL: h.paths.status, Revokes: h.grant.canRevoke(r.Context())})
	}
	// Once started, the revocation and the deletion complete whatever the
	// browser does.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.workBound())
	defer cancel()
	revoked, err := h.grant.consent.disconnect(ctx, account)
	if err != nil {
		h.logger.Error("disconnect failed", zap.String("account", account), zap.Error(err))
		return h.failPage(w, r, user, "oauth_bearer: the grant could not be deleted; see the server log")
	}
	metrics.consents.WithLabelValues(h.grant.cfg.Provider, "disconnected").Inc()
	h.logger.Info("account disconnected", zap.String("provider", h.grant.cfg.Provider), zap.String("account", account), zap.Bool("revoked", revoked))
	if wantsHTML(r) {
		// Back to the accounts page, which says so (a reload does not
		// post again).
		http.Redirect(w, r, h.paths.status+"?disconnected="+url.QueryEscape(account), http.StatusSeeOther)
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"account": account, "disconnected": true, "revoked": revoked})
}

// failPage answers a failure of the server's own (500): a page for a
// browser, plain text for others.
func (h *ConsentHandler) failPage(w http.ResponseWriter, r *http.Request, user, msg string) error {
	if !wantsHTML(r) {
		http.Error(w, msg, http.StatusInternalServerError)
		return nil
	}
	return h.render(w, r, http.StatusInternalServerError, "message", &view{Title: "Something went wrong", User: user,
		Message: strings.TrimPrefix(msg, "oauth_bearer: "), Links: h.homeLinks(user, "")})
}

// wantsHTML reports a browser's request (Accept names text/html); API
// clients get JSON.
func wantsHTML(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// accountsPage shows the accounts: with account set, the signed-in
// person's alone (whether connected or not); in operator mode every
// account with a stored grant, and a form to connect another. Disconnect
// leads to a confirmation page; connect and disconnect are POST forms,
// under the same-origin rule.
func (h *ConsentHandler) accountsPage(w http.ResponseWriter, r *http.Request) error {
	account, user, ref := h.requestAccount(r)
	if ref != nil {
		return h.refuse(w, r, ref, user)
	}
	v := &view{Title: h.title + " accounts", User: user, Bound: user != "", ConnectAction: h.paths.connect,
		Pattern: accountPattern, Hint: accountHint}
	accounts := []string{account}
	if user != "" {
		v.Title = "Your " + h.title + " account"
	} else {
		var err error
		if accounts, err = h.grant.storedAccounts(r.Context()); err != nil {
			h.logger.Error("listing the stored grants failed", zap.Error(err))
			v.Error = "The stored grants cannot be read; see the server log."
		}
	}
	for _, a := range accounts {
		row, err := h.row(r.Context(), a)
		if err != nil {
			v.Error = "Some grants cannot be read; see the server log."
			h.logger.Error("reading a grant failed", zap.String("account", a), zap.Error(err))
			continue
		}
		v.Rows = append(v.Rows, *row)
	}
	// After a disconnect: said only when it is true now, and, with
	// account set, only of the signed-in account.
	if gone := r.URL.Query().Get("disconnected"); gone != "" && checkAccount(gone) == nil && (user == "" || gone == user) {
		if stored, err := h.grant.hasGrant(r.Context(), gone); err == nil && !stored {
			v.Notice = gone + " disconnected."
		}
	}
	return h.render(w, r, http.StatusOK, "accounts", v)
}

// row describes an account for the pages.
func (h *ConsentHandler) row(ctx context.Context, account string) (*accountRow, error) {
	st, err := h.grant.status(ctx, account)
	if err != nil {
		return nil, err
	}
	stored := true
	if !st.Connected {
		if stored, err = h.grant.hasGrant(ctx, account); err != nil {
			return nil, err
		}
	}
	row := &accountRow{Account: account, Stored: stored, Connected: st.Connected, HasRefreshToken: st.HasRefreshToken,
		ConnectedAt: h.when(st.ConnectedAt), Expires: h.when(st.AccessTokenExpires), LastRefresh: h.when(st.LastRefresh),
		Scopes:        strings.FieldsFunc(st.Scope, func(r rune) bool { return r == ' ' || r == ',' }),
		DisconnectURL: h.paths.disconnect + "?account=" + url.QueryEscape(account)}
	if stored && !st.Connected {
		row.Reason = st.Reason
	}
	if row.LastRefresh != nil && row.ConnectedAt != nil && row.LastRefresh.ISO == row.ConnectedAt.ISO {
		row.LastRefresh = nil // not refreshed since it was connected
	}
	return row, nil
}

// homeLinks lead back to the accounts page, and to connecting account.
func (h *ConsentHandler) homeLinks(user, account string) []pageLink {
	links := []pageLink{{Href: h.paths.status, Text: "All accounts"}}
	if user != "" {
		links[0].Text = "Your " + h.title + " account"
	}
	if account != "" {
		links = append(links, pageLink{Href: h.paths.connect + "?account=" + url.QueryEscape(account), Text: "Connect " + account})
	}
	return links
}

// startAgainLinks: after a failed flow, start again with the same
// account, or go back to the accounts page.
func (h *ConsentHandler) startAgainLinks(user, account string) []pageLink {
	again := pageLink{Href: h.paths.connect, Text: "Start again"}
	if account != "" {
		again.Href += "?account=" + url.QueryEscape(account)
		again.Text = "Start again with " + account
	}
	return append([]pageLink{again}, h.homeLinks(user, "")...)
}

// ---- the pages ----

//go:embed templates/*.html templates/style.css
var templateFiles embed.FS

var (
	// pageStyle is the pages' inline style sheet, and pageStyleSource its
	// hash for the Content-Security-Policy (no 'unsafe-inline').
	pageStyle       template.CSS
	pageStyleSource string
	pageTemplates   = map[string]*template.Template{}
)

func init() {
	css, err := templateFiles.ReadFile("templates/style.css")
	if err != nil {
		panic(err)
	}
	pageStyle = template.CSS(css)
	sum := sha256.Sum256(css)
	pageStyleSource = "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	for _, name := range []string{"message", "connect", "accounts", "disconnect"} {
		pageTemplates[name] = template.Must(template.New(name).ParseFS(templateFiles, "templates/layout.html", "templates/"+name+".html"))
	}
}

// accountPattern and accountHint let the browser check an account name
// before sending it: the rule of checkAccount but for "..", which the
// server refuses with the same hint. (A pattern is matched whole, with
// the v flag: the - in the class is escaped.)
const (
	accountPattern = `[A-Za-z0-9][A-Za-z0-9_@+=.\-]{0,127}`
	accountHint    = "1 to 128 letters, digits and _ @ + = . - (starting with a letter or a digit, without ..)."
)

// view fills the pages (templates/*.html).
type view struct {
	Title    string
	Provider string
	User     string // with account set: the signed-in account
	Style    template.CSS
	Error    string // an alert at the top
	Notice   string // a status line at the top
	Message  string
	Success  bool // Message is good news
	More     []string
	Links    []pageLink // where to go next: never a dead end

	Bound         bool   // the pages act on the signed-in account alone
	Account       string // connect, disconnect: the account
	Pattern, Hint string // the account name input's

	ConnectAction, DisconnectAction, StatusURL string

	Row     *accountRow  // connect: the account, when it has a grant
	Rows    []accountRow // accounts
	Revokes bool         // disconnect: the grant is revoked at the provider
}

type pageLink struct{ Href, Text string }

// accountRow is an account on the pages.
type accountRow struct {
	Account                            string
	Stored, Connected, HasRefreshToken bool
	Reason                             string
	ConnectedAt, Expires, LastRefresh  *moment
	Scopes                             []string
	DisconnectURL                      string
}

// moment is a time as the pages show it: relative ("in 52 min"), with the
// exact time in a title and the machine-readable one in datetime.
type moment struct {
	ISO, Exact, Relative string
	Past                 bool
}

// when turns an RFC 3339 time of the status into a moment; nil when empty.
func (h *ConsentHandler) when(rfc3339 string) *moment {
	t, err := time.Parse(time.RFC3339, rfc3339)
	if err != nil {
		return nil
	}
	d := t.Sub(h.grant.now())
	m := &moment{ISO: rfc3339, Exact: t.UTC().Format("Mon 2 Jan 2006 15:04:05 UTC"), Past: d <= 0}
	switch {
	case m.Past && -d < time.Minute:
		m.Relative = "just now"
	case m.Past:
		m.Relative = approx(-d) + " ago"
	default:
		m.Relative = "in " + approx(d)
	}
	return m
}

// approx says a duration the way a person would, to the largest unit.
func approx(d time.Duration) string {
	plural := func(n int, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d < time.Minute:
		return "less than a minute"
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour")
	default:
		return plural(int(d/(24*time.Hour)), "day")
	}
}

// render writes a page; every value is escaped. A template that fails is
// logged and answered with 500, never half a page. The page may only post
// its forms to this origin, which redirects to the provider; it may not be
// framed; its one style is the inline sheet, by hash.
func (h *ConsentHandler) render(w http.ResponseWriter, r *http.Request, status int, name string, v *view) error {
	v.Provider, v.Style = h.title, pageStyle
	var buf bytes.Buffer
	t := pageTemplates[name]
	if t == nil {
		return h.templateFailed(w, name, errors.New("no such page"))
	}
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		return h.templateFailed(w, name, err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src "+pageStyleSource+
		"; form-action 'self' "+h.formActionOf(r.Context())+"; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	w.Write(buf.Bytes()) // a browser that left reads nothing
	return nil
}

func (h *ConsentHandler) templateFailed(w http.ResponseWriter, name string, err error) error {
	h.logger.Error("rendering a consent page failed", zap.String("page", name), zap.Error(err))
	http.Error(w, "oauth_bearer: the page cannot be shown; see the server log", http.StatusInternalServerError)
	return nil
}

// randomToken returns n random bytes, base64url-encoded.
func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ConsentHandler)(nil)
	_ caddy.CleanerUpper          = (*ConsentHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*ConsentHandler)(nil)
)
