package oauthbearer

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// config.go: the credential set. Credentials is what both handlers take
// from the configuration to name a provider and a client; credentialSet is
// the same, resolved: the preset's defaults filled in and {env.*}/{file.*}
// placeholders replaced. Every rule about these fields is written here,
// once, and runs for JSON and Caddyfile alike (the Caddyfile parser calls
// the same checks so that its errors name the line).

// Defaults, each written once.
const (
	defaultRefreshBefore   = 60 * time.Second
	defaultTimeout         = 10 * time.Second
	defaultDefaultLifetime = 10 * time.Minute
	defaultReplayMaxBody   = 64 << 10
)

// Grant types.
const (
	grantClientCredentials = "client_credentials"
	grantAuthorizationCode = "authorization_code"
	grantRefreshToken      = "refresh_token"
	grantJWTBearer         = providers.GrantJWTBearer
)

// Credentials names the provider's endpoints and the client: the part of
// the configuration that oauth_bearer and oauth_bearer_consent share.
// Handlers whose credentials resolve to the same values share one token
// source (client credentials) or one stored grant.
type Credentials struct {
	// Provider names a preset: eventtemple, eventbookings, bookable,
	// calcom, entra, auth0, okta, keycloak, google, or generic (the
	// default, which needs token_url or issuer).
	Provider string `json:"provider,omitempty"`

	// Environment picks one of the preset's token endpoints (bookable:
	// production or sandbox). Default: the preset's default environment.
	Environment string `json:"environment,omitempty"`

	// TokenURL overrides the preset's token endpoint. It must be https;
	// plain http is accepted only to a loopback host.
	TokenURL string `json:"token_url,omitempty"`

	// RefreshURL is where a grant's refresh tokens are redeemed when that
	// is not the token URL (Cal.com). Only for the authorization_code and
	// refresh_token grants. Default: the preset's.
	RefreshURL string `json:"refresh_url,omitempty"`

	// RevokeURL is the provider's token revocation endpoint (RFC 7009),
	// called when an account is disconnected or connected again. Only for
	// the authorization_code and refresh_token grants. Default: the
	// preset's.
	RevokeURL string `json:"revoke_url,omitempty"`

	// ClientID is the OAuth client id. {env.X} and {file./path}
	// placeholders are resolved when the configuration is loaded.
	ClientID string `json:"client_id,omitempty"`

	// ClientSecret is the client secret. Give it as {env.X} or
	// {file./path}: resolved when the configuration is loaded, it never
	// appears in the adapted JSON, the autosaved config or /config/.
	ClientSecret string `json:"client_secret,omitempty"`

	// ClientAuth is how the client authenticates at the token endpoint:
	// body (client_secret_post), basic (client_secret_basic, id and secret
	// form-encoded first), client_secret_jwt (a JWT signed with the
	// secret), private_key_jwt (a JWT signed with PrivateKey, or the
	// assertion of ClientAssertionFile), tls (the certificate of
	// TLSClientCert, RFC 8705) or none (a public client). Default:
	// private_key_jwt with PrivateKey or ClientAssertionFile, tls with
	// TLSClientCert, else the preset's.
	ClientAuth string `json:"client_auth,omitempty"`

	// RequestFormat is the token request body: json, form, or auto (the
	// preset's preferred format first, the other one once when the server
	// refuses it; the one that worked is remembered). Default: the
	// preset's.
	RequestFormat string `json:"request_format,omitempty"`

	// Timeout bounds one request to the provider. Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// DefaultLifetime is the lifetime assumed for a token whose response
	// gives none and that is not a JWT with exp. Default 10m.
	DefaultLifetime caddy.Duration `json:"default_lifetime,omitempty"`

	// CAFile is a PEM file of extra CA certificates trusted for the
	// provider's endpoints, besides the system roots.
	CAFile string `json:"ca_file,omitempty"`

	// Issuer is the authorization server's issuer URL: its token,
	// authorization, revocation and mTLS endpoints are discovered (RFC
	// 8414, then OpenID Connect discovery) at the first token request, never
	// when the configuration loads. The document's issuer must be this.
	Issuer string `json:"issuer,omitempty"`

	// ProviderParams are the preset's own settings, each given in the
	// Caddyfile as a subdirective of its name: entra's tenant, auth0's and
	// okta's domain, okta's authorization_server, keycloak's base_url and
	// realm.
	ProviderParams map[string]string `json:"provider_params,omitempty"`

	// PrivateKey signs the client's assertions (client_auth
	// private_key_jwt) or the JWT bearer grant: a PEM file's path, or the
	// PEM itself (as {file.…} or {env.…} give it). RSA, EC P-256/P-384 or
	// Ed25519, PKCS#1, PKCS#8 or SEC1.
	PrivateKey string `json:"private_key,omitempty"`

	// Certificate is the private key's certificate (path or PEM): its
	// thumbprints are sent as the x5t and x5t#S256 headers, which Entra ID
	// uses to find the key.
	Certificate string `json:"certificate,omitempty"`

	// KeyID is the kid header of the assertions signed with PrivateKey.
	KeyID string `json:"key_id,omitempty"`

	// SigningAlg signs the assertions: RS256/384/512, PS256/384/512,
	// ES256/384 or EdDSA with PrivateKey (default: from the key, RS256,
	// ES256 or ES384, EdDSA); HS256 (the default), HS384 or HS512 with
	// client_auth client_secret_jwt (the secret then holds at least 32,
	// 48 or 64 bytes).
	SigningAlg string `json:"signing_alg,omitempty"`

	// AssertionAudience is the aud claim of the client's assertions, for a
	// provider that wants its issuer there. Default: the endpoint the
	// assertion is sent to.
	AssertionAudience string `json:"assertion_audience,omitempty"`

	// ClientAssertionFile is a client assertion made by someone else (a
	// Kubernetes projected service account token, a CI OIDC token), read
	// again for every token request because its owner rotates it in place.
	// It means client_auth private_key_jwt.
	ClientAssertionFile string `json:"client_assertion_file,omitempty"`

	// TLSClientCert is the client certificate of client_auth tls (RFC
	// 8705): a PEM file's path (read again when the file changes), or the
	// PEM itself.
	TLSClientCert string `json:"tls_client_cert,omitempty"`

	// TLSClientKey is TLSClientCert's private key: a PEM file's path, or
	// the PEM itself.
	TLSClientKey string `json:"tls_client_key,omitempty"`

	// ServiceAccountFile is a Google service account key file (path or
	// JSON), only for grant jwt_bearer: its client_email, private_key,
	// private_key_id and token_uri.
	ServiceAccountFile string `json:"service_account_file,omitempty"`

	// EncryptionKeys encrypt what is kept in Caddy's storage (shared
	// tokens, grants): each the base64 of at least 32 random bytes
	// (`openssl rand -base64 32`), normally {env.X}. The first encrypts;
	// every one, and the key derived from the client secret, decrypt, so
	// records stay readable across a rotation (and are encrypted with the
	// first key when next written). Without any, the key is derived from
	// the client secret, and rotating the secret makes the records
	// unreadable.
	EncryptionKeys []string `json:"encryption_keys,omitempty"`

	// DPoP is the upstream API's base URL as its resource server sees
	// requests (RFC 9449): with it, tokens are requested with DPoP
	// proofs, sent as Authorization: DPoP <token>, and every upstream
	// request carries a fresh proof whose htu is this URL joined with the
	// request's path (as this handler sees it), without query or
	// fragment. An absolute http or https URL without query or fragment.
	// Every grant: with authorization_code and refresh_token, the code
	// exchange and every refresh carry proofs of the grant's key; give
	// oauth_bearer_consent the same value (it calls no API, but binds the
	// grants it connects).
	DPoP string `json:"dpop,omitempty"`

	// DPoPKey is the key that signs the DPoP proofs: a PEM file's path or
	// the PEM itself (EC P-256: ES256; Ed25519: EdDSA; RSA: RS256); use
	// {env.X} or {file./path}. Default: a P-256 key generated once per
	// credential set (client_credentials, jwt_bearer) or per grant (made
	// when the account is connected: authorization_code, refresh_token)
	// and kept in the storage with the token or the grant, encrypted.
	// Only with dpop.
	DPoPKey string `json:"dpop_key,omitempty"`
}

// configError is a rule broken by the configuration. Field names the
// subdirective (and JSON field) at fault, and item, for a repeatable one,
// the value at fault (a resource, a param's or a header's name), so that
// the Caddyfile parser can report the line it was written on.
type configError struct {
	field string
	item  string
	msg   string
}

func (e *configError) Error() string { return e.field + ": " + e.msg }

func errField(field, format string, args ...any) error {
	return &configError{field: field, msg: fmt.Sprintf(format, args...)}
}

// about marks a configError as about one item of a repeatable field.
func about(item string, err error) error {
	var ce *configError
	if errors.As(err, &ce) {
		ce.item = item
	}
	return err
}

// preset returns the named preset (generic when none is named).
func (c *Credentials) preset() (providers.Provider, error) {
	name := firstNonEmpty(c.Provider, providers.Generic)
	p, ok := providers.Lookup(name)
	if !ok {
		return p, errField("provider", "unknown provider %q (known: %s)", name, strings.Join(providers.Names(), ", "))
	}
	return p, nil
}

// check applies the rules that hold before placeholders are resolved.
// grant is the grant the handler uses.
func (c *Credentials) check(grant string) error {
	p, err := c.preset()
	if err != nil {
		return err
	}
	// client_auth and request_format values; refresh_url, revoke_url and
	// service_account_file only with the grants that use them.
	if err := checkTable(c, grant); err != nil {
		return err
	}
	if c.Environment != "" {
		if _, err := p.TokenURL(c.Environment); err != nil {
			return errField("environment", "%v", err)
		}
	}
	for name := range c.ProviderParams {
		if _, ok := p.Param(name); !ok {
			if owners := presetsWithSetting(name); len(owners) > 0 {
				return errField(name, "provider %s has no such setting (it is a setting of %s)", p.Name, strings.Join(owners, " and "))
			}
			return errField(name, "provider %s has no such setting", p.Name)
		}
	}
	for _, pp := range p.Params {
		if pp.Required && c.ProviderParams[pp.Name] == "" && c.TokenURL == "" && c.Issuer == "" {
			return errField(pp.Name, "is required by provider %s: %s", p.Name, pp.Doc)
		}
	}
	if c.TokenURL == "" && c.Issuer == "" && len(p.Environments) == 0 && p.TokenURLTemplate == "" && c.ServiceAccountFile == "" {
		return errField("token_url", "required for provider %s, which has no built-in token URL (or give issuer)", p.Name)
	}
	urls := []struct{ field, value string }{{"token_url", c.TokenURL}, {"issuer", c.Issuer}, {"refresh_url", c.RefreshURL}, {"revoke_url", c.RevokeURL}}
	for _, u := range urls {
		if err := checkEndpointURL(u.field, u.value); err != nil {
			return err
		}
	}
	if err := c.checkClientAuth(p, grant); err != nil {
		return err
	}
	if err := c.checkPlaceholders(); err != nil {
		return err
	}
	for i, k := range c.EncryptionKeys {
		if !strings.Contains(k, "{") {
			if _, err := decodeEncryptionKey(i, k); err != nil {
				return err
			}
		}
	}
	for _, d := range []struct {
		field string
		value caddy.Duration
	}{{"timeout", c.Timeout}, {"default_lifetime", c.DefaultLifetime}} {
		if d.value < 0 {
			return errField(d.field, "must not be negative")
		}
	}
	return nil
}

// credentialSet is a resolved Credentials: everything that decides how the
// provider is asked for tokens. Two handlers whose sets have the same key
// share a token source or a grant. It holds the client secret, so it is
// never logged or marshalled whole: key() hashes it.
type credentialSet struct {
	Provider        string        `json:"provider"`
	Grant           string        `json:"grant"`
	TokenURL        string        `json:"token_url"` // "" until discovered from Issuer
	Issuer          string        `json:"issuer,omitempty"`
	RefreshURL      string        `json:"refresh_url,omitempty"`
	RevokeURL       string        `json:"revoke_url,omitempty"`
	ClientID        string        `json:"client_id"`
	ClientAuth      string        `json:"client_auth"`
	Format          string        `json:"format"`
	PreferredFormat string        `json:"preferred_format,omitempty"` // with Format auto
	RefreshBearer   bool          `json:"refresh_bearer,omitempty"`
	Timeout         time.Duration `json:"timeout"`
	DefaultLifetime time.Duration `json:"default_lifetime"`
	CAFile          string        `json:"ca_file,omitempty"`

	// The client_credentials token request's own parameters.
	Scope     string            `json:"scope,omitempty"`
	Audience  string            `json:"audience,omitempty"`
	Resources []string          `json:"resources,omitempty"`
	Params    map[string]string `json:"params,omitempty"`

	// DPoP (dpop.go): the upstream base URL, and the thumbprint of
	// dpop_key (public; the key itself is dpopKey).
	DPoP    string `json:"dpop,omitempty"`
	DPoPJKT string `json:"dpop_jkt,omitempty"`
	dpopKey *oauthclient.DPoPKey

	// How the client proves itself (clientauth.go).
	AssertionAudience string `json:"assertion_audience,omitempty"`
	AssertionFile     string `json:"assertion_file,omitempty"`
	Subject           string `json:"subject,omitempty"` // jwt_bearer: the sub claim
	assertionIssuer   string // jwt_bearer: the iss claim (client_id, or a service account's email)
	assertionSubject  string // jwt_bearer: the sub claim without Subject (client_id with private_key; "" omits it)
	scopeInAssertion  bool   // jwt_bearer: the scope is a claim only (Google), not a parameter too
	signer            *oauthclient.AssertionSigner
	tlsCert           *oauthclient.ClientCert
	keyDigest         []byte // of the key material, for the key

	preset         providers.Provider
	clientSecret   string   // hashed into the key, never logged
	caPEM          []byte   // CAFile's contents, read at load; hashed into the key
	encryptionKeys [][]byte // decoded; hashed into the key
	// keyMaterial: the private keys the configuration holds (private_key,
	// the service account's, the TLS client key), encoded for
	// recordSecret. Never logged.
	keyMaterial []byte
}

// resolve fills in the preset's defaults and resolves {env.*}/{file.*}
// placeholders. The rules of check are assumed to hold; what can only be
// checked on resolved values is checked here.
func (c *Credentials) resolve(repl *caddy.Replacer, grant string) (*credentialSet, error) {
	p, err := c.preset()
	if err != nil {
		return nil, err
	}
	cs := &credentialSet{
		preset:          p,
		Provider:        p.Name,
		Grant:           grant,
		ClientAuth:      c.clientAuthMethod(p, grant),
		Format:          firstNonEmpty(c.RequestFormat, p.RequestFormat),
		Timeout:         orDefault(time.Duration(c.Timeout), defaultTimeout),
		DefaultLifetime: orDefault(time.Duration(c.DefaultLifetime), defaultDefaultLifetime),
	}
	if cs.Format == providers.FormatAuto {
		cs.PreferredFormat = firstNonEmpty(p.PreferredFormat, providers.FormatForm)
		if !machineGrant(grant) {
			// A code and a rotating refresh token are single-use: no
			// probing of formats with them.
			cs.Format, cs.PreferredFormat = cs.PreferredFormat, ""
		}
	}
	params := map[string]string{}
	for k, v := range c.ProviderParams {
		if params[k], err = resolveRequired(repl, k, v); err != nil {
			return nil, err
		}
	}
	if cs.TokenURL, err = resolveURL(repl, "token_url", c.TokenURL); err != nil {
		return nil, err
	}
	if cs.Issuer, err = resolveURL(repl, "issuer", c.Issuer); err != nil {
		return nil, err
	}
	revoke := p.RevokeURL
	switch {
	case cs.TokenURL != "" || cs.Issuer != "" || c.ServiceAccountFile != "":
	case p.TokenURLTemplate != "":
		if cs.TokenURL, err = presetURL(p, p.TokenURLTemplate, params); err != nil {
			return nil, err
		}
		if revoke, err = presetURL(p, p.RevokeURLTemplate, params); err != nil {
			return nil, err
		}
	default:
		if cs.TokenURL, err = p.TokenURL(c.Environment); err != nil {
			return nil, errField("token_url", "%v", err)
		}
	}
	if !machineGrant(grant) {
		if cs.RefreshURL, err = resolveURL(repl, "refresh_url", firstNonEmpty(c.RefreshURL, p.RefreshURL)); err != nil {
			return nil, err
		}
		if cs.RevokeURL, err = resolveURL(repl, "revoke_url", firstNonEmpty(c.RevokeURL, revoke)); err != nil {
			return nil, err
		}
		cs.RefreshBearer = p.RefreshBearer
	}
	if err := c.resolveClientAuth(repl, cs); err != nil {
		return nil, err
	}
	for i, raw := range c.EncryptionKeys {
		v, err := resolveRequired(repl, "encryption_key", raw)
		if err != nil {
			return nil, err
		}
		key, err := decodeEncryptionKey(i, v)
		if err != nil {
			return nil, err
		}
		cs.encryptionKeys = append(cs.encryptionKeys, key)
	}
	if c.CAFile != "" {
		cs.CAFile = repl.ReplaceKnown(c.CAFile, "")
		pem, err := os.ReadFile(cs.CAFile)
		if err != nil {
			return nil, errField("ca_file", "%v", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, errField("ca_file", "%s holds no PEM certificate", cs.CAFile)
		}
		cs.caPEM = pem
	}
	if err := c.resolveDPoP(repl, cs); err != nil {
		return nil, err
	}
	return cs, nil
}

// key identifies the credential set in the pool. The secret and the CA
// file's contents are part of it, but only through a hash.
func (cs *credentialSet) key() string {
	b, _ := json.Marshal(cs) // strings, slices, maps and durations: cannot fail
	h := sha256.New()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(cs.clientSecret))
	h.Write([]byte{0})
	h.Write(cs.caPEM)
	for _, k := range cs.encryptionKeys {
		h.Write([]byte{0})
		h.Write(k)
	}
	h.Write([]byte{0})
	h.Write(cs.keyDigest)
	return hex.EncodeToString(h.Sum(nil))
}

// recordSecret is the secret material the key of stored records is
// derived from (store.go): the client secret when there is one (alone, as
// it always was, so that such records stay readable), else the private
// keys the configuration holds. Empty when it holds none (client_auth
// none, client_assertion_file): checkRecordKey then requires
// encryption_key.
func (cs *credentialSet) recordSecret() []byte {
	if cs.clientSecret != "" {
		return []byte(cs.clientSecret)
	}
	return cs.keyMaterial
}

// addKeyMaterial adds a private key to keyMaterial, labelled and
// length-prefixed.
func (cs *credentialSet) addKeyMaterial(label string, key any) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("%s: the key cannot be used to derive the storage key: %v", label, err)
	}
	if len(cs.keyMaterial) == 0 {
		cs.keyMaterial = []byte("caddy-oauth-bearer private keys v1")
	}
	cs.keyMaterial = binary.BigEndian.AppendUint32(append(cs.keyMaterial, 0), uint32(len(label)))
	cs.keyMaterial = append(cs.keyMaterial, label...)
	cs.keyMaterial = binary.BigEndian.AppendUint32(cs.keyMaterial, uint32(len(der)))
	cs.keyMaterial = append(cs.keyMaterial, der...)
	return nil
}

// holdsSecret reports whether the configuration holds secret material the
// key of stored records can be derived from: a client secret, a private key
// (private_key_jwt, the JWT bearer grant), a service account's key or a TLS
// client key. An assertion from client_assertion_file is made elsewhere and
// changes; client_auth none holds nothing.
func (c *Credentials) holdsSecret() bool {
	return c.ClientSecret != "" || c.PrivateKey != "" || c.ServiceAccountFile != "" || c.TLSClientKey != ""
}

// checkRecordKey: what a configuration keeps in Caddy's storage (a
// client-credentials token with token_store storage, grants, the consent
// state cookie) is sealed with a key derived from encryption_key or from
// the configuration's secret material. Without either, the key would come
// from public inputs only, and anyone who can read the storage could
// decrypt the tokens, and anyone who can write it forge them: such a
// configuration must give encryption_key to store anything. stored says
// whether the handler stores records.
func (c *Credentials) checkRecordKey(grant string, stored bool) error {
	if !stored || len(c.EncryptionKeys) > 0 || c.holdsSecret() {
		return nil
	}
	p, _ := c.preset()
	why := "client_auth " + c.clientAuthMethod(p, grant)
	if c.ClientAssertionFile != "" {
		why = "client_assertion_file (an assertion made elsewhere, which changes)"
	}
	what, instead := "the token kept in Caddy's storage (token_store storage, the default)",
		"; or keep the token in this process's memory only with token_store memory"
	if !machineGrant(grant) {
		what, instead = "the grants kept in Caddy's storage",
			" (grants are always stored; token_store memory is only for client_credentials and jwt_bearer tokens)"
	}
	return errField("encryption_key", "is required: with %s this configuration holds no secret to derive a storage key from, so %s "+
		"would be readable and forgeable by anyone who can read or write the storage. Make a key with `openssl rand -base64 32` "+
		"and give it as encryption_key {env.OAUTH_BEARER_KEY}%s", why, what, instead)
}

// presetURL builds one of a preset's endpoints from its settings.
func presetURL(p providers.Provider, template string, params map[string]string) (string, error) {
	u, err := p.Expand(template, params)
	var missing *providers.MissingParamError
	if errors.As(err, &missing) {
		return "", errField(missing.Name, "is required by provider %s", p.Name)
	}
	if u != "" {
		if err := checkEndpointURL("token_url", u); err != nil {
			field := p.ParamNames()[0]
			for _, pp := range p.Params {
				if strings.HasPrefix(template, "{"+pp.Name+"}") {
					field = pp.Name // the setting that gives the scheme and host
				}
			}
			return "", errField(field, "gives the endpoint %s, which is not an https URL", u)
		}
	}
	return u, nil
}

// machineGrant: the grants whose tokens need no person (client
// credentials, the JWT bearer grant); they share a token source per
// credential set.
func machineGrant(grant string) bool {
	return grant == grantClientCredentials || grant == grantJWTBearer
}

// decodeEncryptionKey decodes the i-th encryption key: base64 (standard or
// URL alphabet, padded or not) of at least 32 bytes. The error never
// echoes the value.
func decodeEncryptionKey(i int, v string) ([]byte, error) {
	v = strings.TrimSpace(v)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(v); err == nil {
			if len(b) < 32 {
				return nil, errField("encryption_key", "key %d holds %d bytes; it must hold at least 32 random bytes (make one with: openssl rand -base64 32)", i+1, len(b))
			}
			return b, nil
		}
	}
	return nil, errField("encryption_key", "key %d is not base64 (make one with: openssl rand -base64 32)", i+1)
}

// redact removes the client secret and anything token-shaped from text
// that came from elsewhere (a provider's error description, a transport
// error, a discovery document) and makes it one short printable line
// (oauthclient.Redact). It runs where such text enters: what it returns
// may be logged, stored (a grant's reason, a remembered refusal) and shown
// (status, the accounts page, the admin API).
func (cs *credentialSet) redact(s string) string {
	return oauthclient.Redact(cs.clientSecret, s)
}

// ---- rules shared by several fields ----

// checkEndpointURL accepts https URLs, and plain http only to a loopback
// host (a local stand-in or a sidecar): credentials never cross a network
// in clear text. An empty value, or one with placeholders still to
// resolve, passes (it is checked again once resolved).
func checkEndpointURL(field, raw string) error {
	if raw == "" || strings.Contains(raw, "{") {
		return nil
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return errField(field, "%q is not a URL: %v", raw, err)
	case u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return errField(field, "%q is not an absolute http(s) URL", raw)
	case u.User != nil:
		return errField(field, "the URL must not carry credentials; use client_id and client_secret")
	case !oauthclient.SecureEndpoint(u):
		return errField(field, "%q uses plain http to a non-loopback host; use https", raw)
	}
	return nil
}

// resolveURL resolves a URL's placeholders and checks the result.
func resolveURL(repl *caddy.Replacer, field, raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	v := repl.ReplaceKnown(raw, "")
	if v == "" {
		return "", errField(field, "%s resolved to an empty value (is the variable or file set?)", raw)
	}
	if strings.Contains(v, "{") {
		return "", errField(field, "%q holds a placeholder that is not {env.*} or {file.*}", v)
	}
	return v, checkEndpointURL(field, v)
}

// resolveRequired resolves a required value, which may be secret: an empty
// result is an error that names the placeholder, never a literal value.
func resolveRequired(repl *caddy.Replacer, field, raw string) (string, error) {
	v := repl.ReplaceKnown(raw, "")
	if v == "" {
		return "", errField(field, "%s resolved to an empty value (is the variable or file set?)", placeholderOnly(raw))
	}
	return v, nil
}

// oneOf checks an enumerated value; empty means the default.
func oneOf(field, value string, allowed ...string) error {
	if value == "" {
		return nil
	}
	for _, a := range allowed {
		if value == a {
			return nil
		}
	}
	return errField(field, "%q is not %s", value, orList(allowed))
}

func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// provisionReplacer resolves {env.*} and {file.*} placeholders, the ones
// that hold configuration and secrets. Everything else ({time.*},
// {system.*}, {http.*}) is left for the request's replacer, so that a
// header value such as {time.now.unix} is fresh on every request.
func provisionReplacer() *caddy.Replacer {
	full := caddy.NewReplacer()
	r := caddy.NewEmptyReplacer()
	r.Map(func(key string) (any, bool) {
		if strings.HasPrefix(key, "env.") || strings.HasPrefix(key, "file.") {
			return full.Get(key)
		}
		return nil, false
	})
	return r
}

// placeholderOnly returns s when it is a placeholder (safe to print), and a
// neutral word otherwise (a literal secret must not be echoed).
func placeholderOnly(s string) string {
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
		return s
	}
	return "(literal value)"
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// truncate shortens s to at most n bytes, on a rune boundary
// (oauthclient.Truncate).
func truncate(s string, n int) string { return oauthclient.Truncate(s, n) }
