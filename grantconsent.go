package oauthbearer

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// grantconsent.go: what the consent handler (consent.go) asks of a grant:
// redeem an authorization code, store the grant it gives (connect), delete
// one (disconnect), describe one (status), and keep the state of a consent
// in a cookie sealed with the grant's keys. The consent handler reaches the
// provider and the storage only through these methods.

// grantConsent is a grant's consent side. Its lock guards the consent
// states already redeemed here.
type grantConsent struct {
	g *grant

	mu         sync.Mutex
	usedStates map[string]time.Time // consent states already redeemed here → when to forget them
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
	// DPoP: the thumbprint of the grant's key (public) and whether its
	// token is bound to it; absent for a grant without a key.
	DPoP *grantDPoPView `json:"dpop,omitempty"`
}

// exchangeCode redeems an authorization code at the provider, with a DPoP
// proof of key when it is not nil. The grant's record-to-be is returned
// with the DPoP part filled in (the token's type, the key's thumbprint, and
// der, the key to keep: nil for dpop_key), and the token bound to key when
// the server bound it.
func (g *grant) exchangeCode(ctx context.Context, code, verifier, redirectURI string, key *oauthclient.DPoPKey, der []byte) (*token, *grantRecord, error) {
	ot, err := g.ep.ExchangeCode(oauthclient.WithDPoPKey(ctx, key), code, verifier, redirectURI)
	tok, err := fetched(ot, err)
	if err != nil {
		return nil, nil, err
	}
	rec := &grantRecord{DPoPKey: der}
	g.bindAnswer(rec, tok, ot.TokenType, key)
	return tok, rec, nil
}

// discoveredAuthorizeEndpoint is the issuer's authorization endpoint, from
// its metadata ("" without an issuer).
func (g *grant) discoveredAuthorizeEndpoint(ctx context.Context) (string, error) {
	d, err := g.ep.Discover(ctx)
	if err != nil || d == nil {
		return "", err
	}
	return d.AuthorizationEndpoint, nil
}

// sealState encrypts a pending consent for its cookie; openState opens it.
func (g *grant) sealState(plain []byte) []byte { return g.store.seal("state", plain) }

func (g *grant) openState(sealed []byte) ([]byte, error) { return g.store.open("state", sealed) }

// connect stores the grant obtained by redeeming an authorization code,
// tells the other instances, and makes it the account's token here at
// once. The refresh token of a grant it replaces is not revoked: where a
// revocation ends every grant of the client and user (Auth0 with "refresh
// token revocation deletes grant", Google), that would end the new grant
// too. Disconnect first to revoke the old one.
//
// bound holds the DPoP part of the record (exchangeCode's): the grant's
// key replaces the key of a grant it replaces.
func (c *grantConsent) connect(ctx context.Context, account string, tok *token, bound *grantRecord) error {
	g := c.g
	now := g.now()
	rec := &grantRecord{Account: account, RefreshToken: tok.refreshToken, AccessToken: tok.value,
		Obtained: tok.obtained, Expiry: tok.expiry, Scope: tok.scope, ConnectedAt: now, LastRefresh: now,
		BootstrapHash: g.bootstrapHash}
	if bound != nil {
		rec.TokenType, rec.JKT, rec.DPoPKey = bound.TokenType, bound.JKT, bound.DPoPKey
	}
	err := c.locked(ctx, account, func(ctx context.Context) error {
		if replaced, _ := g.records.stored(ctx, account); replaced != nil && rec.BootstrapHash == "" {
			rec.BootstrapHash = replaced.BootstrapHash // a configured token that seeded it stays applied
		}
		if err := g.records.save(ctx, rec); err != nil {
			return g.storageError("storing the grant", err)
		}
		g.records.dropUnsaved(account, nil)
		return nil
	})
	if err != nil {
		return err
	}
	g.events.publish(ctx, account)
	g.changed(account, rec)
	return nil
}

// disconnect revokes the grant at the provider (when it has a revoke URL),
// deletes it and tells the other instances. It reports whether the
// provider confirmed the revocation.
func (c *grantConsent) disconnect(ctx context.Context, account string) (revoked bool, err error) {
	g := c.g
	err = c.locked(ctx, account, func(ctx context.Context) error {
		rec, _ := g.records.current(ctx, account)
		if rec != nil && g.ep.CanRevoke(ctx) {
			revoked = true
			for _, t := range []struct{ v, hint string }{{rec.RefreshToken, "refresh_token"}, {rec.AccessToken, "access_token"}} {
				if t.v == "" {
					continue
				}
				if rerr := g.ep.Revoke(ctx, t.v, t.hint); rerr != nil {
					revoked = false
					g.env.logger().Warn("revoking a token at the provider failed; deleting the grant anyway",
						zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(rerr))
				}
			}
		}
		g.records.dropUnsaved(account, nil)
		if derr := g.records.remove(ctx, account); derr != nil {
			return g.storageError("deleting the grant", derr)
		}
		return nil
	})
	if err == nil {
		g.events.publish(ctx, account)
	}
	g.changed(account, nil)
	return revoked, err
}

// locked runs fn holding the account's gate in this process and its lock
// in the storage.
func (c *grantConsent) locked(ctx context.Context, account string, fn func(context.Context) error) error {
	g := c.g
	release, err := g.refresher.enter(ctx, account)
	if err != nil {
		return err
	}
	defer release()
	unlock, err := g.store.lock(ctx, g.lockName(account), lockWait(g.cfg.Timeout))
	if err != nil {
		return g.storageError("taking the grant's lock", err)
	}
	defer unlock()
	return fn(ctx)
}

// status describes an account's grant; never a token.
func (c *grantConsent) status(ctx context.Context, account string) (*accountStatus, error) {
	g := c.g
	st := &accountStatus{Provider: g.cfg.Provider, Account: account, NeedsConsent: true}
	rec, err := g.refresher.current(ctx, account)
	var ce *ConsentError
	switch {
	case errors.As(err, &ce):
		st.Reason = ce.Reason
		return st, nil
	case err != nil:
		return nil, err
	case rec == nil:
		st.Reason = "not connected"
		return st, nil
	}
	st.Connected, st.NeedsConsent, st.HasRefreshToken, st.Scope = !rec.NeedsConsent, rec.NeedsConsent, rec.RefreshToken != "", rec.Scope
	if !rec.seed {
		st.DPoP = recordDPoPView(rec)
	}
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
// needing consent again), or kept in memory for want of storage: what
// disconnect can delete.
func (g *grant) hasGrant(ctx context.Context, account string) (bool, error) {
	if g.records.unsaved(account) != nil {
		return true, nil
	}
	var rec grantRecord
	found, err := g.store.load(ctx, g.recordKey(account), &rec)
	if errors.Is(err, errUndecryptable) {
		return true, nil // there, but unreadable: disconnect deletes it
	}
	return found, err
}

// canRevoke reports whether disconnect revokes the grant at the provider
// (a revocation endpoint, configured or discovered).
func (g *grant) canRevoke(ctx context.Context) bool { return g.ep.CanRevoke(ctx) }

// useState marks a consent state as used; false if it already was.
func (c *grantConsent) useState(state string, expires time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.g.now()
	for s, exp := range c.usedStates {
		if now.After(exp) {
			delete(c.usedStates, s)
		}
	}
	if _, used := c.usedStates[state]; used {
		return false
	}
	c.usedStates[state] = expires.Add(time.Minute)
	return true
}
