package oauthbearer

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// dpopProofPrefix is how every proof this module signs begins: the
// base64url of {"typ":"dpop+jwt",.
const dpopProofPrefix = "eyJ0eXAiOiJkcG9wK2p3dCIs"

// No key material and no proof in the adapted JSON, the logs, the admin
// API or the storage; the admin API shows the base URL and the
// thumbprint of the key the token is bound to.
func TestDPoPSecrecyAndAdminView(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	rs := dpopRS(t, op, 0)
	key := dpopTestKey(t, "EdDSA")
	der, err := key.MarshalPKCS8()
	if err != nil {
		t.Fatal(err)
	}
	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	t.Setenv("OAB_DPOP_TEST_KEY", strings.ReplaceAll(pemText, "\n", `\n`))
	site := dpopSite(op, rs, "\t\tdpop_key {env.OAB_DPOP_TEST_KEY}\n")
	c := startCaddyOpts(t, &testCaddy{addr: freeAddr(t), admin: freeAddr(t)}, site)
	for range 3 {
		if status, body := dpopSend(t, c, "GET", "/v1/secret", ""); status != http.StatusOK {
			t.Fatalf("%d %s\n%s", status, body, c.logs())
		}
	}
	if keys := proofKeys(t, rs); len(keys) != 1 || keys[key.Thumbprint()] != 3 {
		t.Errorf("proofs signed with %v, want dpop_key's %s", keys, key.Thumbprint())
	}

	sources, body := adminSources(t, c)
	src := findSource(t, sources, "client_credentials")
	d, _ := src["dpop"].(map[string]any)
	if d["base_url"] != rs.URL || d["jkt"] != key.Thumbprint() || d["key"] != "dpop_key" || d["bound"] != true {
		t.Errorf("admin API dpop = %v, want the base URL %s, jkt %s, key dpop_key, bound", d, rs.URL, key.Thumbprint())
	}
	adapted, err := c.adapt(site)
	if err != nil {
		t.Fatal(err)
	}
	b64DER := base64.StdEncoding.EncodeToString(der)
	keyMaterial := []string{"PRIVATE KEY", b64DER[20:60]}
	secrets := append(keyMaterial, dpopProofPrefix)
	var stored strings.Builder
	filepath.Walk(filepath.Join(c.dir, "storage"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			stored.Write(b)
		}
		return nil
	})
	// Caddy's own reverse_proxy logs the upstream request's headers at
	// debug level, redacting only Authorization and cookies: the proofs
	// (never the key) appear there. This module's lines never hold one.
	var ours strings.Builder
	for _, line := range strings.Split(c.logs(), "\n") {
		if !strings.Contains(line, `"logger":"http.handlers.reverse_proxy"`) {
			ours.WriteString(line + "\n")
		}
	}
	if !strings.Contains(c.logs(), `"logger":"http.handlers.oauth_bearer"`) {
		t.Fatal("no log line of the handler: the check would not see anything")
	}
	for where, text := range map[string]string{"adapted JSON": string(adapted), "the handler's logs": ours.String(), "admin API": body, "storage": stored.String()} {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s holds %q", where, s)
			}
		}
	}
	for _, s := range keyMaterial {
		if strings.Contains(c.logs(), s) {
			t.Errorf("Caddy's logs hold %q", s)
		}
	}
	var cfg map[string]any
	if json.Unmarshal(adapted, &cfg) != nil || !strings.Contains(string(adapted), "{env.OAB_DPOP_TEST_KEY}") {
		t.Errorf("the adapted JSON should keep the placeholder, not the key:\n%s", adapted)
	}
}

// `caddy oauth-bearer check` makes its token request with a proof (the
// server requires one for svc: without it, invalid_request) and reports
// the base URL and the key the token is bound to, without key material.
func TestDPoPCheckCommand(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	key := dpopTestKey(t, "ES256")
	der, _ := key.MarshalPKCS8()
	keyFile := testkeys.WriteFile(t, "dpop.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	cfg := writeCaddyfile(t, fmt.Sprintf(`http://127.0.0.1:18031 {
	oauth_bearer {
		token_url %s
		client_id svc
		client_secret svc-secret
		client_auth basic
		dpop https://api.example/v1
		dpop_key %s
	}
	respond ok
}
`, op.tokenURL(), keyFile))
	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "check", "--json", "--config", cfg)
	var results []map[string]any
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 1 {
		t.Fatalf("--json output: %v\n%s\n%s", err, out, errOut)
	}
	r := results[0]
	if code != 0 || r["ok"] != true || r["dpop"] != "https://api.example/v1" || r["dpop_jkt"] != key.Thumbprint() || r["dpop_bound"] != true {
		t.Errorf("check: exit %d, %v; want ok, the base URL, jkt %s, bound", code, r, key.Thumbprint())
	}
	testkeys.AssertNoKeyMaterial(t, "the check's output", out+errOut, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	out, _, code = runCaddyCommand(t, "oauth-bearer", "check", "--config", cfg)
	if code != 0 || !strings.Contains(out, "dpop https://api.example/v1: bound, jkt "+key.Thumbprint()) {
		t.Errorf("check table: exit %d\n%s", code, out)
	}
}
