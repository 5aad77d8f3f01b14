package oauthbearer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// sharedtoken.go: one client-credentials token per fleet. With token_store
// storage (the default), a token source keeps its token in memory for the
// request path and in Caddy's storage for every instance that shares it,
// encrypted and bound to its key. When its token is due, a source first
// reads the stored one: if another instance refreshed it, it takes that;
// otherwise it takes the credential set's storage lock, reads again, and
// only then fetches, stores and releases (readLockRead, coordinate.go). It
// waits for the lock as long as the holder may legitimately work (its
// token request's timeout and a margin: lockWait), so that a slow provider
// still costs the fleet one request. A process that starts uses the stored
// token while it is valid. The storage never makes things worse: when it
// fails, or a lock outlives its holder, the source fetches on its own,
// logs a warning once and counts it.

// sharedReadWait bounds a read of the shared store before a source fetches
// on its own.
const sharedReadWait = 2 * time.Second

// Token origins, as logs and the admin API report them.
const (
	originFetched     = "fetched"
	originSharedStore = "shared store"
	originWarmStart   = "warm start"
)

// tokenRecord is what is stored for a credential set, encrypted: the
// token, and what a source learned that should outlive a process.
type tokenRecord struct {
	AccessToken  string    `json:"access_token,omitempty"`
	Scope        string    `json:"scope,omitempty"`
	LifetimeFrom string    `json:"lifetime_from,omitempty"`
	Obtained     time.Time `json:"obtained,omitzero"`
	Expiry       time.Time `json:"expiry,omitzero"`
	// Format is the request body format that worked (request_format auto).
	Format string `json:"format,omitempty"`
	// A refusal that retrying cannot fix, and when the fleet may ask again.
	RefusedCode string    `json:"refused_code,omitempty"`
	RefusedDesc string    `json:"refused_description,omitempty"`
	RetryAt     time.Time `json:"retry_at,omitzero"`
	// Discovery is the issuer's metadata, when the endpoints come from it.
	Discovery *oauthclient.Metadata `json:"discovery,omitempty"`
	// DPoP (dpop.go): the token's type (DPoP: bound to a key; "" is
	// Bearer), the thumbprint of the key it is bound to, and that key
	// (PKCS#8; encrypted with the record) unless it is dpop_key. The key
	// stays when the token is replaced: every token of the credential set
	// is bound to it.
	TokenType string `json:"token_type,omitempty"`
	JKT       string `json:"jkt,omitempty"`
	DPoPKey   []byte `json:"dpop_key,omitempty"`
}

// sharedFetcher is the fetcher of a client-credentials source whose token
// is shared through the storage.
type sharedFetcher struct {
	ep     *endpoint
	store  *recordStore
	key    string // storage key of the record
	lock   string // storage lock name
	env    *env
	warned atomic.Bool // a fallback was logged; cleared when the storage works again
	dpop   *dpopKeys   // nil without dpop
}

func newSharedFetcher(ep *endpoint, e *env, cs *credentialSet) (*sharedFetcher, error) {
	// The record is named by what decides which token it is, not by the
	// secret or the encryption keys: rotating either keeps the name (and
	// the token, readable with the old key during a key rotation).
	b, _ := json.Marshal(cs) // exported fields only: no secret, no key
	sum := sha256.Sum256(b)
	id := hex.EncodeToString(sum[:8])
	store, err := newRecordStore(e, cs, "caddy-oauth-bearer token v1", id)
	if err != nil {
		return nil, err
	}
	return &sharedFetcher{ep: ep, store: store, env: e, dpop: newDPoPKeys(cs, e),
		key: "oauth_bearer/tokens/" + id + ".json", lock: "oauth_bearer_token_" + id}, nil
}

func (f *sharedFetcher) fetch(ctx context.Context, r fetchRequest) (*token, error) {
	settle := func(rec *tokenRecord) (*token, bool, error) {
		t, err := f.decide(rec, r)
		return t, t != nil || err != nil, err
	}
	t, rec, err := readLockRead(ctx, f.store, f.ep.cfg.Provider, f.lock, lockWait(f.ep.cfg.Timeout), f.read, settle, f.fetchAndStore)
	var se *StorageError
	switch {
	case !errors.As(err, &se):
		return t, err
	case ctx.Err() != nil:
		return nil, ctx.Err() // the source stopped while waiting
	}
	// The storage failed, or the lock outlived its holder: the source
	// goes on without the store.
	f.fallback(se.Doing, se.Err)
	return f.fetchAlone(ctx, rec)
}

// newer returns the shared token when it is newer than old, which the
// upstream refused: another instance fetched since this source took old
// (a provider that keeps one live token per client revoked old then).
// When the stored token is old itself, it waits for the lock, in case
// another instance's fetch is under way, and reads again. It never asks
// the provider: nil, nil when nothing newer is stored (tokensource.go,
// takeNewer; called only after an upstream 401).
func (f *sharedFetcher) newer(ctx context.Context, old *token) (*token, error) {
	settle := func(rec *tokenRecord) (*token, bool, error) {
		t, _ := f.decide(rec, fetchRequest{old: old, refused: true})
		if t != nil && !t.obtained.Before(old.obtained) {
			return t, true, nil
		}
		return nil, false, nil
	}
	nothing := func(context.Context, *tokenRecord) (*token, error) { return nil, nil }
	t, _, err := readLockRead(ctx, f.store, f.ep.cfg.Provider, f.lock, lockWait(f.ep.cfg.Timeout), f.read, settle, nothing)
	return t, err
}

// read loads the record (bounded); a record that does not decrypt is
// treated as none, and replaced at the next write. It also applies the
// remembered request format.
func (f *sharedFetcher) read(ctx context.Context) (*tokenRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, sharedReadWait)
	defer cancel()
	var rec tokenRecord
	found, err := f.store.load(ctx, f.key, &rec)
	if err != nil && !errors.Is(err, errUndecryptable) {
		return nil, &StorageError{Provider: f.ep.cfg.Provider, Doing: "reading the shared token", Err: err}
	}
	f.recovered()
	if err != nil || !found {
		return &tokenRecord{}, nil
	}
	f.ep.UseFormat(rec.Format)
	if d := rec.Discovery; d != nil {
		f.ep.AdoptMetadata(d)
	}
	return &rec, nil
}

// decide looks at the stored record: a token to take, a refusal the fleet
// remembers, or neither (fetch; always when forced).
func (f *sharedFetcher) decide(rec *tokenRecord, r fetchRequest) (*token, error) {
	if r.force {
		return nil, nil
	}
	old, refused := r.old, r.refused
	now := f.ep.clock.now()
	if rec.AccessToken != "" && now.Before(rec.Expiry) &&
		(old == nil || rec.AccessToken != old.value) && !(refused && old != nil && rec.AccessToken == old.value) {
		t := &token{value: rec.AccessToken, scope: rec.Scope, lifetimeFrom: rec.LifetimeFrom,
			obtained: rec.Obtained, expiry: rec.Expiry, origin: originSharedStore}
		if f.dpop != nil {
			// The token comes with the key it is bound to; one bound to
			// another key is never taken.
			key, ok := f.dpop.recordKey(rec)
			if !ok {
				return nil, nil
			}
			t.dpopKey = key
		}
		if old == nil {
			t.origin = originWarmStart
		}
		return t, nil
	}
	if rec.RefusedCode != "" && now.Before(rec.RetryAt) {
		return nil, &TokenError{Provider: f.ep.cfg.Provider, Code: rec.RefusedCode, RetryAfter: rec.RetryAt.Sub(now),
			Description: f.ep.cfg.redact(rec.RefusedDesc) + " (remembered from an earlier token request, by this or another instance; not asking again before " +
				rec.RetryAt.UTC().Format(time.RFC3339) + ")"}
	}
	return nil, nil
}

// fetchAndStore fetches a token and stores it, with what was learned.
func (f *sharedFetcher) fetchAndStore(ctx context.Context, rec *tokenRecord) (*token, error) {
	return f.fetchAndStoreWith(ctx, rec, false)
}

// fetchAndStoreWith is fetchAndStore; alone: without the store's
// coordination, so with DPoP this process's own key (the stored one may
// not have been read).
func (f *sharedFetcher) fetchAndStoreWith(ctx context.Context, rec *tokenRecord, alone bool) (*token, error) {
	var (
		t       *token
		err     error
		keyDER  []byte
		dpopKey *oauthclient.DPoPKey
	)
	switch {
	case f.dpop == nil:
		t, err = fetched(f.ep.ClientCredentials(ctx))
	default:
		if alone {
			dpopKey, err = f.dpop.ownKey("the shared token store is not usable")
			if err == nil {
				keyDER = f.dpop.ownDER(dpopKey)
			}
		} else {
			dpopKey, keyDER, err = f.dpop.keyForRecord(rec)
		}
		if err != nil {
			return nil, &TokenError{Provider: f.ep.cfg.Provider, Code: oauthclient.CodeLocalConfigError, Description: "dpop: " + err.Error()}
		}
		t, err = f.dpop.fetch(ctx, dpopKey, f.ep.ClientCredentials)
	}
	next := *rec
	if f.dpop != nil {
		next.DPoPKey = keyDER
	}
	next.Format = ""
	if f.ep.cfg.Format == providers.FormatAuto {
		next.Format = f.ep.Format()
	}
	next.Discovery = f.ep.SharedMetadata()
	var te *TokenError
	switch {
	case err == nil:
		next.AccessToken, next.Scope, next.LifetimeFrom = t.value, t.scope, t.lifetimeFrom
		next.Obtained, next.Expiry = t.obtained, t.expiry
		next.RefusedCode, next.RefusedDesc, next.RetryAt = "", "", time.Time{}
		next.TokenType, next.JKT = "", ""
		if t.dpopKey != nil {
			next.TokenType, next.JKT = oauthclient.TokenTypeDPoP, t.dpopKey.Thumbprint()
		}
	case errors.As(err, &te) && te.Permanent():
		// The fleet does not hammer a provider that refuses the
		// credentials: the others wait as this source will.
		next.RefusedCode, next.RefusedDesc = te.Code, te.Description
		next.RetryAt = f.ep.clock.now().Add(maxBackoff)
	default:
		return nil, err
	}
	if serr := f.write(ctx, &next); serr != nil {
		f.fallback("storing the shared token", serr)
	}
	return t, err
}

// fetchAlone fetches without the store's coordination (the storage
// misbehaves), and stores the token if the storage takes it.
func (f *sharedFetcher) fetchAlone(ctx context.Context, rec *tokenRecord) (*token, error) {
	metrics.storageFallbacks.WithLabelValues(f.ep.cfg.Provider).Inc()
	if rec == nil {
		rec = &tokenRecord{}
	}
	return f.fetchAndStoreWith(ctx, rec, true)
}

func (f *sharedFetcher) write(ctx context.Context, rec *tokenRecord) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedReadWait)
	defer cancel()
	return f.store.save(ctx, f.key, rec)
}

// fallback logs, once until the storage works again, that the source
// fetches without it: the storage failed, or a lock outlived its holder
// (never because the provider is slow: the lock wait covers that).
func (f *sharedFetcher) fallback(doing string, err error) {
	if f.warned.CompareAndSwap(false, true) {
		f.env.logger().Warn("the shared token store is not usable; fetching tokens without it",
			zap.String("provider", f.ep.cfg.Provider), zap.String("doing", doing), zap.Error(err))
	}
}

// recovered notes that the storage answered again.
func (f *sharedFetcher) recovered() {
	if f.warned.CompareAndSwap(true, false) {
		f.env.logger().Info("the shared token store is usable again", zap.String("provider", f.ep.cfg.Provider))
	}
}
