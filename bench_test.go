package oauthbearer

// Benchmarks (issue 4). Run them with `make bench`, which is
//
//	go test -run '^$' -bench . -benchmem -cpu 1,2 -count N
//
// and summarises the medians. BENCHMARKS.md has the figures and the
// targets. Speed is measured here and never asserted; the only failures are
// correctness checks (the stampede must cause exactly one token request).
//
// Every server these benchmarks start listens on 127.0.0.1 and is closed
// when the benchmark ends. The token endpoint is the tests' fakeAS, except
// for BenchmarkSourceMemory, whose helper token server is a child process
// (this test binary, re-executed) that exits when its standard input
// closes: its memory must not be counted with the token sources'.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

// benchTokenValue is the size of an opaque token such as Doorkeeper's (43
// characters). A short token favours x/oauth2, which concatenates
// "Bearer " and the token on every request; JWTs are 20 times longer.
const benchTokenValue = "2YotnFZFEjr1zCsicMWpAA-benchmark-0123456789"

// newBenchAS is the fakeAS of the benchmarks: its tokens are as long as
// Doorkeeper's (benchTokenValue-<n>).
func newBenchAS(tb testing.TB) *fakeAS {
	as := newFakeAS(tb)
	as.Mint = func(_ string, n int) string { return fmt.Sprintf("%s-%d", benchTokenValue, n) }
	return as
}

// benchHandler returns a provisioned Handler for the generic provider
// against as. configure may set fields before Provision.
func benchHandler(tb testing.TB, as *fakeAS, configure func(*Handler)) *Handler {
	tb.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	h := &Handler{Credentials: Credentials{TokenURL: as.tokenURL(), ClientID: as.ClientID, ClientSecret: as.Secret},
		TokenStore: tokenStoreMemory}
	if configure != nil {
		configure(h)
	}
	if err := h.Provision(ctx); err != nil {
		cancel()
		tb.Fatal(err)
	}
	h.logger = zap.NewNop()
	tb.Cleanup(func() {
		h.Cleanup()
		cancel()
	})
	return h
}

// benchRequest is a GET as Caddy hands it to a handler: a replacer in its
// context, a few client headers but no Authorization, and an empty body that
// is not http.NoBody (see caddyBody).
func benchRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/api/v1/things?page=2", nil)
	r.Header.Set("User-Agent", "line-of-business-app/1.0")
	r.Header.Set("Accept", "application/json")
	r.Body = caddyBody
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	return r.WithContext(ctx)
}

// caddyBody stands in for the body of a request without one as Caddy's
// server passes it on: net/http sets http.NoBody and Content-Length 0, and
// Caddy wraps the body in its IdleTimeoutReader, so handlers never see
// http.NoBody itself. (The wrapper's reads also move the connection's read
// deadline, which this stand-in does not do.)
var caddyBody io.ReadCloser = struct{ io.ReadCloser }{http.NoBody}

// benchImpl is one way to get a cached token onto a request.
type benchImpl struct {
	name   string
	lookup func() // the token lookup alone
	inject func(r *http.Request)
}

// cachedTokenImpls returns this module's hot path (what ServeHTTP does
// before calling the next handler) and the x/oauth2 equivalent, each with a
// valid token cached an hour ahead.
func cachedTokenImpls(b *testing.B) []benchImpl {
	as := newBenchAS(b)
	h := benchHandler(b, as, nil)
	ctx := context.Background()
	if _, err := h.source.Token(ctx); err != nil {
		b.Fatal(err)
	}

	ours := benchImpl{
		name: "oauth_bearer",
		lookup: func() {
			if _, err := h.source.Token(ctx); err != nil {
				panic(err)
			}
		},
		inject: func(r *http.Request) {
			tok, err := h.source.Token(r.Context())
			if err != nil {
				panic(err)
			}
			h.inject(r, tok)
		},
	}

	// What a Go program would write with x/oauth2: a ReuseTokenSource
	// (which clientcredentials.Config.TokenSource returns) and
	// Token.SetAuthHeader (which oauth2.Transport calls).
	tok := &oauth2.Token{AccessToken: benchTokenValue + "-1", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}
	ts := oauth2.ReuseTokenSource(tok, oauth2.StaticTokenSource(tok))
	xo := benchImpl{
		name: "x_oauth2",
		lookup: func() {
			if _, err := ts.Token(); err != nil {
				panic(err)
			}
		},
		inject: func(r *http.Request) {
			t, err := ts.Token()
			if err != nil {
				panic(err)
			}
			t.SetAuthHeader(r)
		},
	}
	return []benchImpl{ours, xo}
}

// BenchmarkCachedToken is the per-request cost with a cached token:
//
//	lookup        the token lookup alone
//	inject        lookup + header set on a request that already carries the
//	              header (its value slice is reused)
//	inject_fresh  lookup + header set on a request without Authorization, as
//	              most client requests arrive (the header's value slice is
//	              allocated: one 16-byte allocation for any implementation)
//
// each for oauth_bearer and x/oauth2, serial and under b.RunParallel.
func BenchmarkCachedToken(b *testing.B) {
	impls := cachedTokenImpls(b)
	ops := []struct {
		name string
		run  func(impl benchImpl, r *http.Request)
	}{
		{"lookup", func(impl benchImpl, _ *http.Request) { impl.lookup() }},
		{"inject", func(impl benchImpl, r *http.Request) { impl.inject(r) }},
		{"inject_fresh", func(impl benchImpl, r *http.Request) {
			delete(r.Header, "Authorization")
			impl.inject(r)
		}},
	}
	for _, op := range ops {
		for _, impl := range impls {
			b.Run(op.name+"/"+impl.name+"/serial", func(b *testing.B) {
				r := benchRequest()
				b.ReportAllocs()
				for b.Loop() {
					op.run(impl, r)
				}
			})
			b.Run(op.name+"/"+impl.name+"/parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					r := benchRequest()
					for pb.Next() {
						op.run(impl, r)
					}
				})
			})
		}
	}
}

// benchWriter is a ResponseWriter that discards, with the Server header
// that Caddy's server sets before any handler runs.
type benchWriter struct {
	hdr    http.Header
	status int
}

func newBenchWriter() *benchWriter {
	return &benchWriter{hdr: http.Header{"Server": {"Caddy"}}}
}

func (w *benchWriter) Header() http.Header         { return w.hdr }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(status int)      { w.status = status }

// reset makes the writer as Caddy's server hands it to the route.
func (w *benchWriter) reset() {
	for k := range w.hdr {
		if k != "Server" {
			delete(w.hdr, k)
		}
	}
	w.status = 0
}

// nopNext stands in for reverse_proxy: it answers 200 and writes nothing.
var nopNext = caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
})

// BenchmarkServeHTTP is the whole handler with a no-op next handler, for a
// GET without Authorization as Caddy passes it on (see benchRequest; the
// client's header map is fresh on every real request, so the header value
// slice is allocated each time):
//
//	oauth_bearer/retry       the default upstream_401 retry: response
//	                         recorder, and a clone of the response header
//	                         for a replay
//	oauth_bearer/invalidate  the recorder, no clone
//	oauth_bearer/off         lookup + inject + next
//	request_header_static    Caddy's headers handler setting a static
//	                         Authorization: what the e2e comparison's
//	                         config (b) runs instead
func BenchmarkServeHTTP(b *testing.B) {
	as := newBenchAS(b)
	handlers := []struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}{}
	for _, mode := range []string{upstream401Retry, upstream401Invalidate, upstream401Off} {
		h := benchHandler(b, as, func(h *Handler) { h.Upstream401 = mode })
		if _, err := h.source.Token(context.Background()); err != nil {
			b.Fatal(err)
		}
		handlers = append(handlers, struct {
			name string
			h    caddyhttp.MiddlewareHandler
		}{"oauth_bearer/" + mode, h})
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	static := &headers.Handler{Request: &headers.HeaderOps{
		Set: http.Header{"Authorization": {"Bearer " + benchTokenValue + "-static"}}}}
	if err := static.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	handlers = append(handlers, struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}{"request_header_static", static})

	for _, hc := range handlers {
		serve := func(w *benchWriter, r *http.Request) {
			w.reset()
			r.Body, r.ContentLength = caddyBody, 0 // as the next request arrives
			delete(r.Header, "Authorization")
			if err := hc.h.ServeHTTP(w, r, nopNext); err != nil || w.status != http.StatusOK {
				panic(fmt.Sprintf("ServeHTTP: status %d, error %v", w.status, err))
			}
		}
		b.Run(hc.name+"/serial", func(b *testing.B) {
			w, r := newBenchWriter(), benchRequest()
			b.ReportAllocs()
			for b.Loop() {
				serve(w, r)
			}
		})
		b.Run(hc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				w, r := newBenchWriter(), benchRequest()
				for pb.Next() {
					serve(w, r)
				}
			})
		})
	}
}

// BenchmarkStampede: 1,000 concurrent requests reach a handler whose token
// source has no token. Exactly one token request must be made (the
// benchmark fails otherwise). One op is one whole stampede: from releasing
// the 1,000 goroutines to the last answer.
//
// So that every request really arrives before the token exists, the token
// endpoint holds the token request until all 1,000 have called ServeHTTP
// (at most 5 s); arrived_before_token counts the requests that started
// before the token was issued, and must be 1,000. A real provider takes
// 50-300 ms, far longer than this hold.
func BenchmarkStampede(b *testing.B) {
	const n = 1000
	var arrived, issued atomic.Int64
	as := newBenchAS(b)
	h := benchHandler(b, as, nil)

	type slot struct {
		w       *benchWriter
		r       *http.Request
		started int64
		err     error
	}
	slots := make([]slot, n)
	var tokenRequests, before, allAnswered int64
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// A new source: nothing cached, nothing in flight.
		old := h.source
		fresh, _ := newSourceEntry(h.entry.(*sourceEntry).ep.cfg, h.poolKey, false)
		h.source = fresh.src
		requestsBefore := as.tokenRequests()
		arrived.Store(0)
		release := as.hold()
		go func() {
			deadline := time.Now().Add(5 * time.Second)
			for arrived.Load() < n && time.Now().Before(deadline) {
				time.Sleep(100 * time.Microsecond)
			}
			issued.Store(time.Now().UnixNano())
			release()
		}()
		for j := range slots {
			slots[j] = slot{w: newBenchWriter(), r: benchRequest()}
		}
		start := make(chan struct{})
		var ready, done sync.WaitGroup
		ready.Add(n)
		done.Add(n)
		for j := range slots {
			go func(s *slot) {
				defer done.Done()
				ready.Done()
				<-start
				s.started = time.Now().UnixNano()
				arrived.Add(1)
				s.err = h.ServeHTTP(s.w, s.r, nopNext)
			}(&slots[j])
		}
		ready.Wait()
		b.StartTimer()
		began := time.Now()
		close(start)
		done.Wait()
		b.StopTimer()
		allAnswered += time.Since(began).Nanoseconds()

		got := as.tokenRequests() - requestsBefore
		tokenAt := issued.Load()
		for j := range slots {
			s := &slots[j]
			if s.err != nil || s.w.status != http.StatusOK {
				b.Fatalf("request %d: status %d, error %v", j, s.w.status, s.err)
			}
			if s.started < tokenAt {
				before++
			}
		}
		tokenRequests += got
		if got != 1 {
			b.Fatalf("stampede %d: %d concurrent requests made %d token requests, want exactly 1", i, n, got)
		}
		fresh.Destruct()
		h.source = old
		b.StartTimer()
	}
	b.ReportMetric(float64(tokenRequests)/float64(b.N), "token_requests/op")
	b.ReportMetric(float64(before)/float64(b.N), "arrived_before_token/op")
	b.ReportMetric(float64(allAnswered)/float64(b.N)/1e6, "ms_until_all_answered")
}

// BenchmarkSourceMemory reports the heap (and goroutine stack) cost of
// token sources, for 1 and for 10,000 distinct credential sets:
//
//	provisioned     as Provision leaves it: no token yet
//	with_token      after one real token fetch, with the keep-alive
//	                connection to the token endpoint closed: the steady
//	                state (the transport drops idle connections after 90 s)
//	with_idle_conn  right after the fetch: the token endpoint connection is
//	                still open (its buffers and two goroutines), for up to
//	                90 s after each fetch
//
// The token endpoint runs in a child process so that its own memory is not
// counted. Figures come from runtime.ReadMemStats after a forced GC, before
// and after the sources were made.
func BenchmarkSourceMemory(b *testing.B) {
	srv := startChildTokenServer(b)
	for _, variant := range []string{"provisioned", "with_token", "with_idle_conn"} {
		for _, n := range []int{1, 10000} {
			b.Run(fmt.Sprintf("%s/sources=%d", variant, n), func(b *testing.B) {
				var heap, stack, goroutines float64
				for i := 0; i < b.N; i++ {
					hb, sb, g := measureSources(b, srv, n, variant)
					heap += hb
					stack += sb
					goroutines += g
				}
				b.ReportMetric(heap/float64(b.N)/float64(n), "heap-B/source")
				b.ReportMetric(stack/float64(b.N)/float64(n), "stack-B/source")
				b.ReportMetric(goroutines/float64(b.N)/float64(n), "goroutines/source")
			})
		}
	}
}

func measureSources(b *testing.B, tokenURL string, n int, variant string) (heap, stack, goroutines float64) {
	// The timer runs throughout, forced GCs included: stopping it would
	// make the framework raise b.N until the GCs take minutes.
	m0 := settledMemStats()
	g0 := runtime.NumGoroutine()

	srcs := make([]*sourceEntry, n)
	for i := range srcs {
		cs := &credentialSet{Provider: "generic", TokenURL: tokenURL,
			ClientID: fmt.Sprintf("tenant-%05d", i), clientSecret: "bench-secret", Format: "form",
			ClientAuth: "basic", DefaultLifetime: 10 * time.Minute, Timeout: 10 * time.Second}
		srcs[i], _ = newSourceEntry(cs, "cc:"+cs.key(), false)
	}
	if variant != "provisioned" {
		// Eight at a time, as a cold start under load would.
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if _, err := srcs[i].src.Token(context.Background()); err != nil {
						panic(err)
					}
					if variant == "with_token" {
						srcs[i].ep.Close()
					}
				}
			}()
		}
		wg.Wait()
	}

	if variant == "with_token" {
		// Closed connections' goroutines end asynchronously.
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > g0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	m1 := settledMemStats()
	g1 := runtime.NumGoroutine()
	runtime.KeepAlive(srcs)
	for _, s := range srcs {
		s.Destruct()
	}
	return float64(int64(m1.HeapAlloc) - int64(m0.HeapAlloc)), float64(int64(m1.StackInuse) - int64(m0.StackInuse)),
		float64(g1 - g0)
}

func settledMemStats() runtime.MemStats {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m
}

// childTokenServerEnv makes this test binary, re-executed, a token endpoint
// (see init below) for BenchmarkSourceMemory.
const childTokenServerEnv = "OAUTHBEARER_BENCH_TOKEN_SERVER"

func init() {
	if os.Getenv(childTokenServerEnv) != "1" {
		return
	}
	// Child: serve tokens on loopback, print the URL, and exit when the
	// parent closes our standard input (or dies).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var n atomic.Int64
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("%s-%d", benchTokenValue, n.Add(1)),
			"token_type": "Bearer", "expires_in": 3600})
	}))
	fmt.Printf("http://%s/oauth/token\n", l.Addr())
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func startChildTokenServer(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), childTokenServerEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "http://127.0.0.1:") {
		b.Fatalf("child token server: %q, %v", line, err)
	}
	return strings.TrimSpace(line)
}

// BenchmarkGrantAccounts: one stored grant with 10,000 connected accounts
// (authorization_code, the account named by a request placeholder, every
// account's access token valid for an hour in a file_system storage).
//
//	heap-B/account      memory of an account's token source once a request
//	                    used it (read from the storage, token cached)
//	after_sweeps-B/...  what is left per account after two idle sweeps
//	serve/one_account   ServeHTTP, every request for the same account
//	serve/10000_accounts ServeHTTP, each request for the next account: the
//	                    lookup among 10,000 sources
func BenchmarkGrantAccounts(b *testing.B) {
	const n = 10000
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	h := &Handler{Credentials: Credentials{TokenURL: "http://127.0.0.1:9/token", ClientID: "bench-grant",
		ClientSecret: "bench-secret"}, Grant: grantAuthorizationCode, Account: "{oab.account}", Upstream401: upstream401Off}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Cleanup() })
	g := h.grant
	g.env.attach(&use{storage: &certmagic.FileStorage{Path: b.TempDir()}, logger: zap.NewNop()})
	names := make([]string, n)
	now := time.Now()
	for i := range names {
		names[i] = fmt.Sprintf("account-%05d", i)
		rec := &grantRecord{Account: names[i], RefreshToken: "rt-" + names[i], AccessToken: benchTokenValue + "-" + names[i],
			Obtained: now, Expiry: now.Add(time.Hour), ConnectedAt: now}
		if err := g.store.save(context.Background(), g.recordKey(names[i]), rec); err != nil {
			b.Fatal(err)
		}
	}
	load := func() {
		for _, a := range names {
			if _, err := g.source(a).Token(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	count := g.accounts.count

	b.Run("memory", func(b *testing.B) {
		var heap, after float64
		for i := 0; i < b.N; i++ {
			g.sweep()
			g.sweep()
			m0 := settledMemStats()
			load()
			m1 := settledMemStats()
			if count() != n {
				b.Fatalf("%d sources, want %d", count(), n)
			}
			g.sweep()
			g.sweep()
			m2 := settledMemStats()
			heap += float64(int64(m1.HeapAlloc) - int64(m0.HeapAlloc))
			after += float64(int64(m2.HeapAlloc) - int64(m0.HeapAlloc))
		}
		b.ReportMetric(heap/float64(b.N)/n, "heap-B/account")
		b.ReportMetric(after/float64(b.N)/n, "after_sweeps-B/account")
	})

	load()
	serve := func(b *testing.B, pick func(i int) string) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			w, r := newBenchWriter(), benchRequest()
			repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			i := 0
			for pb.Next() {
				repl.Set("oab.account", pick(i))
				i++
				w.reset()
				if err := h.ServeHTTP(w, r, nopNext); err != nil || w.status != http.StatusOK {
					panic(fmt.Sprintf("ServeHTTP: status %d, error %v", w.status, err))
				}
			}
		})
	}
	b.Run("serve/one_account", func(b *testing.B) { serve(b, func(int) string { return names[0] }) })
	b.Run("serve/10000_accounts", func(b *testing.B) { serve(b, func(i int) string { return names[(i*7919)%n] }) })
}
