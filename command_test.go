package oauthbearer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `caddy oauth-bearer check` and `status`, run as processes: this test
// binary as the caddy command (TestMain, OAB_CHILD_CADDY_ARGS).

// runCaddyCommand runs `caddy <args>` and returns its standard output and
// error, and its exit code.
func runCaddyCommand(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(args)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "OAB_CHILD_CADDY_ARGS="+string(a))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// writeCaddyfile writes a Caddyfile (with global options that keep it off
// the network) and returns its path.
func writeCaddyfile(t *testing.T, sites string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(p, []byte("{\n\tadmin off\n\tauto_https off\n}\n"+sites), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckCommand(t *testing.T) {
	good := newFakeAS(t)
	good.ClientAuth = "basic"
	good.Want = map[string]string{"scope": "read"}
	wrongSecret := newFakeAS(t)
	wrongSecret.ClientAuth = "basic"
	wrongSecret.Secret = "another-secret"
	refusing := newFakeAS(t) // the eventtemple preset sends JSON; this one wants a scope it is not sent
	refusing.Format, refusing.ClientAuth = "json", "body"
	refusing.Want = map[string]string{"scope": "crm_admin"}
	unreachable := "http://" + freeAddr(t) + "/token"
	cas := newFakeAS(t)
	cas.RedirectURI, cas.CreatedAt = "https://proxy.example.com/cb", true
	t.Setenv("CHK_SECRET", good.Secret)
	t.Setenv("CAS_SECRET", cas.Secret)
	site := func(port int, block string) string {
		return fmt.Sprintf("http://127.0.0.1:%d {\n\t%s\n\trespond ok\n}\n", port, block)
	}
	goodBlock := fmt.Sprintf("oauth_bearer {\n\t\ttoken_url %s\n\t\tclient_id %s\n\t\tclient_secret {env.CHK_SECRET}\n\t\tscope read\n\t}",
		good.tokenURL(), good.ClientID)
	all := site(18001, goodBlock) + site(18002, goodBlock) + // one set, two handlers
		site(18003, fmt.Sprintf("oauth_bearer {\n\t\ttoken_url %s\n\t\tclient_id %s\n\t\tclient_secret {env.CHK_SECRET}\n\t}", wrongSecret.tokenURL(), wrongSecret.ClientID)) +
		site(18004, fmt.Sprintf("oauth_bearer eventtemple {\n\t\ttoken_url %s\n\t\tclient_id %s\n\t\tclient_secret {env.CHK_SECRET}\n\t\tscope crm_read\n\t}", refusing.tokenURL(), refusing.ClientID)) +
		site(18005, fmt.Sprintf("oauth_bearer {\n\t\ttoken_url %s\n\t\tclient_id unreachable-client\n\t\tclient_secret {env.CHK_SECRET}\n\t\ttimeout 2s\n\t}", unreachable)) +
		site(18006, fmt.Sprintf("oauth_bearer_consent eventtemple {\n\t\ttoken_url %s\n\t\tclient_id %s\n\t\tclient_secret {env.CAS_SECRET}\n\t\tredirect_uri https://proxy.example.com/cb\n\t}", cas.tokenURL(), cas.ClientID))

	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "check", "--config", writeCaddyfile(t, all))
	t.Logf("caddy oauth-bearer check:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d with failing sets, want 1 (stderr: %s)", code, errOut)
	}
	lines := strings.Split(out, "\n")
	row := func(url string) string {
		for _, l := range lines {
			if strings.Contains(l, url) {
				return l
			}
		}
		t.Errorf("no row for %s", url)
		return ""
	}
	for url, want := range map[string][]string{
		good.tokenURL():        {"generic", good.ClientID, "client_credentials", " ok ", "1h0m0s", "form"},
		wrongSecret.tokenURL(): {"invalid_client", "client authentication failed"},
		refusing.tokenURL():    {"eventtemple", "invalid_request", "scope must be", "json"},
		unreachable:            {"unreachable"},
		cas.tokenURL():         {"authorization_code", " ok ", "-"},
	} {
		r := row(url)
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("row %q lacks %q", r, w)
			}
		}
	}
	if !strings.Contains(out, "5 credential set(s), 2 ok, 3 failed") {
		t.Errorf("no summary line of 5 sets, 2 ok, 3 failed")
	}
	if good.issued() != 1 || cas.invalidGrants() != 1 {
		t.Errorf("token requests: good %d, grant %d invalid_grant; want one each", good.issued(), cas.invalidGrants())
	}
	assertNoSecrets(t, out+errOut, good.Secret, cas.Secret, "tok-")

	// All good: exit 0; --json for machines.
	out, errOut, code = runCaddyCommand(t, "oauth-bearer", "check", "--config", writeCaddyfile(t, site(18001, goodBlock)), "--json")
	if code != 0 {
		t.Errorf("exit status %d with every set ok, want 0 (%s)", code, errOut)
	}
	var results []map[string]any
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 1 {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if r := results[0]; r["ok"] != true || r["provider"] != "generic" || r["lifetime_seconds"] != 3600.0 || r["request_format"] != "form" || r["handlers"] != 1.0 {
		t.Errorf("--json result: %v", r)
	}
	assertNoSecrets(t, out, good.Secret, "tok-")

	// A configuration mistake is reported as the loader reports it.
	_, errOut, code = runCaddyCommand(t, "oauth-bearer", "check", "--config", writeCaddyfile(t, site(18001, "oauth_bearer {\n\t\tclient_id x\n\t}")))
	if code == 0 || !strings.Contains(errOut, "token_url") {
		t.Errorf("a broken configuration: exit %d, %q", code, errOut)
	}
}

func TestStatusCommand(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	t.Setenv("ST_SECRET", as.Secret)
	c := startCaddyAdmin(t, fmt.Sprintf(`http://LISTEN {
	oauth_bearer {
		token_url     %s
		client_id     %s
		client_secret {env.ST_SECRET}
	}
	reverse_proxy %s
}`, as.tokenURL(), as.ClientID, up.hostport()))
	if status, _ := c.get("/x"); status != 200 {
		t.Fatal("request failed")
	}
	out, errOut, code := runCaddyCommand(t, "oauth-bearer", "status", "--address", c.admin)
	t.Logf("caddy oauth-bearer status:\n%s", out)
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut)
	}
	for _, want := range []string{"PROVIDER", "generic", as.ClientID, "client_credentials", "valid", "fetched"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q", want)
		}
	}
	if !strings.Contains(out, "in 1h0m0s") && !strings.Contains(out, "in 59m5") {
		t.Errorf("status output does not say the token expires in an hour")
	}
	assertNoSecrets(t, out, as.Secret, "tok-")
}
