package oauthbearer

// Issue 14, errors: a failure on this side has a code of its own that names
// the subdirective, and a JWT bearer assertion always names its subject.

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// A failure on this side, before anything is sent (the assertion file is
// gone), is reported with a code of its own, local_config_error, and a
// description that names the subdirective: never as the provider's OAuth
// code invalid_request. The client's answer, the log, the admin API and
// the metrics all say so, and the token endpoint is not asked.
func TestLocalFailureHasItsOwnCode(t *testing.T) {
	key := testkeys.Keys().P384
	s := newJWTAS(t)
	s.register("workload", key.Public(), "")
	path := testkeys.WriteFile(t, "token", []byte("e30.e30.c2ln")) // read (and checked) when the config loads
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		token_url   %s
		client_id   workload
		token_store memory
		client_assertion_file %s`, s.tokenURL(), path), up)
	c := startCaddyAdmin(t, sites)
	initMetrics()
	before := testutil.ToFloat64(metrics.tokenRequests.WithLabelValues("generic", oauthclient.CodeLocalConfigError))

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	status, body := c.get("/")
	if status != http.StatusBadGateway || !strings.Contains(body, "(local_config_error)") {
		t.Errorf("with the assertion file gone: %d %q; want 502 with the code local_config_error", status, body)
	}
	if n := s.tokenRequests(); n != 0 {
		t.Errorf("the token endpoint got %d requests; nothing can be sent without an assertion", n)
	}
	logs := c.logs()
	var failed map[string]any
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"token request failed"`) {
			json.Unmarshal([]byte(l), &failed)
		}
	}
	if failed["error"] != oauthclient.CodeLocalConfigError || !strings.HasPrefix(fmt.Sprint(failed["error_description"]), "client_assertion_file: "+path+" does not exist") {
		t.Errorf("the log line of the failed token request: %v; want error local_config_error naming client_assertion_file and the file", failed)
	}
	sources, _ := adminSources(t, c)
	last, _ := findSource(t, sources, "client_credentials")["last_error"].(map[string]any)
	if last["code"] != oauthclient.CodeLocalConfigError || !strings.HasPrefix(fmt.Sprint(last["description"]), "client_assertion_file: ") {
		t.Errorf("the admin API's last_error: %v", last)
	}
	if got := testutil.ToFloat64(metrics.tokenRequests.WithLabelValues("generic", oauthclient.CodeLocalConfigError)) - before; got != 1 {
		t.Errorf("caddy_oauth_bearer_token_requests_total{result=\"local_config_error\"} grew by %v, want 1", got)
	}
}

// failingKey is a key that cannot sign (a key in an HSM or KMS that is
// unreachable, say).
type failingKey struct{ crypto.Signer }

func (failingKey) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("the key service is unreachable")
}

// A signing failure names the subdirective of the key that failed to sign:
// private_key for client authentication and for the JWT bearer grant.
func TestLocalSigningFailureNamesTheKey(t *testing.T) {
	key := testkeys.Keys().RSA
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, key))
	s := newJWTAS(t)
	for _, grant := range []string{grantClientCredentials, grantJWTBearer} {
		t.Run(grant, func(t *testing.T) {
			h := &Handler{Credentials: Credentials{TokenURL: s.tokenURL(), ClientID: "signer-client", PrivateKey: keyPath}, Grant: grant}
			cs, err := h.configure(provisionReplacer())
			if err != nil {
				t.Fatal(err)
			}
			failing, err := oauthclient.NewAssertionSigner(failingKey{key}, "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			failing.Field, cs.signer = cs.signer.Field, failing
			ep := newEndpoint(cs, &clock{})
			defer ep.Close()
			before := s.tokenRequests()
			_, err = ep.ClientCredentials(context.Background())
			var te *TokenError
			if !errors.As(err, &te) || te.Code != oauthclient.CodeLocalConfigError || !strings.HasPrefix(te.Description, "private_key: ") ||
				!strings.Contains(te.Description, "the key service is unreachable") {
				t.Errorf("error %v; want local_config_error naming private_key and the cause", err)
			}
			if te != nil && (te.Permanent() || resultClass(te) != oauthclient.CodeLocalConfigError) {
				t.Errorf("permanent %v, result class %q", te.Permanent(), resultClass(te))
			}
			if s.tokenRequests() != before {
				t.Errorf("a request was sent")
			}
		})
	}
}

// RFC 7523 §3: the JWT bearer grant's assertion must have a sub. Signed
// with private_key and no subject, it is the client acting for itself: sub
// = the client id. (A Google service account sends none unless subject is
// set: TestClientAuthE2EJWTBearerGoogle.)
func TestJWTBearerPrivateKeyDefaultSubject(t *testing.T) {
	key := testkeys.Keys().RSA
	keyPath := testkeys.WriteFile(t, "sf.key", testkeys.PKCS8PEM(t, key))
	s := newJWTAS(t)
	s.register("3MVG9-consumer-key", key.Public(), "")
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", fmt.Sprintf(`		grant       jwt_bearer
		token_url   %s
		client_id   3MVG9-consumer-key
		private_key %s
		scope       api`, s.tokenURL(), keyPath), up))
	status, body := c.get("/")
	if status != http.StatusOK {
		t.Fatalf("GET /: %d %s (the server's last refusal: %q)", status, body, s.lastRefusal())
	}
	if g := s.issuedLog(); len(g) != 1 || g[0].Sub != "3MVG9-consumer-key" || g[0].Client != "3MVG9-consumer-key" {
		t.Errorf("issued %+v; want one, with sub = iss = the client id", g)
	}
}
