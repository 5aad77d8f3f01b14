package oauthbearer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
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
)

// consent.go: the oauth_bearer_consent handler, the endpoints through which
// a person connects an account to the provider (the authorization-code
// grant): connect (a page with a button; its POST redirects to the
// provider), callback (redeems the code and stores the grant), status
// (JSON) and disconnect (POST). Guard them with basic_auth or forward_auth:
// whoever can use connect can attach an account to the proxy.

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

	grant        *grant
	poolKey      string
	use          *use
	paths        consentPaths
	authorizeURL string
	formAction   string // the provider's origin, allowed as a form target
	scope        string
	title        string
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
	for _, f := range []struct{ field, value string }{{"connect_path", h.ConnectPath}, {"status_path", h.StatusPath}, {"disconnect_path", h.DisconnectPath}} {
		if f.value != "" && !strings.HasPrefix(f.value, "/") {
			return errField(f.field, "%q must start with /", f.value)
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
	if u.Scheme != "https" && !isLoopback(u.Hostname()) {
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
	h.title = cs.preset.Title
	return cs, nil
}

// Cleanup drops this configuration's reference to the grant.
func (h *ConsentHandler) Cleanup() error {
	if h.grant == nil {
		return nil
	}
	err := release(h.poolKey, h.grant, h.use)
	h.grant = nil
	return err
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
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	return serve(w, r)
}

// requestAccount reads the account (query, or form field for a POST), the
// default account when absent.
func requestAccount(r *http.Request) (string, error) {
	a := r.FormValue("account")
	if a == "" {
		return defaultAccount, nil
	}
	return a, checkAccount(a)
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

// connect: GET shows a page with a button for the account; its POST (same
// origin only) sends the browser to the provider with a fresh state, whose
// PKCE verifier and account travel in an encrypted cookie of their own.
func (h *ConsentHandler) connect(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		account, err := requestAccount(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return nil
		}
		h.page(w, http.StatusOK, pageData{Title: "Connect " + h.title, Connect: h.paths.connect, Account: account})
		return nil
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "use GET for the page, POST to connect", http.StatusMethodNotAllowed)
		return nil
	}
	if !sameOrigin(r) {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return nil
	}
	account, err := requestAccount(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
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
	if h.PKCE == nil || *h.PKCE {
		st.Verifier = randomToken(48) // 64 characters of base64url: within RFC 7636's 43-128
		sum := sha256.Sum256([]byte(st.Verifier))
		q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
		q.Set("code_challenge_method", "S256")
	}
	authorizeURL, err := h.authorizeEndpoint(r.Context())
	if err != nil {
		h.logger.Error("discovering the authorization endpoint failed", zap.String("provider", h.grant.cfg.Provider), zap.Error(err))
		h.page(w, http.StatusBadGateway, pageData{Title: "Not connected", Message: "The provider's authorization endpoint cannot be found (discovery failed); see the server log."})
		return nil
	}
	plain, _ := json.Marshal(st)
	http.SetCookie(w, h.stateCookie(st.State, base64.RawURLEncoding.EncodeToString(h.grant.sealState(plain)), int(stateLifetime/time.Second)))
	sep := "?"
	if strings.Contains(authorizeURL, "?") {
		sep = "&"
	}
	h.logger.Info("consent started", zap.String("provider", h.grant.cfg.Provider), zap.String("account", account))
	http.Redirect(w, r, authorizeURL+sep+q.Encode(), http.StatusSeeOther)
	return nil
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
// started the flow is the one that must finish it.
type pendingState struct {
	State    string    `json:"s"`
	Verifier string    `json:"v,omitempty"`
	Account  string    `json:"a"`
	Expires  time.Time `json:"e"`
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

func (h *ConsentHandler) callback(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	provider := h.grant.cfg.Provider
	startAgain := " Start again at " + h.paths.connect + "."
	fail := func(status int, msg string) error {
		h.logger.Warn("consent callback refused", zap.String("provider", provider), zap.String("reason", msg))
		h.page(w, status, pageData{Title: "Not connected", Message: msg})
		return nil
	}
	state := q.Get("state")
	c, err := r.Cookie(h.stateCookie(state, "", 0).Name)
	if state == "" || err != nil {
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: this browser did not start it (the state cookie is missing or expired)."+startAgain)
	}
	// One use: the cookie goes whatever happens next.
	http.SetCookie(w, h.stateCookie(state, "", -1))
	var st pendingState
	sealed, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err == nil {
		var plain []byte
		if plain, err = h.grant.openState(sealed); err == nil {
			err = json.Unmarshal(plain, &st)
		}
	}
	switch {
	case err != nil:
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: the state cookie is not valid."+startAgain)
	case subtle.ConstantTimeCompare([]byte(st.State), []byte(state)) != 1:
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: the state does not match."+startAgain)
	case h.grant.now().After(st.Expires):
		return fail(http.StatusBadRequest, "The sign-in took too long and expired."+startAgain)
	case !h.grant.consent.useState(st.State, st.Expires):
		return fail(http.StatusBadRequest, "This sign-in was already completed; a callback is used once."+startAgain)
	}
	if e := q.Get("error"); e != "" {
		msg := fmt.Sprintf("The provider answered %s", truncate(e, 64))
		if d := q.Get("error_description"); d != "" {
			msg += ": " + truncate(d, 200)
		}
		return fail(http.StatusBadRequest, msg+". Nothing was stored."+startAgain)
	}
	code := q.Get("code")
	if code == "" {
		return fail(http.StatusBadRequest, "The provider sent no authorization code.")
	}
	tok, err := h.grant.exchangeCode(r.Context(), code, st.Verifier, h.paths.redirect)
	if err != nil {
		te, _ := err.(*TokenError)
		code := "error"
		if te != nil {
			code = te.Code
			h.logger.Error("authorization code exchange failed", zap.String("provider", provider),
				zap.String("account", st.Account), zap.String("error", te.Code), zap.Int("status", te.Status),
				zap.String("error_description", te.Description))
		}
		h.page(w, http.StatusBadGateway, pageData{Title: "Not connected", Message: fmt.Sprintf("The provider refused the authorization code (%s).%s", code, startAgain)})
		return nil
	}
	if tok.refreshToken == "" {
		h.logger.Warn("the provider returned no refresh token: consent will be needed again when the access token expires",
			zap.String("provider", provider), zap.String("account", st.Account))
	}
	if err := h.grant.consent.connect(r.Context(), st.Account, tok); err != nil {
		h.logger.Error("storing the grant failed", zap.String("provider", provider), zap.String("account", st.Account), zap.Error(err))
		h.page(w, http.StatusInternalServerError, pageData{Title: "Not connected", Message: "The grant could not be stored; see the server log."})
		return nil
	}
	metrics.consents.WithLabelValues(provider, "connected").Inc()
	h.logger.Info("account connected", zap.String("provider", provider), zap.String("account", st.Account),
		zap.String("scope", tok.scope), zap.Bool("refresh_token", tok.refreshToken != ""))
	h.page(w, http.StatusOK, pageData{Title: "Connected", Message: fmt.Sprintf("%s account %q is connected. You can close this window.", h.title, st.Account)})
	return nil
}

func (h *ConsentHandler) status(w http.ResponseWriter, r *http.Request) error {
	if wantsHTML(r) {
		return h.accountsPage(w, r)
	}
	account, err := requestAccount(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
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

func (h *ConsentHandler) disconnect(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return nil
	}
	if !sameOrigin(r) {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return nil
	}
	account, err := requestAccount(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
	}
	revoked, err := h.grant.consent.disconnect(r.Context(), account)
	if err != nil {
		h.logger.Error("disconnect failed", zap.String("account", account), zap.Error(err))
		http.Error(w, "oauth_bearer: the grant could not be deleted; see the server log", http.StatusInternalServerError)
		return nil
	}
	metrics.consents.WithLabelValues(h.grant.cfg.Provider, "disconnected").Inc()
	h.logger.Info("account disconnected", zap.String("provider", h.grant.cfg.Provider), zap.String("account", account), zap.Bool("revoked", revoked))
	if wantsHTML(r) {
		// The accounts page's button: back to the page.
		http.Redirect(w, r, h.paths.status, http.StatusSeeOther)
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"account": account, "disconnected": true, "revoked": revoked})
}

// pageData fills the consent pages.
type pageData struct {
	Title   string
	Message string
	Connect string // with Account: the connect form
	Account string
}

// wantsHTML reports a browser's request (Accept names text/html); API
// clients get JSON.
func wantsHTML(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// accountsData fills the accounts page.
type accountsData struct {
	Title      string
	Provider   string
	Connect    string
	Disconnect string
	Accounts   []accountRow
	Error      string
}

type accountRow struct {
	Account     string
	Connected   bool
	Expires     string
	LastRefresh string
	Reason      string
}

var accountsTemplate = template.Must(template.New("accounts").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #ccc; vertical-align: top; }
form { margin: 0; }
.needs { color: #a00; }
</style>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
{{if .Error}}<p class="needs">{{.Error}}</p>{{end}}
<table>
<caption>Accounts connected to {{.Provider}}</caption>
<thead><tr><th scope="col">Account</th><th scope="col">Status</th><th scope="col">Access token expires</th><th scope="col">Last refresh</th><th scope="col">Action</th></tr></thead>
<tbody>
{{range .Accounts}}<tr>
<th scope="row">{{.Account}}</th>
<td>{{if .Connected}}Connected{{else}}<span class="needs">Needs consent</span>{{if .Reason}}: {{.Reason}}{{end}}{{end}}</td>
<td>{{if .Expires}}<time datetime="{{.Expires}}">{{.Expires}}</time>{{else}}-{{end}}</td>
<td>{{if .LastRefresh}}<time datetime="{{.LastRefresh}}">{{.LastRefresh}}</time>{{else}}-{{end}}</td>
<td>{{if .Connected}}<form method="post" action="{{$.Disconnect}}"><input type="hidden" name="account" value="{{.Account}}"><button type="submit" aria-label="Disconnect {{.Account}}">Disconnect</button></form>{{else}}<form method="post" action="{{$.Connect}}"><input type="hidden" name="account" value="{{.Account}}"><button type="submit" aria-label="Connect {{.Account}} again">Connect again</button></form>{{end}}</td>
</tr>
{{else}}<tr><td colspan="5">No account is connected yet.</td></tr>
{{end}}</tbody>
</table>
<h2>Connect an account</h2>
<form method="post" action="{{.Connect}}">
<p><label for="account">Account name</label>
<input id="account" name="account" type="text" required maxlength="128" value="default"></p>
<p><button type="submit">Connect</button></p>
</form>
</main>
</body>
</html>
`))

// accountsPage lists every account with a stored grant, with buttons to
// connect and disconnect (POST forms: the same-origin rule of connect and
// disconnect applies).
func (h *ConsentHandler) accountsPage(w http.ResponseWriter, r *http.Request) error {
	d := accountsData{Title: h.title + " accounts", Provider: h.title, Connect: h.paths.connect, Disconnect: h.paths.disconnect}
	accounts, err := h.grant.storedAccounts(r.Context())
	if err != nil {
		h.logger.Error("listing the stored grants failed", zap.Error(err))
		d.Error = "The stored grants cannot be read; see the server log."
	}
	for _, a := range accounts {
		st, err := h.grant.status(r.Context(), a)
		if err != nil {
			d.Error = "Some grants cannot be read; see the server log."
			h.logger.Error("reading a grant failed", zap.String("account", a), zap.Error(err))
			continue
		}
		d.Accounts = append(d.Accounts, accountRow{Account: a, Connected: st.Connected, Expires: st.AccessTokenExpires,
			LastRefresh: st.LastRefresh, Reason: st.Reason})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' "+h.formActionOf(r.Context())+"; frame-ancestors 'none'")
	return accountsTemplate.Execute(w, d)
}

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
{{if .Message}}<p>{{.Message}}</p>{{end}}
{{if .Connect}}<form method="post" action="{{.Connect}}">
<p>You will be sent to the provider to sign in and approve access for this account.</p>
<p><label for="account">Account</label>
<input id="account" name="account" type="text" required maxlength="128" value="{{.Account}}"></p>
<p><button type="submit">Connect</button></p>
</form>{{end}}
</main>
</body>
</html>
`))

// page writes an HTML page; every value is escaped. The page may only post
// its forms to this origin, which redirects to the provider.
func (h *ConsentHandler) page(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; form-action 'self' "+h.formActionOf(context.Background())+"; frame-ancestors 'none'")
	w.WriteHeader(status)
	pageTemplate.Execute(w, d)
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
