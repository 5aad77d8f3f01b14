package oauthbearer

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The shared token store between "instances": token sources of their own
// (as two processes have) on one storage. The multi-process figures are in
// fleet_test.go.

// sharedInstance is one instance's source of a credential set.
type sharedInstance struct {
	e    *sourceEntry
	logs *observer.ObservedLogs
}

func newSharedInstance(t *testing.T, cs *credentialSet, storage certmagic.Storage, clock *fakeClock) *sharedInstance {
	t.Helper()
	e, err := newSourceEntry(cs, "cc:"+cs.key(), true)
	if err != nil {
		t.Fatal(err)
	}
	if clock != nil {
		e.clock.set(clock.now)
	}
	core, logs := observer.New(zap.DebugLevel)
	e.env.attach(&use{logger: zap.New(core), storage: storage, refreshBefore: 10 * time.Second})
	t.Cleanup(func() { e.Destruct() })
	return &sharedInstance{e: e, logs: logs}
}

func sharedSet(as *fakeAS) *credentialSet {
	return &credentialSet{Provider: "test", TokenURL: as.tokenURL(), ClientID: as.ClientID, clientSecret: as.Secret,
		Format: "form", ClientAuth: "basic", DefaultLifetime: time.Minute, Timeout: 5 * time.Second}
}

// Two instances: the second takes the first's token (a warm start), and at
// each refresh the first to come fetches and the other takes its token.
func TestSharedTokenOnePerLifetime(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	a := newSharedInstance(t, sharedSet(as), storage, clock)
	b := newSharedInstance(t, sharedSet(as), storage, clock)

	ta := mustToken(t, a.e.src)
	tb := mustToken(t, b.e.src)
	if ta.value != tb.value || as.tokenRequests() != 1 {
		t.Fatalf("tokens %q and %q after %d token requests; want one token", ta.value, tb.value, as.tokenRequests())
	}
	if ta.origin != originFetched || tb.origin != originWarmStart {
		t.Errorf("origins %q and %q, want fetched and warm start", ta.origin, tb.origin)
	}
	for i := 2; i <= 4; i++ {
		clock.add(95 * time.Second) // both in their refresh window
		for _, in := range []*sharedInstance{a, b} {
			mustToken(t, in.e.src)
			waitFor(t, func() bool { return !in.e.src.refreshing.Load() })
		}
		if n := as.tokenRequests(); n != int64(i) {
			t.Fatalf("after rotation %d: %d token requests, want %d (one per lifetime)", i-1, n, i)
		}
		if a.e.src.cur.Load().value != b.e.src.cur.Load().value {
			t.Fatalf("rotation %d: the instances hold different tokens", i-1)
		}
	}
	if got := b.e.src.cur.Load().origin; got != originSharedStore {
		t.Errorf("the second instance's token came from %q, want the shared store", got)
	}
}

// A token the upstream refused is not taken back from the store: the next
// fetch asks the provider.
func TestSharedTokenRefusedIsNotTakenBack(t *testing.T) {
	as := newCountingAS(t, 3600)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	a := newSharedInstance(t, sharedSet(as), storage, clock)
	t1 := mustToken(t, a.e.src)
	clock.add(time.Minute)
	if !a.e.src.reject(t1) {
		t.Fatal("the refused token was kept")
	}
	if t2 := mustToken(t, a.e.src); t2.value == t1.value || as.tokenRequests() != 2 {
		t.Errorf("after a refusal got %q after %d requests; want a new token", t2.value, as.tokenRequests())
	}
}

// A stored record that does not decrypt (tampered with, or another key) is
// ignored and replaced.
func TestSharedTokenUndecryptableIsReplaced(t *testing.T) {
	as := newCountingAS(t, 3600)
	dir := t.TempDir()
	storage := &certmagic.FileStorage{Path: dir}
	a := newSharedInstance(t, sharedSet(as), storage, nil)
	mustToken(t, a.e.src)
	var file string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(p, "oauth_bearer/tokens/") && !info.IsDir() {
			file = p
		}
		return nil
	})
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("no stored token under %s: %v", dir, err)
	}
	data[len(data)-3] ^= 1
	os.WriteFile(file, data, 0o600)
	b := newSharedInstance(t, sharedSet(as), storage, nil)
	if tok := mustToken(t, b.e.src); tok.origin != originFetched || as.tokenRequests() != 2 {
		t.Fatalf("with a tampered record: %q from %q after %d requests", tok.value, tok.origin, as.tokenRequests())
	}
	c := newSharedInstance(t, sharedSet(as), storage, nil)
	if tok := mustToken(t, c.e.src); tok.origin != originWarmStart || as.tokenRequests() != 2 {
		t.Errorf("the replaced record was not readable: %q from %q after %d requests", tok.value, tok.origin, as.tokenRequests())
	}
}

// A failing storage: the source fetches on its own, warns once, counts it,
// and says so when the storage works again.
func TestSharedTokenFallsBackWhenTheStorageFails(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	storage, faults := flakyTestStorage(t, "")
	a := newSharedInstance(t, sharedSet(as), storage, clock)
	before := testutil.ToFloat64(metrics.storageFallbacks.WithLabelValues("test"))
	faults.failNext(flakyLoad, -1)
	faults.failNext(flakyStore, -1)
	for i := 1; i <= 3; i++ {
		if tok := mustToken(t, a.e.src); tok.value == "" {
			t.Fatal("no token")
		}
		clock.add(101 * time.Second)
	}
	if n := as.tokenRequests(); n != 3 {
		t.Errorf("%d token requests for 3 expiries with the storage failing", n)
	}
	if got := testutil.ToFloat64(metrics.storageFallbacks.WithLabelValues("test")) - before; got != 3 {
		t.Errorf("storage_fallbacks_total grew by %v, want 3", got)
	}
	if n := a.logs.FilterMessage("the shared token store is not usable; fetching tokens without it").Len(); n != 1 {
		t.Errorf("the fallback was logged %d times, want once", n)
	}
	faults.clear()
	mustToken(t, a.e.src)
	if a.logs.FilterMessage("the shared token store is usable again").Len() != 1 {
		t.Error("no log line when the storage works again")
	}
}

// A lock left by an instance that died (its lock file no longer kept
// fresh): the storage declares it stale, the source takes it and fetches
// under it, without saying the storage is unusable.
func TestSharedTokenTakesADeadHoldersLock(t *testing.T) {
	as := newCountingAS(t, 3600)
	dir := t.TempDir()
	storage := &certmagic.FileStorage{Path: dir}
	a := newSharedInstance(t, sharedSet(as), storage, nil)
	f := a.e.src.fetcher.(*sharedFetcher)
	dead := time.Now().Add(-time.Minute)
	lockFile := filepath.Join(dir, "locks", certmagic.StorageKeys.Safe(f.lock)+".lock")
	if err := os.MkdirAll(filepath.Dir(lockFile), 0o700); err != nil {
		t.Fatal(err)
	}
	meta := fmt.Sprintf(`{"created":%q,"updated":%q}`, dead.Format(time.RFC3339Nano), dead.Format(time.RFC3339Nano))
	if err := os.WriteFile(lockFile, []byte(meta), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := a.e.src.Token(context.Background())
	if err != nil {
		t.Fatalf("with a dead holder's lock: %v", err)
	}
	if as.tokenRequests() != 1 || tok.origin != originFetched {
		t.Errorf("%d token requests, origin %q; want one fetch", as.tokenRequests(), tok.origin)
	}
	if a.logs.FilterMessage("the shared token store is not usable; fetching tokens without it").Len() != 0 {
		t.Error("a stale lock was reported as an unusable storage")
	}
}

// A lock held longer than its holder may legitimately work (its token
// request's timeout and a margin: lockWait) has outlived it: the source
// fetches on its own, and says so.
func TestSharedTokenFallsBackWhenALockOutlivesItsHolder(t *testing.T) {
	as := newCountingAS(t, 3600)
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	cs := sharedSet(as)
	cs.Timeout = time.Second
	a := newSharedInstance(t, cs, storage, nil)
	f := a.e.src.fetcher.(*sharedFetcher)
	if err := storage.Lock(context.Background(), f.lock); err != nil { // held, and kept fresh, elsewhere
		t.Fatal(err)
	}
	defer storage.Unlock(context.Background(), f.lock)
	start := time.Now()
	tok, err := a.e.src.Token(context.Background())
	if err != nil {
		t.Fatalf("with the lock held elsewhere: %v", err)
	}
	took := time.Since(start)
	t.Logf("token after %v with the lock held by another instance", took)
	if took < lockWait(cs.Timeout) || as.tokenRequests() != 1 || tok.origin != originFetched {
		t.Errorf("took %v, %d token requests, origin %q; want a fetch of its own after %s", took, as.tokenRequests(), tok.origin, lockWait(cs.Timeout))
	}
	if a.logs.FilterMessage("the shared token store is not usable; fetching tokens without it").Len() != 1 {
		t.Error("the fallback was not logged")
	}
}

// What was learnt outlives the process: the request format that worked
// with request_format auto, and a refusal that retrying cannot fix.
func TestSharedTokenRemembersFacts(t *testing.T) {
	t.Run("request format", func(t *testing.T) {
		as := newFakeAS(t)
		as.Format = "form" // a JSON body is refused with 400
		cs := func() *credentialSet {
			c := sharedSet(as)
			c.Format, c.PreferredFormat, c.ClientAuth = "auto", "json", "body"
			return c
		}
		storage := &certmagic.FileStorage{Path: t.TempDir()}
		mustToken(t, newSharedInstance(t, cs(), storage, nil).e.src)
		// A restart: the stored token is still valid, but a new token is
		// due (another process with a fresh cache, say after the token
		// was refused).
		b := newSharedInstance(t, cs(), storage, nil)
		old := mustToken(t, b.e.src)
		b.e.src.clock.set(func() time.Time { return time.Now().Add(time.Hour) })
		b.e.src.reject(old)
		mustToken(t, b.e.src)
		if got := strings.Join(as.formats(), " "); got != "json form form" {
			t.Errorf("request formats %q; want json then form, and form only after the restart", got)
		}
	})
	t.Run("refusal", func(t *testing.T) {
		refuse := newFakeAS(t)
		refuse.refuse(http.StatusUnauthorized, "invalid_client", 0)
		storage := &certmagic.FileStorage{Path: t.TempDir()}
		a := newSharedInstance(t, sharedSet(refuse), storage, nil)
		if _, err := a.e.src.Token(context.Background()); err == nil {
			t.Fatal("a refused client got a token")
		}
		b := newSharedInstance(t, sharedSet(refuse), storage, nil)
		_, err := b.e.src.Token(context.Background())
		te, ok := err.(*TokenError)
		if !ok || te.Code != "invalid_client" || !strings.Contains(te.Description, "remembered") {
			t.Errorf("second instance got %v, want the remembered invalid_client", err)
		}
		if n := refuse.tokenRequests(); n != 1 {
			t.Errorf("the provider that refused the credentials was asked %d times, want once", n)
		}
	})
}

// encryption_key: records written under the secret-derived key stay
// readable when a key is configured; the next write uses the new key, which
// a configuration without it cannot read.
func TestEncryptionKeyRotation(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	key1 := make([]byte, 32)
	for i := range key1 {
		key1[i] = byte(i)
	}
	withKeys := func(keys ...[]byte) *credentialSet {
		cs := sharedSet(as)
		cs.encryptionKeys = keys
		return cs
	}
	mustToken(t, newSharedInstance(t, withKeys(), storage, clock).e.src) // secret-derived key
	// Configure key1: the old record still reads (a warm start)...
	b := newSharedInstance(t, withKeys(key1), storage, clock)
	if tok := mustToken(t, b.e.src); tok.origin != originWarmStart || as.tokenRequests() != 1 {
		t.Fatalf("with a new key, the old record: %q after %d requests", tok.origin, as.tokenRequests())
	}
	// ...and the next write is encrypted with key1.
	clock.add(101 * time.Second)
	mustToken(t, b.e.src)
	f := b.e.src.fetcher.(*sharedFetcher)
	raw, err := storage.Load(context.Background(), f.key)
	if err != nil {
		t.Fatal(err)
	}
	only1, _ := newKeyring(withKeys(key1), "caddy-oauth-bearer token v1", strings.TrimSuffix(strings.TrimPrefix(f.key, "oauth_bearer/tokens/"), ".json"))
	onlyKey1 := &recordStore{keys: &keyring{aeads: only1.aeads[:1]}}
	if _, err := onlyKey1.open(f.key, raw); err != nil {
		t.Errorf("the rewritten record is not encrypted with the configured key: %v", err)
	}
}
