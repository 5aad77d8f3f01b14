package oauthbearer

// Grants across a fleet (issue 16): one redemption per grant per rotation
// whatever the number of instances, no failed request when a provider's
// rotation revokes the access tokens issued before it, and the defects that
// made a fleet cost more than one instance. The instances are a Caddy in
// this process (A: the consent endpoints and an injector) and child Caddy
// processes (this test binary, see TestMain) on the same storage; the
// provider is fakeAS (authserver_test.go), which says what each
// redemption cost.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/cookiejar"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"golang.org/x/crypto/bcrypt"
)

// gasSetup is a Caddy in this process serving the consent endpoints of a
// fakeAS under /oauth/ (behind basic_auth, as the README says) and an
// injector of its grant.
type gasSetup struct {
	t    *testing.T
	as   *fakeAS
	api  *upstream
	c    *testCaddy
	conf string
}

// gasClient is the provider and client subdirectives every handler of the
// grant of as shares (with the revocation endpoint when revoke).
func gasClient(as *fakeAS, revoke bool) string {
	s := fmt.Sprintf("client_id     %s\n\t\tclient_secret %s\n\t\ttoken_url     %s", as.ClientID, as.Secret, as.tokenURL())
	if revoke {
		s += "\n\t\trevoke_url    " + as.revokeURL()
	}
	return s
}

// gasInjector is an oauth_bearer block using the grant of as, with extra
// subdirectives.
func gasInjector(as *fakeAS, extra string, revoke bool) string {
	return fmt.Sprintf("oauth_bearer generic {\n\t\tgrant authorization_code\n\t\t%s\n\t\t%s\n\t}", gasClient(as, revoke), extra)
}

// gasSite is A's site: the consent endpoints and injector.
func gasSite(as *fakeAS, redirect, injector, upstream string, revoke bool) string {
	hash, err := bcrypt.GenerateFromPassword([]byte(adminPass), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf(`http://LISTEN {
	basic_auth /oauth/* {
		%s %s
	}
	oauth_bearer_consent /oauth/* generic {
		%s
		authorize_url %s
		redirect_uri  %s
	}
	%s
	reverse_proxy %s
}`, adminUser, hash, gasClient(as, revoke), as.authorizeURL(), redirect, injector, upstream)
}

// gasInjectorSite is the site of an instance with only an injector.
func gasInjectorSite(injector, upstream string) string {
	return fmt.Sprintf("http://LISTEN {\n\t%s\n\treverse_proxy %s\n}", injector, upstream)
}

// newGasSetup starts A on storage ("" for the test's own file_system
// directory) with an injector that has the extra subdirectives; configure
// sets the provider's behaviour before anything uses it.
func newGasSetup(t *testing.T, storage, extra string, configure func(*fakeAS)) *gasSetup {
	t.Helper()
	return newGasSetupRevoke(t, storage, extra, true, configure)
}

func newGasSetupRevoke(t *testing.T, storage, extra string, revoke bool, configure func(*fakeAS)) *gasSetup {
	t.Helper()
	addr := freeAddr(t)
	as := newFakeAS(t)
	as.RedirectURI = "http://" + addr + "/oauth/callback"
	if testClock != nil {
		as.Now = testClock.now
	}
	if configure != nil {
		configure(as)
	}
	api := newAPI(t, as)
	s := &gasSetup{t: t, as: as, api: api}
	s.conf = gasSite(as, as.RedirectURI, gasInjector(as, extra, revoke), api.hostport(), revoke)
	s.c = startCaddyWith(t, addr, storage, s.conf)
	return s
}

// connect runs the consent flow for account in a fresh browser.
func (s *gasSetup) connect(account string) {
	s.t.Helper()
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 30 * time.Second, Transport: authTransport{host: s.c.addr}}
	status, body := connectWith(s.t, browser, s.c.url("/oauth/connect"), account)
	if status != 200 || !strings.Contains(body, "is connected") {
		s.t.Fatalf("consent for %q: %d %q", account, status, body)
	}
}

// injector is the oauth_bearer block of another instance (a child process)
// with the same grant.
func (s *gasSetup) injector(extra string) string { return gasInjector(s.as, extra, true) }

// gasGet sends GET url with X-Account: account (when not "") and returns
// the status and body.
func gasGet(t testing.TB, u, account string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if account != "" {
		req.Header.Set("X-Account", account)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// gasLoad sends GET requests for account from workers goroutines, worker i
// to bases[i%len(bases)], each at most every 5 ms, for d; it returns how
// many succeeded and failed, and a sample failure.
func gasLoad(bases []string, account string, workers int, d time.Duration) (ok, failed int64, sample string) {
	var okN, badN atomic.Int64
	var sampleV atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := range workers {
		base := bases[i%len(bases)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest(http.MethodGet, base+"/api/load", nil)
				if account != "" {
					req.Header.Set("X-Account", account)
				}
				resp, err := testClient.Do(req)
				if err != nil {
					badN.Add(1)
					sampleV.Store(err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					okN.Add(1)
				} else {
					badN.Add(1)
					sampleV.Store(fmt.Sprintf("%s: %d %s", base, resp.StatusCode, strings.TrimSpace(string(b))))
				}
				time.Sleep(5 * time.Millisecond) // the load's pace
			}
		}()
	}
	wg.Wait()
	s, _ := sampleV.Load().(string)
	return okN.Load(), badN.Load(), s
}

// gasCredentialSet is the credential set the handlers of gasInjector
// derive: the same grant id and the same record keys.
func gasCredentialSet(t testing.TB, as *fakeAS, revoke bool) *credentialSet {
	t.Helper()
	c := Credentials{Provider: "generic", ClientID: as.ClientID, ClientSecret: as.Secret, TokenURL: as.tokenURL()}
	if revoke {
		c.RevokeURL = as.revokeURL()
	}
	if err := c.check(grantAuthorizationCode); err != nil {
		t.Fatal(err)
	}
	cs, err := c.resolve(caddy.NewReplacer(), grantAuthorizationCode)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// grantOn is the grant of cs as an instance using storage st holds it, for
// reading and writing records as another instance would (it is not in the
// pool: nothing in this process hears of what it does).
func grantOn(t testing.TB, cs *credentialSet, st certmagic.Storage) *grant {
	t.Helper()
	g, err := newGrant(cs, "grant:elsewhere0000", "")
	if err != nil {
		t.Fatal(err)
	}
	g.env.attach(&use{storage: st})
	t.Cleanup(func() { g.Destruct() })
	return g
}

// putRecord writes an account's grant record through g.
func putRecord(t testing.TB, g *grant, account string, rec *grantRecord) {
	t.Helper()
	if err := g.records.save(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// getRecord reads an account's grant record through g.
func getRecord(t testing.TB, g *grant, account string) (*grantRecord, bool) {
	t.Helper()
	var rec grantRecord
	found, err := g.store.load(context.Background(), g.recordKey(account), &rec)
	if err != nil {
		t.Fatal(err)
	}
	return &rec, found
}

// publishConnect appends a connect of account to the event log through g,
// as the instance that connected it does.
func publishConnect(t testing.TB, g *grant, account string) {
	g.events.publish(context.Background(), account)
}

// seedAccount makes a grant for account at the provider, whose access
// token was obtained at obtained, and stores it through g as a consent on
// another instance would.
func seedAccount(t testing.TB, g *grant, as *fakeAS, account string, obtained time.Time) asSeed {
	t.Helper()
	s := as.seed(account, obtained)
	putRecord(t, g, account, &grantRecord{Account: account, RefreshToken: s.RefreshToken, AccessToken: s.AccessToken,
		Obtained: s.Obtained, Expiry: s.Expiry, ConnectedAt: obtained, LastRefresh: obtained})
	return s
}

// dueWindow is how far ahead of expiry an instance may refresh with
// refresh_before before: before plus its jitter (a tenth), plus slack for
// the provider's and the storage's latency on a loaded machine.
func dueWindow(before time.Duration) time.Duration { return before + before/10 + 500*time.Millisecond }

// reportRedundant fails the test for each redemption of a grant whose
// newest access token was not due.
func reportRedundant(t *testing.T, as *fakeAS, before time.Duration) {
	t.Helper()
	red := as.redundant(dueWindow(before))
	for i, r := range red {
		if i == 5 {
			t.Errorf("… %d more", len(red)-5)
			break
		}
		t.Errorf("redundant redemption of grant %s at %s: its newest access token still had %s (refresh_before %s)",
			r.GrantID, r.At.Format("15:04:05.000"), r.NewestLeft.Round(time.Millisecond), before)
	}
}

// ---- defect 1: redundant redemptions ----

// An idle grant on two instances (no request at all): the background
// refresh of each instance must never redeem a grant the other has just
// refreshed. Every redemption comes when the grant's newest access token
// is due.
func TestFleetIdleGrantRedeemedOncePerRotation(t *testing.T) {
	// 6 s tokens refreshed 2 s ahead: a redemption of a grant another
	// instance has just refreshed finds 4 s or more left on its newest
	// token, well outside the 2.2 s an instance refreshes ahead.
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	s := newGasSetup(t, storage, "refresh_before 2s", func(as *fakeAS) {
		as.Lifetime = 6 * time.Second
		as.ReuseRevokesGrant = true
	})
	s.connect("")
	startChildCaddy(t, storage, gasInjectorSite(s.injector("refresh_before 2s"), s.api.hostport()))
	deadline := time.Now().Add(45 * time.Second)
	for s.as.refreshes() < 5 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // poll the provider's counter; no request is made
	}
	reds := s.as.redemptions()
	t.Logf("%d redemptions of 6 s tokens refreshed 2 s ahead, by two idle instances", len(reds))
	if len(reds) < 5 {
		t.Fatalf("only %d background redemptions in 45 s of 6 s tokens", len(reds))
	}
	reportRedundant(t, s.as, 2*time.Second)
	if n := s.as.invalidGrants(); n != 0 {
		t.Errorf("%d invalid_grant answers", n)
	}
	if s.api.answered(200)+s.api.answered(401) != 0 {
		t.Error("a request reached the API: the test was meant to have no traffic")
	}
}

// Two instances under steady load, against a provider whose rotation
// revokes every access token issued before it (no grace period): no
// request fails, and every redemption is of a due grant. This is the
// issue's black-box observation (30–39 % of requests failed with 401).
func TestFleetGrantUnderLoadWithRevokingRotation(t *testing.T) {
	testFleetGrantUnderLoad(t, fileSystemStorage(filepath.Join(t.TempDir(), "storage")), 2)
}

// The same on Redis.
func TestFleetGrantUnderLoadWithRevokingRotationOnRedis(t *testing.T) {
	testFleetGrantUnderLoad(t, redisStorageOption(startRedis(t), redisPrefixOf(t)), 2)
}

// One instance under steady load: its requests and its background refresh
// never both redeem (the issue saw two rotations within 100 ms), and no
// request fails.
func TestGrantUnderLoadWithRevokingRotationOneInstance(t *testing.T) {
	testFleetGrantUnderLoad(t, fileSystemStorage(filepath.Join(t.TempDir(), "storage")), 1)
}

func testFleetGrantUnderLoad(t *testing.T, storage string, instances int) {
	s := newGasSetup(t, storage, "refresh_before 2s", func(as *fakeAS) {
		as.Lifetime = 4 * time.Second
		as.ReuseRevokesGrant = true
		as.RevokeEarlierAccess = true
	})
	s.connect("")
	bases := []string{s.c.url("")}
	for i := 1; i < instances; i++ {
		b := startChildCaddy(t, storage, gasInjectorSite(s.injector("refresh_before 2s"), s.api.hostport()))
		bases = append(bases, b.url(""))
	}
	const d = 14 * time.Second
	ok, failed, sample := gasLoad(bases, "", 8, d)
	reds := s.as.redemptions()
	t.Logf("%d instances, %s of 4 s tokens refreshed 2 s ahead: %d requests ok, %d failed (%s); %d redemptions, %d invalid_grant",
		instances, d, ok, failed, sample, len(reds), s.as.invalidGrants())
	if failed != 0 {
		t.Errorf("%d of %d requests failed (e.g. %s)", failed, ok+failed, sample)
	}
	reportRedundant(t, s.as, 2*time.Second)
	if len(reds) < 4 {
		t.Errorf("only %d redemptions in %s of 4 s tokens", len(reds), d)
	}
	if n := s.as.invalidGrants(); n != 0 {
		t.Errorf("%d invalid_grant answers", n)
	}
}

// ---- defect 2: the background refresh backs off, off the event loop ----

// flakyGasSetup is newGasSetup on an oab_flaky storage (its faults and its
// root directory returned).
func flakyGasSetup(t *testing.T, extra string, configure func(*fakeAS)) (*gasSetup, *storageFaults, string) {
	t.Helper()
	faults := flakyFaults(t.Name())
	faults.reset()
	t.Cleanup(faults.reset)
	root := filepath.Join(t.TempDir(), "storage")
	s := newGasSetup(t, fmt.Sprintf("oab_flaky {\n\t\troot %s\n\t\tname %s\n\t}", root, t.Name()), extra, configure)
	return s, faults, root
}

// waitRounds waits until the grant's loop has looked at the event log n
// more times (each round of the loop reads it once).
func waitRounds(t *testing.T, faults *storageFaults, g *grant, n int) {
	t.Helper()
	key := g.eventsKey()
	start := faults.countKey(flakyLoad, key)
	deadline := time.Now().Add(time.Duration(n+3) * 2 * watchInterval)
	for faults.countKey(flakyLoad, key) < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("the grant's loop read its event log %d times in %s, want %d", faults.countKey(flakyLoad, key)-start,
				time.Duration(n+3)*2*watchInterval, n)
		}
		time.Sleep(20 * time.Millisecond) // poll the storage's counter
	}
}

// A provider that refuses with Retry-After: the background refresh of an
// idle, due grant asks once and waits as told, and says so once, while
// the loop goes round several times.
func TestIdleGrantRefreshBacksOffAndHonoursRetryAfter(t *testing.T) {
	clock := useFakeClock(t)
	s, faults, _ := flakyGasSetup(t, "", nil)
	s.connect("")
	s.as.refuse(http.StatusServiceUnavailable, "temporarily_unavailable", 120)
	clock.add(time.Hour + time.Minute) // the grant's access token has expired: due
	ge := grantEntry(t)
	deadline := time.Now().Add(20 * time.Second)
	for s.as.refreshAttempts() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll the provider's counter
	}
	if s.as.refreshAttempts() == 0 {
		t.Fatal("the idle grant was never refreshed")
	}
	waitRounds(t, faults, ge, 4)
	if n := s.as.refreshAttempts(); n != 1 {
		t.Errorf("%d refresh attempts while the provider asked to wait 120 s, want 1", n)
	}
	logs := s.c.logs()
	warned := strings.Count(logs, "refreshing an idle grant failed")
	if warned != 1 {
		t.Errorf("the failing idle refresh was logged %d times, want once", warned)
	}
	// The provider answers again, and the wait it asked for has passed.
	s.as.refuse(0, "", 0)
	clock.add(121 * time.Second)
	deadline = time.Now().Add(20 * time.Second)
	for s.as.refreshes() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll the provider's counter
	}
	if s.as.refreshes() != 1 {
		t.Errorf("%d redemptions after the provider came back, want 1", s.as.refreshes())
		for _, l := range strings.Split(s.c.logs(), "\n") {
			if strings.Contains(l, "oauth_bearer") && !strings.Contains(l, "\"debug\"") {
				t.Log(l)
			}
		}
	}
}

// Slow refreshes do not hold up what the grant's loop does besides: on a
// fake clock, three idle grants come due while the provider takes longer
// than the timeout (20 s) to answer, and a disconnect made on another
// instance must still reach this one within the propagation bound (the old
// loop refreshed one account after the other before it read the event log
// again).
func TestSlowIdleRefreshesDoNotHoldUpTheEventLog(t *testing.T) {
	clock := useFakeClock(t)
	s, faults, root := flakyGasSetup(t, "account {http.request.header.X-Account}\n\t\ttimeout 20s", nil)
	ge := grantEntry(t)
	other := grantOn(t, ge.cfg, &certmagic.FileStorage{Path: root})
	for i := range 3 {
		seedAccount(t, other, s.as, fmt.Sprintf("slow%d", i), clock.now())
		publishConnect(t, other, fmt.Sprintf("slow%d", i))
	}
	waitRounds(t, faults, ge, 2) // this instance has read of them
	clock.add(30 * time.Minute)
	s.connect("victim")
	if status, body := gasGet(t, s.c.url("/api/v"), "victim"); status != 200 {
		t.Fatalf("victim: %d %q", status, body)
	}
	s.as.setDelay(time.Minute)
	before := s.as.tokenRequests()
	clock.add(29*time.Minute + 30*time.Second) // the slow accounts are due, victim is not
	deadline := time.Now().Add(20 * time.Second)
	for s.as.tokenRequests() == before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll the provider's counter
	}
	if s.as.tokenRequests() == before {
		t.Fatal("the idle refreshes did not start")
	}
	// Another instance disconnects victim.
	if err := other.records.remove(context.Background(), "victim"); err != nil {
		t.Fatal(err)
	}
	publishConnect(t, other, "victim")
	start := time.Now()
	for {
		status, body := gasGet(t, s.c.url("/api/v"), "victim")
		if status == http.StatusServiceUnavailable && strings.Contains(body, codeConsentRequired) {
			break
		}
		if time.Since(start) > propagationDeadline {
			t.Fatalf("still %d %q %s after a disconnect elsewhere, while idle refreshes wait for the provider", status, body, propagationDeadline)
		}
		time.Sleep(pollInterval)
	}
	t.Logf("the disconnect reached this instance in %s", time.Since(start).Round(time.Millisecond))
}

// ---- defect 3: a slow provider ----

// A provider slower than the old 2 s lock wait: the second instance waits
// for the first one's token (one token request for the fleet) and says
// nothing about the storage, which is fine.
func TestFleetSlowProviderOneTokenRequest(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	as := newFakeAS(t)
	as.Lifetime = 3600 * time.Second
	up := newAPI(t, as)
	a := startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "60s"))
	b := startChildCaddy(t, storage, fleetSite(as, up.URL, tokenStoreStorage, "60s"))
	release := as.hold()
	results := make(chan string, 2)
	get := func(c *childCaddy) {
		resp, err := testClient.Get(c.url("/api"))
		if err != nil {
			results <- err.Error()
			return
		}
		resp.Body.Close()
		results <- fmt.Sprint(resp.StatusCode)
	}
	go get(a)
	as.waitArrived(t) // A asks the provider, holding the lock
	go get(b)
	time.AfterFunc(3*time.Second, release) // the provider answers after 3 s
	for range 2 {
		if r := <-results; r != "200" {
			t.Errorf("a request answered %s", r)
		}
	}
	if n := as.tokenRequests(); n != 1 {
		t.Errorf("%d token requests, want 1: the second instance did not wait for the first", n)
	}
	for _, c := range []*childCaddy{a, b} {
		if strings.Contains(c.logs(), "the shared token store is not usable") {
			t.Errorf("%s said the storage is not usable; it is fine, the provider is slow", c.addr)
		}
	}
}

// The same for a grant, whose lock wait (15 s) was shorter than a
// configured timeout of 25 s: the second instance failed instead of
// waiting for the first one's redemption.
func TestFleetSlowProviderGrantWaitsForTheRedemption(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	root := strings.TrimPrefix(storage, "file_system ")
	s := newGasSetup(t, storage, "timeout 25s", func(as *fakeAS) { as.ReuseRevokesGrant = true })
	other := grantOn(t, gasCredentialSet(t, s.as, true), &certmagic.FileStorage{Path: root})
	// The account's stored access token has expired: whichever instance
	// comes first redeems (19 s), the other must wait for it.
	s.as.setDelay(19 * time.Second)
	seedAccount(t, other, s.as, defaultAccount, time.Now().Add(-2*time.Hour))
	b := startChildCaddy(t, storage, gasInjectorSite(s.injector("timeout 25s"), s.api.hostport()))
	results := make(chan string, 2)
	get := func(u string) {
		resp, err := (&http.Client{Timeout: time.Minute}).Get(u)
		if err != nil {
			results <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		results <- fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	go get(s.c.url("/api/a"))
	deadline := time.Now().Add(20 * time.Second)
	for s.as.tokenRequests() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll the provider's counter: a redemption is in flight
	}
	go get(b.url("/api/b"))
	for range 2 {
		if r := <-results; !strings.HasPrefix(r, "200 ") {
			t.Errorf("a request answered %s", r)
		}
	}
	if n := s.as.refreshAttempts(); n != 1 {
		t.Errorf("%d refresh requests, want 1", n)
	}
}

// ---- defect 4: a configured refresh_token ----

// gasRefreshTokenInjector is an injector of grant refresh_token starting
// from token.
func gasRefreshTokenInjector(as *fakeAS, token, extra string) string {
	return fmt.Sprintf("oauth_bearer generic {\n\t\tgrant refresh_token\n\t\trefresh_token %s\n\t\t%s\n\t\t%s\n\t}", token, gasClient(as, true), extra)
}

// A rolling deploy that changes the configured refresh token: old and new
// instances run side by side. The new token is applied once; the old
// instances then use the stored grant instead of re-seeding from their own
// (rotated away) token, and the grant survives.
func TestConfiguredRefreshTokenRollingDeploy(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	as := newFakeAS(t)
	as.Lifetime = 4 * time.Second
	as.ReuseRevokesGrant = true
	api := newAPI(t, as)
	old, next := as.seed("ops", time.Now()), as.seed("ops", time.Now())
	a := startCaddyWith(t, freeAddr(t), storage, gasInjectorSite(gasRefreshTokenInjector(as, old.RefreshToken, "refresh_before 2s"), api.hostport()))
	if status, body := a.get("/api/old"); status != 200 {
		t.Fatalf("old instance: %d %q", status, body)
	}
	b := startChildCaddy(t, storage, gasInjectorSite(gasRefreshTokenInjector(as, next.RefreshToken, "refresh_before 2s"), api.hostport()))
	if status, body := gasGet(t, b.url("/api/new"), ""); status != 200 {
		t.Fatalf("new instance: %d %q", status, body)
	}
	ok, failed, sample := gasLoad([]string{a.url(""), b.url("")}, "", 4, 10*time.Second)
	t.Logf("%d ok, %d failed (%s); redemptions %d, invalid_grant %d", ok, failed, sample, as.refreshes(), as.invalidGrants())
	if failed != 0 {
		t.Errorf("%d requests failed during the rolling deploy (e.g. %s)", failed, sample)
	}
	if n := as.invalidGrants(); n != 0 {
		t.Errorf("%d invalid_grant answers: an instance re-seeded from a configured token already applied", n)
	}
}

// A reconnect through the consent handler is not overwritten at the next
// refresh by the configured refresh token.
func TestConfiguredRefreshTokenDoesNotOverrideAReconnect(t *testing.T) {
	clock := useFakeClock(t)
	addr := freeAddr(t)
	as := newFakeAS(t)
	as.RedirectURI = "http://" + addr + "/oauth/callback"
	as.Now = clock.now
	as.ReuseRevokesGrant = true
	api := newAPI(t, as)
	configured := as.seed("ops", clock.now())
	s := &gasSetup{t: t, as: as, api: api}
	s.conf = gasSite(as, as.RedirectURI, gasRefreshTokenInjector(as, configured.RefreshToken, ""), api.hostport(), true)
	s.c = startCaddyAt(t, addr, s.conf)
	if status, body := s.c.get("/api/seeded"); status != 200 {
		t.Fatalf("from the configured token: %d %q", status, body)
	}
	s.connect("")
	if status, body := s.c.get("/api/connected"); status != 200 {
		t.Fatalf("after the reconnect: %d %q", status, body)
	}
	connected := api.lastToken()
	clock.add(time.Hour + time.Minute)
	if status, body := s.c.get("/api/refreshed"); status != 200 {
		t.Fatalf("after the refresh: %d %q", status, body)
	}
	if n := as.invalidGrants(); n != 0 {
		t.Errorf("%d invalid_grant answers: the configured (rotated away) token was redeemed again", n)
	}
	st := grantEntryWith(t, func(g *grant) bool { return g.bootstrap != "" })
	rec, _ := getRecord(t, st, defaultAccount)
	if rec.AccessToken == connected || !as.validAccess(rec.AccessToken) {
		t.Errorf("the stored grant is not a refresh of the reconnected one")
	}
}

// A disconnect is not undone by the configured refresh token, even when
// the provider does not rotate it (and no revocation endpoint killed it).
func TestConfiguredRefreshTokenDoesNotUndoADisconnect(t *testing.T) {
	addr := freeAddr(t)
	as := newFakeAS(t)
	as.RedirectURI = "http://" + addr + "/oauth/callback"
	as.KeepRefreshToken = true
	api := newAPI(t, as)
	configured := as.seed("ops", time.Now())
	s := &gasSetup{t: t, as: as, api: api}
	s.conf = gasSite(as, as.RedirectURI, fmt.Sprintf("oauth_bearer generic {\n\t\tgrant refresh_token\n\t\trefresh_token %s\n\t\t%s\n\t}",
		configured.RefreshToken, gasClient(as, false)), api.hostport(), false)
	s.c = startCaddyAt(t, addr, s.conf)
	if status, body := s.c.get("/api/seeded"); status != 200 {
		t.Fatalf("from the configured token: %d %q", status, body)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 30 * time.Second, Transport: authTransport{host: s.c.addr}}
	if status, body := do(t, browser, http.MethodPost, s.c.url("/oauth/disconnect")); status != 200 {
		t.Fatalf("disconnect: %d %q", status, body)
	}
	if status, body := s.c.get("/api/after"); status != http.StatusServiceUnavailable || !strings.Contains(body, codeConsentRequired) {
		t.Errorf("after the disconnect: %d %q, want 503 %s", status, body, codeConsentRequired)
	}
}

// grantEntryWith returns the grant in the pool for which match is true.
func grantEntryWith(t *testing.T, match func(*grant) bool) *grant {
	t.Helper()
	var g *grant
	pool.Range(func(_, v any) bool {
		if e, ok := v.(*grant); ok && match(e) {
			g = e
		}
		return true
	})
	if g == nil {
		t.Fatal("no such grant in the pool")
	}
	return g
}

// ---- defect 5: re-storing a grant the storage refused ----

// A rotation this instance could not store, and a newer consent stored by
// another instance meanwhile: when the storage takes writes again, the
// stale rotation must not overwrite the consent.
func TestUnsavedRotationDoesNotOverwriteANewerConsent(t *testing.T) {
	clock := useFakeClock(t)
	s, faults, root := flakyGasSetup(t, "", nil)
	s.connect("")
	faults.failStores(-1)
	clock.add(time.Hour + time.Minute)
	if status, body := s.c.get("/api/rotated"); status != 200 {
		t.Fatalf("refresh while the storage refuses writes: %d %q", status, body)
	}
	// Another instance, whose storage works, connects the account again.
	other := grantOn(t, grantEntry(t).cfg, &certmagic.FileStorage{Path: root})
	newer := seedAccount(t, other, s.as, defaultAccount, clock.now())
	publishConnect(t, other, defaultAccount)
	faults.clear()
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec, _ := getRecord(t, other, defaultAccount)
		if rec.AccessToken != newer.AccessToken {
			t.Fatalf("the rotation kept in memory overwrote the newer consent stored by another instance")
		}
		if strings.Contains(s.c.logs(), "newer grant is stored") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the instance never dealt with the rotation it kept in memory")
		}
		time.Sleep(20 * time.Millisecond) // poll the storage and the log
	}
	if status, body := s.c.get("/api/after"); status != 200 || s.api.lastToken() != newer.AccessToken {
		t.Errorf("after the storage came back: %d %q with %q, want the newer consent's token", status, body, s.api.lastToken())
	}
}

// ---- defect 6: a reconnect where revocation ends the user's grant ----

// Reconnecting an account at a provider whose revocation of one token ends
// every grant of the user (Auth0, Google) leaves it connected, with the new
// grant, across a refresh.
func TestReconnectKeepsTheNewGrantWhereRevocationEndsTheUsersGrants(t *testing.T) {
	clock := useFakeClock(t)
	s := newGasSetup(t, "", "", func(as *fakeAS) { as.RevocationEndsUser = true })
	s.connect("")
	if status, body := s.c.get("/api/first"); status != 200 {
		t.Fatalf("first grant: %d %q", status, body)
	}
	first := s.api.lastToken()
	s.connect("") // the same user consents again
	if status, body := s.c.get("/api/second"); status != 200 || s.api.lastToken() == first {
		t.Fatalf("after the reconnect: %d %q with the first grant's token %v", status, body, s.api.lastToken() == first)
	}
	clock.add(time.Hour + time.Minute)
	if status, body := s.c.get("/api/refreshed"); status != 200 {
		t.Errorf("after a refresh of the new grant: %d %q", status, body)
	}
	if n := s.as.endedGrants(); n != 0 {
		t.Errorf("%d grants of the user were ended at the provider by the reconnect", n)
	}
}

// ---- defect 7: an account with no grant ----

// Requests for an account that has no grant answer 503 from memory after
// the first: one storage read and one error log, not one per request. A
// connect clears it at once.
func TestUnknownAccountIsRememberedBriefly(t *testing.T) {
	s, faults, _ := flakyGasSetup(t, "account {http.request.header.X-Account}", nil)
	ge := grantEntry(t)
	key := ge.recordKey("nobody")
	for i := range 20 {
		if status, body := gasGet(t, s.c.url(fmt.Sprintf("/api/%d", i)), "nobody"); status != http.StatusServiceUnavailable || !strings.Contains(body, codeConsentRequired) {
			t.Fatalf("request %d: %d %q", i, status, body)
		}
	}
	if n := faults.countKey(flakyLoad, key); n != 1 {
		t.Errorf("20 requests for an account with no grant read its record %d times, want 1", n)
	}
	if n := strings.Count(s.c.logs(), "consent required"); n != 1 {
		t.Errorf("the missing grant was logged %d times, want once", n)
	}
	s.connect("nobody")
	if status, body := gasGet(t, s.c.url("/api/connected"), "nobody"); status != 200 {
		t.Errorf("right after the connect: %d %q", status, body)
	}
}

// A connect on another instance reaches an instance that remembers the
// account as missing through the event log.
func TestUnknownAccountConnectedElsewhere(t *testing.T) {
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "storage"))
	s := newGasSetup(t, storage, "account {http.request.header.X-Account}", nil)
	b := startChildCaddy(t, storage, gasInjectorSite(s.injector("account {http.request.header.X-Account}"), s.api.hostport()))
	if status, _ := gasGet(t, b.url("/api/before"), "carol"); status != http.StatusServiceUnavailable {
		t.Fatalf("before the connect: %d", status)
	}
	start := time.Now()
	s.connect("carol")
	for {
		if status, _ := gasGet(t, b.url("/api/poll"), "carol"); status == 200 {
			break
		}
		if time.Since(start) > propagationDeadline {
			t.Fatalf("B does not serve carol %s after she was connected on A", propagationDeadline)
		}
		time.Sleep(pollInterval)
	}
	t.Logf("the connect reached B in %s", time.Since(start).Round(time.Millisecond))
}

// ---- defect 8: a 401 on a token another instance replaced ----

// The upstream refuses a young token because another instance rotated the
// grant (and the provider revoked the earlier tokens): the stored token is
// taken and the request replayed at once, with no redemption.
func TestGrant401OnAReplacedTokenTakesTheStoredOneAtOnce(t *testing.T) {
	clock := useFakeClock(t)
	s := newGasSetup(t, "", "", func(as *fakeAS) {
		as.RevokeEarlierAccess = true
		as.ReuseRevokesGrant = true
	})
	s.connect("")
	if status, body := s.c.get("/api/a"); status != 200 {
		t.Fatalf("first request: %d %q", status, body)
	}
	ge := grantEntry(t)
	// Another instance redeems the grant and stores the rotation.
	rec, _ := getRecord(t, ge, defaultAccount)
	status, tok := asPost(t, s.as.tokenURL(), map[string]string{"grant_type": "refresh_token", "refresh_token": rec.RefreshToken,
		"client_id": s.as.ClientID, "client_secret": s.as.Secret})
	if status != 200 {
		t.Fatalf("the other instance's refresh: %d %v", status, tok)
	}
	rec.AccessToken, rec.RefreshToken = tok["access_token"].(string), tok["refresh_token"].(string)
	rec.Obtained, rec.Expiry, rec.LastRefresh = clock.now(), clock.now().Add(time.Hour), clock.now()
	putRecord(t, ge, defaultAccount, rec)
	clock.add(5 * time.Second) // the refused token is young
	if status, body := s.c.get("/api/b"); status != 200 {
		t.Fatalf("request after the other instance's rotation: %d %q, want 200 from a replay with the stored token", status, body)
	}
	if s.api.lastToken() != rec.AccessToken {
		t.Error("the replay did not carry the stored token")
	}
	if n := s.as.refreshes(); n != 1 {
		t.Errorf("%d redemptions, want 1 (the other instance's)", n)
	}
}

// ---- defect 9: reload and shutdown are bounded ----

// With a storage whose locks hang, unloading the grant's configuration
// returns within a few seconds.
func TestGrantUnloadIsBoundedWhenTheStorageHangs(t *testing.T) {
	clock := useFakeClock(t)
	s, faults, _ := flakyGasSetup(t, "", nil)
	s.connect("")
	faults.failStores(-1)
	clock.add(time.Hour + time.Minute)
	if status, body := s.c.get("/api/rotated"); status != 200 { // a rotation kept in memory
		t.Fatalf("refresh: %d %q", status, body)
	}
	faults.setHang(flakyLock, true)
	faults.setHang(flakyStore, true)
	start := time.Now()
	if err := s.c.load("http://LISTEN {\n\trespond \"maintenance\" 503\n}"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("unloading the grant took %s", took.Round(time.Millisecond))
	if took > 8*time.Second {
		t.Errorf("unloading the grant took %s with a hanging storage, want a few seconds", took.Round(time.Millisecond))
	}
}

// A rotation the storage refused survives a reload that replaces the
// grant's pool entry (another timeout: same grant, other settings): the
// next configuration redeems the rotated refresh token, not the stale
// stored one, and stores it once the storage takes writes.
func TestUnsavedRotationSurvivesAReloadThatReplacesTheGrant(t *testing.T) {
	clock := useFakeClock(t)
	s, faults, _ := flakyGasSetup(t, "", func(as *fakeAS) { as.ReuseRevokesGrant = true })
	s.connect("")
	faults.failStores(-1)
	clock.add(time.Hour + time.Minute)
	if status, body := s.c.get("/api/rotated"); status != 200 {
		t.Fatalf("refresh: %d %q", status, body)
	}
	if err := s.c.load(strings.Replace(s.conf, "grant authorization_code", "grant authorization_code\n\t\ttimeout 11s", 1)); err != nil {
		t.Fatal(err)
	}
	clock.add(time.Hour + time.Minute)
	if status, body := s.c.get("/api/next"); status != 200 {
		t.Fatalf("after the reload: %d %q", status, body)
	}
	if n := s.as.invalidGrants(); n != 0 {
		t.Errorf("%d invalid_grant: the rotation kept in memory was lost with the old configuration", n)
	}
	faults.clear()
	ge := grantEntryWith(t, func(g *grant) bool { return g.cfg.Timeout == 11*time.Second })
	waitFor(t, func() bool {
		rec, found := getRecord(t, ge, defaultAccount)
		return found && rec.AccessToken == s.api.lastToken()
	})
}

// ---- defect 10: the admin API with many accounts ----

// GET /oauth_bearer/sources counts a grant's accounts without reading each
// record, and …/accounts pages.
func TestAdminSourcesDoesNotReadEveryGrant(t *testing.T) {
	faults := flakyFaults(t.Name())
	faults.reset()
	t.Cleanup(faults.reset)
	root := filepath.Join(t.TempDir(), "storage")
	addr := freeAddr(t)
	as := newFakeAS(t)
	as.RedirectURI = "http://" + addr + "/oauth/callback"
	api := newAPI(t, as)
	cs := gasCredentialSet(t, as, true)
	other := grantOn(t, cs, &certmagic.FileStorage{Path: root})
	const n = 120
	for i := range n {
		seedAccount(t, other, as, fmt.Sprintf("acct%03d", i), time.Now())
	}
	rec, _ := getRecord(t, other, "acct007")
	rec.NeedsConsent, rec.Reason, rec.RefreshToken, rec.AccessToken = true, "the provider refused the refresh token (invalid_grant)", "", ""
	putRecord(t, other, "acct007", rec)
	conf := gasSite(as, as.RedirectURI, gasInjector(as, "account {http.request.header.X-Account}", true), api.hostport(), true)
	c := startCaddyOpts(t, &testCaddy{addr: addr, admin: freeAddr(t),
		storage: fmt.Sprintf("oab_flaky {\n\t\troot %s\n\t\tname %s\n\t}", root, t.Name())}, conf)
	var gs map[string]any
	deadline := time.Now().Add(40 * time.Second) // its first list of the stored grants comes after two heartbeats
	for {
		sources, _ := adminSources(t, c)
		gs = findSource(t, sources, "grant")
		if gs["accounts"] == float64(n) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the instance learns the stored grants in the background
	}
	if gs["accounts"] != float64(n) || gs["accounts_needing_consent"] != 1.0 {
		t.Fatalf("grant source: accounts %v, needing consent %v; want %d and 1", gs["accounts"], gs["accounts_needing_consent"], n)
	}
	loads := faults.count(flakyLoad)
	for range 3 {
		adminSources(t, c)
	}
	if got := faults.count(flakyLoad) - loads; got > 3 {
		t.Errorf("three GET /oauth_bearer/sources made %d storage reads, want none per account", got)
	}
	// …/accounts in pages of 50, following the cursor.
	var all []string
	next := fmt.Sprintf("/oauth_bearer/sources/%s/accounts?limit=50", gs["id"])
	for pages := 0; next != ""; pages++ {
		if pages > 5 {
			t.Fatal("the cursor never ends")
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+c.admin+next, nil)
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var page []map[string]any
		if resp.StatusCode != 200 || json.Unmarshal(body, &page) != nil || len(page) > 50 {
			t.Fatalf("GET %s: %d, %d accounts:\n%s", next, resp.StatusCode, len(page), body)
		}
		for _, a := range page {
			all = append(all, a["account"].(string))
		}
		next = nextLink(resp.Header.Get("Link"))
	}
	if len(all) != n || all[0] != "acct000" || all[n-1] != fmt.Sprintf("acct%03d", n-1) {
		t.Errorf("the pages listed %d accounts (%v … %v), want %d in order", len(all), all[:min(3, len(all))], all[max(0, len(all)-3):], n)
	}
}

// nextLink returns the target of a Link header's rel="next", "" if none.
func nextLink(h string) string {
	for _, part := range strings.Split(h, ",") {
		if strings.Contains(part, `rel="next"`) {
			if i, j := strings.Index(part, "<"), strings.Index(part, ">"); i >= 0 && j > i {
				return part[i+1 : j]
			}
		}
	}
	return ""
}

// ---- issue 14: a rotated refresh token in an answer rejected locally ----

// A refresh answer that is 2xx but whose access token fails validation
// still carried the rotated refresh token: it is stored, and the next
// refresh redeems it (the provider revoked the one before).
func TestRotatedRefreshTokenKeptWhenTheAnswerIsRejected(t *testing.T) {
	for _, quirk := range []string{"token_type", "bad_byte", "expired_jwt"} {
		t.Run(quirk, func(t *testing.T) {
			clock := useFakeClock(t)
			s := newGasSetup(t, "", "", func(as *fakeAS) { as.ReuseRevokesGrant = true })
			s.connect("")
			s.as.quirkNext(quirk)
			clock.add(time.Hour + time.Minute)
			if status, body := s.c.get("/api/rejected"); status != http.StatusBadGateway {
				t.Fatalf("the refresh whose answer is rejected: %d %q, want 502", status, body)
			}
			clock.add(10 * time.Minute) // past the backoff
			if status, body := s.c.get("/api/next"); status != 200 {
				t.Errorf("the next refresh: %d %q", status, body)
			}
			if n := s.as.invalidGrants(); n != 0 {
				t.Errorf("%d invalid_grant: the rotated refresh token was thrown away", n)
			}
		})
	}
}

// ---- the list of stored grants ----

// vanishingListStorage is a file_system storage whose first List fails
// the way certmagic's does when a file vanishes during the walk (a record
// being replaced through a temporary file): with what it found so far and
// an error that reads as "does not exist".
type vanishingListStorage struct {
	*certmagic.FileStorage
	failed atomic.Bool
}

func (s *vanishingListStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	keys, err := s.FileStorage.List(ctx, prefix, recursive)
	if err == nil && len(keys) > 1 && !s.failed.Swap(true) {
		return keys[:len(keys)/2], fmt.Errorf("lstat %s.tmp: %w", prefix, fs.ErrNotExist)
	}
	return keys, err
}

// A listing cut short by a file that vanished is not taken for the whole
// list (the schedule would forget the accounts missing from it, and no
// instance would refresh them): it is tried again.
func TestStoredAccountsAreNeverAPartialListing(t *testing.T) {
	as := newFakeAS(t)
	st := &vanishingListStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	g := grantOn(t, gasCredentialSet(t, as, false), st)
	for i := range 10 {
		seedAccount(t, g, as, fmt.Sprintf("acct%d", i), time.Now())
	}
	accounts, err := g.storedAccounts(context.Background())
	if err != nil || len(accounts) != 10 || !st.failed.Load() {
		t.Errorf("stored accounts: %d (%v), want all 10 despite a listing cut short (it was cut: %v)", len(accounts), err, st.failed.Load())
	}
}

// The instances share the accounts out evenly: with 3 and with 10
// members (random ids, as instances take), each looks after its share of
// 10,000 accounts named alike, within 15 %.
func TestAccountsAreSharedOutEvenly(t *testing.T) {
	for _, n := range []int{3, 10} {
		s := &grantSchedule{}
		for range n {
			s.members = append(s.members, randomID(8))
		}
		owned := map[string]int{}
		for i := range 10000 {
			a := fmt.Sprintf("acct%06d", i)
			for _, m := range s.members {
				s.self = m
				if s.ownsLocked(a) {
					owned[m]++
				}
			}
		}
		total := 0
		for _, m := range s.members {
			total += owned[m]
			if share := float64(owned[m]) * float64(n) / 10000; share < 0.85 || share > 1.15 {
				t.Errorf("%d members: %s looks after %d accounts, %.2f of its share", n, m, owned[m], share)
			}
		}
		if total != 10000 {
			t.Errorf("%d members: %d accounts looked after in all, want each once", n, total)
		}
	}
}

// The upstream refuses the newest stored token because another instance's
// rotation is under way: the provider has revoked the earlier access
// tokens, but the rotating instance has not stored its answer yet. The
// request waits for that rotation and is replayed with its token.
func TestGrant401DuringAnotherInstancesRotationWaitsForIt(t *testing.T) {
	s := newGasSetup(t, "", "", func(as *fakeAS) {
		as.RevokeEarlierAccess = true
		as.ReuseRevokesGrant = true
	})
	s.connect("")
	if status, body := s.c.get("/api/a"); status != 200 {
		t.Fatalf("first request: %d %q", status, body)
	}
	// Another instance (its own refresher, the same storage) rotates the
	// grant; the provider revokes the earlier access tokens and holds its
	// answer.
	other := grantOn(t, gasCredentialSet(t, s.as, true), &certmagic.FileStorage{Path: filepath.Join(s.c.dir, "storage")})
	held, release := s.as.holdRefreshes()
	defer release()
	rotated := make(chan error, 1)
	go func() {
		_, err := other.refresher.refresh(context.Background(), defaultAccount, fetchRequest{force: true})
		rotated <- err
	}()
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the other instance's redemption did not reach the provider")
	}
	type answer struct {
		status int
		body   string
	}
	got := make(chan answer, 1)
	go func() { st, b := s.c.get("/api/b"); got <- answer{st, b} }()
	// The request is refused upstream (its token was revoked) before the
	// rotation is stored.
	deadline := time.Now().Add(20 * time.Second)
	for s.api.answered(401) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request did not reach the upstream")
		}
		time.Sleep(10 * time.Millisecond) // poll the upstream's log
	}
	release()
	if err := <-rotated; err != nil {
		t.Fatalf("the other instance's rotation: %v", err)
	}
	a := <-got
	if a.status != 200 {
		t.Fatalf("request refused during another instance's rotation: %d %q, want 200 from a replay with the rotated token", a.status, a.body)
	}
	rec, _ := getRecord(t, other, defaultAccount)
	if s.api.lastToken() != rec.AccessToken {
		t.Error("the replay did not carry the rotated token")
	}
	if n := s.as.refreshes(); n != 1 {
		t.Errorf("%d redemptions, want 1 (the other instance's)", n)
	}
}

// The token a 401's replay carries is revoked in turn before the upstream
// sees it: while the request waited for another instance's rotation (the
// storage's lock is polled, once a second on file_system, and a loaded
// machine is slower still), that instance rotated again. The stored token
// is newer than the refused replay's: the request is replayed again with
// it, with no redemption of its own. Before, the replay's refusal went to
// the client (4 of 1,758 requests in TestFleetGrantUnderLoadWithRevokingRotation
// on a loaded machine).
func TestGrant401ReplayRefusedByAFurtherRotationReplaysAgain(t *testing.T) {
	s := newGasSetup(t, "", "", func(as *fakeAS) {
		as.RevokeEarlierAccess = true
		as.ReuseRevokesGrant = true
	})
	s.connect("")
	if status, body := s.c.get("/api/a"); status != 200 {
		t.Fatalf("first request: %d %q", status, body)
	}
	other := grantOn(t, gasCredentialSet(t, s.as, true), &certmagic.FileStorage{Path: filepath.Join(s.c.dir, "storage")})
	rotate := func() *grantRecord {
		if _, err := other.refresher.refresh(context.Background(), defaultAccount, fetchRequest{force: true}); err != nil {
			t.Errorf("the other instance's rotation: %v", err)
		}
		rec, _ := getRecord(t, other, defaultAccount)
		return rec
	}
	second := rotate() // revokes the token this instance holds
	var third atomic.Pointer[grantRecord]
	var once sync.Once
	s.api.mu.Lock()
	s.api.arriving = func(auth string) {
		if auth == "Bearer "+second.AccessToken {
			once.Do(func() { third.Store(rotate()) }) // the replay's token is revoked on its way
		}
	}
	s.api.mu.Unlock()
	status, body := s.c.get("/api/b")
	if third.Load() == nil {
		t.Fatal("the request was not replayed with the stored token")
	}
	if status != 200 {
		t.Fatalf("request whose replay met a further rotation: %d %q, want 200 from a replay with the newest stored token", status, body)
	}
	if s.api.lastToken() != third.Load().AccessToken {
		t.Error("the last replay did not carry the newest stored token")
	}
	if n := s.as.refreshes(); n != 2 {
		t.Errorf("%d redemptions, want 2 (the other instance's)", n)
	}
}
