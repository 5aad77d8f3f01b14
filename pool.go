package oauthbearer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// pool.go: what handlers share across routes, sites and configuration
// reloads. A handler takes a reference to an entry in Provision and drops
// it in Cleanup; a reload provisions the new configuration before cleaning
// up the old one, so an entry whose key is unchanged (and its cached
// token) lives through it. Entries are keyed by resolved credentials:
//
//	"cc:<hash>"    *sourceEntry: a client-credentials token source
//	"grant:<hash>" *grant: a stored grant and its accounts (grant.go)
var pool = caddy.NewUsagePool()

// shared is a pool entry.
type shared interface {
	caddy.Destructor
	uses() *env
}

// acquire takes a reference to the entry under key, creating it when no
// configuration holds one, and attaches u to it.
func acquire[T shared](key string, u *use, create func() (T, error)) (T, error) {
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) { return create() })
	if err != nil {
		var zero T
		return zero, err
	}
	e := v.(T)
	e.uses().attach(u)
	return e, nil
}

// release detaches u and drops the reference acquire took; the entry is
// destructed when it was the last.
func release(key string, e shared, u *use) error {
	e.uses().detach(u)
	_, err := pool.Delete(key)
	return err
}

// use is what one provisioned handler gives the entry it shares.
type use struct {
	logger        *zap.Logger
	storage       certmagic.Storage
	refreshBefore time.Duration // 0: the default
	consent       *consentPaths // set by a consent handler
}

// env combines the uses of an entry: the newest configuration's logger and
// storage (a reload with another storage switches to it; a failed reload,
// once cleaned up, switches back), the smallest refresh_before any handler
// asks for (a shared token is replaced as early as the earliest wants), and
// the newest consent endpoints. Reads are one atomic load.
type env struct {
	mu   sync.Mutex
	list []*use
	cur  atomic.Pointer[envView]
	// switches counts the changes of storage since the first: what was
	// read from the storage before a change is not to be trusted after
	// it (grantevents.go).
	switches atomic.Uint64
}

type envView struct {
	logger        *zap.Logger
	storage       certmagic.Storage
	refreshBefore time.Duration
	consent       *consentPaths
}

func (e *env) attach(u *use) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, u)
	e.update()
}

func (e *env) detach(u *use) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = slices.DeleteFunc(e.list, func(v *use) bool { return v == u })
	e.update()
}

// update recomputes the view; with no use left, the last one is kept.
func (e *env) update() {
	if len(e.list) == 0 {
		return
	}
	v := &envView{refreshBefore: defaultRefreshBefore}
	minBefore := time.Duration(0)
	for _, u := range e.list {
		if u.logger != nil {
			v.logger = u.logger
		}
		if u.storage != nil {
			v.storage = u.storage
		}
		if u.consent != nil {
			v.consent = u.consent
		}
		if u.refreshBefore > 0 && (minBefore == 0 || u.refreshBefore < minBefore) {
			minBefore = u.refreshBefore
		}
	}
	if minBefore > 0 {
		v.refreshBefore = minBefore
	}
	if old := e.cur.Load(); old != nil && storageName(old.storage) != storageName(v.storage) {
		e.switches.Add(1)
	}
	e.cur.Store(v)
}

func (e *env) view() *envView {
	if v := e.cur.Load(); v != nil {
		return v
	}
	return &envView{refreshBefore: defaultRefreshBefore}
}

func (e *env) logger() *zap.Logger {
	if l := e.view().logger; l != nil {
		return l
	}
	return zap.NewNop()
}

func (e *env) storage() certmagic.Storage   { return e.view().storage }
func (e *env) refreshBefore() time.Duration { return e.view().refreshBefore }
func (e *env) consentPaths() *consentPaths  { return e.view().consent }

// storageSwitches counts the times the storage changed since the entry
// first had one (a reload with another storage; a failed one, cleaned up,
// switches back and counts again).
func (e *env) storageSwitches() uint64 { return e.switches.Load() }

// storageName tells storages apart: a new configuration makes a new
// storage value even when it names the same place, so one that can say
// where it is (file_system: its path) is known by that.
func storageName(s certmagic.Storage) string {
	if str, ok := s.(fmt.Stringer); ok {
		return fmt.Sprintf("%T %s", s, str.String())
	}
	return fmt.Sprintf("%T %p", s, s)
}

// shortID names an entry in logs, metrics and the admin API: 12 hex digits
// of a hash of its whole pool key, so that entries that differ only in a
// suffix ("cc:<hash>" with the storage, "cc:<hash>:memory" without) have
// ids of their own (a duplicate would give the expiry gauge two series
// with one set of labels, which fails the whole /metrics scrape).
func shortID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:6])
}

// sourceEntry is the pool entry of a client-credentials credential set: a
// token source and the endpoint its fetcher uses, both owned here.
type sourceEntry struct {
	env   env
	clock clock
	ep    *endpoint
	src   *tokenSource
}

// newSourceEntry makes the entry of a credential set, whose token is kept
// in the storage too when shared (token_store storage).
func newSourceEntry(cs *credentialSet, key string, shared bool) (*sourceEntry, error) {
	e := &sourceEntry{}
	e.ep = newEndpoint(cs, &e.clock)
	cs.tlsCert.LogTo(e.env.logger) // a client certificate's reloads are logged
	var f fetcher = ccFetcher{ep: e.ep, dpop: newDPoPKeys(cs, &e.env)}
	if shared {
		sf, err := newSharedFetcher(e.ep, &e.env, cs)
		if err != nil {
			return nil, err
		}
		f = sf
	}
	e.src = newTokenSource(f, &e.env, &e.clock, cs.Provider, shortID(key))
	return e, nil
}

func (s *sourceEntry) uses() *env { return &s.env }

// Destruct implements caddy.Destructor: no configuration uses the entry.
func (s *sourceEntry) Destruct() error {
	s.src.stop()
	s.ep.Close()
	return nil
}

// ccFetcher fetches with the client_credentials grant: every fetch is a new
// token request.
type ccFetcher struct {
	ep   *endpoint
	dpop *dpopKeys // nil without dpop
}

func (f ccFetcher) fetch(ctx context.Context, _ fetchRequest) (*token, error) {
	if f.dpop == nil {
		return fetched(f.ep.ClientCredentials(ctx))
	}
	key, err := f.dpop.ownKey("token_store memory")
	if err != nil {
		return nil, &TokenError{Provider: f.ep.cfg.Provider, Code: oauthclient.CodeLocalConfigError, Description: "dpop: " + err.Error()}
	}
	return f.dpop.fetch(ctx, key, f.ep.ClientCredentials)
}
