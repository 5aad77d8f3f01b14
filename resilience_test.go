package oauthbearer

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const faultSecret = "fault-secret-Zq9"

// faultCase is one misbehaviour of a token endpoint and what the client
// must see because of it.
type faultCase struct {
	name    string
	handler http.HandlerFunc // the token endpoint; nil: nothing listens
	tls     bool             // serve over TLS with a certificate nobody trusts
	timeout string           // the handler's timeout subdirective

	status     int    // what the client gets
	code       string // in the client's body
	retryAfter bool   // a Retry-After header is expected
	forwarded  bool   // the upstream receives the request
	requests   int64  // token requests made for one client request (-1: don't check)
}

func tokenJSON(extra string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"fault-token-abc","token_type":"Bearer"%s}`, extra)
	}
}

func answer(status int, contentType, body string, hdr ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func TestFaultInjection(t *testing.T) {
	target := newFakeAS(t) // where a redirect points: nothing may reach it

	cases := []faultCase{
		{name: "connection refused", status: 502, code: "unreachable", requests: -1},
		{name: "timeout", timeout: "300ms", handler: func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(time.Second):
			}
		}, status: 502, code: "timeout", requests: 1},
		{name: "slow but in time", timeout: "3s", handler: func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(400 * time.Millisecond)
			tokenJSON(`,"expires_in":3600`)(w, r)
		}, status: 200, forwarded: true, requests: 1},
		{name: "500", handler: answer(500, "text/plain", "internal error"), status: 502, code: "http_500", requests: 1},
		{name: "502 HTML", handler: answer(502, "text/html", "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"),
			status: 502, code: "http_502", requests: 1},
		{name: "503 Retry-After seconds", handler: answer(503, "application/json", `{"error":"temporarily_unavailable"}`, "Retry-After", "120"),
			status: 503, code: "temporarily_unavailable", retryAfter: true, requests: 1},
		{name: "429 Retry-After date", handler: func(w http.ResponseWriter, r *http.Request) {
			answer(429, "text/plain", "slow down", "Retry-After", time.Now().Add(90*time.Second).UTC().Format(http.TimeFormat))(w, r)
		}, status: 503, code: "http_429", retryAfter: true, requests: 1},
		{name: "429 X-RateLimit-Reset problem+json", handler: func(w http.ResponseWriter, r *http.Request) {
			answer(429, "application/problem+json", `{"title":"Too Many Requests","status":429}`,
				"X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(60*time.Second).Unix(), 10))(w, r)
		}, status: 503, code: "http_429", retryAfter: true, requests: 1},
		{name: "Auth0 500 access_denied limit", handler: answer(500, "application/json",
			`{"error":"access_denied","error_description":"Global limit has been reached"}`, "X-RateLimit-Reset",
			strconv.FormatInt(time.Now().Add(30*time.Second).Unix(), 10)),
			status: 503, code: "access_denied", retryAfter: true, requests: 1},
		{name: "invalid JSON", handler: answer(200, "application/json", `{"access_token": "x",`), status: 502, code: "invalid_response", requests: 1},
		{name: "empty body", handler: answer(200, "application/json", ""), status: 502, code: "invalid_response", requests: 1},
		{name: "missing access_token", handler: answer(200, "application/json", `{"token_type":"Bearer","expires_in":3600}`),
			status: 502, code: "invalid_response", requests: 1},
		{name: "error on 200", handler: answer(200, "application/json", `{"error":"invalid_scope","error_description":"scope crm_admin not allowed"}`),
			status: 502, code: "invalid_scope", requests: 1},
		{name: "non-RFC message error", handler: answer(401, "application/json", `{"message":"Unauthorized"}`),
			status: 502, code: "http_401", requests: 1},
		{name: "expires_in string", handler: tokenJSON(`,"expires_in":"3600"`), status: 200, forwarded: true, requests: 1},
		{name: "expires_in zero", handler: tokenJSON(`,"expires_in":0`), status: 200, forwarded: true, requests: 1},
		{name: "expires_in negative", handler: tokenJSON(`,"expires_in":-5`), status: 200, forwarded: true, requests: 1},
		{name: "expires_in huge", handler: tokenJSON(`,"expires_in":99999999999999999999`), status: 200, forwarded: true, requests: 1},
		{name: "redirect to another host", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.tokenURL()+"?steal=1", http.StatusTemporaryRedirect)
		}, status: 502, code: "unexpected_redirect", requests: 1},
		{name: "body over 1 MiB", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token":"`+strings.Repeat("a", 1<<20)+`"}`)
		}, status: 502, code: "response_too_large", requests: 1},
		{name: "untrusted TLS certificate", tls: true, handler: tokenJSON(`,"expires_in":3600`), status: 502, code: "tls_error", requests: -1},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The clock stands still: the second request below is made
			// during the first backoff (at least 1 s), however slow the
			// machine is.
			useFakeClock(t)
			tokenURL, requests := "http://"+freeAddr(t)+"/token", func() int64 { return 0 }
			if tc.handler != nil {
				as := newFakeAS(t)
				if tc.tls {
					as = newFakeASTLS(t, nil)
				}
				as.answerWith(tc.handler)
				tokenURL, requests = as.tokenURL(), as.tokenRequests
			}
			up := newUpstream(t)
			timeout := tc.timeout
			if timeout == "" {
				timeout = "2s"
			}
			c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %s
		client_id     fault-client
		client_secret %s
		timeout       %s
	}
	reverse_proxy %s
}`, tokenURL, faultSecret, timeout, up.hostport()))

			resp := getResp(t, c.url("/x"))
			if resp.status != tc.status {
				t.Errorf("status = %d, want %d (body %q)", resp.status, tc.status, resp.body)
			}
			if tc.code != "" && !strings.Contains(resp.body, "("+tc.code+")") {
				t.Errorf("body %q does not carry the code %s", resp.body, tc.code)
			}
			if tc.status >= 500 && !strings.Contains(resp.body, "generic") {
				t.Errorf("body %q does not name the provider", resp.body)
			}
			if got := resp.header.Get("Retry-After") != ""; got != tc.retryAfter {
				t.Errorf("Retry-After present = %v (%q), want %v", got, resp.header.Get("Retry-After"), tc.retryAfter)
			}
			if forwarded := len(up.requests()) > 0; forwarded != tc.forwarded {
				t.Errorf("forwarded = %v, want %v", forwarded, tc.forwarded)
			}
			if tc.requests >= 0 && requests() != tc.requests {
				t.Errorf("token requests = %d, want %d", requests(), tc.requests)
			}
			if tc.forwarded && up.last(t).Get("Authorization") != "Bearer fault-token-abc" {
				t.Errorf("upstream Authorization = %q", up.last(t).Get("Authorization"))
			}
			if !tc.forwarded {
				// A second request during the backoff: answered at once
				// with 503 and Retry-After, no new token request.
				before := requests()
				again := getResp(t, c.url("/y"))
				if again.status != 503 || again.header.Get("Retry-After") == "" {
					t.Errorf("during backoff: %d Retry-After=%q, want 503 with Retry-After", again.status, again.header.Get("Retry-After"))
				}
				if requests() != before {
					t.Errorf("a request during backoff reached the token endpoint")
				}
				if len(up.requests()) != 0 {
					t.Error("forwarded during backoff")
				}
			}
			if n := len(target.log()); n != 0 {
				t.Errorf("the redirect target received %d requests", n)
			}
			assertNoSecrets(t, c.logs()+resp.body, faultSecret)
			if tc.forwarded {
				assertNoSecrets(t, c.logs(), "fault-token-abc")
			}
		})
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

func getResp(t *testing.T, url string) response {
	t.Helper()
	resp, err := testClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

// A CA file makes a corporate certificate trusted, and only for the token
// endpoint.
func TestCAFileTrustsTokenEndpoint(t *testing.T) {
	as := newFakeASTLS(t, nil)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, certPEM(as.Server), 0o600); err != nil {
		t.Fatal(err)
	}
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret "%s"
		ca_file       %s
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, as.Secret, caFile, up.hostport()))
	if status, body := c.get("/"); status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if got := up.last(t).Get("Authorization"); as.issued() != 1 || got != "Bearer "+as.last(t).Token {
		t.Errorf("upstream got %q", got)
	}
}

// The provider is down for a long stretch while a valid token is cached:
// no client request fails, and the retries are spaced out by the backoff.
func TestProviderDownWhileTokenCached(t *testing.T) {
	clock := useFakeClock(t)
	as := newFakeAS(t)
	as.Secret = faultSecret
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url      %s
		client_id      %s
		client_secret  %s
		refresh_before 30m
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, faultSecret, up.hostport()))
	if status, _ := c.get("/"); status != 200 {
		t.Fatal("first request failed")
	}
	token := as.last(t).Token
	as.answerWith(answer(503, "text/html", "<h1>maintenance</h1>"))
	// From minute 27 (the refresh window opens at ~30m before expiry, with
	// jitter) to a second before expiry, a request every 10 s of fake time.
	clock.add(27 * time.Minute)
	failed := 0
	steps := 0
	src := ccSource(t)
	for clock.now().Before(clock.start.Add(3600*time.Second - time.Second)) {
		if status, _ := c.get("/"); status != 200 {
			failed++
		}
		steps++
		// A background refresh the request started has failed (and set
		// the backoff) before the clock moves on.
		waitFor(t, func() bool { return !src.refreshing.Load() })
		clock.add(10 * time.Second)
	}
	if failed != 0 {
		t.Errorf("%d of %d client requests failed while a valid token was cached", failed, steps)
	}
	// ~33 minutes of outage with a 5 min backoff cap: a handful of
	// attempts, not one per request.
	if got := as.tokenRequests() - 1; got < 2 || got > 30 {
		t.Errorf("%d refresh attempts during the outage over %d requests, want a backoff-spaced handful", got, steps)
	}
	// Past expiry the cached token is never used.
	clock.add(time.Hour)
	if status, body := c.get("/"); status < 500 || len(up.requests()) != steps+1 {
		t.Errorf("after expiry: %d %q, upstream requests %d (want no forwarding)", status, body, len(up.requests()))
	}
	assertNoSecrets(t, c.logs(), faultSecret, token)
}

// Under concurrent load, across several rotations, no request waits for a
// token and there is exactly one token request per rotation.
func TestRefreshAheadUnderLoad(t *testing.T) {
	clock := useFakeClock(t)
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	as.Lifetime = 100 * time.Second
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", as.credentials()+"\n\t\trefresh_before 20s", up))
	if status, _ := c.get("/"); status != 200 {
		t.Fatal("first request failed")
	}
	const rotations = 5
	for i := 1; i <= rotations; i++ {
		clock.add(95 * time.Second) // inside the refresh window, before expiry
		// Hold the token endpoint: if any request waited on it, the load
		// below would not finish.
		release := as.hold()
		var wg sync.WaitGroup
		var bad atomic.Int64
		for j := 0; j < 40; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := testClient.Get(c.url("/load"))
				if err != nil || resp.StatusCode != 200 {
					bad.Add(1)
				}
				if err == nil {
					resp.Body.Close()
				}
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(8 * time.Second):
			release()
			t.Fatalf("rotation %d: requests waited on the token endpoint", i)
		}
		release()
		// The token is issued, and the source has stored it (and its
		// refresh has ended) before the clock moves on.
		src := ccSource(t)
		waitFor(t, func() bool { return as.issued() == int64(i+1) && !src.refreshing.Load() })
		if bad.Load() != 0 {
			t.Errorf("rotation %d: %d requests failed", i, bad.Load())
		}
	}
	if got := as.tokenRequests(); got != rotations+1 {
		t.Errorf("token requests = %d, want %d (one per rotation)", got, rotations+1)
	}
}

func TestUpstream401PurgesAndRetries(t *testing.T) {
	clock := useFakeClock(t)
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	const expired = `Bearer realm="api", error="invalid_token", error_description="expired"`
	c := startCaddy(t, e2eSite("oauth_bearer", as.credentials()+"\n\t\treplay_max_body 1KiB", up))

	post := func(body io.Reader, chunked bool) response {
		req, _ := http.NewRequest(http.MethodPost, c.url("/items"), body)
		if chunked {
			req.ContentLength = -1
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return response{resp.StatusCode, resp.Header, string(b)}
	}
	lastAuth := func() string { return up.last(t).Get("Authorization") }

	// A fresh token refused: a configuration problem, not the token's;
	// passed on, not purged.
	c.get("/warm")
	tok1 := lastAuth()
	up.reject(expired, tok1)
	if status, _ := c.get("/fresh"); status != 401 {
		t.Errorf("fresh token refused: status %d, want the upstream's 401 passed on", status)
	}
	if as.issued() != 1 {
		t.Errorf("a fresh token was purged: %d token requests", as.issued())
	}

	// GET with an old, revoked token: purged, one retry with a new token.
	clock.add(time.Minute)
	n := len(up.requests())
	status, body := c.get("/items")
	if status != 200 || as.issued() != 2 {
		t.Fatalf("GET: %d %q after %d token requests, want 200 via a second token", status, body, as.issued())
	}
	if got := len(up.requests()) - n; got != 2 {
		t.Errorf("GET reached the upstream %d times, want 2 (original and one retry)", got)
	}
	tok2 := lastAuth()

	// Small POST: replayed with the same body.
	clock.add(time.Minute)
	up.reject(expired, tok2)
	n = len(up.requests())
	r := post(strings.NewReader(`{"name":"x"}`), false)
	if r.status != 200 || r.body != `ok /items {"name":"x"}` {
		t.Errorf("small POST: %d %q", r.status, r.body)
	}
	reqs := up.log()[n:]
	if len(reqs) != 2 || reqs[0].Body != `{"name":"x"}` || reqs[1].Body != `{"name":"x"}` {
		t.Errorf("small POST upstream saw %+v, want the same body twice", reqs)
	}
	if r.header.Values("X-Upstream") == nil || len(r.header.Values("Www-Authenticate")) != 0 {
		t.Errorf("retried response headers leak the 401's: %v", r.header)
	}
	tok3 := lastAuth()

	// Large streaming body: not buffered, not replayed; the token is
	// still dropped so the next request gets a new one.
	clock.add(time.Minute)
	up.reject(expired, tok3)
	n = len(up.requests())
	big := bytes.Repeat([]byte("b"), 4096)
	r = post(bytes.NewReader(big), true)
	if r.status != 401 {
		t.Errorf("large streaming POST: status %d, want the 401 passed on", r.status)
	}
	reqs = up.log()[n:]
	if len(reqs) != 1 || reqs[0].Body != string(big) {
		t.Errorf("large POST reached the upstream %d times (want once, whole body)", len(reqs))
	}
	if status, _ := c.get("/after"); status != 200 || as.issued() != 4 {
		t.Errorf("after the large POST: %d with %d token requests, want 200 with a 4th token", status, as.issued())
	}

	// 403 insufficient_scope: never a retry, never a purge.
	clock.add(time.Minute)
	up.setForbid(true)
	n = len(up.requests())
	if status, _ := c.get("/scoped"); status != 403 {
		t.Errorf("403: status %d", status)
	}
	if len(up.requests())-n != 1 || as.issued() != 4 {
		t.Errorf("403 caused %d upstream requests and %d token requests", len(up.requests())-n, as.issued())
	}
}

// ccSource returns the client-credentials token source in the pool (the
// test's Caddy has one).
func ccSource(t *testing.T) *tokenSource {
	t.Helper()
	var src *tokenSource
	pool.Range(func(_, v any) bool {
		if e, ok := v.(*sourceEntry); ok {
			src = e.src
		}
		return true
	})
	if src == nil {
		t.Fatal("no client-credentials source in the pool")
	}
	return src
}
