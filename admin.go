package oauthbearer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// admin.go: admin.api.oauth_bearer, the module's part of Caddy's admin API
// (served on the admin endpoint, with its access controls), in the manner of
// reverse_proxy's /reverse_proxy/upstreams. It reads the pool; it never
// answers with a token, a refresh token or a secret, not even a prefix.
//
//	GET  /oauth_bearer/sources                      every credential set
//	GET  /oauth_bearer/sources/<id>/accounts[?limit=n&cursor=c]  a grant's accounts, a page at a time
//	POST /oauth_bearer/sources/<id>/refresh[?account=a]  a new token now, skipping the backoff
//	POST /oauth_bearer/sources/<id>/flush[?account=a]    drop the cached and stored token

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin.api.oauth_bearer module.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.oauth_bearer",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/oauth_bearer/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// adminTimeout bounds what an admin request reads from the storage and
// asks of the provider.
const adminTimeout = 30 * time.Second

// sourceView is one credential set as the admin API shows it.
type sourceView struct {
	ID         string `json:"id"`
	Kind       string `json:"kind"` // client_credentials or jwt_bearer (one token), or grant (accounts)
	Provider   string `json:"provider"`
	TokenURL   string `json:"token_url"`
	Issuer     string `json:"issuer,omitempty"` // the token URL is discovered from it
	ClientID   string `json:"client_id"`
	Grant      string `json:"grant"`
	Scope      string `json:"scope,omitempty"`
	TokenStore string `json:"token_store,omitempty"`
	tokenView
	Accounts               *int `json:"accounts,omitempty"`
	AccountsNeedingConsent *int `json:"accounts_needing_consent,omitempty"`
	// ClientCertificate is the client_auth tls certificate in use.
	ClientCertificate *oauthclient.ClientCertView `json:"client_certificate,omitempty"`
	// DPoP: the base URL and the current token's key thumbprint (public).
	DPoP *dpopView `json:"dpop,omitempty"`
}

// tokenView is a token source's state. Times are RFC 3339, in UTC.
type tokenView struct {
	State               string     `json:"state,omitempty"` // valid, refreshing, backing_off or none
	ExpiresAt           *time.Time `json:"expires_at,omitempty"`
	ObtainedAt          *time.Time `json:"obtained_at,omitempty"`
	LifetimeFrom        string     `json:"lifetime_from,omitempty"`
	Origin              string     `json:"origin,omitempty"` // fetched, shared store, warm start, stored
	LastError           *errorView `json:"last_error,omitempty"`
	ConsecutiveFailures int        `json:"consecutive_failures,omitempty"`
	NextAttempt         *time.Time `json:"next_attempt,omitempty"`
}

type errorView struct {
	Code        string    `json:"code"`
	Status      int       `json:"status,omitempty"`
	Description string    `json:"description,omitempty"`
	At          time.Time `json:"at"`
}

// accountView is one account of a grant.
type accountView struct {
	*accountStatus
	tokenView
	InMemory bool `json:"in_memory"`
}

// view describes the source's state; never its token.
func (s *tokenSource) view() tokenView {
	now := s.now()
	var v tokenView
	t := s.cur.Load()
	if t != nil {
		exp, got := t.expiry.UTC(), t.obtained.UTC()
		v.ExpiresAt, v.ObtainedAt, v.LifetimeFrom, v.Origin = &exp, &got, t.lifetimeFrom, t.origin
	}
	s.mu.Lock()
	if s.lastErr != nil {
		code, status, desc := errorFacts(s.lastErr)
		v.LastError = &errorView{Code: code, Status: status, Description: desc, At: s.lastErrAt.UTC()}
	}
	v.ConsecutiveFailures = s.failures
	s.mu.Unlock()
	next := time.Unix(0, s.nextAttempt.Load())
	if next.After(now) {
		n := next.UTC()
		v.NextAttempt = &n
	}
	switch {
	case s.refreshing.Load():
		v.State = "refreshing"
	case t != nil && now.Before(t.expiry):
		v.State = "valid"
	case v.NextAttempt != nil:
		v.State = "backing_off"
	default:
		v.State = "none"
	}
	return v
}

// sourceOf finds a pool entry by its short id.
func sourceOf(id string) (shared, error) {
	var found shared
	pool.Range(func(_, v any) bool {
		switch e := v.(type) {
		case *sourceEntry:
			if e.src.id == id {
				found = e
			}
		case *grant:
			if e.short == id {
				found = e
			}
		}
		return found == nil
	})
	if found == nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound,
			Err: fmt.Errorf("no credential set with id %q in the running configuration (GET /oauth_bearer/sources lists them)", id)}
	}
	return found, nil
}

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/oauth_bearer/"), "/")
	parts := strings.Split(rest, "/")
	switch {
	case rest == "sources":
		if r.Method != http.MethodGet {
			return methodNotAllowed(http.MethodGet)
		}
		return writeJSON(w, listSources(r.Context()))
	case len(parts) == 3 && parts[0] == "sources":
		e, err := sourceOf(parts[1])
		if err != nil {
			return err
		}
		switch parts[2] {
		case "accounts":
			if r.Method != http.MethodGet {
				return methodNotAllowed(http.MethodGet)
			}
			g, ok := e.(*grant)
			if !ok {
				return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("credential set %s uses %s: it has no accounts", parts[1], e.(*sourceEntry).ep.cfg.Grant)}
			}
			limit, cursor, err := pageOf(r)
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
			}
			accounts, next, err := g.accountViews(r.Context(), cursor, limit)
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
			}
			if next != "" {
				q := url.Values{"limit": {strconv.Itoa(limit)}, "cursor": {next}}
				w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
			}
			return writeJSON(w, accounts)
		case "refresh", "flush":
			if r.Method != http.MethodPost {
				return methodNotAllowed(http.MethodPost)
			}
			return act(w, r, e, parts[1], parts[2])
		}
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound,
		Err: fmt.Errorf("unknown path %s: use /oauth_bearer/sources, /oauth_bearer/sources/<id>/accounts, …/refresh or …/flush", r.URL.Path)}
}

// listSources describes every credential set of the running
// configuration, sorted by provider and id.
func listSources(ctx context.Context) []sourceView {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	var out []sourceView
	pool.Range(func(_, v any) bool {
		switch e := v.(type) {
		case *sourceEntry:
			cs := e.ep.cfg
			store := tokenStoreMemory
			if _, ok := e.src.fetcher.(*sharedFetcher); ok {
				store = tokenStoreStorage
			}
			// cs.Grant: client_credentials or jwt_bearer, each a token per set.
			out = append(out, sourceView{ID: e.src.id, Kind: cs.Grant, Provider: cs.Provider, TokenURL: cs.TokenURL, Issuer: cs.Issuer,
				ClientID: cs.ClientID, Grant: cs.Grant, Scope: cs.Scope, TokenStore: store, tokenView: e.src.view(),
				ClientCertificate: cs.tlsCert.View(), DPoP: e.dpopView(store == tokenStoreStorage)})
		case *grant:
			sv := sourceView{ID: e.short, Kind: "grant", Provider: e.cfg.Provider, TokenURL: e.cfg.TokenURL, Issuer: e.cfg.Issuer,
				ClientID: e.cfg.ClientID, Grant: grantAuthorizationCode, TokenStore: tokenStoreStorage, ClientCertificate: e.cfg.tlsCert.View()}
			if e.bootstrap != "" {
				sv.Grant = grantRefreshToken
			}
			// Counted by the instances that look after the accounts
			// (grantschedule.go), not by reading every record.
			if n, consent, ok := e.schedule.counts(); ok {
				sv.Accounts, sv.AccountsNeedingConsent = &n, &consent
			}
			out = append(out, sv)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Provider != out[j].Provider {
			return out[i].Provider < out[j].Provider
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Pages of …/accounts.
const (
	defaultAccountsPage = 100
	maxAccountsPage     = 1000
)

// pageOf reads ?limit= and ?cursor= of a paged request.
func pageOf(r *http.Request) (limit int, cursor string, err error) {
	q := r.URL.Query()
	limit = defaultAccountsPage
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxAccountsPage {
			return 0, "", fmt.Errorf("limit must be a number from 1 to %d", maxAccountsPage)
		}
	}
	return limit, q.Get("cursor"), nil
}

// accountViews describes up to limit accounts with a stored grant, in
// order of name, after cursor (an account name; "" for the first page).
// next is the cursor of the next page, "" after the last.
func (g *grant) accountViews(ctx context.Context, cursor string, limit int) (out []accountView, next string, err error) {
	accounts, err := g.storedAccounts(ctx)
	if err != nil {
		return nil, "", err
	}
	start := sort.SearchStrings(accounts, cursor)
	if start < len(accounts) && accounts[start] == cursor {
		start++
	}
	page := accounts[start:]
	if len(page) > limit {
		page, next = page[:limit], page[limit-1]
	}
	out = []accountView{}
	for _, a := range page {
		st, err := g.status(ctx, a)
		if err != nil {
			return nil, "", err
		}
		av := accountView{accountStatus: st}
		if s := g.accounts.loaded(a); s != nil {
			av.tokenView, av.InMemory = s.view(), true
		}
		out = append(out, av)
	}
	return out, next, nil
}

// act refreshes or flushes a credential set's token (a grant's: one
// account's, ?account=, default "default"), logs it at info with who asked,
// and answers with the outcome.
func act(w http.ResponseWriter, r *http.Request, e shared, id, action string) error {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	var src *tokenSource
	var log *zap.Logger
	account := ""
	switch e := e.(type) {
	case *sourceEntry:
		src, log = e.src, e.env.logger()
	case *grant:
		account = firstNonEmpty(r.URL.Query().Get("account"), defaultAccount)
		if err := checkAccount(account); err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
		}
		src, log = e.source(account), e.env.logger()
	}
	fields := []zap.Field{zap.String("source", id), zap.String("provider", src.provider), zap.String("remote", r.RemoteAddr)}
	if account != "" {
		fields = append(fields, zap.String("account", account))
	}
	result := map[string]any{"id": id, "action": action}
	if account != "" {
		result["account"] = account
	}
	switch action {
	case "refresh":
		log.Info("admin: refresh requested", fields...)
		_, err := src.forceRefresh(ctx)
		result["ok"] = err == nil
		var te *TokenError
		if errors.As(err, &te) {
			result["error"] = te.Code
			result["error_description"] = te.Description
		} else if err != nil {
			result["error"] = err.Error()
		}
	case "flush":
		log.Info("admin: flush requested", fields...)
		if err := flushStored(ctx, e, account); err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("the cached token was dropped; the stored one: %w", err)}
		}
		src.flush()
		result["ok"] = true
	}
	result["token"] = src.view()
	return writeJSON(w, result)
}

// flushStored drops the stored copy of a token: a client-credentials set's
// shared record, or a grant's access token (its refresh token is kept: the
// next request redeems it).
func flushStored(ctx context.Context, e shared, account string) error {
	switch e := e.(type) {
	case *sourceEntry:
		if f, ok := e.src.fetcher.(*sharedFetcher); ok {
			return f.store.remove(ctx, f.key)
		}
	case *grant:
		return e.consent.locked(ctx, account, func(ctx context.Context) error {
			rec, err := e.records.current(ctx, account)
			if err != nil || rec == nil || rec.AccessToken == "" {
				return err
			}
			next := *rec
			next.AccessToken, next.Expiry = "", time.Time{}
			if err := e.records.save(ctx, &next); err != nil {
				return err
			}
			e.records.dropUnsaved(account, nil)
			return nil
		})
	}
	return nil
}

func methodNotAllowed(allowed string) error {
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("use %s", allowed)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
