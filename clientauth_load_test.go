package oauthbearer

// Load-time errors of client authentication, as a user meets them: a
// Caddyfile adapted and validated (every module provisioned, as caddy
// validate and caddy run do). Rules of combination are reported by the
// Caddyfile parser on the line of the subdirective at fault; what can only
// be found by reading a file (a key that does not parse, an algorithm that
// does not fit it, a certificate of another key, an assertion file that
// cannot be read) is reported by Provision, naming the subdirective and the
// file. No error ever holds key material, a secret or an assertion.

import (
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// loadCaddyfile adapts site blocks (LISTEN as in startCaddy) into a
// complete Caddyfile and, when that succeeds, validates the result. It
// returns the Caddyfile's text and the error of each step.
func loadCaddyfile(t *testing.T, sites string) (text string, adaptErr, validateErr error) {
	t.Helper()
	text = "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tstorage file_system " + t.TempDir() + "\n}\n" +
		strings.ReplaceAll(sites, "LISTEN", "127.0.0.1:0")
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return text, err, nil
	}
	var c caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfg, &c); err != nil {
		t.Fatal(err)
	}
	caddyMu.Lock()
	defer caddyMu.Unlock()
	return text, nil, caddy.Validate(&c)
}

// lineOf is the 1-based line of text that starts (after tabs) with prefix.
func lineOf(t *testing.T, text, prefix string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimLeft(l, "\t"), prefix) {
			return i + 1
		}
	}
	t.Fatalf("no line starts with %q", prefix)
	return 0
}

func TestClientAuthLoadErrors(t *testing.T) {
	k := testkeys.Keys()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rsaPEM := testkeys.PKCS8PEM(t, k.RSA)
	p256PEM := testkeys.SEC1PEM(t, k.P256)
	garbage := make([]byte, 300)
	rand.Read(garbage)
	garbagePEM := testkeys.PEM("PRIVATE KEY", garbage)
	truncated := x509.MarshalPKCS1PrivateKey(k.RSA)
	truncatedPEM := testkeys.PEM("RSA PRIVATE KEY", truncated[:len(truncated)/2])
	otherCert := testkeys.SelfSignedCert(t, k.RSA2, "not-this-key")
	const secret = "load-error-secret-0123456789abcdefghijklmnopqrstuv"
	notJWT := "this-is-not-a-jwt-but-might-be-a-secret-4f2a9c"
	pems := [][]byte{rsaPEM, p256PEM, garbagePEM, truncatedPEM}

	paths := map[string]string{
		"RSAKEY":     write("rsa.key", rsaPEM),
		"P256KEY":    write("p256.key", p256PEM),
		"GARBAGEKEY": write("garbage.key", garbagePEM),
		"TRUNCKEY":   write("truncated.key", truncatedPEM),
		"OTHERCERT":  write("other.crt", testkeys.PEM("CERTIFICATE", otherCert.Raw)),
		"NOTJWT":     write("not-a-jwt", []byte(notJWT+"\n")),
		"EMPTYFILE":  write("empty", nil),
		"MISSING":    filepath.Join(dir, "no-such-file"),
		"ADIR":       dir,
		"SAFILE":     write("sa.json", testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", nil)),
		"NOTSA":      write("not-sa.json", []byte(`{"type":"authorized_user","client_secret":"`+secret+`"}`)),
	}
	t.Setenv("OAB_LE_BADKEY", string(garbagePEM))
	t.Setenv("OAB_LE_SECRET", secret)

	const head = "\t\ttoken_url https://idp.example.com/oauth2/token\n\t\tclient_id my-client\n"
	cases := []struct {
		name  string
		lines string
		// field is the subdirective the error names; at is the line
		// prefix it must be reported on when the Caddyfile parser finds
		// it ("" when Provision finds it).
		field, at string
		want      []string
	}{
		{"key does not parse", "\t\tclient_auth private_key_jwt\n\t\tprivate_key GARBAGEKEY\n",
			"private_key", "", []string{"GARBAGEKEY", "not a valid private key"}},
		{"key truncated", "\t\tclient_auth private_key_jwt\n\t\tprivate_key TRUNCKEY\n",
			"private_key", "", []string{"TRUNCKEY"}},
		{"inline key does not parse", "\t\tclient_auth private_key_jwt\n\t\tprivate_key {env.OAB_LE_BADKEY}\n",
			"private_key", "", []string{"the inline PEM value"}},
		{"key file missing", "\t\tclient_auth private_key_jwt\n\t\tprivate_key MISSING\n",
			"private_key", "", []string{"MISSING", "does not exist"}},
		{"ES256 with an RSA key", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tsigning_alg ES256\n",
			"signing_alg", "", []string{"ES256", "RSA", "RS256"}},
		{"HS256 with a private key", "\t\tclient_auth private_key_jwt\n\t\tprivate_key P256KEY\n\t\tsigning_alg HS256\n",
			"signing_alg", "", []string{"HS256", "client_secret_jwt"}},
		{"certificate of another key", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tcertificate OTHERCERT\n",
			"certificate", "", []string{"does not match"}},
		{"assertion file missing", "\t\tclient_assertion_file MISSING\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"MISSING", "does not exist"}},
		{"assertion file is a directory", "\t\tclient_assertion_file ADIR\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"ADIR", "cannot be read"}},
		{"assertion file empty", "\t\tclient_assertion_file EMPTYFILE\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"EMPTYFILE", "empty"}},
		{"assertion file holds no JWT", "\t\tclient_assertion_file NOTJWT\n\t\ttoken_store memory\n",
			"client_assertion_file", "", []string{"NOTJWT", "does not hold a JWT"}},
		{"client_secret with private_key_jwt", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tclient_secret {env.OAB_LE_SECRET}\n",
			"client_secret", "client_secret", []string{"not used with client_auth private_key_jwt"}},
		{"literal client_secret with private_key_jwt", "\t\tclient_auth private_key_jwt\n\t\tprivate_key RSAKEY\n\t\tclient_secret " + secret + "\n",
			"client_secret", "client_secret", []string{"not used with client_auth private_key_jwt"}},
		{"client_assertion_file with client_auth basic", "\t\tclient_auth basic\n\t\tclient_secret {env.OAB_LE_SECRET}\n\t\tclient_assertion_file NOTJWT\n",
			"client_assertion_file", "client_assertion_file", []string{"client_auth basic"}},
		{"client_assertion_file and private_key", "\t\tclient_assertion_file NOTJWT\n\t\tprivate_key RSAKEY\n",
			"client_assertion_file", "client_assertion_file", []string{"not both"}},
		{"tls without tls_client_cert", "\t\tclient_auth tls\n",
			"client_auth", "client_auth", []string{"tls_client_cert"}},
		{"tls_client_cert of another key", "\t\tclient_auth tls\n\t\ttls_client_cert OTHERCERT RSAKEY\n",
			"tls_client_cert", "", []string{"OTHERCERT", "does not match"}},
		{"service_account_file without grant jwt_bearer", "\t\tservice_account_file SAFILE\n",
			"service_account_file", "service_account_file", []string{"grant jwt_bearer"}},
		{"service_account_file that is not a service account", "\t\tgrant jwt_bearer\n\t\tclient_auth none\n\t\tservice_account_file NOTSA\n",
			"service_account_file", "", []string{"NOTSA", "authorized_user"}},
		{"private_key_jwt without a key", "\t\tclient_auth private_key_jwt\n",
			"client_auth", "client_auth", []string{"private_key"}},
		{"key_id without private_key", "\t\tclient_secret {env.OAB_LE_SECRET}\n\t\tkey_id k1\n",
			"key_id", "key_id", []string{"only with private_key"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lines := tc.lines
			want := append([]string{tc.field + ":"}, tc.want...)
			for name, p := range paths {
				lines = strings.ReplaceAll(lines, name, p)
				for i := range want {
					want[i] = strings.ReplaceAll(want[i], name, p)
				}
			}
			text, adaptErr, validateErr := loadCaddyfile(t, "http://LISTEN {\n\toauth_bearer {\n"+head+lines+"\t}\n\treverse_proxy 127.0.0.1:9\n}\n")
			var err error
			switch {
			case tc.at != "":
				if adaptErr == nil {
					t.Fatalf("the Caddyfile adapted (validate: %v); want a parse error on the %s line", validateErr, tc.at)
				}
				err = adaptErr
				want = append(want, "Caddyfile:"+strconv.Itoa(lineOf(t, text, tc.at+" ")))
			case adaptErr != nil:
				t.Fatalf("adapting: %v; want the Caddyfile to adapt and Provision to fail", adaptErr)
			case validateErr == nil:
				t.Fatal("the configuration validated")
			default:
				err = validateErr
			}
			msg := err.Error()
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			testkeys.AssertNoKeyMaterial(t, "the error", msg, pems...)
			assertNoValueLeak(t, "the error", msg, secret, notJWT)
		})
	}
}

// private_key without client_auth, for a client credentials grant: the
// comment of clientAuthMethod says the key implies private_key_jwt, so the
// configuration loads and signs its assertions.
//
// FAILS (production): clientAuthMethod has no case for a private key; the
// generic preset's basic applies and loading stops with "client_secret: is
// required (client_auth basic)".
func TestClientAuthPrivateKeyImpliesPrivateKeyJWT(t *testing.T) {
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, testkeys.Keys().P256))
	h := &Handler{Credentials: Credentials{TokenURL: "https://idp.example.com/oauth2/token", ClientID: "my-client", PrivateKey: keyPath}}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		t.Fatalf("configure: %v", err)
	}
	if cs.ClientAuth != "private_key_jwt" || cs.signer == nil {
		t.Fatalf("client_auth %q (signer set: %v), want private_key_jwt", cs.ClientAuth, cs.signer != nil)
	}
}

// tls_client_cert and its key given as PEM (from {env.X}): config.go
// documents both fields as "paths, or PEM".
//
// FAILS (production): the values are passed to the reloader as paths, and
// loading stops with "tls_client_cert: mtls client certificate: the
// configured value: no such file or directory".
func TestClientAuthTLSClientCertInlinePEM(t *testing.T) {
	ca := testkeys.NewCA(t, "inline CA")
	key := testkeys.Keys().P256
	keyPEM := testkeys.SEC1PEM(t, key)
	t.Setenv("OAB_INLINE_TLS_CERT", string(testkeys.PEM("CERTIFICATE", ca.IssueClient(t, "inline", key).Raw)))
	t.Setenv("OAB_INLINE_TLS_KEY", string(keyPEM))
	h := &Handler{Credentials: Credentials{TokenURL: "https://idp.example.com/oauth2/token", ClientID: "inline",
		ClientAuth: "tls", TLSClientCert: "{env.OAB_INLINE_TLS_CERT}", TLSClientKey: "{env.OAB_INLINE_TLS_KEY}"}}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		testkeys.AssertNoKeyMaterial(t, "the error", err.Error(), keyPEM)
		t.Fatalf("configure: %v", err)
	}
	if cert, _ := cs.tlsCert.Current(); cert == nil || cert.Leaf.Subject.CommonName != "inline" {
		t.Fatalf("client certificate %v", cert)
	}
}
