package oauthbearer

// Streaming requests through the injector: a body of unknown length is a
// conversation whose next part may wait for the answer to the last one (a
// chunked upload, a gRPC stream, HTTP/2 full duplex), and an Upgrade
// request's connection becomes one. The injector forwards them as they
// come; they are not replayable after a 401.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// streamDeadline bounds each step of a streaming exchange: a request held
// back by the proxy shows up as a step that never ends.
const streamDeadline = 5 * time.Second

// echoUpstream answers each line of the request body, as it arrives, with
// "<proto> <Authorization> <line>", flushing after each: a full-duplex
// conversation over HTTP/1.1 or HTTP/2. With h2c it speaks cleartext
// HTTP/2 as well as HTTP/1.1. It is not the tests' upstream (harness_test.go),
// which reads a whole body before it answers.
func echoUpstream(t testing.TB, h2c bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if r.ProtoMajor == 1 {
			if err := rc.EnableFullDuplex(); err != nil {
				t.Errorf("upstream: full duplex: %v", err)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				fmt.Fprintf(w, "%s %s %s", r.Proto, r.Header.Get("Authorization"), line)
				if err := rc.Flush(); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}))
	if h2c {
		srv.Config.Protocols = new(http.Protocols)
		srv.Config.Protocols.SetHTTP1(true)
		srv.Config.Protocols.SetUnencryptedHTTP2(true)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// streamClient is a client for one protocol: HTTP/1.1, or cleartext
// HTTP/2 with prior knowledge (h2c). No compression: Caddy flushes an
// HTTP/2 stream's answer at once only for identity encoding.
func streamClient(t testing.TB, h2c bool) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	if h2c {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// streamExchange is one streaming request in progress: the client has
// sent its first line and holds the rest back.
type streamExchange struct {
	pw     *io.PipeWriter
	resp   *http.Response
	lines  *bufio.Reader
	cancel context.CancelFunc
}

// startStream sends a POST with a body of unknown length whose first line
// is first, and waits (up to streamDeadline) for the answer's first line,
// which is returned. The request's body stays open.
func startStream(t testing.TB, client *http.Client, url, first string) (*streamExchange, string, error) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, pr)
	req.ContentLength = -1
	x := &streamExchange{pw: pw, cancel: cancel}
	go func() {
		if _, err := io.WriteString(pw, first); err != nil {
			pw.CloseWithError(err)
		}
	}()
	type answer struct {
		resp *http.Response
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			ch <- answer{err: err}
			return
		}
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadString('\n')
		x.lines = br
		ch <- answer{resp, line, err}
	}()
	select {
	case a := <-ch:
		x.resp = a.resp
		if a.err != nil {
			x.close()
			return nil, a.line, a.err
		}
		return x, a.line, nil
	case <-time.After(streamDeadline):
		x.close()
		return nil, "", fmt.Errorf("no answer %v after the first part of the body was sent: the request was held back", streamDeadline)
	}
}

// send sends the next line and waits for its answer.
func (x *streamExchange) send(line string) (string, error) {
	type answer struct {
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		if _, err := io.WriteString(x.pw, line); err != nil {
			ch <- answer{err: err}
			return
		}
		l, err := x.lines.ReadString('\n')
		ch <- answer{l, err}
	}()
	select {
	case a := <-ch:
		return a.line, a.err
	case <-time.After(streamDeadline):
		return "", fmt.Errorf("no answer to %q within %v", line, streamDeadline)
	}
}

// finish ends the request body and reads the rest of the answer.
func (x *streamExchange) finish() (string, error) {
	x.pw.Close()
	defer x.close()
	done := make(chan struct{})
	var rest []byte
	var err error
	go func() { rest, err = io.ReadAll(x.lines); close(done) }()
	select {
	case <-done:
		return string(rest), err
	case <-time.After(streamDeadline):
		return "", fmt.Errorf("the answer did not end within %v of the request body's end", streamDeadline)
	}
}

func (x *streamExchange) close() {
	x.pw.CloseWithError(io.ErrClosedPipe)
	x.cancel()
	if x.resp != nil {
		x.resp.Body.Close()
	}
}

// streamSite is a site that injects a token (upstream_401 retry, the
// default) and proxies to upstream; with h2c, over cleartext HTTP/2.
func streamSite(as *fakeAS, upstream string, h2c bool) string {
	scheme := ""
	if h2c {
		scheme = "h2c://"
	}
	return fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret "%s"
	}
	reverse_proxy %s%s
}`, as.tokenURL(), as.ClientID, as.Secret, scheme, strings.TrimPrefix(upstream, "http://"))
}

// A chunked upload whose client sends a part and waits for the answer
// before sending the next: the upstream answers each part as it comes,
// with the injected token. (Caddy must allow HTTP/1.1 full duplex for the
// answer to start before the body ends: enable_full_duplex.)
func TestChunkedRequestStreamsThroughTheInjector(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := echoUpstream(t, false)
	c := startCaddyOpts(t, &testCaddy{addr: freeAddr(t), global: "servers {\n\t\tenable_full_duplex\n\t}"}, streamSite(as, up.URL, false))
	client := streamClient(t, false)

	start := time.Now()
	x, first, err := startStream(t, client, c.url("/upload"), "part 1\n")
	if err != nil {
		t.Fatalf("chunked POST: %v", err)
	}
	t.Logf("first part answered after %v", time.Since(start))
	if !strings.HasPrefix(first, "HTTP/1.1 Bearer tok-1-") || !strings.HasSuffix(first, " part 1\n") {
		t.Errorf("first answer %q, want the upstream's echo of part 1 with the injected token", first)
	}
	if x.resp.StatusCode != 200 || x.resp.Proto != "HTTP/1.1" {
		t.Errorf("answer %d over %s", x.resp.StatusCode, x.resp.Proto)
	}
	if got, err := x.send("part 2\n"); err != nil || !strings.HasSuffix(got, " part 2\n") {
		t.Errorf("second part: %q, %v", got, err)
	}
	if rest, err := x.finish(); err != nil || rest != "" {
		t.Errorf("end of the answer: %q, %v", rest, err)
	}
}

// A bidirectional HTTP/2 stream (h2c both sides, as gRPC runs): each
// message is answered before the next is sent.
func TestBidirectionalHTTP2StreamThroughTheInjector(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := echoUpstream(t, true)
	c := startCaddyOpts(t, &testCaddy{addr: freeAddr(t), global: "servers {\n\t\tprotocols h1 h2c\n\t}"}, streamSite(as, up.URL, true))
	client := streamClient(t, true)

	start := time.Now()
	x, first, err := startStream(t, client, c.url("/stream"), "ping 1\n")
	if err != nil {
		t.Fatalf("HTTP/2 stream: %v", err)
	}
	t.Logf("first message answered after %v", time.Since(start))
	if x.resp.Proto != "HTTP/2.0" {
		t.Errorf("client spoke %s to Caddy, want HTTP/2.0", x.resp.Proto)
	}
	if !strings.HasPrefix(first, "HTTP/2.0 Bearer tok-1-") || !strings.HasSuffix(first, " ping 1\n") {
		t.Errorf("first answer %q, want the upstream's echo over HTTP/2 with the injected token", first)
	}
	for i := 2; i <= 4; i++ {
		msg := fmt.Sprintf("ping %d\n", i)
		if got, err := x.send(msg); err != nil || !strings.HasSuffix(got, " "+msg) {
			t.Fatalf("message %d: %q, %v", i, got, err)
		}
	}
	if rest, err := x.finish(); err != nil || rest != "" {
		t.Errorf("end of the stream: %q, %v", rest, err)
	}
}

// An Upgrade request (the WebSocket handshake) goes through with the
// token, and its connection carries bytes both ways.
func TestUpgradeRequestThroughTheInjector(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	var mu sync.Mutex
	var gotAuth string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		mu.Lock()
		gotAuth = r.Header.Get("Authorization")
		mu.Unlock()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("upstream: hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo " + line)
			brw.Flush()
		}
	}))
	t.Cleanup(up.Close)
	c := startCaddy(t, streamSite(as, up.URL, false))

	conn, err := net.DialTimeout("tcp", c.addr, streamDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * streamDeadline))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", c.addr)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade answered %d %q, want 101", resp.StatusCode, b)
	}
	for _, msg := range []string{"hello\n", "again\n"} {
		io.WriteString(conn, msg)
		if got, err := br.ReadString('\n'); err != nil || got != "echo "+msg {
			t.Fatalf("over the upgraded connection: %q, %v; want %q", got, err, "echo "+msg)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.HasPrefix(gotAuth, "Bearer tok-1-") {
		t.Errorf("upstream got Authorization %q on the upgrade request, want the injected token", gotAuth)
	}
}

// BenchmarkStreamFirstAnswer: how long a streaming request waits for the
// answer to its first part through Caddy, with the injector and without
// it (reverse_proxy alone), over HTTP/1.1 chunked (enable_full_duplex) and
// over h2c on both sides. One op is one whole exchange: the first part,
// its answer, the end of the body and of the answer; first-µs is the
// median wait for the first answer, p90-first-µs its 90th percentile.
func BenchmarkStreamFirstAnswer(b *testing.B) {
	as := newBenchAS(b)
	h1Up, h2Up := echoUpstream(b, false), echoUpstream(b, true)
	addrs := map[string]string{}
	var sites []string
	for _, proto := range []string{"h1", "h2c"} {
		up, scheme := h1Up.URL, ""
		if proto == "h2c" {
			up, scheme = h2Up.URL, "h2c://"
		}
		up = scheme + strings.TrimPrefix(up, "http://")
		for _, site := range []string{"oauth_bearer", "reverse_proxy"} {
			addr := freeAddr(b)
			addrs[proto+"/"+site] = addr
			inject := ""
			if site == "oauth_bearer" {
				inject = fmt.Sprintf("oauth_bearer {\n\t\ttoken_url %s\n\t\tclient_id %s\n\t\tclient_secret \"%s\"\n\t}", as.tokenURL(), as.ClientID, as.Secret)
			}
			sites = append(sites, fmt.Sprintf("http://%s {\n\t%s\n\treverse_proxy %s\n}\n", addr, inject, up))
		}
	}
	startCaddyOpts(b, &testCaddy{addr: addrs["h1/oauth_bearer"], global: "servers {\n\t\tprotocols h1 h2c\n\t\tenable_full_duplex\n\t}"}, strings.Join(sites, ""))
	for _, proto := range []string{"h1", "h2c"} {
		for _, site := range []string{"oauth_bearer", "reverse_proxy"} {
			b.Run(proto+"/"+site, func(b *testing.B) {
				client := streamClient(b, proto == "h2c")
				url := "http://" + addrs[proto+"/"+site] + "/stream"
				var waits []time.Duration
				for b.Loop() {
					start := time.Now()
					x, first, err := startStream(b, client, url, "part 1\n")
					if err != nil {
						b.Fatal(err)
					}
					waits = append(waits, time.Since(start))
					if !strings.HasSuffix(first, " part 1\n") {
						b.Fatalf("first answer %q", first)
					}
					if _, err := x.finish(); err != nil {
						b.Fatal(err)
					}
				}
				slices.Sort(waits)
				b.ReportMetric(float64(waits[len(waits)/2].Microseconds()), "first-µs")
				b.ReportMetric(float64(waits[len(waits)*9/10].Microseconds()), "p90-first-µs")
			})
		}
	}
}

// bufferBody reads only a body known to be small; it leaves a body of
// unknown length, a larger one and an Upgrade request's alone (not read
// at all) and says they cannot be replayed.
func TestBufferBodyReadsOnlyWhatIsKnownToBeSmall(t *testing.T) {
	h := &Handler{replayMax: 16}
	for _, tc := range []struct {
		name       string
		length     int64
		upgrade    string
		replayable bool
	}{
		{"known length within replay_max_body", 5, "", true},
		{"unknown length", -1, "", false},
		{"known length above replay_max_body", 17, "", false},
		{"an Upgrade request with a body", 5, "websocket", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.NewReader(strings.Repeat("x", int(max(tc.length, 5))))
			r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
			r.Body, r.ContentLength = io.NopCloser(src), tc.length
			if tc.upgrade != "" {
				r.Header.Set("Upgrade", tc.upgrade)
			}
			b, replayable, err := h.bufferBody(r)
			if err != nil || replayable != tc.replayable {
				t.Fatalf("bufferBody: replayable %v, error %v; want replayable %v", replayable, err, tc.replayable)
			}
			if !replayable && (src.Len() != int(src.Size()) || b != nil) {
				t.Errorf("%d bytes of a body that cannot be replayed were read before forwarding", src.Size()-int64(src.Len()))
			}
			if replayable {
				rest, _ := io.ReadAll(r.Body)
				if string(b) != "xxxxx" || string(rest) != "xxxxx" {
					t.Errorf("kept %q, forwards %q; want the whole body in both", b, rest)
				}
			}
		})
	}
}
