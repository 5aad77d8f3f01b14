package oauthbearer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The oauth_bearer_consent handler through a real Caddy (grant_test.go's
// newGrantSetup): what its pages allow, what it refuses from other sites,
// how flows, reconnects and disconnects act on the provider and on proxied
// requests, and that it hands every other path to the next handler.

// cnsTransport is a browser's transport without grant_test.go's automatic
// Origin: it adds the basic_auth credentials for the Caddy origin, and
// counts the requests that reach the provider's authorization endpoint.
type cnsTransport struct {
	caddyHost, asHost string
	authorizeHits     *atomic.Int64
}

func (c cnsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	switch r.URL.Host {
	case c.caddyHost:
		r = r.Clone(r.Context())
		r.SetBasicAuth(adminUser, adminPass)
	case c.asHost:
		if r.URL.Path == "/oauth/authorize" {
			c.authorizeHits.Add(1)
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// cnsBrowser returns a cookie-keeping client for g's Caddy that sends only
// the headers a test sets, and the counter of its requests to the
// provider's authorization endpoint. follow: whether it follows redirects.
func cnsBrowser(g *grantSetup, follow bool) (*http.Client, *atomic.Int64) {
	hits := new(atomic.Int64)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second,
		Transport: cnsTransport{caddyHost: g.c.addr, asHost: mustURL(g.as.URL).Host, authorizeHits: hits}}
	if !follow {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return c, hits
}

type cnsResponse struct {
	status int
	header http.Header
	body   string
	url    *url.URL // where the client ended up
}

// cnsDo sends a request with a form body (nil: none) and headers (name,
// value pairs).
func cnsDo(t *testing.T, client *http.Client, method, u string, form url.Values, hdr ...string) cnsResponse {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return cnsResponse{resp.StatusCode, resp.Header, string(b), resp.Request.URL}
}

// cnsStatus returns the raw body of GET status?account= and its JSON.
func cnsStatus(t *testing.T, g *grantSetup, account string) (string, map[string]any) {
	t.Helper()
	client, _ := cnsBrowser(g, false)
	r := cnsDo(t, client, http.MethodGet, g.c.url("/oauth/et/status?account="+url.QueryEscape(account)), nil)
	var st map[string]any
	if r.status != 200 || json.Unmarshal([]byte(r.body), &st) != nil {
		t.Fatalf("status of %q: %d %q", account, r.status, r.body)
	}
	return r.body, st
}

// cnsConnected reports whether status says account is connected.
func cnsConnected(t *testing.T, g *grantSetup, account string) bool {
	t.Helper()
	_, st := cnsStatus(t, g, account)
	return st["connected"] == true
}

// cnsConnect runs the whole consent flow for account in a fresh browser
// and fails the test unless it ends on the success page.
func cnsConnect(t *testing.T, g *grantSetup, account string) {
	t.Helper()
	if status, body := connectWith(t, g.browser(), g.c.url("/oauth/et/connect"), account); status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("connect %q: %d %q", account, status, body)
	}
}

// cnsAPI sends a proxied GET for account ("" : no X-Account header) and
// returns the status, the body and the Authorization the API received for
// it ("" when the request did not reach the API).
func cnsAPI(t *testing.T, g *grantSetup, path, account string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, g.c.url(path), nil)
	if account != "" {
		req.Header.Set("X-Account", account)
	}
	n := len(g.api.authorizations())
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	seen := g.api.authorizations()[n:]
	auth := ""
	if len(seen) > 0 {
		auth = seen[len(seen)-1]
	}
	return resp.StatusCode, string(b), auth
}

// cnsStateCookies counts the consent state cookies client would send to
// the callback.
func cnsStateCookies(g *grantSetup, client *http.Client) int {
	n := 0
	for _, c := range client.Jar.Cookies(mustURL(g.c.url("/oauth/et/callback"))) {
		if strings.HasPrefix(c.Name, "oauth_bearer_state_") {
			n++
		}
	}
	return n
}

// cnsFinish takes a flow started in browser (which must not follow
// redirects) through the provider, which approves, and back to the
// callback, and returns the callback's answer.
func cnsFinish(t *testing.T, browser *http.Client, authorizeURL string) (int, string) {
	t.Helper()
	status, body, _ := cnsFinishAt(t, browser, authorizeURL)
	return status, body
}

// cnsFinishAt is cnsFinish that also returns the callback URL.
func cnsFinishAt(t *testing.T, browser *http.Client, authorizeURL string) (int, string, string) {
	t.Helper()
	resp, err := browser.Get(authorizeURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %d, want 302 back to the callback", resp.StatusCode)
	}
	callback := resp.Header.Get("Location")
	status, body := do(t, browser, http.MethodGet, callback)
	return status, body, callback
}

// cnsWhere is a URL without its query (a state, a code): for messages.
func cnsWhere(u string) string {
	before, _, _ := strings.Cut(u, "?")
	return before
}

// cnsCookieNames returns the names of the cookies a response sets: their
// values (sealed state) stay out of messages.
func cnsCookieNames(h http.Header) []string {
	var names []string
	for _, c := range (&http.Response{Header: h}).Cookies() {
		names = append(names, c.Name)
	}
	return names
}

// cnsCSP parses a Content-Security-Policy into directive → sources.
func cnsCSP(v string) map[string][]string {
	out := map[string][]string{}
	for _, d := range strings.Split(v, ";") {
		f := strings.Fields(d)
		if len(f) > 0 {
			out[strings.ToLower(f[0])] = f[1:]
		}
	}
	return out
}

// GET connect only shows a page: a link or an image on another site that
// loads it must not send the browser to the provider (which would bind
// whoever is signed in there to the account). The page itself is a valid
// form that POSTs to connect.
func TestConsentConnectGETShowsFormAndStartsNoFlow(t *testing.T) {
	g := newGrantSetup(t, "")
	browser, authorizeHits := cnsBrowser(g, true)
	page := g.c.url("/oauth/et/connect?account=alice")
	for _, hdr := range [][]string{nil, {"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Dest", "image"}} {
		r := cnsDo(t, browser, http.MethodGet, page, nil, hdr...)
		if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET connect %v: %d %q %q, want 200 HTML", hdr, r.status, r.header.Get("Content-Type"), r.body)
		}
		if r.url.Host != g.c.addr || r.url.Path != "/oauth/et/connect" {
			t.Errorf("GET connect %v was redirected to %s", hdr, cnsWhere(r.url.String()))
		}
		if sc := cnsCookieNames(r.header); len(sc) != 0 {
			t.Errorf("GET connect %v set cookies: %q", hdr, sc)
		}
		low := strings.ToLower(r.body)
		if strings.Contains(low, "<script") || strings.Contains(low, "http-equiv") {
			t.Errorf("GET connect %v: the page could start something by itself:\n%s", hdr, r.body)
		}
		form := onlyForm(t, r.body) // lang, title, charset, labelled inputs, a submit button
		action, err := mustURL(page).Parse(form.action)
		if form.method != http.MethodPost || err != nil || action.Path != "/oauth/et/connect" || action.Host != g.c.addr {
			t.Errorf("form: %s %q, want POST to /oauth/et/connect", form.method, form.action)
		}
		if form.values.Get("account") != "alice" || form.labelled["account"] == "" {
			t.Errorf("form: account %q labelled %q, want alice with a label", form.values.Get("account"), form.labelled["account"])
		}
		if !slices.Contains(form.buttons, "Connect") {
			t.Errorf("form buttons %q, want Connect", form.buttons)
		}
	}
	if n := cnsStateCookies(g, browser); n != 0 {
		t.Errorf("the browser holds %d state cookies after GETs", n)
	}
	if authorizeHits.Load() != 0 || g.as.approvals() != 0 {
		t.Fatalf("GET connect reached the provider's authorize endpoint: %d requests, %d authorizations",
			authorizeHits.Load(), g.as.approvals())
	}

	// The counter does count: pressing the button (the form's POST) is
	// what reaches the provider.
	r := cnsDo(t, browser, http.MethodGet, page, nil)
	if status, body := submitForm(t, browser, page, onlyForm(t, r.body), nil); status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("submitting the form: %d %q", status, body)
	}
	if authorizeHits.Load() != 1 || g.as.approvals() != 1 {
		t.Errorf("after the POST: %d authorize requests, %d authorizations; want 1 and 1", authorizeHits.Load(), g.as.approvals())
	}
}

// Every consent page forbids being framed (clickjacking the Connect
// button), may only post forms to this origin and the provider, and is not
// cached.
func TestConsentPagesForbidFramingAndForeignFormTargetsAndCaching(t *testing.T) {
	g := newGrantSetup(t, "")
	browser, _ := cnsBrowser(g, false)
	provider := g.as.URL // scheme://host:port
	pages := map[string]cnsResponse{
		"connect page":           cnsDo(t, browser, http.MethodGet, g.c.url("/oauth/et/connect"), nil),
		"callback error page":    cnsDo(t, browser, http.MethodGet, g.c.url("/oauth/et/callback?state=forged&code=x"), nil),
		"refused cross-site":     cnsDo(t, browser, http.MethodPost, g.c.url("/oauth/et/connect"), url.Values{}, "Sec-Fetch-Site", "cross-site"),
		"status (JSON)":          cnsDo(t, browser, http.MethodGet, g.c.url("/oauth/et/status"), nil),
		"disconnect (JSON)":      cnsDo(t, browser, http.MethodPost, g.c.url("/oauth/et/disconnect"), nil),
		"connect redirect (303)": cnsDo(t, browser, http.MethodPost, g.c.url("/oauth/et/connect"), url.Values{}),
	}
	for name, r := range pages {
		if got := r.header.Get("X-Frame-Options"); !strings.EqualFold(got, "DENY") {
			t.Errorf("%s: X-Frame-Options %q, want DENY", name, got)
		}
		if cc := r.header.Get("Cache-Control"); !slices.Contains(strings.Split(strings.ReplaceAll(cc, " ", ""), ","), "no-store") {
			t.Errorf("%s: Cache-Control %q, want no-store", name, cc)
		}
		if !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
			continue
		}
		csps := r.header.Values("Content-Security-Policy")
		if len(csps) != 1 {
			t.Errorf("%s: %d Content-Security-Policy headers, want 1", name, len(csps))
			continue
		}
		csp := cnsCSP(csps[0])
		if fa := csp["frame-ancestors"]; !slices.Equal(fa, []string{"'none'"}) {
			t.Errorf("%s: frame-ancestors %q, want 'none' (CSP %q)", name, fa, csps[0])
		}
		fa := slices.Clone(csp["form-action"])
		slices.Sort(fa)
		if want := []string{"'self'", provider}; !slices.Equal(fa, want) {
			t.Errorf("%s: form-action %q, want exactly %q (CSP %q)", name, csp["form-action"], want, csps[0])
		}
	}
	if r := pages["connect page"]; r.status != 200 {
		t.Errorf("connect page: %d", r.status)
	}
	if r := pages["callback error page"]; r.status != 400 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
		t.Errorf("callback error page: %d %q", r.status, r.header.Get("Content-Type"))
	}
}

// POST connect and POST disconnect refuse what a browser marks as coming
// from another site, with 403, and then start nothing and delete nothing;
// same-origin requests, a typed URL (Sec-Fetch-Site: none) and clients
// that are not browsers (no header at all) are served.
func TestConsentRefusesCrossSitePOSTsAndAcceptsSameOrigin(t *testing.T) {
	g := newGrantSetup(t, "")
	cnsConnect(t, g, "default")
	browser, authorizeHits := cnsBrowser(g, false)
	connectURL, disconnectURL := g.c.url("/oauth/et/connect"), g.c.url("/oauth/et/disconnect?account=default")

	refused := []struct {
		name string
		hdr  []string
	}{
		{"Sec-Fetch-Site cross-site", []string{"Sec-Fetch-Site", "cross-site"}},
		{"Sec-Fetch-Site same-site", []string{"Sec-Fetch-Site", "same-site"}},
		{"Origin of another site", []string{"Origin", "https://evil.example"}},
		{"Origin null", []string{"Origin", "null"}},
		{"Origin of this host on another port", []string{"Origin", "http://127.0.0.1:1"}},
	}
	revocations, authorizations := g.as.revocations(), g.as.approvals()
	for _, v := range refused {
		r := cnsDo(t, browser, http.MethodPost, connectURL, url.Values{"account": {"mallory"}}, v.hdr...)
		if r.status != http.StatusForbidden {
			t.Errorf("POST connect, %s: %d %q, want 403", v.name, r.status, r.body)
		}
		if loc, sc := r.header.Get("Location"), cnsCookieNames(r.header); loc != "" || len(sc) != 0 {
			t.Errorf("POST connect, %s: started a flow: Location %q, cookies set %q", v.name, cnsWhere(loc), sc)
		}
		r = cnsDo(t, browser, http.MethodPost, disconnectURL, nil, v.hdr...)
		if r.status != http.StatusForbidden {
			t.Errorf("POST disconnect, %s: %d %q, want 403", v.name, r.status, r.body)
		}
		if !cnsConnected(t, g, "default") {
			t.Fatalf("POST disconnect, %s: the account was disconnected", v.name)
		}
	}
	// A GET (a link, an image) never disconnects either: it shows the
	// confirmation page.
	if r := cnsDo(t, browser, http.MethodGet, disconnectURL, nil); r.status != http.StatusOK || !strings.Contains(r.body, "Disconnect default?") || !cnsConnected(t, g, "default") {
		t.Errorf("GET disconnect: %d, connected %v; want the confirmation page and still connected", r.status, cnsConnected(t, g, "default"))
	}
	if cnsStateCookies(g, browser) != 0 || authorizeHits.Load() != 0 ||
		g.as.approvals() != authorizations || g.as.revocations() != revocations {
		t.Errorf("refused requests acted: %d state cookies, %d authorize requests, authorizations %d→%d, revocations %d→%d",
			cnsStateCookies(g, browser), authorizeHits.Load(), authorizations, g.as.approvals(), revocations, g.as.revocations())
	}
	if status, body, _ := cnsAPI(t, g, "/api/still", ""); status != 200 {
		t.Errorf("after refused disconnects: proxied request %d %q", status, body)
	}

	accepted := []struct {
		name string
		hdr  []string
	}{
		{"Sec-Fetch-Site same-origin", []string{"Sec-Fetch-Site", "same-origin"}},
		{"Sec-Fetch-Site none", []string{"Sec-Fetch-Site", "none"}},
		{"Origin of this host", []string{"Origin", "http://" + g.c.addr}},
		{"no Sec-Fetch-Site or Origin (not a browser)", nil},
	}
	for i, v := range accepted {
		r := cnsDo(t, browser, http.MethodPost, connectURL, url.Values{"account": {"default"}}, v.hdr...)
		if r.status != http.StatusSeeOther || !strings.HasPrefix(r.header.Get("Location"), g.as.authorizeURL()+"?") {
			t.Errorf("POST connect, %s: %d Location %q, want 303 to the provider", v.name, r.status, cnsWhere(r.header.Get("Location")))
		}
		if n := cnsStateCookies(g, browser); n != i+1 {
			t.Errorf("POST connect, %s: the browser holds %d state cookies, want %d", v.name, n, i+1)
		}
		r = cnsDo(t, browser, http.MethodPost, disconnectURL, nil, v.hdr...)
		if r.status != 200 || !strings.Contains(r.body, `"disconnected":true`) {
			t.Errorf("POST disconnect, %s: %d %q, want 200", v.name, r.status, r.body)
		}
		if cnsConnected(t, g, "default") {
			t.Errorf("POST disconnect, %s: still connected", v.name)
		}
		cnsConnect(t, g, "default")
	}
}

// Two flows started one after the other in one browser and completed in
// the reverse order both complete: each has its own state cookie. For
// two accounts, and for one account twice (the later completion wins).
func TestConsentTwoFlowsInOneBrowserCompleteInReverseOrder(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	browser := g.browser()
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	alice := g.startConsent(browser, "alice")
	bob := g.startConsent(browser, "bob")
	if n := cnsStateCookies(g, browser); n != 2 {
		t.Errorf("after starting two flows the browser holds %d state cookies, want 2", n)
	}
	status, body, bobCallback := cnsFinishAt(t, browser, bob)
	if status != 200 || !strings.Contains(body, "bob") {
		t.Errorf("bob's flow (started second, finished first): %d %q", status, body)
	}
	if status, body := cnsFinish(t, browser, alice); status != 200 || !strings.Contains(body, "alice") {
		t.Errorf("alice's flow (started first, finished second): %d %q", status, body)
	}
	for _, a := range []string{"alice", "bob"} {
		if !cnsConnected(t, g, a) {
			t.Errorf("%s is not connected", a)
		}
	}
	_, _, authAlice := cnsAPI(t, g, "/api/a", "alice")
	_, _, authBob := cnsAPI(t, g, "/api/b", "bob")
	if authAlice == "" || authBob == "" || authAlice == authBob {
		t.Errorf("alice and bob do not have their own tokens: alice's sent %v, bob's sent %v, equal %v", authAlice != "", authBob != "", authAlice == authBob)
	}

	// The same account twice.
	first := g.startConsent(browser, "carol")
	second := g.startConsent(browser, "carol")
	if status, body := cnsFinish(t, browser, second); status != 200 || !strings.Contains(body, "carol") {
		t.Errorf("carol's second flow, finished first: %d %q", status, body)
	}
	if status, body := cnsFinish(t, browser, first); status != 200 || !strings.Contains(body, "carol") {
		t.Errorf("carol's first flow, finished second: %d %q", status, body)
	}
	if !cnsConnected(t, g, "carol") {
		t.Error("carol is not connected")
	}
	if status, body, _ := cnsAPI(t, g, "/api/c", "carol"); status != 200 {
		t.Errorf("carol's proxied request: %d %q", status, body)
	}
	// What is left of each flow's cookie only says that it is complete:
	// going back to a callback shows the account, and redeems nothing.
	if status, body := do(t, browser, http.MethodGet, bobCallback); status != 200 || !strings.Contains(body, "bob is connected") {
		t.Errorf("bob's callback again: %d %q", status, body)
	}
	// carol's replaced grant is not revoked (see the reconnect test): four
	// live grants at the provider, three in use.
	if ex, live := g.as.codeExchanges(), g.as.liveRefreshTokens(); ex != 4 || live != 4 {
		t.Errorf("code exchanges %d, live refresh tokens %d; want 4 and 4", ex, live)
	}
}

// Connecting an account that is connected replaces its grant; proxied
// requests use the new grant at once. The replaced refresh token is not
// revoked: at providers where a revocation ends every grant of the client
// and user (Auth0, Google, Keycloak's sessions), that would end the new
// grant too (issue 16, defect 6; grant_fleet_test.go). Disconnecting
// revokes.
func TestConsentReconnectReplacesTheGrantAndProxyUsesIt(t *testing.T) {
	g := newGrantSetup(t, "")
	cnsConnect(t, g, "default")
	live, _ := g.as.refreshTokens()
	if len(live) != 1 {
		t.Fatalf("after the first connect: %d live refresh tokens", len(live))
	}
	rt1 := live[0]
	status, body, auth1 := cnsAPI(t, g, "/api/one", "")
	if status != 200 || auth1 == "" {
		t.Fatalf("with the first grant: %d %q", status, body)
	}
	revocations := g.as.revocations()

	cnsConnect(t, g, "default")
	if n := g.as.revocations() - revocations; n != 0 {
		t.Errorf("reconnect made %d revocation requests, want none", n)
	}
	live, _ = g.as.refreshTokens()
	if !slices.Contains(live, rt1) || len(live) != 2 {
		t.Errorf("after reconnect: the first refresh token live %v, live refresh tokens %d (want both grants live)",
			slices.Contains(live, rt1), len(live))
	}
	unauthorized := g.api.answered(401)
	status, body, auth2 := cnsAPI(t, g, "/api/two", "")
	if status != 200 || auth2 == auth1 || !g.as.validAccess(strings.TrimPrefix(auth2, "Bearer ")) {
		t.Errorf("after reconnect: %d %q, the old token sent %v; want 200 with the new grant's token", status, body, auth2 == auth1)
	}
	if g.api.answered(401) != unauthorized {
		t.Error("after reconnect the old token was sent upstream first")
	}
}

// POST disconnect?account=x revokes the account's tokens at the provider
// and deletes its grant: status says not connected, proxied requests for
// it get 503 naming the connect path; other accounts are untouched.
func TestConsentDisconnectRevokesDeletesAndProxyAnswers503(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	cnsConnect(t, g, "alice")
	cnsConnect(t, g, "bob")
	_, _, authAlice := cnsAPI(t, g, "/api/a", "alice")
	var grantFiles []string
	filepath.Walk(g.c.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(p, "oauth_bearer") && strings.HasSuffix(p, "alice.json") {
			grantFiles = append(grantFiles, p)
		}
		return nil
	})
	if len(grantFiles) != 1 {
		t.Fatalf("alice's stored grant not found under %s: %q", g.c.dir, grantFiles)
	}
	revocations := g.as.revocations()

	req, _ := http.NewRequest(http.MethodPost, g.c.url("/oauth/et/disconnect?account=alice"), nil)
	resp, err := g.browser().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ans map[string]any
	json.NewDecoder(resp.Body).Decode(&ans)
	resp.Body.Close()
	if resp.StatusCode != 200 || ans["account"] != "alice" || ans["disconnected"] != true || ans["revoked"] != true {
		t.Errorf("disconnect: %d %v", resp.StatusCode, ans)
	}
	if n := g.as.revocations() - revocations; n != 2 {
		t.Errorf("disconnect made %d revocation requests, want 2 (refresh and access token)", n)
	}
	if g.as.validAccess(strings.TrimPrefix(authAlice, "Bearer ")) || g.as.liveRefreshTokens() != 1 {
		t.Errorf("after disconnect: alice's access token valid %v, live refresh tokens %d (want false and bob's 1)",
			g.as.validAccess(strings.TrimPrefix(authAlice, "Bearer ")), g.as.liveRefreshTokens())
	}
	if _, err := os.Stat(grantFiles[0]); !os.IsNotExist(err) {
		t.Errorf("alice's stored grant %s still exists (%v)", grantFiles[0], err)
	}
	_, st := cnsStatus(t, g, "alice")
	if st["connected"] != false || st["needs_consent"] != true {
		t.Errorf("status after disconnect: %v", st)
	}
	n := len(g.api.authorizations())
	status, body, _ := cnsAPI(t, g, "/api/after", "alice")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "/oauth/et/connect?account=alice") {
		t.Errorf("alice after disconnect: %d %q, want 503 naming /oauth/et/connect?account=alice", status, body)
	}
	if len(g.api.authorizations()) != n {
		t.Error("a request for the disconnected account reached the API")
	}
	if status, body, _ := cnsAPI(t, g, "/api/bob", "bob"); status != 200 || !cnsConnected(t, g, "bob") {
		t.Errorf("bob after alice's disconnect: %d %q", status, body)
	}
}

// The status endpoint never shows a token: none that the provider issued
// (access, refresh, code) nor any the API received, whether the grant is
// fresh, refreshed or needs consent again.
func TestConsentStatusNeverContainsTokens(t *testing.T) {
	clock := useFakeClock(t)
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	var bodies []string
	st := func(account string) map[string]any {
		body, m := cnsStatus(t, g, account)
		bodies = append(bodies, body)
		return m
	}
	st("alice") // never connected
	cnsConnect(t, g, "alice")
	if m := st("alice"); m["connected"] != true || m["has_refresh_token"] != true {
		t.Fatalf("status after connect: %v", m)
	}
	cnsAPI(t, g, "/api/1", "alice")
	clock.add(3601 * time.Second)
	if status, body, _ := cnsAPI(t, g, "/api/2", "alice"); status != 200 || g.as.refreshes() != 1 {
		t.Fatalf("after expiry: %d %q, refreshes %d; want 200 through a refresh", status, body, g.as.refreshes())
	}
	st("alice")
	// The person revokes the app at the provider: the next refresh gets
	// invalid_grant and the grant needs consent.
	g.as.setRefreshTokensDead(true)
	clock.add(3601 * time.Second)
	cnsAPI(t, g, "/api/3", "alice")
	if m := st("alice"); m["needs_consent"] != true {
		t.Fatalf("status after invalid_grant: %v", m)
	}

	secrets := g.as.secrets()
	for _, a := range g.api.authorizations() {
		if tok, ok := strings.CutPrefix(a, "Bearer "); ok {
			secrets = append(secrets, tok)
		}
	}
	if len(secrets) < 5 { // 1 code, 2 access tokens, 2 refresh tokens
		t.Fatalf("only %d tokens to look for", len(secrets))
	}
	secrets = append(secrets, g.as.Secret)
	for _, b := range bodies {
		for _, s := range secrets {
			if strings.Contains(b, s) {
				t.Errorf("status %s contains a token or secret (%d characters, shown as <redacted>)", strings.ReplaceAll(b, s, "<redacted>"), len(s))
			}
		}
	}
}

// Requests under the consent handler's matcher that are not one of its
// four endpoints go to the next handler: the injector and the proxy.
func TestConsentUnknownPathsPassToNextHandler(t *testing.T) {
	g := newGrantSetup(t, "")
	browser, _ := cnsBrowser(g, false)
	paths := []string{"/oauth/et/other", "/oauth/et/connect/", "/oauth/et/connectx", "/oauth/et/status.json", "/oauth/et/", "/oauth/et/callback/x"}

	// Not connected yet: the injector answers, naming the connect path.
	for _, p := range paths {
		r := cnsDo(t, browser, http.MethodGet, g.c.url(p), nil)
		if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "consent_required") {
			t.Errorf("GET %s before consent: %d %q, want the injector's 503", p, r.status, r.body)
		}
	}
	cnsConnect(t, g, "default")
	for _, p := range paths {
		ok := g.api.answered(200)
		r := cnsDo(t, browser, http.MethodGet, g.c.url(p), nil)
		if r.status != 200 || r.body != "ok "+p || g.api.answered(200) != ok+1 {
			t.Errorf("GET %s: %d %q, want the API's answer", p, r.status, r.body)
		}
		if r.header.Get("X-Frame-Options") != "" || r.header.Get("Content-Security-Policy") != "" {
			t.Errorf("GET %s: the consent handler set its headers on a passed-on request", p)
		}
	}
}

// goneHandler is the test-only handler oab_gone <name>, ordered before
// the consent handler: it tells the test when the request's context ends
// (the client left), by closing the channel of that name.
type goneHandler struct {
	Name string `json:"name"`
}

var goneSignals sync.Map // name → chan struct{}

func goneSignal(name string) chan struct{} {
	v, _ := goneSignals.LoadOrStore(name, make(chan struct{}))
	return v.(chan struct{})
}

func (goneHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.oab_gone", New: func() caddy.Module { return new(goneHandler) }}
}

func (h *goneHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	go func() {
		<-r.Context().Done()
		ch := goneSignal(h.Name)
		select {
		case <-ch:
		default:
			close(ch)
		}
	}()
	return next.ServeHTTP(w, r)
}

func init() {
	caddy.RegisterModule(goneHandler{})
	httpcaddyfile.RegisterHandlerDirective("oab_gone", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		g := new(goneHandler)
		h.Next()
		if !h.AllArgs(&g.Name) {
			return nil, h.ArgErr()
		}
		return g, nil
	})
	httpcaddyfile.RegisterDirectiveOrder("oab_gone", httpcaddyfile.Before, "request_header")
}

// consentLeaveSetup is newGrantSetup with the requests to the provider's
// path hold held until release is called, and oab_gone in front of the
// consent handler.
func consentLeaveSetup(t *testing.T, hold, gone string) (g *grantSetup, release func()) {
	t.Helper()
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/et/callback"
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = redirect, true
	as.ScopeSep = ","
	api := newAPI(t, as)
	t.Setenv("CAS_SECRET", as.Secret)
	release = as.holdPath(hold)
	conf := grantConfig(as, redirect, "", api.hostport())
	conf = strings.Replace(conf, "\toauth_bearer_consent ", "\toab_gone "+gone+"\n\toauth_bearer_consent ", 1)
	g = &grantSetup{t: t, as: as, api: api, conf: conf}
	g.c = startCaddyAt(t, addr, conf)
	return g, release
}

// receive waits for a value from ch, or fails the test.
func receive(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10 s", what)
	}
}

// The browser leaves (the tab is closed, the connection drops) while the
// provider is slow to redeem the code: the code is redeemed and the grant
// stored all the same. A code is single-use, so an exchange cut short
// would be a consent lost.
func TestConsentCallbackCompletesWhenTheBrowserLeaves(t *testing.T) {
	g, release := consentLeaveSetup(t, "/oauth/token", t.Name())
	noFollow := g.browser()
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noFollow.Get(g.startConsent(noFollow, "default"))
	if err != nil || resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %v %v", err, resp)
	}
	resp.Body.Close()
	callback := resp.Header.Get("Location")

	ctx, leave := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, callback, nil)
	done := make(chan error, 1)
	go func() {
		resp, err := noFollow.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	g.as.waitArrived(t) // the code exchange reaching the provider
	leave()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the browser did not leave: %v", err)
	}
	receive(t, goneSignal(t.Name()), "Caddy seeing the browser leave")
	release()
	deadline := time.Now().Add(10 * time.Second)
	for !cnsConnected(t, g, "default") {
		if time.Now().After(deadline) {
			t.Fatalf("the account is not connected 10 s after the provider answered (exchanges aborted by Caddy: %d, code exchanges answered: %d)",
				g.as.aborted(), g.as.codeExchanges())
		}
		time.Sleep(20 * time.Millisecond) // polling the status endpoint
	}
	if g.as.codeExchanges() != 1 || g.as.aborted() != 0 {
		t.Errorf("code exchanges %d, aborted %d; want 1 and 0", g.as.codeExchanges(), g.as.aborted())
	}
	if status, body, _ := cnsAPI(t, g, "/api/after", ""); status != 200 {
		t.Errorf("proxied request: %d %q", status, body)
	}
}

// The same for a disconnect: once the button is pressed, the tokens are
// revoked at the provider and the grant deleted, whatever the browser does.
func TestConsentDisconnectCompletesWhenTheBrowserLeaves(t *testing.T) {
	g, release := consentLeaveSetup(t, "/oauth/revoke", t.Name())
	cnsConnect(t, g, "default")
	revocations := g.as.revocations()

	ctx, leave := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.c.url("/oauth/et/disconnect?account=default"), nil)
	done := make(chan error, 1)
	go func() {
		resp, err := g.browser().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	g.as.waitArrived(t) // the revocation reaching the provider
	leave()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the browser did not leave: %v", err)
	}
	receive(t, goneSignal(t.Name()), "Caddy seeing the browser leave")
	release()
	deadline := time.Now().Add(10 * time.Second)
	for cnsConnected(t, g, "default") {
		if time.Now().After(deadline) {
			t.Fatalf("the account is still connected 10 s after the provider answered (revocations aborted by Caddy: %d)", g.as.aborted())
		}
		time.Sleep(20 * time.Millisecond) // polling the status endpoint
	}
	if n := g.as.revocations() - revocations; n != 2 || g.as.aborted() != 0 {
		t.Errorf("revocations %d, aborted %d; want 2 (refresh and access token) and 0", n, g.as.aborted())
	}
	// The disconnect goes on after the deletion (the event log for the
	// other instances): the test's storage directory is removed only
	// after it has finished.
	waitFor(t, func() bool { return strings.Contains(g.c.logs(), `"msg":"account disconnected"`) })
}

// A page whose template fails is a 500 with a log line, never half a page
// with 200 (the old page() ignored the template's error).
func TestConsentPageTemplateFailureIsA500(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	h := &ConsentHandler{logger: zap.New(core), formAction: "https://auth.example.com", title: "Example"}
	pageTemplates["broken"] = template.Must(template.New("broken").Parse(`{{define "layout"}}<p>half a page {{.Nope}}</p>{{end}}`))
	t.Cleanup(func() { delete(pageTemplates, "broken") })
	w := httptest.NewRecorder()
	h.render(w, httptest.NewRequest(http.MethodGet, "/oauth/status", nil), http.StatusOK, "broken", &view{})
	if w.Code != http.StatusInternalServerError || strings.Contains(w.Body.String(), "half a page") {
		t.Errorf("a failing template: %d %q, want 500 without the half page", w.Code, w.Body.String())
	}
	if l := logs.FilterMessage("rendering a consent page failed").All(); len(l) != 1 || !strings.Contains(fmt.Sprint(l[0].ContextMap()["error"]), "Nope") {
		t.Errorf("log: %v", logs.All())
	}
	// Every real page renders, with an empty view and with a full one.
	now := &moment{ISO: "2026-01-02T03:04:05Z", Exact: "Fri 2 Jan 2026 03:04:05 UTC", Relative: "just now"}
	rows := []accountRow{{Account: "alice", Stored: true, Connected: true, HasRefreshToken: true, ConnectedAt: now, Expires: now, LastRefresh: now, Scopes: []string{"a", "b"}},
		{Account: "bob", Stored: true, Reason: "refused"}, {Account: "carol"}}
	full := view{Title: "T", User: "alice", Error: "e", Notice: "n", Message: "m", Success: true, More: []string{"x"},
		Links: []pageLink{{"/a", "A"}}, Bound: true, Account: "alice", Pattern: accountPattern, Hint: accountHint,
		ConnectAction: "/c", DisconnectAction: "/d", StatusURL: "/s", Row: &rows[0], Rows: rows, Revokes: true}
	for name := range pageTemplates {
		if name == "broken" {
			continue
		}
		for _, v := range []view{{}, full, func() view { f := full; f.Bound, f.Row = false, &rows[1]; return f }()} {
			w := httptest.NewRecorder()
			h.render(w, httptest.NewRequest(http.MethodGet, "/oauth/status", nil), http.StatusOK, name, &v)
			if w.Code != http.StatusOK {
				t.Errorf("page %s: %d %q", name, w.Code, w.Body.String())
			}
		}
	}
}
