package oauthbearer

// Helpers of the end-to-end tests of client authentication: the fakeAS
// for assertions, the one behind TLS that requires a client certificate,
// and the checks that nothing secret leaked.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// newJWTAS is a fakeAS for clients that authenticate with assertions
// (register them) or use the JWT bearer grant: it names the n-th token it
// issues at-<client>-<n>.
func newJWTAS(t *testing.T) *fakeAS {
	as := newFakeAS(t)
	as.Mint = func(client string, n int) string { return fmt.Sprintf("at-%s-%d", client, n) }
	return as
}

// newMTLSAS is a fakeAS behind TLS with a certificate of serverCA that
// requires a client certificate of clientCA (RFC 8705 tls_client_auth):
// the client_id in the body must be the certificate's common name, and no
// other client credential may come. It names its tokens
// at-mtls-<common name>-<n>.
func newMTLSAS(t *testing.T, serverCA, clientCA *testkeys.CA) *fakeAS {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(clientCA.Cert)
	as := newFakeASTLS(t, &tls.Config{
		Certificates: []tls.Certificate{serverCA.IssueServer(t)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
	})
	as.Mint = func(client string, n int) string { return fmt.Sprintf("at-mtls-%s-%d", client, n) }
	return as
}

// assertNoValueLeak fails if text holds one of the values (assertions,
// secrets), or the signature of an assertion on its own.
func assertNoValueLeak(t *testing.T, where, text string, values ...string) {
	t.Helper()
	for _, v := range values {
		if v == "" {
			t.Fatalf("assertNoValueLeak(%s): empty value", where)
		}
		if strings.Contains(text, v) {
			t.Errorf("%s holds a secret value or an assertion (%d characters)", where, len(v))
			continue
		}
		if parts := strings.Split(v, "."); len(parts) == 3 && len(parts[2]) >= 16 && strings.Contains(text, parts[2]) {
			t.Errorf("%s holds an assertion's signature", where)
		}
	}
}
