package oauthbearer

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// The authorization-code grant end to end: a real Caddy, a strict
// authorization server (authserver_test.go) and an API that accepts only
// the server's live access tokens.

const (
	adminUser = "admin"
	adminPass = "consent-pass-1"
)

// grantSetup is a Caddy serving Event Temple-style consent endpoints under
// /oauth/et/ (behind basic_auth) and a proxy that uses the stored grant.
type grantSetup struct {
	t    *testing.T
	c    *testCaddy
	as   *fakeAS
	api  *upstream
	conf string
}

// grantConfig is the site: the consent handler and the injector share the
// credentials through a snippet, as the README shows.
func grantConfig(as *fakeAS, redirect, extraProxy, apiHostport string) string {
	hash, err := bcrypt.GenerateFromPassword([]byte(adminPass), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf(`(et_client) {
	client_id     %s
	client_secret {env.CAS_SECRET}
	token_url     %s
	revoke_url    %s
}
http://LISTEN {
	basic_auth /oauth/et/* {
		%s %s
	}
	oauth_bearer_consent /oauth/et/* eventtemple {
		import et_client
		authorize_url %s
		redirect_uri  %s
		scope         crm_read crm_manage
	}
	oauth_bearer eventtemple {
		grant authorization_code
		import et_client
		org   42
		%s
	}
	reverse_proxy %s
}`, as.ClientID, as.tokenURL(), as.revokeURL(), adminUser, hash, as.authorizeURL(), redirect, extraProxy, apiHostport)
}

func newGrantSetup(t *testing.T, extraProxy string) *grantSetup {
	t.Helper()
	return newGrantSetupWithStorage(t, "", extraProxy, 0)
}

// browser is a person's browser: it keeps cookies, follows redirects, knows
// the admin's basic_auth credentials for the Caddy origin, and sends Origin
// with a POST as browsers do.
func (g *grantSetup) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second,
		Transport: authTransport{host: g.c.addr}}
}

type authTransport struct{ host string }

func (a authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == a.host {
		r = r.Clone(r.Context())
		r.SetBasicAuth(adminUser, adminPass)
		if r.Method == http.MethodPost && r.Header.Get("Origin") == "" {
			r.Header.Set("Origin", "http://"+a.host)
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

func do(t *testing.T, client *http.Client, method, u string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	resp, err := client.Do(req)
	for try := 1; err != nil && method == http.MethodGet && try < 3 && droppedByReload(err); try++ {
		// A connection reset around a reload (see testCaddy.get).
		t.Logf("GET %s: %v; retrying (a connection reset around a reload)", u, err)
		resp, err = client.Do(req)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// connect runs the consent flow for an account in a fresh browser: the
// connect page, its form, the provider, the callback.
func (g *grantSetup) connect(account string) (int, string) {
	return connectWith(g.t, g.browser(), g.c.url("/oauth/et/connect"), account)
}

// connectWith opens the connect page, fills the account into its form and
// submits it, following the redirects to the provider and back.
func connectWith(t *testing.T, browser *http.Client, connectURL, account string) (int, string) {
	t.Helper()
	page := connectURL
	if account != "" {
		page += "?account=" + url.QueryEscape(account)
	}
	status, body := do(t, browser, http.MethodGet, page)
	if status != 200 {
		return status, body
	}
	form := onlyForm(t, body)
	if account != "" && form.values.Get("account") != account {
		t.Errorf("the connect form holds account %q, want %q", form.values.Get("account"), account)
	}
	return submitForm(t, browser, page, form, nil)
}

func (g *grantSetup) status(account string) map[string]any {
	g.t.Helper()
	_, body := do(g.t, g.browser(), http.MethodGet, g.c.url("/oauth/et/status?account="+account))
	var st map[string]any
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		g.t.Fatalf("status is not JSON: %q", body)
	}
	return st
}

func TestAuthorizationCodeFlowEndToEnd(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "")

	// Before consent: the API is not reached, the answer says where to connect.
	status, body := g.c.get("/api/bookings")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "/oauth/et/connect?account=default") {
		t.Fatalf("before consent: %d %q, want 503 naming the connect path", status, body)
	}
	if len(g.api.authorizations()) != 0 {
		t.Fatal("a request was forwarded before consent")
	}
	// The consent endpoints are guarded by basic_auth.
	if status, _ := g.c.get("/oauth/et/connect"); status != http.StatusUnauthorized {
		t.Errorf("connect without credentials: %d, want 401 from basic_auth", status)
	}

	// Consent: connect → provider (PKCE, exact redirect_uri, comma scopes) → callback.
	status, body = g.connect("")
	if status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("consent flow ended with %d %q", status, body)
	}
	if got := strings.Join(g.as.authorizedScopes(), " "); got != "crm_read crm_manage" {
		t.Errorf("authorized scopes = %q", got)
	}
	st := g.status("default")
	if st["connected"] != true || st["needs_consent"] != false || st["scope"] == nil {
		t.Errorf("status after consent: %v", st)
	}

	// Proxied requests carry the stored grant's token and X-API-ORG.
	status, body = g.c.get("/api/bookings")
	if status != 200 || body != "ok /api/bookings" {
		t.Fatalf("proxied request: %d %q", status, body)
	}

	// Refresh across several rotations: each time the token expires on our
	// clock, the grant is refreshed with the rotating refresh token.
	for i := 1; i <= 3; i++ {
		clock.add(3601 * time.Second)
		if status, body := g.c.get(fmt.Sprintf("/api/r%d", i)); status != 200 {
			t.Fatalf("after rotation %d: %d %q", i, status, body)
		}
	}
	if g.as.refreshes() != 3 || g.as.invalidGrants() != 0 || g.as.liveRefreshTokens() != 1 {
		t.Errorf("refreshes %d, invalid_grant %d, live refresh tokens %d; want 3, 0, 1",
			g.as.refreshes(), g.as.invalidGrants(), g.as.liveRefreshTokens())
	}

	// Restart: a new process's worth of state (every handler and pool
	// entry gone), the same storage: no consent needed.
	g.c.restart(g.conf)
	clock.add(3601 * time.Second) // and the stored access token has expired
	if status, body := g.c.get("/api/after-restart"); status != 200 {
		t.Fatalf("after restart: %d %q", status, body)
	}
	if g.as.refreshes() != 4 || g.as.codeExchanges() != 1 {
		t.Errorf("after restart: refreshes %d, code exchanges %d; want 4 and still 1", g.as.refreshes(), g.as.codeExchanges())
	}

	// Disconnect: revoked at the provider, deleted, and requests stop.
	req, _ := http.NewRequest(http.MethodPost, g.c.url("/oauth/et/disconnect"), nil)
	resp, err := g.browser().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"revoked":true`) {
		t.Errorf("disconnect: %d %s", resp.StatusCode, b)
	}
	if g.as.revocations() == 0 || g.as.liveRefreshTokens() != 0 {
		t.Errorf("revocations %d, live refresh tokens %d", g.as.revocations(), g.as.liveRefreshTokens())
	}
	if status, _ := g.c.get("/api/after-disconnect"); status != http.StatusServiceUnavailable {
		t.Errorf("after disconnect: %d, want 503", status)
	}
	if st := g.status("default"); st["connected"] != false {
		t.Errorf("status after disconnect: %v", st)
	}

	// Nothing secret in the logs, the status or the pages.
	logs := g.c.logs()
	assertNoSecrets(t, logs, g.as.Secret)
	for _, a := range g.api.authorizations() {
		if a != "" {
			assertNoSecrets(t, logs, a)
		}
	}
	// The stored grant is encrypted: no token in the storage files.
	filepath.Walk(g.c.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.Contains(p, "oauth_bearer") {
			data, _ := os.ReadFile(p)
			for _, a := range g.api.authorizations() {
				if tok, ok := strings.CutPrefix(a, "Bearer "); ok && strings.Contains(string(data), tok) {
					t.Errorf("%s holds an access token in clear", p)
				}
			}
		}
		return nil
	})
}

func TestConsentCallbackRefusesForgeryAndReplay(t *testing.T) {
	g := newGrantSetup(t, "")
	noFollow := g.browser()
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	// Start a flow and stop at the provider's redirect back.
	authz := g.startConsent(noFollow, "")
	for _, p := range []string{"code_challenge_method=S256", "response_type=code", "state=", "scope=crm_read%2Ccrm_manage"} {
		if !strings.Contains(authz, p) {
			t.Errorf("authorize URL %q lacks %s", authz, p)
		}
	}
	resp, err := noFollow.Get(authz)
	if err != nil || resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %v %v", err, resp)
	}
	resp.Body.Close()
	callback := resp.Header.Get("Location")

	// The callback from a browser that did not start the flow: refused.
	if status, body := do(t, g.browser(), http.MethodGet, callback); status != 400 || !strings.Contains(body, "did not start it") {
		t.Errorf("callback without the state cookie: %d %q", status, body)
	}
	// A forged state, from the browser that holds the flow's cookie:
	// refused (each flow's cookie is named after its state, so a forged
	// state finds none).
	forged := strings.Replace(callback, "state=", "state=x", 1)
	if status, body := do(t, noFollow, http.MethodGet, forged); status != 400 || !strings.Contains(body, "did not start it") {
		t.Errorf("forged state: %d %q", status, body)
	}
	if g.as.codeExchanges() != 0 {
		t.Fatal("a refused callback exchanged the code")
	}

	// A fresh, genuine flow completes once; replaying its callback fails.
	resp, _ = noFollow.Get(g.startConsent(noFollow, ""))
	resp.Body.Close()
	callback = resp.Header.Get("Location")
	saved := noFollow.Jar.Cookies(mustURL(callback))
	if status, body := do(t, noFollow, http.MethodGet, callback); status != 200 {
		t.Fatalf("genuine callback: %d %q", status, body)
	}
	attacker := g.browser()
	attacker.Jar.SetCookies(mustURL(callback), saved) // an attacker replaying cookie and URL
	if status, body := do(t, attacker, http.MethodGet, callback); status != 400 || !strings.Contains(body, "already completed") {
		t.Errorf("replayed callback: %d %q", status, body)
	}
	// The browser that completed it reloads the success page: it says the
	// account is connected, and redeems nothing.
	if status, body := do(t, noFollow, http.MethodGet, callback); status != 200 || !strings.Contains(body, "default is connected") {
		t.Errorf("reloaded success page: %d %q", status, body)
	}
	if g.as.codeExchanges() != 1 {
		t.Errorf("code exchanges = %d, want 1", g.as.codeExchanges())
	}
}

// startConsent opens the connect page in browser (which must not follow
// redirects), submits its form and returns where it is sent: the
// provider's authorization URL.
func (g *grantSetup) startConsent(browser *http.Client, account string) string {
	g.t.Helper()
	page := g.c.url("/oauth/et/connect?account=" + url.QueryEscape(firstNonEmpty(account, "default")))
	status, body := do(g.t, browser, http.MethodGet, page)
	if status != 200 {
		g.t.Fatalf("connect page: %d %q", status, body)
	}
	form := onlyForm(g.t, body)
	req, _ := http.NewRequest(form.method, g.c.url(form.action), strings.NewReader(form.values.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := browser.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		g.t.Fatalf("connect form: %d, want 303 to the provider", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

func TestConsentDeniedByUser(t *testing.T) {
	g := newGrantSetup(t, "")
	g.as.Deny.Store(true)
	status, body := g.connect("")
	if status != 400 || !strings.Contains(body, "access_denied") || !strings.Contains(body, "Nothing was stored") {
		t.Errorf("denied consent: %d %q", status, body)
	}
	if st := g.status("default"); st["connected"] != false {
		t.Errorf("status after a denied consent: %v", st)
	}
}

func TestTamperedStoredGrantNeedsConsent(t *testing.T) {
	g := newGrantSetup(t, "")
	if status, _ := g.connect(""); status != 200 {
		t.Fatal("consent failed")
	}
	var file string
	filepath.Walk(g.c.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, "default.json") {
			file = p
		}
		return nil
	})
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("stored grant not found under %s: %v", g.c.dir, err)
	}
	data[len(data)/2] ^= 0x01
	os.WriteFile(file, data, 0o600)
	// A new configuration load: nothing cached, the grant must be read.
	g.c.restart(g.conf)
	status, body := g.c.get("/api/x")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "consent_required") {
		t.Errorf("tampered grant: %d %q", status, body)
	}
	st := g.status("default")
	if st["needs_consent"] != true || !strings.Contains(fmt.Sprint(st["reason"]), "cannot be decrypted") {
		t.Errorf("status of a tampered grant: %v", st)
	}
	if !strings.Contains(g.c.logs(), "cannot be decrypted") {
		t.Error("the log does not say the grant could not be decrypted")
	}
}

func TestManyAccountsAndHostileNames(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	for _, a := range []string{"alice", "bob"} {
		if status, body := g.connect(a); status != 200 {
			t.Fatalf("connect %s: %d %q", a, status, body)
		}
	}
	g.c.get("/api/a", "X-Account", "alice")
	g.c.get("/api/b", "X-Account", "bob")
	auths := g.api.authorizations()
	if len(auths) != 2 || auths[0] == auths[1] || !g.as.validAccess(strings.TrimPrefix(auths[0], "Bearer ")) {
		t.Errorf("accounts did not get their own tokens: %q", auths)
	}
	status, body := g.c.get("/api/c", "X-Account", "carol")
	if status != 503 || !strings.Contains(body, "/oauth/et/connect?account=carol") {
		t.Errorf("unknown account: %d %q", status, body)
	}
	for _, bad := range []string{"../../etc/passwd", "a/b", "..", ".hidden", "x..y", "a b", ""} {
		status, body := g.c.get("/api/d", "X-Account", bad)
		if status != 400 {
			t.Errorf("account %q: %d %q, want 400", bad, status, body)
		}
		if bad != "" {
			if status, _ := do(t, g.browser(), http.MethodGet, g.c.url("/oauth/et/connect?account="+url.QueryEscape(bad))); status != 400 {
				t.Errorf("connect with account %q: %d, want 400", bad, status)
			}
		}
	}
	if len(g.api.authorizations()) != 2 {
		t.Error("a request for a bad account was forwarded")
	}
	g.c.get("/api/e", "X-Account", "alice")
	g.c.get("/api/f", "X-Account", "bob")
	if n := g.as.refreshes() + g.as.codeExchanges(); n != 2 {
		t.Errorf("token requests = %d, want the 2 code exchanges only", n)
	}
}

// invalid_grant on refresh: the grant needs consent; requests get 503
// saying so, status shows it, the log records it.
func TestInvalidGrantMarksConsentNeeded(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "")
	if status, _ := g.connect(""); status != 200 {
		t.Fatal("consent failed")
	}
	// The person revokes the app at the provider.
	g.as.setRefreshTokensDead(true)
	clock.add(3601 * time.Second)
	status, body := g.c.get("/api/x")
	if status != 503 || !strings.Contains(body, "needs consent") || !strings.Contains(body, "/oauth/et/connect") {
		t.Errorf("after invalid_grant: %d %q", status, body)
	}
	st := g.status("default")
	if st["needs_consent"] != true || !strings.Contains(fmt.Sprint(st["reason"]), "invalid_grant") {
		t.Errorf("status: %v", st)
	}
	if !strings.Contains(g.c.logs(), "consent required") {
		t.Error("no error log line for the lost grant")
	}
	// Connecting again heals it.
	if status, _ := g.connect(""); status != 200 {
		t.Fatal("reconnect failed")
	}
	if status, body := g.c.get("/api/y"); status != 200 {
		t.Errorf("after reconnect: %d %q", status, body)
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// grant refresh_token: the proxy starts from a refresh token obtained
// elsewhere; after first use the stored, rotated token wins over the
// configured (now dead) one, across a restart.
func TestRefreshTokenBootstrap(t *testing.T) {
	clock := useFakeClock(t)
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = "http://127.0.0.1/unused", true
	api := newAPI(t, as)
	t.Setenv("BOOT_RT", as.issueRefreshToken())
	t.Setenv("CAS_SECRET", as.Secret)
	conf := fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		grant         refresh_token
		refresh_token {env.BOOT_RT}
		token_url     %s
		client_id     %s
		client_secret {env.CAS_SECRET}
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, api.hostport())
	c := startCaddy(t, conf)
	if status, body := c.get("/a"); status != 200 {
		t.Fatalf("first request: %d %q", status, body)
	}
	clock.add(3601 * time.Second)
	if status, body := c.get("/b"); status != 200 {
		t.Fatalf("after a rotation: %d %q", status, body)
	}
	// Restart with the same configuration, whose refresh token is dead now.
	c.restart(conf)
	clock.add(3601 * time.Second)
	if status, body := c.get("/c"); status != 200 {
		t.Fatalf("after restart: %d %q", status, body)
	}
	if as.refreshes() != 3 || as.invalidGrants() != 0 {
		t.Errorf("refreshes %d, invalid_grant %d; want 3 and 0 (the stored token won)", as.refreshes(), as.invalidGrants())
	}
	assertNoSecrets(t, c.logs(), os.Getenv("BOOT_RT"), as.Secret)
}

// The calcom preset: scopes READ_BOOKING READ_PROFILE, no expires_in (the
// JWT's exp schedules the refresh), the refresh token sent as a bearer
// credential to a separate refresh URL.
func TestCalcomCodeGrant(t *testing.T) {
	clock := useFakeClock(t)
	addr := freeAddr(t)
	redirect := "http://" + addr + "/cal/callback"
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = redirect, true
	as.JWTAccess, as.Lifetime = true, 1800*time.Second // a JWT with exp (30 minutes), no expires_in
	as.SeparateRefresh = true
	as.Now = clock.now
	api := newAPI(t, as)
	t.Setenv("CAL_SECRET", as.Secret)
	common := fmt.Sprintf(`client_id     %s
		client_secret {env.CAL_SECRET}
		token_url     %s
		refresh_url   %s`, as.ClientID, as.tokenURL(), as.refreshURL())
	c := startCaddyAt(t, addr, fmt.Sprintf(`http://LISTEN {
	handle /cal/* {
		oauth_bearer_consent calcom {
			%s
			authorize_url %s
			redirect_uri  %s
			scope         READ_BOOKING READ_PROFILE
		}
	}
	handle {
		oauth_bearer calcom {
			grant authorization_code
			%s
		}
		reverse_proxy %s
	}
}`, common, as.authorizeURL(), redirect, common, api.hostport()))
	jar, _ := cookiejar.New(nil)
	if status, body := connectWith(t, &http.Client{Jar: jar, Timeout: 10 * time.Second}, c.url("/cal/connect"), ""); status != 200 {
		t.Fatalf("consent: %d %q", status, body)
	}
	if got := strings.Join(as.authorizedScopes(), ","); got != "READ_BOOKING,READ_PROFILE" {
		t.Errorf("scopes = %q", got)
	}
	if status, body := c.get("/v2/bookings"); status != 200 {
		t.Fatalf("proxied: %d %q", status, body)
	}
	// Within the JWT's 30 minutes: no refresh; past it: one, at the
	// separate refresh endpoint (the token endpoint would refuse it).
	clock.add(20 * time.Minute)
	c.get("/v2/bookings")
	if as.refreshes() != 0 {
		t.Errorf("refreshed %d times within the JWT's lifetime", as.refreshes())
	}
	clock.add(11 * time.Minute)
	if status, body := c.get("/v2/bookings"); status != 200 || as.refreshes() != 1 {
		t.Errorf("past exp: %d %q, refreshes %d", status, body, as.refreshes())
	}
}
