package oauthbearer

// A request refused for want of a token: an error a site's handle_errors
// can shape (a JSON API wants JSON), today's plain text where nothing
// shapes it; and, when the injector answers a consent endpoint, what is
// wrong instead of a circle back to it.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// hostGet sends a GET for path to the test Caddy with the given Host.
func hostGet(t *testing.T, c *testCaddy, host, path string) response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.url(path), nil)
	req.Host = host
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

// Three sites on one server (one listener), with credentials the provider
// refuses: one shapes errors as JSON, one has handle_errors for 404 only,
// one has none. The first gets JSON with the status and the message, the
// others today's plain text; all get Retry-After while the source backs
// off.
func TestRefusalIsShapedByHandleErrors(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	block := fmt.Sprintf(`bind 127.0.0.1
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret wrong-secret
	}
	reverse_proxy %s`, as.tokenURL(), as.ClientID, up.hostport())
	c := startCaddyAt(t, "127.0.0.1:"+port, fmt.Sprintf(`http://json.test:%[1]s {
	%[2]s
	handle_errors {
		header Content-Type application/json
		respond `+"`"+`{"status": {err.status_code}, "message": "{err.message}"}`+"`"+`
	}
}
http://notfound.test:%[1]s {
	%[2]s
	handle_errors 404 {
		respond "not here" 404
	}
}
http://plain.test:%[1]s {
	%[2]s
}`, port, block))

	want502 := "oauth_bearer: no access token from generic (invalid_client); the request was not forwarded"
	r := hostGet(t, c, "json.test", "/x")
	var got struct {
		Status  int    `json:"status"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.body), &got); err != nil || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("handle_errors site: %d %s %q, want the site's JSON (%v)", r.status, r.header.Get("Content-Type"), r.body, err)
	}
	if r.status != 502 || got.Status != 502 || got.Message != want502 {
		t.Errorf("handle_errors site: %d %+v, want 502 with the message %q", r.status, got, want502)
	}

	// Backing off after invalid_client: 503 and Retry-After everywhere.
	r = hostGet(t, c, "json.test", "/y")
	if err := json.Unmarshal([]byte(r.body), &got); err != nil || r.status != 503 || got.Status != 503 ||
		!strings.Contains(got.Message, "(invalid_client); retry in ") || r.header.Get("Retry-After") == "" {
		t.Errorf("handle_errors site, backing off: %d Retry-After %q %q, want 503 JSON with Retry-After", r.status, r.header.Get("Retry-After"), r.body)
	}
	for _, host := range []string{"notfound.test", "plain.test"} {
		r := hostGet(t, c, host, "/z")
		secs := r.header.Get("Retry-After")
		want := fmt.Sprintf("oauth_bearer: no access token from generic (invalid_client); retry in %ss; the request was not forwarded\n", secs)
		if r.status != 503 || secs == "" || r.body != want || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: %d Retry-After %q %s %q, want 503 and today's text %q", host, r.status, secs, r.header.Get("Content-Type"), r.body, want)
		}
		if r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", host, r.header.Get("Cache-Control"))
		}
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("the upstream got %d requests without a token", n)
	}
}

// A client that gives up while its token is fetched, on a site with
// handle_errors: Caddy logs the 499 at debug level, the error route runs
// for nobody, and the fetch serves the next request.
func TestClientGivingUpWithHandleErrors(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	release := as.hold()
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret "%s"
	}
	reverse_proxy %s
	handle_errors {
		respond "{err.status_code} {err.message}"
	}
}`, as.tokenURL(), as.ClientID, as.Secret, up.hostport()))

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/slow"), nil)
	if resp, err := testClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("answered %d while the token endpoint was held", resp.StatusCode)
	}
	waitFor(t, func() bool { return strings.Contains(c.logs(), "client gave up waiting for a generic token") })
	release()
	if status, body := c.get("/next"); status != 200 {
		t.Fatalf("next request: %d %q", status, body)
	}
	for _, line := range strings.Split(c.logs(), "\n") {
		if strings.Contains(line, "client gave up waiting") && !strings.Contains(line, `"level":"debug"`) {
			t.Errorf("the 499 was logged above debug level: %s", line)
		}
		if strings.Contains(line, "error handling handler error") {
			t.Errorf("the error route failed: %s", line)
		}
	}
}

// The old layout: the consent handler in a route below a site-level
// oauth_bearer. A GET of the connect page reaches the injector, which used
// to answer "needs consent: connect it at /oauth/connect", the very page.
// It says what is wrong and where the fix is described; other paths still
// say the account needs consent.
func TestInjectorAnsweringAConsentPathSaysWhatIsWrong(t *testing.T) {
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/callback"
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = redirect, true
	api := newAPI(t, as)
	t.Setenv("CAS_SECRET", as.Secret)
	creds := fmt.Sprintf("client_id     %s\n\t\tclient_secret {env.CAS_SECRET}\n\t\ttoken_url     %s", as.ClientID, as.tokenURL())
	c := startCaddyAt(t, addr, fmt.Sprintf(`http://LISTEN {
	oauth_bearer eventtemple {
		grant authorization_code
		%[1]s
	}
	route /oauth/* {
		oauth_bearer_consent eventtemple {
			%[1]s
			authorize_url %[2]s
			redirect_uri  %[3]s
		}
	}
	reverse_proxy %[4]s
}`, creds, as.authorizeURL(), redirect, api.hostport()))

	for _, path := range []string{"/oauth/connect", "/oauth/status", "/oauth/callback"} {
		status, body := c.get(path)
		if status != http.StatusInternalServerError || strings.Contains(body, "connect it at") ||
			!strings.Contains(body, path+" is an oauth_bearer_consent endpoint") ||
			!strings.Contains(body, "the consent handler is not reached") ||
			!strings.Contains(body, "Put oauth_bearer_consent at site level") ||
			!strings.Contains(body, troubleshootingURL) {
			t.Errorf("GET %s: %d %q, want 500 saying the consent handler is not reached, with the troubleshooting entry", path, status, body)
		}
	}
	if status, body := c.get("/v1/items"); status != 503 || !strings.Contains(body, "needs consent") || !strings.Contains(body, "connect it at /oauth/connect?account=default") {
		t.Errorf("GET /v1/items: %d %q, want 503 needs consent with the connect URL", status, body)
	}
	if !strings.Contains(c.logs(), "the consent handler is not reached") {
		t.Error("the misplaced consent handler was not logged")
	}
	if n := len(api.authorizations()); n != 0 {
		t.Errorf("the API got %d requests without a token", n)
	}
}
