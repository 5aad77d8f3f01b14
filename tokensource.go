package oauthbearer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// sources holds one token source per distinct credential set. Handlers
// take a reference in Provision and drop it in Cleanup, so a source (and its
// cached token) lives across routes, sites and config reloads for as long
// as any configuration uses it.
var sources = caddy.NewUsagePool()

// timeNow is the clock of new token sources; tests replace it.
var timeNow = time.Now

// Retry schedule after a failed token request: exponential backoff with
// full jitter between minBackoff and maxBackoff; errors a retry cannot fix
// wait maxBackoff; a provider's Retry-After is honoured up to
// maxRetryAfter.
const (
	minBackoff    = time.Second
	maxBackoff    = 5 * time.Minute
	maxRetryAfter = time.Hour
	// A token younger than this is not dropped on an upstream 401: a
	// fresh token that is refused points at the configuration, not at
	// the token, and re-fetching would only hammer the provider.
	minAgeToInvalidate = 30 * time.Second
	// How often a source whose grant needs consent looks at the storage.
	consentRecheck = 2 * time.Second
)

// sourceConfig is everything that decides which token a source fetches
// and how. Two handlers with equal sourceConfigs share one source.
type sourceConfig struct {
	Provider        string            `json:"provider"`
	TokenURL        string            `json:"token_url"`
	ClientID        string            `json:"client_id"`
	clientSecret    string            // resolved in Provision; hashed into the key, never logged
	Scope           string            `json:"scope,omitempty"`
	Audience        string            `json:"audience,omitempty"`
	Resources       []string          `json:"resources,omitempty"`
	Params          map[string]string `json:"params,omitempty"`
	Format          string            `json:"format"`
	PreferredFormat string            `json:"preferred_format,omitempty"`
	ClientAuth      string            `json:"client_auth"`
	RefreshBefore   time.Duration     `json:"refresh_before"`
	DefaultLifetime time.Duration     `json:"default_lifetime"`
	Timeout         time.Duration     `json:"timeout"`
	CAFile          string            `json:"ca_file,omitempty"`
	Grant           string            `json:"grant,omitempty"` // empty: client_credentials
	RefreshURL      string            `json:"refresh_url,omitempty"`
	RevokeURL       string            `json:"revoke_url,omitempty"`
	RefreshBearer   bool              `json:"refresh_bearer,omitempty"`
	caPEM           []byte            // CAFile's contents, read in Provision; hashed into the key
}

// key identifies the credential set in the pool. The secret is part of it
// (a changed secret means a new source) but only through a hash.
func (c sourceConfig) key() string {
	b, _ := json.Marshal(c) // only strings, slices, maps and durations: cannot fail
	h := sha256.New()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(c.clientSecret))
	h.Write([]byte{0})
	h.Write(c.caPEM)
	return "oauth_bearer:" + hex.EncodeToString(h.Sum(nil))
}

// redact removes the client secret from text that came from elsewhere
// (a provider's error description, a transport error) before it is logged.
func (c sourceConfig) redact(s string) string {
	if len(c.clientSecret) >= 4 {
		// As sent, and as a form or a JSON body would echo it back.
		for _, v := range []string{c.clientSecret, url.QueryEscape(c.clientSecret), jsonEscape(c.clientSecret)} {
			s = strings.ReplaceAll(s, v, "[REDACTED]")
		}
	}
	return truncate(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s), 300)
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// token is one access token and its schedule. It is immutable once stored.
type token struct {
	value        string
	scope        string
	refreshToken string
	lifetimeFrom string    // expires_in, jwt_exp or default_lifetime
	obtained     time.Time // when the request that got it was sent
	refreshAt    time.Time // from here on, a replacement is fetched
	expiry       time.Time // from here on, the token is never injected
	// realClock: refreshAt and expiry come from the real clock, so the
	// hot path may compare them with the monotonic clock alone.
	realClock bool
}

// setLifetime schedules the token: replaced refreshBefore ahead of expiry
// (half-way through its life when it lives less than twice that), plus a
// random jitter of up to a tenth of refreshBefore so that a fleet of
// proxies does not refresh in lockstep.
func (t *token) setLifetime(start time.Time, lifetime, refreshBefore time.Duration) {
	if lifetime < 2*refreshBefore {
		refreshBefore = lifetime / 2
	}
	if j := refreshBefore / 10; j > 0 {
		refreshBefore += rand.N(j)
	}
	t.expiry = start.Add(lifetime)
	t.refreshAt = t.expiry.Add(-refreshBefore)
}

// tokenSource caches the token of one credential set. Reads are one atomic
// load; fetches go through a singleflight group so that concurrent misses
// cause one token request, and failures set a backoff before the next.
type tokenSource struct {
	endpoint *endpoint
	// fetchToken gets a new token: the client_credentials request, or for
	// a stored grant its refresh (grant.go).
	fetchToken func(ctx context.Context, now func() time.Time) (*token, error)
	provider   string
	id         string // short hash of the key, for metrics and logs
	now        func() time.Time

	cur        atomic.Pointer[token]
	fetches    singleflight.Group
	refreshing atomic.Bool

	// Failure state: the next attempt is not made before nextAttempt
	// (unix nanoseconds); lastErr is what callers get meanwhile.
	nextAttempt atomic.Int64
	mu          sync.Mutex
	failures    int
	lastErr     *TokenError

	// ctx bounds fetches; cancelled when the last configuration using
	// the source is cleaned up.
	ctx    context.Context
	cancel context.CancelFunc
}

func newTokenSource(cfg sourceConfig) *tokenSource {
	return newTokenSourceWith(cfg, newEndpoint(cfg))
}

// newTokenSourceWith makes a source that uses an existing endpoint (the
// accounts of a grant share one).
func newTokenSourceWith(cfg sourceConfig, ep *endpoint) *tokenSource {
	initMetrics()
	ctx, cancel := context.WithCancel(context.Background())
	return &tokenSource{
		endpoint:   ep,
		fetchToken: ep.fetch,
		provider:   cfg.Provider,
		id:         strings.TrimPrefix(cfg.key(), "oauth_bearer:")[:12],
		now:        timeNow,
		ctx:        ctx,
		cancel:     cancel,
	}
}

// Destruct implements caddy.Destructor: it runs when no configuration uses
// the source any more.
func (s *tokenSource) Destruct() error {
	s.cancel()
	s.endpoint.client.CloseIdleConnections()
	return nil
}

// Token returns a token that is valid now. A cached token is returned at
// once; when it is due for refresh, one background fetch replaces it (never
// while backing off). With no valid token the caller waits for the one
// shared fetch, or until ctx ends (a client that gave up stops waiting; the
// fetch goes on for others); while backing off it gets the last error at
// once, with the time left in RetryAfter.
func (s *tokenSource) Token(ctx context.Context, log *zap.Logger) (*token, error) {
	if t := s.cur.Load(); t != nil {
		if left := s.until(t, t.expiry); left > 0 {
			if left <= t.expiry.Sub(t.refreshAt) {
				s.refreshAhead(log)
			}
			return t, nil
		}
	}
	now := s.now()
	if wait := s.nextAttempt.Load() - now.UnixNano(); wait > 0 {
		return nil, s.backingOff(time.Duration(wait))
	}
	ch := s.fetches.DoChan("token", func() (any, error) { return s.fetch(log) })
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

// until returns how long until d, a deadline of t. This is the only clock
// read of a request that finds a valid token: for a token timed by the real
// clock it is time.Until, which reads the monotonic clock alone, half the
// cost of time.Now (wall and monotonic clocks); expiry and refreshAt carry
// a monotonic reading, so the result is the same.
func (s *tokenSource) until(t *token, d time.Time) time.Duration {
	if t.realClock {
		return time.Until(d)
	}
	return d.Sub(s.now())
}

// refreshAhead starts one background fetch of the next token, unless one
// is running or the source is backing off.
func (s *tokenSource) refreshAhead(log *zap.Logger) {
	if s.refreshing.Load() || s.now().UnixNano() < s.nextAttempt.Load() ||
		!s.refreshing.CompareAndSwap(false, true) {
		return
	}
	// The flag is cleared when the fetch ends, also when DoChan joined a
	// fetch that a waiting caller had started.
	ch := s.fetches.DoChan("token", func() (any, error) { return s.fetch(log) })
	go func() { <-ch; s.refreshing.Store(false) }()
}

// isTimeNow reports whether now is time.Now itself rather than a test's
// clock.
func isTimeNow(now func() time.Time) bool {
	return reflect.ValueOf(now).Pointer() == reflect.ValueOf(time.Now).Pointer()
}

// backingOff is the error of a caller that finds no valid token while the
// source waits before its next attempt.
func (s *tokenSource) backingOff(wait time.Duration) *TokenError {
	s.mu.Lock()
	last := s.lastErr
	s.mu.Unlock()
	e := &TokenError{Provider: s.provider, Code: "backing_off", RetryAfter: wait, Backoff: true}
	if last != nil {
		e.Code, e.Status, e.Description = last.Code, last.Status, last.Description
	}
	return e
}

// reject handles an upstream's refusal of t: t is dropped from the cache
// if it is still the cached token and old enough (see minAgeToInvalidate);
// a newer token is never dropped because of an answer to an older one. It
// reports whether another attempt would use another token.
func (s *tokenSource) reject(t *token) bool {
	if s.cur.Load() != t {
		return true // already replaced
	}
	if s.now().Sub(t.obtained) < minAgeToInvalidate {
		return false
	}
	s.cur.CompareAndSwap(t, nil)
	return true
}

// fetch requests a new token and caches it. Only one runs at a time.
func (s *tokenSource) fetch(log *zap.Logger) (*token, error) {
	// A caller that saw an expired token may arrive just after another
	// fetch stored a fresh one.
	if t := s.cur.Load(); t != nil && s.now().Before(t.refreshAt) {
		return t, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.endpoint.cfg.Timeout)
	defer cancel()
	start := time.Now()
	t, err := s.fetchToken(ctx, s.now)
	took := time.Since(start)
	metrics.tokenDuration.WithLabelValues(s.provider).Observe(took.Seconds())
	metrics.tokenRequests.WithLabelValues(s.provider, resultClass(err)).Inc()
	if err != nil {
		return nil, s.failed(err, took, log)
	}
	t.realClock = isTimeNow(s.now) // not yet shared: t is new
	s.mu.Lock()
	s.failures, s.lastErr = 0, nil
	s.mu.Unlock()
	s.nextAttempt.Store(0)
	s.cur.Store(t)
	log.Debug("token obtained",
		zap.String("provider", s.provider),
		zap.String("source", s.id),
		zap.Duration("duration", took),
		zap.Duration("expires_in", t.expiry.Sub(t.obtained)),
		zap.String("lifetime_from", t.lifetimeFrom),
		zap.String("scope", t.scope))
	return t, nil
}

// failed records a failed fetch: it sets the backoff before the next
// attempt and logs the failure, at error level when no valid token is left
// or the error is one a retry cannot fix.
func (s *tokenSource) failed(err error, took time.Duration, log *zap.Logger) *TokenError {
	var te *TokenError
	if !errors.As(err, &te) {
		te = &TokenError{Provider: s.provider, Code: "error", Description: s.endpoint.cfg.redact(err.Error())}
	}
	s.mu.Lock()
	s.failures++
	wait := backoff(s.failures)
	switch {
	case te.permanent():
		wait = maxBackoff
	case te.Code == codeConsentRequired:
		// Nothing to ask the provider: look at the storage again soon, in
		// case consent was given on another instance.
		wait = consentRecheck
	}
	if te.RetryAfter > wait {
		wait = min(te.RetryAfter, maxRetryAfter)
	}
	s.lastErr = te
	failures := s.failures
	s.mu.Unlock()
	s.nextAttempt.Store(s.now().Add(wait).UnixNano())

	fields := []zap.Field{
		zap.String("provider", s.provider),
		zap.String("source", s.id),
		zap.String("error", te.Code),
		zap.Int("status", te.Status),
		zap.String("error_description", te.Description),
		zap.Duration("duration", took),
		zap.Int("consecutive_failures", failures),
		zap.Duration("next_attempt_in", wait),
	}
	if te.RetryAfter > 0 {
		fields = append(fields, zap.Duration("retry_after", te.RetryAfter))
	}
	cur := s.cur.Load()
	switch {
	case te.Code == codeConsentRequired && failures > 1:
		log.Debug("consent still required", fields...)
	case te.Code == codeConsentRequired:
		log.Error("consent required: the grant is missing or was refused by the provider", fields...)
	case te.permanent():
		log.Error("token request refused; retrying will not help until the configuration or the provider changes", fields...)
	case cur != nil && s.now().Before(cur.expiry):
		log.Warn("token refresh failed; the cached token is still valid", append(fields,
			zap.Time("cached_token_expires", cur.expiry))...)
	default:
		log.Error("token request failed", fields...)
	}
	return te
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

// Interface guards
var _ caddy.Destructor = (*tokenSource)(nil)

// reset replaces the cached token (nil: none) and clears the failure
// state: a grant was just connected or disconnected.
func (s *tokenSource) reset(t *token) {
	s.mu.Lock()
	s.failures, s.lastErr = 0, nil
	s.mu.Unlock()
	s.nextAttempt.Store(0)
	s.cur.Store(t)
}
