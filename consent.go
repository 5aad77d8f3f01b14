package oauthbearer

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// The consent endpoints of the authorization-code grant, served by a
// handler that has a redirect_uri: connect (302 to the provider), callback,
// status (JSON) and disconnect (POST). Guard them with basic_auth or
// forward_auth: whoever can reach connect can attach an account.

// stateLifetime bounds how long a person may take to consent.
const stateLifetime = 10 * time.Minute

// consentPaths are the endpoint paths, derived from redirect_uri unless set.
type consentPaths struct {
	redirect                              string // redirect_uri, resolved
	connect, callback, status, disconnect string
}

func deriveConsentPaths(redirectURI, connect, status, disconnect string) (consentPaths, error) {
	u, err := url.Parse(redirectURI)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Fragment != "" {
		return consentPaths{}, fmt.Errorf("redirect_uri: %q is not an absolute URL without a fragment", redirectURI)
	}
	if u.Scheme != "https" && !isLoopback(u.Hostname()) {
		return consentPaths{}, fmt.Errorf("redirect_uri: %q must use https (plain http only to a loopback host)", redirectURI)
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

// pendingState travels, encrypted, in the state cookie: the browser that
// started the flow is the one that must finish it.
type pendingState struct {
	State    string    `json:"s"`
	Verifier string    `json:"v,omitempty"`
	Account  string    `json:"a"`
	Expires  time.Time `json:"e"`
}

func (h *Handler) stateCookieName() string { return "oauth_bearer_state_" + h.grants.id }

// serveConsent answers the consent endpoints. Other paths get 404: a handler
// with redirect_uri never proxies, so that the endpoints cannot be reached
// around the route that guards them.
func (h *Handler) serveConsent(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	switch r.URL.EscapedPath() {
	case h.paths.connect:
		return h.consentConnect(w, r)
	case h.paths.callback:
		return h.consentCallback(w, r)
	case h.paths.status:
		return h.consentStatus(w, r)
	case h.paths.disconnect:
		return h.consentDisconnect(w, r)
	}
	http.Error(w, fmt.Sprintf("oauth_bearer: not a consent endpoint; this handler (it has a redirect_uri) serves only %s, %s, %s and %s",
		h.paths.connect, h.paths.callback, h.paths.status, h.paths.disconnect), http.StatusNotFound)
	return nil
}

// queryAccount reads ?account=, the default account when absent.
func queryAccount(r *http.Request) (string, error) {
	a := r.URL.Query().Get("account")
	if a == "" {
		return defaultAccount, nil
	}
	return a, checkAccount(a)
}

func (h *Handler) consentConnect(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return nil
	}
	account, err := queryAccount(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
	}
	st := pendingState{State: randomToken(32), Account: account, Expires: h.clock().Add(stateLifetime)}
	q := url.Values{
		"client_id":     {h.cfg.ClientID},
		"redirect_uri":  {h.paths.redirect},
		"response_type": {"code"},
		"state":         {st.State},
	}
	if len(h.Scopes) > 0 {
		q.Set("scope", strings.Join(h.resolvedScopes, h.preset.ScopeSeparator))
	}
	if h.PKCE == nil || *h.PKCE {
		st.Verifier = randomToken(48) // 64 characters of base64url: within RFC 7636's 43-128
		sum := sha256.Sum256([]byte(st.Verifier))
		q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
		q.Set("code_challenge_method", "S256")
	}
	plain, _ := json.Marshal(st)
	nonce := make([]byte, h.grants.aead.NonceSize())
	rand.Read(nonce)
	sealed := h.grants.aead.Seal(nonce, nonce, plain, []byte("state"))
	http.SetCookie(w, &http.Cookie{
		Name:     h.stateCookieName(),
		Value:    base64.RawURLEncoding.EncodeToString(sealed),
		Path:     h.paths.callback,
		MaxAge:   int(stateLifetime / time.Second),
		HttpOnly: true,
		Secure:   strings.HasPrefix(h.paths.redirect, "https:"),
		SameSite: http.SameSiteLaxMode, // the provider's redirect back is a top-level GET
	})
	sep := "?"
	if strings.Contains(h.authorizeURL, "?") {
		sep = "&"
	}
	h.logger.Info("consent started", zap.String("provider", h.cfg.Provider), zap.String("account", account))
	http.Redirect(w, r, h.authorizeURL+sep+q.Encode(), http.StatusFound)
	return nil
}

func (h *Handler) consentCallback(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	fail := func(status int, msg string) error {
		h.logger.Warn("consent callback refused", zap.String("provider", h.cfg.Provider), zap.String("reason", msg))
		h.page(w, status, "Not connected", msg)
		return nil
	}
	c, err := r.Cookie(h.stateCookieName())
	if err != nil {
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: this browser did not start it (the state cookie is missing or expired). Start again at "+h.paths.connect+".")
	}
	// One use: the cookie goes whatever happens next.
	http.SetCookie(w, &http.Cookie{Name: c.Name, Value: "", Path: h.paths.callback, MaxAge: -1, HttpOnly: true,
		Secure: strings.HasPrefix(h.paths.redirect, "https:"), SameSite: http.SameSiteLaxMode})
	var st pendingState
	sealed, err := base64.RawURLEncoding.DecodeString(c.Value)
	ns := h.grants.aead.NonceSize()
	if err == nil && len(sealed) > ns {
		var plain []byte
		if plain, err = h.grants.aead.Open(nil, sealed[:ns], sealed[ns:], []byte("state")); err == nil {
			err = json.Unmarshal(plain, &st)
		}
	} else if err == nil {
		err = fmt.Errorf("short cookie")
	}
	switch {
	case err != nil:
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: the state cookie is not valid. Start again at "+h.paths.connect+".")
	case subtle.ConstantTimeCompare([]byte(st.State), []byte(q.Get("state"))) != 1:
		return fail(http.StatusBadRequest, "The sign-in cannot be verified: the state does not match. Start again at "+h.paths.connect+".")
	case h.clock().After(st.Expires):
		return fail(http.StatusBadRequest, "The sign-in took too long and expired. Start again at "+h.paths.connect+".")
	case !h.grants.useState(st.State, st.Expires):
		return fail(http.StatusBadRequest, "This sign-in was already completed; a callback is used once. Start again at "+h.paths.connect+".")
	}
	if e := q.Get("error"); e != "" {
		msg := fmt.Sprintf("The provider answered %s", truncate(e, 64))
		if d := q.Get("error_description"); d != "" {
			msg += ": " + truncate(d, 200)
		}
		return fail(http.StatusBadRequest, msg+". Nothing was stored. Start again at "+h.paths.connect+" to retry.")
	}
	code := q.Get("code")
	if code == "" {
		return fail(http.StatusBadRequest, "The provider sent no authorization code.")
	}
	tok, err := h.grants.endpoint.exchangeCode(r.Context(), code, st.Verifier, h.paths.redirect, h.clock)
	if err != nil {
		te, _ := err.(*TokenError)
		code := "error"
		if te != nil {
			code = te.Code
			h.logger.Error("authorization code exchange failed", zap.String("provider", h.cfg.Provider),
				zap.String("account", st.Account), zap.String("error", te.Code), zap.Int("status", te.Status),
				zap.String("error_description", te.Description))
		}
		h.page(w, http.StatusBadGateway, "Not connected", fmt.Sprintf("The provider refused the authorization code (%s). Start again at %s.", code, h.paths.connect))
		return nil
	}
	if tok.refreshToken == "" {
		h.logger.Warn("the provider returned no refresh token: consent will be needed again when the access token expires",
			zap.String("provider", h.cfg.Provider), zap.String("account", st.Account))
	}
	if err := h.grants.connect(r.Context(), st.Account, tok, h.clock()); err != nil {
		h.logger.Error("storing the grant failed", zap.String("provider", h.cfg.Provider), zap.String("account", st.Account), zap.Error(err))
		h.page(w, http.StatusInternalServerError, "Not connected", "The grant could not be stored; see the server log.")
		return nil
	}
	metrics.consents.WithLabelValues(h.cfg.Provider, "connected").Inc()
	h.logger.Info("account connected", zap.String("provider", h.cfg.Provider), zap.String("account", st.Account),
		zap.String("scope", tok.scope), zap.Bool("refresh_token", tok.refreshToken != ""))
	h.page(w, http.StatusOK, "Connected", fmt.Sprintf("%s account %q is connected. You can close this window.", h.preset.Title, st.Account))
	return nil
}

func (h *Handler) consentStatus(w http.ResponseWriter, r *http.Request) error {
	account, err := queryAccount(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
	}
	st, err := h.grants.status(r.Context(), account)
	if err != nil {
		h.logger.Error("reading the grant failed", zap.String("account", account), zap.Error(err))
		http.Error(w, "oauth_bearer: the grant cannot be read; see the server log", http.StatusInternalServerError)
		return nil
	}
	st["connect"] = h.paths.connect + "?account=" + url.QueryEscape(account)
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(st)
}

func (h *Handler) consentDisconnect(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return nil
	}
	// A cross-site form must not disconnect an account with the browser's
	// cached basic_auth credentials.
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return nil
	}
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || !strings.EqualFold(u.Host, r.Host) {
			http.Error(w, "cross-origin request refused", http.StatusForbidden)
			return nil
		}
	}
	account, err := queryAccount(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
	}
	revoked, err := h.grants.disconnect(r.Context(), account)
	if err != nil {
		h.logger.Error("disconnect failed", zap.String("account", account), zap.Error(err))
		http.Error(w, "oauth_bearer: the grant could not be deleted; see the server log", http.StatusInternalServerError)
		return nil
	}
	metrics.consents.WithLabelValues(h.cfg.Provider, "disconnected").Inc()
	h.logger.Info("account disconnected", zap.String("provider", h.cfg.Provider), zap.String("account", account), zap.Bool("revoked", revoked))
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"account": account, "disconnected": true, "revoked": revoked})
}

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title></head>
<body><h1>{{.Title}}</h1><p>{{.Message}}</p></body></html>
`))

// page writes a short HTML page; the message is escaped.
func (h *Handler) page(w http.ResponseWriter, status int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	w.WriteHeader(status)
	pageTemplate.Execute(w, struct{ Title, Message string }{title, msg})
}

// randomToken returns n random bytes, base64url-encoded.
func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// useState marks a state as used; false if it already was.
func (g *grants) useState(state string, expires time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	for s, exp := range g.usedStates {
		if now.After(exp) {
			delete(g.usedStates, s)
		}
	}
	if _, used := g.usedStates[state]; used {
		return false
	}
	g.usedStates[state] = expires.Add(time.Minute)
	return true
}
