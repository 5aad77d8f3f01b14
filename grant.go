package oauthbearer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// grant.go: the authorization_code and refresh_token grants. A person
// consents once (consent.go); the grant (refresh token, access token,
// expiry, scopes) is kept per account in Caddy's storage, encrypted
// (store.go). Each account that requests use has a token source whose
// fetcher is the grant: it takes a token another route or instance stored,
// or redeems the refresh token under the account's storage lock, so that
// one refresh happens per grant at a time across every instance sharing the
// storage, and a rotated refresh token is never lost.

// codeConsentRequired is the error code of a request whose grant is missing
// or was refused by the provider (invalid_grant): a person must connect.
const codeConsentRequired = "consent_required"

// defaultAccount is the account of handlers that do not select one.
const defaultAccount = "default"

// Bounds of a grant's storage work.
const (
	// lockWait bounds the wait for an account's lock, which another
	// instance holds while it refreshes (a dead holder's lock goes stale
	// within the storage's own bound: 10 s for file_system).
	lockWait = 15 * time.Second
	// saveRetries are the waits between attempts to store a rotated
	// grant while its lock is held; after them the grant stays in memory
	// and is stored again every watchInterval.
	saveRetries = 4
	// watchInterval: how often a grant looks for connects and disconnects
	// made elsewhere, and stores grants that failed to store. A
	// disconnect takes effect on every instance within about this long.
	watchInterval = 2 * time.Second
	// sweepInterval: an account no request used for a whole interval
	// (one to two of them) is evicted from memory.
	sweepInterval = 5 * time.Minute
	// maxEvents is how many connects and disconnects the event log keeps.
	maxEvents = 1000
	// rescanInterval: how often the list of stored grants is read again
	// (between, connects are learnt from the event log), so that grants
	// no request uses are refreshed too.
	rescanInterval = 10 * time.Minute
)

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

// token turns the record's access token into a new, unscheduled token;
// nil when it has none.
func (r *grantRecord) token() *token {
	if r.AccessToken == "" || r.Expiry.IsZero() {
		return nil
	}
	return &token{value: r.AccessToken, scope: r.Scope, obtained: r.Obtained, expiry: r.Expiry,
		lifetimeFrom: "stored", origin: "stored", final: r.RefreshToken == ""}
}

// grantEvents is the log of connects and disconnects of a grant's
// accounts, kept in the storage so that every instance applies them.
type grantEvents struct {
	Seq    uint64       `json:"seq"`
	Events []grantEvent `json:"events"`
}

type grantEvent struct {
	Seq     uint64    `json:"seq"`
	Account string    `json:"account"`
	At      time.Time `json:"at"`
}

// grant is one stored grant configuration (provider, endpoints, client)
// with its accounts: a pool entry shared by the consent handler and the
// injecting handlers that name the same credentials.
type grant struct {
	env   env
	id    string // names the grant in storage: hash of provider, token URL, issuer and client id
	short string // names the pool entry in logs
	cfg   *credentialSet
	ep    *endpoint
	store *recordStore
	clock clock

	// bootstrap is a refresh token from the configuration (grant
	// refresh_token), used for the default account until a stored grant
	// exists.
	bootstrap     string
	bootstrapHash string

	accounts sync.Map // account name → *tokenSource

	mu         sync.Mutex
	unsaved    map[string]*grantRecord // rotated, but the storage refused it
	usedStates map[string]time.Time    // consent states already redeemed here
	eventsSeen uint64
	watched    string               // the storage the event log was last read from
	due        map[string]time.Time // expiry of each refreshable stored grant known here
	scanned    time.Time            // when the stored grants were last listed

	loop   sync.Once
	ctx    context.Context // ends at Destruct
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop has ended
}

// grantID names a grant in storage. It depends only on the provider, the
// token URL, the issuer and the client, so the same grant is found by
// every handler and instance that names them. Without an issuer it is what
// it always was (the grants stored stay where they are).
func grantID(cs *credentialSet) string {
	in := cs.Provider + "\x00" + cs.TokenURL + "\x00" + cs.ClientID
	if cs.Issuer != "" {
		in += "\x00issuer\x00" + cs.Issuer
	}
	h := sha256.Sum256([]byte(in))
	return hex.EncodeToString(h[:8])
}

// grantKey is the pool key of the grant of cs seeded with bootstrap.
func grantKey(cs *credentialSet, bootstrap string) string {
	h := sha256.Sum256([]byte(cs.key() + "\x00" + bootstrap))
	return "grant:" + hex.EncodeToString(h[:])
}

func newGrant(cs *credentialSet, key, bootstrap string) (*grant, error) {
	initMetrics()
	g := &grant{id: grantID(cs), short: shortID(key), cfg: cs, bootstrap: bootstrap,
		unsaved: map[string]*grantRecord{}, usedStates: map[string]time.Time{}, due: map[string]time.Time{},
		done: make(chan struct{})}
	g.ep = newEndpoint(cs, &g.clock)
	cs.tlsCert.logTo(g.env.logger) // a client certificate's reloads are logged
	var err error
	if g.store, err = newRecordStore(&g.env, cs, "caddy-oauth-bearer grant v1", g.id); err != nil {
		return nil, err
	}
	if bootstrap != "" {
		h := sha256.Sum256([]byte(bootstrap))
		g.bootstrapHash = hex.EncodeToString(h[:])
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g, nil
}

func (g *grant) uses() *env { return &g.env }

// Destruct implements caddy.Destructor: no configuration uses the grant.
// Its loop ends (after one last attempt to store what the storage refused),
// then its accounts' sources and its connections.
func (g *grant) Destruct() error {
	g.cancel()
	g.loop.Do(func() { close(g.done) }) // never started: nothing to wait for
	<-g.done
	g.accounts.Range(func(_, v any) bool {
		v.(*tokenSource).stop()
		return true
	})
	g.ep.close()
	return nil
}

func (g *grant) now() time.Time { return g.clock.now() }

func (g *grant) recordKey(account string) string {
	return "oauth_bearer/grants/" + g.id + "/" + account + ".json"
}

func (g *grant) eventsKey() string { return "oauth_bearer/grants/" + g.id + "/_events.json" }

func (g *grant) lockName(account string) string {
	return "oauth_bearer_grant_" + g.id + "_" + account
}

// ---- accounts ----

// source returns the token source of an account, creating it on first
// use. Finding an existing one takes no lock: it runs for every request.
func (g *grant) source(account string) *tokenSource {
	if s, ok := g.accounts.Load(account); ok {
		return s.(*tokenSource)
	}
	f := &accountFetcher{g: g, account: account}
	s := newTokenSource(f, &g.env, &g.clock, g.cfg.Provider, g.short)
	f.src = s
	if prev, loaded := g.accounts.LoadOrStore(account, s); loaded {
		return prev.(*tokenSource)
	}
	g.startLoop()
	return s
}

// forget drops an account's source if it is still src (an account with no
// grant leaves nothing in memory). Like an evicted one (sweep), the source
// is not stopped: a request that holds it may still be using it.
func (g *grant) forget(account string, src *tokenSource) {
	g.accounts.CompareAndDelete(account, src)
}

// accountFetcher is the fetcher of one account's token source.
type accountFetcher struct {
	g       *grant
	account string
	src     *tokenSource
}

func (f *accountFetcher) fetch(ctx context.Context, r fetchRequest) (*token, error) {
	t, err := f.g.refresh(ctx, f.account, r)
	var te *TokenError
	if errors.As(err, &te) && te.absent {
		f.g.forget(f.account, f.src)
	}
	return t, err
}

// resetLocal gives every source of the account in this process (in every
// grant entry of the same grant: handlers whose other settings differ) the
// token t, or none: a grant was just connected or disconnected here.
func (g *grant) resetLocal(account string, t func() *token) {
	pool.Range(func(_, v any) bool {
		if o, ok := v.(*grant); ok && o.id == g.id {
			if s, ok := o.accounts.Load(account); ok {
				s.(*tokenSource).store(t())
			}
		}
		return true
	})
}

// ---- refresh ----

// refresh returns a token for an account to replace old: the stored one
// when it is newer (another route or instance refreshed), else a new one
// from the refresh token, redeemed under the account's lock. Taking the
// stored token needs no lock, and neither does an account with no grant.
func (g *grant) refresh(ctx context.Context, account string, r fetchRequest) (*token, error) {
	rec, err := g.current(ctx, account)
	if err != nil {
		return nil, err
	}
	if t, err := g.decide(account, rec, r); t != nil || err != nil {
		return t, err
	}
	unlock, err := g.store.lock(ctx, g.lockName(account), lockWait)
	if err != nil {
		return nil, g.storageError("taking the grant's lock", err)
	}
	defer unlock()
	// Another instance may have refreshed while we waited.
	if rec, err = g.current(ctx, account); err != nil {
		return nil, err
	}
	if t, err := g.decide(account, rec, r); t != nil || err != nil {
		return t, err
	}
	// From here on the refresh token is sent: the answer is read and
	// stored whatever happens to the caller, the source or the config.
	return g.redeem(context.WithoutCancel(ctx), rec)
}

// current returns the account's grant: the one this process holds but
// could not store, else the stored one; for the default account of a
// refresh_token grant, one made from the configured refresh token when
// none is stored or the configured one changed. nil: not connected.
func (g *grant) current(ctx context.Context, account string) (*grantRecord, error) {
	g.mu.Lock()
	rec := g.unsaved[account]
	g.mu.Unlock()
	if rec == nil {
		var r grantRecord
		found, err := g.store.load(ctx, g.recordKey(account), &r)
		switch {
		case errors.Is(err, errUndecryptable):
			return nil, g.consentError(account, "the stored grant cannot be decrypted (tampered with, or the client secret changed); connect again", false)
		case err != nil:
			return nil, g.storageError("reading the grant", err)
		case found && r.Account == account:
			rec = &r
		case found:
			return nil, g.consentError(account, "the stored grant belongs to another account; connect again", false)
		}
	}
	if g.bootstrap != "" && account == defaultAccount && (rec == nil || rec.BootstrapHash != g.bootstrapHash) {
		// The configuration holds a refresh token other than the one
		// the stored grant started from: the operator supplied a new one.
		rec = &grantRecord{Account: account, RefreshToken: g.bootstrap, BootstrapHash: g.bootstrapHash, ConnectedAt: g.now()}
	}
	return rec, nil
}

// decide looks at an account's grant: a token to use, an error, or
// neither, when the refresh token must be redeemed (always when forced).
func (g *grant) decide(account string, rec *grantRecord, r fetchRequest) (*token, error) {
	switch {
	case rec == nil:
		return nil, g.consentError(account, "not connected: no grant is stored for account "+account, true)
	case rec.NeedsConsent:
		return nil, g.consentError(account, rec.Reason, false)
	case r.force && rec.RefreshToken == "":
		return nil, &TokenError{Provider: g.cfg.Provider, Code: "no_refresh_token",
			Description: "the grant has no refresh token to refresh it with; connect the account again"}
	case r.force:
		return nil, nil
	}
	old, refused := r.old, r.refused
	t := rec.token()
	valid := t != nil && g.now().Before(t.expiry) && !(refused && old != nil && t.value == old.value)
	if valid && (old == nil || t.value != old.value) {
		return t, nil // another route or instance refreshed, or first use
	}
	if rec.RefreshToken == "" {
		if valid {
			return t, nil // final: nothing to refresh it with
		}
		return nil, g.consentError(account, "the provider gave no refresh token, and the access token expired or was refused; connect again", false)
	}
	return nil, nil
}

// redeem sends the refresh token and stores what comes back, holding the
// account's lock. The rotated grant is what this process uses from then
// on, stored or not.
func (g *grant) redeem(ctx context.Context, rec *grantRecord) (*token, error) {
	tok, err := g.ep.refresh(ctx, rec.RefreshToken)
	if err != nil {
		var te *TokenError
		if !errors.As(err, &te) || te.Code != "invalid_grant" {
			return nil, err
		}
		next := *rec
		next.NeedsConsent = true
		next.Reason = "the provider refused the refresh token (invalid_grant): " + te.Description
		next.AccessToken, next.RefreshToken, next.Obtained, next.Expiry = "", "", time.Time{}, time.Time{}
		metrics.consents.WithLabelValues(g.cfg.Provider, "consent_required").Inc()
		g.persist(ctx, &next)
		return nil, g.consentError(rec.Account, next.Reason, false)
	}
	next := *rec
	next.RefreshToken = firstNonEmpty(tok.refreshToken, rec.RefreshToken) // keep the old one when none came
	next.AccessToken, next.Obtained, next.Expiry = tok.value, tok.obtained, tok.expiry
	next.Scope = firstNonEmpty(tok.scope, rec.Scope)
	next.LastRefresh = g.now()
	g.persist(ctx, &next)
	g.noteDue(&next)
	tok.refreshToken = ""
	tok.final = next.RefreshToken == ""
	return tok, nil
}

// persist stores a rotated grant, retrying while the caller holds its
// lock (so that no other instance redeems the stale refresh token meanwhile).
// When the storage keeps refusing, the grant is kept in memory, used from
// there, and stored again by the loop until it succeeds.
func (g *grant) persist(ctx context.Context, rec *grantRecord) {
	var err error
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if err = g.store.save(ctx, g.recordKey(rec.Account), rec); err == nil {
			g.mu.Lock()
			delete(g.unsaved, rec.Account)
			g.mu.Unlock()
			return
		}
		if attempt == saveRetries {
			break
		}
		select {
		case <-time.After(wait):
		case <-g.ctx.Done():
		}
		wait *= 3
	}
	g.mu.Lock()
	g.unsaved[rec.Account] = rec
	g.mu.Unlock()
	g.env.logger().Error("storing the refreshed grant failed; it is kept in memory and stored again every few seconds",
		zap.String("provider", g.cfg.Provider), zap.String("account", rec.Account), zap.Error(err))
	g.startLoop()
}

func (g *grant) consentError(account, reason string, absent bool) *TokenError {
	e := &TokenError{Provider: g.cfg.Provider, Code: codeConsentRequired, Description: g.cfg.redact(reason), account: account, absent: absent}
	if p := g.env.consentPaths(); p != nil {
		e.connect = p.connect + "?account=" + url.QueryEscape(account)
	}
	return e
}

func (g *grant) storageError(doing string, err error) *TokenError {
	return &TokenError{Provider: g.cfg.Provider, Code: "storage_error", Description: doing + ": " + truncate(err.Error(), 200)}
}

// ---- consent ----

// connect stores the grant obtained by redeeming an authorization code,
// revokes the refresh token of the grant it replaces, tells the other
// instances, and makes it the account's token here at once.
func (g *grant) connect(ctx context.Context, account string, tok *token) error {
	now := g.now()
	rec := &grantRecord{Account: account, RefreshToken: tok.refreshToken, AccessToken: tok.value,
		Obtained: tok.obtained, Expiry: tok.expiry, Scope: tok.scope, ConnectedAt: now, LastRefresh: now,
		BootstrapHash: g.bootstrapHash}
	var replaced *grantRecord
	err := g.locked(ctx, account, func() error {
		replaced, _ = g.current(ctx, account)
		if err := g.store.save(ctx, g.recordKey(account), rec); err != nil {
			return g.storageError("storing the grant", err)
		}
		g.mu.Lock()
		delete(g.unsaved, account)
		g.mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	g.publish(ctx, account)
	g.noteDue(rec)
	g.resetLocal(account, rec.token)
	if replaced != nil && replaced.RefreshToken != "" && replaced.RefreshToken != rec.RefreshToken && g.ep.canRevoke(ctx) {
		if err := g.ep.revoke(ctx, replaced.RefreshToken, "refresh_token"); err != nil {
			g.env.logger().Warn("revoking the refresh token of the replaced grant failed",
				zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(err))
		}
	}
	return nil
}

// disconnect revokes the grant at the provider (when it has a revoke URL),
// deletes it and tells the other instances. It reports whether the
// provider confirmed the revocation.
func (g *grant) disconnect(ctx context.Context, account string) (revoked bool, err error) {
	err = g.locked(ctx, account, func() error {
		rec, _ := g.current(ctx, account)
		if rec != nil && g.ep.canRevoke(ctx) {
			revoked = true
			for _, t := range []struct{ v, hint string }{{rec.RefreshToken, "refresh_token"}, {rec.AccessToken, "access_token"}} {
				if t.v == "" {
					continue
				}
				if rerr := g.ep.revoke(ctx, t.v, t.hint); rerr != nil {
					revoked = false
					g.env.logger().Warn("revoking a token at the provider failed; deleting the grant anyway",
						zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(rerr))
				}
			}
		}
		g.mu.Lock()
		delete(g.unsaved, account)
		g.mu.Unlock()
		if derr := g.store.remove(ctx, g.recordKey(account)); derr != nil {
			return g.storageError("deleting the grant", derr)
		}
		return nil
	})
	if err == nil {
		g.publish(ctx, account)
	}
	g.resetLocal(account, func() *token { return nil })
	return revoked, err
}

// locked runs fn holding the account's lock.
func (g *grant) locked(ctx context.Context, account string, fn func() error) error {
	unlock, err := g.store.lock(ctx, g.lockName(account), lockWait)
	if err != nil {
		return g.storageError("taking the grant's lock", err)
	}
	defer unlock()
	return fn()
}

// accountStatus describes an account's grant; never a token.
type accountStatus struct {
	Provider           string `json:"provider"`
	Account            string `json:"account"`
	Connected          bool   `json:"connected"`
	NeedsConsent       bool   `json:"needs_consent"`
	Reason             string `json:"reason,omitempty"`
	Scope              string `json:"scope,omitempty"`
	AccessTokenExpires string `json:"access_token_expires,omitempty"`
	ConnectedAt        string `json:"connected_at,omitempty"`
	LastRefresh        string `json:"last_refresh,omitempty"`
	HasRefreshToken    bool   `json:"has_refresh_token"`
	Connect            string `json:"connect,omitempty"`
}

func (g *grant) status(ctx context.Context, account string) (*accountStatus, error) {
	st := &accountStatus{Provider: g.cfg.Provider, Account: account, NeedsConsent: true}
	rec, err := g.current(ctx, account)
	var te *TokenError
	switch {
	case errors.As(err, &te) && te.Code == codeConsentRequired:
		st.Reason = te.Description
		return st, nil
	case err != nil:
		return nil, err
	case rec == nil:
		st.Reason = "not connected"
		return st, nil
	}
	st.Connected, st.NeedsConsent, st.HasRefreshToken, st.Scope = !rec.NeedsConsent, rec.NeedsConsent, rec.RefreshToken != "", rec.Scope
	if rec.NeedsConsent {
		st.Reason = g.cfg.redact(rec.Reason) // stored by an older version perhaps: redacted again
	}
	for _, f := range []struct {
		dst *string
		t   time.Time
	}{{&st.AccessTokenExpires, rec.Expiry}, {&st.ConnectedAt, rec.ConnectedAt}, {&st.LastRefresh, rec.LastRefresh}} {
		if !f.t.IsZero() {
			*f.dst = f.t.UTC().Format(time.RFC3339)
		}
	}
	return st, nil
}

// hasGrant reports whether a grant is stored for account (connected, or
// needing consent again): what disconnect can delete.
func (g *grant) hasGrant(ctx context.Context, account string) (bool, error) {
	g.mu.Lock()
	_, unsaved := g.unsaved[account]
	g.mu.Unlock()
	var rec grantRecord
	found, err := g.store.load(ctx, g.recordKey(account), &rec)
	if errors.Is(err, errUndecryptable) {
		return true, nil // there, but unreadable: disconnect deletes it
	}
	return found || unsaved, err
}

// canRevoke reports whether disconnect revokes the grant at the provider
// (a revocation endpoint, configured or discovered).
func (g *grant) canRevoke(ctx context.Context) bool { return g.ep.canRevoke(ctx) }

// useState marks a consent state as used; false if it already was.
func (g *grant) useState(state string, expires time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
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

// ---- the loop: other instances' consents, idle accounts, unsaved grants ----

// startLoop starts the grant's background loop once, when it first has an
// account (so that `caddy validate` starts nothing).
func (g *grant) startLoop() {
	g.loop.Do(func() { go g.run() })
}

func (g *grant) run() {
	defer close(g.done)
	watch := time.NewTicker(watchInterval)
	defer watch.Stop()
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	for {
		select {
		case <-g.ctx.Done():
			g.storeUnsaved(context.Background())
			return
		case <-watch.C:
			g.storeUnsaved(g.ctx)
			g.watch(g.ctx)
			g.refreshDue(g.ctx)
		case <-sweep.C:
			g.sweep()
		}
	}
}

// publish appends a connect or disconnect of account to the grant's event
// log, which the other instances read every watchInterval.
func (g *grant) publish(ctx context.Context, account string) {
	err := g.locked(ctx, "_events", func() error {
		var log grantEvents
		if _, err := g.store.load(ctx, g.eventsKey(), &log); err != nil && !errors.Is(err, errUndecryptable) {
			return err
		}
		log.Seq++
		log.Events = append(log.Events, grantEvent{Seq: log.Seq, Account: account, At: g.now()})
		if len(log.Events) > maxEvents {
			log.Events = log.Events[len(log.Events)-maxEvents:]
		}
		return g.store.save(ctx, g.eventsKey(), &log)
	})
	if err != nil {
		g.env.logger().Warn("recording a consent change for the other instances failed; they see it at their next refresh",
			zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(err))
	}
}

// watch applies the connects and disconnects made since the last look (on
// any instance, this one included): every account named gets its stored
// grant's token, or none. When events were missed (the log was trimmed past
// what this instance saw), every account in memory is read again.
func (g *grant) watch(ctx context.Context) {
	var log grantEvents
	if _, err := g.store.load(ctx, g.eventsKey(), &log); err != nil {
		g.env.logger().Debug("reading the grant's event log failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	storage := storageName(g.env.storage())
	g.mu.Lock()
	seen, switched := g.eventsSeen, g.watched != storage
	g.eventsSeen, g.watched = log.Seq, storage
	g.mu.Unlock()
	if log.Seq == seen && !switched {
		return
	}
	accounts := map[string]bool{}
	if switched || log.Seq < seen || len(log.Events) == 0 || log.Events[0].Seq > seen+1 {
		// Events were missed, or this is another storage (a reload
		// switched to it): every account in memory is read again.
		g.accounts.Range(func(k, _ any) bool { accounts[k.(string)] = true; return true })
		if switched {
			g.mu.Lock()
			clear(g.due)
			g.mu.Unlock()
			g.scanned = time.Time{}
		}
	}
	for _, ev := range log.Events {
		if ev.Seq > seen {
			accounts[ev.Account] = true
		}
	}
	for account := range accounts {
		v, ok := g.accounts.Load(account)
		if !ok {
			if rec, err := g.current(ctx, account); err == nil {
				g.noteDue(rec) // connected or disconnected elsewhere
			}
			continue
		}
		g.mu.Lock()
		delete(g.unsaved, account) // a newer grant was stored elsewhere
		g.mu.Unlock()
		rec, err := g.current(ctx, account)
		if err != nil {
			continue // the next request finds out
		}
		var t *token
		if rec != nil && !rec.NeedsConsent {
			t = rec.token()
		}
		src := v.(*tokenSource)
		g.noteDue(rec)
		if cur := src.cur.Load(); (t == nil) != (cur == nil) || (t != nil && cur.value != t.value) {
			src.store(t)
		}
	}
}

// storageName tells storages apart: a new configuration makes a new
// storage value even when it names the same place, so one that can say
// where it is (file_system: its path) is known by that.
func storageName(s certmagic.Storage) string {
	if str, ok := s.(fmt.Stringer); ok {
		return fmt.Sprintf("%T %s", s, str.String())
	}
	return fmt.Sprintf("%T %p", s, s)
}

// storeUnsaved stores again the grants the storage refused.
func (g *grant) storeUnsaved(ctx context.Context) {
	g.mu.Lock()
	pending := make([]*grantRecord, 0, len(g.unsaved))
	for _, rec := range g.unsaved {
		pending = append(pending, rec)
	}
	g.mu.Unlock()
	for _, rec := range pending {
		err := g.locked(ctx, rec.Account, func() error {
			if err := g.store.save(ctx, g.recordKey(rec.Account), rec); err != nil {
				return err
			}
			g.mu.Lock()
			if g.unsaved[rec.Account] == rec {
				delete(g.unsaved, rec.Account)
			}
			g.mu.Unlock()
			return nil
		})
		if err == nil {
			g.env.logger().Info("the refreshed grant is stored now", zap.String("provider", g.cfg.Provider), zap.String("account", rec.Account))
		}
	}
}

// sweep evicts the sources of accounts that no request used since the
// last sweep. Their grants stay stored; a later request loads them again.
// It returns how many it evicted.
func (g *grant) sweep() int {
	n := 0
	g.accounts.Range(func(k, v any) bool {
		s := v.(*tokenSource)
		if s.used.Swap(false) || s.refreshing.Load() {
			return true
		}
		if g.accounts.CompareAndDelete(k, s) {
			n++
		}
		return true
	})
	return n
}

// ---- grants no request uses ----

// noteDue records when an account's stored grant expires, for refreshDue;
// a grant that cannot be refreshed (none, needs consent, no refresh token)
// is forgotten.
func (g *grant) noteDue(rec *grantRecord) {
	if rec == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if rec.NeedsConsent || rec.RefreshToken == "" || rec.Expiry.IsZero() {
		delete(g.due, rec.Account)
		return
	}
	g.due[rec.Account] = rec.Expiry
}

// refreshDue refreshes the stored grants whose access token nears expiry,
// whether or not a request uses them: refresh tokens that expire when
// unused stay alive, and status stays true. Every instance does this; the
// account's lock and the re-read under it mean that one redeems and the
// others take its result. The stored grants are listed every
// rescanInterval.
func (g *grant) refreshDue(ctx context.Context) {
	if time.Since(g.scanned) > rescanInterval {
		g.scan(ctx)
	}
	now, before := g.now(), g.env.refreshBefore()
	var due []string
	g.mu.Lock()
	for account, expiry := range g.due {
		if now.After(expiry.Add(-before)) {
			due = append(due, account)
		}
	}
	g.mu.Unlock()
	for _, account := range due {
		if ctx.Err() != nil {
			return
		}
		rec, err := g.current(ctx, account)
		if err != nil || rec == nil {
			g.mu.Lock()
			delete(g.due, account)
			g.mu.Unlock()
			continue
		}
		tok, err := g.refresh(ctx, account, fetchRequest{old: rec.token()})
		if err != nil {
			if isConsent(err) {
				g.mu.Lock()
				delete(g.due, account)
				g.mu.Unlock()
			}
			g.env.logger().Warn("refreshing an idle grant failed", zap.String("provider", g.cfg.Provider),
				zap.String("account", account), zap.Error(err))
			continue
		}
		g.mu.Lock()
		if tok.final {
			delete(g.due, account)
		} else {
			g.due[account] = tok.expiry
		}
		g.mu.Unlock()
		if v, ok := g.accounts.Load(account); ok {
			src := v.(*tokenSource)
			if cur := src.cur.Load(); cur == nil || cur.value != tok.value {
				src.store(tok)
			}
		}
	}
}

// scan lists the stored grants and notes when each expires.
func (g *grant) scan(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, storageTimeout)
	accounts, err := g.storedAccounts(lctx)
	cancel()
	if err != nil {
		g.env.logger().Debug("listing the stored grants failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	g.scanned = time.Now()
	for _, account := range accounts {
		if rec, err := g.current(ctx, account); err == nil {
			g.noteDue(rec)
		}
	}
}

func isConsent(err error) bool {
	var te *TokenError
	return errors.As(err, &te) && te.Code == codeConsentRequired
}
