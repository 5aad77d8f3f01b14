package oauthbearer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
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
}

// key identifies the credential set in the pool. The secret is part of it
// (a changed secret means a new source) but only through a hash.
func (c sourceConfig) key() string {
	b, _ := json.Marshal(c) // only strings, slices, maps and durations: cannot fail
	h := sha256.New()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(c.clientSecret))
	return "oauth_bearer:" + hex.EncodeToString(h.Sum(nil))
}

// redact removes the client secret from text that came from elsewhere
// (a provider's error description, a transport error) before it is logged.
func (c sourceConfig) redact(s string) string {
	if c.clientSecret != "" && len(c.clientSecret) >= 4 {
		s = strings.ReplaceAll(s, c.clientSecret, "[REDACTED]")
	}
	return truncate(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s), 300)
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
}

// setLifetime schedules the token: replaced refreshBefore ahead of expiry,
// or half-way through its life when it lives less than twice that.
func (t *token) setLifetime(start time.Time, lifetime, refreshBefore time.Duration) {
	if lifetime < 2*refreshBefore {
		refreshBefore = lifetime / 2
	}
	t.expiry = start.Add(lifetime)
	t.refreshAt = t.expiry.Add(-refreshBefore)
}

// tokenSource caches the token of one credential set. Reads are one atomic
// load; fetches go through a singleflight group so that concurrent misses
// cause one token request.
type tokenSource struct {
	endpoint *endpoint
	provider string
	now      func() time.Time

	cur        atomic.Pointer[token]
	fetches    singleflight.Group
	refreshing atomic.Bool

	// ctx bounds background fetches; cancelled when the last
	// configuration using the source is cleaned up.
	ctx    context.Context
	cancel context.CancelFunc
}

func newTokenSource(cfg sourceConfig) *tokenSource {
	ctx, cancel := context.WithCancel(context.Background())
	return &tokenSource{
		endpoint: newEndpoint(cfg),
		provider: cfg.Provider,
		now:      time.Now,
		ctx:      ctx,
		cancel:   cancel,
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
// once; when it is due for refresh, one background fetch replaces it. With
// no valid token the caller waits for the one shared fetch, or until ctx
// ends (a client that gave up stops waiting; the fetch goes on for others).
func (s *tokenSource) Token(ctx context.Context, log *zap.Logger) (*token, error) {
	now := s.now()
	if t := s.cur.Load(); t != nil && now.Before(t.expiry) {
		if !now.Before(t.refreshAt) && s.refreshing.CompareAndSwap(false, true) {
			s.fetches.DoChan("token", func() (any, error) {
				defer s.refreshing.Store(false)
				return s.fetch(log)
			})
		}
		return t, nil
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
	t, err := s.endpoint.fetch(ctx, s.now)
	took := time.Since(start)
	if err != nil {
		fields := []zap.Field{zap.String("provider", s.provider), zap.Duration("duration", took)}
		if te, ok := err.(*TokenError); ok {
			fields = append(fields, zap.String("error", te.Code), zap.Int("status", te.Status),
				zap.String("error_description", te.Description))
			if te.RetryAfter > 0 {
				fields = append(fields, zap.Duration("retry_after", te.RetryAfter))
			}
		} else {
			fields = append(fields, zap.Error(err))
		}
		if cur := s.cur.Load(); cur != nil && s.now().Before(cur.expiry) {
			log.Warn("token refresh failed; the cached token is still valid", append(fields,
				zap.Time("cached_token_expires", cur.expiry))...)
		} else {
			log.Error("token request failed", fields...)
		}
		return nil, err
	}
	s.cur.Store(t)
	log.Debug("token obtained",
		zap.String("provider", s.provider),
		zap.Duration("duration", took),
		zap.Duration("expires_in", t.expiry.Sub(t.obtained)),
		zap.String("lifetime_from", t.lifetimeFrom),
		zap.String("scope", t.scope))
	return t, nil
}

// Interface guards
var _ caddy.Destructor = (*tokenSource)(nil)
