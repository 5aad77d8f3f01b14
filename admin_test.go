package oauthbearer

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The admin API against a real Caddy with its admin endpoint on.

// adminDo sends a request to the admin endpoint and returns the status
// and body.
func adminDo(t *testing.T, c *testCaddy, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+c.admin+path, nil)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func adminSources(t *testing.T, c *testCaddy) ([]map[string]any, string) {
	t.Helper()
	status, body := adminDo(t, c, http.MethodGet, "/oauth_bearer/sources")
	if status != 200 {
		t.Fatalf("GET /oauth_bearer/sources: %d %s", status, body)
	}
	var out []map[string]any
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("sources are not a JSON list: %v\n%s", err, body)
	}
	return out, body
}

func findSource(t *testing.T, sources []map[string]any, kind string) map[string]any {
	t.Helper()
	for _, s := range sources {
		if s["kind"] == kind {
			return s
		}
	}
	t.Fatalf("no %s source in %v", kind, sources)
	return nil
}

// assertNoPrefixes fails when text holds a value, or the first 8
// characters of one (a "prefix" shown for identification is a leak too).
func assertNoPrefixes(t *testing.T, what, text string, values ...string) {
	t.Helper()
	for _, v := range values {
		v = strings.TrimPrefix(v, "Bearer ")
		if v == "" {
			continue
		}
		p := v
		if len(p) > 8 {
			p = p[:8]
		}
		if strings.Contains(text, p) {
			t.Errorf("%s holds a secret or token, or its first characters (%q…)", what, p[:min(4, len(p))])
		}
	}
}

// adminSetup is a Caddy with its admin endpoint on, serving a grant
// (grantConfig: consent pages and an injector with accounts from
// X-Account) and, on a second address, a client-credentials set.
type adminSetup struct {
	*grantSetup
	cc     *fakeAS
	ccAddr string
	up     *upstream
}

func newAdminSetup(t *testing.T) *adminSetup {
	t.Helper()
	addr, ccAddr := freeAddr(t), freeAddr(t)
	redirect := "http://" + addr + "/oauth/et/callback"
	cas := newFakeAS(t)
	cas.RedirectURI, cas.CreatedAt = redirect, true
	cas.ScopeSep = ","
	api := newAPI(t, cas)
	cc := newFakeAS(t)
	cc.ClientAuth = "basic"
	up := newUpstream(t)
	t.Setenv("CAS_SECRET", cas.Secret)
	t.Setenv("CC_SECRET", cc.Secret)
	conf := grantConfig(cas, redirect, "account {http.request.header.X-Account}", api.hostport()) + fmt.Sprintf(`
http://%s {
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret {env.CC_SECRET}
		scope         read
	}
	reverse_proxy %s
}`, ccAddr, cc.tokenURL(), cc.ClientID, up.hostport())
	g := &grantSetup{t: t, as: cas, api: api, conf: conf}
	g.c = startCaddyOpts(t, &testCaddy{addr: addr, admin: freeAddr(t)}, conf)
	return &adminSetup{grantSetup: g, cc: cc, ccAddr: ccAddr, up: up}
}

func (s *adminSetup) ccGet(path string) int {
	s.t.Helper()
	resp, err := testClient.Get("http://" + s.ccAddr + path)
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The shape of each answer; never a token, a refresh token, a secret or
// their first characters; refresh and flush; clear 404s.
func TestAdminAPISourcesAndAccounts(t *testing.T) {
	s := newAdminSetup(t)
	for _, a := range []string{"alice", "bob"} {
		if status, body := s.connect(a); status != 200 {
			t.Fatalf("connect %s: %d %q", a, status, body)
		}
	}
	s.c.get("/api/x", "X-Account", "alice")
	// bob's grant is refused at the provider: needs consent.
	s.as.setRefreshTokensDead(true)
	src := grantEntry(t)
	src.source("bob") // in memory too
	if _, err := src.refresh(t.Context(), "bob", fetchRequest{force: true}); err == nil {
		t.Fatal("bob's refresh succeeded against a dead refresh token")
	}
	if s.ccGet("/cc") != 200 {
		t.Fatal("the client-credentials request failed")
	}

	sources, body := adminSources(t, s.c)
	t.Logf("GET /oauth_bearer/sources:\n%s", body)
	if len(sources) != 2 {
		t.Fatalf("%d sources, want 2:\n%s", len(sources), body)
	}
	cc := findSource(t, sources, "client_credentials")
	for k, want := range map[string]any{"provider": "generic", "token_url": s.cc.tokenURL(), "client_id": s.cc.ClientID,
		"grant": "client_credentials", "scope": "read", "token_store": "storage", "state": "valid",
		"lifetime_from": "expires_in", "origin": "fetched"} {
		if cc[k] != want {
			t.Errorf("client-credentials source %s = %v, want %v", k, cc[k], want)
		}
	}
	for _, k := range []string{"id", "expires_at", "obtained_at"} {
		if cc[k] == nil || cc[k] == "" {
			t.Errorf("client-credentials source has no %s: %v", k, cc)
		}
	}
	gs := findSource(t, sources, "grant")
	if gs["grant"] != "authorization_code" || gs["accounts"] != 2.0 || gs["accounts_needing_consent"] != 1.0 || gs["client_id"] != s.as.ClientID {
		t.Errorf("grant source: %v", gs)
	}

	status, accBody := adminDo(t, s.c, http.MethodGet, fmt.Sprintf("/oauth_bearer/sources/%s/accounts", gs["id"]))
	t.Logf("GET …/accounts:\n%s", accBody)
	var accounts []map[string]any
	if status != 200 || json.Unmarshal([]byte(accBody), &accounts) != nil || len(accounts) != 2 {
		t.Fatalf("accounts: %d %s", status, accBody)
	}
	alice, bob := accounts[0], accounts[1]
	if alice["account"] != "alice" || alice["connected"] != true || alice["state"] != "valid" || alice["in_memory"] != true {
		t.Errorf("alice: %v", alice)
	}
	if bob["account"] != "bob" || bob["needs_consent"] != true || !strings.Contains(fmt.Sprint(bob["reason"]), "invalid_grant") {
		t.Errorf("bob: %v", bob)
	}

	// Unknown ids and paths.
	if status, body := adminDo(t, s.c, http.MethodGet, "/oauth_bearer/sources/nosuchid/accounts"); status != 404 ||
		!strings.Contains(body, "no credential set with id") || !strings.Contains(body, "nosuchid") {
		t.Errorf("unknown id: %d %s", status, body)
	}
	if status, body := adminDo(t, s.c, http.MethodPost, "/oauth_bearer/sources/nosuchid/refresh"); status != 404 {
		t.Errorf("refresh of an unknown id: %d %s", status, body)
	}
	if status, _ := adminDo(t, s.c, http.MethodGet, "/oauth_bearer/sources/"+fmt.Sprint(cc["id"])+"/refresh"); status != 405 {
		t.Errorf("GET refresh: %d, want 405", status)
	}
	if status, body := adminDo(t, s.c, http.MethodGet, "/oauth_bearer/sources/"+fmt.Sprint(cc["id"])+"/accounts"); status != 400 {
		t.Errorf("accounts of a client-credentials set: %d %s", status, body)
	}

	// Nothing secret anywhere.
	var secrets []string
	secrets = append(secrets, s.as.Secret, s.cc.Secret)
	secrets = append(secrets, s.api.authorizations()...)
	for _, h := range s.up.requests() {
		secrets = append(secrets, h.Get("Authorization"))
	}
	secrets = append(secrets, s.as.secrets()...)
	assertNoPrefixes(t, "the admin API's answers", body+accBody, secrets...)
}

// Refresh skips the backoff: a provider refusing the scope is fixed, and
// POST refresh gets a token at once (instead of 5 minutes later); flush
// makes the next request fetch. Both are logged at info with who asked.
func TestAdminAPIRefreshAndFlush(t *testing.T) {
	s := newAdminSetup(t)
	s.cc.Want = map[string]string{"scope": "write"} // refuses "read"
	if status := s.ccGet("/x"); status != 502 {
		t.Fatalf("with the scope refused: %d, want 502", status)
	}
	cc := findSource(t, func() []map[string]any { x, _ := adminSources(t, s.c); return x }(), "client_credentials")
	if cc["state"] != "backing_off" || cc["next_attempt"] == nil || cc["last_error"] == nil {
		t.Fatalf("after a refusal: %v", cc)
	}
	if lastErr := cc["last_error"].(map[string]any); lastErr["code"] != "invalid_request" || cc["consecutive_failures"] != 1.0 {
		t.Errorf("last error: %v, failures %v", lastErr, cc["consecutive_failures"])
	}
	if status := s.ccGet("/y"); status != 503 {
		t.Fatalf("during the backoff: %d, want 503", status)
	}
	// Fixed at the provider.
	s.cc.Want = map[string]string{"scope": "read"}
	issued := s.cc.issued()
	status, body := adminDo(t, s.c, http.MethodPost, fmt.Sprintf("/oauth_bearer/sources/%s/refresh", cc["id"]))
	if status != 200 || !strings.Contains(body, `"ok": true`) || !strings.Contains(body, `"state": "valid"`) {
		t.Fatalf("refresh: %d %s", status, body)
	}
	if s.cc.issued() != issued+1 {
		t.Error("refresh made no token request")
	}
	if status := s.ccGet("/z"); status != 200 {
		t.Errorf("after the refresh: %d, want 200 at once", status)
	}
	// Flush: the cached and stored token are dropped; the next request
	// fetches.
	status, body = adminDo(t, s.c, http.MethodPost, fmt.Sprintf("/oauth_bearer/sources/%s/flush", cc["id"]))
	if status != 200 || !strings.Contains(body, `"state": "none"`) {
		t.Fatalf("flush: %d %s", status, body)
	}
	if status := s.ccGet("/after-flush"); status != 200 || s.cc.issued() != issued+2 {
		t.Errorf("after flush: %d, %d token requests; want a new fetch", status, s.cc.issued()-issued)
	}
	// A refresh that fails says why.
	s.cc.Want = map[string]string{"scope": "write"}
	status, body = adminDo(t, s.c, http.MethodPost, fmt.Sprintf("/oauth_bearer/sources/%s/refresh", cc["id"]))
	if status != 200 || !strings.Contains(body, `"ok": false`) || !strings.Contains(body, `"error": "invalid_request"`) {
		t.Errorf("failed refresh: %d %s", status, body)
	}
	logs := s.c.logs()
	for _, want := range []string{"admin: refresh requested", "admin: flush requested", `"remote":"127.0.0.1:`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	assertNoPrefixes(t, "the admin API's answers", body, s.cc.Secret)
}

// A grant account: refresh redeems the refresh token now; flush drops the
// access token (cached and stored) and keeps the refresh token.
func TestAdminAPIGrantAccountRefreshAndFlush(t *testing.T) {
	s := newAdminSetup(t)
	if status, body := s.connect("alice"); status != 200 {
		t.Fatalf("connect: %d %q", status, body)
	}
	s.c.get("/api/a", "X-Account", "alice")
	first := lastAuthorization(t, s.api)
	gs := findSource(t, func() []map[string]any { x, _ := adminSources(t, s.c); return x }(), "grant")
	status, body := adminDo(t, s.c, http.MethodPost, fmt.Sprintf("/oauth_bearer/sources/%s/refresh?account=alice", gs["id"]))
	if status != 200 || !strings.Contains(body, `"ok": true`) || s.as.refreshes() != 1 {
		t.Fatalf("refresh of alice: %d %s (refreshes %d)", status, body, s.as.refreshes())
	}
	s.c.get("/api/b", "X-Account", "alice")
	second := lastAuthorization(t, s.api)
	if second == first {
		t.Error("alice still uses the token from before the refresh")
	}
	status, body = adminDo(t, s.c, http.MethodPost, fmt.Sprintf("/oauth_bearer/sources/%s/flush?account=alice", gs["id"]))
	if status != 200 {
		t.Fatalf("flush: %d %s", status, body)
	}
	if status, _ := s.c.get("/api/c", "X-Account", "alice"); status != 200 || s.as.refreshes() != 2 {
		t.Errorf("after flush: %d, refreshes %d; want a refresh with the kept refresh token", status, s.as.refreshes())
	}
	assertNoPrefixes(t, "the admin API's answers", body, first, second, s.as.Secret)
}
