package oauthbearer

// clientauth.go: the configuration of client authentication: the rules of
// its subdirectives, and their resolution into a credential set (keys,
// signers, the assertion file, the client certificate, loaded with
// internal/oauthclient, whose Client puts them on the wire).

import (
	"crypto/sha256"
	"crypto/x509"
	"strings"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// clientAuthMethod is the method a configuration uses: client_auth, else
// what its credentials imply (with grant jwt_bearer the assertion is the
// authentication: none; a client assertion file or a private key:
// private_key_jwt; a client certificate: tls), else the preset's.
func (c *Credentials) clientAuthMethod(p providers.Provider, grant string) string {
	switch {
	case c.ClientAuth != "":
		return c.ClientAuth
	case grant == grantJWTBearer:
		return providers.AuthNone
	case c.ClientAssertionFile != "" || c.PrivateKey != "":
		return providers.AuthPrivateKeyJWT
	case c.TLSClientCert != "":
		return providers.AuthTLS
	}
	return p.ClientAuth
}

// checkClientAuth applies the rules of client authentication that hold
// before placeholders are resolved.
func (c *Credentials) checkClientAuth(p providers.Provider, grant string) error {
	method := c.clientAuthMethod(p, grant)
	if c.ClientAssertionFile != "" && method != providers.AuthPrivateKeyJWT && grant != grantJWTBearer {
		return errField("client_assertion_file", "is client_auth private_key_jwt: it cannot be combined with client_auth %s", method)
	}
	if c.ClientAssertionFile != "" && c.PrivateKey != "" {
		return errField("client_assertion_file", "an assertion is either read from a file or signed with private_key, not both")
	}
	if grant == grantJWTBearer {
		if c.ServiceAccountFile == "" && c.PrivateKey == "" && c.ClientAssertionFile == "" {
			return errField("private_key", "grant jwt_bearer needs an assertion: give private_key, service_account_file or client_assertion_file")
		}
		if c.ServiceAccountFile != "" && c.PrivateKey != "" {
			return errField("service_account_file", "holds the private key already; leave out private_key")
		}
	}
	if c.ClientID == "" && c.ServiceAccountFile == "" {
		return errField("client_id", "is required")
	}
	needsSecret := method == providers.AuthBody || method == providers.AuthBasic || method == providers.AuthClientSecretJWT
	switch {
	case needsSecret && c.ClientSecret == "":
		return errField("client_secret", "is required (client_auth %s)", method)
	case !needsSecret && c.ClientSecret != "":
		return errField("client_secret", "is not used with client_auth %s; leave it out", method)
	}
	switch method {
	case providers.AuthPrivateKeyJWT:
		if c.PrivateKey == "" && c.ClientAssertionFile == "" {
			return errField("client_auth", "private_key_jwt needs private_key (or client_assertion_file)")
		}
		if grant == grantJWTBearer && c.ClientAssertionFile == "" && c.ServiceAccountFile != "" {
			return errField("client_auth", "private_key_jwt with grant jwt_bearer signs the client's assertion with private_key; the service account's key signs the grant")
		}
	case providers.AuthTLS:
		if c.TLSClientCert == "" || c.TLSClientKey == "" {
			return errField("client_auth", "tls needs tls_client_cert <certificate> <key>")
		}
	}
	if c.TLSClientCert != "" && method != providers.AuthTLS {
		return errField("tls_client_cert", "only with client_auth tls")
	}
	signs := c.PrivateKey != "" || c.ServiceAccountFile != "" || method == providers.AuthClientSecretJWT
	for _, f := range []struct{ field, value string }{{"certificate", c.Certificate}, {"key_id", c.KeyID}, {"signing_alg", c.SigningAlg}} {
		if f.value != "" && c.PrivateKey == "" && !(f.field == "signing_alg" && signs) {
			return errField(f.field, "only with private_key (signing_alg: or client_auth client_secret_jwt)")
		}
	}
	if c.AssertionAudience != "" && method != providers.AuthPrivateKeyJWT && method != providers.AuthClientSecretJWT && grant != grantJWTBearer {
		return errField("assertion_audience", "only with client_auth private_key_jwt or client_secret_jwt, or grant jwt_bearer")
	}
	return nil
}

// resolveClientAuth resolves the client's identity and credentials into
// cs: the id and secret, and the signer, the assertion file or the client
// certificate, reading local files now so that a key that does not parse,
// an algorithm that does not fit it, a certificate that does not match it
// or an assertion file that cannot be read stop the configuration from
// loading.
func (c *Credentials) resolveClientAuth(repl *caddy.Replacer, cs *credentialSet) error {
	var err error
	if c.ClientID != "" {
		if cs.ClientID, err = resolveRequired(repl, "client_id", c.ClientID); err != nil {
			return err
		}
	}
	if c.ClientSecret != "" {
		if cs.clientSecret, err = resolveRequired(repl, "client_secret", c.ClientSecret); err != nil {
			return err
		}
	}
	cs.AssertionAudience = repl.ReplaceKnown(c.AssertionAudience, "")
	digest := sha256.New()
	switch {
	case c.ServiceAccountFile != "":
		sa, err := oauthclient.LoadGoogleServiceAccount(repl.ReplaceKnown(c.ServiceAccountFile, ""))
		if err != nil {
			return fieldErr("service_account_file", err)
		}
		if cs.signer, err = sa.Signer(); err != nil {
			return fieldErr("service_account_file", err)
		}
		if err := cs.addKeyMaterial("service_account_file", sa.Key); err != nil {
			return fieldErr("service_account_file", err)
		}
		cs.signer.Field = "service_account_file"
		// No sub unless subject is set: Google documents sub only for
		// domain-wide delegation, and its client libraries send none.
		cs.assertionIssuer, cs.scopeInAssertion = sa.ClientEmail, true
		cs.ClientID = firstNonEmpty(cs.ClientID, sa.ClientEmail)
		if cs.TokenURL == "" && cs.Issuer == "" {
			cs.TokenURL = sa.TokenURI
		}
		cs.AssertionAudience = firstNonEmpty(cs.AssertionAudience, sa.TokenURI)
		digest.Write([]byte(sa.ClientEmail + "\x00" + sa.KeyID))
	case c.PrivateKey != "":
		key, err := oauthclient.LoadPrivateKey(repl.ReplaceKnown(c.PrivateKey, ""))
		if err != nil {
			return fieldErr("private_key", err)
		}
		var cert *x509.Certificate
		if c.Certificate != "" {
			certs, err := oauthclient.LoadCertificates(repl.ReplaceKnown(c.Certificate, ""))
			if err != nil {
				return fieldErr("certificate", err)
			}
			cert = certs[0]
			if err := oauthclient.CheckCertificateKey(cert, key); err != nil {
				return errField("certificate", "%v", err)
			}
		}
		alg, err := oauthclient.SigningAlg(key, c.SigningAlg)
		if err != nil {
			return errField("signing_alg", "%v", err)
		}
		if cs.signer, err = oauthclient.NewAssertionSigner(key, alg, repl.ReplaceKnown(c.KeyID, ""), cert); err != nil {
			return errField("private_key", "%v", err)
		}
		if err := cs.addKeyMaterial("private_key", key); err != nil {
			return fieldErr("private_key", err)
		}
		cs.signer.Field = "private_key"
		// The JWT bearer grant's sub when subject is not set: the client
		// acting for itself (RFC 7523 §3 requires a sub; §2.2 names the
		// client id as the client's own).
		cs.assertionIssuer, cs.assertionSubject = cs.ClientID, cs.ClientID
		pub, _ := x509.MarshalPKIXPublicKey(key.Public())
		digest.Write(pub)
		digest.Write([]byte(c.KeyID + "\x00" + string(alg)))
		if cert != nil {
			// Its thumbprints are sent: a certificate renewed for the
			// same key is another credential.
			digest.Write([]byte("\x00certificate\x00"))
			digest.Write(cert.Raw)
		}
	case cs.ClientAuth == providers.AuthClientSecretJWT:
		alg := firstNonEmpty(c.SigningAlg, string(jose.HS256))
		if cs.signer, err = oauthclient.NewSecretAssertionSigner([]byte(cs.clientSecret), jose.SignatureAlgorithm(alg)); err != nil {
			return errField("client_secret", "%v", err)
		}
		cs.signer.Field = "client_secret"
		digest.Write([]byte("client_secret_jwt\x00" + alg)) // the secret is hashed into the key apart
	}
	if c.ClientAssertionFile != "" {
		cs.AssertionFile = repl.ReplaceKnown(c.ClientAssertionFile, "")
		if _, err := oauthclient.ReadAssertionFile(cs.AssertionFile); err != nil {
			return fieldErr("client_assertion_file", err)
		}
	}
	if c.TLSClientCert != "" {
		certFile, keyFile := repl.ReplaceKnown(c.TLSClientCert, ""), repl.ReplaceKnown(c.TLSClientKey, "")
		if cs.tlsCert, err = oauthclient.NewClientCert(certFile, keyFile); err != nil {
			return fieldErr("tls_client_cert", err)
		}
		// The key loaded now: a key rotated later (cert-manager) is used
		// for handshakes, but records stay sealed with this one until the
		// next configuration load.
		if pair, _ := cs.tlsCert.Current(); pair != nil {
			if err := cs.addKeyMaterial("tls_client_key", pair.PrivateKey); err != nil {
				return fieldErr("tls_client_cert", err)
			}
		}
		digest.Write([]byte(certFile + "\x00" + keyFile))
	}
	cs.keyDigest = digest.Sum(nil)
	return nil
}

// fieldErr is a configuration error of field from an error that may name
// the field already (the loaders above do), without saying it twice.
func fieldErr(field string, err error) error {
	msg := err.Error()
	for _, prefix := range []string{field + ": ", "service_account: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	return errField(field, "%s", msg)
}
