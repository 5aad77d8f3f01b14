package oauthbearer

// Several instances sharing a grant's storage: what the README promises
// ("Authorization-code grant" → "Several instances"): a disconnect or a new
// connect on one instance takes effect on every instance within about 2
// seconds (the event log, read every watchInterval), and a reload with
// another storage switches the grants to it at once. Each test runs a real
// Caddy in this process (A, with the consent endpoints) and, for the
// multi-instance ones, a second Caddy process (B, the injector only) on the
// same storage: file_system, or oab_redis (redisstorage_test.go), whose
// locks are leases and which has no rename.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// propagationDeadline bounds the wait for another instance to apply a
// connect or a disconnect. The README says about 2 s (watchInterval); the
// bound is generous so that a loaded machine does not make the test flaky,
// and the measured time is logged.
const propagationDeadline = 15 * time.Second

// pollInterval is the pause between two requests of a polling loop.
const pollInterval = 20 * time.Millisecond

// stableFor is how long a test keeps checking that a propagated change
// stays in effect: two watch intervals and a margin, so that every
// instance's loop has looked at the event log again meanwhile.
const stableFor = 2*watchInterval + time.Second

// A disconnect on A reaches B through the event log: B, which holds a
// cached, valid access token, stops forwarding within the bound, answers
// 503 consent_required, and never forwards again.
func TestClusterDisconnectPropagates(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy instances for about 10 s")
	}
	testDisconnectPropagates(t, fileSystemStorage(filepath.Join(t.TempDir(), "storage")))
}

// The same on a Redis storage shared by both processes.
func TestClusterDisconnectPropagatesOnRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy instances and Redis for about 10 s")
	}
	storage := redisStorageOption(startRedis(t), redisPrefixOf(t))
	testDisconnectPropagates(t, storage)
}

// testDisconnectPropagates runs the disconnect test with A and B on
// storage (a storage global option).
func testDisconnectPropagates(t *testing.T, storage string) {
	g := newGrantSetupWithStorage(t, storage, "", 0)
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent on A: %d %q", status, body)
	}
	if status, body := g.c.get("/api/a"); status != 200 {
		t.Fatalf("request through A: %d %q", status, body)
	}
	tokA := g.api.authorizations()[0]

	// B: its own upstream, so that what B forwards is told apart from A's.
	apiB := newAPIUpstream(t, g.as)
	b := startChildCaddy(t, storage, injectorSite(g.as, g.tokenURLOf(), "", apiB.hostport()))
	for i := range 5 {
		if status, body := b.get(t, fmt.Sprintf("/api/b%d", i)); status != 200 {
			t.Fatalf("request %d through B: %d %q", i, status, body)
		}
	}
	if got := apiB.authorizations(); len(got) != 5 || got[0] != tokA || got[4] != tokA {
		t.Fatalf("B forwarded %q, want 5 requests with A's token", got)
	}
	// B serves from a cached token: one fetch (from the storage) for five
	// requests. So what stops B below is the event log, not a cache miss:
	// the token it holds lives for an hour.
	if n := tokensObtained(b.logs()); n != 1 {
		t.Fatalf("B obtained %d tokens for 5 requests, want 1 (a cached token); its log:\n%s", n, b.logs())
	}
	if !strings.Contains(b.logs(), `"origin":"stored"`) {
		t.Fatalf("B's token was not taken from the shared storage; its log:\n%s", b.logs())
	}

	start := time.Now()
	if status, body := g.disconnect(""); status != 200 || !strings.Contains(body, `"disconnected":true`) {
		t.Fatalf("disconnect on A: %d %q", status, body)
	}
	disconnected := time.Since(start)
	if status, body := g.c.get("/api/a-after"); status != http.StatusServiceUnavailable || !strings.Contains(body, codeConsentRequired) {
		t.Errorf("A after its own disconnect: %d %q, want 503 %s at once", status, body, codeConsentRequired)
	}

	// Poll B until it answers 503 consent_required. Until then it may
	// answer 200, or 401: the disconnect revoked the token at the
	// provider, and B passes the upstream's 401 to a token this young on
	// (minAgeToInvalidate).
	answers := map[int]int{}
	var odd answerLog
	var took time.Duration
	for {
		status, body := b.get(t, "/api/poll")
		if status == http.StatusServiceUnavailable && strings.Contains(body, codeConsentRequired) {
			took = time.Since(start)
			break
		}
		answers[status]++
		if status != 200 && status != http.StatusUnauthorized {
			odd.add(status, body)
		}
		if time.Since(start) > propagationDeadline {
			t.Fatalf("B still forwards %s after the disconnect on A (answers %v), want 503 %s within about %s (README)",
				propagationDeadline, answers, codeConsentRequired, watchInterval)
		}
		time.Sleep(pollInterval)
	}
	odd.report(t, "while the disconnect propagated, B answered other than 200, 401 or 503")
	forwarded := len(apiB.authorizations())
	t.Logf("disconnect on A took %s; B answered 503 %s %s after it was sent (answers before: %v)",
		disconnected.Round(time.Millisecond), codeConsentRequired, took.Round(time.Millisecond), answers)

	// From then on B never forwards again.
	polls := 0
	var after answerLog
	for until := time.Now().Add(stableFor); time.Now().Before(until); polls++ {
		if status, body := b.get(t, "/api/after"); status != http.StatusServiceUnavailable || !strings.Contains(body, codeConsentRequired) {
			after.add(status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	after.report(t, "after the disconnect propagated, B answered other than 503 "+codeConsentRequired)
	if n := len(apiB.authorizations()); n != forwarded {
		t.Errorf("B forwarded %d requests after it had answered 503 (of %d sent)", n-forwarded, polls)
	}
}

// A reconnect on A (a new consent; the provider then revokes the replaced
// grant's access token) reaches B: B switches to the new grant's access
// token, the one A uses, within the bound, and does not switch back.
//
// B answers 200 throughout: its old token (until the provider revokes it),
// then, on the upstream's 401 to the revoked token, the new grant's token,
// which it finds in the storage and replays with at once, although the
// refused token is younger than minAgeToInvalidate (issue 16, defect 8);
// or the new token once its watch has read the event log. At no moment is
// the account without a stored grant, so B has no reason to answer 503 or
// 502 either.
func TestClusterReconnectPropagates(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy instances for about 10 s")
	}
	testReconnectPropagates(t, false)
}

// The same when B's token is older than minAgeToInvalidate, as a token
// mostly is: then no request through B fails at all. The first 401 to the
// revoked old token makes B drop it and replay the request with the grant
// it finds in the storage, the new one, without waiting for the event log.
// A (and the provider) run a minute behind B, so that the tokens A obtains
// are a minute old to B.
func TestClusterReconnectPropagatesWithoutFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy instances for about 10 s")
	}
	testReconnectPropagates(t, true)
}

func testReconnectPropagates(t *testing.T, aged bool) {
	if aged {
		useFakeClock(t).add(-time.Minute)
	}
	g := newGrantSetup(t, "")
	storage := fileSystemStorage(filepath.Join(g.c.dir, "storage"))
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent on A: %d %q", status, body)
	}
	if status, body := g.c.get("/api/a1"); status != 200 {
		t.Fatalf("request through A: %d %q", status, body)
	}
	tok1 := g.api.authorizations()[0]

	apiB := newAPIUpstream(t, g.as)
	b := startChildCaddy(t, storage, injectorSite(g.as, g.tokenURLOf(), "", apiB.hostport()))
	for i := range 3 {
		if status, body := b.get(t, fmt.Sprintf("/api/b%d", i)); status != 200 {
			t.Fatalf("request %d through B: %d %q", i, status, body)
		}
	}
	if got := apiB.authorizations(); len(got) != 3 || got[2] != tok1 {
		t.Fatalf("B forwarded %q, want A's token %q", got, tok1)
	}
	if n := tokensObtained(b.logs()); n != 1 {
		t.Fatalf("B obtained %d tokens for 3 requests, want 1 (a cached token)", n)
	}

	start := time.Now()
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("reconnect on A: %d %q", status, body)
	}
	reconnected := time.Since(start)
	if status, body := g.c.get("/api/a2"); status != 200 {
		t.Fatalf("request through A after the reconnect: %d %q", status, body)
	}
	auths := g.api.authorizations()
	tok2 := auths[len(auths)-1]
	if tok2 == tok1 {
		t.Fatal("A still uses the old grant's token after the reconnect")
	}
	// A reconnect does not revoke the replaced grant (issue 16, defect 6);
	// the provider revokes its access token here, so that B's cached token
	// is dead and the test shows how B gets off it.
	g.as.revokeAccess(strings.TrimPrefix(tok1, "Bearer "))

	// Poll B until its upstream sees the new token.
	answers := map[int]int{}
	var odd answerLog
	var took time.Duration
	for {
		seenBefore := len(apiB.authorizations())
		status, body := b.get(t, "/api/poll")
		answers[status]++
		sent := apiB.authorizations()[seenBefore:]
		if status != 200 {
			odd.add(status, body)
		}
		if len(sent) > 0 && sent[len(sent)-1] == tok2 {
			took = time.Since(start)
			if status != 200 {
				t.Errorf("B's first request with the new token: %d %q", status, body)
			}
			break
		}
		if time.Since(start) > propagationDeadline {
			t.Fatalf("B does not use the new grant %s after the reconnect on A (answers %v)", propagationDeadline, answers)
		}
		time.Sleep(pollInterval)
	}
	t.Logf("reconnect on A took %s; B sent the new token %s after it began (answers before and at the switch: %v)",
		reconnected.Round(time.Millisecond), took.Round(time.Millisecond), answers)
	odd.report(t, "B failed requests during the reconnect")

	// From then on B uses the new token only, successfully.
	switched := len(apiB.authorizations())
	var after answerLog
	for until := time.Now().Add(stableFor); time.Now().Before(until); {
		if status, body := b.get(t, "/api/after"); status != 200 {
			after.add(status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	after.report(t, "B failed requests after switching to the new grant")
	for _, a := range apiB.authorizations()[switched:] {
		if a != tok2 {
			t.Errorf("B sent %q after switching to the new grant's %q", a, tok2)
			break
		}
	}
	// Two live refresh tokens: the replaced grant is not revoked.
	if g.as.InvalidGrants.Load() != 0 || g.as.liveRefreshTokens() != 2 || g.as.CodeExchanges.Load() != 2 || g.as.Refreshes.Load() != 0 {
		t.Errorf("invalid_grant %d, live refresh tokens %d, code exchanges %d, refreshes %d; want 0, 2, 2, 0",
			g.as.InvalidGrants.Load(), g.as.liveRefreshTokens(), g.as.CodeExchanges.Load(), g.as.Refreshes.Load())
	}
}

// A reload with another storage, and the same site (same credentials, so
// the grant's pool entry lives through the reload), switches the grant to
// the new storage: a new connect lands there, not in the first storage,
// and an account stored only in the first is not connected any more.
func TestReloadWithAnotherStorageSwitchesGrants(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	dir1 := filepath.Join(g.c.dir, "storage")
	dir2 := filepath.Join(t.TempDir(), "storage2")
	if status, body := g.connect("alice"); status != 200 {
		t.Fatalf("connect alice: %d %q", status, body)
	}
	if !hasRecord(t, dir1, "alice") {
		t.Fatalf("alice's grant is not stored in %s", dir1)
	}
	before := grantEntries()
	if len(before) == 0 {
		t.Fatal("no grant in the pool")
	}

	if err := g.c.loadWithStorage(fileSystemStorage(dir2), g.conf); err != nil {
		t.Fatalf("reload with storage %s: %v", dir2, err)
	}
	after := grantEntries()
	for e := range before {
		if !after[e] {
			t.Fatal("the reload replaced the grant's pool entry: the test would not exercise a surviving entry")
		}
	}

	if status, body := g.connect("bob"); status != 200 {
		t.Fatalf("connect bob after the reload: %d %q", status, body)
	}
	if !hasRecord(t, dir2, "bob") {
		t.Errorf("bob's grant is not stored in the new storage %s", dir2)
	}
	if hasRecord(t, dir1, "bob") {
		t.Errorf("bob's grant was stored in the first configuration's storage %s", dir1)
	}
	if st := g.status("alice"); st["connected"] != false {
		t.Errorf("status of alice, whose grant is only in the old storage: %v, want not connected", st)
	}
	if st := g.status("bob"); st["connected"] != true {
		t.Errorf("status of bob: %v, want connected", st)
	}
	if status, body := g.c.get("/api/bob", "X-Account", "bob"); status != 200 {
		t.Errorf("request for bob: %d %q", status, body)
	}
	if status, body := g.c.get("/api/alice", "X-Account", "alice"); status != http.StatusServiceUnavailable || !strings.Contains(body, codeConsentRequired) {
		t.Errorf("request for alice: %d %q, want 503 %s", status, body, codeConsentRequired)
	}
}

// After a reload with another storage, an account whose grant is only in
// the first storage is not served any more, within the bound of a
// disconnect: the README says the reload switches the grants to the new
// storage at once, and status already says the account is not connected.
// Here the account's token was cached (a request used it) before the
// reload.
func TestReloadWithAnotherStorageDropsCachedGrants(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	dir2 := filepath.Join(t.TempDir(), "storage2")
	if status, body := g.connect("alice"); status != 200 {
		t.Fatalf("connect alice: %d %q", status, body)
	}
	if status, body := g.c.get("/api/alice", "X-Account", "alice"); status != 200 {
		t.Fatalf("request for alice: %d %q", status, body)
	}

	start := time.Now()
	if err := g.c.loadWithStorage(fileSystemStorage(dir2), g.conf); err != nil {
		t.Fatalf("reload with storage %s: %v", dir2, err)
	}
	if st := g.status("alice"); st["connected"] != false {
		t.Fatalf("status of alice after the reload: %v, want not connected", st)
	}
	served := 0
	for {
		status, body := g.c.get("/api/alice", "X-Account", "alice")
		if status == http.StatusServiceUnavailable && strings.Contains(body, codeConsentRequired) {
			break
		}
		if status != 200 {
			t.Fatalf("request for alice after the reload: %d %q", status, body)
		}
		served++
		if time.Since(start) > propagationDeadline {
			t.Fatalf("%s after the reload with another storage, requests for alice (not connected in it, as status says) are still forwarded with the first storage's token (%d forwarded)",
				propagationDeadline, served)
		}
		time.Sleep(pollInterval)
	}
	t.Logf("alice's requests answered 503 %s %s after the reload (%d forwarded meanwhile)",
		codeConsentRequired, time.Since(start).Round(time.Millisecond), served)
}

// After a reload with another storage, an account connected in the new
// storage (here by this instance, before: another instance does the same)
// is served with the new storage's grant, within the bound of a connect,
// even when this instance cached the account's token from the first
// storage and had read as many events in the first storage's log as the
// new one holds.
func TestReloadWithAnotherStorageAppliesItsGrants(t *testing.T) {
	dirOld := filepath.Join(t.TempDir(), "old")
	dirNew := filepath.Join(t.TempDir(), "new")
	g := newGrantSetupWithStorage(t, fileSystemStorage(dirNew), "account {http.request.header.X-Account}", 0)
	// The new storage: alice connected (its event log: one connect).
	issued := accessTokensOf(g.as)
	if status, body := g.connect("alice"); status != 200 {
		t.Fatalf("connect alice in the new storage: %d %q", status, body)
	}
	var tokNew string
	for tok := range accessTokensOf(g.as) {
		if !issued[tok] {
			tokNew = "Bearer " + tok
		}
	}

	// The first storage: alice connected with another grant, her token
	// cached by a request, and its event log (one connect) read.
	if err := g.c.loadWithStorage(fileSystemStorage(dirOld), g.conf); err != nil {
		t.Fatal(err)
	}
	if status, body := g.connect("alice"); status != 200 {
		t.Fatalf("connect alice in the first storage: %d %q", status, body)
	}
	if status, body := g.c.get("/api/alice", "X-Account", "alice"); status != 200 {
		t.Fatalf("request for alice: %d %q", status, body)
	}
	auths := g.api.authorizations()
	tokOld := auths[len(auths)-1]
	if tokOld == tokNew || tokNew == "" {
		t.Fatalf("the two grants' tokens: %q and %q", tokOld, tokNew)
	}
	deadline := time.Now().Add(propagationDeadline)
	for eventsSeen() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the grant did not read its event log")
		}
		time.Sleep(pollInterval)
	}

	// Switch to the new storage.
	start := time.Now()
	if err := g.c.loadWithStorage(fileSystemStorage(dirNew), g.conf); err != nil {
		t.Fatal(err)
	}
	for {
		n := len(g.api.authorizations())
		status, body := g.c.get("/api/alice", "X-Account", "alice")
		if status != 200 {
			t.Fatalf("request for alice after the reload: %d %q", status, body)
		}
		if sent := g.api.authorizations()[n:]; len(sent) > 0 && sent[len(sent)-1] == tokNew {
			break
		}
		if time.Since(start) > propagationDeadline {
			t.Fatalf("%s after the reload with another storage, alice's requests still carry the first storage's grant, not the one stored in the new storage",
				propagationDeadline)
		}
		time.Sleep(pollInterval)
	}
	t.Logf("alice's requests carry the new storage's grant %s after the reload", time.Since(start).Round(time.Millisecond))
}

// After a reload with another storage, an account this instance knew to
// have no grant in the first storage (a request asked for it there) is
// served from the grant stored in the new storage, within the bound of a
// connect, not answered 503 for the minute an absence is remembered.
func TestReloadWithAnotherStorageForgetsAccountsMissingFromTheOld(t *testing.T) {
	dirOld := filepath.Join(t.TempDir(), "old")
	dirNew := filepath.Join(t.TempDir(), "new")
	g := newGrantSetupWithStorage(t, fileSystemStorage(dirNew), "account {http.request.header.X-Account}", 0)
	if status, body := g.connect("bob"); status != 200 {
		t.Fatalf("connect bob in the new storage: %d %q", status, body)
	}
	// The first storage: two other accounts connected (its event log
	// holds more events than the new one's), the log read, and bob asked
	// for.
	if err := g.c.loadWithStorage(fileSystemStorage(dirOld), g.conf); err != nil {
		t.Fatal(err)
	}
	for _, account := range []string{"carol", "dave"} {
		if status, body := g.connect(account); status != 200 {
			t.Fatalf("connect %s in the first storage: %d %q", account, status, body)
		}
	}
	deadline := time.Now().Add(propagationDeadline)
	for eventsSeen() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the grant did not read the first storage's event log")
		}
		time.Sleep(pollInterval)
	}
	if status, body := g.c.get("/api/bob", "X-Account", "bob"); status != http.StatusServiceUnavailable || !strings.Contains(body, codeConsentRequired) {
		t.Fatalf("request for bob in the first storage, where he has no grant: %d %q, want 503 %s", status, body, codeConsentRequired)
	}

	start := time.Now()
	if err := g.c.loadWithStorage(fileSystemStorage(dirNew), g.conf); err != nil {
		t.Fatal(err)
	}
	if st := g.status("bob"); st["connected"] != true {
		t.Fatalf("status of bob after the reload: %v, want connected", st)
	}
	for {
		status, body := g.c.get("/api/bob", "X-Account", "bob")
		if status == 200 {
			break
		}
		if time.Since(start) > propagationDeadline {
			t.Fatalf("%s after the reload with another storage, requests for bob (connected in it, as status says) still answer %d %q: the absence read from the first storage is remembered",
				propagationDeadline, status, body)
		}
		time.Sleep(pollInterval)
	}
	t.Logf("bob served %s after the reload", time.Since(start).Round(time.Millisecond))
}

// A configured refresh token seeds the grant of each storage it is used
// with once: its seeds are kept in the storage. After a reload with
// another storage, the token is applied there as a start on that storage
// would, instead of the account answering 503 until a restart because the
// first storage had it applied.
func TestReloadWithAnotherStorageSeedsItFromTheConfiguredToken(t *testing.T) {
	dirA := filepath.Join(t.TempDir(), "a")
	dirB := filepath.Join(t.TempDir(), "b")
	as := newGrantAS(t, "")
	as.KeepRefreshToken = true // the configured token stays valid after its first use
	api := newGrantAPI(t, as)
	configured := as.seed("ops", time.Now())
	conf := gasInjectorSite(fmt.Sprintf("oauth_bearer generic {\n\t\tgrant refresh_token\n\t\trefresh_token %s\n\t\t%s\n\t}",
		configured.RefreshToken, gasClient(as, false)), api.hostport())
	c := startCaddyWith(t, freeAddr(t), fileSystemStorage(dirA), conf)
	if status, body := c.get("/api/a"); status != 200 {
		t.Fatalf("from the configured token in the first storage: %d %q", status, body)
	}
	if !hasRecord(t, dirA, defaultAccount) {
		t.Fatalf("no grant stored in %s", dirA)
	}

	start := time.Now()
	if err := c.loadWithStorage(fileSystemStorage(dirB), conf); err != nil {
		t.Fatal(err)
	}
	for !hasRecord(t, dirB, defaultAccount) {
		status, body := c.get("/api/b")
		if time.Since(start) > propagationDeadline {
			t.Fatalf("%s after the reload with another storage, the configured refresh token has not seeded it (last answer %d %q)",
				propagationDeadline, status, body)
		}
		time.Sleep(pollInterval)
	}
	if status, body := c.get("/api/b"); status != 200 {
		t.Errorf("after the seed of the second storage: %d %q", status, body)
	}
}

// accessTokensOf returns the access tokens as issued so far.
func accessTokensOf(as *codeAS) map[string]bool {
	as.mu.Lock()
	defer as.mu.Unlock()
	m := map[string]bool{}
	for tok := range as.accesses {
		m[tok] = true
	}
	return m
}

// eventsSeen returns the highest sequence number of the event log any
// pooled grant has read.
func eventsSeen() uint64 {
	var n uint64
	for g := range grantEntries() {
		n = max(n, g.events.lastSeen())
	}
	return n
}

// answerLog counts unexpected answers and keeps the first, so that a
// polling loop reports them once.
type answerLog struct {
	n     int
	first string
}

func (l *answerLog) add(status int, body string) {
	if l.n == 0 {
		l.first = fmt.Sprintf("%d %q", status, body)
	}
	l.n++
}

func (l *answerLog) report(t *testing.T, what string) {
	t.Helper()
	if l.n > 0 {
		t.Errorf("%s: %d times, first %s", what, l.n, l.first)
	}
}

// hasRecord reports whether the file_system storage at root holds a grant
// record for account.
func hasRecord(t *testing.T, root, account string) bool {
	t.Helper()
	found := false
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && filepath.Base(p) == account+".json" &&
			strings.Contains(filepath.ToSlash(p), "/oauth_bearer/grants/") {
			found = true
		}
		return nil
	})
	return found
}

// grantEntries returns the grants in the pool.
func grantEntries() map[*grant]bool {
	m := map[*grant]bool{}
	pool.Range(func(_, v any) bool {
		if g, ok := v.(*grant); ok {
			m[g] = true
		}
		return true
	})
	return m
}

// TestTwoInstancesShareARotatingGrant on Redis, with a provider that
// revokes the whole grant when a rotated-away refresh token is presented
// again: any refresh made without holding the lock (a lease that must be
// kept alive) or from a stale record would end the grant.
func TestTwoInstancesShareARotatingGrantOnRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy instances and Redis for about 10 s")
	}
	storage := redisStorageOption(startRedis(t), redisPrefixOf(t))
	// A provider that takes 300 ms per token request: longer than the
	// jitter between the instances' refresh times (a tenth of
	// refresh_before), so that both instances often set out to refresh at
	// once and only the lock keeps them from redeeming the same token.
	g := newGrantSetupWithStorage(t, storage, "refresh_before 2s", 300*time.Millisecond)
	g.as.AccessLifetime = 4 // a rotation every ~2 s
	g.as.ReuseRevokesGrant = true
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	b := startChildCaddy(t, storage, injectorSite(g.as, g.tokenURLOf(), "refresh_before 2s", g.api.hostport()))

	const load = 8 * time.Second
	var ok, bad atomic.Int64
	var badSample atomic.Value
	deadline := time.Now().Add(load)
	var wg sync.WaitGroup
	for i := range 8 {
		base := g.c.url("")
		if i%2 == 1 {
			base = b.url("")
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				resp, err := testClient.Get(base + "/api/load")
				if err != nil {
					bad.Add(1)
					badSample.Store(err.Error())
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				} else {
					bad.Add(1)
					badSample.Store(fmt.Sprintf("%s: %d", base, resp.StatusCode))
				}
				time.Sleep(5 * time.Millisecond) // pace the load
			}
		}()
	}
	wg.Wait()

	t.Logf("requests ok %d, failed %d; refreshes %d; invalid_grant %d; live refresh tokens %d",
		ok.Load(), bad.Load(), g.as.Refreshes.Load(), g.as.InvalidGrants.Load(), g.as.liveRefreshTokens())
	if n := g.as.InvalidGrants.Load(); n != 0 {
		t.Errorf("the provider answered invalid_grant %d times: a rotated refresh token was reused", n)
	}
	if bad.Load() != 0 {
		t.Errorf("%d requests failed (e.g. %v)", bad.Load(), badSample.Load())
	}
	if r := g.as.Refreshes.Load(); r < 2 {
		t.Errorf("only %d refreshes in %s of 4 s tokens", r, load)
	}
	if n := g.as.liveRefreshTokens(); n != 1 {
		t.Errorf("live refresh tokens = %d, want 1 (one grant, rotated)", n)
	}
	if tokensObtained(b.logs()) == 0 {
		t.Errorf("the second instance never used the shared grant; its log:\n%s", b.logs())
	}
	if strings.Contains(b.logs()+g.c.logs(), "consent required") {
		t.Error("an instance lost the grant")
	}
}
