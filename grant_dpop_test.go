package oauthbearer

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// DPoP for the authorization_code grant through a real Caddy: the consent
// handler connects an account at npm's oidc-provider (DPoP with nonces
// required, PAR on, short-lived access tokens) through PAR, the injector
// sends the account's requests to the verifying resource server
// (dpop_rs_test.go: signature, htm, htu, iat, jti, ath, cnf.jkt through
// introspection, nonces), a refresh keeps the tokens bound to the grant's
// key, and a second Caddy process on the same storage signs with it too.

// grantDPoPSite is a site whose consent handler (under /oauth/) and
// injector (under /api/, account alice) share one snippet with the client
// and dpop lines: the way the docs recommend. injectorDPoP is the
// injector's own dpop line ("" for none: the mismatch case).
func grantDPoPSite(op *oidcProvider, rs *dpopResourceServer, redirect, consentExtra, injectorDPoP string) string {
	return grantDPoPSiteTo(op, rs.URL, redirect, consentExtra, injectorDPoP, rs.URL)
}

// grantDPoPSiteTo is grantDPoPSite with the consent handler's lines
// consentDPoP ("import api_dpop", or "" for none) and another upstream.
func grantDPoPSiteTo(op *oidcProvider, base, redirect, consentExtra, injectorDPoP, upstream string) string {
	consentDPoP := "import api_dpop"
	if strings.Contains(consentExtra, "no_dpop") {
		consentDPoP, consentExtra = "", strings.ReplaceAll(consentExtra, "no_dpop", "")
	}
	return fmt.Sprintf(`(api_client) {
	issuer        %s
	client_id     web
	client_secret web-secret
	client_auth   basic
}
(api_dpop) {
	dpop %s
}
http://LISTEN {
	oauth_bearer_consent /oauth/* {
		import api_client
		%s
		redirect_uri  %s
		scope         openid offline_access
		prompt        consent
		par           on
		%s
	}
	route /api/* {
		oauth_bearer {
			import api_client
			%s
			grant          authorization_code
			account        alice
			refresh_before 2s
		}
		reverse_proxy %s
	}
	respond "not here" 404
}
`, op.URL, base, consentDPoP, redirect, consentExtra, injectorDPoP, strings.TrimPrefix(upstream, "http://"))
}

// grantDPoPOIDC is dpopOIDCConfig with access tokens that live 6 s, so
// that the grant is refreshed within the test.
func grantDPoPOIDC(redirect string) oidcConfig {
	cfg := dpopOIDCConfig(redirect)
	cfg.Configuration["ttl"] = map[string]any{"AccessToken": 6}
	return cfg
}

// grantDPoPStatus is the consent status endpoint's answer for account.
func grantDPoPStatus(t *testing.T, base, account string) map[string]any {
	t.Helper()
	resp, err := testClient.Get(base + "/oauth/status?account=" + url.QueryEscape(account))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// apiGet sends a GET through Caddy with a client's own (forged) DPoP header
// and Authorization, which must never reach the upstream.
func apiGet(t *testing.T, u string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("DPoP", "a.client.proof")
	req.Header.Set("Authorization", "Bearer client-token")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// acceptedATHs are the distinct ath claims of the resource server's
// accepted proofs: one per access token used.
func acceptedATHs(rs *dpopResourceServer) map[string]bool {
	out := map[string]bool{}
	for _, p := range rs.acceptedProofs() {
		out[fmt.Sprint(p["ath"])] = true
	}
	return out
}

func TestDPoPGrantThroughConsentWithPAR(t *testing.T) {
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/callback"
	op := startOIDCProvider(t, grantDPoPOIDC(redirect))
	rs := dpopRS(t, op, 0)
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "shared"))
	site := grantDPoPSite(op, rs, redirect, "", "import api_dpop")
	c := startCaddyOpts(t, &testCaddy{addr: addr, admin: freeAddr(t), storage: storage}, site)

	// Connect alice through the consent flow: the request is pushed (par
	// on), the provider's pages are driven over HTTP, the callback
	// exchanges the code with a proof of the grant's key.
	s := &parSite{t: t, c: c, op: op, addr: addr, redirect: redirect}
	s.client = parClient()
	loc, status, page := s.flow("alice")
	if status != http.StatusOK || !strings.Contains(page, "Connected") {
		t.Fatalf("callback answered %d: %s\n%s", status, page, c.logs())
	}
	if keys := queryKeys(loc); strings.Join(keys, " ") != "client_id request_uri" {
		t.Errorf("the browser was sent with %v, want client_id and request_uri alone (pushed)", keys)
	}
	st := grantDPoPStatus(t, c.url(""), "alice")
	d, _ := st["dpop"].(map[string]any)
	jkt, _ := d["jkt"].(string)
	if st["connected"] != true || jkt == "" || d["bound"] != true {
		t.Fatalf("status after connect: %v, want connected with a bound DPoP key", st)
	}

	// Requests through the injector: every one accepted by the resource
	// server, signed with the grant's key (the token's cnf.jkt, checked
	// through introspection); only nonce challenges refused.
	for i := range 6 {
		if status, body := apiGet(t, c.url(fmt.Sprintf("/api/items/%d?q=x", i))); status != http.StatusOK {
			_, refused := rs.counts()
			t.Fatalf("request %d: %d %s (resource server refused %v)\n%s", i, status, body, refused, c.logs())
		}
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[jkt] != 6 {
		t.Errorf("proofs signed with %v, want the grant's key %s for all 6", keys, jkt)
	}

	// The access token lives 6 s: the grant is refreshed (with a proof of
	// the same key: the new token is bound to it, or introspection's
	// cnf.jkt would not match and the resource server would refuse it).
	before := op.events(t).Counts["grant.success"]
	waitForLong(t, 30*time.Second, func() bool {
		status, body := apiGet(t, c.url("/api/after-refresh"))
		if status != http.StatusOK {
			t.Fatalf("during the refresh: %d %s\n%s", status, body, c.logs())
		}
		return len(acceptedATHs(rs)) >= 2
	})
	if after := op.events(t).Counts["grant.success"]; after <= before {
		t.Errorf("oidc-provider answered %d token requests, want a refresh after the %d before", after, before)
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[jkt] == 0 {
		t.Errorf("after the refresh, proofs signed with %v, want the grant's key %s alone", keys, jkt)
	}
	if st := grantDPoPStatus(t, c.url(""), "alice"); st["last_refresh"] == st["connected_at"] || st["dpop"].(map[string]any)["jkt"] != jkt {
		t.Errorf("status after the refresh: %v, want a later refresh and the same key %s", st, jkt)
	}

	// A second Caddy process on the same storage serves alice's requests
	// with the same key.
	child := startChildCaddy(t, storage, grantDPoPSite(op, rs, redirect, "", "import api_dpop"))
	for i := range 4 {
		if status, body := apiGet(t, child.url(fmt.Sprintf("/api/child/%d", i))); status != http.StatusOK {
			_, refused := rs.counts()
			t.Fatalf("child request %d: %d %s (resource server refused %v)\n%s", i, status, body, refused, child.logs())
		}
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[jkt] == 0 {
		t.Errorf("with the second process, proofs signed with %v, want the grant's key %s alone", keys, jkt)
	}
	_, refused := rs.counts()
	for reason, n := range refused {
		if reason != rsNonce {
			t.Errorf("the resource server refused %d requests for %s; only nonce challenges are expected", n, reason)
		}
	}

	// Connecting alice again replaces the grant, and its key with the new
	// grant's: the requests are signed with the new key from then on.
	if _, status, page := s.flow("alice"); status != http.StatusOK {
		t.Fatalf("reconnect: %d %s", status, page)
	}
	st2 := grantDPoPStatus(t, c.url(""), "alice")
	jkt2, _ := st2["dpop"].(map[string]any)["jkt"].(string)
	if jkt2 == "" || jkt2 == jkt {
		t.Fatalf("after reconnecting, the grant's key is %q, want a new one (was %s)", jkt2, jkt)
	}
	if status, body := apiGet(t, c.url("/api/reconnected")); status != http.StatusOK {
		t.Fatalf("after reconnecting: %d %s\n%s", status, body, c.logs())
	}
	if keys := proofKeys(t, rs); len(keys) != 2 || keys[jkt2] == 0 {
		t.Errorf("after reconnecting, proofs signed with %v, want the new key %s too", keys, jkt2)
	}

	// The admin API's accounts list shows the grant's thumbprint, never
	// its key; neither do the logs, the adapted JSON or the pages.
	sources, _ := adminSources(t, c)
	gs := findSource(t, sources, "grant")
	_, accBody := adminDo(t, c, http.MethodGet, fmt.Sprintf("/oauth_bearer/sources/%s/accounts", gs["id"]))
	if !strings.Contains(accBody, jkt2) {
		t.Errorf("the admin API's accounts list does not show the grant's jkt %s:\n%s", jkt2, accBody)
	}
	der := storedGrantKey(t, c, "alice")
	b64 := base64.StdEncoding.EncodeToString(der)
	b64url := base64.RawURLEncoding.EncodeToString(der)
	adapted, err := c.adapt(site)
	if err != nil {
		t.Fatal(err)
	}
	for where, text := range map[string]string{"the storage": storedFiles(t, storage), "Caddy's logs": c.logs(), "the child's logs": child.logs(), "admin API": accBody,
		"adapted JSON": string(adapted), "status": fmt.Sprint(st), "connect page": page} {
		for _, secret := range []string{b64[20:60], b64url[20:60], "PRIVATE KEY"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s hold the grant's key material %q", where, secret)
			}
		}
	}
}

// storedGrantKey is the DPoP key kept in account's grant record, read
// through the handler's own grant (the record is encrypted).
func storedGrantKey(t *testing.T, c *testCaddy, account string) []byte {
	t.Helper()
	var der []byte
	pool.Range(func(_, v any) bool {
		if g, ok := v.(*grant); ok {
			if rec, err := g.records.stored(t.Context(), account); err == nil && rec != nil && len(rec.DPoPKey) > 0 {
				der = rec.DPoPKey
				return false
			}
		}
		return true
	})
	if len(der) == 0 {
		t.Fatalf("no DPoP key is kept in %s's grant record", account)
	}
	return der
}

// parClient is a browser's client for parSite: a cookie jar, redirects
// not followed.
func parClient() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// waitForLong is waitFor with a longer deadline, for what takes a token's
// lifetime.
func waitForLong(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newGrantDPoPSite starts oidc-provider (grantDPoPOIDC) and a Caddy with
// the site make returns for it and its callback URL.
func newGrantDPoPSite(t *testing.T, make func(op *oidcProvider, redirect string) string) (*parSite, *testCaddy) {
	t.Helper()
	addr := freeAddr(t)
	redirect := "http://" + addr + "/oauth/callback"
	op := startOIDCProvider(t, grantDPoPOIDC(redirect))
	c := startCaddyOpts(t, &testCaddy{addr: addr, admin: freeAddr(t)}, make(op, redirect))
	s := &parSite{t: t, c: c, op: op, addr: addr, redirect: redirect, client: parClient()}
	return s, c
}

// The grant's key is known at connect: its thumbprint goes in the pushed
// authorization request as dpop_jkt (RFC 9449 §10), so the code is bound
// to it. A code taken from the redirect (here by the test itself) cannot
// be redeemed with another key: oidc-provider refuses it. Without
// dpop_jkt it would be redeemed.
func TestDPoPGrantCodeBoundByDPoPJKT(t *testing.T) {
	rs := newDPoPResourceServer(t, dpopRSConfig{})
	s, c := newGrantDPoPSite(t, func(op *oidcProvider, redirect string) string {
		return grantDPoPSite(op, rs, redirect, "pkce off", "import api_dpop")
	})
	resp, body := s.connect("alice")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("connect answered %d: %s\n%s", resp.StatusCode, body, c.logs())
	}
	cb := oidcAuthorize(t, resp.Header.Get("Location"), s.redirect, false)
	if cb.Get("code") == "" {
		t.Fatalf("callback %v", cb)
	}
	other, _ := oauthclient.GenerateDPoPKey()
	var nonces oauthclient.Nonces
	statuses, tok := dpopTokenRequest(t, other, &nonces, s.op.tokenURL(), basicClientAuth("web", "web-secret"), url.Values{
		"grant_type": {"authorization_code"}, "code": {cb.Get("code")}, "redirect_uri": {s.redirect},
	})
	// oidc-provider answers a bare invalid_grant; its log shows where:
	// issueTokens, whose only refusals are about dpop_jkt (a proof missing, or of another key)
	// (lib/helpers/grant_common.js, oidc-provider 9.13.3).
	if tok["error"] != "invalid_grant" || !strings.Contains(s.op.output(), "InvalidGrant: invalid_grant\n    at issueTokens") {
		t.Errorf("the code redeemed with another key answered %v: %v, want invalid_grant (the code is bound by dpop_jkt)\n%s", statuses, tok, s.op.output())
	}
}

// A consent handler with dpop and an injector without it disagree: the
// load says so at warn, and a request whose grant is bound is refused
// (502, dpop_not_configured, logged once) rather than sent as Bearer.
func TestDPoPGrantInjectorWithoutDPoPRefuses(t *testing.T) {
	rs := newDPoPResourceServer(t, dpopRSConfig{})
	s, c := newGrantDPoPSite(t, func(op *oidcProvider, redirect string) string {
		return grantDPoPSite(op, rs, redirect, "", "")
	})
	if _, status, page := s.flow("alice"); status != http.StatusOK {
		t.Fatalf("callback answered %d: %s", status, page)
	}
	for range 2 {
		status, body := apiGet(t, c.url("/api/x"))
		if status != http.StatusBadGateway || !strings.Contains(body, codeDPoPNotConfigured) {
			t.Errorf("request with a bound grant through an injector without dpop: %d %s, want 502 %s", status, body, codeDPoPNotConfigured)
		}
	}
	if n, _ := rs.counts(); n != 0 {
		t.Errorf("the resource server accepted %d requests; none should have been forwarded", n)
	}
	logs := c.logs()
	if !strings.Contains(logs, "handlers of one grant disagree about DPoP") {
		t.Errorf("no warning at load about the disagreement:\n%s", logs)
	}
	if n := strings.Count(logs, "a DPoP-bound grant reached an oauth_bearer without dpop"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once", n)
	}
}

// A grant connected without DPoP (a consent handler without dpop, or a
// record written before this change) keeps working through an injector
// with dpop: its token is sent as Bearer, without a proof, and a warning
// says to connect again.
func TestDPoPGrantWithoutKeyStaysBearer(t *testing.T) {
	var mu sync.Mutex
	var got []http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Clone())
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(up.Close)
	s, c := newGrantDPoPSite(t, func(op *oidcProvider, redirect string) string {
		return grantDPoPSiteTo(op, "https://api.example/v1", redirect, "no_dpop", "import api_dpop", up.URL)
	})
	if _, status, page := s.flow("alice"); status != http.StatusOK {
		t.Fatalf("callback answered %d: %s", status, page)
	}
	if st := grantDPoPStatus(t, c.url(""), "alice"); st["dpop"] != nil {
		t.Errorf("status of a grant connected without dpop: %v, want no dpop", st)
	}
	for range 2 {
		if status, body := apiGet(t, c.url("/api/x")); status != http.StatusOK {
			t.Fatalf("%d %s\n%s", status, body, c.logs())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range got {
		if a := h.Get("Authorization"); !strings.HasPrefix(a, "Bearer ") || a == "Bearer client-token" || len(h.Values("DPoP")) != 0 {
			t.Errorf("upstream got Authorization %q and DPoP %q, want the grant's Bearer token and no proof", a, h.Values("DPoP"))
		}
	}
	if n := strings.Count(c.logs(), "a grant was connected without DPoP"); n != 1 {
		t.Errorf("the warning was logged %d times, want once", n)
	}
	if n := strings.Count(c.logs(), "handlers of one grant disagree about DPoP"); n != 1 {
		t.Errorf("the disagreement was logged %d times at load, want once", n)
	}

	// A reload that gives the consent handler dpop too: the handlers
	// agree (the replaced configuration's do not count), and the grant
	// connected without a key is still sent as Bearer.
	mu.Unlock()
	if err := c.load(grantDPoPSiteTo(s.op, "https://api.example/v1", s.redirect, "", "import api_dpop", up.URL)); err != nil {
		t.Fatal(err)
	}
	if status, body := apiGet(t, c.url("/api/after-reload")); status != http.StatusOK {
		t.Fatalf("after the reload: %d %s", status, body)
	}
	mu.Lock()
	if a := got[len(got)-1].Get("Authorization"); !strings.HasPrefix(a, "Bearer ") || a == "Bearer client-token" {
		t.Errorf("after the reload the upstream got Authorization %q, want the grant's Bearer token", a)
	}
	if n := strings.Count(c.logs(), "handlers of one grant disagree about DPoP"); n != 1 {
		t.Errorf("after a reload to agreeing handlers, the disagreement was logged %d times in all, want still once", n)
	}
}

// storedFiles is everything a file_system storage holds, concatenated.
func storedFiles(t *testing.T, storage string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(strings.TrimPrefix(storage, "file_system "), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			data, _ := os.ReadFile(p)
			b.Write(data)
		}
		return nil
	})
	if b.Len() == 0 {
		t.Fatalf("nothing is stored in %s", storage)
	}
	return b.String()
}

// With dpop_key (in the shared snippet), the grant is bound to that key:
// the record keeps its thumbprint only, never the key, and the injector
// signs with it.
func TestDPoPGrantWithDPoPKey(t *testing.T) {
	key := dpopTestKey(t, "ES256")
	der, err := key.MarshalPKCS8()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("OAB_GRANT_DPOP_KEY", strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "\n", `\n`))
	var rs *dpopResourceServer
	s, c := newGrantDPoPSite(t, func(op *oidcProvider, redirect string) string {
		rs = dpopRS(t, op, 0)
		site := grantDPoPSite(op, rs, redirect, "", "import api_dpop")
		return strings.Replace(site, "\tdpop "+rs.URL+"\n", "\tdpop "+rs.URL+"\n\tdpop_key {env.OAB_GRANT_DPOP_KEY}\n", 1)
	})
	if _, status, page := s.flow("alice"); status != http.StatusOK {
		t.Fatalf("callback answered %d: %s\n%s", status, page, c.logs())
	}
	st := grantDPoPStatus(t, c.url(""), "alice")
	if d, _ := st["dpop"].(map[string]any); d["jkt"] != key.Thumbprint() || d["bound"] != true {
		t.Fatalf("status: %v, want bound to dpop_key's %s", st, key.Thumbprint())
	}
	for i := range 3 {
		if status, body := apiGet(t, c.url(fmt.Sprintf("/api/k/%d", i))); status != http.StatusOK {
			t.Fatalf("%d %s\n%s", status, body, c.logs())
		}
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[key.Thumbprint()] != 3 {
		t.Errorf("proofs signed with %v, want dpop_key's %s", keys, key.Thumbprint())
	}
	pool.Range(func(_, v any) bool {
		if g, ok := v.(*grant); ok {
			if rec, err := g.records.stored(t.Context(), "alice"); err == nil && rec != nil {
				if len(rec.DPoPKey) != 0 || rec.JKT != key.Thumbprint() {
					t.Errorf("the record keeps a key (%d bytes) or jkt %q; want dpop_key's thumbprint alone", len(rec.DPoPKey), rec.JKT)
				}
			}
		}
		return true
	})
}

// grant refresh_token with dpop: the configured refresh token (obtained
// here without DPoP) is redeemed with a proof of a key made for the grant
// and kept with it; the token is bound to that key, and the resource
// server accepts the injector's requests.
func TestDPoPGrantRefreshTokenGrant(t *testing.T) {
	redirect := "http://127.0.0.1:9/cb" // never contacted
	op := startOIDCProvider(t, grantDPoPOIDC(redirect))
	rs := dpopRS(t, op, 0)
	authURL := op.authorizeURL() + "?" + url.Values{
		"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {redirect}, "scope": {"openid offline_access"},
		"state": {"st"}, "prompt": {"consent"},
		"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"},
	}.Encode()
	cb := oidcAuthorize(t, authURL, redirect, false)
	req, _ := http.NewRequest(http.MethodPost, op.tokenURL(), strings.NewReader(url.Values{
		"grant_type": {"authorization_code"}, "code": {cb.Get("code")}, "redirect_uri": {redirect},
		"code_verifier": {"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"},
	}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("web", "web-secret")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok map[string]any
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	rt, _ := tok["refresh_token"].(string)
	if rt == "" || tok["token_type"] != "Bearer" {
		t.Fatalf("code exchange without DPoP: %v", tok)
	}
	t.Setenv("OAB_GRANT_RT", rt)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		issuer        %s
		client_id     web
		client_secret web-secret
		client_auth   basic
		grant         refresh_token
		refresh_token {env.OAB_GRANT_RT}
		dpop          %s
	}
	reverse_proxy %s
}
`, op.URL, rs.URL, strings.TrimPrefix(rs.URL, "http://")))
	for i := range 3 {
		if status, body := apiGet(t, c.url(fmt.Sprintf("/rt/%d", i))); status != http.StatusOK {
			_, refused := rs.counts()
			t.Fatalf("%d %s (resource server refused %v)\n%s", status, body, refused, c.logs())
		}
	}
	der := storedGrantKey(t, c, defaultAccount)
	key, err := oauthclient.ParseDPoPKeyPKCS8(der)
	if err != nil {
		t.Fatal(err)
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[key.Thumbprint()] != 3 {
		t.Errorf("proofs signed with %v, want the grant's stored key %s", keys, key.Thumbprint())
	}
}

// `caddy oauth-bearer check` on a grant with dpop refreshes its placeholder
// refresh token with a proof (htm POST, htu the token URL), as a running
// Caddy's refresh does: a server that requires DPoP for the client then
// judges the refresh token (invalid_grant: the client was accepted), not a
// missing proof.
func TestDPoPGrantCheckCommand(t *testing.T) {
	var mu sync.Mutex
	var proofs []string
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		proofs = append(proofs, r.Header.Values("DPoP")...)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		if len(r.Header.Values("DPoP")) == 0 {
			io.WriteString(w, `{"error":"invalid_dpop_proof","error_description":"DPoP proof JWT not provided"}`)
			return
		}
		io.WriteString(w, `{"error":"invalid_grant","error_description":"grant request is invalid"}`)
	}))
	t.Cleanup(as.Close)
	caddyfile := writeCaddyfile(t, fmt.Sprintf(`http://127.0.0.1:18032 {
	oauth_bearer {
		token_url   %s/token
		client_id   web
		client_secret web-secret
		client_auth basic
		grant       authorization_code
		dpop        https://api.example/v1
	}
	respond ok
}
`, as.URL))
	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "check", "--json", "--config", caddyfile)
	var results []map[string]any
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 1 {
		t.Fatalf("--json output: %v\n%s\n%s", err, out, errOut)
	}
	if r := results[0]; code != 0 || r["ok"] != true || !strings.Contains(fmt.Sprint(r["error_description"]), "invalid_grant") {
		t.Errorf("check: exit %d, %v; want ok (the placeholder refused with invalid_grant)", code, r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(proofs) != 1 {
		t.Fatalf("the refresh carried %d proofs, want 1", len(proofs))
	}
	var claims map[string]any
	parts := strings.Split(proofs[0], ".")
	if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err != nil || json.Unmarshal(b, &claims) != nil ||
		claims["htm"] != "POST" || claims["htu"] != as.URL+"/token" {
		t.Errorf("the refresh's proof claims %v, want htm POST and htu %s/token", claims, as.URL)
	}
}

// The background refresh (no request uses the account) signs with the
// grant's key too: the refreshed token, stored, is bound to it, and the
// first request afterwards is accepted with it.
func TestDPoPGrantBackgroundRefresh(t *testing.T) {
	var rs *dpopResourceServer
	s, c := newGrantDPoPSite(t, func(op *oidcProvider, redirect string) string {
		rs = dpopRS(t, op, 0)
		return grantDPoPSite(op, rs, redirect, "", "import api_dpop")
	})
	if _, status, page := s.flow("alice"); status != http.StatusOK {
		t.Fatalf("callback answered %d: %s", status, page)
	}
	st := grantDPoPStatus(t, c.url(""), "alice")
	jkt := st["dpop"].(map[string]any)["jkt"].(string)
	// No request: only the grant's background refresh renews the token.
	waitForLong(t, 30*time.Second, func() bool { return s.op.events(t).Counts["grant.success"] >= 2 })
	waitForLong(t, 10*time.Second, func() bool {
		st := grantDPoPStatus(t, c.url(""), "alice")
		return st["last_refresh"] != st["connected_at"]
	})
	st = grantDPoPStatus(t, c.url(""), "alice")
	if d := st["dpop"].(map[string]any); d["jkt"] != jkt || d["bound"] != true {
		t.Errorf("after the background refresh: %v, want bound to %s still", st, jkt)
	}
	if status, body := apiGet(t, c.url("/api/after-background")); status != http.StatusOK {
		_, refused := rs.counts()
		t.Fatalf("%d %s (refused %v)\n%s", status, body, refused, c.logs())
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[jkt] != 1 {
		t.Errorf("proofs signed with %v, want the grant's key %s", keys, jkt)
	}
}
