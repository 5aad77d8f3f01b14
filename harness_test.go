package oauthbearer

// Test harness: a real Caddy running in this process, the upstream it
// proxies to (which records what it received) and the tests' clock. The
// authorization server is fakeAS (authserver_test.go).

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestMain lets the test binary double as the caddy command (with this
// module and the standard ones): with OAB_CHILD_CADDY_CONFIG set it runs
// `caddy run` on that Caddyfile, for tests that need a second instance
// sharing storage with the in-process one; with OAB_CHILD_CADDY_ARGS (a
// JSON array) it runs `caddy <args>`, for tests of the CLI command.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("OAB_CHILD_CADDY_CONFIG"); cfg != "" {
		os.Args = []string{"caddy", "run", "--config", cfg, "--adapter", "caddyfile"}
		caddycmd.Main()
		return
	}
	if args := os.Getenv("OAB_CHILD_CADDY_ARGS"); args != "" {
		var a []string
		if err := json.Unmarshal([]byte(args), &a); err != nil {
			panic(err)
		}
		os.Args = append([]string{"caddy"}, a...)
		caddycmd.Main()
		return
	}
	os.Exit(m.Run())
}

// caddyMu serialises tests that run Caddy: it is a process-wide singleton.
var caddyMu sync.Mutex

// testCaddy is a Caddy instance loaded from a Caddyfile.
type testCaddy struct {
	t       testing.TB
	addr    string // 127.0.0.1:port of the first site
	logFile string
	dir     string
	storage string // the storage global option; "" for file_system in dir
	admin   string // the admin endpoint's address; "" for none
	global  string // more global options, such as "servers { protocols h1 h2c }"
}

// startCaddy runs Caddy with the given site blocks. "LISTEN" in them is
// replaced by a free loopback address (c.addr). Logs go, at debug level, to
// c.logFile so tests can search them.
func startCaddy(t *testing.T, sites string) *testCaddy {
	t.Helper()
	return startCaddyAt(t, freeAddr(t), sites)
}

// startCaddyAt is startCaddy on a given address (for configurations, such
// as a redirect_uri, that must know it beforehand).
func startCaddyAt(t *testing.T, addr, sites string) *testCaddy {
	t.Helper()
	return startCaddyWith(t, addr, "", sites)
}

// startCaddyWith is startCaddyAt with another storage: storage is the
// global option's value, such as "oab_flaky { root /x name n }" ("": the
// test's own file_system directory).
func startCaddyWith(t *testing.T, addr, storage, sites string) *testCaddy {
	t.Helper()
	return startCaddyOpts(t, &testCaddy{addr: addr, storage: storage}, sites)
}

// startCaddyAdmin is startCaddy with the admin endpoint on; the address
// is in c.admin.
func startCaddyAdmin(t *testing.T, sites string) *testCaddy {
	t.Helper()
	return startCaddyOpts(t, &testCaddy{addr: freeAddr(t), admin: freeAddr(t)}, sites)
}

// startCaddyOpts starts Caddy with the options set in c (addr, storage,
// admin).
func startCaddyOpts(t testing.TB, c *testCaddy, sites string) *testCaddy {
	t.Helper()
	caddyMu.Lock()
	dir := t.TempDir()
	c.t, c.logFile, c.dir = t, filepath.Join(dir, "caddy.log"), dir
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
		caddyMu.Unlock()
	})
	if err := c.load(sites); err != nil {
		t.Fatal(err)
	}
	return c
}

// restart stops Caddy (every handler and pool entry is gone, as in a new
// process) and starts it again with sites, once the old listener is
// closed: Caddy's Stop returns before its servers have closed their
// listeners, and a connection made meanwhile would reach the old one.
func (c *testCaddy) restart(sites string) {
	c.t.Helper()
	if err := caddy.Stop(); err != nil {
		c.t.Fatal(err)
	}
	waitFor(c.t, func() bool {
		conn, err := net.Dial("tcp", c.addr)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if err := c.load(sites); err != nil {
		c.t.Fatal(err)
	}
}

// load adapts and loads a configuration: called again, it is a reload.
func (c *testCaddy) load(sites string) error {
	c.t.Helper()
	cfgJSON, err := c.adapt(sites)
	if err != nil {
		return err
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		return err
	}
	// The old servers close their idle connections: a request must not
	// be sent on one of them.
	testClient.CloseIdleConnections()
	if testClock != nil {
		setPoolClocks(testClock.now)
	}
	return nil
}

func (c *testCaddy) adapt(sites string) ([]byte, error) {
	storage := c.storage
	if storage == "" {
		storage = "file_system " + filepath.Join(c.dir, "storage")
	}
	admin := "off"
	if c.admin != "" {
		admin = c.admin
	}
	cf := fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	storage %s
	log {
		output file %s
		format json
		level DEBUG
	}
%s}
`, admin, storage, c.logFile, globalOptions(c.global)) + strings.ReplaceAll(sites, "LISTEN", c.addr)
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		c.t.Logf("adapter warning: %s", w.String())
	}
	return out, nil
}

// globalOptions indents more global options as the block around them.
func globalOptions(opts string) string {
	if opts == "" {
		return ""
	}
	return "\t" + opts + "\n"
}

// logs returns what Caddy logged so far.
func (c *testCaddy) logs() string {
	b, _ := os.ReadFile(c.logFile)
	return string(b)
}

// url is the address of the first site.
func (c *testCaddy) url(path string) string { return "http://" + c.addr + path }

// get sends a GET with optional headers (name, value pairs) and returns
// the status and body.
func (c *testCaddy) get(path string, hdr ...string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.url(path), nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := testClient.Do(req)
	for try := 1; err != nil && try < 3 && droppedByReload(err); try++ {
		// On Linux, Caddy gives a reloaded server a listening socket of
		// its own (SO_REUSEPORT) and closes the old one when the old
		// server has shut down: a connection the kernel queued on the old
		// socket meanwhile is reset. Not this module's doing; a client
		// retries.
		c.t.Logf("GET %s: %v; retrying (a connection reset around a reload)", path, err)
		resp, err = testClient.Do(req)
	}
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var testClient = &http.Client{Timeout: 10 * time.Second}

// droppedByReload reports a connection that was reset or closed before
// any answer: what a request meets when it reaches a server being replaced.
func droppedByReload(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// upstream is the API behind the proxy, the one of every test. It records
// every request (log: the path, headers and body) and answers 200 "ok
// <path>", followed by " <body>" when the request had one, with
// X-Upstream: yes. It refuses on demand: the Authorization values given to
// reject and, with rejectAll, every request (401 with the challenge given,
// or none), or everything with 403 insufficient_scope (forbid). newAPI's
// accepts only the live access tokens of its authorization server and
// answers 401 invalid_token (RFC 6750 3.1) to anything else.
type upstream struct {
	*httptest.Server
	as *fakeAS // newAPI's

	mu        sync.Mutex
	seen      []upstreamRequest
	challenge string          // WWW-Authenticate of a refusal; "" none
	refuse    map[string]bool // Authorization values refused
	refuseAll bool
	forbid    bool
	// arriving, when set, is called with each request's Authorization
	// before the token is checked (a test acts at that moment).
	arriving func(auth string)
}

// upstreamRequest is one request the upstream received, and its answer.
type upstreamRequest struct {
	Path   string
	Header http.Header
	Body   string
	Status int
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{refuse: map[string]bool{}}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

// newAPI is an upstream that accepts exactly "Bearer <token>" with a token
// as.validAccess accepts.
func newAPI(t testing.TB, as *fakeAS) *upstream {
	u := newUpstream(t)
	u.as = as
	u.challenge = `Bearer realm="api", error="invalid_token", error_description="The access token is missing, invalid, expired or revoked"`
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	auth := r.Header.Get("Authorization")
	u.mu.Lock()
	arriving := u.arriving
	u.mu.Unlock()
	if arriving != nil {
		arriving(auth)
	}
	u.mu.Lock()
	status := http.StatusOK
	switch {
	case u.forbid:
		status = http.StatusForbidden
	case u.refuseAll || u.refuse[auth]:
		status = http.StatusUnauthorized
	case u.as != nil:
		if tok, ok := strings.CutPrefix(auth, "Bearer "); !ok || !u.as.validAccess(tok) {
			status = http.StatusUnauthorized
		}
	}
	u.seen = append(u.seen, upstreamRequest{Path: r.URL.Path, Header: r.Header.Clone(), Body: string(b), Status: status})
	challenge := u.challenge
	u.mu.Unlock()
	switch status {
	case http.StatusForbidden:
		w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope"`)
		w.WriteHeader(status)
	case http.StatusUnauthorized:
		if challenge != "" {
			w.Header().Set("WWW-Authenticate", challenge)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, `{"error":"invalid_token"}`)
	default:
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok "+r.URL.Path)
		if len(b) > 0 {
			io.WriteString(w, " "+string(b))
		}
	}
}

// reject makes the upstream answer 401 with challenge ("" none) to the
// Authorization values auths (and sets the challenge of every refusal).
func (u *upstream) reject(challenge string, auths ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.challenge = challenge
	for _, a := range auths {
		u.refuse[a] = true
	}
}

// rejectAll makes it answer 401 to every request (or stop).
func (u *upstream) rejectAll(on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.refuseAll = on
}

// setForbid makes it answer 403 insufficient_scope to every request.
func (u *upstream) setForbid(on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.forbid = on
}

func (u *upstream) hostport() string { return strings.TrimPrefix(u.URL, "http://") }

// log returns every request received, in order.
func (u *upstream) log() []upstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

// requests returns the headers of every request, in order.
func (u *upstream) requests() []http.Header {
	var out []http.Header
	for _, r := range u.log() {
		out = append(out, r.Header)
	}
	return out
}

// authorizations returns the Authorization of every request, in order
// ("" when there was none).
func (u *upstream) authorizations() []string {
	var out []string
	for _, r := range u.log() {
		out = append(out, r.Header.Get("Authorization"))
	}
	return out
}

// answered counts the requests answered with status.
func (u *upstream) answered(status int) int64 {
	var n int64
	for _, r := range u.log() {
		if r.Status == status {
			n++
		}
	}
	return n
}

// last returns the headers of the last request; it fails the test when
// there was none.
func (u *upstream) last(t testing.TB) http.Header {
	t.Helper()
	r := u.requests()
	if len(r) == 0 {
		t.Fatal("upstream received no request")
	}
	return r[len(r)-1]
}

// lastToken returns the bearer token of the last request ("" when none).
func (u *upstream) lastToken() string {
	a := u.authorizations()
	if len(a) == 0 {
		return ""
	}
	return strings.TrimPrefix(a[len(a)-1], "Bearer ")
}

// fakeClock is the tests' clock: it stands still until moved. useFakeClock
// gives it to the Caddy a test runs (every token source and grant of each
// configuration it loads); a test of a token source alone sets it itself.
type fakeClock struct {
	mu    sync.Mutex
	t     time.Time
	start time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testClock, when set, is given to every token source and grant of the
// Caddy the tests run, each time it loads a configuration.
var testClock *fakeClock

// useFakeClock makes the test's Caddy run on a fake clock, starting now.
func useFakeClock(t *testing.T) *fakeClock {
	c := &fakeClock{start: time.Now()}
	c.t = c.start
	testClock = c
	t.Cleanup(func() { testClock = nil })
	return c
}

// setPoolClocks sets the clock of every entry in the pool.
func setPoolClocks(f clockFunc) {
	pool.Range(func(_, v any) bool {
		switch e := v.(type) {
		case *sourceEntry:
			e.clock.set(f)
		case *grant:
			e.clock.set(f)
		}
		return true
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// certPEM returns the PEM of a TLS test server's certificate.
func certPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// arrivals counts, by name, the requests that reached an oab_arrivals
// handler: a test can wait until its requests are inside Caddy.
var arrivals sync.Map // name → *atomic.Int64

func arrivalsOf(name string) *atomic.Int64 {
	v, _ := arrivals.LoadOrStore(name, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// arrivalsHandler is the test-only handler oab_arrivals <name>, ordered
// before oauth_bearer: it counts a request and passes it on.
type arrivalsHandler struct {
	Name string `json:"name"`
}

func (arrivalsHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.oab_arrivals", New: func() caddy.Module { return new(arrivalsHandler) }}
}

func (h *arrivalsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	arrivalsOf(h.Name).Add(1)
	return next.ServeHTTP(w, r)
}

func init() {
	caddy.RegisterModule(arrivalsHandler{})
	httpcaddyfile.RegisterHandlerDirective("oab_arrivals", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		a := new(arrivalsHandler)
		h.Next()
		if !h.AllArgs(&a.Name) {
			return nil, h.ArgErr()
		}
		return a, nil
	})
	httpcaddyfile.RegisterDirectiveOrder("oab_arrivals", httpcaddyfile.Before, "request_header")
}
