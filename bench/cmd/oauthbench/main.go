// Command oauthbench is the helper of `make bench-e2e` (bench/e2e.sh) and
// `make bench`:
//
//	oauthbench serve     a local token endpoint and a local upstream API
//	oauthbench freeports N free loopback TCP ports, one a line
//	oauthbench stampede  N concurrent first requests through Caddy; checks
//	                     that they caused exactly one token request
//	oauthbench rotation  constant-rate load while tokens rotate; checks that
//	                     every token request was used and none was missed
//	oauthbench wrksum    the table of the throughput comparison (wrk output)
//	oauthbench benchsum  medians of `go test -bench` output, with the ratios
//
// Every server listens on 127.0.0.1 only, and every load loop is bounded
// in count and time.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{
		"serve":     serve,
		"freeports": freeports,
		"stampede":  stampede,
		"rotation":  rotation,
		"wrksum":    wrksum,
		"benchsum":  benchsum,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := cmd(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "oauthbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: oauthbench serve|freeports|stampede|rotation|wrksum|benchsum [flags]")
	os.Exit(2)
}

// ---------------------------------------------------------------- serve

// issued is one token the endpoint handed out.
type issued struct {
	Client   string    `json:"client"`
	Token    string    `json:"token"`
	Received time.Time `json:"received"` // the token request arrived
	Issued   time.Time `json:"issued"`   // the answer was written
	Lifetime int       `json:"lifetime"`
	Used     int64     `json:"used"` // upstream requests that carried it, as of /stats

	expiry time.Time
	used   atomic.Int64
}

// server is the token endpoint and the upstream.
type server struct {
	delay time.Duration

	mu     sync.Mutex
	events []*issued
	tokens sync.Map // token value -> *issued

	upNone, upOK, upUnknown, upExpired atomic.Int64
}

// Stats is what GET /stats on the token endpoint answers.
type Stats struct {
	Events   []*issued              `json:"events"`
	Clients  map[string]ClientStats `json:"clients"`
	Upstream map[string]int64       `json:"upstream"`
}

// ClientStats counts one client id's tokens.
type ClientStats struct {
	TokenRequests int   `json:"token_requests"`
	TokensUsed    int   `json:"tokens_used"` // distinct tokens seen by the upstream
	Requests      int64 `json:"requests"`    // upstream requests with its tokens
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	tokenAddr := fs.String("token-addr", "127.0.0.1:0", "token endpoint listen address")
	upAddr := fs.String("upstream-addr", "127.0.0.1:0", "upstream listen address")
	portsFile := fs.String("ports-file", "", "write \"TOKEN_PORT UPSTREAM_PORT\" here once listening")
	static := fs.String("static-token", "", "a token the upstream accepts besides the issued ones")
	delay := fs.Duration("token-delay", 50*time.Millisecond, "how long a token request takes (a real provider: 50-300 ms)")
	maxRun := fs.Duration("max-run", 15*time.Minute, "exit after this long whatever happens")
	fs.Parse(args)

	for _, a := range []string{*tokenAddr, *upAddr} {
		if host, _, err := net.SplitHostPort(a); err != nil || host != "127.0.0.1" {
			return fmt.Errorf("%s: listen on 127.0.0.1 only", a)
		}
	}
	s := &server{delay: *delay}
	if *static != "" {
		s.tokens.Store(*static, &issued{Client: "static", Token: *static, expiry: time.Now().Add(100 * 365 * 24 * time.Hour)})
	}
	tl, err := net.Listen("tcp", *tokenAddr)
	if err != nil {
		return err
	}
	ul, err := net.Listen("tcp", *upAddr)
	if err != nil {
		return err
	}
	tokenMux := http.NewServeMux()
	tokenMux.HandleFunc("POST /oauth/token", s.token)
	tokenMux.HandleFunc("GET /stats", s.stats)
	go http.Serve(tl, tokenMux)
	go (&http.Server{Handler: http.HandlerFunc(s.upstream), MaxHeaderBytes: 1 << 16}).Serve(ul)

	if *portsFile != "" {
		ports := fmt.Sprintf("%d %d\n", tl.Addr().(*net.TCPAddr).Port, ul.Addr().(*net.TCPAddr).Port)
		if err := os.WriteFile(*portsFile, []byte(ports), 0o644); err != nil {
			return err
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	select {
	case <-sig:
	case <-time.After(*maxRun):
		fmt.Fprintln(os.Stderr, "oauthbench serve: -max-run reached, exiting")
	}
	return nil
}

// token answers client_credentials requests from the generic preset
// (client id in HTTP Basic). The form parameter bench_lifetime sets
// expires_in (default 3600).
func (s *server) token(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	client, _, ok := r.BasicAuth()
	if !ok {
		client = r.PostFormValue("client_id")
	}
	if r.PostFormValue("grant_type") != "client_credentials" || client == "" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"invalid_request"}`)
		return
	}
	life := 3600
	if v, err := strconv.Atoi(r.PostFormValue("bench_lifetime")); err == nil && v > 0 {
		life = v
	}
	time.Sleep(s.delay)
	b := make([]byte, 12)
	rand.Read(b)
	now := time.Now()
	ev := &issued{Client: client, Token: "bench-" + client + "-" + hex.EncodeToString(b), Received: received,
		Issued: now, Lifetime: life,
		// The proxy counts the lifetime from when it sent the request,
		// so this is never earlier than its own idea of the expiry.
		expiry: now.Add(time.Duration(life) * time.Second)}
	s.tokens.Store(ev.Token, ev)
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	// A request with a DPoP proof gets a DPoP token (the proof is not
	// verified: the benchmark measures the proxy's cost of making them).
	tokenType := "Bearer"
	if r.Header.Get("DPoP") != "" {
		tokenType = "DPoP"
	}
	fmt.Fprintf(w, `{"access_token":%q,"token_type":%q,"expires_in":%d}`, ev.Token, tokenType, life)
}

// upstream is the API behind the proxy: it accepts requests without
// Authorization (config c), and with a Bearer token it issued or the
// static one; an unknown or expired token gets 401 and is counted.
func (s *server) upstream(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		s.upNone.Add(1)
	} else {
		_, tok, _ := strings.Cut(auth, " ") // Bearer or DPoP
		if strings.HasPrefix(auth, "DPoP ") && r.Header.Get("DPoP") == "" {
			s.upUnknown.Add(1) // a DPoP token without its proof
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		v, ok := s.tokens.Load(tok)
		if !ok {
			s.upUnknown.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		ev := v.(*issued)
		if !time.Now().Before(ev.expiry) {
			s.upExpired.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		ev.used.Add(1)
		s.upOK.Add(1)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", "3")
	io.WriteString(w, "ok\n")
}

func (s *server) stats(w http.ResponseWriter, _ *http.Request) {
	st := Stats{Clients: map[string]ClientStats{}, Upstream: map[string]int64{
		"no_header": s.upNone.Load(), "valid_token": s.upOK.Load(),
		"unknown_token": s.upUnknown.Load(), "expired_token": s.upExpired.Load()}}
	s.mu.Lock()
	for _, ev := range s.events {
		e := &issued{Client: ev.Client, Token: ev.Token, Received: ev.Received, Issued: ev.Issued,
			Lifetime: ev.Lifetime, Used: ev.used.Load()}
		st.Events = append(st.Events, e)
	}
	s.mu.Unlock()
	for _, ev := range st.Events {
		c := st.Clients[ev.Client]
		c.TokenRequests++
		if ev.Used > 0 {
			c.TokensUsed++
			c.Requests += ev.Used
		}
		st.Clients[ev.Client] = c
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(st)
}

func fetchStats(statsURL string) (*Stats, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(statsURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

// ------------------------------------------------------------ freeports

func freeports(args []string) error {
	n := 1
	if len(args) > 0 {
		var err error
		if n, err = strconv.Atoi(args[0]); err != nil || n < 1 || n > 20 {
			return errors.New("freeports N: N from 1 to 20")
		}
	}
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ls = append(ls, l)
	}
	for _, l := range ls {
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	return nil
}

// ------------------------------------------------------------- stampede

func loopbackURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Hostname() != "127.0.0.1" {
		return nil, fmt.Errorf("%s: only http://127.0.0.1 targets", raw)
	}
	return u, nil
}

// rawConn is one client connection speaking HTTP/1.1 by hand, so that the
// connections are all open before the stampede starts.
type rawConn struct {
	c net.Conn
	r *bufio.Reader
}

func (rc *rawConn) get(host, path string) (int, error) {
	if _, err := fmt.Fprintf(rc.c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: oauthbench\r\n\r\n", path, host); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func stampede(args []string) error {
	fs := flag.NewFlagSet("stampede", flag.ExitOnError)
	target := fs.String("url", "", "proxy URL whose token source has no token yet")
	warm := fs.String("warm", "/warm", "path on the same site that answers without a token (opens the connections)")
	n := fs.Int("n", 1000, "concurrent requests (at most 5000)")
	statsURL := fs.String("stats", "", "the token endpoint's /stats")
	client := fs.String("client", "stampede", "client_id of the proxy's token source")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	fs.Parse(args)
	u, err := loopbackURL(*target)
	if err != nil {
		return err
	}
	if *n < 1 || *n > 5000 {
		return errors.New("-n from 1 to 5000")
	}
	before, err := fetchStats(*statsURL)
	if err != nil {
		return err
	}
	if c := before.Clients[*client]; c.TokenRequests != 0 {
		return fmt.Errorf("client %s already made %d token requests: the source is not cold", *client, c.TokenRequests)
	}

	// Open and warm the connections.
	conns := make([]*rawConn, *n)
	deadline := time.Now().Add(*timeout)
	var wg sync.WaitGroup
	errs := make(chan error, *n)
	for i := range conns {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			c.SetDeadline(deadline)
			rc := &rawConn{c: c, r: bufio.NewReader(c)}
			if code, err := rc.get(u.Host, *warm); err != nil || code >= 300 {
				errs <- fmt.Errorf("warm-up GET %s: %d %v", *warm, code, err)
				c.Close()
				return
			}
			conns[i] = rc
		}(i)
	}
	wg.Wait()
	defer func() {
		for _, rc := range conns {
			if rc != nil {
				rc.c.Close()
			}
		}
	}()
	select {
	case err := <-errs:
		return err
	default:
	}

	// The stampede.
	sent := make([]time.Time, *n)
	answered := make([]time.Time, *n)
	codes := make([]int, *n)
	release := make(chan struct{})
	var ready sync.WaitGroup
	ready.Add(*n)
	for i, rc := range conns {
		wg.Add(1)
		go func(i int, rc *rawConn) {
			defer wg.Done()
			ready.Done()
			<-release
			req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: oauthbench\r\n\r\n", u.RequestURI(), u.Host)
			if _, err := io.WriteString(rc.c, req); err != nil {
				errs <- err
				return
			}
			sent[i] = time.Now()
			resp, err := http.ReadResponse(rc.r, nil)
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answered[i] = time.Now()
			codes[i] = resp.StatusCode
		}(i, rc)
	}
	ready.Wait()
	start := time.Now()
	close(release)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}

	after, err := fetchStats(*statsURL)
	if err != nil {
		return err
	}
	var evs []*issued
	for _, ev := range after.Events {
		if ev.Client == *client {
			evs = append(evs, ev)
		}
	}
	ok, lastSent, last := 0, start, start
	for i := range codes {
		if codes[i] == http.StatusOK {
			ok++
		}
		if sent[i].After(lastSent) {
			lastSent = sent[i]
		}
		if answered[i].After(last) {
			last = answered[i]
		}
	}
	beforeToken := 0
	if len(evs) > 0 {
		for _, t := range sent {
			if t.Before(evs[0].Issued) {
				beforeToken++
			}
		}
	}
	fmt.Printf("stampede_requests=%d\n", *n)
	fmt.Printf("stampede_ok=%d\n", ok)
	fmt.Printf("stampede_token_requests=%d\n", len(evs))
	fmt.Printf("stampede_sent_before_token=%d\n", beforeToken)
	fmt.Printf("stampede_all_sent_ms=%.1f\n", ms(lastSent.Sub(start)))
	fmt.Printf("stampede_all_answered_ms=%.1f\n", ms(last.Sub(start)))
	if len(evs) > 0 {
		fmt.Printf("stampede_token_request_ms=%.1f\n", ms(evs[0].Issued.Sub(evs[0].Received)))
	}
	if len(evs) != 1 || ok != *n {
		return fmt.Errorf("%d concurrent first requests: %d token requests (want 1), %d answered 200", *n, len(evs), ok)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ------------------------------------------------------------- rotation

type sample struct {
	start   time.Time // when the request was due (open loop)
	latency time.Duration
	status  int
}

func rotation(args []string) error {
	fs := flag.NewFlagSet("rotation", flag.ExitOnError)
	target := fs.String("url", "", "proxy URL")
	statsURL := fs.String("stats", "", "the token endpoint's /stats")
	client := fs.String("client", "rotation", "client_id of the proxy's token source")
	rate := fs.Int("rate", 2000, "requests per second (at most 20000)")
	dur := fs.Duration("duration", 30*time.Second, "how long the measured load lasts (at most 5m)")
	warmup := fs.Duration("warmup", 3*time.Second, "load at the same rate before the measured part (connections, goroutines, GC pacing)")
	workers := fs.Int("workers", 64, "concurrent connections (at most 512)")
	before := fs.Duration("window-before", 10*time.Millisecond, "a rotation window starts this long before the token request arrives")
	after := fs.Duration("window-after", 100*time.Millisecond, "and ends this long after the new token is issued")
	out := fs.String("out", "", "write per-second figures (CSV) here")
	fs.Parse(args)
	u, err := loopbackURL(*target)
	if err != nil {
		return err
	}
	if *rate < 1 || *rate > 20000 || *dur <= 0 || *dur > 5*time.Minute || *warmup < 0 || *warmup > time.Minute ||
		*workers < 1 || *workers > 512 {
		return errors.New("-rate 1..20000, -duration up to 5m, -warmup up to 1m, -workers 1..512")
	}

	tr := &http.Transport{MaxIdleConnsPerHost: *workers, MaxConnsPerHost: *workers, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	// One request first, so that the load starts with a token cached: the
	// initial fetch is not a rotation.
	resp, err := hc.Get(u.String())
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("warm-up request: %s", resp.Status)
	}
	total := int(float64(*rate) * (*dur + *warmup).Seconds())
	interval := time.Second / time.Duration(*rate)
	samples := make([]sample, total)
	jobs := make(chan int, total)
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				s := &samples[i]
				resp, err := hc.Get(u.String())
				if err != nil {
					s.status = -1
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					s.status = resp.StatusCode
				}
				// From when the request was due: a stalled proxy shows
				// up as latency, not as fewer requests.
				s.latency = time.Since(s.start)
			}
		}()
	}
	start := time.Now()
	for i := range samples {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		samples[i].start = due
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	// Only what follows the warm-up is measured and counted.
	skip := int(float64(*rate) * warmup.Seconds())
	samples = samples[skip:]
	start = samples[0].start
	elapsed := time.Since(start)
	// Let a refresh that is in flight finish before counting.
	time.Sleep(500 * time.Millisecond)

	st, err := fetchStats(*statsURL)
	if err != nil {
		return err
	}
	var evs []*issued
	for _, ev := range st.Events {
		// Tokens issued before the measured part are not counted, except
		// the one in use when it starts.
		if ev.Client != *client {
			continue
		}
		if ev.Issued.Before(start) {
			evs = []*issued{ev}
			continue
		}
		evs = append(evs, ev)
	}
	// A token issued in the last moments of the load may legitimately go
	// unused; every earlier one must have been used.
	loadEnd := samples[len(samples)-1].start
	counted, used, inFlight := 0, 0, 0
	for _, ev := range evs {
		if ev.Issued.After(loadEnd.Add(-250 * time.Millisecond)) {
			inFlight++
			continue
		}
		counted++
		if ev.Used > 0 {
			used++
		}
	}
	type window struct{ from, to time.Time }
	var wins []window
	for _, ev := range evs[min(1, len(evs)):] { // the first is the initial fetch, not a rotation
		wins = append(wins, window{ev.Received.Add(-*before), ev.Issued.Add(*after)})
	}
	// Control windows: as long as each rotation window, ending 50 ms
	// before it. Compared with these, the rotation windows are measured
	// under nearly the same background load of the machine.
	var ctrl []window
	for _, w := range wins {
		l := w.to.Sub(w.from)
		ctrl = append(ctrl, window{w.from.Add(-50*time.Millisecond - l), w.from.Add(-50 * time.Millisecond)})
	}
	inAny := func(t time.Time, ws []window) bool {
		for _, w := range ws {
			if !t.Before(w.from) && t.Before(w.to) {
				return true
			}
		}
		return false
	}
	var during, between, control []time.Duration
	errorsN := 0
	for _, s := range samples {
		if s.status != http.StatusOK {
			errorsN++
			continue
		}
		if inAny(s.start, wins) {
			during = append(during, s.latency)
			continue
		}
		between = append(between, s.latency)
		if inAny(s.start, ctrl) {
			control = append(control, s.latency)
		}
	}
	if *out != "" {
		if err := writePerSecond(*out, start, samples, evs); err != nil {
			return err
		}
	}
	p99d, p99b := pct(during, 99), pct(between, 99)
	fmt.Printf("rotation_requests=%d\n", len(samples))
	fmt.Printf("rotation_achieved_rps=%.0f\n", float64(len(samples))/elapsed.Seconds())
	fmt.Printf("rotation_errors=%d\n", errorsN)
	fmt.Printf("rotation_token_requests=%d\n", counted)
	fmt.Printf("rotation_tokens_used=%d\n", used)
	fmt.Printf("rotation_rotations=%d\n", max(0, used-1))
	fmt.Printf("rotation_token_requests_at_end=%d\n", inFlight)
	fmt.Printf("rotation_upstream_rejected=%d\n", st.Upstream["unknown_token"]+st.Upstream["expired_token"])
	fmt.Printf("rotation_during_n=%d\n", len(during))
	fmt.Printf("rotation_between_n=%d\n", len(between))
	fmt.Printf("rotation_p50_during_ms=%.3f\n", ms(pct(during, 50)))
	fmt.Printf("rotation_p50_between_ms=%.3f\n", ms(pct(between, 50)))
	fmt.Printf("rotation_p99_during_ms=%.3f\n", ms(p99d))
	fmt.Printf("rotation_p99_between_ms=%.3f\n", ms(p99b))
	fmt.Printf("rotation_max_during_ms=%.3f\n", ms(pct(during, 100)))
	fmt.Printf("rotation_max_between_ms=%.3f\n", ms(pct(between, 100)))
	if p99b > 0 {
		fmt.Printf("rotation_p99_ratio=%.3f\n", float64(p99d)/float64(p99b))
	}
	p99c := pct(control, 99)
	fmt.Printf("rotation_control_n=%d\n", len(control))
	fmt.Printf("rotation_p99_control_ms=%.3f\n", ms(p99c))
	if p99c > 0 {
		fmt.Printf("rotation_p99_ratio_control=%.3f\n", float64(p99d)/float64(p99c))
	}
	var problems []string
	if errorsN != 0 {
		problems = append(problems, fmt.Sprintf("%d requests failed", errorsN))
	}
	if counted != used {
		problems = append(problems, fmt.Sprintf("%d token requests but %d tokens used", counted, used))
	}
	if n := st.Upstream["unknown_token"] + st.Upstream["expired_token"]; n != 0 {
		problems = append(problems, fmt.Sprintf("the upstream refused %d requests (unknown or expired token)", n))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// pct is the p-th percentile (nearest rank); p=100 is the maximum.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

func writePerSecond(path string, start time.Time, samples []sample, evs []*issued) error {
	buckets := map[int][]time.Duration{}
	errs := map[int]int{}
	last := 0
	for _, s := range samples {
		sec := int(s.start.Sub(start) / time.Second)
		last = max(last, sec)
		if s.status != http.StatusOK {
			errs[sec]++
			continue
		}
		buckets[sec] = append(buckets[sec], s.latency)
	}
	rot := map[int]int{}
	for _, ev := range evs[min(1, len(evs)):] {
		rot[int(ev.Received.Sub(start)/time.Second)]++
	}
	var b strings.Builder
	b.WriteString("second,requests,errors,token_requests,p50_ms,p99_ms,max_ms\n")
	for sec := 0; sec <= last; sec++ {
		d := buckets[sec]
		fmt.Fprintf(&b, "%d,%d,%d,%d,%.3f,%.3f,%.3f\n", sec, len(d)+errs[sec], errs[sec], rot[sec],
			ms(pct(d, 50)), ms(pct(d, 99)), ms(pct(d, 100)))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// --------------------------------------------------------------- wrksum

// wrkRun is one wrk run: DIR/<round>-<config>.txt.
type wrkRun struct {
	round  int
	config string
	rps    float64
	p50    float64 // ms
	p99    float64 // ms
	errors int
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPct    = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkErrs   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)

	wrkRunName = regexp.MustCompile(`^(\d+)-([a-z0-9_]+)\.txt$`)
)

func parseWrk(path string) (wrkRun, error) {
	var r wrkRun
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	s := string(b)
	m := wrkRPS.FindStringSubmatch(s)
	if m == nil {
		return r, fmt.Errorf("%s: no Requests/sec", path)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range wrkPct.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if m[1] == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	if r.p99 == 0 {
		return r, fmt.Errorf("%s: no latency distribution (run wrk with --latency)", path)
	}
	if m := wrkErrs.FindStringSubmatch(s); m != nil {
		for _, v := range m[1:] {
			n, _ := strconv.Atoi(v)
			r.errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		r.errors += n
	}
	return r, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// wrksum prints the throughput comparison: per config the median over the
// rounds, and the ratios of config a to config b taken round by round (each
// round runs a, b and c back to back, so a round's ratio compares runs made
// under the same background load).
func wrksum(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: wrksum DIR")
	}
	files, _ := filepath.Glob(filepath.Join(args[0], "*.txt"))
	byConfig := map[string][]wrkRun{}
	byRound := map[int]map[string]wrkRun{}
	for _, f := range files {
		m := wrkRunName.FindStringSubmatch(filepath.Base(f))
		if m == nil {
			continue
		}
		r, err := parseWrk(f)
		if err != nil {
			return err
		}
		r.round, _ = strconv.Atoi(m[1])
		r.config = m[2]
		byConfig[r.config] = append(byConfig[r.config], r)
		if byRound[r.round] == nil {
			byRound[r.round] = map[string]wrkRun{}
		}
		byRound[r.round][r.config] = r
	}
	if len(byConfig) == 0 {
		return fmt.Errorf("no wrk results in %s", args[0])
	}
	names := map[string]string{"a": "a: oauth_bearer", "b": "b: request_header static", "c": "c: no header"}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\truns\treq/s (median)\tp50 ms\tp99 ms\terrors\tmin req/s\tmax req/s\t")
	var configs []string
	for c := range byConfig {
		configs = append(configs, c)
	}
	sort.Strings(configs)
	for _, c := range configs {
		var rps, p50, p99 []float64
		errs := 0
		for _, r := range byConfig[c] {
			rps = append(rps, r.rps)
			p50 = append(p50, r.p50)
			p99 = append(p99, r.p99)
			errs += r.errors
		}
		sort.Float64s(rps)
		name := names[c]
		if name == "" {
			name = c
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.3f\t%.3f\t%d\t%.0f\t%.0f\t\n", name, len(rps), median(rps), median(p50),
			median(p99), errs, rps[0], rps[len(rps)-1])
	}
	tw.Flush()

	var thr, p99, thrC []float64
	var rounds []int
	for r := range byRound {
		rounds = append(rounds, r)
	}
	sort.Ints(rounds)
	var perRound []string
	for _, rd := range rounds {
		a, okA := byRound[rd]["a"]
		b, okB := byRound[rd]["b"]
		c, okC := byRound[rd]["c"]
		if okA && okB {
			thr = append(thr, a.rps/b.rps)
			p99 = append(p99, a.p99/b.p99)
			perRound = append(perRound, fmt.Sprintf("%.3f", a.rps/b.rps))
		}
		if okA && okC {
			thrC = append(thrC, a.rps/c.rps)
		}
	}
	fmt.Println()
	fmt.Printf("throughput a/b (median of per-round ratios): %.3f   (rounds: %s; target >= 0.98)\n", median(thr), strings.Join(perRound, " "))
	fmt.Printf("p99 a/b (median of per-round ratios):        %.3f   (target <= 1.05)\n", median(p99))
	fmt.Printf("throughput a/c (no header at all):           %.3f\n", median(thrC))
	return nil
}

// ------------------------------------------------------------- benchsum

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-(\d+))?\s+(\d+)\s+(.*)$`)

// benchsum prints, for each benchmark and -cpu, the median of each metric
// over the -count runs, then the x/oauth2 to oauth_bearer ratios of
// BenchmarkCachedToken.
func benchsum(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: benchsum FILE")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	type key struct{ name, cpu string }
	vals := map[key]map[string][]float64{}
	var order []key
	var units []string
	seenUnit := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		k := key{m[1], m[2]}
		if k.cpu == "" {
			k.cpu = "1"
		}
		if vals[k] == nil {
			vals[k] = map[string][]float64{}
			order = append(order, k)
		}
		fields := strings.Fields(m[4])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			u := fields[i+1]
			vals[k][u] = append(vals[k][u], v)
			if !seenUnit[u] {
				seenUnit[u] = true
				units = append(units, u)
			}
		}
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark lines in %s", args[0])
	}
	// One table per benchmark function, with the units it reports.
	byFunc := map[string][]key{}
	var funcs []string
	for _, k := range order {
		fn, _, _ := strings.Cut(k.name, "/")
		if byFunc[fn] == nil {
			funcs = append(funcs, fn)
		}
		byFunc[fn] = append(byFunc[fn], k)
	}
	med := func(k key, u string) float64 { return median(vals[k][u]) }
	for _, fn := range funcs {
		var us []string
		for _, u := range units {
			for _, k := range byFunc[fn] {
				if len(vals[k][u]) > 0 {
					us = append(us, u)
					break
				}
			}
		}
		fmt.Printf("\n%s (median of %d runs)\n", fn, len(vals[byFunc[fn][0]][us[0]]))
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "benchmark\t-cpu\t")
		for _, u := range us {
			fmt.Fprintf(tw, "%s\t", u)
		}
		fmt.Fprintln(tw)
		for _, k := range byFunc[fn] {
			fmt.Fprintf(tw, "%s\t%s\t", strings.TrimPrefix(k.name, fn+"/"), k.cpu)
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t", num(med(k, u)))
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
	}

	// Ratios and targets.
	fmt.Printf("\nBenchmarkCachedToken: x/oauth2 ns/op divided by oauth_bearer ns/op (target >= 4 for lookup+set)\n")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "op\tmode\t-cpu\toauth_bearer ns/op\tallocs/op\tx_oauth2 ns/op\tallocs/op\tratio\t")
	for _, k := range order {
		rest, ok := strings.CutPrefix(k.name, "BenchmarkCachedToken/")
		if !ok {
			continue
		}
		parts := strings.Split(rest, "/")
		if len(parts) != 3 || parts[1] != "oauth_bearer" {
			continue
		}
		xk := key{"BenchmarkCachedToken/" + parts[0] + "/x_oauth2/" + parts[2], k.cpu}
		if vals[xk] == nil {
			continue
		}
		o, x := med(k, "ns/op"), med(xk, "ns/op")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1fx\t\n", parts[0], parts[2], k.cpu, num(o), num(med(k, "allocs/op")),
			num(x), num(med(xk, "allocs/op")), x/o)
	}
	tw.Flush()
	return sc.Err()
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
