package oauthbearer

// Tests of the test-only storage modules oab_flaky (teststorage_test.go) and
// oab_redis (redisstorage_test.go): that they are storages as certmagic
// callers expect, that the Redis locks are leases with the exclusion and
// expiry of a cluster storage's, that the faults do what they say, and that
// Caddy loads both from a Caddyfile.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/certmagic"
)

// TestStorageConformance runs the same checks against the file system
// storage, oab_flaky without faults and oab_redis, so that a test passing
// on one means the same on the others.
func TestStorageConformance(t *testing.T) {
	storages := map[string]func(t *testing.T) certmagic.Storage{
		"file_system": func(t *testing.T) certmagic.Storage {
			return &certmagic.FileStorage{Path: t.TempDir()}
		},
		"oab_flaky": func(t *testing.T) certmagic.Storage {
			st, err := flakyStorage{Root: t.TempDir(), Name: t.Name()}.CertMagicStorage()
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
		"oab_redis": func(t *testing.T) certmagic.Storage {
			return redisTestStorage(t, startRedis(t), redisPrefixOf(t), 0)
		},
	}
	for _, name := range []string{"file_system", "oab_flaky", "oab_redis"} {
		t.Run(name, func(t *testing.T) { storageConformance(t, storages[name](t)) })
	}
}

func storageConformance(t *testing.T, st certmagic.Storage) {
	ctx := context.Background()
	store := func(key, value string) {
		t.Helper()
		if err := st.Store(ctx, key, []byte(value)); err != nil {
			t.Fatalf("Store(%q): %v", key, err)
		}
	}
	load := func(key, want string) {
		t.Helper()
		b, err := st.Load(ctx, key)
		if err != nil || string(b) != want {
			t.Fatalf("Load(%q) = %q, %v; want %q", key, b, err, want)
		}
	}
	notExist := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: error %v, want fs.ErrNotExist", what, err)
		}
	}
	exists := func(key string, want bool) {
		t.Helper()
		if got := st.Exists(ctx, key); got != want {
			t.Fatalf("Exists(%q) = %v, want %v", key, got, want)
		}
	}
	list := func(dir string, recursive bool, want ...string) {
		t.Helper()
		got, err := st.List(ctx, dir, recursive)
		if err != nil {
			t.Fatalf("List(%q, %v): %v", dir, recursive, err)
		}
		got = append([]string(nil), got...)
		if len(got) == 0 {
			got = nil
		}
		slices.Sort(got)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("List(%q, %v) = %q, want %q", dir, recursive, got, want)
		}
	}

	// Missing keys.
	_, err := st.Load(ctx, "a/b/c")
	notExist("Load of a missing key", err)
	_, err = st.Stat(ctx, "a/b/c")
	notExist("Stat of a missing key", err)
	_, err = st.List(ctx, "a", true)
	notExist("List of a missing directory", err)
	exists("a/b/c", false)
	if err := st.Delete(ctx, "a/b/c"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}

	// Store, overwrite, Stat.
	before := time.Now().Add(-time.Second) // file mtimes may be coarse
	store("a/b/c", "1")
	load("a/b/c", "1")
	store("a/b/c", "22")
	load("a/b/c", "22")
	info, err := st.Stat(ctx, "a/b/c")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "a/b/c" || info.Size != 2 || !info.IsTerminal ||
		info.Modified.Before(before) || info.Modified.After(time.Now().Add(time.Second)) {
		t.Fatalf("Stat(a/b/c) = %+v", info)
	}
	store("a/b/e", "e")
	store("a/d", "d")
	store("ab/c", "not under a") // "a" is a prefix of "a/d", not of "ab/c"
	store("x", "")
	load("x", "")
	if info, err := st.Stat(ctx, "a/b"); err != nil || info.IsTerminal || info.Key != "a/b" {
		t.Fatalf("Stat(a/b) = %+v, %v; want a directory", info, err)
	}

	// Exists and List: files and directories.
	exists("a", true)
	exists("a/b", true)
	exists("a/b/c", true)
	exists("a/b/z", false)
	list("a", false, "a/b", "a/d")
	list("a", true, "a/b", "a/b/c", "a/b/e", "a/d")
	list("a/b", false, "a/b/c", "a/b/e")
	list("", false, "a", "ab", "x")
	list("a/d", false) // a file: nothing under it

	// Delete a key, then a directory.
	if err := st.Delete(ctx, "a/b/c"); err != nil {
		t.Fatal(err)
	}
	_, err = st.Load(ctx, "a/b/c")
	notExist("Load after Delete", err)
	load("a/b/e", "e")
	if err := st.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	exists("a", false)
	exists("a/b/e", false)
	exists("a/d", false)
	load("ab/c", "not under a")
	load("x", "")

	// A lock can be taken, released and taken again.
	if err := st.Lock(ctx, "conformance"); err != nil {
		t.Fatal(err)
	}
	if err := st.Unlock(ctx, "conformance"); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := st.Lock(lctx, "conformance"); err != nil {
		t.Fatal(err)
	}
	if err := st.Unlock(ctx, "conformance"); err != nil {
		t.Fatal(err)
	}
}

// redisAttempts records a storage's lock attempts on a channel.
func redisAttempts(s *redisCertStorage) <-chan bool {
	ch := make(chan bool, 1000)
	s.lockAttempted = func(_ string, acquired bool) {
		select {
		case ch <- acquired:
		default:
		}
	}
	return ch
}

// redisWaitFailedAttempts waits for n failed lock attempts.
func redisWaitFailedAttempts(t *testing.T, attempts <-chan bool, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for n > 0 {
		select {
		case acquired := <-attempts:
			if acquired {
				t.Fatal("the lock was acquired while another storage held it")
			}
			n--
		case <-timeout:
			t.Fatalf("no lock attempt within 10s (%d to go)", n)
		}
	}
}

// Two storages on the same Redis (two Caddy instances): the second Lock
// waits for the first holder's Unlock.
func TestRedisStorageLockExclusion(t *testing.T) {
	addr := startRedis(t)
	prefix := redisPrefixOf(t)
	a := redisTestStorage(t, addr, prefix, 0)
	b := redisTestStorage(t, addr, prefix, 0)
	attempts := redisAttempts(b)
	ctx := context.Background()

	if err := a.Lock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "grant") }()
	redisWaitFailedAttempts(t, attempts, 3) // b is polling, and blocked
	select {
	case err := <-got:
		t.Fatalf("b's Lock returned (%v) while a held the lock", err)
	default:
	}
	if err := a.Unlock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not get the lock after a released it")
	}
	// Now a waits for b.
	if ok, err := a.TryLock(ctx, "grant"); ok || err != nil {
		t.Fatalf("a.TryLock while b holds it = %v, %v", ok, err)
	}
	if err := b.Unlock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	// Other prefixes and other names are other locks.
	other := redisTestStorage(t, addr, prefix+"-other", 0)
	if err := a.Lock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	if ok, err := other.TryLock(ctx, "grant"); !ok || err != nil {
		t.Fatalf("the same name under another prefix: TryLock = %v, %v", ok, err)
	}
	if ok, err := b.TryLock(ctx, "another"); !ok || err != nil {
		t.Fatalf("another name: TryLock = %v, %v", ok, err)
	}
	for _, u := range []struct {
		s    *redisCertStorage
		name string
	}{{a, "grant"}, {other, "grant"}, {b, "another"}} {
		if err := u.s.Unlock(ctx, u.name); err != nil {
			t.Error(err)
		}
	}
}

// A live holder keeps its lock past the TTL: the keep-alive renews it.
func TestRedisStorageLiveHolderKeepsLock(t *testing.T) {
	const ttl = 300 * time.Millisecond
	addr := startRedis(t)
	prefix := redisPrefixOf(t)
	a := redisTestStorage(t, addr, prefix, ttl)
	b := redisTestStorage(t, addr, prefix, ttl)
	ctx := context.Background()
	if err := a.Lock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*ttl)
	defer cancel()
	start := time.Now()
	err := b.Lock(wctx, "grant")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b.Lock while a holds and renews the lock = %v after %s, want the deadline", err, time.Since(start))
	}
	if err := a.Unlock(ctx, "grant"); err != nil {
		t.Fatalf("a lost a lock it kept alive for 5 TTLs: %v", err)
	}
}

// A holder that dies (its keep-alive stops, or its connection goes) loses
// the lock after the TTL, another storage gets it, and the late Unlock of
// the dead holder fails without releasing the new holder's lock.
func TestRedisStorageDeadHolderLosesLock(t *testing.T) {
	const ttl = 300 * time.Millisecond
	addr := startRedis(t)
	for _, how := range []string{"keep-alive stopped", "client closed"} {
		t.Run(how, func(t *testing.T) {
			prefix := redisPrefixOf(t)
			a := redisTestStorage(t, addr, prefix, ttl)
			b := redisTestStorage(t, addr, prefix, ttl)
			c := redisTestStorage(t, addr, prefix, ttl)
			attempts := redisAttempts(b)
			ctx := context.Background()
			if err := a.Lock(ctx, "grant"); err != nil {
				t.Fatal(err)
			}
			if how == "client closed" {
				a.client.Close()
			} else {
				a.stopKeepAlive("grant")
			}
			start := time.Now()
			wctx, cancel := context.WithTimeout(ctx, 20*ttl)
			defer cancel()
			if err := b.Lock(wctx, "grant"); err != nil {
				t.Fatalf("b did not get the dead holder's lock: %v", err)
			}
			waited := time.Since(start)
			if len(attempts) < 2 { // 1 failed + the successful one
				t.Fatalf("b got the lock at its first attempt: it was not held (waited %s)", waited)
			}
			t.Logf("the lock expired %s after its holder died (ttl %s)", waited, ttl)
			if err := a.Unlock(ctx, "grant"); err == nil {
				t.Fatal("the dead holder's Unlock succeeded")
			}
			if ok, err := c.TryLock(ctx, "grant"); ok || err != nil {
				t.Fatalf("after the dead holder's Unlock, TryLock = %v, %v: b's lock was released", ok, err)
			}
			if err := b.Unlock(ctx, "grant"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Unlock by a storage that does not hold the lock fails and leaves it held.
func TestRedisStorageUnlockByNonOwner(t *testing.T) {
	addr := startRedis(t)
	prefix := redisPrefixOf(t)
	a := redisTestStorage(t, addr, prefix, 0)
	b := redisTestStorage(t, addr, prefix, 0)
	ctx := context.Background()
	if err := b.Unlock(ctx, "grant"); err == nil {
		t.Fatal("unlocking a lock nobody holds succeeded")
	}
	if err := a.Lock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "grant"); err == nil {
		t.Fatal("b unlocked a's lock")
	}
	if ok, err := b.TryLock(ctx, "grant"); ok || err != nil {
		t.Fatalf("after b's Unlock, b.TryLock = %v, %v: a's lock was released", ok, err)
	}
	if err := a.Unlock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "grant"); err == nil {
		t.Fatal("a second Unlock succeeded")
	}
	if ok, err := b.TryLock(ctx, "grant"); !ok || err != nil {
		t.Fatalf("after a's Unlock, b.TryLock = %v, %v", ok, err)
	}
	if err := b.Unlock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
}

// flakyTestStorage is an oab_flaky storage in a temporary directory whose
// faults are flakyFaults(t.Name()), reset.
func flakyTestStorage(t *testing.T, control string) (*flakyCertStorage, *storageFaults) {
	t.Helper()
	f := flakyFaults(t.Name())
	f.reset()
	st, err := flakyStorage{Root: t.TempDir(), Name: t.Name(), Control: control}.CertMagicStorage()
	if err != nil {
		t.Fatal(err)
	}
	return st.(*flakyCertStorage), f
}

// flakyWantInjected fails unless err is an injected fault.
func flakyWantInjected(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, errFlakyInjected) || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("%s: error %v, want an injected fault", what, err)
	}
}

// The in-process faults: fail N then succeed, fail always until cleared,
// hang until the context is done, delay, and the counters.
func TestFlakyStorageFaults(t *testing.T) {
	st, f := flakyTestStorage(t, "")
	ctx := context.Background()
	if flakyFaults(t.Name()) != f {
		t.Fatal("flakyFaults returned another entry for the same name")
	}

	f.failStores(2)
	for i := 0; i < 2; i++ {
		flakyWantInjected(t, "Store", st.Store(ctx, "k", []byte("v")))
	}
	if st.Exists(ctx, "k") {
		t.Fatal("a failed Store stored")
	}
	if err := st.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("third Store: %v", err)
	}
	f.failLoads(1)
	_, err := st.Load(ctx, "k")
	flakyWantInjected(t, "Load", err)
	if b, err := st.Load(ctx, "k"); err != nil || string(b) != "v" {
		t.Fatalf("second Load = %q, %v", b, err)
	}
	if got, want := f.counts(), map[string]int{flakyStore: 3, flakyLoad: 2, flakyExists: 1}; !reflect.DeepEqual(got, want) {
		t.Fatalf("counts = %v, want %v", got, want)
	}

	// Lock fails until cleared.
	f.failLocks(-1)
	for i := 0; i < 3; i++ {
		flakyWantInjected(t, "Lock", st.Lock(ctx, "grant"))
	}
	f.clear()
	if err := st.Lock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}
	if err := st.Unlock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}

	// Lock hangs until its context is done: the deadline...
	f.setHang(flakyLock, true)
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = st.Lock(dctx, "grant")
	flakyWantInjected(t, "hanging Lock", err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging Lock = %v after %s, want the context's deadline", err, time.Since(start))
	}
	// ... or a cancellation, however long that takes.
	cctx, cancelLock := context.WithCancel(ctx)
	got := make(chan error, 1)
	n := f.count(flakyLock)
	go func() { got <- st.Lock(cctx, "grant") }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := f.waitCalls(wctx, flakyLock, n+1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		t.Fatalf("hanging Lock returned %v before its context was done", err)
	default:
	}
	cancelLock()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("hanging Lock = %v, want context.Canceled", err)
	}
	f.setHang(flakyLock, false)
	if ok, err := st.TryLock(ctx, "grant"); !ok || err != nil {
		t.Fatalf("TryLock after the hang = %v, %v", ok, err)
	}
	if err := st.Unlock(ctx, "grant"); err != nil {
		t.Fatal(err)
	}

	// A delay slows every operation, and gives up with the context.
	f.setDelay(100 * time.Millisecond)
	start = time.Now()
	if _, err := st.Stat(ctx, "k"); err != nil || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("delayed Stat = %v after %s, want success after 100ms", err, time.Since(start))
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer scancel()
	err = st.Store(sctx, "k", []byte("late"))
	flakyWantInjected(t, "Store cut short", err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Store cut short = %v, want the deadline", err)
	}
	f.setDelay(0)
	if b, err := st.Load(ctx, "k"); err != nil || string(b) != "v" {
		t.Fatalf("Load = %q, %v; the cut-short Store should not have stored", b, err)
	}

	// Another storage with the same name shares the faults; with no name,
	// a storage has its own.
	st2, _ := flakyStorage{Root: t.TempDir(), Name: t.Name()}.CertMagicStorage()
	private, _ := flakyStorage{Root: t.TempDir()}.CertMagicStorage()
	f.failStores(1)
	if err := private.Store(ctx, "k", nil); err != nil {
		t.Fatalf("a storage with no name got the faults: %v", err)
	}
	flakyWantInjected(t, "Store on a second storage of the same name", st2.Store(ctx, "k", nil))

	f.reset()
	if len(f.counts()) != 0 {
		t.Fatalf("counts after reset: %v", f.counts())
	}
}

// The control file, for child Caddy processes: read on every operation, a
// missing file means no faults, a bad one is an error (not an injected
// fault).
func TestFlakyStorageControlFile(t *testing.T) {
	control := filepath.Join(t.TempDir(), "faults.json")
	st, _ := flakyTestStorage(t, control)
	ctx := context.Background()

	if err := st.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("no control file: %v", err)
	}
	setFlakyControl(t, control, map[string]string{"store": "fail"})
	flakyWantInjected(t, "Store", st.Store(ctx, "k", []byte("w")))
	if b, err := st.Load(ctx, "k"); err != nil || string(b) != "v" {
		t.Fatalf("Load with store failing = %q, %v", b, err)
	}

	setFlakyControl(t, control, map[string]string{"load": "fail", "lock": "hang"})
	_, err := st.Load(ctx, "k")
	flakyWantInjected(t, "Load", err)
	lctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := st.Lock(lctx, "grant"); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errFlakyInjected) {
		t.Fatalf("Lock with lock hanging = %v", err)
	}

	setFlakyControl(t, control, map[string]string{"lock": "fail", "delay": "100ms"})
	start := time.Now()
	flakyWantInjected(t, "Lock", st.Lock(ctx, "grant"))
	if b, err := st.Load(ctx, "k"); err != nil || string(b) != "v" || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("delayed Lock then Load = %q, %v after %s, want 2 x 100ms", b, err, time.Since(start))
	}

	for _, bad := range []map[string]string{{"bogus": "fail"}, {"store": "sometimes"}, {"delay": "soon"}} {
		setFlakyControl(t, control, bad)
		err := st.Store(ctx, "k", []byte("v"))
		if err == nil || errors.Is(err, errFlakyInjected) || !strings.Contains(err.Error(), "control file") {
			t.Errorf("control %v: Store = %v, want a control file error", bad, err)
		}
	}

	setFlakyControl(t, control, nil)
	if _, err := os.Stat(control); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("setFlakyControl(nil) left the file: %v", err)
	}
	if err := st.Store(ctx, "k", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// oabAdaptGlobal adapts a Caddyfile of global options only.
func oabAdaptGlobal(t *testing.T, globals string) ([]byte, error) {
	t.Helper()
	cf := "{\n\tadmin off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n" + globals + "\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// oabLoadStorage adapts the globals, checks the adapted storage JSON, loads
// the config into Caddy (holding caddyMu until the test ends) and returns
// the storage Caddy made of it.
func oabLoadStorage(t *testing.T, globals string, wantJSON map[string]any) certmagic.Storage {
	t.Helper()
	cfg, err := oabAdaptGlobal(t, globals)
	if err != nil {
		t.Fatal(err)
	}
	var adapted struct {
		Storage map[string]any `json:"storage"`
	}
	if err := json.Unmarshal(cfg, &adapted); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(adapted.Storage, wantJSON) {
		t.Fatalf("adapted storage = %v, want %v\n%s", adapted.Storage, wantJSON, cfg)
	}
	caddyMu.Lock()
	if err := caddy.Load(cfg, true); err != nil {
		caddyMu.Unlock()
		t.Fatalf("caddy.Load: %v\n%s", err, cfg)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
		caddyMu.Unlock()
	})
	return caddy.ActiveContext().Storage()
}

// Both modules load through Caddy's own machinery, from the storage global
// option of a Caddyfile through its JSON to ctx.Storage().
func TestStorageModulesLoadThroughCaddy(t *testing.T) {
	ctx := context.Background()
	t.Run("oab_flaky", func(t *testing.T) {
		dir := t.TempDir()
		root, control := filepath.Join(dir, "storage"), filepath.Join(dir, "faults.json")
		f := flakyFaults(t.Name())
		f.reset()
		st := oabLoadStorage(t, fmt.Sprintf("\tstorage oab_flaky {\n\t\troot %s\n\t\tname %s\n\t\tcontrol %s\n\t}", root, t.Name(), control),
			map[string]any{"module": "oab_flaky", "root": root, "name": t.Name(), "control": control})
		if _, ok := st.(*flakyCertStorage); !ok {
			t.Fatalf("Caddy's storage is a %T", st)
		}
		f.failStores(1)
		flakyWantInjected(t, "Store through Caddy's storage", st.Store(ctx, "k", []byte("v")))
		if err := st.Store(ctx, "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(root, "k")); err != nil || string(b) != "v" {
			t.Fatalf("the file under root: %q, %v", b, err)
		}
		setFlakyControl(t, control, map[string]string{"load": "fail"})
		_, err := st.Load(ctx, "k")
		flakyWantInjected(t, "Load with the control file", err)
	})
	t.Run("oab_redis", func(t *testing.T) {
		addr := startRedis(t)
		prefix := redisPrefixOf(t)
		t.Cleanup(func() { // registered first, so it runs after caddy.Stop
			if n, ok := redisClients.References(addr); ok {
				t.Errorf("the pooled client outlived the config: %d references", n)
			}
		})
		st := oabLoadStorage(t, fmt.Sprintf("\tstorage oab_redis {\n\t\taddress %s\n\t\tprefix %s\n\t\tlock_ttl 3s\n\t}", addr, prefix),
			map[string]any{"module": "oab_redis", "address": addr, "prefix": prefix, "lock_ttl": float64(3 * time.Second)})
		rs, ok := st.(*redisCertStorage)
		if !ok {
			t.Fatalf("Caddy's storage is a %T", st)
		}
		if rs.ttl != 3*time.Second {
			t.Fatalf("lock ttl %s, want 3s", rs.ttl)
		}
		other := redisTestStorage(t, addr, prefix, 0)
		if err := st.Store(ctx, "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if b, err := other.Load(ctx, "k"); err != nil || string(b) != "v" {
			t.Fatalf("another client, same prefix: Load = %q, %v", b, err)
		}
		if err := st.Lock(ctx, "grant"); err != nil {
			t.Fatal(err)
		}
		if ok, err := other.TryLock(ctx, "grant"); ok || err != nil {
			t.Fatalf("TryLock while Caddy's storage holds the lock = %v, %v", ok, err)
		}
		if err := st.Unlock(ctx, "grant"); err != nil {
			t.Fatal(err)
		}
		if n, ok := redisClients.References(addr); !ok || n != 1 {
			t.Fatalf("pooled client references = %d, %v; want 1", n, ok)
		}
	})
	t.Run("Caddyfile errors", func(t *testing.T) {
		for _, bad := range []string{
			"storage oab_flaky",
			"storage oab_flaky {\n\t\tname x\n\t}",
			"storage oab_flaky /tmp/x {\n\t\tbogus y\n\t}",
			"storage oab_flaky /tmp/x {\n\t\tname\n\t}",
			"storage oab_redis {\n\t\tlock_ttl soon\n\t}",
			"storage oab_redis {\n\t\tbogus y\n\t}",
			"storage oab_redis {\n\t\tprefix a b\n\t}",
		} {
			if _, err := oabAdaptGlobal(t, "\t"+bad); err == nil {
				t.Errorf("adapting %q succeeded", bad)
			}
		}
	})
}
