package oauthbearer

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// grantaccounts.go: the accounts of a grant in this process's memory: the
// token source of each account that requests use (found without a lock:
// every request does it), evicted when no request used it for a while,
// and the accounts known to have no grant, remembered briefly so that a
// request for one costs neither a storage read nor a log line.

const (
	// absentRecheck: an account known to have no grant is looked up in
	// the storage again after this long (a connect anywhere in the fleet
	// clears it sooner, through the event log).
	absentRecheck = time.Minute
	// maxAbsent bounds how many such accounts are remembered: names come
	// from requests, so anyone can make up new ones.
	maxAbsent = 10000
)

// grantAccounts holds the accounts in memory. Its lock guards only the
// missing accounts; the sources are in a sync.Map.
type grantAccounts struct {
	g       *grant
	sources sync.Map // account name → *tokenSource

	mu     sync.Mutex
	absent map[string]time.Time // account with no grant → when it was last looked up
}

// source returns the token source of an account, creating it on first
// use.
func (a *grantAccounts) source(account string) *tokenSource {
	if s, ok := a.sources.Load(account); ok {
		return s.(*tokenSource)
	}
	f := &accountFetcher{g: a.g, account: account}
	s := newTokenSource(f, &a.g.env, &a.g.clock, a.g.cfg.Provider, a.g.short)
	f.src = s
	if prev, loaded := a.sources.LoadOrStore(account, s); loaded {
		return prev.(*tokenSource)
	}
	a.g.startLoop()
	return s
}

// sourceFor is source for a request: an account known to have no grant
// (looked up less than absentRecheck ago) gets its consent error at once.
func (a *grantAccounts) sourceFor(account string) (*tokenSource, error) {
	if s, ok := a.sources.Load(account); ok {
		return s.(*tokenSource), nil
	}
	a.mu.Lock()
	at, known := a.absent[account]
	a.mu.Unlock()
	if known && a.g.now().Sub(at) < absentRecheck {
		return nil, a.g.consentError(account, "not connected: no grant is stored for account "+account, true)
	}
	return a.source(account), nil
}

// loaded returns the account's source if it is in memory.
func (a *grantAccounts) loaded(account string) *tokenSource {
	if s, ok := a.sources.Load(account); ok {
		return s.(*tokenSource)
	}
	return nil
}

// count returns how many accounts are in memory.
func (a *grantAccounts) count() int {
	n := 0
	a.sources.Range(func(_, _ any) bool { n++; return true })
	return n
}

// forget drops an account's source if it is still src (an account with no
// grant leaves no source in memory). Like an evicted one, the source is
// not stopped: a request that holds it may still be using it.
func (a *grantAccounts) forget(account string, src *tokenSource) {
	a.sources.CompareAndDelete(account, src)
}

// noteAbsent remembers that an account has no grant; it reports whether
// this is news (not remembered already), which is then logged once.
func (a *grantAccounts) noteAbsent(account string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, known := a.absent[account]; known {
		a.absent[account] = a.g.now()
		return false
	}
	if len(a.absent) >= maxAbsent {
		a.dropOldestAbsentLocked()
	}
	a.absent[account] = a.g.now()
	return true
}

func (a *grantAccounts) dropOldestAbsentLocked() {
	var oldest string
	var at time.Time
	for name, t := range a.absent {
		if oldest == "" || t.Before(at) {
			oldest, at = name, t
		}
	}
	delete(a.absent, oldest)
}

// clearAbsent forgets that an account had no grant (it was connected).
func (a *grantAccounts) clearAbsent(account string) {
	a.mu.Lock()
	delete(a.absent, account)
	a.mu.Unlock()
}

// clearAllAbsent forgets every account known to have no grant: the
// instance cannot tell which were connected since (it missed events, or
// the storage changed).
func (a *grantAccounts) clearAllAbsent() {
	a.mu.Lock()
	clear(a.absent)
	a.mu.Unlock()
}

// sweepAbsent forgets the missing accounts no request asked for lately.
func (a *grantAccounts) sweepAbsent() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.g.now()
	for name, at := range a.absent {
		if now.Sub(at) > sweepInterval {
			delete(a.absent, name)
		}
	}
}

// sweep evicts the sources of accounts that no request used since the
// last sweep. Their grants stay stored; a later request loads them again.
// It returns how many it evicted.
func (a *grantAccounts) sweep() int {
	n := 0
	a.sources.Range(func(k, v any) bool {
		s := v.(*tokenSource)
		if s.used.Swap(false) || s.refreshing.Load() {
			return true
		}
		if a.sources.CompareAndDelete(k, s) {
			n++
		}
		return true
	})
	return n
}

// each calls fn with every account in memory and its source.
func (a *grantAccounts) each(fn func(account string, s *tokenSource)) {
	a.sources.Range(func(k, v any) bool {
		fn(k.(string), v.(*tokenSource))
		return true
	})
}

// stopAll stops every source (the grant is unloaded).
func (a *grantAccounts) stopAll() {
	a.each(func(_ string, s *tokenSource) { s.stop() })
}

// accountFetcher is the fetcher of one account's token source.
type accountFetcher struct {
	g       *grant
	account string
	src     *tokenSource
}

func (f *accountFetcher) fetch(ctx context.Context, r fetchRequest) (*token, error) {
	t, err := f.g.refresher.refresh(ctx, f.account, r)
	var ce *ConsentError
	if errors.As(err, &ce) && ce.Absent {
		f.g.accounts.forget(f.account, f.src)
		if f.g.accounts.noteAbsent(f.account) {
			f.g.env.logger().Error("consent required: no grant is stored for the account; requests for it answer 503 until it is connected",
				zap.String("provider", f.g.cfg.Provider), zap.String("account", f.account), zap.String("connect", ce.Connect))
		}
	}
	return t, err
}

// newer looks for a token newer than old without a redemption (see
// tokenSource.takeNewer): the stored one, when another instance or this
// one's background refresh rotated the grant.
func (f *accountFetcher) newer(ctx context.Context, old *token) (*token, error) {
	return f.g.refresher.newer(ctx, f.account, old)
}
