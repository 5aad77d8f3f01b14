package oauthclient

// Tests of mtls.go against a real TLS server on 127.0.0.1 that requires and
// verifies client certificates, with a CA and certificates made here.

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// newMTLSServer starts an HTTPS server on 127.0.0.1 that requires a client
// certificate verified against clientCA and answers with its common name.
func newMTLSServer(t *testing.T, serverCA, clientCA *testkeys.CA, maxVersion uint16) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCA.IssueServer(t)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MaxVersion:   maxVersion,
	}
	// the handshakes refused on purpose would log
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// mtlsGet makes one request on a new connection and returns the common
// name the server saw.
func mtlsGet(t *testing.T, cfg *tls.Config, url string) (string, error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// trusting adds roots to a client TLS configuration, as the endpoint does
// with ca_file.
func trusting(cfg *tls.Config, roots ...*x509.Certificate) *tls.Config {
	cfg.RootCAs = x509.NewCertPool()
	for _, c := range roots {
		cfg.RootCAs.AddCert(c)
	}
	return cfg
}

// lastErrorOf is the error of r's last load attempt, nil after a success.
func lastErrorOf(r *ClientCert) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Rotation on disk shows in the next handshake: by rename (one file at a
// time, the half-rotated pair never used) and in place; a chain in the
// certificate file is sent whole.
func TestClientCertReloaderRotation(t *testing.T) {
	root := testkeys.NewCA(t, "root")
	inter := root.Intermediate(t, "intermediate")
	srv := newMTLSServer(t, root, root, 0)
	k := testkeys.Keys()

	certA := root.IssueClient(t, "client-a", k.P256)
	certB := inter.IssueClient(t, "client-b", k.RSA)
	certC := root.IssueClient(t, "client-c-with-a-longer-name", k.Ed)

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	testkeys.ReplaceFile(t, certFile, testkeys.PEM("CERTIFICATE", certA.Raw))
	testkeys.ReplaceFile(t, keyFile, testkeys.PKCS8PEM(t, k.P256))

	r, err := newClientCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := trusting(r.TLSConfig(), root.Cert)
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientSessionCache != nil {
		t.Fatalf("MinVersion %x, ClientSessionCache %v", cfg.MinVersion, cfg.ClientSessionCache)
	}
	expect := func(cn string, gen, attempts uint64) {
		t.Helper()
		got, err := mtlsGet(t, cfg, srv.URL)
		if err != nil || got != cn {
			t.Fatalf("server saw %q, %v; want %q", got, err, cn)
		}
		r.mu.Lock()
		g, a := r.gen, r.attempts
		r.mu.Unlock()
		if g != gen || a != attempts {
			t.Fatalf("generation %d after %d loads; want %d after %d", g, a, gen, attempts)
		}
	}
	expect("client-a", 1, 1)
	expect("client-a", 1, 1) // nothing changed: nothing read

	// The new certificate arrives before its key: the old pair stays.
	testkeys.ReplaceFile(t, certFile, append(testkeys.PEM("CERTIFICATE", certB.Raw), testkeys.PEM("CERTIFICATE", inter.Cert.Raw)...))
	expect("client-a", 1, 2)
	if err := lastErrorOf(r); err == nil || err.Error() != "mtls: client certificate "+certFile+" does not match client key "+keyFile {
		t.Fatalf("lastError %v", err)
	}
	expect("client-a", 1, 2) // the same broken pair is not read again at once

	// The key follows (PKCS#1 RSA, after an EC key): the new pair, with
	// its intermediate, which the server needs to verify it.
	testkeys.ReplaceFile(t, keyFile, testkeys.PEM("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.RSA)))
	expect("client-b", 2, 3)
	if err := lastErrorOf(r); err != nil {
		t.Fatalf("lastError %v after a good load", err)
	}

	// Rewritten in place (same files, new content).
	if err := os.WriteFile(certFile, testkeys.PEM("CERTIFICATE", certC.Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, testkeys.PKCS8PEM(t, k.Ed), 0o600); err != nil {
		t.Fatal(err)
	}
	expect("client-c-with-a-longer-name", 3, 4)

	cur, gen := r.Current()
	sum := sha256.Sum256(certC.Raw)
	if gen != 3 || !cur.Leaf.Equal(certC) || CertThumbprint(cur.Leaf) != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Fatalf("current: generation %d, leaf %s", gen, cur.Leaf.Subject.CommonName)
	}

	// A file that disappears keeps the pair in use too.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	expect("client-c-with-a-longer-name", 3, 4)
	if err := lastErrorOf(r); err == nil || !strings.HasPrefix(err.Error(), "mtls client key: "+keyFile) {
		t.Fatalf("lastError %v", err)
	}
}

// A pair that fails to load is tried again after clientCertRetry even if
// neither file changed (a change within one timestamp tick is not missed
// for long).
func TestClientCertReloaderRetry(t *testing.T) {
	root := testkeys.NewCA(t, "root")
	k := testkeys.Keys()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	testkeys.ReplaceFile(t, certFile, testkeys.PEM("CERTIFICATE", root.IssueClient(t, "a", k.P256).Raw))
	testkeys.ReplaceFile(t, keyFile, testkeys.SEC1PEM(t, k.P256))
	r, err := newClientCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	testkeys.ReplaceFile(t, certFile, testkeys.PEM("CERTIFICATE", root.IssueClient(t, "b", k.P256b).Raw))

	attempts := func() uint64 {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.attempts
	}
	for i, step := range []struct {
		advance time.Duration
		want    uint64
	}{{0, 2}, {0, 2}, {clientCertRetry / 2, 2}, {clientCertRetry, 3}, {0, 3}} {
		now = now.Add(step.advance)
		c, err := r.getClientCertificate(nil)
		if err != nil || c.Leaf.Subject.CommonName != "a" {
			t.Fatalf("step %d: %v, %v", i, c, err)
		}
		if got := attempts(); got != step.want {
			t.Fatalf("step %d: %d load attempts, want %d", i, got, step.want)
		}
	}
}

// The TLS configuration: the extra CA is trusted besides the system roots,
// without it the test server is not; a certificate from a CA that the server
// does not trust is refused by it; TLS 1.2 works too.
func TestClientCertReloaderTLSConfig(t *testing.T) {
	root := testkeys.NewCA(t, "root")
	other := testkeys.NewCA(t, "other")
	k := testkeys.Keys()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	testkeys.ReplaceFile(t, certFile, testkeys.PEM("CERTIFICATE", root.IssueClient(t, "good", k.P384).Raw))
	testkeys.ReplaceFile(t, keyFile, testkeys.PKCS8PEM(t, k.P384))
	r, err := newClientCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}

	tls12 := newMTLSServer(t, root, root, tls.VersionTLS12)
	if got, err := mtlsGet(t, trusting(r.TLSConfig(), root.Cert), tls12.URL); err != nil || got != "good" {
		t.Fatalf("TLS 1.2: %q, %v", got, err)
	}

	srv := newMTLSServer(t, root, root, 0)
	cfg := r.TLSConfig()
	if cfg.RootCAs != nil {
		t.Fatal("RootCAs set: the endpoint adds those of ca_file")
	}
	_, err = mtlsGet(t, cfg, srv.URL)
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("without the extra CA: %v, want a certificate verification error", err)
	}

	// The server trusts only "other" for clients.
	strict := newMTLSServer(t, root, other, 0)
	if got, err := mtlsGet(t, trusting(r.TLSConfig(), root.Cert), strict.URL); err == nil {
		t.Fatalf("a server that does not trust the client's CA answered %q", got)
	}
}

// Configuration errors name the files and never hold key material.
func TestClientCertReloaderErrors(t *testing.T) {
	root := testkeys.NewCA(t, "root")
	k := testkeys.Keys()
	certPEM := testkeys.PEM("CERTIFICATE", root.IssueClient(t, "a", k.P256).Raw)
	keyPEM := testkeys.PKCS8PEM(t, k.P256)
	otherKey := testkeys.PKCS8PEM(t, k.P256b)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		testkeys.ReplaceFile(t, p, data)
		return p
	}
	cert, key := write("cert.pem", certPEM), write("key.pem", keyPEM)
	missing := filepath.Join(dir, "missing.pem")
	for _, c := range []struct {
		cert, key, want string
	}{
		{missing, key, "mtls client certificate: " + missing + ": no such file or directory"},
		{cert, missing, "mtls client key: " + missing + ": no such file or directory"},
		{cert, write("other.pem", otherKey), "mtls: client certificate " + cert + " does not match client key " + filepath.Join(dir, "other.pem")},
		{cert, write("garbage.pem", []byte("garbage")), "mtls client key: " + filepath.Join(dir, "garbage.pem") + " holds no PEM block"},
		{key, key, "mtls client certificate: " + key + " holds no CERTIFICATE block"},
		{cert, cert, "mtls client key: " + cert + " holds no private key (found CERTIFICATE)"},
	} {
		_, err := newClientCertReloader(c.cert, c.key)
		if err == nil || err.Error() != c.want {
			t.Errorf("error %v\nwant %s", err, c.want)
			continue
		}
		testkeys.AssertNoKeyMaterial(t, "the error", err.Error(), keyPEM, otherKey)
	}
}
