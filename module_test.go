package oauthbearer

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// Each preset against a token endpoint that enforces that provider's wire
// format, through a real Caddy and a real upstream.

func TestEventTempleInjectsBearerAndOrg(t *testing.T) {
	as := newFakeAS(t)
	as.Format, as.ClientAuth = "json", "body"
	as.Want = map[string]string{"scope": "crm_read crm_manage"}
	up := newUpstream(t)
	t.Setenv("ET_CLIENT_ID", as.ClientID)
	t.Setenv("ET_CLIENT_SECRET", as.Secret)
	t.Setenv("ET_ORG_ID", "4711")
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer eventtemple {
		client_id     {env.ET_CLIENT_ID}
		client_secret {env.ET_CLIENT_SECRET}
		token_url     %s
		scope         crm_read crm_manage
		org           {env.ET_ORG_ID}
	}
	reverse_proxy %s
}`, as.tokenURL(), up.hostport()))

	status, body := c.get("/api/v2/bookings", "Authorization", "Basic bGVnYWN5OmFwcA==")
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	got := up.last(t)
	if a := got.Get("Authorization"); !strings.HasPrefix(a, "Bearer tok-1-") {
		t.Errorf("upstream Authorization = %q, want the fetched bearer token (the client's Basic replaced)", a)
	}
	if len(got.Values("Authorization")) != 1 {
		t.Errorf("upstream got %d Authorization values", len(got.Values("Authorization")))
	}
	if o := got.Get("X-Api-Org"); o != "4711" {
		t.Errorf("X-API-ORG = %q, want 4711", o)
	}
	if f := as.formats(); len(f) != 1 || f[0] != "json" {
		t.Errorf("token request formats = %v, want one JSON request", f)
	}
	// Further requests reuse the cached token.
	for i := 0; i < 5; i++ {
		c.get("/again")
	}
	if n := as.tokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
	assertNoSecrets(t, c.logs(), as.Secret, got.Get("Authorization"))
}

func TestEventBookingsFallsBackToFormOnceAndRemembers(t *testing.T) {
	// Stock IdentityServer: form bodies only, 400 invalid_request to JSON.
	as := newFakeAS(t)
	as.Format, as.ClientAuth = "form", "body"
	as.Lifetime = 2 * time.Second // short-lived, so a second token request happens
	up := newUpstream(t)
	t.Setenv("EB_SECRET", as.Secret)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer eventbookings {
		client_id     %s
		client_secret {env.EB_SECRET}
		token_url     %s
		refresh_before 1s
	}
	reverse_proxy %s
}`, as.ClientID, as.tokenURL(), up.hostport()))

	if status, body := c.get("/events"); status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if f := as.formats(); strings.Join(f, ",") != "json,form" {
		t.Fatalf("first token fetch sent %v, want JSON (documented) then form", f)
	}
	// Wait for the token to expire; the next fetch goes straight to form.
	time.Sleep(2100 * time.Millisecond)
	if status, body := c.get("/events"); status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	waitFor(t, func() bool { return as.issued() == 2 })
	if f := as.formats(); strings.Join(f, ",") != "json,form,form" {
		t.Errorf("token requests sent %v, want the form format remembered", f)
	}
	if a := up.last(t).Get("Authorization"); !strings.HasPrefix(a, "Bearer tok-") {
		t.Errorf("upstream Authorization = %q", a)
	}
}

func TestEventBookingsJSONServer(t *testing.T) {
	as := newFakeAS(t)
	as.Format, as.ClientAuth = "json", "body"
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer eventbookings {
		client_id     %s
		client_secret "%s"
		token_url     %s
	}
	reverse_proxy %s
}`, as.ClientID, as.Secret, as.tokenURL(), up.hostport()))
	if status, body := c.get("/events"); status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if f := as.formats(); strings.Join(f, ",") != "json" {
		t.Errorf("token requests sent %v, want JSON only", f)
	}
}

func TestBookableSendsAudience(t *testing.T) {
	as := newFakeAS(t)
	as.Format, as.ClientAuth = "json", "body"
	as.Want = map[string]string{"audience": "api.bookabletech.com"}
	up := newUpstream(t)
	t.Setenv("BK_SECRET", as.Secret)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer bookable {
		environment   sandbox
		token_url     %s
		client_id     %s
		client_secret {env.BK_SECRET}
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, up.hostport()))
	if status, body := c.get("/venues"); status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if a := up.last(t).Get("Authorization"); !strings.HasPrefix(a, "Bearer tok-1-") {
		t.Errorf("upstream Authorization = %q", a)
	}
	if p := as.last(t).Params; p["audience"] != "api.bookabletech.com" {
		t.Errorf("audience sent = %v", p["audience"])
	}
}

func TestGenericBasicAuthFormAndExtras(t *testing.T) {
	as := newFakeAS(t)
	as.Format, as.ClientAuth = "form", "basic"
	as.Want = map[string]string{"scope": "read write", "tenant": "acme", "audience": "https://api.example"}
	up := newUpstream(t)
	t.Setenv("G_SECRET", as.Secret)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret {env.G_SECRET}
		scope         read write
		audience      https://api.example
		resource      https://api.example/a
		resource      https://api.example/b
		param         tenant acme
		header        X-Caller {http.request.header.X-User}
		header        X-Static fixed
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, up.hostport()))
	if status, body := c.get("/x", "X-User", "alice"); status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	got := up.last(t)
	if got.Get("X-Caller") != "alice" || got.Get("X-Static") != "fixed" {
		t.Errorf("extra headers: X-Caller=%q X-Static=%q", got.Get("X-Caller"), got.Get("X-Static"))
	}
	res := as.last(t).form()["resource"]
	if strings.Join(res, " ") != "https://api.example/a https://api.example/b" {
		t.Errorf("resource params = %v", res)
	}
	if ua := as.last(t).Header.Get("User-Agent"); ua != "caddy-oauth-bearer/"+version {
		t.Errorf("token request User-Agent %q", ua)
	}
}

func TestTokenHeaderWithoutPrefixRemovesClientAuthorization(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", as.credentials()+"\n\t\ttoken_header  X-Access-Token", up))
	c.get("/", "Authorization", "Basic Zm9vOmJhcg==", "X-Access-Token", "forged")
	got := up.last(t)
	if v := got.Get("X-Access-Token"); !strings.HasPrefix(v, "tok-1-") {
		t.Errorf("X-Access-Token = %q, want the bare token", v)
	}
	if v := got.Get("Authorization"); v != "" {
		t.Errorf("client's Authorization was forwarded: %q", v)
	}
}

func TestWorksInsideHandleAndRoute(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %[1]s
		client_id     %[2]s
		client_secret "%[3]s"
	}
	handle /api/* {
		reverse_proxy %[4]s
	}
	route /route/* {
		reverse_proxy %[4]s
	}
	respond "no proxy here" 404
}`, as.tokenURL(), as.ClientID, as.Secret, up.hostport()))
	for _, p := range []string{"/api/a", "/route/b"} {
		if status, body := c.get(p); status != 200 {
			t.Fatalf("%s: status %d: %s", p, status, body)
		}
		if a := up.last(t).Get("Authorization"); !strings.HasPrefix(a, "Bearer tok-1-") {
			t.Errorf("%s: upstream Authorization = %q", p, a)
		}
	}
}

// A failing provider: the request is not forwarded, the client learns the
// provider and the OAuth code, the log has the description, nobody sees
// the secret.
func TestProviderErrorIs502AndNotForwarded(t *testing.T) {
	as := newFakeAS(t)
	as.Format, as.ClientAuth = "json", "body"
	as.Secret = "the-real-secret-value"
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer eventtemple {
		client_id     %s
		client_secret wrong-secret-value
		token_url     %s
	}
	reverse_proxy %s
}`, as.ClientID, as.tokenURL(), up.hostport()))
	status, body := c.get("/x", "Authorization", "Bearer client-token-must-not-leak")
	if status != http.StatusBadGateway {
		t.Errorf("status = %d, want 502", status)
	}
	if !strings.Contains(body, "eventtemple") || !strings.Contains(body, "invalid_client") {
		t.Errorf("body %q does not name the provider and the error code", body)
	}
	if strings.Contains(body, "client authentication failed") {
		t.Errorf("body %q carries the provider's description; it belongs in the log", body)
	}
	if n := len(up.requests()); n != 0 {
		t.Errorf("upstream received %d requests without a token", n)
	}
	logs := c.logs()
	if !strings.Contains(logs, "invalid_client") || !strings.Contains(logs, "client authentication failed") {
		t.Errorf("log lacks the OAuth code and description:\n%s", logs)
	}
	assertNoSecrets(t, body+logs, "wrong-secret-value", "client-token-must-not-leak")
}

func TestUnreachableProviderIs502(t *testing.T) {
	up := newUpstream(t)
	dead := "http://" + freeAddr(t) + "/token"
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer bookable {
		client_id     id
		client_secret secret-xyz-123
		token_url     %s
		timeout       2s
	}
	reverse_proxy %s
}`, dead, up.hostport()))
	status, body := c.get("/")
	if status != http.StatusBadGateway || !strings.Contains(body, "bookable") || !strings.Contains(body, "unreachable") {
		t.Errorf("got %d %q, want 502 naming bookable and unreachable", status, body)
	}
	if len(up.requests()) != 0 {
		t.Error("request forwarded without a token")
	}
}

// Sharing: two sites and two routes with the same credentials share one
// token source; a stampede of first requests makes one token request; a
// reload with the same credentials makes none; other credentials get their
// own token.
func TestSharedSourceStampedeAndReload(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	release := as.hold()
	up := newUpstream(t)
	t.Setenv("S_SECRET", as.Secret)
	block := fmt.Sprintf(`oab_arrivals stampede-%s
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret {env.S_SECRET}
	}`, t.Name(), as.tokenURL(), as.ClientID)
	arrived := arrivalsOf("stampede-" + t.Name())
	arrived.Store(0)
	second := freeAddr(t)
	sites := fmt.Sprintf(`http://LISTEN {
	route /a/* {
		%[1]s
		reverse_proxy %[2]s
	}
	route /b/* {
		%[1]s
		reverse_proxy %[2]s
	}
}
http://%[3]s {
	%[1]s
	reverse_proxy %[2]s
}`, block, up.hostport(), second)
	c := startCaddy(t, sites)

	const n = 60
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			u := []string{c.url("/a/x"), c.url("/b/y"), "http://" + second + "/z"}[i%3]
			resp, err := testClient.Get(u)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}(i)
	}
	// Every request is inside Caddy, past the counter in front of
	// oauth_bearer, while the one token request is held: none can have
	// found a token.
	waitFor(t, func() bool { return arrived.Load() == n && as.tokenRequests() >= 1 })
	release()
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("status %d", s)
		}
	}
	if got := as.tokenRequests(); got != 1 {
		t.Fatalf("%d concurrent first requests over 3 routes caused %d token requests, want 1", n, got)
	}
	tokens := map[string]bool{}
	for _, h := range up.requests() {
		tokens[h.Get("Authorization")] = true
	}
	if len(tokens) != 1 {
		t.Errorf("upstream saw %d distinct tokens, want 1", len(tokens))
	}

	// Reload with the same credentials (and another route): no new token.
	if err := c.load(sites + "\nhttp://" + freeAddr(t) + " {\n\trespond ok\n}"); err != nil {
		t.Fatal(err)
	}
	c.get("/a/after-reload")
	if got := as.tokenRequests(); got != 1 {
		t.Errorf("reload with unchanged credentials caused %d token requests in all, want 1", got)
	}

	// Other credentials: their own source and token.
	other := newFakeAS(t)
	other.ClientAuth = "basic"
	other.Mint = mintPrefixed("other")
	if err := c.load(fmt.Sprintf(`http://LISTEN {
	route /a/* {
		%[1]s
		reverse_proxy %[2]s
	}
	route /c/* {
		oauth_bearer {
			token_url     %[3]s
			client_id     %[4]s
			client_secret "%[5]s"
		}
		reverse_proxy %[2]s
	}
}`, block, up.hostport(), other.tokenURL(), other.ClientID, other.Secret)); err != nil {
		t.Fatal(err)
	}
	c.get("/c/1")
	if a := up.last(t).Get("Authorization"); !strings.HasPrefix(a, "Bearer other-1-") {
		t.Errorf("route with other credentials got %q", a)
	}
	c.get("/a/1")
	if a := up.last(t).Get("Authorization"); !strings.HasPrefix(a, "Bearer tok-1-") {
		t.Errorf("route with the first credentials got %q after reload", a)
	}
	if as.tokenRequests() != 1 || other.tokenRequests() != 1 {
		t.Errorf("token requests: first %d, other %d; want 1 each", as.tokenRequests(), other.tokenRequests())
	}
}

// A client that gives up stops waiting; the fetch goes on and serves the
// next request.
func TestClientGivingUpStopsWaiting(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	release := as.hold()
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", as.credentials(), up))

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/slow"), nil)
	start := time.Now()
	if resp, err := testClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("request answered %d while the token endpoint was held", resp.StatusCode)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("client waited %v", waited)
	}
	release()
	if status, body := c.get("/next"); status != 200 {
		t.Fatalf("next request: %d %s", status, body)
	}
	if n := as.tokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1 (the abandoned fetch served the next request)", n)
	}
	if len(up.requests()) != 1 {
		t.Errorf("upstream got %d requests, want only the second one", len(up.requests()))
	}
}

func TestAdaptedJSONKeepsSecretPlaceholders(t *testing.T) {
	t.Setenv("ADAPT_SECRET", "adapt-secret-value")
	c := &testCaddy{t: t, dir: t.TempDir(), addr: "127.0.0.1:1", logFile: "/dev/null"}
	out, err := c.adapt(`http://LISTEN {
	oauth_bearer eventtemple {
		client_id     {env.ADAPT_ID}
		client_secret {env.ADAPT_SECRET}
	}
	reverse_proxy 127.0.0.1:2
}`)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if strings.Contains(s, "adapt-secret-value") || !strings.Contains(s, `{env.ADAPT_SECRET}`) {
		t.Errorf("adapted JSON should keep the placeholder, not the value:\n%s", s)
	}
}

// assertNoSecrets fails if any of the values appears in text.
func assertNoSecrets(t *testing.T, text string, values ...string) {
	t.Helper()
	for _, v := range values {
		if v == "" {
			t.Fatal("assertNoSecrets: empty value")
		}
		if strings.Contains(text, v) {
			t.Errorf("secret or token %q appears in output", v)
		}
		// the bare token without its Bearer prefix too
		if bare, ok := strings.CutPrefix(v, "Bearer "); ok && strings.Contains(text, bare) {
			t.Errorf("token %q appears in output", bare)
		}
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A header snapshot restores the header as it was, and what it restores
// does not share storage with the pooled snapshot.
func TestHeaderSnapshotRestores(t *testing.T) {
	h := http.Header{"Server": {"Caddy"}, "Vary": {"Accept", "Origin"}}
	s := &headerSnapshot{hdr: make(http.Header)}
	s.take(h)
	h.Set("Server", "upstream")
	h.Add("Vary", "Cookie")
	h.Set("Www-Authenticate", "Bearer")
	s.restore(h)
	want := http.Header{"Server": {"Caddy"}, "Vary": {"Accept", "Origin"}}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("restored %v, want %v", h, want)
	}
	s.take(http.Header{"X": {"1", "2", "3"}})
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("reusing the snapshot changed the restored header: %v", h)
	}
}

// A request without a body, as Caddy passes it on (Content-Length 0, the
// body wrapped so that it is not http.NoBody), is replayable without being
// read.
func TestBufferBodyContentLengthZero(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
	wrapped := struct{ io.ReadCloser }{http.NoBody}
	r.Body = wrapped
	b, replayable, err := (&Handler{}).bufferBody(r)
	if err != nil || !replayable || b != nil || r.Body != io.ReadCloser(wrapped) {
		t.Fatalf("bufferBody = %v, %v, %v; body replaced: %v", b, replayable, err, r.Body != io.ReadCloser(wrapped))
	}
}
