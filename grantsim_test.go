package oauthbearer

// A simulation of the background refresh of grants at fleet scale: the
// real grant code (grantSchedule, grantRefresher, grantRecords, the record
// store) of N instances in this process, on a real storage (Redis, or
// file_system) and against fakeAS over HTTP, driven by a fake clock that
// the simulation moves in steps, waiting after each step until every
// instance has done what was due. It measures what BenchmarkFleetGrants
// measures with processes (redemptions and storage operations per grant
// per lifetime, the spread of the redemptions over time, after a restart
// and after an outage), at a scale the machine cannot run in real time:
// no request path, no CPU or latency figures, and each instance's event
// log and heartbeats are driven by the simulation (heartbeats every 10 s
// of simulated time).
//
//	OAB_BENCH_SIM=redis:3:100000 go test -run '^$' -bench FleetGrantsSimulated -benchtime 1x -timeout 3h .
//
// OAB_BENCH_SIM is storage:processes:accounts,... (default redis:3:1000);
// OAB_BENCH_LIFETIME and OAB_BENCH_BEFORE as for BenchmarkFleetGrants
// (60 s tokens refreshed 10 s ahead by default).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// simClock is the simulation's time.
type simClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *simClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *simClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// simFleet is the simulated fleet.
type simFleet struct {
	tb                   testing.TB
	clock                *simClock
	as                   *fakeAS
	st                   certmagic.Storage
	cs                   *credentialSet
	instances            []*grant
	started              int // instances ever started (their pool keys)
	accounts             []string
	life, before, period time.Duration
	lastBeat, lastBeatAt time.Time // simulated, real
}

func newSimFleet(tb testing.TB, kind string, n, m int) *simFleet {
	f := &simFleet{tb: tb, clock: &simClock{t: time.Now()},
		life:   time.Duration(benchEnv("OAB_BENCH_LIFETIME", 60)) * time.Second,
		before: time.Duration(benchEnv("OAB_BENCH_BEFORE", 10)) * time.Second}
	f.period = f.life - f.before - f.before/20
	f.as = newFakeAS(tb)
	f.as.Now = f.clock.now
	f.as.Lifetime = f.life
	f.as.ReuseRevokesGrant = true
	f.as.RevokeEarlierAccess = true
	var inner certmagic.Storage
	switch kind {
	case "redis":
		inner = redisTestStorage(tb, startRedis(tb), redisPrefixOf(tb), 0)
	default:
		inner = &certmagic.FileStorage{Path: filepath.Join(tb.TempDir(), "storage")}
	}
	f.st = &countingCertStorage{inner}
	f.cs = gasCredentialSet(tb, f.as, false)
	f.accounts = seedFleetAccounts(tb, f.as, f.st, m, f.clock.now(), f.period)
	f.start(n)
	return f
}

// start starts n instances: each writes its heartbeat and reads the
// others' twice (as their loops do in their first 10 s), then reads the
// list of stored grants and the records of the accounts it looks after.
func (f *simFleet) start(n int) {
	ctx := context.Background()
	var fresh []*grant
	for range n {
		f.started++
		g, err := newGrant(f.cs, fmt.Sprintf("grant:sim-%d", f.started), "")
		if err != nil {
			f.tb.Fatal(err)
		}
		g.clock.set(f.clock.now)
		g.env.attach(&use{storage: f.st, refreshBefore: f.before})
		g.loop.Do(func() { close(g.done) }) // no loop of its own: the simulation drives it
		go g.schedule.run(g.ctx)
		f.instances = append(f.instances, g)
		fresh = append(fresh, g)
	}
	for range 2 {
		for _, g := range f.instances {
			g.schedule.heartbeat(ctx)
		}
	}
	f.lastBeat, f.lastBeatAt = f.clock.now(), time.Now()
	var wg sync.WaitGroup
	for _, g := range fresh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := g.schedule
			s.mu.Lock()
			s.scanning, s.needScan = true, false
			s.mu.Unlock()
			s.scan(ctx)
		}()
	}
	wg.Wait()
	f.settle()
}

// stop stops every instance, as a fleet shut down: each leaves (deletes
// its heartbeat) and its refreshes under way finish.
func (f *simFleet) stop() {
	for _, g := range f.instances {
		g.schedule.leave(context.Background())
		g.cancel()
	}
	for _, g := range f.instances {
		f.waitIdle(g, true)
		g.Destruct()
	}
	f.instances = nil
}

// waitIdle waits until g has no refresh under way and, unless stopped,
// none due.
func (f *simFleet) waitIdle(g *grant, stopped bool) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s := g.schedule
		s.mu.Lock()
		idle := s.running == 0 && (stopped || len(s.due) == 0 || s.due[0].at.After(f.clock.now()))
		s.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			f.tb.Fatal("an instance did not finish its due refreshes in 5 minutes")
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
		time.Sleep(200 * time.Microsecond) // polls the schedule's state
	}
}

// settle waits until every instance has done what is due now.
func (f *simFleet) settle() {
	for _, g := range f.instances {
		f.waitIdle(g, false)
	}
}

// advance moves the clock by d in steps of step, each followed by what
// is due: the heartbeats every 10 s, the refreshes. The instances tell
// dead peers by the real time (memberTimeout), so they also write their
// heartbeats every 10 s of real time when the simulation runs slower.
func (f *simFleet) advance(d, step time.Duration) {
	end := f.clock.now().Add(d)
	for f.clock.now().Before(end) {
		f.clock.add(min(step, end.Sub(f.clock.now())))
		if f.clock.now().Sub(f.lastBeat) >= heartbeatInterval || time.Since(f.lastBeatAt) >= heartbeatInterval {
			for _, g := range f.instances {
				g.schedule.heartbeat(context.Background())
			}
			f.lastBeat, f.lastBeatAt = f.clock.now(), time.Now()
		}
		f.settle()
	}
}

// simFigures is what the simulation reports for one stretch of time.
type simFigures struct {
	redemptionsPerLifetime, storagePerLifetime, grantOpsPerLifetime float64
	redundant, invalid                                              int
	peakToMean, peakToMean5s                                        float64
	allIn                                                           time.Duration // until every account was redeemed once
	perSecond                                                       []int
}

// measure advances the clock by d and reports.
func (f *simFleet) measure(d time.Duration) simFigures {
	begin := f.clock.now()
	start := len(f.as.redemptions())
	inv0 := f.as.invalidGrants()
	var ops0, grant0 int64
	for i := range storageCalls {
		ops0 += storageCalls[i].Load()
	}
	grant0 = storageKinds[0].Load()
	f.advance(d, 100*time.Millisecond)
	var ops int64
	for i := range storageCalls {
		ops += storageCalls[i].Load()
	}
	reds := f.as.redemptions()[start:]
	lifetimes := d.Seconds() / f.period.Seconds()
	m := float64(len(f.accounts))
	fig := simFigures{
		redemptionsPerLifetime: float64(len(reds)) / m / lifetimes,
		storagePerLifetime:     float64(ops-ops0) / m / lifetimes,
		grantOpsPerLifetime:    float64(storageKinds[0].Load()-grant0) / m / lifetimes,
		invalid:                int(f.as.invalidGrants() - inv0),
		perSecond:              make([]int, int(d/time.Second)),
	}
	seen := map[string]bool{}
	for _, r := range reds {
		if i := int(r.At.Sub(begin) / time.Second); i >= 0 && i < len(fig.perSecond) {
			fig.perSecond[i]++
		}
		if r.NewestLeft > dueWindow(f.before) {
			fig.redundant++
		}
		if !seen[r.GrantID] {
			seen[r.GrantID] = true
			if len(seen) == len(f.accounts) {
				fig.allIn = r.At.Sub(begin)
			}
		}
	}
	fig.peakToMean = peakToMean(fig.perSecond)
	fig.peakToMean5s = peakToMean(windows(fig.perSecond, 5))
	return fig
}

func (fig simFigures) report(b *testing.B, steady bool) {
	if steady {
		b.ReportMetric(fig.redemptionsPerLifetime, "redemptions/grant/lifetime")
		b.ReportMetric(fig.storagePerLifetime, "storage_ops/grant/lifetime")
		b.ReportMetric(fig.grantOpsPerLifetime, "grant_ops/grant/lifetime")
		b.ReportMetric(float64(fig.redundant), "redundant")
	} else {
		b.ReportMetric(fig.allIn.Seconds(), "s_until_all_refreshed")
	}
	b.ReportMetric(float64(fig.invalid), "invalid_grant")
	b.ReportMetric(fig.peakToMean, "peak/mean_redemptions")
	b.ReportMetric(fig.peakToMean5s, "peak/mean_redemptions_5s")
	if os.Getenv("OAB_BENCH_DEBUG") != "" {
		b.Logf("redemptions per simulated second: %v", fig.perSecond)
	}
}

// BenchmarkFleetGrantsSimulated: see the top of the file. For each row,
// "steady" measures two lifetimes after one lifetime of settling,
// "restart" the lifetime after the whole fleet was down for 30 s, and
// "outage" the two lifetimes after the provider refused every refresh
// for 40 s.
func BenchmarkFleetGrantsSimulated(b *testing.B) {
	if os.Getenv("OAB_BENCH_SIM") == "" {
		b.Skip("set OAB_BENCH_SIM=storage:processes:accounts,... (for example redis:3:100000)")
	}
	for _, row := range strings.Split(os.Getenv("OAB_BENCH_SIM"), ",") {
		p := strings.Split(row, ":")
		if len(p) != 3 {
			b.Fatalf("OAB_BENCH_SIM: %q is not storage:processes:accounts", row)
		}
		n, _ := strconv.Atoi(p[1])
		m, _ := strconv.Atoi(p[2])
		b.Run(fmt.Sprintf("storage=%s/processes=%d/accounts=%d", p[0], n, m), func(b *testing.B) {
			f := newSimFleet(b, p[0], n, m)
			defer f.stop()
			f.advance(f.life, 100*time.Millisecond) // settle
			b.Run("steady", func(b *testing.B) {
				f.measure(2*f.period).report(b, true)
			})
			b.Run("restart", func(b *testing.B) {
				f.stop()
				f.clock.add(30 * time.Second)
				f.start(n)
				f.measure(f.life).report(b, false)
			})
			b.Run("outage", func(b *testing.B) {
				f.advance(f.life, 100*time.Millisecond) // back to steady
				f.as.refuse(503, "temporarily_unavailable", 0)
				f.advance(40*time.Second, 100*time.Millisecond)
				f.as.refuse(0, "", 0)
				f.measure(2*f.life).report(b, false)
			})
		})
	}
}

// After the whole fleet was down, and after a provider outage, the
// background refreshes are spread over the lifetime again: the accounts
// that fell due meanwhile are not left bunched together for every lifetime
// to come (a lifetime with seconds of many redemptions and seconds of
// none). One instance on file_system, 300 accounts of 60 s tokens
// refreshed 10 s ahead, the real schedule driven by the simulation's
// clock. Uniform refreshes put about 30 in each 5 s of a lifetime; the
// test wants none of those windows to hold fewer than a quarter of that,
// as a bunching would leave some empty.
func TestBackgroundRefreshesSpreadAgainAfterARestartAndAnOutage(t *testing.T) {
	t.Setenv("OAB_BENCH_LIFETIME", "60")
	t.Setenv("OAB_BENCH_BEFORE", "10")
	f := newSimFleet(t, "file_system", 1, 300)
	defer f.stop()
	f.advance(f.life, 100*time.Millisecond)
	check := func(what string) {
		t.Helper()
		fig := f.measure(f.period)
		w5 := windows(fig.perSecond, 5)
		mean := 0
		for _, c := range w5 {
			mean += c
		}
		mean /= len(w5)
		for i, c := range w5 {
			if 4*c < mean {
				t.Errorf("%s: %d redemptions in seconds %d-%d of a lifetime, against %d on average: the refreshes are bunched (per 5 s: %v)",
					what, c, 5*i, 5*i+5, mean, w5)
				return
			}
		}
		if fig.redundant != 0 || fig.invalid != 0 {
			t.Errorf("%s: %d redundant redemptions, %d invalid_grant", what, fig.redundant, fig.invalid)
		}
	}

	// The fleet is down for 30 s: more than half the accounts fall due.
	f.stop()
	f.clock.add(30 * time.Second)
	f.start(1)
	f.advance(2*f.life, 100*time.Millisecond)
	check("two lifetimes after a restart")

	// The provider refuses every refresh for 40 s.
	f.as.refuse(503, "temporarily_unavailable", 0)
	f.advance(40*time.Second, 100*time.Millisecond)
	f.as.refuse(0, "", 0)
	f.advance(2*f.life, 100*time.Millisecond)
	check("two lifetimes after an outage")
}
