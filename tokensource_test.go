package oauthbearer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// newCountingAS is the fakeAS of the token-source tests: its tokens live
// life seconds, and the n-th it issues is token-<n>.
func newCountingAS(t *testing.T, life int) *fakeAS {
	as := newFakeAS(t)
	as.Lifetime = time.Duration(life) * time.Second
	as.Mint = func(_ string, n int) string { return fmt.Sprintf("token-%d", n) }
	return as
}

// newTestSource is a client-credentials entry on clock, whose handlers ask
// for refresh_before 10s.
func newTestSource(t *testing.T, as *fakeAS, clock *fakeClock) *tokenSource {
	cs := &credentialSet{Provider: "test", TokenURL: as.tokenURL(), ClientID: as.ClientID, clientSecret: as.Secret,
		Format: "form", ClientAuth: "basic", DefaultLifetime: time.Minute, Timeout: 5 * time.Second}
	e, err := newSourceEntry(cs, "cc:"+cs.key(), false)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.set(clock.now)
	e.env.attach(&use{logger: zap.NewNop(), refreshBefore: 10 * time.Second})
	t.Cleanup(func() { e.Destruct() })
	return e.src
}

func mustToken(t *testing.T, s *tokenSource) *token {
	t.Helper()
	tok, err := s.Token(context.Background())
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
	if first.value != "token-1" || as.tokenRequests() != 1 {
		t.Fatalf("first token %q after %d requests", first.value, as.tokenRequests())
	}
	clock.add(95 * time.Second) // refresh window: 89s..90s to 100s
	release := as.hold()
	for i := 0; i < 50; i++ {
		if tok := mustToken(t, s); tok != first {
			t.Fatalf("request %d in the refresh window got %q, want the cached token", i, tok.value)
		}
	}
	as.waitArrived(t) // the one background fetch
	release()
	waitFor(t, func() bool { return s.cur.Load() != first })
	if got := mustToken(t, s).value; got != "token-2" {
		t.Errorf("after refresh got %q, want token-2", got)
	}
	if n := as.tokenRequests(); n != 2 {
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

	as.refuse(http.StatusServiceUnavailable, "temporarily_unavailable", 0)
	clock.add(101 * time.Second)
	tok, err := s.Token(context.Background())
	if err == nil {
		t.Fatalf("got token %q after expiry with the provider failing", tok.value)
	}
	te, ok := err.(*TokenError)
	if !ok || te.Code != "temporarily_unavailable" || te.Provider != "test" {
		t.Errorf("error = %#v, want the provider's temporarily_unavailable", err)
	}
	// While backing off, callers get the error at once, with the wait,
	// and the provider is left alone.
	as.refuse(0, "", 0)
	_, err = s.Token(context.Background())
	te, ok = err.(*TokenError)
	if !ok || !te.Backoff || te.RetryAfter <= 0 || te.Code != "temporarily_unavailable" {
		t.Fatalf("during backoff got %#v, want a backoff error carrying the last code", err)
	}
	if n := as.tokenRequests(); n != 2 {
		t.Errorf("token requests during backoff: %d, want 2", n)
	}
	clock.add(te.RetryAfter)
	// The third token request, the second token (the refused one issued
	// none).
	if got := mustToken(t, s).value; got != "token-2" || as.tokenRequests() != 3 {
		t.Errorf("after the backoff got %q after %d token requests, want token-2 after 3", got, as.tokenRequests())
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
		_, err := s.Token(ctx)
		gaveUp <- err
	}()
	as.waitArrived(t)
	var wg sync.WaitGroup
	results := make(chan string, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := s.Token(context.Background())
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
	if n := as.tokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
}

// Handlers with equal credentials share one source through the pool; the
// source is destroyed, and its fetches cancelled, with the last user.
func TestSourcePoolSharingAndDestruct(t *testing.T) {
	as := newCountingAS(t, 100)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mk := func(scope string, refreshBefore time.Duration) *Handler {
		h := &Handler{Credentials: Credentials{TokenURL: as.tokenURL(), ClientID: as.ClientID, ClientSecret: as.Secret},
			Scopes: []string{scope}, RefreshBefore: caddy.Duration(refreshBefore)}
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		return h
	}
	a, b, other := mk("read", 0), mk("read", 20*time.Second), mk("write", 0)
	if a.source != b.source {
		t.Error("equal credentials got different token sources")
	}
	if a.source == other.source {
		t.Error("different scopes share a token source")
	}
	src := a.source
	if refs, _ := pool.References(a.poolKey); refs != 2 {
		t.Errorf("references = %d, want 2", refs)
	}
	// The shared token is replaced as early as the earliest asks.
	if got := src.env.refreshBefore(); got != 20*time.Second {
		t.Errorf("refresh_before of the shared source = %v, want the smaller 20s", got)
	}
	a.Cleanup()
	if src.ctx.Err() != nil {
		t.Fatal("source destroyed while another handler still uses it")
	}
	if got := src.env.refreshBefore(); got != 20*time.Second {
		t.Errorf("after a's cleanup refresh_before = %v, want b's 20s", got)
	}
	// A fetch in flight when the last user goes is cancelled.
	release := as.hold()
	defer release()
	errc := make(chan error, 1)
	go func() { _, err := src.Token(context.Background()); errc <- err }()
	as.waitArrived(t)
	b.Cleanup()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("fetch succeeded after the source was destroyed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight fetch not cancelled by Destruct")
	}
	if _, ok := pool.References(a.poolKey); ok {
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
	go func() { tok, _ := s.Token(context.Background()); waiting <- tok }()
	as.waitArrived(t)
	// ...while another, with an earlier view of the clock, sees token-1
	// in its refresh window and joins that fetch.
	clock.add(-6 * time.Second)
	mustToken(t, s)
	if !s.refreshing.Load() {
		t.Fatal("the refresh-ahead did not start")
	}
	clock.add(6 * time.Second)
	release()
	if tok := <-waiting; tok == nil || tok.value != "token-2" {
		t.Fatalf("waiting caller got %v", tok)
	}
	waitFor(t, func() bool { return !s.refreshing.Load() })

	// token-2 enters its refresh window: a background refresh happens.
	clock.add(95 * time.Second)
	mustToken(t, s)
	waitFor(t, func() bool { return as.issued() == 3 })
}

// recordingFetcher hands out token-<n> and records what each fetch was
// told.
type recordingFetcher struct {
	mu    sync.Mutex
	calls []string // "<old>/<refused>"
	n     int
	now   func() time.Time
}

func (f *recordingFetcher) fetch(_ context.Context, r fetchRequest) (*token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := "nil"
	if r.old != nil {
		o = r.old.value
	}
	f.calls = append(f.calls, fmt.Sprintf("%s/%v", o, r.refused))
	f.n++
	now := f.now()
	return &token{value: fmt.Sprintf("token-%d", f.n), obtained: now, expiry: now.Add(time.Hour)}, nil
}

// An upstream 401 tells the next fetch which token was refused (a stored
// grant must not hand it back), only when the token is old enough, and a
// refusal of an older token never drops a newer one.
func TestTokenSourceRejectTellsTheFetcher(t *testing.T) {
	fc := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	clk := &clock{}
	clk.set(fc.now)
	f := &recordingFetcher{now: fc.now}
	s := newTokenSource(f, &env{}, clk, "test", "id")
	defer s.stop()

	t1 := mustToken(t, s)
	if s.reject(t1) {
		t.Error("a token younger than 30s was dropped")
	}
	fc.add(time.Minute)
	if !s.reject(t1) {
		t.Fatal("an old refused token was kept")
	}
	t2 := mustToken(t, s)
	if t2.value != "token-2" {
		t.Fatalf("after the refusal got %q", t2.value)
	}
	if !s.reject(t1) {
		t.Error("a refusal of the replaced token: another attempt uses another token, so true")
	}
	if s.cur.Load() != t2 {
		t.Error("a refusal of an older token dropped the newer one")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := strings.Join(f.calls, " "); got != "nil/false token-1/true" {
		t.Errorf("fetches were told %q, want \"nil/false token-1/true\"", got)
	}
}

// Tokens scheduled by the real clock carry a monotonic reading (the
// request path then reads the monotonic clock alone); a token that cannot
// be refreshed is not refreshed ahead.
func TestTokenSourceSchedule(t *testing.T) {
	e := &env{}
	e.attach(&use{refreshBefore: 30 * time.Second})
	s := &tokenSource{env: e, clock: &clock{}}
	wall := time.Now().Round(0) // no monotonic reading, as read from storage
	tok := &token{obtained: wall, expiry: wall.Add(time.Hour)}
	s.schedule(tok)
	if !strings.Contains(tok.expiry.String(), "m=") || !strings.Contains(tok.refreshAt.String(), "m=") {
		t.Errorf("scheduled times carry no monotonic reading: %v / %v", tok.expiry, tok.refreshAt)
	}
	if w := tok.window; w < 30*time.Second || w >= 33*time.Second {
		t.Errorf("refresh window %v, want refresh_before 30s plus under 10%% jitter", w)
	}
	final := &token{obtained: wall, expiry: wall.Add(time.Hour), final: true}
	s.schedule(final)
	if final.window != 0 || !final.refreshAt.Equal(final.expiry) {
		t.Errorf("a final token is refreshed ahead: window %v", final.window)
	}
}

// When a token of each lifetime a token endpoint gives is refreshed, with
// the default refresh_before (60s): expiry-refreshBefore, or half its life
// when it lives less than two minutes, moved earlier by a random jitter of
// less than a tenth of that window. (The lifetimes themselves, from
// expires_in, a JWT's exp or default_lifetime: internal/oauthclient's
// TestEndpointTokenLifetime.)
func TestTokenSourceScheduleRefreshWindow(t *testing.T) {
	now := time.Date(2031, time.March, 4, 5, 6, 7, 0, time.UTC)
	clk := &clock{}
	clk.set(func() time.Time { return now })
	s := &tokenSource{env: &env{}, clock: clk}
	for _, c := range []struct{ lifetime, refreshIn time.Duration }{
		{time.Hour, time.Hour - time.Minute},
		{3600500 * time.Millisecond, 3540500 * time.Millisecond},
		{90 * time.Second, 45 * time.Second},
		{119 * time.Second, 59500 * time.Millisecond},
		{120 * time.Second, 60 * time.Second},
		{10 * time.Minute, 9 * time.Minute},
		{7170 * time.Second, 7110 * time.Second},
		{24 * time.Hour, 24*time.Hour - time.Minute},
	} {
		tok := &token{value: "a", obtained: now, expiry: now.Add(c.lifetime)}
		s.schedule(tok)
		window := c.lifetime - c.refreshIn
		if got := tok.refreshAt.Sub(now); got > c.refreshIn || got <= c.refreshIn-window/10-time.Nanosecond {
			t.Errorf("lifetime %v: refreshAt = now+%v, want now+%v minus a jitter under %v", c.lifetime, got, c.refreshIn, window/10)
		}
	}
}

// env: the newest configuration's storage and logger win; when it is
// cleaned up (a reload that failed), the previous one's are used again.
func TestEnvNewestUseWins(t *testing.T) {
	e := &env{}
	s1, s2 := &certmagic.FileStorage{Path: "one"}, &certmagic.FileStorage{Path: "two"}
	u1 := &use{storage: s1, refreshBefore: time.Minute}
	u2 := &use{storage: s2, consent: &consentPaths{connect: "/c"}}
	e.attach(u1)
	e.attach(u2)
	if e.storage() != s2 || e.consentPaths() == nil || e.refreshBefore() != time.Minute {
		t.Errorf("after two uses: storage %v, consent %v, refresh_before %v", e.storage(), e.consentPaths(), e.refreshBefore())
	}
	e.detach(u2)
	if e.storage() != s1 || e.consentPaths() != nil {
		t.Errorf("after the newest left: storage %v, consent %v", e.storage(), e.consentPaths())
	}
	e.detach(u1)
	if e.storage() != s1 {
		t.Error("with no use left, the last view is kept")
	}
}

// The logs read as a story: one info line when the source first gets a
// token (with its lifetime and how it was known), warnings and errors for
// failures, one info line when it recovers (with how long it was down),
// debug lines for every fetch.
func TestTokenSourceLogsTellTheStory(t *testing.T) {
	as := newCountingAS(t, 100)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newTestSource(t, as, clock)
	core, logs := observer.New(zap.DebugLevel)
	s.env.attach(&use{logger: zap.New(core), refreshBefore: 10 * time.Second})

	mustToken(t, s)
	first := logs.FilterMessage("first token obtained").All()
	if len(first) != 1 || first[0].Level != zap.InfoLevel || first[0].ContextMap()["lifetime_from"] != "expires_in" ||
		first[0].ContextMap()["expires_in"] != 100*time.Second {
		t.Fatalf("first token line: %v", first)
	}
	as.refuse(http.StatusServiceUnavailable, "temporarily_unavailable", 0)
	clock.add(101 * time.Second)
	if _, err := s.Token(context.Background()); err == nil {
		t.Fatal("a failing provider gave a token")
	}
	var te *TokenError
	_, err := s.Token(context.Background())
	if !errors.As(err, &te) || !te.Backoff {
		t.Fatalf("during the backoff: %v", err)
	}
	clock.add(te.RetryAfter)
	as.refuse(0, "", 0)
	mustToken(t, s)
	rec := logs.FilterMessage("token source recovered").All()
	if len(rec) != 1 || rec[0].Level != zap.InfoLevel || rec[0].ContextMap()["down_for"] != te.RetryAfter {
		t.Errorf("recovery line: %v, want one with down_for %v", rec, te.RetryAfter)
	}
	if n := logs.FilterMessage("first token obtained").Len(); n != 1 {
		t.Errorf("%d first-token lines, want 1", n)
	}
	if n := logs.FilterMessage("token obtained").FilterLevelExact(zap.DebugLevel).Len(); n != 2 {
		t.Errorf("%d debug lines for 2 fetches", n)
	}
	if logs.FilterMessage("token request failed").Len() != 1 {
		t.Error("no error line for the failure")
	}
}

// newerFetcher is a recordingFetcher that also looks for newer tokens
// (as a grant does): each look is recorded, waits for gate, and finds
// (a copy of) stored.
type newerFetcher struct {
	recordingFetcher
	gate   chan struct{}
	stored atomic.Pointer[token]
	looks  chan string // the value of each token looked past
}

func (f *newerFetcher) newer(ctx context.Context, old *token) (*token, error) {
	f.looks <- old.value
	select {
	case <-f.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	st := f.stored.Load()
	if st == nil {
		return nil, nil
	}
	// A new token each time, as read from a record.
	return &token{value: st.value, obtained: st.obtained, expiry: st.expiry}, nil
}

// A refusal of a token looks for one newer than that token, even while a
// look past an older token is under way (the token changed meanwhile: a
// background refresh stored one): joining the older look would answer
// "nothing newer" for the token refused and send the 401 to the client.
func TestTokenSourceTakeNewerLooksPastTheTokenRefused(t *testing.T) {
	fc := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	clk := &clock{}
	clk.set(fc.now)
	f := &newerFetcher{recordingFetcher: recordingFetcher{now: fc.now}, gate: make(chan struct{}), looks: make(chan string, 4)}
	s := newTokenSource(f, &env{}, clk, "test", "id")
	defer s.stop()

	t1 := mustToken(t, s)
	first := make(chan bool, 1)
	go func() { first <- s.takeNewer(context.Background(), t1) }()
	if got := <-f.looks; got != t1.value {
		t.Fatalf("looked past %q, want %q", got, t1.value)
	}
	// While that look waits, a background refresh stores token-2, and a
	// request with it is refused in turn (yet another rotation).
	now := fc.now()
	t2 := &token{value: "token-2", obtained: now, expiry: now.Add(time.Hour)}
	s.store(t2)
	t3 := &token{value: "token-3", obtained: now, expiry: now.Add(time.Hour)}
	f.stored.Store(t3)
	second := make(chan bool, 1)
	go func() { second <- s.takeNewer(context.Background(), t2) }()
	select {
	case got := <-f.looks:
		if got != t2.value {
			t.Fatalf("looked past %q, want %q", got, t2.value)
		}
	case <-time.After(5 * time.Second):
		close(f.gate)
		<-first
		t.Fatalf("the refusal of token-2 did not look for a newer token (it joined the look past token-1, and got %v)", <-second)
	}
	close(f.gate)
	<-first
	if !<-second {
		t.Error("the refusal of token-2 found nothing newer although token-3 is stored")
	}
	if cur := s.cur.Load(); cur == nil || cur.value != "token-3" {
		t.Errorf("the source holds %v, want token-3", cur)
	}
}
