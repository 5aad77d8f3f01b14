package oauthbearer

// Tests of mtls.go against a real TLS server on 127.0.0.1 that requires and
// verifies client certificates, with a CA and certificates made here.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mtlsTestCA is a certificate authority for the tests.
type mtlsTestCA struct {
	key  crypto.Signer
	cert *x509.Certificate
}

// newMTLSTestCA makes a self-signed root CA.
func newMTLSTestCA(t *testing.T, name string) *mtlsTestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := mtlsTemplate(name)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign
	return &mtlsTestCA{key: key, cert: mtlsCreate(t, tmpl, tmpl, key.Public(), key)}
}

func mtlsTemplate(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
}

func mtlsCreate(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// intermediate makes a CA signed by ca.
func (ca *mtlsTestCA) intermediate(t *testing.T, name string) *mtlsTestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := mtlsTemplate(name)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign
	return &mtlsTestCA{key: key, cert: mtlsCreate(t, tmpl, ca.cert, key.Public(), ca.key)}
}

// issueClient makes a client certificate for key.
func (ca *mtlsTestCA) issueClient(t *testing.T, cn string, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := mtlsTemplate(cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return mtlsCreate(t, tmpl, ca.cert, key.Public(), ca.key)
}

// issueServer makes a server certificate for 127.0.0.1.
func (ca *mtlsTestCA) issueServer(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := mtlsTemplate("127.0.0.1")
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	c := mtlsCreate(t, tmpl, ca.cert, key.Public(), ca.key)
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}
}

// newMTLSServer starts an HTTPS server on 127.0.0.1 that requires a client
// certificate verified against clientCA and answers with its common name.
func newMTLSServer(t *testing.T, serverCA, clientCA *mtlsTestCA, maxVersion uint16) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.cert)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCA.issueServer(t)},
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
func lastErrorOf(r *clientCertReloader) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// replaceFile replaces path by a new file, as cert-manager or a secret
// volume does (write, then rename).
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// Rotation on disk shows in the next handshake: by rename (one file at a
// time, the half-rotated pair never used) and in place; a chain in the
// certificate file is sent whole.
func TestClientCertReloaderRotation(t *testing.T) {
	root := newMTLSTestCA(t, "root")
	inter := root.intermediate(t, "intermediate")
	srv := newMTLSServer(t, root, root, 0)
	k := clientAuthKeys()

	certA := root.issueClient(t, "client-a", k.p256)
	certB := inter.issueClient(t, "client-b", k.rsa)
	certC := root.issueClient(t, "client-c-with-a-longer-name", k.ed)

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	replaceFile(t, certFile, pemOf("CERTIFICATE", certA.Raw))
	replaceFile(t, keyFile, pkcs8PEM(t, k.p256))

	r, err := newClientCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := trusting(r.tlsConfig(), root.cert)
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
	replaceFile(t, certFile, append(pemOf("CERTIFICATE", certB.Raw), pemOf("CERTIFICATE", inter.cert.Raw)...))
	expect("client-a", 1, 2)
	if err := lastErrorOf(r); err == nil || err.Error() != "mtls: client certificate "+certFile+" does not match client key "+keyFile {
		t.Fatalf("lastError %v", err)
	}
	expect("client-a", 1, 2) // the same broken pair is not read again at once

	// The key follows (PKCS#1 RSA, after an EC key): the new pair, with
	// its intermediate, which the server needs to verify it.
	replaceFile(t, keyFile, pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.rsa)))
	expect("client-b", 2, 3)
	if err := lastErrorOf(r); err != nil {
		t.Fatalf("lastError %v after a good load", err)
	}

	// Rewritten in place (same files, new content).
	if err := os.WriteFile(certFile, pemOf("CERTIFICATE", certC.Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pkcs8PEM(t, k.ed), 0o600); err != nil {
		t.Fatal(err)
	}
	expect("client-c-with-a-longer-name", 3, 4)

	cur, gen := r.current()
	sum := sha256.Sum256(certC.Raw)
	if gen != 3 || !cur.Leaf.Equal(certC) || certThumbprint(cur.Leaf) != base64.RawURLEncoding.EncodeToString(sum[:]) {
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
	root := newMTLSTestCA(t, "root")
	k := clientAuthKeys()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	replaceFile(t, certFile, pemOf("CERTIFICATE", root.issueClient(t, "a", k.p256).Raw))
	replaceFile(t, keyFile, sec1PEM(t, k.p256))
	r, err := newClientCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	replaceFile(t, certFile, pemOf("CERTIFICATE", root.issueClient(t, "b", k.p256b).Raw))

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
	root := newMTLSTestCA(t, "root")
	other := newMTLSTestCA(t, "other")
	k := clientAuthKeys()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	replaceFile(t, certFile, pemOf("CERTIFICATE", root.issueClient(t, "good", k.p384).Raw))
	replaceFile(t, keyFile, pkcs8PEM(t, k.p384))
	r, err := newClientCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}

	tls12 := newMTLSServer(t, root, root, tls.VersionTLS12)
	if got, err := mtlsGet(t, trusting(r.tlsConfig(), root.cert), tls12.URL); err != nil || got != "good" {
		t.Fatalf("TLS 1.2: %q, %v", got, err)
	}

	srv := newMTLSServer(t, root, root, 0)
	cfg := r.tlsConfig()
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
	if got, err := mtlsGet(t, trusting(r.tlsConfig(), root.cert), strict.URL); err == nil {
		t.Fatalf("a server that does not trust the client's CA answered %q", got)
	}
}

// Configuration errors name the files and never hold key material.
func TestClientCertReloaderErrors(t *testing.T) {
	root := newMTLSTestCA(t, "root")
	k := clientAuthKeys()
	certPEM := pemOf("CERTIFICATE", root.issueClient(t, "a", k.p256).Raw)
	keyPEM := pkcs8PEM(t, k.p256)
	otherKey := pkcs8PEM(t, k.p256b)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		replaceFile(t, p, data)
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
		assertNoKeyMaterial(t, err.Error(), keyPEM, otherKey)
	}
}
