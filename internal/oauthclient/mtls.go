package oauthclient

// RFC 8705 mutual-TLS client authentication: the client certificate comes
// from a certificate file and a key file that their owner (cert-manager, a
// Kubernetes secret volume, certbot, an operator) replaces while the process
// runs.

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// clientCertRetry is how soon a pair that failed to load (half rotated:
// the new certificate beside the old key) is tried again when neither file
// changed since.
const clientCertRetry = time.Second

// ClientCert serves the client certificate of a TLS handshake from
// a certificate file and a key file, re-reading them when either changes.
//
// When: on every handshake that asks for a client certificate
// (tls.Config.GetClientCertificate), both files are stat'ed, and read again
// if either one's modification time, size or identity (inode: a rename or a
// symlink swap) differs from those of the pair in use. Two stats per
// handshake cost microseconds against a handshake's milliseconds, and
// handshakes are rare since connections are kept alive; no timer or polling
// interval is needed and a rotation is seen by the very next handshake. An
// in-place rewrite of the same size within one file-system timestamp tick
// would go unseen until the next change; real rotations (minutes apart, by
// rename or symlink swap) are not affected.
//
// A pair that fails to load (unreadable, mismatched because only one file
// was replaced so far, malformed) never breaks handshakes: the previous
// pair is kept, the error is kept (lastErr, which View shows), and the load
// is tried again when a file changes or after clientCertRetry.
//
// Each change of state is logged once, to the logger of its owner (LogTo):
// a failure at error level (again only when the error changes, never per
// handshake), a successful reload and the end of a failure at info level.
// View describes the state (the admin API shows it).
//
// Rotation shows on new connections: kept-alive ones keep the identity
// they were made with (generation tells a caller when to close idle
// connections or drop certificate-bound tokens).
type ClientCert struct {
	certFile, keyFile string
	now               func() time.Time // for the retry delay; tests replace it

	mu       sync.Mutex
	cert     *tls.Certificate
	certStat os.FileInfo // of certFile when cert was loaded
	keyStat  os.FileInfo
	gen      uint64 // successful loads so far
	attempts uint64 // loads tried so far, failed ones included
	lastErr  error  // of the last load attempt; nil after a success
	// the stats of the last failed attempt, and when it was
	failedCert, failedKey os.FileInfo
	failedAt              time.Time
	failingSince          time.Time // when lastErr began; zero without one
	static                bool      // given as PEM, not files: nothing to reload
	logger                func() *zap.Logger
}

// NewClientCert makes the client certificate of a configuration: a
// reloader of two files, or, when the values are the PEM themselves (as
// {env.…} or {file.…} give them), the pair they hold, loaded once.
func NewClientCert(cert, key string) (*ClientCert, error) {
	if !strings.Contains(cert, pemBegin) && !strings.Contains(key, pemBegin) {
		return newClientCertReloader(cert, key)
	}
	certPEM, _, err := readPEMValue("tls_client_cert", cert)
	if err != nil {
		return nil, err
	}
	keyPEM, _, err := readPEMValue("tls_client_cert", key)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, errors.New("mtls client certificate: the certificate and the key given do not make a pair (or do not parse)")
	}
	return &ClientCert{cert: &pair, gen: 1, attempts: 1, static: true, now: time.Now}, nil
}

// newClientCertReloader loads the pair once; an error here (missing file,
// no certificate, a key that does not match) is a configuration error.
func newClientCertReloader(certFile, keyFile string) (*ClientCert, error) {
	r := &ClientCert{certFile: certFile, keyFile: keyFile, now: time.Now}
	cs, ks, err := r.stat()
	if err != nil {
		return nil, err
	}
	cert, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cert, r.certStat, r.keyStat, r.gen, r.attempts = cert, cs, ks, 1, 1
	return r, nil
}

// stat returns the file info of both files.
func (r *ClientCert) stat() (certStat, keyStat os.FileInfo, err error) {
	if certStat, err = os.Stat(r.certFile); err != nil {
		return nil, nil, fmt.Errorf("mtls client certificate: %s: %v", safePathName(r.certFile), pathErrCause(err))
	}
	if keyStat, err = os.Stat(r.keyFile); err != nil {
		return nil, nil, fmt.Errorf("mtls client key: %s: %v", safePathName(r.keyFile), pathErrCause(err))
	}
	return certStat, keyStat, nil
}

// load reads and parses both files and checks that they belong together.
func (r *ClientCert) load() (*tls.Certificate, error) {
	const certField, keyField = "mtls client certificate", "mtls client key"
	certPEM, err := readConfigFile(certField, r.certFile, 1<<20)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readConfigFile(keyField, r.keyFile, 1<<20)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertificatesPEM(certPEM, certField, safePathName(r.certFile))
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKeyPEM(keyPEM, keyField, safePathName(r.keyFile))
	if err != nil {
		return nil, err
	}
	if CheckCertificateKey(certs[0], key) != nil {
		return nil, fmt.Errorf("mtls: client certificate %s does not match client key %s",
			safePathName(r.certFile), safePathName(r.keyFile))
	}
	chain := make([][]byte, len(certs))
	for i, c := range certs {
		chain[i] = c.Raw
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: certs[0]}, nil
}

// sameStat reports whether two stats show the same file unchanged.
func sameStat(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// LogTo makes the reloader log the changes of its state to the logger
// that logger returns (the owner's newest); nil-safe.
func (r *ClientCert) LogTo(logger func() *zap.Logger) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logger = logger
}

// refresh reloads the pair if either file changed; r.mu is held. It
// returns what is to be logged of the outcome, to call once r.mu is
// released: nil when the state (the pair in use, the error) is unchanged.
func (r *ClientCert) refresh() (note func()) {
	if r.static {
		return nil
	}
	prevErr, prevGen := r.lastErr, r.gen
	r.reload()
	fields := []zap.Field{zap.String("certificate_file", safePathName(r.certFile)), zap.String("key_file", safePathName(r.keyFile))}
	switch {
	case r.lastErr != nil && (prevErr == nil || prevErr.Error() != r.lastErr.Error()):
		if prevErr == nil {
			r.failingSince = r.now()
		}
		return r.logNote(zap.ErrorLevel, "client certificate reload failed; the previous certificate is still presented, and the files are read again when they change",
			append(fields, zap.String("error", r.lastErr.Error()), zap.Time("failing_since", r.failingSince)))
	case r.gen != prevGen:
		r.failingSince = time.Time{}
		return r.logNote(zap.InfoLevel, "client certificate reloaded", append(fields, zap.Uint64("generation", r.gen),
			zap.Bool("after_failure", prevErr != nil), zap.String("subject", r.cert.Leaf.Subject.String()), zap.Time("not_after", r.cert.Leaf.NotAfter)))
	case prevErr != nil && r.lastErr == nil:
		r.failingSince = time.Time{}
		return r.logNote(zap.InfoLevel, "client certificate files usable again; the certificate in use is unchanged", fields)
	}
	return nil
}

// logNote makes the deferred write of a log entry to the owner's logger
// (nil without one); r.mu is held.
func (r *ClientCert) logNote(level zapcore.Level, msg string, fields []zap.Field) func() {
	if r.logger == nil {
		return nil
	}
	l := r.logger()
	return func() {
		if ce := l.Check(level, msg); ce != nil {
			ce.Write(fields...)
		}
	}
}

// reload reloads the pair if either file changed; r.mu is held.
func (r *ClientCert) reload() {
	cs, ks, err := r.stat()
	if err != nil {
		r.lastErr = err
		return
	}
	if sameStat(cs, r.certStat) && sameStat(ks, r.keyStat) {
		// The files are the pair in use (again, after a failed stat).
		r.lastErr = nil
		return
	}
	if sameStat(cs, r.failedCert) && sameStat(ks, r.failedKey) && r.now().Sub(r.failedAt) < clientCertRetry {
		return
	}
	r.attempts++
	cert, err := r.load()
	if err != nil {
		r.lastErr, r.failedCert, r.failedKey, r.failedAt = err, cs, ks, r.now()
		return
	}
	r.cert, r.certStat, r.keyStat, r.lastErr = cert, cs, ks, nil
	r.failedCert, r.failedKey = nil, nil
	r.gen++
}

// getClientCertificate is the tls.Config.GetClientCertificate of the
// reloader: the current pair, reloaded first if a file changed.
func (r *ClientCert) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	note := r.refresh()
	cert := r.cert
	r.mu.Unlock()
	if note != nil {
		note()
	}
	return cert, nil
}

// ClientCertView is the client certificate as the admin API shows it:
// who it names and until when, how many times it was loaded, and a
// failure to reload it. Never the key.
type ClientCertView struct {
	Subject    string    `json:"subject"`
	NotAfter   time.Time `json:"not_after"`
	Generation uint64    `json:"generation"` // 1 for the first load, one more per reload
	// ReloadError is why the files on disk are not the certificate in
	// use, since ReloadFailingSince.
	ReloadError        string     `json:"reload_error,omitempty"`
	ReloadFailingSince *time.Time `json:"reload_failing_since,omitempty"`
}

// View looks at the files (as a handshake would, so that a bad rotation
// shows before the next handshake, and is logged) and describes the
// certificate in use; nil for a nil reloader.
func (r *ClientCert) View() *ClientCertView {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	note := r.refresh()
	v := &ClientCertView{Generation: r.gen}
	if leaf := r.cert.Leaf; leaf != nil {
		v.Subject, v.NotAfter = leaf.Subject.String(), leaf.NotAfter.UTC()
	}
	if r.lastErr != nil {
		since := r.failingSince.UTC()
		v.ReloadError, v.ReloadFailingSince = r.lastErr.Error(), &since
	}
	r.mu.Unlock()
	if note != nil {
		note()
	}
	return v
}

// Current returns the pair in use and its generation (1 for the first
// load, one more for each reload), without looking at the files.
func (r *ClientCert) Current() (*tls.Certificate, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert, r.gen
}

// TLSConfig returns a client TLS configuration presenting the reloader's
// certificate, TLS 1.2 at least (the endpoint adds the roots of ca_file).
// It sets no ClientSessionCache: a resumed session would skip
// GetClientCertificate and keep the old identity.
func (r *ClientCert) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: r.getClientCertificate,
	}
}

// CertThumbprint is the RFC 8705 §3.1 thumbprint of a certificate: the
// base64url SHA-256 of its DER, as in a bound token's cnf "x5t#S256".
func CertThumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
