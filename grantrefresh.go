package oauthbearer

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// grantrefresh.go: refreshing an account's grant. A refresh reads the
// stored grant; when it holds what is needed (another route or instance
// refreshed, or the token is not due), that is the answer, without a lock.
// Otherwise it takes the account's storage lock, reads again and only then
// redeems the refresh token, and stores the answer before using it
// (readLockRead, coordinate.go). In this process one refresh of an account
// runs at a time (the request path, the background schedule and a 401's
// look for a newer token queue at the account's gate), so that they never
// both wait on the storage's lock. An instance never redeems a grant whose
// stored access token is not due: every redemption of a rotating refresh
// token is a chance to trip the provider's reuse detection, and providers
// count them.

// grantRefresher does the refreshes of a grant. Its lock guards the gates
// of the accounts being refreshed.
type grantRefresher struct {
	g *grant

	mu    sync.Mutex
	gates map[string]*accountGate

	// seeded: the configured refresh token (grant refresh_token) is known
	// to have been applied to the default account.
	seeded atomic.Bool
}

// accountGate lets one refresh of an account in at a time.
type accountGate struct {
	ch    chan struct{}
	users int // holders and waiters
}

// enter waits until no other refresh of the account runs in this process
// (or ctx ends) and returns the function that lets the next one in.
func (f *grantRefresher) enter(ctx context.Context, account string) (func(), error) {
	f.mu.Lock()
	if f.gates == nil {
		f.gates = map[string]*accountGate{}
	}
	gt := f.gates[account]
	if gt == nil {
		gt = &accountGate{ch: make(chan struct{}, 1)}
		f.gates[account] = gt
	}
	gt.users++
	f.mu.Unlock()
	leave := func() {
		f.mu.Lock()
		if gt.users--; gt.users == 0 {
			delete(f.gates, account)
		}
		f.mu.Unlock()
	}
	select {
	case gt.ch <- struct{}{}:
		return func() { <-gt.ch; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}

// refresh returns a token for an account to replace r.old: the stored one
// when it is newer (another route or instance refreshed) or not due, else
// a new one from the refresh token.
func (f *grantRefresher) refresh(ctx context.Context, account string, r fetchRequest) (*token, error) {
	return f.run(ctx, account, func(rec *grantRecord) (*token, bool, error) { return f.decide(account, rec, r, false) })
}

// refreshIfDue is the background refresh: the stored token while it is
// not due, else a new one.
func (f *grantRefresher) refreshIfDue(ctx context.Context, account string) (*token, error) {
	return f.run(ctx, account, func(rec *grantRecord) (*token, bool, error) {
		return f.decide(account, rec, fetchRequest{}, true)
	})
}

func (f *grantRefresher) run(ctx context.Context, account string, settle func(*grantRecord) (*token, bool, error)) (*token, error) {
	g := f.g
	release, err := f.enter(ctx, account)
	if err != nil {
		return nil, err
	}
	defer release()
	tok, _, err := readLockRead(ctx, g.store, g.cfg.Provider, g.lockName(account), lockWait(g.cfg.Timeout),
		func(ctx context.Context) (*grantRecord, error) { return f.current(ctx, account) }, settle,
		func(ctx context.Context, rec *grantRecord) (*token, error) {
			// From here on the refresh token is sent: the answer is read
			// and stored whatever happens to the caller, the source or
			// the configuration.
			return f.redeem(context.WithoutCancel(ctx), rec)
		})
	if tok != nil && tok.origin == "stored" {
		g.schedule.sawToken(account, tok)
	}
	return tok, err
}

// newer returns the stored token when it is newer than old, which the
// upstream refused: another instance, or this one's background refresh,
// rotated the grant (and the provider may have revoked old). When the
// stored token is old itself, it waits for the account's lock, in case a
// redemption is under way elsewhere, and reads again. It never redeems:
// nil, nil when nothing newer is stored.
func (f *grantRefresher) newer(ctx context.Context, account string, old *token) (*token, error) {
	g := f.g
	release, err := f.enter(ctx, account)
	if err != nil {
		return nil, err
	}
	defer release()
	settle := func(rec *grantRecord) (*token, bool, error) {
		if rec == nil || rec.NeedsConsent {
			return nil, true, nil
		}
		t, err := g.recordToken(rec)
		if err != nil {
			return nil, true, err
		}
		if t != nil && t.value != old.value && g.now().Before(t.expiry) && !t.obtained.Before(old.obtained) {
			return t, true, nil
		}
		return nil, false, nil
	}
	nothing := func(context.Context, *grantRecord) (*token, error) { return nil, nil }
	tok, _, err := readLockRead(ctx, g.store, g.cfg.Provider, g.lockName(account), lockWait(g.cfg.Timeout),
		func(ctx context.Context) (*grantRecord, error) { return g.records.current(ctx, account) }, settle, nothing)
	return tok, err
}

// current returns the account's grant (grantRecords.current); for the
// default account of a refresh_token grant whose configured refresh token
// was never applied, a grant made from it.
func (f *grantRefresher) current(ctx context.Context, account string) (*grantRecord, error) {
	g := f.g
	rec, err := g.records.current(ctx, account)
	if err != nil {
		return nil, err
	}
	if account == defaultAccount && g.bootstrap != "" && !f.applied(ctx, rec) {
		rec = &grantRecord{Account: account, RefreshToken: g.bootstrap, BootstrapHash: g.bootstrapHash, ConnectedAt: g.now(), seed: true}
		// With dpop, the configured refresh token's first redemption binds
		// the grant to a key of its own (or dpop_key), kept with it.
		key, der, err := g.newDPoPKey()
		if err != nil {
			return nil, &TokenError{Provider: g.cfg.Provider, Code: oauthclient.CodeLocalConfigError, Description: "dpop: " + err.Error()}
		}
		if key != nil {
			rec.JKT, rec.DPoPKey = key.Thumbprint(), der
		}
	}
	return rec, nil
}

// grantSeeds lists the configured refresh tokens (their hashes) that ever
// seeded a grant's default account: a configured token seeds it once, and
// after that the stored grant wins, whatever became of it (rotations, a
// reconnect, a disconnect). Without this, instances configured with
// different tokens during a rolling deploy re-seed in turn, and a
// disconnect is undone by a token the provider did not rotate.
type grantSeeds struct {
	Hashes []string `json:"hashes"`
}

// maxSeeds bounds the list.
const maxSeeds = 50

func (g *grant) seedsKey() string { return "oauth_bearer/grants/" + g.id + "/_seeds.json" }

// applied reports whether the configured refresh token was applied to the
// default account already. When the storage cannot tell, it answers yes: a
// refresh token redeemed twice can end the grant.
func (f *grantRefresher) applied(ctx context.Context, rec *grantRecord) bool {
	g := f.g
	if f.seeded.Load() {
		return true
	}
	if rec != nil && rec.BootstrapHash == g.bootstrapHash {
		f.seeded.Store(true)
		return true
	}
	var seeds grantSeeds
	if _, err := g.store.load(ctx, g.seedsKey(), &seeds); err != nil && !errors.Is(err, errUndecryptable) {
		return true
	}
	if slices.Contains(seeds.Hashes, g.bootstrapHash) {
		f.seeded.Store(true)
		return true
	}
	return false
}

// noteSeeded records that the configured refresh token was applied.
func (f *grantRefresher) noteSeeded(ctx context.Context) {
	g := f.g
	f.seeded.Store(true)
	var seeds grantSeeds
	if _, err := g.store.load(ctx, g.seedsKey(), &seeds); err != nil && !errors.Is(err, errUndecryptable) {
		return // the grant's record says it too (BootstrapHash)
	}
	if slices.Contains(seeds.Hashes, g.bootstrapHash) {
		return
	}
	seeds.Hashes = append(seeds.Hashes, g.bootstrapHash)
	if len(seeds.Hashes) > maxSeeds {
		seeds.Hashes = seeds.Hashes[len(seeds.Hashes)-maxSeeds:]
	}
	g.store.save(ctx, g.seedsKey(), &seeds)
}

// due reports whether rec's access token is in its refresh window: the
// window of refresh_before (half the token's life when it lives less than
// twice that) plus the jitter a source adds (a tenth of it).
func (g *grant) due(rec *grantRecord) bool {
	w := refreshWindow(g.env.refreshBefore(), rec.Expiry.Sub(rec.Obtained))
	return !g.now().Before(rec.Expiry.Add(-w - w/10))
}

// decide looks at an account's grant: a token to use, an error, or
// neither (done false), when the refresh token must be redeemed. A source
// asks with the token it has (r.old) and whether the upstream refused it;
// the background refresh (background) asks for the stored token unless it
// is due.
func (f *grantRefresher) decide(account string, rec *grantRecord, r fetchRequest, background bool) (*token, bool, error) {
	g := f.g
	switch {
	case rec == nil:
		return nil, true, g.consentError(account, "not connected: no grant is stored for account "+account, true)
	case rec.NeedsConsent:
		return nil, true, g.consentError(account, rec.Reason, false)
	case rec.seed:
		return nil, false, nil // the configured refresh token, never applied
	case r.force && rec.RefreshToken == "":
		return nil, true, &TokenError{Provider: g.cfg.Provider, Code: "no_refresh_token",
			Description: "the grant has no refresh token to refresh it with; connect the account again"}
	case r.force:
		return nil, false, nil
	}
	t, err := g.recordToken(rec)
	if err != nil {
		return nil, true, err
	}
	valid := t != nil && g.now().Before(t.expiry)
	refused := r.refused && r.old != nil && t != nil && t.value == r.old.value
	switch {
	case !valid || refused:
		// expired, none, or refused upstream: a new one is needed
	case !background && (r.old == nil || t.value != r.old.value):
		return t, true, nil // first use here, or another route or instance refreshed
	case !g.due(rec):
		return t, true, nil // never redeem a grant whose stored token is not due
	}
	if rec.RefreshToken == "" {
		if valid && !refused {
			return t, true, nil // final: nothing to refresh it with
		}
		return nil, true, g.consentError(account, "the provider gave no refresh token, and the access token expired or was refused; connect again", false)
	}
	return nil, false, nil
}

// redeem sends the refresh token and stores what comes back, holding the
// account's lock. The rotated grant is what this process uses from then
// on, stored or not. A refresh token that came in a 2xx answer is stored
// even when the rest of the answer is rejected here (an odd token_type, a
// byte not allowed in a header, a JWT already expired): the provider may
// have revoked the one sent.
func (f *grantRefresher) redeem(ctx context.Context, rec *grantRecord) (*token, error) {
	g := f.g
	key, err := g.recordDPoPKey(rec)
	if err != nil {
		return nil, err // nothing sent: the refresh token stays as it is
	}
	ot, err := g.ep.Refresh(oauthclient.WithDPoPKey(ctx, key), rec.RefreshToken)
	tok, err := fetched(ot, err)
	now := g.now()
	if err != nil {
		var te *TokenError
		switch {
		case !errors.As(err, &te):
		case te.Rotated() != "":
			next := *rec
			next.RefreshToken, next.AccessToken, next.Obtained, next.Expiry, next.LastRefresh = te.Rotated(), "", time.Time{}, time.Time{}, now
			g.records.persist(ctx, &next)
			if rec.seed {
				f.noteSeeded(ctx)
			}
		case te.Code == "invalid_grant":
			next := *rec
			next.NeedsConsent = true
			next.Reason = "the provider refused the refresh token (invalid_grant): " + te.Description
			next.AccessToken, next.RefreshToken, next.Obtained, next.Expiry = "", "", time.Time{}, time.Time{}
			metrics.consents.WithLabelValues(g.cfg.Provider, "consent_required").Inc()
			g.records.persist(ctx, &next)
			if rec.seed {
				f.noteSeeded(ctx)
			}
			g.schedule.learned(rec.Account, &next)
			g.events.publish(ctx, rec.Account) // the other instances' counts and sources learn it now
			return nil, g.consentError(rec.Account, next.Reason, false)
		}
		return nil, err
	}
	next := *rec
	next.RefreshToken = firstNonEmpty(tok.refreshToken, rec.RefreshToken) // keep the old one when none came
	next.AccessToken, next.Obtained, next.Expiry = tok.value, tok.obtained, tok.expiry
	next.Scope = firstNonEmpty(tok.scope, rec.Scope)
	next.LastRefresh = now
	g.bindAnswer(&next, tok, ot.TokenType, key)
	g.records.persist(ctx, &next)
	if rec.seed {
		f.noteSeeded(ctx)
	}
	g.schedule.learned(rec.Account, &next)
	tok.refreshToken = ""
	tok.final = next.RefreshToken == ""
	return tok, nil
}
