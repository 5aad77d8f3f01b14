package oauthbearer

// caddy.storage.oab_flaky: a TEST-ONLY Caddy storage module that wraps the
// file-system storage and injects faults, so that tests can see what the
// plugin does when its storage fails, hangs or is slow. It lives in a
// _test.go file: it is compiled into the test binary (and so is available to
// the child Caddy processes that binary runs, see TestMain) and never into
// the shipped module.
//
// Faults are set two ways:
//
//   - in process, through flakyFaults(name), for a Caddy running inside the
//     test (the module's `name` picks the registry entry);
//   - across processes, through a JSON control file (the module's `control`)
//     that the storage reads on every operation, written with
//     setFlakyControl.
//
// Caddyfile:
//
//	{
//		storage oab_flaky {
//			root    /tmp/x/storage
//			name    TestSomething
//			control /tmp/x/faults.json
//		}
//	}

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(flakyStorage{})
}

// Operation names: the keys of faults, of call counters and of the control
// file's fields.
const (
	flakyStore  = "store"
	flakyLoad   = "load"
	flakyDelete = "delete"
	flakyExists = "exists"
	flakyList   = "list"
	flakyStat   = "stat"
	flakyLock   = "lock" // Lock and TryLock
	flakyUnlock = "unlock"
)

var flakyOps = []string{flakyStore, flakyLoad, flakyDelete, flakyExists, flakyList, flakyStat, flakyLock, flakyUnlock}

// errFlakyInjected is wrapped by every error the module injects (failures,
// hangs and delays cut short by the context), so that a test can tell an
// injected fault from a real one with errors.Is.
var errFlakyInjected = errors.New("oab_flaky: injected fault")

// flakyStorage is the module's configuration: caddy.storage.oab_flaky.
type flakyStorage struct {
	// Root is the directory of the wrapped certmagic.FileStorage.
	Root string `json:"root,omitempty"`
	// Name selects the in-process fault registry entry (flakyFaults). Empty:
	// the storage has faults of its own that no test can reach.
	Name string `json:"name,omitempty"`
	// Control is the path of a JSON control file read on every operation
	// (see flakyControl); a missing file means no faults.
	Control string `json:"control,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (flakyStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.oab_flaky",
		New: func() caddy.Module { return new(flakyStorage) },
	}
}

// CertMagicStorage returns the fault-injecting storage.
func (s flakyStorage) CertMagicStorage() (certmagic.Storage, error) {
	if s.Root == "" {
		return nil, errors.New("oab_flaky: root is required")
	}
	faults := &storageFaults{}
	if s.Name != "" {
		faults = flakyFaults(s.Name)
	}
	return &flakyCertStorage{fs: &certmagic.FileStorage{Path: s.Root}, name: s.Name, faults: faults, control: s.Control}, nil
}

// UnmarshalCaddyfile reads
//
//	storage oab_flaky [<root>] {
//		root    <dir>
//		name    <registry name>
//		control <path of the JSON control file>
//	}
func (s *flakyStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		s.Root = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *string
		switch d.Val() {
		case "root":
			dst = &s.Root
		case "name":
			dst = &s.Name
		case "control":
			dst = &s.Control
		default:
			return d.Errf("oab_flaky: unrecognized parameter '%s'", d.Val())
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		*dst = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	if s.Root == "" {
		return d.Err("oab_flaky: missing root")
	}
	return nil
}

// storageFaults is the in-process control of one or more oab_flaky
// storages (all those configured with the same name): the faults to inject
// and how often each operation was called. Safe for concurrent use.
type storageFaults struct {
	mu      sync.Mutex
	fail    map[string]int  // op → calls left to fail; < 0: every call
	hang    map[string]bool // op → block until the context is done
	delay   time.Duration   // every operation waits this long first
	calls   map[string]int
	keys    map[string]int // op + " " + key → calls
	changed chan struct{}  // closed (and replaced) when calls changes
}

// flakyRegistry maps module names to their faults.
var flakyRegistry = struct {
	sync.Mutex
	m map[string]*storageFaults
}{m: map[string]*storageFaults{}}

// flakyFaults returns the faults of the oab_flaky storages configured with
// this name, creating the entry if needed. Use a name unique to the test
// (t.Name()), or reset it first.
func flakyFaults(name string) *storageFaults {
	flakyRegistry.Lock()
	defer flakyRegistry.Unlock()
	f := flakyRegistry.m[name]
	if f == nil {
		f = &storageFaults{}
		flakyRegistry.m[name] = f
	}
	return f
}

// failNext makes the next n calls of op fail with an injected error; n < 0
// makes every call fail until clear or reset. n == 0 stops failing.
func (f *storageFaults) failNext(op string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		f.fail = map[string]int{}
	}
	f.fail[op] = n
}

// failStores makes the next n Store calls fail.
func (f *storageFaults) failStores(n int) { f.failNext(flakyStore, n) }

// failLoads makes the next n Load calls fail.
func (f *storageFaults) failLoads(n int) { f.failNext(flakyLoad, n) }

// failLocks makes every Lock (and TryLock) fail until clear: n < 0 for all,
// or the next n.
func (f *storageFaults) failLocks(n int) { f.failNext(flakyLock, n) }

// setHang makes op (typically flakyLock) block until its context is done,
// then return the context's error, wrapped; on false it stops hanging.
func (f *storageFaults) setHang(op string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hang == nil {
		f.hang = map[string]bool{}
	}
	f.hang[op] = on
}

// setDelay makes every operation wait d (or until its context is done)
// before doing anything; 0 removes the delay.
func (f *storageFaults) setDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay = d
}

// clear removes every fault; the counters stay.
func (f *storageFaults) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.hang, f.delay = nil, nil, 0
}

// reset removes every fault and zeroes the counters.
func (f *storageFaults) reset() {
	f.clear()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls, f.keys = nil, nil
	f.notifyLocked()
}

// count returns how many times op was called (faulty calls included).
func (f *storageFaults) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// countKey returns how many times op was called on key (a storage key, or
// a lock name).
func (f *storageFaults) countKey(op, key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keys[op+" "+key]
}

// counts returns a copy of every operation's call count.
func (f *storageFaults) counts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.calls))
	for op, n := range f.calls {
		m[op] = n
	}
	return m
}

// waitCalls blocks until op has been called at least n times (counting from
// the last reset), or ctx is done. With it a test synchronises on the
// storage being reached, e.g. a Lock being under way, without sleeping.
func (f *storageFaults) waitCalls(ctx context.Context, op string, n int) error {
	for {
		f.mu.Lock()
		if f.calls[op] >= n {
			f.mu.Unlock()
			return nil
		}
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d %s calls (%d so far): %w", n, op, f.count(op), ctx.Err())
		}
	}
}

func (f *storageFaults) notifyLocked() {
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
}

// enter counts a call of op on key and returns the fault to inject:
// "fail", "hang" or "", and the delay.
func (f *storageFaults) enter(op, key string) (fault string, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls, f.keys = map[string]int{}, map[string]int{}
	}
	f.calls[op]++
	f.keys[op+" "+key]++
	f.notifyLocked()
	switch n := f.fail[op]; {
	case n > 0:
		f.fail[op] = n - 1
		fault = "fail"
	case n < 0:
		fault = "fail"
	case f.hang[op]:
		fault = "hang"
	}
	return fault, f.delay
}

// flakyControl is the control file: each operation name (flakyStore, ...)
// may be set to "fail" (every call fails) or "hang" (every call blocks until
// its context is done); "delay" is a Go duration every operation waits. For
// example {"store":"fail","lock":"hang","delay":"200ms"}.
type flakyControl map[string]string

// setFlakyControl writes the control file at path atomically (a temporary
// file renamed over it), so that a storage reading it concurrently sees the
// old or the new faults, never a partial file. nil removes the file: no
// faults.
func setFlakyControl(t *testing.T, path string, faults map[string]string) {
	t.Helper()
	if faults == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		return
	}
	b, err := json.Marshal(faults)
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flaky-control-*")
	if err != nil {
		t.Fatal(err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		t.Fatalf("writing %s: %v %v", tmp.Name(), werr, cerr)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		t.Fatal(err)
	}
}

// readFlakyControl reads the control file: the fault for op and the delay.
func readFlakyControl(path, op string) (fault string, delay time.Duration, err error) {
	if path == "" {
		return "", 0, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("oab_flaky: reading control file: %w", err)
	}
	var c flakyControl
	if err := json.Unmarshal(b, &c); err != nil {
		return "", 0, fmt.Errorf("oab_flaky: control file %s: %w", path, err)
	}
	for k := range c {
		if k != "delay" && !slices.Contains(flakyOps, k) {
			return "", 0, fmt.Errorf("oab_flaky: control file %s: unknown field %q", path, k)
		}
	}
	if d := c["delay"]; d != "" {
		if delay, err = time.ParseDuration(d); err != nil {
			return "", 0, fmt.Errorf("oab_flaky: control file %s: delay: %w", path, err)
		}
	}
	switch fault = c[op]; fault {
	case "", "fail", "hang":
	default:
		return "", 0, fmt.Errorf("oab_flaky: control file %s: %s: %q is not fail or hang", path, op, fault)
	}
	return fault, delay, nil
}

// flakyCertStorage is the certmagic.Storage of the module: a FileStorage
// behind a fault check on every operation.
type flakyCertStorage struct {
	fs      *certmagic.FileStorage
	name    string
	faults  *storageFaults
	control string
}

// inject counts the call and applies the faults in effect, in-process and
// from the control file: the delay first, then a failure or a hang. A
// non-nil error means the operation must not happen.
func (s *flakyCertStorage) inject(ctx context.Context, op, key string) error {
	fault, delay := s.faults.enter(op, key)
	cfault, cdelay, err := readFlakyControl(s.control, op)
	if err != nil {
		return err
	}
	if fault == "" {
		fault = cfault
	}
	delay = max(delay, cdelay)
	if delay > 0 {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("%w: delay of %s %q cut short: %w", errFlakyInjected, op, key, ctx.Err())
		}
	}
	switch fault {
	case "fail":
		return fmt.Errorf("%w: %s %q fails", errFlakyInjected, op, key)
	case "hang":
		<-ctx.Done()
		return fmt.Errorf("%w: %s %q hung until: %w", errFlakyInjected, op, key, ctx.Err())
	}
	return nil
}

func (s *flakyCertStorage) Store(ctx context.Context, key string, value []byte) error {
	if err := s.inject(ctx, flakyStore, key); err != nil {
		return err
	}
	return s.fs.Store(ctx, key, value)
}

func (s *flakyCertStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := s.inject(ctx, flakyLoad, key); err != nil {
		return nil, err
	}
	return s.fs.Load(ctx, key)
}

func (s *flakyCertStorage) Delete(ctx context.Context, key string) error {
	if err := s.inject(ctx, flakyDelete, key); err != nil {
		return err
	}
	return s.fs.Delete(ctx, key)
}

// Exists answers false when a fault is injected (it cannot return an error).
func (s *flakyCertStorage) Exists(ctx context.Context, key string) bool {
	if err := s.inject(ctx, flakyExists, key); err != nil {
		return false
	}
	return s.fs.Exists(ctx, key)
}

func (s *flakyCertStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	if err := s.inject(ctx, flakyList, path); err != nil {
		return nil, err
	}
	return s.fs.List(ctx, path, recursive)
}

func (s *flakyCertStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := s.inject(ctx, flakyStat, key); err != nil {
		return certmagic.KeyInfo{}, err
	}
	return s.fs.Stat(ctx, key)
}

func (s *flakyCertStorage) Lock(ctx context.Context, name string) error {
	if err := s.inject(ctx, flakyLock, name); err != nil {
		return err
	}
	return s.fs.Lock(ctx, name)
}

// TryLock has the faults of Lock (and counts as a lock call).
func (s *flakyCertStorage) TryLock(ctx context.Context, name string) (bool, error) {
	if err := s.inject(ctx, flakyLock, name); err != nil {
		return false, err
	}
	return s.fs.TryLock(ctx, name)
}

func (s *flakyCertStorage) Unlock(ctx context.Context, name string) error {
	if err := s.inject(ctx, flakyUnlock, name); err != nil {
		return err
	}
	return s.fs.Unlock(ctx, name)
}

func (s *flakyCertStorage) String() string {
	return fmt.Sprintf("oab_flaky(%s):%s", s.name, s.fs.Path)
}

// Interface guards
var (
	_ caddy.StorageConverter = (*flakyStorage)(nil)
	_ caddyfile.Unmarshaler  = (*flakyStorage)(nil)
	_ certmagic.Storage      = (*flakyCertStorage)(nil)
	_ certmagic.TryLocker    = (*flakyCertStorage)(nil)
)
