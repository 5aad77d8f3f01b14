package oauthbearer

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The key is the credential set's, kept in the storage with the token: two
// Caddy processes on one file_system storage get one token (one request to
// oidc-provider) and both sign with the key it is bound to (the resource
// server checks each proof's key against the token's cnf.jkt); a restart
// finds the key and the token again (no token request).
func TestDPoPCaddyFleetSharesKeyAndRestartKeepsIt(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	rs := dpopRS(t, op, 0)
	storage := fileSystemStorage(filepath.Join(t.TempDir(), "shared"))
	site := dpopSite(op, rs, "")
	c := startCaddyWith(t, freeAddr(t), storage, site)
	child := startChildCaddy(t, storage, site)

	// Both instances' first requests at once: one fetches under the
	// storage lock, the other takes the stored token and its key.
	var wg sync.WaitGroup
	statuses := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := c.url(fmt.Sprintf("/v1/a/%d", i))
			if i%2 == 1 {
				target = child.url(fmt.Sprintf("/v1/b/%d", i))
			}
			resp, err := testClient.Get(target)
			if err != nil {
				statuses <- err.Error()
				return
			}
			resp.Body.Close()
			statuses <- fmt.Sprint(resp.StatusCode)
		}()
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != "200" {
			_, refused := rs.counts()
			t.Fatalf("a request answered %s (resource server refused %v)\nparent:\n%s\nchild:\n%s", s, refused, c.logs(), child.logs())
		}
	}
	if n := op.events(t).Counts["grant.success"]; n != 1 {
		t.Fatalf("oidc-provider issued %d tokens to the two instances, want 1", n)
	}
	jkts := proofKeys(t, rs)
	if len(jkts) != 1 {
		t.Fatalf("the proofs were signed with %d keys, want the one key the token is bound to: %v", len(jkts), jkts)
	}

	// A restart (every pool entry gone, as in a new process) takes the
	// stored token and its key: no token request.
	c.restart(site)
	if status, body := c.get("/v1/after-restart"); status != http.StatusOK {
		t.Fatalf("after a restart: %d %s", status, body)
	}
	if n := op.events(t).Counts["grant.success"]; n != 1 {
		t.Errorf("after a restart oidc-provider issued %d tokens in all, want still 1", n)
	}
	if jkts := proofKeys(t, rs); len(jkts) != 1 {
		t.Errorf("after a restart the proofs were signed with %d keys, want 1", len(jkts))
	}
	if !strings.Contains(c.logs(), `"origin":"warm start"`) {
		t.Errorf("the restarted instance did not take the stored token:\n%s", c.logs())
	}
}

// proofKeys are the thumbprints of the keys of the resource server's
// accepted proofs' (as it computed them, without the client code).
func proofKeys(t *testing.T, rs *dpopResourceServer) map[string]int {
	t.Helper()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := map[string]int{}
	for _, p := range rs.proofs {
		out[fmt.Sprint(p["_jkt"])]++
	}
	return out
}

// A token endpoint that ignores DPoP (it answers token_type Bearer): the
// token is sent as Authorization: Bearer without a proof, the client's own
// DPoP header is removed, and the warning is logged once.
func TestDPoPCaddyBearerFallback(t *testing.T) {
	var mu sync.Mutex
	var proofs []string
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		proofs = append(proofs, r.Header.Get("DPoP"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": "plain-bearer-token", "token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(as.Close)
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url %s
		client_id svc
		client_secret svc-secret
		dpop http://api.example/v1
	}
	reverse_proxy %s
}
`, as.URL, up.hostport()))
	for i := range 3 {
		status, _ := dpopSend(t, c, "GET", fmt.Sprintf("/x/%d", i), "")
		if status != http.StatusOK {
			t.Fatalf("request %d: %d", i, status)
		}
	}
	for _, h := range up.requests() {
		if got := h.Get("Authorization"); got != "Bearer plain-bearer-token" {
			t.Errorf("upstream got Authorization %q, want the unbound token as Bearer", got)
		}
		if got := h.Values("DPoP"); len(got) != 0 {
			t.Errorf("upstream got DPoP %q: the client's own header must be removed, and an unbound token has no proof", got)
		}
	}
	mu.Lock()
	if len(proofs) != 1 || strings.Count(proofs[0], ".") != 2 {
		t.Errorf("token requests carried DPoP %q, want one request with a proof", proofs)
	}
	mu.Unlock()
	if n := strings.Count(c.logs(), "answered a Bearer token to a request with a DPoP proof"); n != 1 {
		t.Errorf("the Bearer fallback was logged %d times, want once:\n%s", n, c.logs())
	}
}
