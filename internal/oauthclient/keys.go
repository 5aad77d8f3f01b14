package oauthclient

// Key material: private keys and certificates given as the path of a PEM
// file or as the PEM text itself (as an {env.…} or {file.…} placeholder
// gives it), for client authentication (clientauth.go), the TLS client
// certificate (mtls.go) and DPoP (dpop.go). Errors name the configuration
// field and, when the value was a path, the file; they never contain key
// material or PEM text.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"strings"
)

// minRSABits is the smallest RSA key accepted; providers refuse smaller ones.
const minRSABits = 2048

// pemBegin tells inline PEM from a path in a configuration value.
const pemBegin = "-----BEGIN"

// LoadPrivateKey loads the private key of the private_key field: value is
// either PEM text (it holds a "-----BEGIN" line, as a {file.…} or {env.…}
// placeholder gives it; on one line with its line breaks escaped as \n
// too) or the path of a PEM file. It accepts RSA keys
// (PKCS#1 or PKCS#8, at least 2048 bits), EC keys on P-256 or P-384 (SEC1 or
// PKCS#8) and Ed25519 keys (PKCS#8); other blocks in the file (a
// certificate, EC PARAMETERS) are skipped, and more than one key is an
// error. The key returned is an *rsa.PrivateKey, *ecdsa.PrivateKey or
// ed25519.PrivateKey.
func LoadPrivateKey(value string) (crypto.Signer, error) {
	data, where, err := readPEMValue("private_key", value)
	if err != nil {
		return nil, err
	}
	return parsePrivateKeyPEM(data, "private_key", where)
}

// LoadCertificates loads the certificate field: PEM text or the path of a
// PEM file, as for loadPrivateKey. It returns every CERTIFICATE block in
// order (the leaf first, as files conventionally hold them) and skips other
// blocks.
func LoadCertificates(value string) ([]*x509.Certificate, error) {
	data, where, err := readPEMValue("certificate", value)
	if err != nil {
		return nil, err
	}
	return parseCertificatesPEM(data, "certificate", where)
}

// CheckCertificateKey reports whether cert holds the public key of key:
// nil if it does, else an error saying the two do not match.
func CheckCertificateKey(cert *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return errors.New("certificate does not match private_key")
	}
	return nil
}

// readPEMValue returns the bytes a key or certificate field names, and how
// errors should name their origin: the path, or "the inline PEM value".
func readPEMValue(field, value string) (data []byte, where string, err error) {
	if strings.TrimSpace(value) == "" {
		return nil, "", fmt.Errorf("%s: empty value; give a PEM file path or the PEM text", field)
	}
	if strings.Contains(value, pemBegin) {
		// An environment variable often holds PEM on one line with its
		// line breaks written as \n (as in a JSON string).
		if !strings.Contains(value, "\n") && strings.Contains(value, `\n`) {
			value = strings.ReplaceAll(value, `\n`, "\n")
		}
		return []byte(value), "the inline PEM value", nil
	}
	data, err = readConfigFile(field, value, 1<<20)
	if err != nil {
		return nil, "", err
	}
	return data, safePathName(value), nil
}

// readConfigFile reads the file at path for field, up to limit bytes, with
// errors that name the file (when path looks like one) and never the
// content.
func readConfigFile(field, path string, limit int64) ([]byte, error) {
	name := safePathName(path)
	f, err := os.Open(path)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if name == path {
				return nil, fmt.Errorf("%s: %s does not exist", field, name)
			}
			// Not a plausible path: most likely key material that lost its
			// PEM armour on the way (a bare base64 value, say).
			return nil, fmt.Errorf("%s: the value is neither PEM text (no %s line) nor the path of a file", field, pemBegin)
		case errors.Is(err, fs.ErrPermission):
			return nil, fmt.Errorf("%s: %s cannot be read: permission denied", field, name)
		}
		return nil, fmt.Errorf("%s: %s cannot be read: %v", field, name, pathErrCause(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %s cannot be read: %v", field, name, pathErrCause(err))
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %s is larger than %d bytes", field, name, limit)
	}
	return data, nil
}

// pathErrCause is the cause of a file error without the path (which the
// caller names itself, or deliberately does not).
func pathErrCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// safePathName is value as an error message may name it: the value itself
// when it looks like a path, else a neutral description. A value with a line
// break, a brace, or that is base64 of DER (an ASN.1 SEQUENCE) is likely
// key material or a JSON key file given where a path was expected, and is
// never echoed.
func safePathName(value string) string {
	const neutral = "the configured value"
	if len(value) > 4096 || strings.ContainsAny(value, "\r\n{}") {
		return neutral
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f {
			return neutral
		}
	}
	compact := strings.TrimRight(value, "=")
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		if der, err := enc.DecodeString(compact); err == nil && len(der) >= 32 && der[0] == 0x30 {
			return neutral
		}
	}
	return value
}

// pemBlocks yields the PEM blocks of data, in order, up to the first text
// that is not one.
func pemBlocks(data []byte) iter.Seq[*pem.Block] {
	return func(yield func(*pem.Block) bool) {
		for rest := data; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil || !yield(block) {
				return
			}
		}
	}
}

// parsePrivateKeyPEM finds and parses the one private key in PEM data; field
// and where name the origin in errors.
func parsePrivateKeyPEM(data []byte, field, where string) (crypto.Signer, error) {
	var (
		key    crypto.Signer
		blocks int
		others []string
	)
	for block := range pemBlocks(data) {
		blocks++
		switch block.Type {
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s: %s is an encrypted PEM key; decrypt it (openssl pkey -in key.pem -out plain.pem)", field, where)
		case "OPENSSH PRIVATE KEY":
			return nil, fmt.Errorf("%s: %s is an OpenSSH key; convert it to PKCS#8 PEM (ssh-keygen -p -m PKCS8 -f key)", field, where)
		case "DSA PRIVATE KEY":
			return nil, fmt.Errorf("%s: %s holds a DSA key; use an RSA, EC (P-256, P-384) or Ed25519 key", field, where)
		case "RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY":
			if strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
				return nil, fmt.Errorf("%s: %s is an encrypted PEM key; decrypt it (openssl pkey -in key.pem -out plain.pem)", field, where)
			}
			if key != nil {
				return nil, fmt.Errorf("%s: %s holds more than one private key; keep only the one to use", field, where)
			}
			k, err := parsePrivateKeyDER(block.Type, block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", field, where, err)
			}
			key = k
		default:
			others = append(others, block.Type)
		}
	}
	switch {
	case blocks == 0:
		return nil, fmt.Errorf("%s: %s holds no PEM block", field, where)
	case key == nil:
		return nil, fmt.Errorf("%s: %s holds no private key (found %s)", field, where, strings.Join(others, ", "))
	}
	return key, nil
}

// parsePrivateKeyDER parses a private key block's DER, trying the encoding
// its PEM type names first and then the others (mislabelled blocks are
// common), and checks that the key is of a supported kind and size. Errors
// describe the key, never its bytes.
func parsePrivateKeyDER(pemType string, der []byte) (crypto.Signer, error) {
	pkcs1 := func(b []byte) (any, error) { return x509.ParsePKCS1PrivateKey(b) }
	sec1 := func(b []byte) (any, error) { return x509.ParseECPrivateKey(b) }
	pkcs8 := x509.ParsePKCS8PrivateKey
	order := []func([]byte) (any, error){pkcs8, pkcs1, sec1}
	switch pemType {
	case "RSA PRIVATE KEY":
		order = []func([]byte) (any, error){pkcs1, pkcs8, sec1}
	case "EC PRIVATE KEY":
		order = []func([]byte) (any, error){sec1, pkcs8, pkcs1}
	}
	var parsed any
	for _, parse := range order {
		if k, err := parse(der); err == nil {
			parsed = k
			break
		}
	}
	switch k := parsed.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits is too small; use %d bits or more", bits, minRSABits)
		}
		return k, nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return k, nil
		}
		return nil, fmt.Errorf("unsupported EC curve %s; use P-256 or P-384", k.Curve.Params().Name)
	case ed25519.PrivateKey:
		return k, nil
	case nil:
		return nil, fmt.Errorf("the %s block is not a valid private key (PKCS#1, SEC1 or PKCS#8) or its curve is not supported", pemType)
	default:
		return nil, fmt.Errorf("unsupported key type %T; use an RSA, EC (P-256, P-384) or Ed25519 key", parsed)
	}
}

// parseCertificatesPEM parses every CERTIFICATE block in PEM data; field and
// where name the origin in errors.
func parseCertificatesPEM(data []byte, field, where string) ([]*x509.Certificate, error) {
	var (
		certs  []*x509.Certificate
		blocks int
	)
	for block := range pemBlocks(data) {
		blocks++
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: certificate %d is not a valid X.509 certificate", field, where, len(certs)+1)
		}
		certs = append(certs, c)
	}
	switch {
	case blocks == 0:
		return nil, fmt.Errorf("%s: %s holds no PEM block", field, where)
	case len(certs) == 0:
		return nil, fmt.Errorf("%s: %s holds no CERTIFICATE block", field, where)
	}
	return certs, nil
}
