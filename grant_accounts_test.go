package oauthbearer

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Defect 5: per-account memory was unbounded, and dropping one account's
// source closed the connections of the endpoint every account shares.

// A request for an account with no grant drops that account's source, and
// nothing else: the connection to the provider that the grant's accounts
// share stays open, and the next refresh of a connected account reuses it.
func TestForgettingAnAccountKeepsTheSharedConnections(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	if status, body := g.connect("alice"); status != 200 {
		t.Fatalf("connect alice: %d %q", status, body)
	}
	if status, _ := g.c.get("/api/a", "X-Account", "alice"); status != 200 {
		t.Fatal("alice's first request failed")
	}
	ge := grantEntry(t)
	if _, ok := ge.accounts.sources.Load("alice"); !ok {
		t.Fatal("alice has no source")
	}
	// Requests for an account that does not exist: 503, nothing kept.
	for i := 0; i < 5; i++ {
		if status, body := g.c.get("/api/x", "X-Account", "nobody"); status != 503 || !strings.Contains(body, "account=nobody") {
			t.Fatalf("unknown account: %d %q", status, body)
		}
	}
	if _, ok := ge.accounts.sources.Load("nobody"); ok {
		t.Error("an account with no grant left a source behind")
	}
	before := g.as.tokenClients()
	clock.add(3601 * time.Second)
	if status, _ := g.c.get("/api/b", "X-Account", "alice"); status != 200 {
		t.Fatal("alice's refresh failed")
	}
	if g.as.refreshes() != 1 {
		t.Fatalf("refreshes = %d, want 1", g.as.refreshes())
	}
	if after := g.as.tokenClients(); after != before {
		t.Errorf("the refresh opened a new connection (%d client addresses, was %d): the shared ones were closed", after, before)
	}
}

// Accounts no request used for a whole sweep interval are evicted from
// memory; those in use stay; an evicted account works again from the
// storage.
func TestIdleAccountsAreEvicted(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	for _, a := range []string{"alice", "bob"} {
		if status, body := g.connect(a); status != 200 {
			t.Fatalf("connect %s: %d %q", a, status, body)
		}
		if status, _ := g.c.get("/api/"+a, "X-Account", a); status != 200 {
			t.Fatalf("%s's request failed", a)
		}
	}
	ge := grantEntry(t)
	// First sweep: both were used since the last one; both stay.
	if n := ge.sweep(); n != 0 {
		t.Fatalf("first sweep evicted %d accounts in use", n)
	}
	g.c.get("/api/alice", "X-Account", "alice")
	// Second sweep: bob was idle for a whole interval.
	if n := ge.sweep(); n != 1 {
		t.Fatalf("second sweep evicted %d, want 1 (bob)", n)
	}
	if _, ok := ge.accounts.sources.Load("bob"); ok {
		t.Error("bob is still in memory")
	}
	if _, ok := ge.accounts.sources.Load("alice"); !ok {
		t.Error("alice, in use, was evicted")
	}
	exchanges := g.as.codeExchanges()
	if status, body := g.c.get("/api/bob-again", "X-Account", "bob"); status != 200 {
		t.Fatalf("bob after eviction: %d %q", status, body)
	}
	if g.as.refreshes() != 0 || g.as.codeExchanges() != exchanges {
		t.Errorf("bob's grant was fetched again instead of read from the storage")
	}
}

// Memory follows the accounts in use: many accounts used once, then idle
// for two sweeps, leave nothing in memory.
func TestManyIdleAccountsLeaveNothingBehind(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	const n = 20
	for i := 0; i < n; i++ {
		a := fmt.Sprintf("user-%02d", i)
		if status, body := g.connect(a); status != 200 {
			t.Fatalf("connect %s: %d %q", a, status, body)
		}
		if status, _ := g.c.get("/api/x", "X-Account", a); status != 200 {
			t.Fatalf("%s's request failed", a)
		}
	}
	ge := grantEntry(t)
	count := ge.accounts.count
	if got := count(); got != n {
		t.Fatalf("%d account sources, want %d", got, n)
	}
	ge.sweep()
	ge.sweep()
	if got := count(); got != 0 {
		t.Errorf("%d account sources left after two idle sweeps", got)
	}
}
