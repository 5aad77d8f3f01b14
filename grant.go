package oauthbearer

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Grants: the authorization-code and refresh-token grants. A person
// consents once (consent.go); the resulting grant (refresh token, access
// token, expiry, scopes) is kept in Caddy's storage, encrypted, and each
// account's token source refreshes it under the storage lock, so that one
// refresh happens per grant at a time across routes and across instances
// sharing the storage.

// Grant types.
const (
	grantClientCredentials = "client_credentials"
	grantAuthorizationCode = "authorization_code"
	grantRefreshToken      = "refresh_token"
)

// codeConsentRequired is the error code of a request whose grant is missing
// or was refused by the provider (invalid_grant): a person must connect.
const codeConsentRequired = "consent_required"

// defaultAccount is the account of handlers that do not select one.
const defaultAccount = "default"

// validAccount: account names become storage keys, so no separators, no
// dot-dot, nothing a storage backend could read as a path.
var validAccount = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_@+=.-]{0,127}$`)

func checkAccount(name string) error {
	if !validAccount.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("invalid account name %q: use 1-128 letters, digits and _@+=.- starting with a letter or digit", truncate(name, 64))
	}
	return nil
}

// grantRecord is what is stored for one account, encrypted.
type grantRecord struct {
	Account       string    `json:"account"`
	RefreshToken  string    `json:"refresh_token,omitempty"`
	AccessToken   string    `json:"access_token,omitempty"`
	Obtained      time.Time `json:"obtained,omitzero"`
	Expiry        time.Time `json:"expiry,omitzero"`
	Scope         string    `json:"scope,omitempty"`
	ConnectedAt   time.Time `json:"connected_at,omitzero"`
	LastRefresh   time.Time `json:"last_refresh,omitzero"`
	NeedsConsent  bool      `json:"needs_consent,omitempty"`
	Reason        string    `json:"reason,omitempty"`         // why consent is needed
	BootstrapHash string    `json:"bootstrap_hash,omitempty"` // the configured refresh_token that seeded it
}

// token turns the record's access token into a scheduled token.
func (g *grantRecord) token(refreshBefore time.Duration) *token {
	if g.AccessToken == "" || g.Expiry.IsZero() {
		return nil
	}
	t := &token{value: g.AccessToken, scope: g.Scope, obtained: g.Obtained, lifetimeFrom: "stored"}
	t.setLifetime(g.Obtained, g.Expiry.Sub(g.Obtained), refreshBefore)
	return t
}

// grants is one grant configuration (provider, token URL, client) with its
// accounts. It is shared through the sources pool like a token source.
type grants struct {
	cfg      sourceConfig
	storage  certmagic.Storage
	aead     cipher.AEAD
	id       string // names the grant in storage: hash of provider, token URL and client id
	endpoint *endpoint

	// bootstrap is a refresh token from the configuration (grant
	// refresh_token), used until a stored grant exists.
	bootstrap     string
	bootstrapHash string

	mu       sync.Mutex
	accounts sync.Map                // account name → *tokenSource
	unsaved  map[string]*grantRecord // refreshed but not yet stored (storage failed)
	// usedStates are consent states already redeemed here (one use).
	usedStates map[string]time.Time
	log        *zap.Logger
}

func newGrants(cfg sourceConfig, storage certmagic.Storage, bootstrap string, log *zap.Logger) (*grants, error) {
	idHash := sha256.Sum256([]byte(cfg.Provider + "\x00" + cfg.TokenURL + "\x00" + cfg.ClientID))
	id := hex.EncodeToString(idHash[:8])
	key, err := hkdf.Key(sha256.New, []byte(cfg.clientSecret), []byte("caddy-oauth-bearer grant v1"), id, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	g := &grants{cfg: cfg, storage: storage, aead: aead, id: id, endpoint: newEndpoint(cfg),
		bootstrap: bootstrap, unsaved: map[string]*grantRecord{},
		usedStates: map[string]time.Time{}, log: log}
	if bootstrap != "" {
		h := sha256.Sum256([]byte(bootstrap))
		g.bootstrapHash = hex.EncodeToString(h[:])
	}
	return g, nil
}

// Destruct implements caddy.Destructor.
func (g *grants) Destruct() error {
	g.accounts.Range(func(_, v any) bool {
		v.(*tokenSource).Destruct()
		return true
	})
	g.endpoint.client.CloseIdleConnections()
	return nil
}

// source returns the token source of an account, creating it on first use.
// Finding an existing one takes no lock: it runs for every proxied request.
func (g *grants) source(account string) *tokenSource {
	if s, ok := g.accounts.Load(account); ok {
		return s.(*tokenSource)
	}
	s := newTokenSourceWith(g.cfg, g.endpoint)
	s.id = g.id
	s.fetchToken = func(ctx context.Context, now func() time.Time) (*token, error) {
		return g.refresh(ctx, account, now)
	}
	if prev, loaded := g.accounts.LoadOrStore(account, s); loaded {
		s.Destruct() // another request created it first
		return prev.(*tokenSource)
	}
	return s
}

// forget drops an account's source when it has no grant, so that requests
// naming accounts that do not exist leave nothing behind.
func (g *grants) forget(account string, s *tokenSource) {
	if g.accounts.CompareAndDelete(account, s) {
		s.Destruct()
	}
}

func (g *grants) storageKey(account string) string {
	return "oauth_bearer/grants/" + g.id + "/" + account + ".json"
}

func (g *grants) lockName(account string) string {
	return "oauth_bearer_grant_" + g.id + "_" + account
}

// consentEndpoints records, by grant id, the endpoint paths of the consent
// handlers in the running configurations. Proxying handlers of the same
// grant (which may differ in settings such as refresh_before, and so not
// share a grants value) pass those paths through untouched and name the
// connect path to requests of unconnected accounts.
var consentEndpoints struct {
	mu sync.Mutex // serialises writers; readers load the map without a lock
	m  atomic.Pointer[map[string][]*consentPaths]
}

// updateConsent replaces the registry with a copy changed by fn.
func updateConsent(fn func(m map[string][]*consentPaths)) {
	consentEndpoints.mu.Lock()
	defer consentEndpoints.mu.Unlock()
	next := map[string][]*consentPaths{}
	if cur := consentEndpoints.m.Load(); cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
	}
	fn(next)
	consentEndpoints.m.Store(&next)
}

func registerConsent(id string, p *consentPaths) {
	updateConsent(func(m map[string][]*consentPaths) {
		m[id] = append(m[id][:len(m[id]):len(m[id])], p)
	})
}

func unregisterConsent(id string, p *consentPaths) {
	updateConsent(func(m map[string][]*consentPaths) {
		list := slices.DeleteFunc(slices.Clone(m[id]), func(q *consentPaths) bool { return q == p })
		if len(list) == 0 {
			delete(m, id)
		} else {
			m[id] = list
		}
	})
}

// consentList returns the consent endpoints registered for the grant.
func (g *grants) consentList() []*consentPaths {
	if m := consentEndpoints.m.Load(); m != nil {
		return (*m)[g.id]
	}
	return nil
}

// consentFor returns the newest consent endpoints of a grant, or nil.
func (g *grants) consentFor() *consentPaths {
	if list := g.consentList(); len(list) > 0 {
		return list[len(list)-1]
	}
	return nil
}

func (g *grants) isConsentPath(p string) bool {
	for _, c := range g.consentList() {
		if p == c.connect || p == c.callback || p == c.status || p == c.disconnect {
			return true
		}
	}
	return false
}

// resetAccount sets an account's token (nil: none) in every grants value
// of the same grant in this process, so that a consent given or withdrawn
// takes effect at once for every handler.
func (g *grants) resetAccount(account string, tok *token) {
	sources.Range(func(_, v any) bool {
		if o, ok := v.(*grants); ok && o.id == g.id {
			o.source(account).reset(tok)
		}
		return true
	})
	g.source(account).reset(tok)
}

func consentRequired(provider, reason string) *TokenError {
	return &TokenError{Provider: provider, Code: codeConsentRequired, Description: reason}
}

// load reads an account's grant: nil when none is stored. A grant that
// cannot be decrypted (tampered with, or the client secret changed) is an
// error that needs consent again.
func (g *grants) load(ctx context.Context, account string) (*grantRecord, error) {
	g.mu.Lock()
	if rec, ok := g.unsaved[account]; ok {
		g.mu.Unlock()
		return rec, nil
	}
	g.mu.Unlock()
	key := g.storageKey(account)
	b, err := g.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &TokenError{Provider: g.cfg.Provider, Code: "storage_error", Description: err.Error()}
	}
	ns := g.aead.NonceSize()
	if len(b) < ns+g.aead.Overhead() {
		return nil, consentRequired(g.cfg.Provider, "the stored grant is truncated; connect again")
	}
	plain, err := g.aead.Open(nil, b[:ns], b[ns:], []byte(key))
	if err != nil {
		return nil, consentRequired(g.cfg.Provider, "the stored grant cannot be decrypted (tampered with, or the client secret changed); connect again")
	}
	var rec grantRecord
	if err := json.Unmarshal(plain, &rec); err != nil || rec.Account != account {
		return nil, consentRequired(g.cfg.Provider, "the stored grant is not readable; connect again")
	}
	return &rec, nil
}

// save encrypts and stores a record (the storage writes atomically: the
// file system storage writes a temporary file and renames it). On failure
// the record is kept in memory and saving is tried again on the next
// refresh, so a rotated refresh token is never lost while Caddy runs.
func (g *grants) save(ctx context.Context, rec *grantRecord) error {
	plain, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	key := g.storageKey(rec.Account)
	nonce := make([]byte, g.aead.NonceSize())
	rand.Read(nonce)
	sealed := g.aead.Seal(nonce, nonce, plain, []byte(key))
	err = g.storage.Store(ctx, key, sealed)
	g.mu.Lock()
	if err != nil {
		g.unsaved[rec.Account] = rec
	} else {
		delete(g.unsaved, rec.Account)
	}
	g.mu.Unlock()
	if err != nil {
		return &TokenError{Provider: g.cfg.Provider, Code: "storage_error", Description: "storing the grant: " + err.Error()}
	}
	return nil
}

// locked runs fn holding the grant's storage lock, which serialises
// refreshes across every instance that shares the storage.
func (g *grants) locked(ctx context.Context, account string, fn func() error) error {
	name := g.lockName(account)
	if err := g.storage.Lock(ctx, name); err != nil {
		return &TokenError{Provider: g.cfg.Provider, Code: "storage_error", Description: "taking the grant lock: " + err.Error()}
	}
	defer func() {
		if err := g.storage.Unlock(context.WithoutCancel(ctx), name); err != nil {
			g.log.Error("releasing the grant lock", zap.String("lock", name), zap.Error(err))
		}
	}()
	return fn()
}

// refresh returns a fresh access token for an account: the stored one when
// another route or instance refreshed it meanwhile, else a new one from the
// refresh_token grant. The rotated refresh token is stored before the new
// access token is used; invalid_grant marks the grant as needing consent.
func (g *grants) refresh(ctx context.Context, account string, now func() time.Time) (*token, error) {
	// Accounts with no grant are answered without taking the lock: requests
	// for them must not churn lock files.
	if g.bootstrap == "" || account != defaultAccount {
		rec, err := g.load(ctx, account)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			return nil, consentRequired(g.cfg.Provider, "no grant is stored for account "+account)
		}
	}
	var out *token
	err := g.locked(ctx, account, func() error {
		rec, err := g.load(ctx, account)
		if err != nil {
			return err
		}
		switch {
		case rec == nil && g.bootstrap != "" && account == defaultAccount:
			rec = &grantRecord{Account: account, RefreshToken: g.bootstrap, BootstrapHash: g.bootstrapHash, ConnectedAt: now()}
		case rec == nil:
			return consentRequired(g.cfg.Provider, "no grant is stored for account "+account)
		case g.bootstrap != "" && account == defaultAccount && rec.BootstrapHash != g.bootstrapHash:
			// The configuration holds a refresh token other than the one
			// the stored grant started from: the operator supplied a new one.
			rec = &grantRecord{Account: account, RefreshToken: g.bootstrap, BootstrapHash: g.bootstrapHash, ConnectedAt: now()}
		}
		if rec.NeedsConsent {
			return consentRequired(g.cfg.Provider, rec.Reason)
		}
		// Another instance may have refreshed while we waited for the lock.
		if t := rec.token(g.cfg.RefreshBefore); t != nil && now().Before(t.refreshAt) {
			out = t
			return nil
		}
		if rec.RefreshToken == "" {
			if t := rec.token(g.cfg.RefreshBefore); t != nil && now().Before(t.expiry) {
				out = t
				return nil
			}
			return consentRequired(g.cfg.Provider, "the provider gave no refresh token and the access token expired")
		}
		tok, err := g.endpoint.refresh(ctx, rec.RefreshToken, now)
		if err != nil {
			var te *TokenError
			if errors.As(err, &te) && te.Code == "invalid_grant" {
				rec.NeedsConsent = true
				rec.Reason = "the provider refused the refresh token (invalid_grant): " + te.Description
				rec.AccessToken, rec.RefreshToken = "", ""
				metrics.consents.WithLabelValues(g.cfg.Provider, "consent_required").Inc()
				if serr := g.save(ctx, rec); serr != nil {
					return serr
				}
				return consentRequired(g.cfg.Provider, rec.Reason)
			}
			return err
		}
		rec.RefreshToken = firstNonEmpty(tok.refreshToken, rec.RefreshToken) // keep the old one when none came
		rec.AccessToken, rec.Obtained, rec.Expiry = tok.value, tok.obtained, tok.expiry
		rec.Scope = firstNonEmpty(tok.scope, rec.Scope)
		rec.LastRefresh = now()
		if err := g.save(ctx, rec); err != nil {
			return err
		}
		out = tok
		return nil
	})
	return out, err
}

// connect stores the grant obtained by redeeming an authorization code and
// makes it the account's current token at once.
func (g *grants) connect(ctx context.Context, account string, tok *token, now time.Time) error {
	rec := &grantRecord{Account: account, RefreshToken: tok.refreshToken, AccessToken: tok.value,
		Obtained: tok.obtained, Expiry: tok.expiry, Scope: tok.scope, ConnectedAt: now, LastRefresh: now,
		BootstrapHash: g.bootstrapHash}
	err := g.locked(ctx, account, func() error { return g.save(ctx, rec) })
	if err != nil {
		return err
	}
	g.resetAccount(account, tok)
	return nil
}

// disconnect revokes the grant at the provider (when it has a revoke URL)
// and deletes it. It reports whether the provider confirmed revocation.
func (g *grants) disconnect(ctx context.Context, account string) (revoked bool, err error) {
	err = g.locked(ctx, account, func() error {
		rec, lerr := g.load(ctx, account)
		if lerr != nil && !isConsent(lerr) {
			return lerr
		}
		if rec != nil && g.cfg.RevokeURL != "" {
			revoked = true
			for _, t := range []struct{ v, hint string }{{rec.RefreshToken, "refresh_token"}, {rec.AccessToken, "access_token"}} {
				if t.v == "" {
					continue
				}
				if rerr := g.endpoint.revoke(ctx, t.v, t.hint); rerr != nil {
					revoked = false
					g.log.Warn("revoking a token at the provider failed; deleting the grant anyway",
						zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(rerr))
				}
			}
		}
		g.mu.Lock()
		delete(g.unsaved, account)
		g.mu.Unlock()
		if derr := g.storage.Delete(ctx, g.storageKey(account)); derr != nil && !errors.Is(derr, fs.ErrNotExist) {
			return &TokenError{Provider: g.cfg.Provider, Code: "storage_error", Description: derr.Error()}
		}
		return nil
	})
	g.resetAccount(account, nil)
	return revoked, err
}

// status describes an account's grant; never a token.
func (g *grants) status(ctx context.Context, account string) (map[string]any, error) {
	rec, err := g.load(ctx, account)
	st := map[string]any{"provider": g.cfg.Provider, "account": account, "connected": false, "needs_consent": true}
	if err != nil {
		if !isConsent(err) {
			return nil, err
		}
		st["reason"] = err.(*TokenError).Description
		return st, nil
	}
	if rec == nil {
		st["reason"] = "not connected"
		return st, nil
	}
	st["connected"] = !rec.NeedsConsent
	st["needs_consent"] = rec.NeedsConsent
	if rec.NeedsConsent {
		st["reason"] = rec.Reason
	}
	if !rec.Expiry.IsZero() {
		st["access_token_expires"] = rec.Expiry.UTC().Format(time.RFC3339)
	}
	if rec.Scope != "" {
		st["scope"] = rec.Scope
	}
	for k, t := range map[string]time.Time{"connected_at": rec.ConnectedAt, "last_refresh": rec.LastRefresh} {
		if !t.IsZero() {
			st[k] = t.UTC().Format(time.RFC3339)
		}
	}
	st["has_refresh_token"] = rec.RefreshToken != ""
	return st, nil
}

func isConsent(err error) bool {
	var te *TokenError
	return errors.As(err, &te) && te.Code == codeConsentRequired
}
