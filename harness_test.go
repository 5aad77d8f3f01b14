package oauthbearer

// Test harness: a real Caddy running in this process, a stand-in OAuth
// token endpoint that enforces a provider's wire format, and an upstream
// that records what it received.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
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

// fakeAS is a token endpoint standing in for a provider. It enforces the
// wire format it is configured with and answers like the real server does
// when a client gets it wrong.
type fakeAS struct {
	*httptest.Server
	t *testing.T

	clientID, secret string
	format           string            // "json" or "form": the only body it accepts; "" accepts both
	auth             string            // "body" or "basic"
	want             map[string]string // parameters that must be present with these values
	expiresIn        int               // 0: omit expires_in
	tokenPrefix      string

	hold     chan struct{} // when set, each request waits for it to close
	requests atomic.Int64  // every request
	issued   atomic.Int64  // successful token requests
	mu       sync.Mutex
	formats  []string // body format of each request, in order
	lastBody map[string]any
	lastUA   string // the User-Agent of the last request
}

func newFakeAS(t *testing.T, format, auth string) *fakeAS {
	f := &fakeAS{t: t, clientID: "client-1", secret: "s3cr3t:+/%-value", format: format, auth: auth,
		expiresIn: 3600, tokenPrefix: "tok"}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeAS) tokenURL() string { return f.URL + "/oauth/token" }

func (f *fakeAS) serve(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if f.hold != nil {
		<-f.hold
	}
	oauthErr := func(status int, code, desc string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
	}
	if r.Method != http.MethodPost || r.URL.Path != "/oauth/token" {
		oauthErr(http.StatusNotFound, "not_found", r.Method+" "+r.URL.Path)
		return
	}
	params := map[string]any{}
	ct := r.Header.Get("Content-Type")
	format := ""
	switch {
	case strings.HasPrefix(ct, "application/json"):
		format = "json"
		if err := json.NewDecoder(r.Body).Decode(&params); err != nil {
			oauthErr(400, "invalid_request", "bad JSON")
			return
		}
	case strings.HasPrefix(ct, "application/x-www-form-urlencoded"):
		format = "form"
		r.ParseForm()
		for k, v := range r.PostForm {
			if len(v) == 1 {
				params[k] = v[0]
			} else {
				params[k] = v
			}
		}
	}
	f.mu.Lock()
	f.formats = append(f.formats, format)
	f.lastBody, f.lastUA = params, r.Header.Get("User-Agent")
	f.mu.Unlock()
	if f.format != "" && format != f.format {
		// What IdentityServer does with a JSON body, and what a JSON-only
		// API does with a form.
		oauthErr(400, "invalid_request", "unsupported content type "+ct)
		return
	}
	id, secret := "", ""
	switch f.auth {
	case "basic":
		if _, inBody := params["client_secret"]; inBody {
			oauthErr(400, "invalid_request", "client authentication must use Basic")
			return
		}
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Basic ")
		dec, err := base64.StdEncoding.DecodeString(raw)
		u, p, ok2 := strings.Cut(string(dec), ":")
		if !ok || err != nil || !ok2 {
			oauthErr(401, "invalid_client", "no Basic credentials")
			return
		}
		id, _ = url.QueryUnescape(u)
		secret, _ = url.QueryUnescape(p)
	default:
		if r.Header.Get("Authorization") != "" {
			oauthErr(400, "invalid_request", "unexpected Authorization header")
			return
		}
		id, _ = params["client_id"].(string)
		secret, _ = params["client_secret"].(string)
	}
	if id != f.clientID || secret != f.secret {
		oauthErr(401, "invalid_client", "client authentication failed")
		return
	}
	if params["grant_type"] != "client_credentials" {
		oauthErr(400, "unsupported_grant_type", fmt.Sprint(params["grant_type"]))
		return
	}
	for k, v := range f.want {
		if params[k] != v {
			oauthErr(400, "invalid_request", fmt.Sprintf("%s must be %q, got %v", k, v, params[k]))
			return
		}
	}
	n := f.issued.Add(1)
	resp := map[string]any{"access_token": fmt.Sprintf("%s-%d-%s", f.tokenPrefix, n, randomHex(8)), "token_type": "Bearer"}
	if f.expiresIn != 0 {
		resp["expires_in"] = f.expiresIn
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func (f *fakeAS) bodyFormats() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.formats...)
}

func (f *fakeAS) lastParams() map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastBody
}

// upstream records the headers of every request it receives.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []http.Header
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Clone())
		u.mu.Unlock()
		fmt.Fprintf(w, "upstream got Authorization=%q\n", r.Header.Get("Authorization"))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) hostport() string { return strings.TrimPrefix(u.URL, "http://") }

func (u *upstream) requests() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

func (u *upstream) last(t *testing.T) http.Header {
	t.Helper()
	r := u.requests()
	if len(r) == 0 {
		t.Fatal("upstream received no request")
	}
	return r[len(r)-1]
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
