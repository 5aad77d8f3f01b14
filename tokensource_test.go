package oauthbearer

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// fakeClock is a settable clock for the token source.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// countingAS issues token-<n> with the given lifetime; while gate holds a
// channel, requests wait for it to be closed; fail makes it answer 503.
type countingAS struct {
	*httptest.Server
	n    atomic.Int64
	gate atomic.Pointer[chan struct{}]
	fail atomic.Bool
	life int
}

func newCountingAS(t *testing.T, life int) *countingAS {
	as := &countingAS{life: life}
	as.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g := as.gate.Load(); g != nil {
			select {
			case <-*g:
			case <-r.Context().Done():
				return
			}
		}
		n := as.n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if as.fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":"temporarily_unavailable"}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("token-%d", n), "expires_in": as.life})
	}))
	t.Cleanup(as.Close)
	return as
}

func (as *countingAS) hold() func() {
	ch := make(chan struct{})
	as.gate.Store(&ch)
	return func() { as.gate.Store(nil); close(ch) }
}

func newTestSource(t *testing.T, as *countingAS, clock *fakeClock) *tokenSource {
	s := newTokenSource(sourceConfig{Provider: "test", TokenURL: as.URL, ClientID: "id", clientSecret: "secret",
		Format: "form", ClientAuth: "basic", RefreshBefore: 10 * time.Second, DefaultLifetime: time.Minute,
		Timeout: 5 * time.Second})
	s.now = clock.now
	t.Cleanup(func() { s.Destruct() })
	return s
}

func mustToken(t *testing.T, s *tokenSource) *token {
	t.Helper()
	tok, err := s.Token(context.Background(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// In the refresh window the cached token is served at once while one
// background fetch replaces it.
func TestTokenSourceRefreshAheadDoesNotBlock(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newTestSource(t, as, clock)

	first := mustToken(t, s)
	if first.value != "token-1" || as.n.Load() != 1 {
		t.Fatalf("first token %q after %d requests", first.value, as.n.Load())
	}
	clock.add(95 * time.Second) // refresh window: 90s..100s
	release := as.hold()
	for i := 0; i < 50; i++ {
		if tok := mustToken(t, s); tok != first {
			t.Fatalf("request %d in the refresh window got %q, want the cached token", i, tok.value)
		}
	}
	release()
	waitFor(t, func() bool { return s.cur.Load() != first })
	if got := mustToken(t, s).value; got != "token-2" {
		t.Errorf("after refresh got %q, want token-2", got)
	}
	if n := as.n.Load(); n != 2 {
		t.Errorf("token requests = %d, want 2 (one background refresh for 50 requests)", n)
	}
}

// An expired token is never returned: past expiry callers wait for a fetch,
// and when it fails they get the error.
func TestTokenSourceNeverServesExpiredToken(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newTestSource(t, as, clock)
	mustToken(t, s)

	as.fail.Store(true)
	clock.add(101 * time.Second)
	tok, err := s.Token(context.Background(), zap.NewNop())
	if err == nil {
		t.Fatalf("got token %q after expiry with the provider failing", tok.value)
	}
	te, ok := err.(*TokenError)
	if !ok || te.Code != "temporarily_unavailable" || te.Provider != "test" {
		t.Errorf("error = %#v, want the provider's temporarily_unavailable", err)
	}
	// While backing off, callers get the error at once, with the wait,
	// and the provider is left alone.
	as.fail.Store(false)
	_, err = s.Token(context.Background(), zap.NewNop())
	te, ok = err.(*TokenError)
	if !ok || !te.Backoff || te.RetryAfter <= 0 || te.Code != "temporarily_unavailable" {
		t.Fatalf("during backoff got %#v, want a backoff error carrying the last code", err)
	}
	if n := as.n.Load(); n != 2 {
		t.Errorf("token requests during backoff: %d, want 2", n)
	}
	clock.add(te.RetryAfter)
	if got := mustToken(t, s).value; got != "token-3" {
		t.Errorf("after the backoff got %q, want token-3", got)
	}
}

// Many waiters with no token share one fetch; one that gives up leaves
// without disturbing the others.
func TestTokenSourceSingleflightAndCancellation(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newTestSource(t, as, clock)
	release := as.hold()

	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := s.Token(ctx, zap.NewNop())
		gaveUp <- err
	}()
	var wg sync.WaitGroup
	results := make(chan string, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := s.Token(context.Background(), zap.NewNop())
			if err != nil {
				results <- err.Error()
				return
			}
			results <- tok.value
		}()
	}
	cancel()
	if err := <-gaveUp; err != context.Canceled {
		t.Errorf("cancelled caller got %v, want context.Canceled", err)
	}
	release()
	wg.Wait()
	close(results)
	for r := range results {
		if r != "token-1" {
			t.Errorf("waiter got %q, want token-1", r)
		}
	}
	if n := as.n.Load(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
}

// Handlers with equal configurations share one source through the pool;
// the source is destroyed, and its fetches cancelled, with the last user.
func TestSourcePoolSharingAndDestruct(t *testing.T) {
	as := newCountingAS(t, 100)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mk := func(scope string) *Handler {
		h := &Handler{TokenURL: as.URL, ClientID: "id", ClientSecret: "secret", Scopes: []string{scope}}
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		return h
	}
	a, b, other := mk("read"), mk("read"), mk("write")
	if a.source != b.source {
		t.Error("equal configurations got different token sources")
	}
	if a.source == other.source {
		t.Error("different scopes share a token source")
	}
	src := a.source
	if refs, _ := sources.References(a.cfg.key()); refs != 2 {
		t.Errorf("references = %d, want 2", refs)
	}
	a.Cleanup()
	if src.ctx.Err() != nil {
		t.Fatal("source destroyed while another handler still uses it")
	}
	// A fetch in flight when the last user goes is cancelled.
	release := as.hold()
	defer release()
	errc := make(chan error, 1)
	go func() { _, err := src.Token(context.Background(), zap.NewNop()); errc <- err }()
	waitFor(t, func() bool { return as.gate.Load() != nil })
	time.Sleep(50 * time.Millisecond)
	b.Cleanup()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("fetch succeeded after the source was destroyed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight fetch not cancelled by Destruct")
	}
	if _, ok := sources.References(a.cfg.key()); ok {
		t.Error("source still in the pool after the last Cleanup")
	}
	other.Cleanup()
	if err := (&Handler{}).Cleanup(); err != nil {
		t.Errorf("Cleanup of an unprovisioned handler: %v", err)
	}
}

// A background refresh that joins a fetch a waiting caller started must
// not leave the source unable to refresh in the background afterwards.
func TestTokenSourceRefreshFlagClearedWhenJoiningAFetch(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newTestSource(t, as, clock)
	mustToken(t, s) // token-1, expires at +100s

	// A caller that sees token-1 expired starts a fetch (held)...
	release := as.hold()
	clock.add(101 * time.Second)
	waiting := make(chan *token, 1)
	go func() { tok, _ := s.Token(context.Background(), zap.NewNop()); waiting <- tok }()
	waitFor(t, func() bool { return as.gate.Load() != nil })
	time.Sleep(20 * time.Millisecond)
	// ...while another, with an earlier view of the clock, sees token-1
	// in its refresh window and joins that fetch.
	clock.add(-6 * time.Second)
	mustToken(t, s)
	clock.add(6 * time.Second)
	release()
	if tok := <-waiting; tok == nil || tok.value != "token-2" {
		t.Fatalf("waiting caller got %v", tok)
	}
	waitFor(t, func() bool { return !s.refreshing.Load() })

	// token-2 enters its refresh window: a background refresh happens.
	clock.add(95 * time.Second)
	mustToken(t, s)
	waitFor(t, func() bool { return as.n.Load() == 3 })
}

// The hot path reads the monotonic clock alone only for tokens timed by the
// real clock; a test clock is always asked.
func TestIsTimeNow(t *testing.T) {
	if !isTimeNow(time.Now) {
		t.Error("isTimeNow(time.Now) = false")
	}
	if isTimeNow(func() time.Time { return time.Now() }) || isTimeNow((&fakeClock{}).now) {
		t.Error("isTimeNow of another clock = true")
	}
}
