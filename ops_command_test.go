package oauthbearer

// Issue 14, operations: `caddy oauth-bearer check` exercises the JWT bearer
// grant, and the admin API and `status` label JWT bearer sets and tell two
// sets of one provider apart.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// jwtBearerSite is a site with an oauth_bearer block of grant jwt_bearer signed with
// the key at keyPath, for the site at addr.
func jwtBearerSite(addr, tokenURL, clientID, keyPath, extra string) string {
	return fmt.Sprintf(`http://%s {
	oauth_bearer {
		grant       jwt_bearer
		token_url   %s
		client_id   %s
		private_key %s
		scope       api
%s	}
	respond ok
}
`, addr, tokenURL, clientID, keyPath, extra)
}

// `caddy oauth-bearer check` sends the JWT bearer grant itself, with a
// fresh assertion, and reports what the provider made of it: a token (ok,
// with its lifetime), or the refusal of an assertion signed with a key the
// provider does not know. The token endpoint verifies each assertion and
// answers a refresh token it never issued with invalid_grant, as real
// providers do: a check that sent a placeholder refresh token would call
// both sets ok.
func TestCheckCommandJWTBearer(t *testing.T) {
	k := testkeys.Keys()
	s := newJWTAS(t)
	s.register("jwt-client", k.RSA.Public(), "")
	s.register("jwt-stranger", k.RSA.Public(), "") // but it signs with rsa2
	goodPEM, wrongPEM := testkeys.PKCS8PEM(t, k.RSA), testkeys.PKCS8PEM(t, k.RSA2)
	good, wrong := testkeys.WriteFile(t, "good.key", goodPEM), testkeys.WriteFile(t, "wrong.key", wrongPEM)
	const subject = "\t\tsubject     svc@example.com\n"
	cfg := writeCaddyfile(t, jwtBearerSite("127.0.0.1:18021", s.tokenURL(), "jwt-client", good, subject)+
		jwtBearerSite("127.0.0.1:18022", s.tokenURL(), "jwt-stranger", wrong, subject))

	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "check", "--json", "--config", cfg)
	t.Logf("caddy oauth-bearer check --json:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d with one failing set, want 1 (stderr: %s)", code, errOut)
	}
	var results []map[string]any
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 2 {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	byClient := map[string]map[string]any{}
	for _, r := range results {
		byClient[r["client_id"].(string)] = r
	}
	if r := byClient["jwt-client"]; r["ok"] != true || r["grant"] != "jwt_bearer" || r["lifetime_seconds"] != 3600.0 || r["scope"] != "api" {
		t.Errorf("the set the provider accepts: %v; want ok, grant jwt_bearer, a lifetime of 3600 s and scope api", r)
	}
	if r := byClient["jwt-stranger"]; r["ok"] != false || r["error"] != "invalid_grant" ||
		!strings.Contains(fmt.Sprint(r["error_description"]), "signature does not verify") {
		t.Errorf("the set signed with a key the provider does not know: %v; want invalid_grant, signature does not verify", r)
	}
	grants := s.issuedLog()
	if len(grants) != 1 || grants[0].GrantType != "urn:ietf:params:oauth:grant-type:jwt-bearer" || grants[0].Client != "jwt-client" {
		t.Errorf("tokens issued: %+v; want one, to the JWT bearer grant of jwt-client", grants)
	}
	if n := s.tokenRequests(); n != 2 {
		t.Errorf("the token endpoint got %d requests, want 2 (one per set)", n)
	}
	assertNoSecrets(t, out+errOut, "at-jwt-client")
	testkeys.AssertNoKeyMaterial(t, "the check's output", out+errOut, goodPEM, wrongPEM)

	// The table says the same.
	out, _, code = runCaddyCommand(t, "oauth-bearer", "check", "--config",
		writeCaddyfile(t, jwtBearerSite("127.0.0.1:18021", s.tokenURL(), "jwt-client", good, subject)))
	if code != 0 || !strings.Contains(out, "jwt_bearer") || !strings.Contains(out, "1h0m0s") || !strings.Contains(out, "1 credential set(s), 1 ok, 0 failed") {
		t.Errorf("check of a good jwt_bearer set: exit %d\n%s", code, out)
	}
}

// The admin API labels a JWT bearer set as such (kind and grant), and
// `caddy oauth-bearer status` tells two sets of one provider apart by the
// host of their token URL (Bookable's sandbox and production), and an
// issuer-discovered set by its issuer's host.
func TestStatusTellsSetsApart(t *testing.T) {
	t.Setenv("OPS_BOOKABLE_SECRET", "ops-bookable-secret-0123456789")
	key := testkeys.Keys().RSA
	s := newJWTAS(t)
	s.register("jwt-client", key.Public(), "")
	keyPath := testkeys.WriteFile(t, "jwt.key", testkeys.PKCS8PEM(t, key))
	up := newUpstream(t)
	c := startCaddyAdmin(t, fmt.Sprintf(`http://LISTEN {
	handle /sandbox/* {
		oauth_bearer bookable {
			environment   sandbox
			client_id     same-client
			client_secret {env.OPS_BOOKABLE_SECRET}
		}
		reverse_proxy %[1]s
	}
	handle /production/* {
		oauth_bearer bookable {
			client_id     same-client
			client_secret {env.OPS_BOOKABLE_SECRET}
		}
		reverse_proxy %[1]s
	}
	handle /discovered/* {
		oauth_bearer {
			issuer        https://login.issuer.example/tenant-a
			client_id     same-client
			client_secret {env.OPS_BOOKABLE_SECRET}
		}
		reverse_proxy %[1]s
	}
	handle /jwt/* {
		oauth_bearer {
			grant       jwt_bearer
			token_url   %[2]s
			client_id   jwt-client
			private_key %[3]s
			subject     svc@example.com
			scope       api
		}
		reverse_proxy %[1]s
	}
}`, up.hostport(), s.tokenURL(), keyPath))
	if status, body := c.get("/jwt/x"); status != http.StatusOK {
		t.Fatalf("GET /jwt/x: %d %s", status, body)
	}

	sources, body := adminSources(t, c)
	jwt := findSource(t, sources, "jwt_bearer")
	if jwt["grant"] != "jwt_bearer" || jwt["client_id"] != "jwt-client" || jwt["state"] != "valid" {
		t.Errorf("the JWT bearer set in the admin API: %v", jwt)
	}
	if strings.Count(body, `"grant": "client_credentials"`) != 3 {
		t.Errorf("the admin API does not show three client_credentials sets:\n%s", body)
	}
	if status, msg := adminDo(t, c, http.MethodGet, "/oauth_bearer/sources/"+jwt["id"].(string)+"/accounts"); status != http.StatusBadRequest ||
		!strings.Contains(msg, "uses jwt_bearer") {
		t.Errorf("accounts of a JWT bearer set: %d %s", status, msg)
	}

	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "status", "--address", c.admin)
	t.Logf("caddy oauth-bearer status:\n%s", out)
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut)
	}
	row := func(host string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, " "+host+" ") {
				return l
			}
		}
		t.Errorf("no row shows the host %s", host)
		return ""
	}
	if !strings.Contains(out, "TOKEN HOST") {
		t.Errorf("no TOKEN HOST column")
	}
	for host, want := range map[string][]string{
		"auth.bookabletech.com":              {"bookable", "same-client", "client_credentials"},
		"auth-sandbox.bookabletech.com":      {"bookable", "same-client", "client_credentials"},
		"login.issuer.example":               {"generic", "same-client", "client_credentials"},
		strings.TrimPrefix(s.URL, "http://"): {"generic", "jwt-client", "jwt_bearer", "valid"},
	} {
		r := row(host)
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("row %q lacks %q", r, w)
			}
		}
	}
	assertNoSecrets(t, out, "ops-bookable-secret-0123456789", "at-jwt-client")
}

// `caddy oauth-bearer check` of a set configured with `issuer` only shows
// the token endpoint it discovered and used, not an empty TOKEN URL.
func TestCheckCommandShowsTheDiscoveredTokenURL(t *testing.T) {
	d := newDiscoveryE2E(t)
	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "check", "--json", "--config", writeCaddyfile(t, d.sites))
	t.Logf("caddy oauth-bearer check --json:\n%s", out)
	var results []map[string]any
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 1 {
		t.Fatalf("--json output (exit %d, stderr %s): %v\n%s", code, errOut, err, out)
	}
	if r := results[0]; r["ok"] != true || r["token_url"] != d.tokens.tokenURL() {
		t.Errorf("check of an issuer-configured set: %v; want ok and token_url %s (from the issuer's metadata)", r, d.tokens.tokenURL())
	}
	if n := d.is.metadataReads(); n != 1 {
		t.Errorf("the issuer's metadata was read %d times, want 1", n)
	}
}
