package oauthbearer

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Two Caddy processes sharing one file-system storage directory refresh a
// rotating grant many times under concurrent load; the storage lock and the
// re-read under it mean the grant is never lost to invalid_grant.
func TestTwoInstancesShareARotatingGrant(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 12 s")
	}
	g := newGrantSetup(t, "refresh_before 2s")
	g.as.Lifetime = 4 * time.Second // a rotation every ~2 s
	if status, body := g.connect(""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}

	// The second instance: this test binary re-executed as `caddy run`,
	// with the same storage directory and only the proxying handler.
	childAddr := freeAddr(t)
	childLog := filepath.Join(t.TempDir(), "child.log")
	conf := filepath.Join(t.TempDir(), "Caddyfile")
	os.WriteFile(conf, []byte(fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	oauth_bearer eventtemple {
		grant          authorization_code
		client_id      %s
		client_secret  {env.CAS_SECRET}
		token_url      %s
		refresh_before 2s
	}
	reverse_proxy %s
}
`, filepath.Join(g.c.dir, "storage"), childLog, childAddr, g.as.ClientID, g.as.tokenURL(), g.api.hostport())), 0o600)
	exe, _ := os.Executable()
	child := exec.Command(exe, "-test.run=^$")
	child.Env = append(os.Environ(), "OAB_CHILD_CADDY_CONFIG="+conf)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", childAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	// Load on both instances for ~12 s.
	var ok, bad atomic.Int64
	var badSample atomic.Value
	deadline := time.Now().Add(12 * time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		base := g.c.url("")
		if i%2 == 1 {
			base = "http://" + childAddr
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 5000 && time.Now().Before(deadline); n++ {
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
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Wait()

	childLogs, _ := os.ReadFile(childLog)
	t.Logf("requests ok %d, failed %d; refreshes %d; invalid_grant %d", ok.Load(), bad.Load(),
		g.as.refreshes(), g.as.invalidGrants())
	if g.as.invalidGrants() != 0 {
		t.Errorf("the provider answered invalid_grant %d times: a rotated refresh token was reused", g.as.invalidGrants())
	}
	if bad.Load() != 0 {
		t.Errorf("%d requests failed (e.g. %v)", bad.Load(), badSample.Load())
	}
	if r := g.as.refreshes(); r < 4 {
		t.Errorf("only %d refreshes in 12 s of 4 s tokens", r)
	}
	if g.as.liveRefreshTokens() != 1 {
		t.Errorf("live refresh tokens = %d, want 1 (one grant, rotated)", g.as.liveRefreshTokens())
	}
	if !strings.Contains(string(childLogs), "token obtained") {
		t.Errorf("the second instance never used the shared grant; its log:\n%s", childLogs)
	}
	if strings.Contains(string(childLogs)+g.c.logs(), "consent required") {
		t.Error("an instance lost the grant")
	}
}
