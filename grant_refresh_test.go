package oauthbearer

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Regression tests of the grant's refresh: a refused token is refreshed,
// not replayed; a rotated refresh token is never lost, whatever happens to
// the request, the storage or the configuration; a grant without a refresh
// token takes no lock.

// grantEntry returns the grant in the pool (the test's Caddy has one).
func grantEntry(t *testing.T) *grant {
	t.Helper()
	var g *grant
	pool.Range(func(_, v any) bool {
		if e, ok := v.(*grant); ok {
			g = e
		}
		return true
	})
	if g == nil {
		t.Fatal("no grant in the pool")
	}
	return g
}

// storedGrant reads an account's record from the storage (not from what
// the process holds in memory).
func storedGrant(t *testing.T, g *grant, account string) *grantRecord {
	t.Helper()
	var rec grantRecord
	found, err := g.store.load(context.Background(), g.recordKey(account), &rec)
	if err != nil || !found {
		t.Fatalf("stored grant of %s: found %v, %v", account, found, err)
	}
	return &rec
}

func lastAuthorization(t *testing.T, api *upstream) string {
	t.Helper()
	a := api.authorizations()
	if len(a) == 0 {
		t.Fatal("the API received no request")
	}
	return strings.TrimPrefix(a[len(a)-1], "Bearer ")
}

// Defect 1: a 401 on a grant's token redeemed the refresh token? No: it
// took the stored access token again, the one just refused, and replayed
// it. Now the refusal refreshes under the lock and the replay carries the
// new token.
func TestGrant401RefreshesInsteadOfReplayingTheRefusedToken(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "")
	g.as.ReuseRevokesGrant = true
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	if status, body := g.c.get("/api/a"); status != 200 {
		t.Fatalf("first request: %d %q", status, body)
	}
	refused := lastAuthorization(t, g.api)
	// The provider revokes the access token (not the grant); the token is
	// old enough to be dropped on a 401.
	g.as.revokeAccess(refused)
	clock.add(time.Minute)
	if status, body := g.c.get("/api/b"); status != 200 {
		t.Fatalf("request after the revocation: %d %q, want 200 from the replay", status, body)
	}
	auths := g.api.authorizations()
	replayed := strings.TrimPrefix(auths[len(auths)-1], "Bearer ")
	if auths[len(auths)-2] != "Bearer "+refused || replayed == refused {
		t.Errorf("the request went out with %q then %q; want the refused token, then a new one", auths[len(auths)-2], auths[len(auths)-1])
	}
	if g.as.refreshes() != 1 || g.as.invalidGrants() != 0 {
		t.Errorf("refreshes %d, invalid_grant %d; want 1 and 0", g.as.refreshes(), g.as.invalidGrants())
	}
	// Later requests use the new token without refreshing again.
	if status, _ := g.c.get("/api/c"); status != 200 || lastAuthorization(t, g.api) != replayed || g.as.refreshes() != 1 {
		t.Errorf("next request: %d with %q, refreshes %d", status, lastAuthorization(t, g.api), g.as.refreshes())
	}
}

// Defect 1, second half: when another instance refreshed already (the
// stored access token is not the refused one), the refusal takes the
// stored token and redeems nothing.
func TestGrant401TakesTheTokenAnotherInstanceStored(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "")
	g.as.ReuseRevokesGrant = true
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	g.c.get("/api/a")
	refused := lastAuthorization(t, g.api)

	// "Another instance" refreshes: redeems the stored refresh token at the
	// provider and stores the rotated grant.
	ge := grantEntry(t)
	rec := storedGrant(t, ge, defaultAccount)
	status, tok := asPost(t, g.as.tokenURL(), map[string]string{"grant_type": "refresh_token", "refresh_token": rec.RefreshToken,
		"client_id": g.as.ClientID, "client_secret": g.as.Secret})
	if status != 200 {
		t.Fatalf("refresh by the other instance: %d %v", status, tok)
	}
	rec.AccessToken, rec.RefreshToken = tok["access_token"].(string), tok["refresh_token"].(string)
	rec.Obtained, rec.Expiry = clock.now(), clock.now().Add(time.Hour)
	if err := ge.store.save(context.Background(), ge.recordKey(defaultAccount), rec); err != nil {
		t.Fatal(err)
	}

	g.as.revokeAccess(refused)
	clock.add(time.Minute)
	if status, body := g.c.get("/api/b"); status != 200 {
		t.Fatalf("request after the revocation: %d %q", status, body)
	}
	if got := lastAuthorization(t, g.api); got != rec.AccessToken {
		t.Errorf("the replay carried %q, want the token the other instance stored", got)
	}
	if g.as.refreshes() != 1 || g.as.invalidGrants() != 0 {
		t.Errorf("refreshes %d (the other instance's only), invalid_grant %d; want 1 and 0", g.as.refreshes(), g.as.invalidGrants())
	}
}

// flakyGrantSetup is newGrantSetup on an oab_flaky storage whose faults the
// test controls.
func flakyGrantSetup(t *testing.T, name string) (*grantSetup, *storageFaults) {
	t.Helper()
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/et/callback"
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = redirect, true
	as.ScopeSep = ","
	as.ReuseRevokesGrant = true
	if testClock != nil {
		as.Now = testClock.now
	}
	api := newAPI(t, as)
	t.Setenv("CAS_SECRET", as.Secret)
	faults := flakyFaults(name)
	faults.reset()
	t.Cleanup(faults.reset)
	g := &grantSetup{t: t, as: as, api: api, conf: grantConfig(as, redirect, "", api.hostport())}
	g.c = startCaddyWith(t, addr, fmt.Sprintf("oab_flaky {\n\t\troot %s\n\t\tname %s\n\t}", filepath.Join(t.TempDir(), "storage"), name), g.conf)
	return g, faults
}

// Defect 2: the storage refuses the rotated grant a few times: it is
// stored by the retries made while the lock is held, and used.
func TestRotatedGrantStoredAfterTheStorageRefusesItAFewTimes(t *testing.T) {
	clock := useFakeClock(t)
	g, faults := flakyGrantSetup(t, "rotate-few")
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	faults.failStores(3)
	clock.add(3601 * time.Second)
	if status, body := g.c.get("/api/a"); status != 200 {
		t.Fatalf("refresh while the storage fails: %d %q", status, body)
	}
	rec := storedGrant(t, grantEntry(t), defaultAccount)
	if rec.AccessToken != lastAuthorization(t, g.api) {
		t.Error("the stored grant is not the rotated one the request used")
	}
	if g.as.refreshes() != 1 || g.as.liveRefreshTokens() != 1 {
		t.Errorf("refreshes %d, live refresh tokens %d", g.as.refreshes(), g.as.liveRefreshTokens())
	}
}

// Defect 2: the storage keeps refusing. The rotated grant is used from
// memory (the next refresh redeems the new refresh token, not the stale
// stored one, which the provider would take as reuse and revoke the whole
// grant), and stored as soon as the storage takes it again.
func TestRotatedGrantKeptInMemoryUntilTheStorageTakesIt(t *testing.T) {
	clock := useFakeClock(t)
	g, faults := flakyGrantSetup(t, "rotate-down")
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	stale := storedGrant(t, grantEntry(t), defaultAccount).RefreshToken
	faults.failStores(-1)
	for i := 1; i <= 2; i++ {
		clock.add(3601 * time.Second)
		if status, body := g.c.get(fmt.Sprintf("/api/%d", i)); status != 200 {
			t.Fatalf("refresh %d with the storage down: %d %q", i, status, body)
		}
	}
	if g.as.refreshes() != 2 || g.as.invalidGrants() != 0 || g.as.liveRefreshTokens() != 1 {
		t.Fatalf("refreshes %d, invalid_grant %d, live refresh tokens %d; want 2, 0, 1",
			g.as.refreshes(), g.as.invalidGrants(), g.as.liveRefreshTokens())
	}
	if !strings.Contains(g.c.logs(), "storing the refreshed grant failed") {
		t.Error("no error logged for the grant the storage refused")
	}
	faults.clear()
	ge := grantEntry(t)
	waitFor(t, func() bool {
		var rec grantRecord
		found, err := ge.store.load(context.Background(), ge.recordKey(defaultAccount), &rec)
		return err == nil && found && rec.RefreshToken != stale && rec.AccessToken == lastAuthorization(t, g.api) &&
			strings.Contains(g.c.logs(), "the refreshed grant is stored now") // logged once the lock is released
	})
}

// Defect 2: the client gives up while the refresh is in flight. The
// answer is still read and stored: the next request uses it, and nothing
// is redeemed twice.
func TestRotatedGrantStoredWhenTheClientGivesUp(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "")
	g.as.ReuseRevokesGrant = true
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	held, release := g.as.holdRefreshes()
	clock.add(3601 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.c.url("/api/gives-up"), nil)
	done := make(chan error, 1)
	go func() {
		resp, err := testClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-held // the refresh token is rotated at the provider
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the client did not give up")
	}
	release()
	ge := grantEntry(t)
	waitFor(t, func() bool {
		var rec grantRecord
		found, _ := ge.store.load(context.Background(), ge.recordKey(defaultAccount), &rec)
		return found && g.as.validAccess(rec.AccessToken)
	})
	if status, body := g.c.get("/api/next"); status != 200 {
		t.Fatalf("next request: %d %q", status, body)
	}
	if g.as.refreshes() != 1 || g.as.invalidGrants() != 0 || g.as.liveRefreshTokens() != 1 {
		t.Errorf("refreshes %d, invalid_grant %d, live refresh tokens %d; want 1, 0, 1",
			g.as.refreshes(), g.as.invalidGrants(), g.as.liveRefreshTokens())
	}
}

// Defect 2: the configuration is unloaded while the refresh is in flight
// (a reload that drops the handler). The rotated grant is stored; the next
// configuration uses it without a second redemption.
func TestRotatedGrantStoredWhenTheConfigIsUnloaded(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "")
	g.as.ReuseRevokesGrant = true
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	held, release := g.as.holdRefreshes()
	clock.add(3601 * time.Second)
	done := make(chan int, 1)
	go func() {
		resp, err := testClient.Get(g.c.url("/api/during-reload"))
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	<-held
	// A configuration without the grant: its pool entry is destructed.
	if err := g.c.load("http://LISTEN {\n\trespond \"maintenance\" 503\n}"); err != nil {
		t.Fatal(err)
	}
	pool.Range(func(_, v any) bool {
		if _, ok := v.(*grant); ok {
			t.Fatal("the grant outlived the configuration")
		}
		return true
	})
	release() // the provider answers only now
	<-done
	if err := g.c.load(g.conf); err != nil {
		t.Fatal(err)
	}
	if status, body := g.c.get("/api/after"); status != 200 {
		t.Fatalf("after the reload: %d %q", status, body)
	}
	if g.as.refreshes() != 1 || g.as.invalidGrants() != 0 || g.as.liveRefreshTokens() != 1 {
		t.Errorf("refreshes %d, invalid_grant %d, live refresh tokens %d; want 1, 0, 1",
			g.as.refreshes(), g.as.invalidGrants(), g.as.liveRefreshTokens())
	}
}

// Defect 6: a grant without a refresh token is used until its access
// token expires, and is not refreshed ahead: requests in what would be its
// refresh window take no storage lock.
func TestGrantWithoutRefreshTokenTakesNoLockPerRequest(t *testing.T) {
	clock := useFakeClock(t)
	g, faults := flakyGrantSetup(t, "no-refresh-token")
	g.as.NoRefreshToken = true
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	if status, _ := g.c.get("/api/first"); status != 200 {
		t.Fatal("first request failed")
	}
	clock.add(3600*time.Second - 30*time.Second) // inside refresh_before (60s)
	locks := faults.count(flakyLock)
	for i := 0; i < 20; i++ {
		if status, body := g.c.get(fmt.Sprintf("/api/%d", i)); status != 200 {
			t.Fatalf("request %d in the window: %d %q", i, status, body)
		}
	}
	src := grantEntry(t).source(defaultAccount)
	waitFor(t, func() bool { return !src.refreshing.Load() })
	if n := faults.count(flakyLock) - locks; n != 0 {
		t.Errorf("20 requests took the storage lock %d times", n)
	}
	clock.add(time.Minute) // expired
	if status, body := g.c.get("/api/after"); status != 503 || !strings.Contains(body, "consent_required") {
		t.Errorf("after expiry: %d %q, want 503 consent_required", status, body)
	}
}
