package oauthbearer

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// The consent pages as a person uses them: a real browser (Chromium,
// browser_test.go), a real Caddy, and a real authorization server with
// login and consent pages (oidc-provider, oidc_test.go). Proxied requests
// go to the provider's userinfo endpoint, which answers whose token it is.

// People: their Caddy basic_auth passwords, and their logins at the
// provider.
var (
	caddyUsers = map[string]string{"alice": "alice-caddy-pw", "bob": "bob-caddy-pw", "admin": "admin-caddy-pw"}
	idpUsers   = map[string]string{"alice.idp": "alice-idp-pw", "bob.idp": "bob-idp-pw", "carol.idp": "carol-idp-pw"}
)

const oidcClientSecret = "caddy-app-secret-1"

// selfService is a Caddy with the consent pages under /oauth/ and a proxy
// under /api/ to the provider's userinfo endpoint, behind basic_auth.
type selfService struct {
	t    *testing.T
	c    *testCaddy
	op   *oidcProvider
	addr string
}

type selfServiceOpts struct {
	bound  bool   // account {http.auth.user.id} on both handlers (else operator mode: the injector takes X-Account)
	prompt string // the consent handler's prompt
	front  string // site-level lines before the handlers (request_header ...)
}

func newSelfService(t *testing.T, o selfServiceOpts) *selfService {
	t.Helper()
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/callback"
	op := startOIDCProvider(t, oidcConfig{
		Users:             idpUsers,
		IssueRefreshToken: true,
		Clients: []oidcClient{{ClientID: "caddy-app", ClientSecret: oidcClientSecret, ClientName: "Caddy test app",
			RedirectURIs: []string{redirect}, GrantTypes: []string{"authorization_code", "refresh_token"},
			ResponseTypes: []string{"code"}, TokenEndpointAuthMethod: "client_secret_basic"}},
	})
	t.Setenv("OAB_OIDC_SECRET", oidcClientSecret)
	var users strings.Builder
	for u, p := range caddyUsers {
		hash, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&users, "\t\t%s %s\n", u, hash)
	}
	consentExtra, injectAccount := "", "account {http.request.header.X-Account}"
	if o.bound {
		consentExtra, injectAccount = "account {http.auth.user.id}", "account {http.auth.user.id}"
	}
	if o.prompt != "" {
		consentExtra += "\n\t\tprompt " + o.prompt
	}
	site := fmt.Sprintf(`(test_client) {
	client_id     caddy-app
	client_secret {env.OAB_OIDC_SECRET}
	token_url     %[1]s/token
	revoke_url    %[1]s/token/revocation
}
http://LISTEN {
	basic_auth {
%[2]s	}
	%[3]s
	oauth_bearer_consent /oauth/* {
		import test_client
		authorize_url %[1]s/auth
		redirect_uri  %[4]s
		scope         openid offline_access
		display_name  "Test Provider"
		%[5]s
	}
	oauth_bearer /api/* {
		grant authorization_code
		import test_client
		%[6]s
	}
	handle /api/* {
		rewrite * /me
		reverse_proxy %[7]s {
			header_up Host {upstream_hostport}
		}
	}
}`, op.URL, users.String(), o.front, redirect, consentExtra, injectAccount, op.hostport())
	return &selfService{t: t, op: op, addr: addr, c: startCaddyAt(t, addr, site)}
}

func (s *selfService) url(p string) string { return "http://" + s.addr + p }

// browser is a person's browser, signed in to Caddy as user.
func (s *selfService) browser(user string, o browserOpts) *browser {
	o.user, o.pass = user, caddyUsers[user]
	return newBrowser(s.t, o)
}

// whoami sends a proxied request as user (for account, in operator mode)
// and returns the status and the provider's subject the token is for.
func (s *selfService) whoami(user, account string) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.url("/api/me"), nil)
	req.SetBasicAuth(user, caddyUsers[user])
	if account != "" {
		req.Header.Set("X-Account", account)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var me struct{ Sub string }
	json.Unmarshal(b, &me)
	if resp.StatusCode == 200 && me.Sub == "" {
		s.t.Fatalf("userinfo answered %q", b)
	}
	return resp.StatusCode, me.Sub
}

// statusJSON is GET status as an API client signed in as user.
func (s *selfService) statusJSON(user, account string) (int, map[string]any) {
	s.t.Helper()
	u := s.url("/oauth/status")
	if account != "" {
		u += "?account=" + url.QueryEscape(account)
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.SetBasicAuth(user, caddyUsers[user])
	resp, err := testClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, st
}

func (s *selfService) onProvider(loc string) bool { return strings.HasPrefix(loc, s.op.URL+"/") }
func (s *selfService) onCaddy(p string) func(string) bool {
	return func(loc string) bool { return strings.HasPrefix(loc, s.url(p)) }
}

// signIn completes the provider's pages: the login (when it asks), then
// the consent (when it asks), until the browser is back at the callback.
// It reports whether the provider asked for a login.
func (s *selfService) signIn(b *browser, login string) (askedLogin bool) {
	s.t.Helper()
	for s.onProvider(b.location()) {
		switch title := b.text("h1"); title {
		case "Sign in to the test provider":
			askedLogin = true
			b.typeInto("#login", login)
			b.typeInto("#password", idpUsers[login])
			b.submit("button[type=submit]", func(string) bool { return true })
		case "Allow access?":
			if got := b.text("#account"); got != login {
				s.t.Fatalf("the provider asks consent for %q, want %q", got, login)
			}
			b.submit("#allow", func(string) bool { return true })
		default:
			s.t.Fatalf("unexpected page at the provider: %q: %s", title, b.text("body"))
		}
	}
	return askedLogin
}

// logLines returns Caddy's log lines with message msg, parsed.
func (s *selfService) logLines(msg string) []map[string]any {
	return logLinesOf(s.c, msg)
}

func logLinesOf(c *testCaddy, msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(c.logs()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestBrowserSelfServiceConnect: two people connect their own accounts
// with account {http.auth.user.id}: each starts from the accounts page,
// signs in and consents at the provider, lands on the success page (which
// a reload does not turn into an error), sees only their own account, and
// their proxied requests carry their own token.
func TestBrowserSelfServiceConnect(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{bound: true, prompt: "login"})

	for _, p := range []struct{ user, login string }{{"alice", "alice.idp"}, {"bob", "bob.idp"}} {
		b := s.browser(p.user, browserOpts{})
		if st := b.open(s.url("/oauth/status")); st != 200 {
			t.Fatalf("%s: accounts page: %d %s", p.user, st, b.text("body"))
		}
		if h1 := b.text("h1"); h1 != "Your Test Provider account" {
			t.Errorf("%s: accounts page title %q", p.user, h1)
		}
		if txt := b.text("tbody"); !strings.Contains(txt, p.user) || !strings.Contains(txt, "Not connected") {
			t.Errorf("%s: the accounts page shows %q", p.user, txt)
		}
		// Connect, from the page's button, to the provider and back.
		if st := b.submit("td.actions button", s.onProvider); st != 200 {
			t.Fatalf("%s: the provider's page: %d", p.user, st)
		}
		if !s.signIn(b, p.login) {
			t.Errorf("%s: the provider did not ask for a login (prompt login)", p.user)
		}
		b.waitAt(0, s.onCaddy("/oauth/callback"))
		if st := b.status(); st != 200 || b.text("h1") != "Connected" || !b.has(p.user+" is connected to Test Provider.") {
			t.Fatalf("%s: success page: %d %q", p.user, st, b.text("body"))
		}
		// Reloading the success page (its URL holds code and state)
		// says the account is connected, and redeems nothing.
		exchanges := s.op.events(t).Counts["grant.success"]
		if st := b.reload(); st != 200 || b.text("h1") != "Connected" || !b.has(p.user+" is connected to Test Provider (since ") {
			t.Errorf("%s: reloaded success page: %d %q", p.user, st, b.text("body"))
		}
		if n := s.op.events(t).Counts["grant.success"]; n != exchanges {
			t.Errorf("%s: the reload redeemed a code (%d token grants, was %d)", p.user, n, exchanges)
		}
		// The success page leads back to the accounts page.
		if st := b.submit("nav a", s.onCaddy("/oauth/status")); st != 200 {
			t.Fatalf("%s: back to the accounts page: %d", p.user, st)
		}
		row := b.text("tbody")
		for _, want := range []string{p.user, "Connected", "expires in 59 min", "openid"} {
			if !strings.Contains(row, want) {
				t.Errorf("%s: the accounts page lacks %q: %q", p.user, want, row)
			}
		}
		title := eval[string](b, `document.querySelector('td[data-label="Access token"] time').title`)
		if !strings.HasSuffix(title, " UTC") {
			t.Errorf("%s: the expiry's title %q is not the exact time", p.user, title)
		}
		if p.user == "bob" && strings.Contains(b.text("body"), "alice") {
			t.Errorf("bob's accounts page shows alice: %q", b.text("body"))
		}
		if status, sub := s.whoami(p.user, ""); status != 200 || sub != p.login {
			t.Errorf("%s's proxied request: %d for %q, want the token of %s", p.user, status, sub, p.login)
		}
	}
	if status, sub := s.whoami("alice", ""); status != 200 || sub != "alice.idp" {
		t.Errorf("alice's proxied request after bob connected: %d for %q", status, sub)
	}
	// The JSON status is the signed-in person's (fields unchanged).
	if status, st := s.statusJSON("bob", ""); status != 200 || st["account"] != "bob" || st["connected"] != true || st["has_refresh_token"] != true {
		t.Errorf("bob's JSON status: %d %v", status, st)
	}
}

// With account set, a page or form that names another account is refused
// with 403 and a warn log line (who, from where); nothing is started,
// changed or shown of the other account.
func TestBrowserOtherAccountIsRefused(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{bound: true, prompt: "login"})
	for _, p := range []struct{ user, login string }{{"alice", "alice.idp"}, {"bob", "bob.idp"}} {
		b := s.browser(p.user, browserOpts{})
		b.open(s.url("/oauth/connect"))
		b.submit("form button", s.onProvider)
		s.signIn(b, p.login)
		b.waitAt(0, s.onCaddy("/oauth/callback"))
	}
	bob := s.browser("bob", browserOpts{})
	before := s.op.events(t)
	for _, p := range []string{"/oauth/connect?account=alice", "/oauth/status?account=alice", "/oauth/disconnect?account=alice"} {
		if st := bob.open(s.url(p)); st != 403 || !bob.has("You are signed in as bob") {
			t.Errorf("bob opens %s: %d %q, want 403", p, st, bob.text("body"))
		}
	}
	// bob edits his own pages' forms to name alice.
	bob.open(s.url("/oauth/connect"))
	eval[any](bob, `document.querySelector('input[name=account]').value = 'alice'`)
	if st := bob.submit("form button", s.onCaddy("/oauth/connect")); st != 403 {
		t.Errorf("bob's connect form naming alice: %d %q, want 403", st, bob.text("body"))
	}
	bob.open(s.url("/oauth/disconnect"))
	eval[any](bob, `document.querySelector('input[name=account]').value = 'alice'`)
	if st := bob.submit("form button", s.onCaddy("/oauth/disconnect")); st != 403 {
		t.Errorf("bob's disconnect form naming alice: %d %q, want 403", st, bob.text("body"))
	}
	if status, _ := s.statusJSON("bob", "alice"); status != 403 {
		t.Errorf("bob's JSON status of alice: %d, want 403", status)
	}
	if status, sub := s.whoami("alice", ""); status != 200 || sub != "alice.idp" {
		t.Errorf("alice after bob's attempts: %d %q", status, sub)
	}
	if after := s.op.events(t); after.Counts["interaction.started"] != before.Counts["interaction.started"] {
		t.Errorf("a refused request started a flow at the provider (%d interactions, was %d)", after.Counts["interaction.started"], before.Counts["interaction.started"])
	}
	lines := s.logLines("consent request refused")
	if len(lines) != 6 {
		t.Errorf("%d warn lines for 6 refusals", len(lines))
	}
	for _, l := range lines {
		if l["level"] != "warn" || l["reason"] != "another account" || l["user"] != "bob" || l["account"] != "alice" ||
			!strings.HasPrefix(fmt.Sprint(l["remote_addr"]), "127.0.0.1:") {
			t.Errorf("log line %v", l)
		}
		if l["method"] == "POST" && l["origin"] != s.url("") {
			t.Errorf("a refused POST logged without its origin: %v", l)
		}
	}
}

// Disconnect asks first (a page, not a script), then comes back to the
// accounts page saying so; the grant is revoked at the provider and the
// proxy stops sending it. An account with no grant answers 404.
func TestBrowserDisconnectAsksFirst(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{bound: true})
	b := s.browser("alice", browserOpts{})
	b.open(s.url("/oauth/connect"))
	b.submit("form button", s.onProvider)
	s.signIn(b, "alice.idp")
	b.waitAt(0, s.onCaddy("/oauth/callback"))

	b.open(s.url("/oauth/status"))
	name := eval[string](b, `document.querySelector('td.actions a').textContent`)
	if name != "Disconnect alice" {
		t.Errorf("the Disconnect link's name is %q", name)
	}
	if st := b.submit("td.actions a", s.onCaddy("/oauth/disconnect")); st != 200 || b.text("h1") != "Disconnect alice?" {
		t.Fatalf("confirmation page: %d %q", st, b.text("body"))
	}
	// Cancel: back, still connected.
	b.submit("a.button", s.onCaddy("/oauth/status"))
	if status, _ := s.whoami("alice", ""); status != 200 {
		t.Fatalf("alice after cancel: %d", status)
	}
	b.submit("td.actions a", s.onCaddy("/oauth/disconnect"))
	revoked := s.op.events(t).Counts["grant.revoked"]
	if st := b.submit("button.danger", s.onCaddy("/oauth/status")); st != 200 || !b.has("alice disconnected.") {
		t.Fatalf("after disconnecting: %d %q", st, b.text("body"))
	}
	if !strings.Contains(b.text("tbody"), "Not connected") {
		t.Errorf("the accounts page after the disconnect: %q", b.text("tbody"))
	}
	if n := s.op.events(t).Counts["grant.revoked"]; n <= revoked {
		t.Errorf("the grant was not revoked at the provider (grant.revoked %d, was %d)", n, revoked)
	}
	if status, _ := s.whoami("alice", ""); status != 503 {
		t.Errorf("alice's proxied request after the disconnect: %d, want 503", status)
	}
	// A reload does not post again.
	if st := b.reload(); st != 200 {
		t.Errorf("reloading the accounts page: %d", st)
	}
	if st := b.open(s.url("/oauth/disconnect")); st != 404 || !b.has("alice is not connected") {
		t.Errorf("disconnect page of an account with no grant: %d %q", st, b.text("body"))
	}
	// And the way back: connect again.
	if st := b.submit("nav a", s.onCaddy("/oauth/connect")); st != 200 || b.text("h1") != "Connect to Test Provider" {
		t.Errorf("the 404 page's first link: %d %q", st, b.text("h1"))
	}
}

// An error at the provider (the person denies access) comes back on a page
// that says so and starts again with the same account.
func TestBrowserDenyAtTheProviderStartsAgain(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{})
	b := s.browser("admin", browserOpts{})
	b.open(s.url("/oauth/connect?account=sales"))
	if v := b.text("body"); !strings.Contains(v, "Account name") {
		t.Fatalf("connect page: %q", v)
	}
	b.submit("form button", s.onProvider)
	b.typeInto("#login", "carol.idp")
	b.typeInto("#password", idpUsers["carol.idp"])
	b.submit("button[type=submit]", func(string) bool { return true })
	if st := b.submit("#deny", s.onCaddy("/oauth/callback")); st != 400 || !b.has("access_denied") || !b.has("Nothing was stored") {
		t.Fatalf("after denying: %d %q", st, b.text("body"))
	}
	if st := b.submit("nav a", s.onCaddy("/oauth/connect")); st != 200 {
		t.Fatalf("start again: %d", st)
	}
	v := eval[string](b, `document.querySelector('#account').value`)
	if v != "sales" || !strings.Contains(b.location(), "account=sales") {
		t.Errorf("start again leads to %s with account %q, want sales", b.location(), v)
	}
}

// Connecting a second account in the same browser: with prompt login the
// provider asks who signs in, so the second account gets its own login;
// without it, the provider silently reuses the session of the first.
func TestBrowserSecondAccountWithPromptLogin(t *testing.T) {
	for _, prompt := range []string{"login", ""} {
		t.Run("prompt="+prompt, func(t *testing.T) {
			s := newSelfService(t, selfServiceOpts{prompt: prompt})
			b := s.browser("admin", browserOpts{})
			b.open(s.url("/oauth/connect?account=work"))
			b.submit("form button", s.onProvider)
			s.signIn(b, "alice.idp")
			b.waitAt(0, s.onCaddy("/oauth/callback"))
			// From the success page: connect another account.
			if st := b.submit(`nav a[href="/oauth/connect"]`, s.onCaddy("/oauth/connect")); st != 200 {
				t.Fatalf("connect another: %d", st)
			}
			b.typeInto("#account", "personal")
			b.submit("form button", func(loc string) bool { return s.onProvider(loc) || s.onCaddy("/oauth/callback")(loc) })
			asked := s.signIn(b, "bob.idp")
			b.waitAt(0, s.onCaddy("/oauth/callback"))
			_, work := s.whoami("admin", "work")
			_, personal := s.whoami("admin", "personal")
			if prompt == "login" {
				if !asked || work != "alice.idp" || personal != "bob.idp" {
					t.Errorf("with prompt login: asked %v; work is %q, personal %q; want alice.idp and bob.idp", asked, work, personal)
				}
			} else if asked || personal != "alice.idp" {
				// Without it (what the prompt is for): no question, and
				// the second account is the first person's.
				t.Errorf("without prompt: asked %v, personal is %q", asked, personal)
			}
		})
	}
}

// A page on another origin that submits forms to connect and disconnect by
// itself, in a browser signed in to Caddy: refused (403, logged with the
// origin), nothing started or deleted. Another port of 127.0.0.1 (same
// site, another origin) and localhost (another site).
func TestBrowserCrossSiteFormsAreRefused(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{})
	b := s.browser("admin", browserOpts{})
	b.open(s.url("/oauth/connect?account=alice"))
	b.submit("form button", s.onProvider)
	s.signIn(b, "alice.idp")
	b.waitAt(0, s.onCaddy("/oauth/callback"))

	evil := newAttackerSite(t, s.url(""))
	before := s.op.events(t)
	for _, origin := range []string{evil.URL, strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)} {
		for _, attack := range []string{"/connect", "/disconnect"} {
			n := b.navigate(origin + attack)
			if st := b.waitAt(n+1, s.onCaddy("/oauth/")); st != 403 || !b.has("came from another site") {
				t.Errorf("%s%s: %d %q, want 403", origin, attack, st, b.text("body"))
			}
		}
	}
	if status, sub := s.whoami("admin", "alice"); status != 200 || sub != "alice.idp" {
		t.Errorf("alice after the attacks: %d %q", status, sub)
	}
	if status, st := s.statusJSON("admin", "mallory"); status != 200 || st["connected"] != false {
		t.Errorf("mallory: %d %v", status, st)
	}
	if after := s.op.events(t); after.Counts["interaction.started"] != before.Counts["interaction.started"] {
		t.Errorf("an attack started a flow at the provider")
	}
	lines := s.logLines("consent request refused")
	if len(lines) != 4 {
		t.Fatalf("%d warn lines for 4 refusals: %v", len(lines), lines)
	}
	for i, l := range lines {
		wantOrigin := evil.URL
		if i >= 2 {
			wantOrigin = strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
		}
		if l["level"] != "warn" || l["reason"] != "cross-site request" || l["origin"] != wantOrigin ||
			!strings.HasPrefix(fmt.Sprint(l["remote_addr"]), "127.0.0.1:") || l["sec_fetch_site"] == "" {
			t.Errorf("log line %d: %v", i, l)
		}
	}
}

// attackerSite serves pages that submit forms to target's consent
// endpoints by themselves, and pages that frame them.
func newAttackerSite(t *testing.T, target string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		form := func(action, account string) {
			fmt.Fprintf(w, `<!doctype html><html lang="en"><title>Win a prize</title>
<form method="post" action="%s/oauth/%s"><input type="hidden" name="account" value="%s"></form>
<script>document.forms[0].submit()</script></html>`, target, action, account)
		}
		switch r.URL.Path {
		case "/connect":
			form("connect", "mallory")
		case "/disconnect":
			form("disconnect", "alice")
		case "/frame":
			fmt.Fprintf(w, `<!doctype html><html lang="en"><title>Framed</title>
<iframe id="status" src="%[1]s/oauth/status"></iframe>
<iframe id="connect" src="%[1]s/oauth/connect?account=alice"></iframe>
<iframe id="disconnect" src="%[1]s/oauth/disconnect?account=alice"></iframe></html>`, target)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// The pages cannot be framed by another origin (clickjacking the buttons).
func TestBrowserPagesCannotBeFramed(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{})
	b := s.browser("admin", browserOpts{})
	evil := newAttackerSite(t, s.url(""))
	b.open(evil.URL + "/frame")
	frames := b.frames()
	if len(frames) != 4 {
		t.Fatalf("%d frames, want the page and 3 iframes", len(frames))
	}
	for _, f := range frames[1:] {
		if f.URL != "chrome-error://chromewebdata/" || !strings.HasPrefix(f.UnreachableURL, s.url("/oauth/")) {
			t.Errorf("a frame of %s loaded %q (unreachable %q): not blocked", f.UnreachableURL, f.URL, f.UnreachableURL)
		}
	}
}

// Behind a proxy that strips Fetch Metadata (Sec-Fetch-*), or in a browser
// without it, the pages' own buttons still work (Referrer-Policy
// same-origin keeps their Origin), and another site's forms are still
// refused (by their Origin).
func TestBrowserWithoutFetchMetadata(t *testing.T) {
	s := newSelfService(t, selfServiceOpts{bound: true, front: "request_header -Sec-Fetch-*"})
	b := s.browser("alice", browserOpts{})
	b.open(s.url("/oauth/status"))
	if st := b.submit("td.actions button", func(string) bool { return true }); st != 200 || !s.onProvider(b.location()) {
		t.Fatalf("the Connect button without Fetch Metadata: %d at %s: %q", st, b.location(), b.text("body"))
	}
	s.signIn(b, "alice.idp")
	b.waitAt(0, s.onCaddy("/oauth/callback"))
	if b.text("h1") != "Connected" {
		t.Fatalf("success page: %q", b.text("body"))
	}
	b.open(s.url("/oauth/status"))
	b.submit("td.actions a", s.onCaddy("/oauth/disconnect"))
	if st := b.submit("button.danger", s.onCaddy("/oauth/status")); st != 200 || !b.has("alice disconnected.") {
		t.Fatalf("the Disconnect button without Fetch Metadata: %d %q", st, b.text("body"))
	}
	// Another site's form: refused by its Origin, and the log shows that
	// no Sec-Fetch-Site reached the handler.
	evil := newAttackerSite(t, s.url(""))
	n := b.navigate(evil.URL + "/connect")
	if st := b.waitAt(n+1, s.onCaddy("/oauth/")); st != 403 {
		t.Errorf("another site's form without Fetch Metadata: %d %q", st, b.text("body"))
	}
	lines := s.logLines("consent request refused")
	if len(lines) != 1 || lines[0]["origin"] != evil.URL || lines[0]["sec_fetch_site"] != "" {
		t.Errorf("log lines: %v", lines)
	}
}
