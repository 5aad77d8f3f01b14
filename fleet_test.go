package oauthbearer

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A fleet: several Caddy processes (this test binary run as `caddy run`,
// see TestMain) sharing one storage, under load, with client-credentials
// tokens that live a few seconds. What the shared token store promises:
// one token request per token lifetime for the whole fleet, none at a
// restart, and no failed request when an instance dies holding the lock or
// the storage fails.

// fleetAS is a token endpoint that issues tokens living life seconds,
// remembers them, and can hold requests.
type fleetAS struct {
	*httptest.Server
	life    int
	issued  atomic.Int64
	hold    atomic.Pointer[chan struct{}]
	arrived chan struct{}
	mu      sync.Mutex
	expiry  map[string]time.Time // token → when it expires
}

func newFleetAS(t testing.TB, life int) *fleetAS {
	as := &fleetAS{life: life, arrived: make(chan struct{}, 16), expiry: map[string]time.Time{}}
	as.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if h := as.hold.Load(); h != nil {
			select {
			case as.arrived <- struct{}{}:
			default:
			}
			<-*h
		}
		n := as.issued.Add(1)
		tok := fmt.Sprintf("fleet-%d-%s", n, randomHex(6))
		as.mu.Lock()
		as.expiry[tok] = time.Now().Add(time.Duration(as.life) * time.Second)
		as.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":%d}`, tok, as.life)
	}))
	t.Cleanup(as.Close)
	return as
}

// holdRequests makes token requests wait until release is called.
func (as *fleetAS) holdRequests() (release func()) {
	ch := make(chan struct{})
	as.hold.Store(&ch)
	return func() { as.hold.Store(nil); close(ch) }
}

// valid reports whether tok was issued here and has not expired.
func (as *fleetAS) valid(tok string) bool {
	as.mu.Lock()
	defer as.mu.Unlock()
	exp, ok := as.expiry[tok]
	return ok && time.Now().Before(exp)
}

// fleetUpstream accepts only the valid tokens of as; its answers say in
// X-Token-Serial which of them the request carried (1 for the first
// issued).
func fleetUpstream(t testing.TB, as *fleetAS) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !as.valid(tok) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		serial, _, _ := strings.Cut(strings.TrimPrefix(tok, "fleet-"), "-")
		w.Header().Set("X-Token-Serial", serial)
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// fleetSite is the site every process runs.
func fleetSite(as *fleetAS, upstream, store, refreshBefore string) string {
	return fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url      %s/token
		client_id      fleet-client
		client_secret  fleet-secret
		refresh_before %s
		token_store    %s
	}
	reverse_proxy %s
}`, as.URL, refreshBefore, store, strings.TrimPrefix(upstream, "http://"))
}

// fleetLoad sends a request to each process every 20 ms for d and
// returns how many succeeded and failed (and a sample failure).
func fleetLoad(procs []*childCaddy, d time.Duration) (ok, failed int64, sample string) {
	var okN, badN atomic.Int64
	var sampleV atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond) // the load's pace, not synchronisation
			defer tick.Stop()
			for time.Now().Before(deadline) {
				resp, err := testClient.Get(p.url("/api"))
				if err != nil {
					badN.Add(1)
					sampleV.Store(err.Error())
				} else {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						okN.Add(1)
					} else {
						badN.Add(1)
						sampleV.Store(fmt.Sprintf("%s: %d", p.addr, resp.StatusCode))
					}
				}
				<-tick.C
			}
		}()
	}
	wg.Wait()
	s, _ := sampleV.Load().(string)
	return okN.Load(), badN.Load(), s
}

// fleetRun starts n processes on storage and loads them for d; it returns
// the token requests per token lifetime. Tokens live life seconds and are
// replaced 1 s (refresh_before) before they expire: a process alone makes
// one request per life-1 seconds, which is what "a lifetime" counts here.
func fleetRun(t testing.TB, n int, storage, store string, life int, d time.Duration) (perLifetime float64, failed int64) {
	as := newFleetAS(t, life)
	up := fleetUpstream(t, as)
	var procs []*childCaddy
	for i := 0; i < n; i++ {
		procs = append(procs, startChildCaddy(t, storage, fleetSite(as, up.URL, store, "1s")))
	}
	// Warm up: every process has its first token.
	fleetLoad(procs, 200*time.Millisecond)
	start := as.issued.Load()
	ok, failed, sample := fleetLoad(procs, d)
	requests := as.issued.Load() - start
	perLifetime = float64(requests) / (d.Seconds() / float64(life-1))
	t.Logf("%d processes, token_store %s: %d token requests in %v of %ds tokens replaced 1 s early = %.2f per lifetime; %d requests ok, %d failed %s",
		n, store, requests, d, life, perLifetime, ok, failed, sample)
	return perLifetime, failed
}

func TestFleetMakesOneTokenRequestPerLifetime(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	shared, failed := fleetRun(t, 3, storage, tokenStoreStorage, 4, 12*time.Second)
	if failed != 0 {
		t.Errorf("%d requests failed with the shared store", failed)
	}
	if shared > 2 {
		t.Errorf("%.2f token requests per lifetime for the fleet, want 1 and never more than 2", shared)
	}
	memory, failed := fleetRun(t, 3, fileSystemStorage(filepath.Join(t.TempDir(), "storage")), tokenStoreMemory, 4, 12*time.Second)
	if failed != 0 {
		t.Errorf("%d requests failed with token_store memory", failed)
	}
	if memory < 2.5 {
		t.Errorf("token_store memory: %.2f token requests per lifetime for 3 processes, want about 3", memory)
	}
}

// The same on a network storage (Redis, behind the test-only oab_redis
// module): no atomic rename, locks that expire unless kept alive.
func TestFleetMakesOneTokenRequestPerLifetimeOnRedis(t *testing.T) {
	storage := redisStorageOption(startRedis(t), redisPrefixOf(t))
	shared, failed := fleetRun(t, 3, storage, tokenStoreStorage, 4, 12*time.Second)
	if failed != 0 {
		t.Errorf("%d requests failed", failed)
	}
	if shared > 2 {
		t.Errorf("%.2f token requests per lifetime for the fleet, want 1 and never more than 2", shared)
	}
}

// A restart of the whole fleet makes no token request while the stored
// token is valid.
func TestFleetRestartMakesNoTokenRequest(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	as := newFleetAS(t, 3600)
	up := fleetUpstream(t, as)
	var procs []*childCaddy
	for i := 0; i < 3; i++ {
		procs = append(procs, startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "60s")))
	}
	for _, p := range procs {
		if status, _ := p.get(t, "/api"); status != 200 {
			t.Fatalf("%s: %d", p.addr, status)
		}
	}
	if n := as.issued.Load(); n != 1 {
		t.Fatalf("3 processes made %d token requests, want 1", n)
	}
	for _, p := range procs {
		p.kill(os.Interrupt)
	}
	for _, p := range procs {
		p.start(t)
		if status, _ := p.get(t, "/api"); status != 200 {
			t.Fatalf("%s after the restart: %d", p.addr, status)
		}
		if !strings.Contains(p.logs(), `"origin":"warm start"`) {
			t.Errorf("%s did not start from the stored token", p.addr)
		}
	}
	if n := as.issued.Load(); n != 1 {
		t.Errorf("the restart made %d token requests, want 0", n-1)
	}
}

// An instance killed (SIGKILL) while it holds the lock and waits for the
// provider: the others wait for its lock until the storage declares it
// stale (10 s for file_system), take it, and one of them fetches; no
// request fails, and nobody calls the storage unusable (it is not).
func TestFleetSurvivesALockHolderKilled(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	as := newFleetAS(t, 24)
	up := fleetUpstream(t, as)
	// The first process refreshes first (refresh_before 16s: half the
	// lifetime, at ~10.8-12 s), the others at ~17.4-18 s: the dead
	// holder's lock goes stale about 10 s after it took it, before their
	// tokens expire at 24 s.
	holder := startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "16s"))
	others := []*childCaddy{
		startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "6s")),
		startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "6s")),
	}
	for _, p := range append([]*childCaddy{holder}, others...) {
		if status, _ := p.get(t, "/api"); status != 200 {
			t.Fatalf("%s: %d", p.addr, status)
		}
	}
	release := as.holdRequests()
	// Load the others throughout; the holder starts its refresh.
	var failed atomic.Int64
	var sample atomic.Value
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		_, bad, s := fleetLoad(others, 22*time.Second)
		failed.Store(bad)
		sample.Store(s)
	}()
	go func() {
		for i := 0; i < 900; i++ { // keeps the holder's refresh-ahead going
			resp, err := testClient.Get(holder.url("/api"))
			if err != nil {
				return
			}
			resp.Body.Close()
			time.Sleep(20 * time.Millisecond) // the load's pace
		}
	}()
	select {
	case <-as.arrived: // the holder's refresh, under the lock
	case <-time.After(15 * time.Second):
		t.Fatal("no refresh reached the provider")
	}
	holder.kill(os.Kill)
	release()
	<-loaded
	loadEnd, atLoadEnd := time.Now(), as.issued.Load()
	if failed.Load() != 0 {
		t.Errorf("%d requests to the surviving instances failed (%v)", failed.Load(), sample.Load())
	}
	// The survivors refresh once the dead holder's lock is stale: 10 s
	// after it took it, noticed within file_system's 1 s poll, which can
	// be after the load's end (the first token lives until 24 s). Wait
	// until each survivor forwards a token newer than the first, every
	// request still answered.
	deadline := time.Now().Add(15 * time.Second)
	for _, p := range others {
		for {
			resp, err := testClient.Get(p.url("/api"))
			if err != nil {
				t.Fatalf("%s: %v", p.addr, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s after the load: %d", p.addr, resp.StatusCode)
			}
			if serial := resp.Header.Get("X-Token-Serial"); serial != "1" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still forwards the first token 15 s after the load: the survivors never refreshed", p.addr)
			}
			time.Sleep(20 * time.Millisecond) // the polling's pace
		}
	}
	t.Logf("token requests: %d at the load's end, %d once the survivors forward a new token (%s later)",
		atLoadEnd, as.issued.Load(), time.Since(loadEnd).Round(time.Millisecond))
	for _, p := range others {
		if strings.Contains(p.logs(), "the shared token store is not usable") {
			t.Errorf("%s said the storage is not usable; a dead holder's lock goes stale", p.addr)
		}
	}
	// The first token, the dead holder's refresh, and one for the survivors.
	if n := as.issued.Load(); n != 3 {
		t.Errorf("%d token requests, want 3 (the survivors share one)", n)
	}
}

// A failing storage: requests keep succeeding, each process fetches on its
// own, and says so once.
func TestFleetKeepsServingWhenTheStorageFails(t *testing.T) {
	dir := t.TempDir()
	control := filepath.Join(dir, "faults.json")
	setFlakyControl(t, control, map[string]string{"load": "fail", "store": "fail", "lock": "fail"})
	storage := fmt.Sprintf("oab_flaky {\n\t\troot %s\n\t\tcontrol %s\n\t}", filepath.Join(dir, "storage"), control)
	as := newFleetAS(t, 4)
	up := fleetUpstream(t, as)
	var procs []*childCaddy
	for i := 0; i < 3; i++ {
		procs = append(procs, startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "1s")))
	}
	ok, failed, sample := fleetLoad(procs, 9*time.Second)
	if failed != 0 || ok == 0 {
		t.Errorf("%d requests ok, %d failed (%s)", ok, failed, sample)
	}
	for _, p := range procs {
		if n := strings.Count(p.logs(), "the shared token store is not usable"); n != 1 {
			t.Errorf("%s logged the fallback %d times, want once", p.addr, n)
		}
	}
	t.Logf("token requests with the storage failing: %d for 3 processes over 9 s of 4 s tokens", as.issued.Load())
}

// Grants with no traffic: an idle connected grant is refreshed in the
// background across several rotations, and the two processes sharing the
// storage never redeem its refresh token twice (the provider revokes the
// grant on reuse).
func TestFleetRefreshesAnIdleGrantOnce(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	g := newGrantSetupWithStorage(t, storage, "refresh_before 2s", 0)
	g.as.ReuseRevokesGrant = true
	g.as.AccessLifetime = 4
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	startChildCaddy(t, storage, injectorSite(g.as, g.as.tokenURL(), "refresh_before 2s", g.api.hostport()))
	deadline := time.Now().Add(20 * time.Second)
	for g.as.Refreshes.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // poll the provider's counter; no request is made
	}
	if r := g.as.Refreshes.Load(); r < 3 {
		t.Fatalf("%d background refreshes in 20 s of 4 s tokens with no traffic", r)
	}
	if g.as.InvalidGrants.Load() != 0 || g.as.liveRefreshTokens() != 1 {
		t.Errorf("invalid_grant %d, live refresh tokens %d: a refresh token was redeemed twice", g.as.InvalidGrants.Load(), g.as.liveRefreshTokens())
	}
	if st := g.status("default"); st["connected"] != true {
		t.Errorf("status after idle rotations: %v", st)
	}
	if len(g.api.authorizations()) != 0 {
		t.Error("a request reached the API: the test was meant to have no traffic")
	}
}

// BenchmarkFleetTokenRequests: token requests per token lifetime for 1, 3
// and 5 processes sharing a file_system storage, token_store storage
// against memory, each under steady load for 12 s of 4 s tokens. Slow (2
// minutes): it runs only with OAB_BENCH_FLEET=1 (make bench-fleet).
func BenchmarkFleetTokenRequests(b *testing.B) {
	if os.Getenv("OAB_BENCH_FLEET") == "" {
		b.Skip("set OAB_BENCH_FLEET=1 (make bench-fleet)")
	}
	for _, n := range []int{1, 3, 5} {
		for _, store := range []string{tokenStoreStorage, tokenStoreMemory} {
			b.Run(fmt.Sprintf("processes=%d/token_store=%s", n, store), func(b *testing.B) {
				var sum float64
				var failed int64
				for i := 0; i < b.N; i++ {
					per, bad := fleetRun(b, n, fileSystemStorage(filepath.Join(b.TempDir(), "storage")), store, 4, 12*time.Second)
					sum += per
					failed += bad
				}
				b.ReportMetric(sum/float64(b.N), "token_requests/lifetime")
				b.ReportMetric(float64(failed)/float64(b.N), "failed_requests/op")
			})
		}
	}
}
