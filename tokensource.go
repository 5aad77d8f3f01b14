package oauthbearer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// tokensource.go: the cache of one token. A tokenSource keeps the current
// token behind an atomic pointer (a request that finds a valid token does
// one atomic load and one clock read), replaces it ahead of expiry with one
// background fetch, makes concurrent misses wait for one fetch
// (singleflight), and backs off after failures. Where tokens come from is
// not its business: it asks a fetcher.

// A fetcher obtains tokens for a token source: the client_credentials
// request (pool.go's ccFetcher, through endpoint.go), the same shared
// through the storage (sharedtoken.go), or an account's stored grant
// (grant.go).
type fetcher interface {
	// fetch returns a token to replace r.old. ctx ends when the source is
	// stopped; a fetcher bounds its own requests. The token returned is new
	// (not shared with another source): the source schedules it.
	fetch(ctx context.Context, r fetchRequest) (*token, error)
}

// A newerFinder is a fetcher that can tell, without asking the provider,
// whether a newer token than old is stored (a grant: another instance, or
// this one's background refresh, rotated it). nil, nil: none is.
type newerFinder interface {
	newer(ctx context.Context, old *token) (*token, error)
}

// fetchRequest says what a fetch is for.
type fetchRequest struct {
	old     *token // the source's current token; nil when it has none
	refused bool   // the upstream refused old: never return it again
	force   bool   // an operator asked: get a new token from the provider, whatever is stored
}

// Retry schedule after a failed fetch: exponential backoff with full
// jitter between minBackoff and maxBackoff; errors a retry cannot fix wait
// maxBackoff; a provider's Retry-After is honoured up to maxRetryAfter.
const (
	minBackoff    = time.Second
	maxBackoff    = 5 * time.Minute
	maxRetryAfter = time.Hour
	// A token younger than this is not dropped on an upstream 401: a fresh
	// token that is refused points at the configuration, not at the
	// token, and fetching again would only hammer the provider. The age
	// doubles, up to maxAgeToInvalidate, with each token in a row that the
	// upstream refused too (see tokenSource.reject).
	minAgeToInvalidate = 30 * time.Second
	maxAgeToInvalidate = 30 * time.Minute
	// How soon a source whose grant needs consent looks at the storage
	// again (consent may be given on another instance).
	consentRecheck = 2 * time.Second
)

// token is one access token and its schedule. It is immutable once a
// source has stored it.
type token struct {
	value        string
	scope        string
	refreshToken string    // grants: what the provider returned with it
	lifetimeFrom string    // expires_in, jwt_exp, default_lifetime or stored
	origin       string    // fetched, or stored (read from the storage)
	obtained     time.Time // when the request that got it was sent
	expiry       time.Time // from here on, the token is never injected
	// final: nothing can replace this token before it expires (a grant
	// without a refresh token); it is not refreshed ahead.
	final bool
	// afterRefusal: fetched to replace a token the upstream refused.
	afterRefusal bool
	// accepted: with afterRefusal, the upstream answered a request with
	// this token without refusing it (the only field set after storing).
	accepted atomic.Bool

	// Set by the source that stores the token (schedule).
	refreshAt time.Time     // from here on, a replacement is fetched
	window    time.Duration // expiry - refreshAt
	bearer    string        // "Bearer <value>", the header value most handlers send

	// DPoP (dpop.go): the key the token is bound to (nil: a Bearer
	// token), and, set by schedule, the proofs' ath and the
	// Authorization value "DPoP <value>".
	dpopKey  *oauthclient.DPoPKey
	ath      string
	dpopAuth string
}

// clock is the time as a token source, an endpoint and a grant see it:
// the real time unless a test sets a fake one. The owner of a source (a
// pool entry, a grant) has one and shares it with what it makes.
type clock struct{ fake atomic.Pointer[clockFunc] }

type clockFunc func() time.Time

func (c *clock) now() time.Time {
	if f := c.fake.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

// set replaces the clock; tests only.
func (c *clock) set(f clockFunc) { c.fake.Store(&f) }

// tokenSource caches the token of one credential set, or of one account of
// a grant. Its owner (a pool entry, or a grant) creates it, gives it a
// fetcher and an env, and stops it.
type tokenSource struct {
	fetcher  fetcher
	env      *env   // logger and refresh_before of the configurations using it
	clock    *clock // the owner's
	provider string // for logs and metrics
	id       string // short id of the credential set, for logs and metrics

	cur        atomic.Pointer[token]
	refused    atomic.Pointer[token] // dropped after an upstream 401
	fetches    singleflight.Group
	refreshing atomic.Bool
	used       atomic.Bool // a request used the source since the last sweep (grant.go)

	// newest is the last look of takeNewer that found nothing newer.
	newest atomic.Pointer[newestCheck]

	// Failure state: no attempt before nextAttempt (unix nanoseconds);
	// lastErr is what callers get meanwhile: a *TokenError, *ConsentError
	// or *StorageError.
	nextAttempt atomic.Int64
	mu          sync.Mutex
	failures    int
	lastErr     error
	lastErrAt   time.Time
	downSince   time.Time   // the first failure since the last success
	gotFirst    atomic.Bool // a token was ever obtained

	// Upstream refusals (reject), under mu: the last token refused, and
	// how many tokens in a row were refused, each fetched to replace a
	// refused one and refused before the upstream accepted it.
	lastRefused *token
	refusals    int

	ctx    context.Context // ends when the source is stopped
	cancel context.CancelFunc
}

func newTokenSource(f fetcher, e *env, c *clock, provider, id string) *tokenSource {
	initMetrics()
	ctx, cancel := context.WithCancel(context.Background())
	return &tokenSource{fetcher: f, env: e, clock: c, provider: provider, id: id, ctx: ctx, cancel: cancel}
}

// stop ends the source's background fetches. What the fetcher owns is its
// owner's to free.
func (s *tokenSource) stop() { s.cancel() }

func (s *tokenSource) now() time.Time { return s.clock.now() }

// until returns how long until d. This is the only clock read of a request
// that finds a valid token: with the real clock it is time.Until, which
// reads the monotonic clock alone (half the cost of time.Now) because the
// token's times carry a monotonic reading (schedule).
func (s *tokenSource) until(d time.Time) time.Duration {
	if f := s.clock.fake.Load(); f != nil {
		return d.Sub((*f)())
	}
	return time.Until(d)
}

// Token returns a token that is valid now. A cached token is returned at
// once; when it is due for refresh, one background fetch replaces it (never
// while backing off). With no valid token the caller waits for the one
// shared fetch, or until ctx ends (a client that gave up stops waiting; the
// fetch goes on for others); while backing off it gets the last error at
// once, with the time left in RetryAfter.
func (s *tokenSource) Token(ctx context.Context) (*token, error) {
	if !s.used.Load() {
		s.used.Store(true)
	}
	if t := s.cur.Load(); t != nil {
		if left := s.until(t.expiry); left > 0 {
			if left <= t.window {
				s.refreshAhead()
			}
			return t, nil
		}
	}
	if wait := s.nextAttempt.Load() - s.now().UnixNano(); wait > 0 {
		return nil, s.backingOff(time.Duration(wait))
	}
	return s.wait(ctx, s.fetches.DoChan("token", func() (any, error) { return s.fetch(false) }))
}

// wait waits for a fetch, or until ctx ends.
func (s *tokenSource) wait(ctx context.Context, ch <-chan singleflight.Result) (*token, error) {
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// forceRefresh gets a new token from the provider now, skipping the
// backoff and the schedule (an operator fixed something at the provider),
// and waits for the outcome.
func (s *tokenSource) forceRefresh(ctx context.Context) (*token, error) {
	s.nextAttempt.Store(0)
	return s.wait(ctx, s.fetches.DoChan("force", func() (any, error) { return s.fetch(true) }))
}

// flush drops the cached token: the next request fetches.
func (s *tokenSource) flush() { s.store(nil) }

// refreshAhead starts one background fetch of the next token, unless one
// is running or the source is backing off.
func (s *tokenSource) refreshAhead() {
	if s.refreshing.Load() || s.now().UnixNano() < s.nextAttempt.Load() ||
		!s.refreshing.CompareAndSwap(false, true) {
		return
	}
	// The flag is cleared when the fetch ends, also when DoChan joined a
	// fetch that a waiting caller had started.
	ch := s.fetches.DoChan("token", func() (any, error) { return s.fetch(false) })
	go func() { <-ch; s.refreshing.Store(false) }()
}

// reject handles an upstream's refusal of t: t is dropped from the cache
// if it is still the cached token and old enough, and the next fetch is
// told that it was refused. A newer token is never dropped because of an
// answer to an older one. It reports whether another attempt would use
// another token.
//
// Old enough: minAgeToInvalidate, doubled for each token in a row that was
// fetched to replace a refused one and refused in turn before the upstream
// accepted any request with it (see accepted), up to maxAgeToInvalidate.
// An upstream that refuses every token (a wrong audience, an outage
// answering 401) then costs a handful of token requests, not one each
// 30 s; a token that worked and was then revoked is replaced as soon. The
// count starts again when a token lives to its normal refresh without
// being refused, or an operator forces a refresh (fetch).
func (s *tokenSource) reject(t *token) bool {
	if s.cur.Load() != t {
		return true // already replaced
	}
	s.mu.Lock()
	if s.lastRefused != t {
		s.lastRefused = t
		if t.afterRefusal && !t.accepted.Load() {
			s.refusals++
		}
	}
	minAge := invalidateAfter(s.refusals)
	s.mu.Unlock()
	if s.now().Sub(t.obtained) < minAge {
		return false
	}
	s.refused.Store(t)
	s.cur.CompareAndSwap(t, nil)
	return true
}

// accepted records that the upstream answered a request with t without
// refusing the token. Only a token fetched to replace a refused one needs
// it (reject); for the others it costs one field read.
func accepted(t *token) {
	if t.afterRefusal && !t.accepted.Load() {
		t.accepted.Store(true)
	}
}

// invalidateAfter is the age from which a refused token is dropped, after
// n tokens in a row were refused although each replaced a refused one.
func invalidateAfter(n int) time.Duration {
	if n >= 16 {
		return maxAgeToInvalidate
	}
	return min(minAgeToInvalidate<<n, maxAgeToInvalidate)
}

// newerRecheck: after takeNewer found nothing newer than a token, refusals
// of the same token are passed to reject without looking again for this
// long (an upstream that refuses every token costs the storage one look a
// second, not one per request).
const newerRecheck = time.Second

// newestCheck is a takeNewer that found nothing newer than t, at when.
type newestCheck struct {
	t  *token
	at time.Time
}

// takeNewer handles an upstream's refusal of t before reject does, for a
// source whose fetcher can look for a newer token without asking the
// provider (a grant): when the stored token is newer than t (another
// instance, or this one's background refresh, rotated the grant, and the
// provider may have revoked t), it becomes the current token and the
// caller replays at once, whatever t's age; it costs no redemption.
// Concurrent refusals wait for one look; a refusal of the newest token is
// left to reject and its age rule.
func (s *tokenSource) takeNewer(ctx context.Context, t *token) bool {
	nf, ok := s.fetcher.(newerFinder)
	if !ok {
		return false
	}
	if c := s.newest.Load(); c != nil && c.t == t && time.Since(c.at) < newerRecheck {
		return false
	}
	if s.cur.Load() != t {
		return true // already replaced
	}
	// One look per token refused: a refusal of another token (the source
	// took a newer one meanwhile) must not join a look past an older one.
	ch := s.fetches.DoChan(fmt.Sprintf("newer %p", t), func() (any, error) {
		nt, err := nf.newer(s.ctx, t)
		if err != nil || nt == nil {
			s.newest.Store(&newestCheck{t: t, at: time.Now()})
			return nil, err
		}
		s.schedule(nt)
		if s.cur.CompareAndSwap(t, nt) {
			s.refused.Store(nil)
		}
		return nt, nil
	})
	select {
	case <-ch:
		return s.cur.Load() != t
	case <-ctx.Done():
		return false
	}
}

// fetch asks the fetcher for a new token and caches it. Only one runs at a
// time (singleflight), besides one an operator forces.
func (s *tokenSource) fetch(force bool) (*token, error) {
	r := fetchRequest{old: s.cur.Load(), force: force}
	if ref := s.refused.Load(); ref != nil && r.old == nil {
		r.old, r.refused = ref, true
	}
	// A caller that saw an expired token may arrive just after another
	// fetch stored a fresh one.
	if !force && !r.refused && r.old != nil && s.now().Before(r.old.refreshAt) {
		return r.old, nil
	}
	start := time.Now()
	t, err := s.fetcher.fetch(s.ctx, r)
	took := time.Since(start)
	if err != nil {
		return nil, s.failed(err, took)
	}
	s.mu.Lock()
	downSince := s.downSince
	// A token replacing one the upstream refused carries the count of
	// refusals on (reject); any other, or one an operator asked for,
	// starts it again.
	t.afterRefusal = !force && r.old != nil && r.old == s.lastRefused
	if !t.afterRefusal {
		s.refusals = 0
	}
	s.mu.Unlock()
	s.store(t)
	log := s.env.logger()
	fields := []zap.Field{zap.String("provider", s.provider), zap.String("source", s.id), zap.String("origin", t.origin),
		zap.Duration("expires_in", t.expiry.Sub(s.now())), zap.String("lifetime_from", t.lifetimeFrom)}
	switch {
	case !s.gotFirst.Swap(true):
		log.Info("first token obtained", fields...)
	case !downSince.IsZero():
		log.Info("token source recovered", append(fields, zap.Duration("down_for", s.now().Sub(downSince)))...)
	}
	log.Debug("token obtained",
		zap.String("provider", s.provider),
		zap.String("source", s.id),
		zap.String("origin", t.origin),
		zap.Duration("duration", took),
		zap.Duration("expires_in", t.expiry.Sub(s.now())),
		zap.String("lifetime_from", t.lifetimeFrom),
		zap.String("scope", t.scope))
	return t, nil
}

// store schedules a new token, makes it the current one and clears the
// failure state. nil clears the cache.
func (s *tokenSource) store(t *token) {
	if t != nil {
		s.schedule(t)
	}
	s.mu.Lock()
	s.failures, s.lastErr, s.downSince = 0, nil, time.Time{}
	s.mu.Unlock()
	s.nextAttempt.Store(0)
	s.refused.Store(nil)
	s.cur.Store(t)
}

// schedule sets when t is replaced: refresh_before ahead of expiry (half-way
// through its life when it lives less than twice that), plus a random
// jitter of up to a tenth of refresh_before so that a fleet of proxies does
// not refresh in lockstep. With the real clock, the times are rebased on a
// monotonic reading, so that the request path can compare them cheaply.
func (s *tokenSource) schedule(t *token) {
	t.bearer = "Bearer " + t.value
	if t.dpopKey != nil {
		t.ath, t.dpopAuth = oauthclient.AccessTokenHash(t.value), "DPoP "+t.value
	}
	if s.clock.fake.Load() == nil {
		now := time.Now()
		t.expiry = now.Add(t.expiry.Sub(now))
	}
	if t.final {
		t.refreshAt, t.window = t.expiry, 0
		return
	}
	before := refreshWindow(s.env.refreshBefore(), t.expiry.Sub(t.obtained))
	if j := before / 10; j > 0 {
		before += rand.N(j)
	}
	t.refreshAt, t.window = t.expiry.Add(-before), before
}

// refreshWindow is how long before its expiry a token of lifetime life is
// replaced, with refresh_before before: before, or half its life when it
// lives less than twice that. A source adds a jitter of up to a tenth of
// it (schedule).
func refreshWindow(before, life time.Duration) time.Duration {
	if life < 2*before {
		return life / 2
	}
	return before
}

// backingOff is the error of a caller that finds no valid token while the
// source waits before its next attempt: the last error, with the wait (an
// account that needs consent gets its consent error as it was).
func (s *tokenSource) backingOff(wait time.Duration) error {
	s.mu.Lock()
	last := s.lastErr
	s.mu.Unlock()
	var ce *ConsentError
	if errors.As(last, &ce) {
		return ce
	}
	e := &TokenError{Provider: s.provider, Code: "backing_off", RetryAfter: wait, Backoff: true}
	if last != nil {
		e.Code, e.Status, e.Description = errorFacts(last)
	}
	return e
}

// errorFacts is what logs and the admin API show of a failed fetch: a code
// (the provider's OAuth error code, or a local one), the HTTP status, a
// description.
func errorFacts(err error) (code string, status int, description string) {
	var te *TokenError
	var ce *ConsentError
	var se *StorageError
	switch {
	case errors.As(err, &te):
		return te.Code, te.Status, te.Description
	case errors.As(err, &ce):
		return codeConsentRequired, 0, ce.Reason
	case errors.As(err, &se):
		return "storage_error", 0, se.Doing + ": " + truncate(se.Err.Error(), 200)
	}
	return "error", 0, truncate(err.Error(), 300)
}

// failed records a failed fetch: it sets the backoff before the next
// attempt and logs the failure, at error level when no valid token is left
// or the error is one a retry cannot fix.
func (s *tokenSource) failed(err error, took time.Duration) error {
	var te *TokenError
	var ce *ConsentError
	errors.As(err, &te)
	errors.As(err, &ce)
	code, status, desc := errorFacts(err)
	s.mu.Lock()
	s.failures++
	wait := backoff(s.failures)
	switch {
	case te != nil && te.Permanent():
		wait = maxBackoff
	case ce != nil:
		wait = consentRecheck
	}
	if te != nil && te.RetryAfter > wait {
		wait = min(te.RetryAfter, maxRetryAfter)
	}
	s.lastErr, s.lastErrAt = err, s.now()
	if s.downSince.IsZero() {
		s.downSince = s.lastErrAt
	}
	failures := s.failures
	s.mu.Unlock()
	s.nextAttempt.Store(s.now().Add(wait).UnixNano())

	fields := []zap.Field{
		zap.String("provider", s.provider),
		zap.String("source", s.id),
		zap.String("error", code),
		zap.Int("status", status),
		zap.String("error_description", desc),
		zap.Duration("duration", took),
		zap.Int("consecutive_failures", failures),
		zap.Duration("next_attempt_in", wait),
	}
	if te != nil && te.RetryAfter > 0 {
		fields = append(fields, zap.Duration("retry_after", te.RetryAfter))
	}
	log := s.env.logger()
	cur := s.cur.Load()
	switch {
	case ce != nil && (failures > 1 || ce.Absent):
		// An account with no grant is logged once by the grant.
		log.Debug("consent still required", fields...)
	case ce != nil:
		log.Error("consent required: the grant is missing or was refused by the provider", fields...)
	case te != nil && te.Permanent():
		log.Error("token request refused; retrying will not help until the configuration or the provider changes", fields...)
	case cur != nil && s.now().Before(cur.expiry):
		log.Warn("token refresh failed; the cached token is still valid", append(fields,
			zap.Time("cached_token_expires", cur.expiry))...)
	default:
		log.Error("token request failed", fields...)
	}
	var se *StorageError
	if te == nil && ce == nil && !errors.As(err, &se) {
		return &TokenError{Provider: s.provider, Code: code, Description: desc}
	}
	return err
}

// backoff returns the wait after n consecutive failures: full jitter over
// an exponentially growing window, within [minBackoff, maxBackoff].
func backoff(n int) time.Duration {
	window := maxBackoff
	if n < 20 {
		window = min(maxBackoff, minBackoff<<(n-1))
	}
	return max(minBackoff, rand.N(window+1))
}
