package oauthbearer

// caddy.storage.oab_redis: a TEST-ONLY Caddy storage module keeping
// Caddy's storage in Redis, so that tests run the plugin against a network
// storage whose semantics differ from the file system's: no atomic rename,
// no directories (only keys), and locks that are leases, which expire unless
// their holder keeps them alive. It lives in a _test.go file: compiled into
// the test binary (so available to the child Caddy processes it runs, see
// TestMain), never into the shipped module. startRedis runs a redis-server
// for a test.
//
// Caddyfile:
//
//	{
//		storage oab_redis {
//			address  127.0.0.1:6379
//			prefix   t1
//			lock_ttl 3s
//		}
//	}
//
// Layout in Redis, under "oab:<prefix>:":
//
//	d:<key>   a hash: v = the value, m = modified time (Unix ns)
//	i         a sorted set of every stored key (all scores 0, so ordered
//	          lexically): the "directories" are ranges of it
//	l:<name>  a lock: a random token of its holder, with a TTL

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

func init() {
	caddy.RegisterModule(redisStorage{})
}

const (
	redisDefaultAddress = "127.0.0.1:6379"
	redisDefaultLockTTL = 5 * time.Second
	redisMinLockTTL     = 30 * time.Millisecond
	// redisLockPoll is how often a blocked Lock tries again.
	redisLockPoll = 50 * time.Millisecond
)

// redisStorage is the module's configuration: caddy.storage.oab_redis.
type redisStorage struct {
	// Address of the Redis server, host:port. Default 127.0.0.1:6379.
	Address string `json:"address,omitempty"`
	// Prefix namespaces every key, so that tests sharing a server do not
	// see each other's data.
	Prefix string `json:"prefix,omitempty"`
	// LockTTL is the lease of a lock: a holder that stops renewing it (it
	// died) loses it after this long. Default 5s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`

	pooled []string // client pool keys taken by CertMagicStorage, released by Cleanup
}

// CaddyModule returns the Caddy module information.
func (redisStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.oab_redis",
		New: func() caddy.Module { return new(redisStorage) },
	}
}

// redisClients shares one client per address between the configurations
// using it, so that a config reload does not close the client under the
// old configuration's last operations.
var redisClients = caddy.NewUsagePool()

// redisPooledClient is a client in redisClients.
type redisPooledClient struct{ *redis.Client }

func (c redisPooledClient) Destruct() error { return c.Close() }

// CertMagicStorage returns a storage over the configured server. Each call
// returns a storage with its own lock ownership, as a separate process has.
func (s *redisStorage) CertMagicStorage() (certmagic.Storage, error) {
	ttl := time.Duration(s.LockTTL)
	if ttl == 0 {
		ttl = redisDefaultLockTTL
	}
	if ttl < redisMinLockTTL {
		return nil, fmt.Errorf("oab_redis: lock_ttl %s is below %s", ttl, redisMinLockTTL)
	}
	addr := s.Address
	if addr == "" {
		addr = redisDefaultAddress
	}
	v, _, err := redisClients.LoadOrNew(addr, func() (caddy.Destructor, error) {
		return redisPooledClient{redis.NewClient(redisOptions(addr))}, nil
	})
	if err != nil {
		return nil, err
	}
	s.pooled = append(s.pooled, addr)
	return newRedisCertStorage(v.(redisPooledClient).Client, addr, s.Prefix, ttl), nil
}

// Cleanup releases the clients taken by CertMagicStorage (Caddy calls it
// when the configuration that loaded the module stops).
func (s *redisStorage) Cleanup() error {
	var errs []error
	for _, addr := range s.pooled {
		if _, err := redisClients.Delete(addr); err != nil {
			errs = append(errs, err)
		}
	}
	s.pooled = nil
	return errors.Join(errs...)
}

// UnmarshalCaddyfile reads
//
//	storage oab_redis [<address>] {
//		address  <host:port>
//		prefix   <namespace>
//		lock_ttl <duration>
//	}
func (s *redisStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		s.Address = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "address":
			s.Address = val
		case "prefix":
			s.Prefix = val
		case "lock_ttl":
			ttl, err := caddy.ParseDuration(val)
			if err != nil {
				return d.Errf("oab_redis: lock_ttl: %v", err)
			}
			s.LockTTL = caddy.Duration(ttl)
		default:
			return d.Errf("oab_redis: unrecognized parameter '%s'", opt)
		}
	}
	return nil
}

// redisOptions are the client options for addr: RESP2 and no handshake
// extras, so that any Redis from 6 on will do; short timeouts, so that a
// dead server shows as errors rather than as hangs.
func redisOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                     addr,
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		DialTimeout:              2 * time.Second,
		ReadTimeout:              2 * time.Second,
		WriteTimeout:             2 * time.Second,
	}
}

// redisCertStorage is the certmagic.Storage of the module.
type redisCertStorage struct {
	client *redis.Client
	addr   string
	prefix string // of every Redis key: "oab:<prefix>:"
	ttl    time.Duration

	mu   sync.Mutex
	held map[string]*redisHeldLock // locks this storage took and has not unlocked

	// lockAttempted, when set (before the storage is used), is called
	// after each attempt of Lock or TryLock to take a lock: tests
	// synchronise on it.
	lockAttempted func(name string, acquired bool)
}

// redisHeldLock is a lock held by this storage, with its keep-alive.
type redisHeldLock struct {
	token    string
	stop     chan struct{} // closed: the keep-alive stops
	stopOnce sync.Once
	done     chan struct{} // closed by the keep-alive when it has stopped
}

func newRedisCertStorage(client *redis.Client, addr, prefix string, ttl time.Duration) *redisCertStorage {
	p := "oab:"
	if prefix != "" {
		p += prefix + ":"
	}
	return &redisCertStorage{client: client, addr: addr, prefix: p, ttl: ttl, held: map[string]*redisHeldLock{}}
}

func (s *redisCertStorage) dataKey(key string) string  { return s.prefix + "d:" + key }
func (s *redisCertStorage) indexKey() string           { return s.prefix + "i" }
func (s *redisCertStorage) lockKey(name string) string { return s.prefix + "l:" + name }

// redisUnder returns the ZRANGEBYLEX bounds of the keys under dir: every key
// if dir is "" (the root), else the keys that start with "dir/" (which
// sort at or after "dir/" and before "dir0", '0' following '/').
func redisUnder(dir string) (lo, hi string) {
	if dir == "" {
		return "-", "+"
	}
	return "[" + dir + "/", "(" + dir + "0"
}

func (s *redisCertStorage) notExist(op, key string) error {
	return fmt.Errorf("oab_redis: %s %q: %w", op, key, fs.ErrNotExist)
}

// Store writes the value and its modified time, and indexes the key, in
// one transaction.
func (s *redisCertStorage) Store(ctx context.Context, key string, value []byte) error {
	if key == "" {
		return errors.New("oab_redis: store: empty key")
	}
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.dataKey(key), "v", value, "m", time.Now().UnixNano())
		p.ZAdd(ctx, s.indexKey(), redis.Z{Member: key})
		return nil
	})
	if err != nil {
		return fmt.Errorf("oab_redis: store %q: %w", key, err)
	}
	return nil
}

// Load returns the value at key; fs.ErrNotExist (wrapped) if there is none.
func (s *redisCertStorage) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := s.client.HGet(ctx, s.dataKey(key), "v").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, s.notExist("load", key)
	}
	if err != nil {
		return nil, fmt.Errorf("oab_redis: load %q: %w", key, err)
	}
	return b, nil
}

// redisDeleteScript deletes a key and every key under it (KEYS[1]: the
// index; ARGV: data key prefix, key, ZRANGEBYLEX bounds of the keys under
// it), atomically. It names keys it is not passed in KEYS, which a Redis
// cluster would refuse: this storage is for a single server.
var redisDeleteScript = redis.NewScript(`
local n = 0
if ARGV[2] ~= "" then
	n = n + redis.call("DEL", ARGV[1] .. ARGV[2])
	redis.call("ZREM", KEYS[1], ARGV[2])
end
for _, k in ipairs(redis.call("ZRANGEBYLEX", KEYS[1], ARGV[3], ARGV[4])) do
	n = n + redis.call("DEL", ARGV[1] .. k)
	redis.call("ZREM", KEYS[1], k)
end
return n
`)

// Delete deletes key and, if it is a directory, every key under it. A
// missing key is not an error.
func (s *redisCertStorage) Delete(ctx context.Context, key string) error {
	lo, hi := redisUnder(key)
	err := redisDeleteScript.Run(ctx, s.client, []string{s.indexKey()}, s.dataKey(""), key, lo, hi).Err()
	if err != nil {
		return fmt.Errorf("oab_redis: delete %q: %w", key, err)
	}
	return nil
}

// isDir reports whether any key is under dir.
func (s *redisCertStorage) isDir(ctx context.Context, dir string) (bool, error) {
	lo, hi := redisUnder(dir)
	keys, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.indexKey(), Start: lo, Stop: hi, ByLex: true, Count: 1}).Result()
	return len(keys) > 0, err
}

// Exists reports whether key is a file or a directory.
func (s *redisCertStorage) Exists(ctx context.Context, key string) bool {
	n, err := s.client.Exists(ctx, s.dataKey(key)).Result()
	if err != nil {
		return false
	}
	if n > 0 {
		return true
	}
	dir, err := s.isDir(ctx, key)
	return err == nil && dir
}

// List returns the keys under dir, as FileStorage does: the entries
// directly in it (files and directories), or with recursive every file and
// directory below it. A dir that does not exist is fs.ErrNotExist; "" is
// the root, which always exists.
func (s *redisCertStorage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	lo, hi := redisUnder(dir)
	keys, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.indexKey(), Start: lo, Stop: hi, ByLex: true}).Result()
	if err != nil {
		return nil, fmt.Errorf("oab_redis: list %q: %w", dir, err)
	}
	if len(keys) == 0 && dir != "" {
		if n, err := s.client.Exists(ctx, s.dataKey(dir)).Result(); err != nil {
			return nil, fmt.Errorf("oab_redis: list %q: %w", dir, err)
		} else if n == 0 {
			return nil, s.notExist("list", dir)
		}
		return nil, nil // a file: nothing under it
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		rel := k
		if dir != "" {
			rel = strings.TrimPrefix(k, dir+"/")
		}
		parts := strings.Split(rel, "/")
		n := len(parts)
		if !recursive {
			n = 1
		}
		for i := 1; i <= n; i++ {
			e := path.Join(dir, strings.Join(parts[:i], "/"))
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Stat describes key: a file with its size and modified time, or a
// directory (no size or time).
func (s *redisCertStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	var size *redis.IntCmd
	var mtime *redis.StringCmd
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		size = p.HStrLen(ctx, s.dataKey(key), "v")
		mtime = p.HGet(ctx, s.dataKey(key), "m")
		return nil
	})
	switch {
	case err == nil:
		ns, err := mtime.Int64()
		if err != nil {
			return certmagic.KeyInfo{}, fmt.Errorf("oab_redis: stat %q: modified time: %w", key, err)
		}
		return certmagic.KeyInfo{Key: key, Modified: time.Unix(0, ns), Size: size.Val(), IsTerminal: true}, nil
	case !errors.Is(err, redis.Nil):
		return certmagic.KeyInfo{}, fmt.Errorf("oab_redis: stat %q: %w", key, err)
	}
	dir, err := s.isDir(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("oab_redis: stat %q: %w", key, err)
	}
	if !dir {
		return certmagic.KeyInfo{}, s.notExist("stat", key)
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
}

// redisExtendScript renews a lock's TTL (ARGV[2] ms) if ARGV[1] still
// holds it; 1 if it did, else 0.
var redisExtendScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)

// redisUnlockScript deletes a lock if ARGV[1] holds it; 1 if it did, else 0.
var redisUnlockScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// tryLock makes one attempt at the lock; on success the lock is recorded
// as held and kept alive.
func (s *redisCertStorage) tryLock(ctx context.Context, name string) (bool, error) {
	token := randomHex(16)
	err := s.client.Do(ctx, "SET", s.lockKey(name), token, "NX", "PX", s.ttl.Milliseconds()).Err()
	acquired := err == nil
	if errors.Is(err, redis.Nil) { // NX: someone holds it
		err = nil
	}
	if s.lockAttempted != nil && err == nil {
		s.lockAttempted(name, acquired)
	}
	if err != nil {
		return false, fmt.Errorf("oab_redis: lock %q: %w", name, err)
	}
	if !acquired {
		return false, nil
	}
	h := &redisHeldLock{token: token, stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	old := s.held[name]
	s.held[name] = h
	s.mu.Unlock()
	if old != nil {
		// Ours before, but it expired (else SET NX would have failed): its
		// keep-alive has nothing left to keep.
		old.halt()
	}
	go s.keepAlive(name, h)
	return true, nil
}

// Lock takes the lock, trying every redisLockPoll until it gets it or ctx
// is done (then it returns ctx.Err()).
func (s *redisCertStorage) Lock(ctx context.Context, name string) error {
	var tick *time.Ticker
	for {
		ok, err := s.tryLock(ctx, name)
		if ctx.Err() != nil {
			if ok { // taken as ctx ended: give it back
				s.Unlock(context.WithoutCancel(ctx), name)
			}
			return ctx.Err()
		}
		if err != nil || ok {
			return err
		}
		if tick == nil {
			tick = time.NewTicker(redisLockPoll)
			defer tick.Stop()
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TryLock makes a single attempt at the lock.
func (s *redisCertStorage) TryLock(ctx context.Context, name string) (bool, error) {
	return s.tryLock(ctx, name)
}

// keepAlive renews the lock every ttl/3 while it is held, until stopped or
// until the lock turns out to be lost (expired and maybe taken by another).
// A failed renewal (Redis unreachable) is retried at the next tick; if they
// go on failing the lock expires, as it would for a dead holder.
func (s *redisCertStorage) keepAlive(name string, h *redisHeldLock) {
	defer close(h.done)
	tick := time.NewTicker(s.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.ttl/3)
		n, err := redisExtendScript.Run(ctx, s.client, []string{s.lockKey(name)}, h.token, s.ttl.Milliseconds()).Int()
		cancel()
		if (err == nil && n == 0) || errors.Is(err, redis.ErrClosed) {
			return // lost, or this storage's client is gone
		}
	}
}

// halt stops the keep-alive and waits for it.
func (h *redisHeldLock) halt() {
	h.stopOnce.Do(func() { close(h.stop) })
	<-h.done
}

// release forgets a held lock and stops its keep-alive; nil if this
// storage does not hold it.
func (s *redisCertStorage) release(name string) *redisHeldLock {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h != nil {
		h.halt()
	}
	return h
}

// Unlock releases a lock this storage holds. It is an error to unlock a
// lock this storage does not hold (never took, or lost because it
// expired); such a lock is left as it is.
func (s *redisCertStorage) Unlock(ctx context.Context, name string) error {
	h := s.release(name)
	if h == nil {
		return fmt.Errorf("oab_redis: unlock %q: not locked by this storage", name)
	}
	n, err := redisUnlockScript.Run(ctx, s.client, []string{s.lockKey(name)}, h.token).Int()
	if err != nil {
		return fmt.Errorf("oab_redis: unlock %q (it expires after %s): %w", name, s.ttl, err)
	}
	if n == 0 {
		return fmt.Errorf("oab_redis: unlock %q: the lock was lost (it expired after %s without renewal, and may be another's now)", name, s.ttl)
	}
	return nil
}

// stopKeepAlive is a test hook: the holder "dies" (as if its process were
// killed). Its keep-alive stops, it does not unlock, and the lock expires
// after ttl. The storage still records the lock, so a later Unlock shows
// what a holder that lost its lock gets.
func (s *redisCertStorage) stopKeepAlive(name string) {
	s.mu.Lock()
	h := s.held[name]
	s.mu.Unlock()
	if h != nil {
		h.halt()
	}
}

func (s *redisCertStorage) String() string {
	return "oab_redis:" + s.addr + "/" + s.prefix
}

// startRedis runs a redis-server for the test on a free loopback port, with
// no persistence, and returns its address once it answers PING. It is
// stopped when the test ends.
func startRedis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is needed by the oab_redis test storage: apt-get install redis-server (%v)", err)
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "redis.log")
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", logFile)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	client := redis.NewClient(redisOptions(addr))
	defer client.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := client.Ping(ctx).Err()
		cancel()
		if err == nil {
			return addr
		}
		logs, _ := os.ReadFile(logFile)
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer PING within 10s: %v\n%s", addr, err, logs)
		}
		select {
		case <-exited:
			t.Fatalf("redis-server on %s exited: %v\n%s", addr, waitErr, logs)
		case <-time.After(20 * time.Millisecond): // poll again
		}
	}
}

// redisTestStorage returns a storage over the server at addr with its own
// client (closed when the test ends), as another process would have. Keys
// are under prefix; ttl 0 is the default lock TTL.
func redisTestStorage(t testing.TB, addr, prefix string, ttl time.Duration) *redisCertStorage {
	t.Helper()
	if ttl == 0 {
		ttl = redisDefaultLockTTL
	}
	client := redis.NewClient(redisOptions(addr))
	s := newRedisCertStorage(client, addr, prefix, ttl)
	t.Cleanup(func() {
		s.mu.Lock()
		names := make([]string, 0, len(s.held))
		for name := range s.held {
			names = append(names, name)
		}
		s.mu.Unlock()
		for _, name := range names {
			s.release(name) // stop keep-alives before the client goes
		}
		client.Close()
	})
	return s
}

// redisPrefixOf is a fresh key namespace for a test.
func redisPrefixOf(t testing.TB) string {
	return strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "-" + randomHex(4)
}

// Interface guards
var (
	_ caddy.StorageConverter = (*redisStorage)(nil)
	_ caddy.CleanerUpper     = (*redisStorage)(nil)
	_ caddyfile.Unmarshaler  = (*redisStorage)(nil)
	_ certmagic.Storage      = (*redisCertStorage)(nil)
	_ certmagic.TryLocker    = (*redisCertStorage)(nil)
)
