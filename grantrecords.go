package oauthbearer

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// grantrecords.go: the records of a grant's accounts in the storage, and
// the rotations the storage refused. A redemption's answer is stored while
// the account's lock is held, retried a few times; if the storage still
// refuses it, the rotated grant is kept in memory (used from there: the
// stored refresh token is stale, and redeeming it would look like reuse)
// and stored again every watchInterval, unless a newer grant was stored
// meanwhile (another instance's consent) or the account was disconnected.
// The rotations kept in memory belong to the process, not to a pool entry:
// a reload that replaces the grant's entry hands them to the next one.

// saveRetries are the retries of a rotated grant's write while its lock is
// held (after 0.1, 0.3, 0.9 and 2.7 s).
const saveRetries = 4

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

	// DPoP (grantdpop.go): the access token's type (DPoP: bound to the
	// key; "" is Bearer), the thumbprint of the grant's key, and that key
	// (PKCS#8, encrypted with the record) unless it is dpop_key. Set at
	// connect; a refresh keeps the key.
	TokenType string `json:"token_type,omitempty"`
	JKT       string `json:"jkt,omitempty"`
	DPoPKey   []byte `json:"dpop_key,omitempty"`

	// seed: made from the configured refresh token, not stored yet.
	seed bool
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

// supersedes reports whether r is a newer state of the account's grant
// than old, or the same: another consent made after it, or a later refresh
// of the same one.
func (r *grantRecord) supersedes(old *grantRecord) bool {
	if !r.ConnectedAt.Equal(old.ConnectedAt) {
		return r.ConnectedAt.After(old.ConnectedAt)
	}
	if r.RefreshToken == old.RefreshToken && r.AccessToken == old.AccessToken {
		return true // the same state: nothing to write
	}
	return r.LastRefresh.After(old.LastRefresh)
}

// unsavedGrants are the rotations the storage refused, for the whole
// process, by grant id and account.
var unsavedGrants = struct {
	sync.Mutex
	m map[string]*grantRecord
}{m: map[string]*grantRecord{}}

// grantRecords reads and writes the records of a grant. It has no state
// of its own besides the process-wide unsaved rotations.
type grantRecords struct {
	g *grant
}

func (r *grantRecords) unsavedKey(account string) string { return r.g.id + "/" + account }

func (r *grantRecords) unsaved(account string) *grantRecord {
	unsavedGrants.Lock()
	defer unsavedGrants.Unlock()
	return unsavedGrants.m[r.unsavedKey(account)]
}

// keepUnsaved keeps a rotation the storage refused.
func (r *grantRecords) keepUnsaved(rec *grantRecord) {
	unsavedGrants.Lock()
	unsavedGrants.m[r.unsavedKey(rec.Account)] = rec
	unsavedGrants.Unlock()
}

// dropUnsaved forgets the rotation kept for account, if it is still rec
// (nil: whatever it is).
func (r *grantRecords) dropUnsaved(account string, rec *grantRecord) {
	unsavedGrants.Lock()
	defer unsavedGrants.Unlock()
	k := r.unsavedKey(account)
	if rec == nil || unsavedGrants.m[k] == rec {
		delete(unsavedGrants.m, k)
	}
}

// pending returns the rotations of this grant kept in memory.
func (r *grantRecords) pending() []*grantRecord {
	unsavedGrants.Lock()
	defer unsavedGrants.Unlock()
	var out []*grantRecord
	prefix := r.g.id + "/"
	for k, rec := range unsavedGrants.m {
		if len(k) > len(prefix) && k[:len(prefix)] == prefix {
			out = append(out, rec)
		}
	}
	return out
}

// stored reads an account's record from the storage: nil when there is
// none; a *ConsentError when it cannot be used; a *StorageError when the
// storage fails.
func (r *grantRecords) stored(ctx context.Context, account string) (*grantRecord, error) {
	g := r.g
	var rec grantRecord
	found, err := g.store.load(ctx, g.recordKey(account), &rec)
	switch {
	case errors.Is(err, errUndecryptable):
		return nil, g.consentError(account, "the stored grant cannot be decrypted (tampered with, or the client secret changed); connect again", false)
	case err != nil:
		return nil, g.storageError("reading the grant", err)
	case !found:
		return nil, nil
	case rec.Account != account:
		return nil, g.consentError(account, "the stored grant belongs to another account; connect again", false)
	}
	return &rec, nil
}

// current returns the account's grant: the stored one, or the rotation
// kept in memory when the storage refused it, unless the stored one is
// newer (then the kept one is dropped) or the account was disconnected.
// When the storage cannot be read, the kept rotation is the answer.
func (r *grantRecords) current(ctx context.Context, account string) (*grantRecord, error) {
	rec, err := r.stored(ctx, account)
	kept := r.unsaved(account)
	switch {
	case kept == nil:
		return rec, err
	case err != nil:
		var se *StorageError
		if errors.As(err, &se) {
			return kept, nil
		}
		return rec, err
	case r.outdated(kept, rec):
		r.dropOutdated(kept)
		return rec, nil
	}
	return kept, nil
}

// dropOutdated forgets a kept rotation that a newer grant, or a
// disconnect, made obsolete.
func (r *grantRecords) dropOutdated(kept *grantRecord) {
	g := r.g
	unsavedGrants.Lock()
	k := r.unsavedKey(kept.Account)
	dropped := unsavedGrants.m[k] == kept
	if dropped {
		delete(unsavedGrants.m, k)
	}
	unsavedGrants.Unlock()
	if dropped {
		g.env.logger().Warn("a newer grant is stored (or the account was disconnected); the rotation kept in memory is dropped",
			zap.String("provider", g.cfg.Provider), zap.String("account", kept.Account))
	}
}

// outdated reports whether a rotation kept in memory must not be stored
// over stored: a newer grant is stored, or none is (the account was
// disconnected, unless the kept one seeds it from the configured token).
func (r *grantRecords) outdated(kept, stored *grantRecord) bool {
	if stored == nil {
		return !kept.seed
	}
	return stored.supersedes(kept)
}

// save writes an account's record.
func (r *grantRecords) save(ctx context.Context, rec *grantRecord) error {
	return r.g.store.save(ctx, r.g.recordKey(rec.Account), rec)
}

// remove deletes an account's record.
func (r *grantRecords) remove(ctx context.Context, account string) error {
	return r.g.store.remove(ctx, r.g.recordKey(account))
}

// persist stores a rotated grant, retrying while the caller holds its
// lock (so that no other instance redeems the stale refresh token
// meanwhile). When the storage keeps refusing, the grant is kept in
// memory, used from there, and stored again by the loop.
func (r *grantRecords) persist(ctx context.Context, rec *grantRecord) {
	g := r.g
	var err error
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if err = r.save(ctx, rec); err == nil {
			r.dropUnsaved(rec.Account, nil)
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
	r.keepUnsaved(rec)
	g.env.logger().Error("storing the refreshed grant failed; it is kept in memory and stored again every few seconds",
		zap.String("provider", g.cfg.Provider), zap.String("account", rec.Account), zap.Error(err))
	g.startLoop()
}

// storeUnsaved stores again the rotations the storage refused, each under
// its account's lock and only over an older state of the grant; one that a
// newer grant (or a disconnect) made obsolete is dropped.
func (r *grantRecords) storeUnsaved(ctx context.Context) {
	g := r.g
	for _, kept := range r.pending() {
		if ctx.Err() != nil {
			return
		}
		account := kept.Account
		settle := func(stored *grantRecord) (bool, bool, error) {
			if r.unsaved(account) != kept {
				return false, true, nil // used and stored by a refresh meanwhile
			}
			if r.outdated(kept, stored) {
				r.dropOutdated(kept)
				return false, true, nil
			}
			return false, false, nil
		}
		write := func(ctx context.Context, _ *grantRecord) (bool, error) {
			if err := r.save(ctx, kept); err != nil {
				return false, err
			}
			r.dropUnsaved(account, kept)
			return true, nil
		}
		release, err := g.refresher.enter(ctx, account)
		if err != nil {
			return
		}
		written, _, err := readLockRead(ctx, g.store, g.cfg.Provider, g.lockName(account), lockWait(g.cfg.Timeout),
			func(ctx context.Context) (*grantRecord, error) { return r.stored(ctx, account) }, settle, write)
		release()
		if err == nil && written {
			g.env.logger().Info("the refreshed grant is stored now", zap.String("provider", g.cfg.Provider), zap.String("account", account))
		}
	}
}
