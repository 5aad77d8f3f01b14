package oauthbearer

// End-to-end tests of issuer discovery through a real Caddy: the token
// endpoint is found in the issuer's metadata at the first token request,
// never when the configuration loads; a document naming another issuer is
// refused; an outage of the metadata URL is backed off and recovers.

import (
	"cmp"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// discoveryE2E is an issuer whose metadata names a verifying token
// server, a client registered there with a P-256 key, and an upstream.
type discoveryE2E struct {
	is     *fakeAS
	tokens *fakeAS
	up     *upstream
	keyPEM []byte
	sites  string
}

func newDiscoveryE2E(t *testing.T) *discoveryE2E {
	t.Helper()
	key := testkeys.Keys().P256
	d := &discoveryE2E{is: newFakeAS(t), tokens: newJWTAS(t), up: newUpstream(t), keyPEM: testkeys.SEC1PEM(t, key)}
	d.tokens.register("disco-client", key.Public(), "")
	d.is.setMetadata(map[string]any{"issuer": d.is.URL, "token_endpoint": d.tokens.tokenURL()}, http.StatusOK)
	keyPath := testkeys.WriteFile(t, "client.key", d.keyPEM)
	d.sites = e2eSite("oauth_bearer", fmt.Sprintf(`		issuer %s
		client_id disco-client
		client_auth private_key_jwt
		private_key %s`, d.is.URL, keyPath), d.up)
	return d
}

// The token endpoint comes from the issuer's metadata, read once at the
// first token request: none at load, one at the first request, none for a
// later token (the document is kept). The assertion's aud is the
// discovered endpoint.
func TestDiscoveryE2EIssuer(t *testing.T) {
	clock := useFakeClock(t)
	d := newDiscoveryE2E(t)
	c := startCaddy(t, d.sites)
	if n := d.is.metadataReads(); n != 0 {
		t.Fatalf("the discovery server got %d requests while the configuration loaded; want none", n)
	}
	answers := wantInjected(t, c, d.up, "/", "at-disco-client-1")
	if n := d.is.metadataReads(); n != 1 {
		t.Fatalf("discovery requests after the first token: %d, want 1", n)
	}
	clock.add(2 * time.Hour)
	answers += wantInjected(t, c, d.up, "/later", "at-disco-client-2")
	if n, issued := d.is.metadataReads(), d.tokens.issued(); n != 1 || issued != 2 {
		t.Fatalf("after a second token: %d discovery requests (want 1), %d tokens (want 2)", n, issued)
	}
	assertNothingLeaked(t, c, d.sites, answers, [][]byte{d.keyPEM}, d.tokens.sentAssertions())
}

// Validating the configuration (provisioning every module, as caddy
// validate does) makes no request to the issuer.
func TestDiscoveryE2ENotAtValidate(t *testing.T) {
	d := newDiscoveryE2E(t)
	if err := validateCaddyfile(t, d.sites); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if n, m := d.is.metadataReads(), d.tokens.tokenRequests(); n != 0 || m != 0 {
		t.Fatalf("validating made %d discovery and %d token requests; want none", n, m)
	}
	// Validation did provision the handler: a key file that is not there
	// fails it.
	broken := strings.Replace(d.sites, "private_key /", "private_key /nonexistent/", 1)
	if err := validateCaddyfile(t, broken); err == nil || !strings.Contains(err.Error(), "private_key") {
		t.Fatalf("validating a configuration with a missing key file: %v", err)
	}
}

// validateCaddyfile adapts site blocks (LISTEN as in startCaddy) and
// validates the result as caddy validate does: every module is
// provisioned, and cleaned up, and nothing is started.
func validateCaddyfile(t *testing.T, sites string) error {
	_, adaptErr, validateErr := loadCaddyfile(t, sites)
	return cmp.Or(adaptErr, validateErr)
}

// A document whose issuer is not the configured one is refused: no token
// request is made, the client gets a 502 naming the provider and the
// error, and the log names both issuers.
func TestDiscoveryE2EWrongIssuer(t *testing.T) {
	d := newDiscoveryE2E(t)
	const impostor = "https://impostor.example"
	d.is.setMetadata(map[string]any{"issuer": impostor, "token_endpoint": d.tokens.tokenURL()}, http.StatusOK)
	c := startCaddy(t, d.sites)

	status, body := c.get("/")
	if status != http.StatusBadGateway && status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 502 or 503: %s", status, body)
	}
	if !strings.Contains(body, "generic") || !strings.Contains(body, "discovery_failed") {
		t.Errorf("answer %q does not name the provider and the error", body)
	}
	if n := len(d.up.requests()); n != 0 {
		t.Errorf("the upstream got %d requests", n)
	}
	if n := d.tokens.tokenRequests(); n != 0 {
		t.Errorf("the token endpoint of the refused document got %d requests", n)
	}
	logs := c.logs()
	if !strings.Contains(logs, impostor) || !strings.Contains(logs, d.is.URL) || !strings.Contains(logs, "must be identical") {
		t.Errorf("the log does not name the mismatch (%s and %s):\n%s", impostor, d.is.URL, logs)
	}
	testkeys.AssertNoKeyMaterial(t, "Caddy's log", logs, d.keyPEM)
	testkeys.AssertNoKeyMaterial(t, "the answer to the client", body, d.keyPEM)
}

// An outage of the metadata URL (503) fails the request and is backed
// off: a second request during the backoff is refused with Retry-After
// without asking the issuer again; once the issuer is back and the backoff
// has passed (on a fake clock), the next request discovers and gets a
// token.
func TestDiscoveryE2EOutageBackoff(t *testing.T) {
	clock := useFakeClock(t)
	d := newDiscoveryE2E(t)
	doc := map[string]any{"issuer": d.is.URL, "token_endpoint": d.tokens.tokenURL()}
	d.is.setMetadata(doc, http.StatusServiceUnavailable)
	c := startCaddy(t, d.sites)

	status, body := c.get("/one")
	if status != http.StatusBadGateway || !strings.Contains(body, "discovery_failed") {
		t.Fatalf("during the outage: %d %q, want 502 discovery_failed", status, body)
	}
	if n := d.is.metadataReads(); n != 1 {
		t.Fatalf("discovery requests: %d, want 1", n)
	}
	if !strings.Contains(c.logs(), "answered 503") {
		t.Errorf("the log does not say what the issuer answered:\n%s", c.logs())
	}

	req, _ := http.NewRequest(http.MethodGet, c.url("/two"), nil)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("during the backoff: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := d.is.metadataReads(); n != 1 {
		t.Fatalf("a request during the backoff asked the issuer again (%d requests)", n)
	}

	d.is.setMetadata(doc, http.StatusOK)
	clock.add(maxBackoff + time.Second)
	wantInjected(t, c, d.up, "/three", "at-disco-client-1")
	if n, issued := d.is.metadataReads(), d.tokens.issued(); n != 2 || issued != 1 {
		t.Fatalf("after recovery: %d discovery requests (want 2), %d tokens (want 1)", n, issued)
	}
}

// The discovered document is kept in the shared token record: after a
// restart (a new process, as far as the pool knows), the next token
// request uses the stored document and does not ask the issuer again.
func TestDiscoveryE2EDocumentSurvivesRestart(t *testing.T) {
	clock := useFakeClock(t)
	d := newDiscoveryE2E(t)
	c := startCaddy(t, d.sites)
	wantInjected(t, c, d.up, "/", "at-disco-client-1")
	c.restart(d.sites)
	clock.add(2 * time.Hour) // the stored token has expired: a token request follows
	wantInjected(t, c, d.up, "/after-restart", "at-disco-client-2")
	if n := d.is.metadataReads(); n != 1 {
		t.Fatalf("discovery requests: %d, want 1 (the stored document used after the restart)", n)
	}
}
