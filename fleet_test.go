package oauthbearer

import (
	"context"
	"fmt"
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

// fleetSite is the site every process runs.
func fleetSite(as *fakeAS, upstream, store, refreshBefore string) string {
	return fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url      %s
		client_id      %s
		client_secret  "%s"
		refresh_before %s
		token_store    %s
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, as.Secret, refreshBefore, store, strings.TrimPrefix(upstream, "http://"))
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
	as := newFakeAS(t)
	as.Lifetime = time.Duration(life) * time.Second
	up := newAPI(t, as)
	var procs []*childCaddy
	for i := 0; i < n; i++ {
		procs = append(procs, startChildCaddy(t, storage, fleetSite(as, up.URL, store, "1s")))
	}
	// Warm up: every process has its first token.
	fleetLoad(procs, 200*time.Millisecond)
	start := as.issued()
	ok, failed, sample := fleetLoad(procs, d)
	requests := as.issued() - start
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
	as := newFakeAS(t)
	as.Lifetime = 3600 * time.Second
	up := newAPI(t, as)
	var procs []*childCaddy
	for i := 0; i < 3; i++ {
		procs = append(procs, startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "60s")))
	}
	for _, p := range procs {
		if status, _ := p.get(t, "/api"); status != 200 {
			t.Fatalf("%s: %d", p.addr, status)
		}
	}
	if n := as.issued(); n != 1 {
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
	if n := as.issued(); n != 1 {
		t.Errorf("the restart made %d token requests, want 0", n-1)
	}
}

// An instance killed (SIGKILL) while it holds the lock and waits for the
// provider: the others wait for its lock until the storage declares it
// stale (10 s for file_system), take it, and one of them fetches; no
// request fails, and nobody calls the storage unusable (it is not).
func TestFleetSurvivesALockHolderKilled(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	as := newFakeAS(t)
	as.Lifetime = 24 * time.Second
	up := newAPI(t, as)
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
	release := as.hold()
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
	as.waitArrived(t) // the holder's refresh, under the lock
	holder.kill(os.Kill)
	release()
	<-loaded
	loadEnd, atLoadEnd := time.Now(), as.issued()
	first := as.issuedLog()[0].Token
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
			n := len(up.log()) // the only request in flight: up.log()[n] is its
			if status, _ := p.get(t, "/api"); status != 200 {
				t.Fatalf("%s after the load: %d", p.addr, status)
			}
			if up.log()[n].Header.Get("Authorization") != "Bearer "+first {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still forwards the first token 15 s after the load: the survivors never refreshed", p.addr)
			}
			time.Sleep(20 * time.Millisecond) // the polling's pace
		}
	}
	t.Logf("token requests: %d at the load's end, %d once the survivors forward a new token (%s later)",
		atLoadEnd, as.issued(), time.Since(loadEnd).Round(time.Millisecond))
	for _, p := range others {
		if strings.Contains(p.logs(), "the shared token store is not usable") {
			t.Errorf("%s said the storage is not usable; a dead holder's lock goes stale", p.addr)
		}
	}
	// The first token, the dead holder's refresh, and one for the survivors.
	if n := as.tokenRequests(); n != 3 {
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
	as := newFakeAS(t)
	as.Lifetime = 4 * time.Second
	up := newAPI(t, as)
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
	t.Logf("token requests with the storage failing: %d for 3 processes over 9 s of 4 s tokens", as.issued())
}

// Grants with no traffic: an idle connected grant is refreshed in the
// background across several rotations, and the two processes sharing the
// storage never redeem its refresh token twice (the provider revokes the
// grant on reuse).
func TestFleetRefreshesAnIdleGrantOnce(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	g := newGrantSetupWithStorage(t, storage, "refresh_before 2s", 0)
	g.as.ReuseRevokesGrant = true
	g.as.Lifetime = 4 * time.Second
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	startChildCaddy(t, storage, injectorSite(g.as, g.as.tokenURL(), "refresh_before 2s", g.api.hostport()))
	deadline := time.Now().Add(20 * time.Second)
	for g.as.refreshes() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // poll the provider's counter; no request is made
	}
	if r := g.as.refreshes(); r < 3 {
		t.Fatalf("%d background refreshes in 20 s of 4 s tokens with no traffic", r)
	}
	if g.as.invalidGrants() != 0 || g.as.liveRefreshTokens() != 1 {
		t.Errorf("invalid_grant %d, live refresh tokens %d: a refresh token was redeemed twice", g.as.invalidGrants(), g.as.liveRefreshTokens())
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

// A provider that keeps one live client-credentials token per client
// revokes the fleet's token when one instance fetches the next: another
// instance's request with the earlier token is refused upstream, and is
// replayed at once with the token in the shared store (no token request of
// its own), however young the refused token.
func TestFleetSharedToken401TakesTheTokenAnotherInstanceStored(t *testing.T) {
	as := newFakeAS(t)
	as.RevokeEarlierDirect = true
	up := newAPI(t, as)
	addr := freeAddr(t)
	dir := t.TempDir()
	storage := fileSystemStorage(filepath.Join(dir, "storage"))
	a := startCaddyWith(t, addr, storage, fleetSite(as, up.URL, tokenStoreStorage, "60s"))
	b := startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "60s"))
	if status, body := a.get("/api/a"); status != 200 {
		t.Fatalf("A's first request: %d %q", status, body)
	}
	if status, body := b.get(t, "/api/b"); status != 200 {
		t.Fatalf("B's first request: %d %q", status, body)
	}
	if n := as.issued(); n != 1 {
		t.Fatalf("%d tokens issued, want 1 shared by both instances", n)
	}
	// An operator forces a new token on A: the provider revokes the one B
	// holds, and A stores the new one.
	if _, err := ccSource(t).forceRefresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	newest := as.issuedLog()[1].Token
	if status, body := b.get(t, "/api/c"); status != 200 {
		t.Fatalf("B's request after A's fetch revoked its token: %d %q, want 200 from a replay with the stored token", status, body)
	}
	if up.lastToken() != newest {
		t.Error("B's replay did not carry the token A stored")
	}
	if n := as.issued(); n != 2 {
		t.Errorf("%d tokens issued, want 2 (B took A's from the store)", n)
	}
}
