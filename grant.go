package oauthbearer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// grant.go: the authorization_code and refresh_token grants. A person
// consents once (consent.go); the grant (refresh token, access token,
// expiry, scopes) is kept per account in Caddy's storage, encrypted
// (store.go). Each account that requests use has a token source whose
// fetcher is the grant. A grant is made of parts, each with one job, its
// own lock and its own file:
//
//	grantaccounts.go  the accounts in memory: their token sources, eviction,
//	                  the accounts known to have no grant
//	grantrefresh.go   the refresh: read, lock, read again, redeem; one at a
//	                  time per account in the process and across the fleet;
//	                  never a redemption of a grant whose token is not due
//	grantrecords.go   the records: read, write, and the rotations the storage
//	                  refused, kept in memory (for the whole process) until
//	                  it takes them, unless a newer grant was stored
//	grantconsent.go   connect, disconnect, status: what the consent handler
//	                  asks of the grant
//	grantevents.go    the event log: connects and disconnects reach every
//	                  instance within about 2 s
//	grantschedule.go  the background refresh of grants no request uses: the
//	                  instances share the accounts out (each refreshes its
//	                  own), backoff per account, bounded concurrency
//
// This file holds what they share: the grant itself, its names in the
// storage, its errors, and the loop that drives the background parts.

// codeConsentRequired is the error code of a request whose grant is missing
// or was refused by the provider (invalid_grant): a person must connect.
const codeConsentRequired = "consent_required"

// defaultAccount is the account of handlers that do not select one.
const defaultAccount = "default"

// Timing of a grant's loop.
const (
	// watchInterval: how often a grant looks for connects and disconnects
	// made elsewhere, and stores grants that failed to store. A
	// disconnect takes effect on every instance within about this long.
	watchInterval = 2 * time.Second
	// sweepInterval: an account no request used for a whole interval
	// (one to two of them) is evicted from memory.
	sweepInterval = 5 * time.Minute
	// destructWait bounds how long unloading a grant (a reload that drops
	// it, a shutdown) waits for its background work; what is still under
	// way then finishes on its own, and a rotation it could not store
	// stays in memory for the next configuration (grantrecords.go).
	destructWait = 3 * time.Second
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

// ConsentError is a request for an account whose grant needs a person's
// consent: none is stored, the provider refused its refresh token
// (invalid_grant), or it cannot be read.
type ConsentError struct {
	Provider string
	Account  string
	Reason   string
	Connect  string // where the account can be connected; "" without a consent handler
	Absent   bool   // no grant is stored at all
}

func (e *ConsentError) Error() string {
	return fmt.Sprintf("%s account %q needs consent (%s): %s", e.Provider, e.Account, codeConsentRequired, e.Reason)
}

func isConsent(err error) bool {
	var ce *ConsentError
	return errors.As(err, &ce)
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
	// refresh_token), which seeds the default account once.
	bootstrap     string
	bootstrapHash string

	accounts  *grantAccounts
	refresher *grantRefresher
	records   *grantRecords
	consent   *grantConsent
	events    *grantEventLog
	schedule  *grantSchedule
	dpop      grantDPoP // grantdpop.go

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
	g := &grant{id: grantID(cs), short: shortID(key), cfg: cs, bootstrap: bootstrap, done: make(chan struct{})}
	g.ep = newEndpoint(cs, &g.clock)
	cs.tlsCert.LogTo(g.env.logger) // a client certificate's reloads are logged
	var err error
	if g.store, err = newRecordStore(&g.env, cs, "caddy-oauth-bearer grant v1", g.id); err != nil {
		return nil, err
	}
	if bootstrap != "" {
		h := sha256.Sum256([]byte(bootstrap))
		g.bootstrapHash = hex.EncodeToString(h[:])
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.accounts = &grantAccounts{g: g, absent: map[string]time.Time{}}
	g.refresher = &grantRefresher{g: g}
	g.records = &grantRecords{g: g}
	g.consent = &grantConsent{g: g, usedStates: map[string]time.Time{}}
	g.events = &grantEventLog{g: g}
	g.schedule = newGrantSchedule(g)
	return g, nil
}

func (g *grant) uses() *env { return &g.env }

// Destruct implements caddy.Destructor: no configuration uses the grant.
// Its loop and background refreshes are told to end and waited for at most
// destructWait: a redemption already sent finishes on its own and stores
// its answer, or leaves it in memory for the next configuration using the
// grant (grantrecords.go). Then its accounts' sources end, and its idle
// connections.
func (g *grant) Destruct() error {
	g.cancel()
	g.loop.Do(func() { close(g.done) }) // never started: nothing to wait for
	select {
	case <-g.done:
	case <-time.After(destructWait):
		g.env.logger().Warn("the grant's background work is still under way; unloading it without waiting longer",
			zap.String("provider", g.cfg.Provider), zap.Duration("waited", destructWait))
	}
	g.accounts.stopAll()
	g.ep.Close()
	return nil
}

func (g *grant) now() time.Time { return g.clock.now() }

func (g *grant) recordKey(account string) string {
	return "oauth_bearer/grants/" + g.id + "/" + account + ".json"
}

func (g *grant) lockName(account string) string {
	return "oauth_bearer_grant_" + g.id + "_" + account
}

// source returns the token source of an account, creating it on first
// use. Finding an existing one takes no lock: it runs for every request.
func (g *grant) source(account string) *tokenSource { return g.accounts.source(account) }

// sourceFor is source for a request: an account known to have no grant
// gets its consent error at once, without a source or a storage read.
func (g *grant) sourceFor(account string) (*tokenSource, error) { return g.accounts.sourceFor(account) }

// refresh returns a token for an account to replace r.old (see
// grantRefresher.refresh).
func (g *grant) refresh(ctx context.Context, account string, r fetchRequest) (*token, error) {
	return g.refresher.refresh(ctx, account, r)
}

// sweep evicts the sources of accounts that no request used since the
// last sweep; it returns how many.
func (g *grant) sweep() int { return g.accounts.sweep() }

// status describes an account's grant; never a token.
func (g *grant) status(ctx context.Context, account string) (*accountStatus, error) {
	return g.consent.status(ctx, account)
}

func (g *grant) consentError(account, reason string, absent bool) *ConsentError {
	e := &ConsentError{Provider: g.cfg.Provider, Account: account, Reason: g.cfg.redact(reason), Absent: absent}
	if p := g.env.consentPaths(); p != nil {
		e.Connect = p.connect + "?account=" + url.QueryEscape(account)
	}
	return e
}

func (g *grant) storageError(doing string, err error) *StorageError {
	return &StorageError{Provider: g.cfg.Provider, Doing: doing, Err: err}
}

// changed applies what this instance learnt about an account's grant
// (from the event log, or its own connect or disconnect) to every pool
// entry of the same grant: the account is no longer known to be missing,
// its source in memory takes the stored token or none, and the schedule
// notes it. rec is the account's record as read (nil: none).
func (g *grant) changed(account string, rec *grantRecord) {
	t := func(o *grant) *token {
		if rec == nil || rec.NeedsConsent {
			return nil
		}
		t, _ := o.recordToken(rec) // one it cannot use: its source asks again, and learns why
		return t
	}
	apply := func(o *grant) {
		o.accounts.clearAbsent(account)
		if s := o.accounts.loaded(account); s != nil {
			if nt, cur := t(o), s.cur.Load(); (nt == nil) != (cur == nil) || (nt != nil && cur.value != nt.value) {
				s.store(nt)
			}
		}
		o.schedule.learned(account, rec)
	}
	inPool := false
	pool.Range(func(_, v any) bool {
		if o, ok := v.(*grant); ok && o.id == g.id {
			apply(o)
			inPool = inPool || o == g
		}
		return true
	})
	if !inPool {
		apply(g) // a grant outside the pool: a configuration being loaded, or a test's
	}
}

// forgetStorage forgets what the grant learnt from a storage the
// configuration no longer uses (a reload switched to another): the
// accounts known to have no grant there, that its configured refresh token
// was applied there (its seeds are per storage: the new one's say whether
// it was applied in it), and the schedule's accounts and instances. The
// event log's caller then reads every account in memory again from the new
// storage. So a reload to another storage acts like a start on it.
func (g *grant) forgetStorage() {
	g.accounts.clearAllAbsent()
	g.refresher.seeded.Store(false)
	g.schedule.rescan(true)
}

// ---- the loop ----

// startLoop starts the grant's background loop once, when a handler that
// injects its tokens is provisioned or it first has an account (so that
// `caddy validate` starts nothing).
func (g *grant) startLoop() {
	g.loop.Do(func() { go g.run() })
}

// run is the loop: every watchInterval it stores the rotations the storage
// refused and reads the event log; the schedule (its own goroutine and
// workers) refreshes the grants this instance looks after; every
// sweepInterval idle accounts leave memory. It does nothing that waits on
// the provider, so that it never holds up a disconnect.
func (g *grant) run() {
	defer close(g.done)
	scheduled := make(chan struct{})
	go func() { defer close(scheduled); g.schedule.run(g.ctx) }()
	watch := time.NewTicker(watchInterval)
	defer watch.Stop()
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	for {
		select {
		case <-g.ctx.Done():
			// Unloaded: a last attempt to store what the storage refused
			// and to leave the fleet, bounded; what is not stored stays in
			// memory for the next configuration using the grant.
			ctx, cancel := context.WithTimeout(context.Background(), destructWait/2)
			g.records.storeUnsaved(ctx)
			g.schedule.leave(ctx)
			cancel()
			<-scheduled
			return
		case <-watch.C:
			g.records.storeUnsaved(g.ctx)
			g.events.watch(g.ctx)
			g.schedule.tick(g.ctx)
		case <-sweep.C:
			g.accounts.sweep()
			g.accounts.sweepAbsent()
		}
	}
}

// randomID returns n random bytes, hex-encoded.
func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
