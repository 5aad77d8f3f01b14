package oauthbearer

// Issue 14: a client certificate that fails to reload is logged once and
// shown by the admin API and `status`.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// A client certificate whose file is replaced by something that does not
// load keeps the previous certificate in use (token requests go on) and is
// logged once, at error level, naming the file (not on every handshake);
// the admin API and `status` show the failure; the next good file is
// loaded and logged, and the failure is cleared. The token endpoint is a
// real TLS server that requires the client certificate and closes every
// connection, so each token request is a new handshake.
func TestClientCertReloadFailureLogged(t *testing.T) {
	serverCA, clientCA := testkeys.NewCA(t, "ops server CA"), testkeys.NewCA(t, "ops client CA")
	s := newMTLSAS(t, serverCA, clientCA)
	s.Config.SetKeepAlivesEnabled(false)
	files := writeMTLSClient(t, clientCA, "rotating-client", serverCA)
	up := newUpstream(t)
	c := startCaddyAdmin(t, e2eSite("oauth_bearer", fmt.Sprintf(`		token_url       %s
		client_id       rotating-client
		tls_client_cert %s %s
		ca_file         %s
		token_store     memory`, s.tokenURL(), files.cert, files.key, files.ca), up))
	wantInjected(t, c, up, "/", "at-mtls-rotating-client-1")
	sources, _ := adminSources(t, c)
	src := findSource(t, sources, "client_credentials")
	id := src["id"].(string)
	if cc, _ := src["client_certificate"].(map[string]any); cc["subject"] != "CN=rotating-client" || cc["reload_error"] != nil {
		t.Errorf("client_certificate before the rotation: %v", src["client_certificate"])
	}

	const garbage = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZS1ub3QtYS1jZXJ0aWZpY2F0ZQ==\n-----END CERTIFICATE-----\n"
	testkeys.ReplaceFile(t, files.cert, []byte(garbage))
	refresh := func() {
		t.Helper()
		status, body := adminDo(t, c, http.MethodPost, "/oauth_bearer/sources/"+id+"/refresh")
		if status != http.StatusOK || !strings.Contains(body, `"ok": true`) {
			t.Fatalf("refresh: %d %s; the previous certificate must still be presented", status, body)
		}
	}
	for range 3 {
		refresh()
	}
	if n := s.issued(); n != 4 {
		t.Errorf("%d tokens issued, want 4", n)
	}
	const failedMsg = "client certificate reload failed"
	logs := c.logs()
	if n := strings.Count(logs, failedMsg); n != 1 {
		t.Errorf("%q logged %d times after three handshakes with the bad file, want once:\n%s", failedMsg, n, logs)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, failedMsg) && (!strings.Contains(l, `"level":"error"`) || !strings.Contains(l, files.cert) || !strings.Contains(l, "certificate 1 is not a valid X.509 certificate")) {
			t.Errorf("the log line does not name the level error, the file and the cause: %s", l)
		}
	}
	sources, body := adminSources(t, c)
	cc, _ := findSource(t, sources, "client_credentials")["client_certificate"].(map[string]any)
	if !strings.Contains(fmt.Sprint(cc["reload_error"]), files.cert) || cc["reload_failing_since"] == nil || cc["subject"] != "CN=rotating-client" {
		t.Errorf("client_certificate in the admin API: %v", cc)
	}
	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "status", "--address", c.admin)
	t.Logf("caddy oauth-bearer status:\n%s", out)
	if code != 0 || !strings.Contains(out, "client certificate") || !strings.Contains(out, files.cert) || !strings.Contains(out, id) {
		t.Errorf("status does not show the reload failure (exit %d, %s):\n%s", code, errOut, out)
	}
	for where, text := range map[string]string{"Caddy's log": logs, "the admin API": body, "status": out} {
		testkeys.AssertNoKeyMaterial(t, where, text, files.keyPEM)
		if strings.Contains(text, "Z2FyYmFnZS") {
			t.Errorf("%s repeats the file's content", where)
		}
	}

	// A good certificate again: loaded at the next handshake, logged, the
	// failure cleared.
	testkeys.ReplaceFile(t, files.cert, testkeys.PEM("CERTIFICATE", clientCA.IssueClient(t, "rotating-client", testkeys.Keys().P256b).Raw))
	refresh()
	logs = c.logs()
	if !strings.Contains(logs, "client certificate reloaded") || strings.Count(logs, failedMsg) != 1 {
		t.Errorf("after a good file: want one \"client certificate reloaded\" and still one failure logged:\n%s", logs)
	}
	sources, _ = adminSources(t, c)
	if cc, _ := findSource(t, sources, "client_credentials")["client_certificate"].(map[string]any); cc["reload_error"] != nil || cc["generation"] != 2.0 {
		t.Errorf("client_certificate after a good file: %v", cc)
	}
}
