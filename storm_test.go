package oauthbearer

// An upstream that refuses every token (a wrong audience, an API outage
// answering 401) must not make the injector fetch a token every 30 s: each
// fetch costs the provider's quota (Auth0 counts every machine-to-machine
// token). After a token that replaced a refused one is refused too, the next
// one is dropped later and later.

import (
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"
)

// Ten minutes of an upstream refusing every request, one request every
// 5 s, on the source's clock (time-compressed: the run takes a second):
// at most a handful of token requests, where dropping every token of 30 s
// made 21. With upstream_401 retry, after the storm the upstream accepts
// tokens again; once a token has lived to its normal refresh, a revoked
// token is replaced at the first 401 again.
func TestUpstreamRefusingEveryTokenCostsAHandfulOfTokenRequests(t *testing.T) {
	for _, mode := range []string{upstream401Retry, upstream401Invalidate} {
		t.Run(mode, func(t *testing.T) {
			clock := useFakeClock(t)
			as := newFakeAS(t)
			as.ClientAuth = "basic"
			up := newUpstream(t)
			c := startCaddy(t, e2eSite("oauth_bearer", as.credentials()+"\n\t\tupstream_401  "+mode, up))

			up.rejectAll(true)
			const step, storm = 5 * time.Second, 10 * time.Minute
			for elapsed := time.Duration(0); elapsed <= storm; elapsed += step {
				if status, body := c.get("/items"); status != http.StatusUnauthorized {
					t.Fatalf("at %v: %d %q, want the upstream's 401", elapsed, status, body)
				}
				clock.add(step)
			}
			got := as.issued()
			t.Logf("upstream_401 %s, an upstream refusing every request for %v (a request every %v): %d token requests", mode, storm, step, got)
			if got > 5 {
				t.Errorf("%d token requests in %v of refusals, want at most 5", got, storm)
			}
			if mode == upstream401Retry {
				stormOver(t, c, clock, as, up)
			}
		})
	}
}

// stormOver: the upstream accepts tokens again. The token in use lives to
// its refresh, and the one after it too: the count of refusals starts
// again, and a revoked token a minute old is replaced at its first 401.
func stormOver(t *testing.T, c *testCaddy, clock *fakeClock, as *fakeAS, up *upstream) {
	up.rejectAll(false)
	src := ccSource(t)
	for i := 0; i < 2; i++ {
		cur := src.cur.Load()
		if cur == nil {
			c.get("/fetch")
			cur = src.cur.Load()
		}
		clock.add(cur.refreshAt.Add(time.Second).Sub(clock.now()))
		before := as.issued()
		if status, _ := c.get("/refresh"); status != http.StatusOK {
			t.Fatalf("refresh %d: status %d", i, status)
		}
		waitFor(t, func() bool { return as.issued() == before+1 && !src.refreshing.Load() })
	}
	clock.add(time.Minute)
	c.get("/accepted")
	revoked := up.last(t).Get("Authorization")
	up.reject("", revoked)
	clock.add(time.Minute)
	before := as.issued()
	if status, body := c.get("/revoked"); status != http.StatusOK || up.last(t).Get("Authorization") == revoked {
		t.Errorf("a revoked token a minute old after the storm: %d %q, want 200 from a replay with a new token", status, body)
	}
	if n := as.issued() - before; n != 1 {
		t.Errorf("%d token requests to replace the revoked token, want 1", n)
	}
}

// The same storm in real time, through the same real Caddy: a load run,
// not part of make test. OAB_STORM_MINUTES=10 go test -run TestUpstreamStormRealTime -v
// (OAB_STORM_EVERY sets the request interval, default 1s).
func TestUpstreamStormRealTime(t *testing.T) {
	minutes, _ := strconv.Atoi(os.Getenv("OAB_STORM_MINUTES"))
	if minutes <= 0 {
		t.Skip("a load run: set OAB_STORM_MINUTES")
	}
	every := time.Second
	if v := os.Getenv("OAB_STORM_EVERY"); v != "" {
		var err error
		if every, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", as.credentials()+"\n\t\tupstream_401  "+upstream401Retry, up))
	up.rejectAll(true)
	start := time.Now()
	end := start.Add(time.Duration(minutes) * time.Minute)
	tick := time.NewTicker(every)
	defer tick.Stop()
	requests := 0
	for now := start; now.Before(end); now = <-tick.C {
		if status, body := c.get("/items"); status != http.StatusUnauthorized {
			t.Fatalf("after %v: %d %q, want the upstream's 401", time.Since(start), status, body)
		}
		requests++
		if requests%60 == 0 {
			t.Logf("after %v: %d requests, %d token requests", time.Since(start).Round(time.Second), requests, as.issued())
		}
	}
	t.Logf("an upstream refusing every request for %d min (%d requests, one every %v): %d token requests",
		minutes, requests, every, as.issued())
}
