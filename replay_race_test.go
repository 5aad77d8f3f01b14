package oauthbearer

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// replay_race_test.go: a replay after an upstream 401 runs reverse_proxy a
// second time for the same request, while net/http's Transport may still
// be dialing, in a goroutine of its own, a connection the first attempt
// asked for and did not wait for (it was answered on a connection that
// came free first). That dial reads Caddy's vars map through the first
// attempt's context (reverseproxy/httptransport.go:286); reverse_proxy
// writes the map on entry (reverseproxy.go:925). Issue 18: a data race,
// and "concurrent map read and map write" in production. The tests hold
// such a dial in its TLS handshake while the request is answered and
// replayed, so that under -race the race, if any, is reported every run.

// dialHoldUpstream is an HTTPS (HTTP/1.1) upstream that answers 200 "ok
// <path>", except:
//   - /busy, which waits until unbusy is closed (it keeps a connection
//     in use);
//   - the first request for /refused, answered 401 with the refusal's
//     headers (later ones: 200).
//
// When hold is set, the next connection it accepts is held: its TLS
// handshake does not go on until release is closed (the test's end).
type dialHoldUpstream struct {
	*httptest.Server
	caFile string // its certificate, for reverse_proxy's tls_trust_pool

	refusal http.Header // the first /refused's answer headers

	hold    atomic.Bool
	held    chan struct{} // a connection was accepted and held
	release chan struct{}
	busy    chan struct{} // /busy arrived
	unbusy  chan struct{}
	once    sync.Once

	mu      sync.Mutex
	refused bool
	paths   []string // the requests, in order
}

func newDialHoldUpstream(t *testing.T, refusal http.Header) *dialHoldUpstream {
	u := &dialHoldUpstream{refusal: refusal, held: make(chan struct{}, 1), release: make(chan struct{}),
		busy: make(chan struct{}, 1), unbusy: make(chan struct{})}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.Listener = &holdListener{Listener: u.Listener, u: u}
	u.StartTLS() // HTTP/1.1 only: httptest offers h2 only with EnableHTTP2
	t.Cleanup(u.Close)
	t.Cleanup(func() { // before Close: a held handshake or /busy would block it
		u.answerBusy()
		close(u.release)
	})
	u.caFile = filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(u.caFile, certPEM(u.Server), 0o600); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u *dialHoldUpstream) serve(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	u.paths = append(u.paths, r.URL.Path)
	refuse := r.URL.Path == "/refused" && !u.refused
	if refuse {
		u.refused = true
	}
	u.mu.Unlock()
	switch {
	case r.URL.Path == "/busy":
		u.busy <- struct{}{}
		select {
		case <-u.unbusy:
		case <-r.Context().Done():
			return
		}
	case refuse:
		for k, vs := range u.refusal {
			w.Header()[k] = vs
		}
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, "refused")
		return
	}
	fmt.Fprint(w, "ok "+r.URL.Path)
}

// answerBusy lets /busy answer.
func (u *dialHoldUpstream) answerBusy() { u.once.Do(func() { close(u.unbusy) }) }

func (u *dialHoldUpstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.paths...)
}

type holdListener struct {
	net.Listener
	u *dialHoldUpstream
}

func (l *holdListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil || !l.u.hold.CompareAndSwap(true, false) {
		return c, err
	}
	l.u.held <- struct{}{}
	return &heldConn{Conn: c, release: l.u.release}, nil
}

// heldConn reads nothing until release is closed: the client's TLS
// handshake waits for the server's hello.
type heldConn struct {
	net.Conn
	release <-chan struct{}
}

func (c *heldConn) Read(p []byte) (int, error) {
	<-c.release
	return c.Conn.Read(p)
}

// receiveWithin receives from ch, or fails the test after 10 s.
func receiveWithin(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// replayWhileDialHeld sends /refused through Caddy while the Transport
// dials for it a connection that is held, and answers its first attempt
// on the one connection that was busy (/busy) and came free meanwhile.
// The upstream refuses that first attempt, so oauth_bearer replays it
// while the dial still runs. It returns /refused's answer.
func replayWhileDialHeld(t *testing.T, c *testCaddy, u *dialHoldUpstream, before func()) (int, string) {
	// One connection to the upstream, kept busy.
	if status, body := c.get("/warm"); status != http.StatusOK {
		t.Fatalf("GET /warm: %d %s", status, body)
	}
	busyDone := make(chan struct{})
	go func() {
		defer close(busyDone)
		c.get("/busy")
	}()
	receiveWithin(t, u.busy, "/busy at the upstream")
	if before != nil {
		before()
	}

	// /refused finds no idle connection: the Transport dials one (held in
	// its handshake) and waits for whichever comes first.
	u.hold.Store(true)
	type answer struct {
		status int
		body   string
	}
	done := make(chan answer, 1)
	go func() {
		status, body := c.get("/refused")
		done <- answer{status, body}
	}()
	receiveWithin(t, u.held, "the Transport's dial for /refused")

	// /busy answered: its connection goes to /refused, whose first attempt
	// is refused and replayed, the dial still held.
	u.answerBusy()
	var a answer
	select {
	case a = <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("GET /refused did not end; upstream saw %v\n%s", u.requests(), c.logs())
	}
	receiveWithin(t, busyDone, "GET /busy")
	if got := strings.Join(u.requests(), " "); got != "/warm /busy /refused /refused" {
		t.Errorf("upstream saw %s, want /warm /busy /refused /refused (one replay)", got)
	}
	return a.status, a.body
}

// dialHoldSite is a site whose oauth_bearer (with extra) forwards to u
// over HTTPS, HTTP/1.1; oab_vars_seen <name> records the vars map of each
// attempt reverse_proxy makes.
func dialHoldSite(as *fakeAS, u *dialHoldUpstream, name, extra string) string {
	return fmt.Sprintf(`http://LISTEN {
	route {
		oauth_bearer {
%s
%s		}
		oab_vars_seen %s
		reverse_proxy %s {
			transport http {
				tls_trust_pool file %s
				versions 1.1
			}
		}
	}
}
`, as.credentials(), extra, name, u.URL, u.caFile)
}

// varsSeen is, by name, the vars maps of the requests that passed an
// oab_vars_seen handler, in order.
var varsSeen sync.Map // name → *varsLog

type varsLog struct {
	mu   sync.Mutex
	maps []uintptr
}

func varsSeenBy(name string) *varsLog {
	v, _ := varsSeen.LoadOrStore(name, new(varsLog))
	return v.(*varsLog)
}

func (l *varsLog) all() []uintptr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uintptr(nil), l.maps...)
}

// varsSeenHandler is the test-only handler oab_vars_seen <name>: it
// records the identity of the request's vars map (the one reverse_proxy,
// and the dials of its Transport, read and write) and passes it on.
type varsSeenHandler struct {
	Name string `json:"name"`
}

func (varsSeenHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.oab_vars_seen", New: func() caddy.Module { return new(varsSeenHandler) }}
}

func (h *varsSeenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	l := varsSeenBy(h.Name)
	l.mu.Lock()
	l.maps = append(l.maps, reflect.ValueOf(r.Context().Value(caddyhttp.VarsCtxKey)).Pointer())
	l.mu.Unlock()
	return next.ServeHTTP(w, r)
}

func init() {
	caddy.RegisterModule(varsSeenHandler{})
	httpcaddyfile.RegisterHandlerDirective("oab_vars_seen", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		v := new(varsSeenHandler)
		h.Next()
		if !h.AllArgs(&v.Name) {
			return nil, h.ArgErr()
		}
		return v, nil
	})
}

// wantOwnVarsMap fails unless the last two requests that passed
// oab_vars_seen name (the first attempt and its replay) had vars maps of
// their own: the first attempt's may still be read by its dial.
func wantOwnVarsMap(t *testing.T, name string) {
	t.Helper()
	seen := varsSeenBy(name).all()
	if len(seen) < 2 {
		t.Fatalf("oab_vars_seen saw %d requests, want the first attempt and its replay", len(seen))
	}
	if first, replay := seen[len(seen)-2], seen[len(seen)-1]; first == 0 || first == replay {
		t.Errorf("the replay ran reverse_proxy with the first attempt's vars map (%#x), which the Transport's dial for the first attempt still reads", first)
	}
}

// An upstream 401 that refuses the token (upstream_401 retry): the
// replay with a new token must not touch the vars map the first
// attempt's dial still reads.
func TestUpstream401ReplayWhileTransportDials(t *testing.T) {
	clock := useFakeClock(t)
	as := newFakeAS(t)
	u := newDialHoldUpstream(t, http.Header{"Www-Authenticate": {`Bearer realm="api", error="invalid_token"`}})
	c := startCaddy(t, dialHoldSite(as, u, t.Name(), ""))

	status, body := replayWhileDialHeld(t, c, u, func() { clock.add(time.Minute) }) // old enough to drop
	if status != http.StatusOK || body != "ok /refused" {
		t.Errorf("GET /refused: %d %q, want 200 from the replay\n%s", status, body, c.logs())
	}
	wantOwnVarsMap(t, t.Name())
	if n := as.issued(); n != 2 {
		t.Errorf("%d tokens issued, want 2 (the refused one and the replay's)", n)
	}
}

// A resource server's DPoP nonce challenge: the replay with the nonce
// must not touch the vars map the first attempt's dial still reads.
func TestDPoPNonceReplayWhileTransportDials(t *testing.T) {
	as := newFakeAS(t)
	u := newDialHoldUpstream(t, http.Header{"Www-Authenticate": {`DPoP error="use_dpop_nonce"`}, "Dpop-Nonce": {"n-1"}})
	c := startCaddy(t, dialHoldSite(as, u, t.Name(), "\t\t\tdpop "+u.URL+"\n"))

	status, body := replayWhileDialHeld(t, c, u, nil)
	if status != http.StatusOK || body != "ok /refused" {
		t.Errorf("GET /refused: %d %q, want 200 from the replay\n%s", status, body, c.logs())
	}
	wantOwnVarsMap(t, t.Name())
	if n := as.issued(); n != 1 {
		t.Errorf("%d tokens issued, want 1 (a nonce challenge is not a refused token)", n)
	}
}
