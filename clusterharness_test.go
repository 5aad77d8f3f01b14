package oauthbearer

// Helpers for the cluster tests (grant_cluster_test.go): a Caddy in this
// process on a storage of the test's choosing (harness_test.go always uses
// file_system under the test's directory), and a second Caddy process (this
// test binary, see TestMain) on the same storage.

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fileSystemStorage is the storage global option's value for a
// file_system directory.
func fileSystemStorage(dir string) string { return "file_system " + dir }

// redisStorageOption is the storage global option's value for an
// oab_redis storage.
func redisStorageOption(addr, prefix string) string {
	return fmt.Sprintf("oab_redis {\n\t\taddress %s\n\t\tprefix  %s\n\t}", addr, prefix)
}

// loadWithStorage is testCaddy.load on another storage (a reload, when
// Caddy runs); later loads keep it.
func (c *testCaddy) loadWithStorage(storage, sites string) error {
	c.storage = storage
	return c.load(sites)
}

// newGrantSetupWithStorage is newGrantSetup on the given storage ("": the
// test's own file_system directory). With tokenDelay, every answer of the
// token endpoint takes that long more, as a distant provider's does. The
// provider follows the test clock when there is one.
func newGrantSetupWithStorage(t *testing.T, storage, extraProxy string, tokenDelay time.Duration) *grantSetup {
	t.Helper()
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/et/callback"
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = redirect, true
	as.ScopeSep = ","
	if testClock != nil {
		as.Now = testClock.now
	}
	as.setDelay(tokenDelay)
	api := newAPI(t, as)
	t.Setenv("CAS_SECRET", as.Secret)
	conf := grantConfig(as, redirect, extraProxy, api.hostport())
	g := &grantSetup{t: t, as: as, api: api, conf: conf}
	g.c = startCaddyWith(t, addr, storage, g.conf)
	return g
}

// tokenURLOf returns the token URL a setup's configuration names.
func (g *grantSetup) tokenURLOf() string {
	_, rest, _ := strings.Cut(g.conf, "token_url")
	return strings.Fields(rest)[0]
}

// disconnect posts to the consent handler's disconnect endpoint.
func (g *grantSetup) disconnect(account string) (int, string) {
	g.t.Helper()
	u := g.c.url("/oauth/et/disconnect")
	if account != "" {
		u += "?account=" + account
	}
	return do(g.t, g.browser(), http.MethodPost, u)
}

// childCaddy is a second Caddy instance: this test binary run as
// `caddy run` on a Caddyfile (TestMain).
type childCaddy struct {
	addr    string
	logFile string
	dir     string
	conf    string
	cmd     *exec.Cmd     // nil once killed
	exited  chan struct{} // closed when cmd has exited
}

// injectorSite is a site with only the injecting handler of the grant of
// as, at tokenURL (the consent endpoints live on the other instance),
// proxying to upstream.
func injectorSite(as *fakeAS, tokenURL, extra, upstream string) string {
	return fmt.Sprintf(`http://LISTEN {
	oauth_bearer eventtemple {
		grant         authorization_code
		client_id     %s
		client_secret {env.CAS_SECRET}
		token_url     %s
		%s
	}
	reverse_proxy %s
}`, as.ClientID, tokenURL, extra, upstream)
}

// startChildCaddy starts the second instance with the storage option and
// sites ("LISTEN" replaced by its address), and waits until it listens.
// It is killed when the test ends. The child inherits the environment
// (CAS_SECRET).
func startChildCaddy(t testing.TB, storage, sites string) *childCaddy {
	t.Helper()
	dir := t.TempDir()
	c := &childCaddy{addr: freeAddr(t), logFile: filepath.Join(dir, "child.log"), dir: dir,
		conf: filepath.Join(dir, "Caddyfile")}
	cf := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	storage %s
	log {
		output file %s
		format json
		level DEBUG
	}
}
`, storage, c.logFile) + strings.ReplaceAll(sites, "LISTEN", c.addr)
	if err := os.WriteFile(c.conf, []byte(cf), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(t)
	t.Cleanup(func() { c.kill(os.Kill) })
	return c
}

// start runs the process on its configuration and waits until it listens.
func (c *childCaddy) start(t testing.TB) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(filepath.Join(c.dir, "child.out"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "OAB_CHILD_CADDY_CONFIG="+c.conf)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(exited) }()
	c.cmd, c.exited = cmd, exited
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.Dial("tcp", c.addr)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("a child Caddy exited before listening:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("a child Caddy does not listen on %s after 20s", c.addr)
		}
		time.Sleep(20 * time.Millisecond) // poll the port
	}
}

// kill sends sig (os.Kill: SIGKILL, nothing cleaned up; os.Interrupt: a
// graceful stop) and waits until the process has exited. Killing one that
// has exited already does nothing.
func (c *childCaddy) kill(sig os.Signal) {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(sig)
	<-c.exited
	c.cmd = nil
}

func (c *childCaddy) url(path string) string { return "http://" + c.addr + path }

// get sends a GET to the second instance and returns the status and body.
func (c *childCaddy) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := testClient.Get(c.url(path))
	if err != nil {
		t.Fatalf("GET %s on the second instance: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// logs returns what the second instance logged so far.
func (c *childCaddy) logs() string {
	b, _ := os.ReadFile(c.logFile)
	return string(b)
}

// tokensObtained counts the tokens a Caddy log says its sources obtained
// (one per fetch that succeeded, whether from the storage or the provider).
func tokensObtained(logs string) int { return strings.Count(logs, `"msg":"token obtained"`) }
