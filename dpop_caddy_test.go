package oauthbearer

import (
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// DPoP through a real Caddy: oauth_bearer with dpop against npm's
// oidc-provider (DPoP with nonces required, tokens bound for client svc)
// and the verifying resource server (dpop_rs_test.go: every proof's
// signature, htm, htu, iat, jti, ath, the token's cnf.jkt through
// introspection, nonces), behind reverse_proxy.

// dpopSite is a site whose oauth_bearer gets client svc's tokens from op
// with DPoP for the resource server rs; extra goes into oauth_bearer.
func dpopSite(op *oidcProvider, rs *dpopResourceServer, extra string) string {
	return fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url %s
		client_id svc
		client_secret svc-secret
		client_auth basic
		dpop %s
%s	}
	reverse_proxy %s
}
`, op.tokenURL(), rs.URL, extra, strings.TrimPrefix(rs.URL, "http://"))
}

// dpopRS is a resource server that requires nonces and checks tokens at
// op's introspection endpoint.
func dpopRS(t *testing.T, op *oidcProvider, rotateEvery int) *dpopResourceServer {
	return newDPoPResourceServer(t, dpopRSConfig{RequireNonce: true, RotateEvery: rotateEvery,
		Introspect: &rsIntrospection{URL: op.introspectURL(), ClientID: "rs", ClientSecret: "rs-secret"}})
}

// send sends method to Caddy's path with a client's own (forged) DPoP
// header and Authorization, and returns the status and body.
func dpopSend(t testing.TB, c *testCaddy, method, path, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, c.url(path), rd)
	req.Header.Set("DPoP", "a.client.proof")
	req.Header.Set("Authorization", "Bearer client-token")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Client credentials with DPoP under load: many concurrent requests of
// several methods, bodies and paths through Caddy, every one answered 200
// by a resource server that verified its proof; the token endpoint's
// nonce challenge answered (one token), the resource server's nonce
// learned (challenges only while no nonce is known or after a rotation),
// the client's own DPoP header never forwarded.
func TestDPoPCaddyClientCredentialsUnderLoad(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	rs := dpopRS(t, op, 50)
	c := startCaddy(t, dpopSite(op, rs, ""))

	const workers, each = 16, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := map[string]int{}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				method, body := "GET", ""
				if (w+i)%3 == 1 {
					method, body = "POST", `{"n":1}`
				}
				status, b := dpopSend(t, c, method, fmt.Sprintf("/v1/things/%d?page=%d", w, i), body)
				if status != http.StatusOK {
					mu.Lock()
					bad[fmt.Sprintf("%d %s", status, strings.TrimSpace(b))]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	accepted, refused := rs.counts()
	if len(bad) > 0 {
		t.Fatalf("clients got %v; resource server accepted %d, refused %v\n%s", bad, accepted, refused, c.logs())
	}
	if accepted != workers*each {
		t.Errorf("resource server accepted %d proofs, want %d (one per request)", accepted, workers*each)
	}
	for reason, n := range refused {
		if reason != rsNonce {
			t.Errorf("resource server refused %d requests for %s; only nonce challenges are expected", n, reason)
		}
	}
	if ev := op.events(t); ev.Counts["grant.success"] != 1 {
		t.Errorf("oidc-provider issued %d tokens, want 1 (counts %v)", ev.Counts["grant.success"], ev.Counts)
	}
	// Steady traffic carries the nonce: after the first answers, a
	// rotation costs at most one challenge per request in flight.
	if refused[rsNonce] > workers*(1+workers*each/50) {
		t.Errorf("%d nonce challenges for %d requests: the nonce is not kept from the answers", refused[rsNonce], workers*each)
	}
	for _, p := range rs.acceptedProofs() {
		if _, ok := p["ath"]; !ok {
			t.Fatalf("an accepted proof without ath: %v", p)
		}
	}
}

// A request whose body streams (unknown length) is not replayed: the
// resource server's nonce challenge goes back to the client, and the nonce
// it carried is kept, so the next request is answered at once.
func TestDPoPCaddyNonceChallengeOfAStreamingRequest(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	rs := dpopRS(t, op, 0)
	c := startCaddy(t, dpopSite(op, rs, ""))
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte(`{"streamed":true}`))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", c.url("/v1/upload"), pr) // chunked: no Content-Length
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "use_dpop_nonce") {
		t.Fatalf("a streaming request's nonce challenge: %d %q, want the 401 passed on", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if status, body := c.get("/v1/next"); status != http.StatusOK {
		t.Fatalf("the next request: %d %s", status, body)
	}
	if accepted, refused := rs.counts(); accepted != 1 || refused[rsNonce] != 1 {
		t.Errorf("resource server accepted %d, refused %v; want 1 and one nonce challenge (the nonce kept from the 401)", accepted, refused)
	}
}

// The nonce replay does not depend on upstream_401: a nonce challenge is
// not a refused token, so with invalidate and off too the first request
// (no nonce known yet) is replayed with the nonce and answered 200.
func TestDPoPCaddyNonceReplayWhateverUpstream401(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	for _, mode := range []string{"invalidate", "off"} {
		t.Run(mode, func(t *testing.T) {
			rs := dpopRS(t, op, 0)
			c := startCaddy(t, dpopSite(op, rs, "\t\tupstream_401 "+mode+"\n"))
			if status, body := dpopSend(t, c, "POST", "/v1/first", `{"a":1}`); status != http.StatusOK {
				t.Fatalf("first request with upstream_401 %s: %d %s", mode, status, body)
			}
			if accepted, refused := rs.counts(); accepted != 1 || refused[rsNonce] != 1 {
				t.Errorf("resource server accepted %d, refused %v; want one nonce challenge, then the replay accepted", accepted, refused)
			}
		})
	}
}

// The proof follows the token and the key: after a new token (the admin
// API's refresh) every proof's ath is the new token's, and after a reload
// with another dpop_key every proof carries that key, to which the token
// fetched for it is bound. The resource server checks both against what
// it is sent (ath against the token, the token's cnf.jkt against the
// proof's key), so a proof header or an ath kept from before the change
// (cached per handler, per process, per first use) fails here.
func TestDPoPCaddyProofFollowsTokenAndKey(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	rs := dpopRS(t, op, 0)
	dir := t.TempDir()
	site := func(name string, k *oauthclient.DPoPKey) string {
		der, err := k.MarshalPKCS8()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return dpopSite(op, rs, "\t\tdpop_key "+path+"\n")
	}
	ka, kb := dpopTestKey(t, "ES256"), dpopTestKey(t, "EdDSA")
	c := startCaddyAdmin(t, site("a", ka))

	// send makes n requests and returns the ath and the key thumbprints of
	// the proofs the resource server accepted for them.
	send := func(step string, n int) (aths, jkts map[string]int) {
		t.Helper()
		before := len(rs.acceptedProofs())
		for i := range n {
			if status, body := c.get(fmt.Sprintf("/v1/%s/%d", step, i)); status != http.StatusOK {
				_, refused := rs.counts()
				t.Fatalf("%s: request %d answered %d %s; resource server refused %v", step, i, status, body, refused)
			}
		}
		aths, jkts = map[string]int{}, map[string]int{}
		for _, p := range rs.acceptedProofs()[before:] {
			aths[fmt.Sprint(p["ath"])]++
			jkts[fmt.Sprint(p["_jkt"])]++
		}
		if len(aths) != 1 || len(jkts) != 1 {
			t.Fatalf("%s: proofs with ath %v and keys %v, want one token and one key", step, aths, jkts)
		}
		return aths, jkts
	}
	only := func(m map[string]int) string {
		for k := range m {
			return k
		}
		return ""
	}

	ath1, jkt1 := send("first", 3)
	if only(jkt1) != ka.Thumbprint() {
		t.Fatalf("proofs carry key %s, want dpop_key's %s", only(jkt1), ka.Thumbprint())
	}

	// A new token, the same key.
	cc := findSource(t, func() []map[string]any { x, _ := adminSources(t, c); return x }(), "client_credentials")
	if status, body := adminDo(t, c, http.MethodPost, fmt.Sprintf("/oauth_bearer/sources/%s/refresh", cc["id"])); status != 200 || !strings.Contains(body, `"ok": true`) {
		t.Fatalf("refresh: %d %s", status, body)
	}
	ath2, jkt2 := send("new-token", 3)
	if only(ath2) == only(ath1) {
		t.Errorf("the proofs' ath is the same after a new token: %s", only(ath2))
	}
	if only(jkt2) != ka.Thumbprint() {
		t.Errorf("after a new token the proofs carry key %s, want %s", only(jkt2), ka.Thumbprint())
	}

	// Another key (a reload): a token bound to it, proofs signed with it.
	if err := c.load(site("b", kb)); err != nil {
		t.Fatal(err)
	}
	ath3, jkt3 := send("new-key", 3)
	if only(jkt3) != kb.Thumbprint() {
		t.Errorf("after the reload the proofs carry key %s, want the new dpop_key's %s", only(jkt3), kb.Thumbprint())
	}
	if only(ath3) == only(ath2) {
		t.Errorf("the proofs' ath is the same after the key changed: %s", only(ath3))
	}
	if _, refused := rs.counts(); len(refused) > 1 || (len(refused) == 1 && refused[rsNonce] == 0) {
		t.Errorf("resource server refused %v; only nonce challenges are expected", refused)
	}
	if n := op.events(t).Counts["grant.success"]; n != 3 {
		t.Errorf("oidc-provider issued %d tokens, want 3 (first, refresh, new key)", n)
	}
}
