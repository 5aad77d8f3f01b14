package oauthbearer

// Which configurations share a token source or a grant is decided by one
// key (Handler.configureShared: credentialSet.key, the token store, the
// bootstrap refresh token). Every configuration field either changes that
// key or is deliberately left out of it, with the reason; the test walks
// the fields by reflection, so that a new field fails here until it is
// placed on one side or the other, and then checks each placement by
// changing the field alone.

import (
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// sharingCase is a change of one field and whether it must change the key.
type sharingCase struct {
	base   func() *Handler // a configuration the field applies to
	change func(h *Handler)
	// notShared: why the change must leave the key as it is; "" means it
	// must change the key.
	notShared string
}

// sharingFixtures are the keys, certificates and files the cases use.
type sharingFixtures struct {
	keyPEM, key2PEM         string // RSA keys, inline PEM
	certA, certB            string // two certificates of keyPEM's key
	caA, caB                string // CA files
	assertionA, assertionB  string // client assertion files
	tlsCert, tlsKey         string // a client certificate and its key, files
	tlsCert2, tlsKey2       string // another pair
	tlsKeyCopy              string // tlsKey's content under another path
	serviceA, serviceB      string // Google service account key files, inline JSON
	encryptionA, encryption string
}

func newSharingFixtures(t *testing.T) *sharingFixtures {
	k := testkeys.Keys()
	ca := testkeys.NewCA(t, "sharing CA")
	c1, c2 := ca.IssueClient(t, "client-1", k.P256), ca.IssueClient(t, "client-2", k.P256b)
	key1, key2 := testkeys.SEC1PEM(t, k.P256), testkeys.SEC1PEM(t, k.P256b)
	const jwtA, jwtB = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnLWE", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnLWI"
	key := func(b byte) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32))) }
	return &sharingFixtures{
		keyPEM:     string(testkeys.PKCS8PEM(t, k.RSA)),
		key2PEM:    string(testkeys.PKCS8PEM(t, k.RSA2)),
		certA:      string(testkeys.PEM("CERTIFICATE", testkeys.SelfSignedCert(t, k.RSA, "cert-a").Raw)),
		certB:      string(testkeys.PEM("CERTIFICATE", testkeys.SelfSignedCert(t, k.RSA, "cert-b").Raw)),
		caA:        testkeys.WriteFile(t, "a.pem", testkeys.PEM("CERTIFICATE", testkeys.NewCA(t, "ca a").Cert.Raw)),
		caB:        testkeys.WriteFile(t, "b.pem", testkeys.PEM("CERTIFICATE", testkeys.NewCA(t, "ca b").Cert.Raw)),
		assertionA: testkeys.WriteFile(t, "a.jwt", []byte(jwtA)),
		assertionB: testkeys.WriteFile(t, "b.jwt", []byte(jwtB)),
		tlsCert:    testkeys.WriteFile(t, "c1.crt", testkeys.PEM("CERTIFICATE", c1.Raw)),
		tlsKey:     testkeys.WriteFile(t, "c1.key", key1),
		tlsCert2:   testkeys.WriteFile(t, "c2.crt", testkeys.PEM("CERTIFICATE", c2.Raw)),
		tlsKey2:    testkeys.WriteFile(t, "c2.key", key2),
		tlsKeyCopy: testkeys.WriteFile(t, "c1-copy.key", key1),
		serviceA:   string(testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.googleapis.com/token", nil)),
		serviceB: string(testkeys.GoogleKeyJSON(t, k.RSA2, "https://oauth2.googleapis.com/token", func(m map[string]any) {
			m["client_email"], m["private_key_id"] = "other@proj.iam.gserviceaccount.com", "fedcba9876543210"
		})),
		encryptionA: key('a'),
		encryption:  key('b'),
	}
}

// sharingCases has an entry for every JSON field of Credentials, Handler
// and ConsentHandler (by JSON name; a field may have several cases).
func sharingCases(f *sharingFixtures) map[string][]sharingCase {
	secret := func() *Handler {
		return &Handler{Credentials: Credentials{TokenURL: "https://as.example/token", ClientID: "id", ClientSecret: "secret-1"}}
	}
	with := func(base func() *Handler, mod func(h *Handler)) func() *Handler {
		return func() *Handler { h := base(); mod(h); return h }
	}
	privateKey := with(secret, func(h *Handler) { h.ClientSecret, h.ClientAuth, h.PrivateKey = "", "private_key_jwt", f.keyPEM })
	secretJWT := with(secret, func(h *Handler) {
		h.ClientAuth, h.ClientSecret = "client_secret_jwt", strings.Repeat("s", 64)
	})
	tlsAuth := with(secret, func(h *Handler) {
		h.ClientSecret, h.ClientAuth, h.TLSClientCert, h.TLSClientKey = "", "tls", f.tlsCert, f.tlsKey
	})
	assertion := with(secret, func(h *Handler) {
		h.ClientSecret, h.ClientAuth, h.ClientAssertionFile, h.EncryptionKeys = "", "private_key_jwt", f.assertionA, []string{f.encryptionA}
	})
	jwtBearer := with(privateKey, func(h *Handler) { h.Grant, h.ClientAuth = "jwt_bearer", "none"; h.EncryptionKeys = nil })
	google := func() *Handler {
		return &Handler{Credentials: Credentials{Provider: "google", ServiceAccountFile: f.serviceA}}
	}
	code := with(secret, func(h *Handler) { h.Grant = "authorization_code" })
	preset := func(name string, params map[string]string) func() *Handler {
		return func() *Handler {
			return &Handler{Credentials: Credentials{Provider: name, ClientID: "id", ClientSecret: "s", ProviderParams: params}}
		}
	}
	refresh := with(secret, func(h *Handler) { h.Grant, h.RefreshToken = "refresh_token", "rt-1" })

	const perHandler = "what this handler sets on the upstream request, or does with its answer; not how the token is had"
	return map[string][]sharingCase{
		// Credentials
		"provider":              {{base: secret, change: func(h *Handler) { h.Provider = "keycloak" }}},
		"environment":           {{base: preset("bookable", nil), change: func(h *Handler) { h.Environment = "sandbox" }}},
		"token_url":             {{base: secret, change: func(h *Handler) { h.TokenURL = "https://as.example/token2" }}},
		"refresh_url":           {{base: code, change: func(h *Handler) { h.RefreshURL = "https://as.example/refresh" }}},
		"revoke_url":            {{base: code, change: func(h *Handler) { h.RevokeURL = "https://as.example/revoke" }}},
		"client_id":             {{base: secret, change: func(h *Handler) { h.ClientID = "id2" }}},
		"client_secret":         {{base: secret, change: func(h *Handler) { h.ClientSecret = "secret-2" }}},
		"client_auth":           {{base: secret, change: func(h *Handler) { h.ClientAuth = "body" }}},
		"request_format":        {{base: secret, change: func(h *Handler) { h.RequestFormat = "json" }}},
		"timeout":               {{base: secret, change: func(h *Handler) { h.Timeout = caddy.Duration(3 * time.Second) }}},
		"default_lifetime":      {{base: secret, change: func(h *Handler) { h.DefaultLifetime = caddy.Duration(time.Hour) }}},
		"ca_file":               {{base: with(secret, func(h *Handler) { h.CAFile = f.caA }), change: func(h *Handler) { h.CAFile = f.caB }}},
		"issuer":                {{base: with(secret, func(h *Handler) { h.TokenURL, h.Issuer = "", "https://idp.example" }), change: func(h *Handler) { h.Issuer = "https://idp2.example" }}},
		"provider_params":       {{base: preset("entra", map[string]string{"tenant": "a"}), change: func(h *Handler) { h.ProviderParams = map[string]string{"tenant": "b"} }}},
		"private_key":           {{base: privateKey, change: func(h *Handler) { h.PrivateKey = f.key2PEM }}},
		"certificate":           {{base: with(privateKey, func(h *Handler) { h.Certificate = f.certA }), change: func(h *Handler) { h.Certificate = f.certB }}},
		"key_id":                {{base: privateKey, change: func(h *Handler) { h.KeyID = "k2" }}},
		"signing_alg":           {{base: privateKey, change: func(h *Handler) { h.SigningAlg = "PS256" }}, {base: secretJWT, change: func(h *Handler) { h.SigningAlg = "HS512" }}},
		"assertion_audience":    {{base: privateKey, change: func(h *Handler) { h.AssertionAudience = "https://as.example" }}},
		"client_assertion_file": {{base: assertion, change: func(h *Handler) { h.ClientAssertionFile = f.assertionB }}},
		"tls_client_cert":       {{base: tlsAuth, change: func(h *Handler) { h.TLSClientCert, h.TLSClientKey = f.tlsCert2, f.tlsKey2 }}},
		"tls_client_key":        {{base: tlsAuth, change: func(h *Handler) { h.TLSClientKey = f.tlsKeyCopy }}},
		"service_account_file":  {{base: google, change: func(h *Handler) { h.ServiceAccountFile = f.serviceB }}},
		"encryption_keys":       {{base: secret, change: func(h *Handler) { h.EncryptionKeys = []string{f.encryption} }}},

		// Handler
		"grant":           {{base: secret, change: func(h *Handler) { h.Grant = "authorization_code" }}},
		"scopes":          {{base: secret, change: func(h *Handler) { h.Scopes = []string{"read"} }}},
		"audience":        {{base: secret, change: func(h *Handler) { h.Audience = "api" }}},
		"resources":       {{base: secret, change: func(h *Handler) { h.Resources = []string{"https://api.example/"} }}},
		"params":          {{base: secret, change: func(h *Handler) { h.Params = map[string]string{"k": "v"} }}},
		"subject":         {{base: jwtBearer, change: func(h *Handler) { h.Subject = "alice" }}, {base: google, change: func(h *Handler) { h.Subject = "alice@example.com" }}},
		"refresh_token":   {{base: refresh, change: func(h *Handler) { h.RefreshToken = "rt-2" }}},
		"token_store":     {{base: secret, change: func(h *Handler) { h.TokenStore = "memory" }}},
		"dpop":            {{base: secret, change: func(h *Handler) { h.DPoP = "https://api.example/v1" }}, {base: with(secret, func(h *Handler) { h.DPoP = "https://api.example/v1" }), change: func(h *Handler) { h.DPoP = "https://api2.example/v1" }}},
		"dpop_key":        {{base: with(secret, func(h *Handler) { h.DPoP = "https://api.example/v1" }), change: func(h *Handler) { h.DPoPKey = f.keyPEM }}},
		"account":         {{base: code, change: func(h *Handler) { h.Account = "alice" }, notShared: "which of the shared grant's accounts a request uses, chosen per request"}},
		"refresh_before":  {{base: secret, change: func(h *Handler) { h.RefreshBefore = caddy.Duration(time.Minute * 5) }, notShared: "a shared token is replaced as early as the handler that asks earliest wants (pool.go)"}},
		"headers":         {{base: secret, change: func(h *Handler) { h.Headers = map[string]string{"X-A": "1"} }, notShared: perHandler}},
		"org":             {{base: preset("eventtemple", nil), change: func(h *Handler) { h.Org = "42" }, notShared: perHandler}},
		"token_header":    {{base: secret, change: func(h *Handler) { h.TokenHeader = "X-Token" }, notShared: perHandler}},
		"token_prefix":    {{base: secret, change: func(h *Handler) { p := "Token"; h.TokenPrefix = &p }, notShared: perHandler}},
		"upstream_401":    {{base: secret, change: func(h *Handler) { h.Upstream401 = "off" }, notShared: perHandler}},
		"replay_max_body": {{base: secret, change: func(h *Handler) { h.ReplayMaxBody = 1 << 20 }, notShared: perHandler}},
	}
}

// consentNotShared is why a ConsentHandler's own fields are not part of
// the key of the grant it shares.
const consentNotShared = "the consent handler shares the grant of its credentials with the oauth_bearer handlers that name them; " +
	"its own fields shape its endpoints and authorization requests"

// consentSharingCases change a ConsentHandler's own fields: none may change
// the key of the grant it shares (consentNotShared).
func consentSharingCases() map[string]func(c *ConsentHandler) {
	return map[string]func(c *ConsentHandler){
		"redirect_uri":    func(c *ConsentHandler) { c.RedirectURI = "https://p.example/other/cb" },
		"authorize_url":   func(c *ConsentHandler) { c.AuthorizeURL = "https://as.example/authorize2" },
		"scopes":          func(c *ConsentHandler) { c.Scopes = []string{"read"} },
		"pkce":            func(c *ConsentHandler) { off := false; c.PKCE = &off },
		"connect_path":    func(c *ConsentHandler) { c.ConnectPath = "/go" },
		"status_path":     func(c *ConsentHandler) { c.StatusPath = "/st" },
		"disconnect_path": func(c *ConsentHandler) { c.DisconnectPath = "/bye" },
		"account":         func(c *ConsentHandler) { c.Account = "{http.auth.user.id}" },
		"prompt":          func(c *ConsentHandler) { c.Prompt = "login" },
		"display_name":    func(c *ConsentHandler) { c.DisplayName = "Our CRM" },
		"par":             func(c *ConsentHandler) { c.PAR = "off" },
		"par_url":         func(c *ConsentHandler) { c.PARURL = "https://as.example/par" },
	}
}

// sharingKeyOf resolves h as Provision does and returns its pool key.
func sharingKeyOf(t *testing.T, h *Handler) string {
	t.Helper()
	if _, _, err := h.configureShared(provisionReplacer()); err != nil {
		t.Fatalf("configuration %+v: %v", h, err)
	}
	return h.poolKey
}

func TestConfigSharingKeyCoversEveryField(t *testing.T) {
	cases := sharingCases(newSharingFixtures(t))
	consentCases := consentSharingCases()
	for _, ty := range []reflect.Type{reflect.TypeFor[Credentials](), reflect.TypeFor[Handler](), reflect.TypeFor[ConsentHandler]()} {
		for name, f := range fieldsOf[ty] {
			if !f.direct {
				continue
			}
			_, ok := cases[name]
			if ty == reflect.TypeFor[ConsentHandler]() {
				_, ok = consentCases[name]
			}
			if !ok {
				t.Errorf("%s field %s (%s) decides sharing or is deliberately left out of it: add it to key() (config.go) "+
					"and a case that changes it to sharingCases, or a case with notShared and the reason", ty.Name(), name, ty.FieldByIndex(f.index).Name)
			}
		}
	}

	for field, cs := range cases {
		for i, c := range cs {
			t.Run(fmt.Sprintf("%s/%d", field, i), func(t *testing.T) {
				before, after := c.base(), c.base()
				c.change(after)
				if reflect.DeepEqual(before, after) {
					t.Fatal("the change changes nothing")
				}
				k1, k2 := sharingKeyOf(t, before), sharingKeyOf(t, after)
				switch {
				case c.notShared == "" && k1 == k2:
					t.Errorf("changing %s leaves the sharing key as it is: two handlers that differ in it would share one token source or grant", field)
				case c.notShared != "" && k1 != k2:
					t.Errorf("changing %s changes the sharing key, but it is listed as not shared: %s", field, c.notShared)
				}
			})
		}
	}

	// The consent handler and the oauth_bearer handlers naming the same
	// credentials share one grant, whatever the consent handler's own
	// fields.
	consent := func() *ConsentHandler {
		return &ConsentHandler{Credentials: Credentials{TokenURL: "https://as.example/token", ClientID: "id", ClientSecret: "secret-1"},
			RedirectURI: "https://p.example/oauth/cb", AuthorizeURL: "https://as.example/authorize"}
	}
	consentKey := func(c *ConsentHandler) string {
		cs, err := c.configure(provisionReplacer())
		if err != nil {
			t.Fatal(err)
		}
		return grantKey(cs, "") // as ConsentHandler.Provision
	}
	want := sharingKeyOf(t, &Handler{Credentials: consent().Credentials, Grant: grantAuthorizationCode})
	if got := consentKey(consent()); got != want {
		t.Errorf("the consent handler's key %s is not the key %s of oauth_bearer with the same credentials and grant authorization_code", got, want)
	}
	for field, change := range consentCases {
		c := consent()
		change(c)
		if got := consentKey(c); got != want {
			t.Errorf("changing the consent handler's %s changes the key of the grant it shares, but %s", field, consentNotShared)
		}
	}
}

// The resolved credential set: its exported fields are in key() through
// JSON; each unexported one is hashed into key() (checked by changing it)
// or is derived from what is, as its entry says.
func TestConfigSharingKeyCredentialSet(t *testing.T) {
	hashed := map[string]func(cs *credentialSet){
		"clientSecret":   func(cs *credentialSet) { cs.clientSecret += "x" },
		"caPEM":          func(cs *credentialSet) { cs.caPEM = append(cs.caPEM, 'x') },
		"encryptionKeys": func(cs *credentialSet) { cs.encryptionKeys = append(cs.encryptionKeys, []byte("k")) },
		"keyDigest":      func(cs *credentialSet) { cs.keyDigest = append(cs.keyDigest, 'x') },
	}
	derived := map[string]string{
		"assertionIssuer":  "the client id (JSON), or the service account's client_email (keyDigest)",
		"assertionSubject": "the client id (JSON)",
		"scopeInAssertion": "a service account's (keyDigest: its client_email and key id)",
		"signer":           "private_key (keyDigest: its public key, key_id, signing_alg, certificate) or the client secret (hashed) and signing_alg (keyDigest)",
		"tlsCert":          "its files (keyDigest: their paths; what they hold is read again when they change)",
		"preset":           "Provider (JSON)",
		"dpopKey":          "dpop_key (DPoPJKT, JSON: its thumbprint)",
		"keyMaterial":      "the private keys keyDigest identifies (private_key's public key, the service account's key id, the TLS key's file)",
	}
	base := func() *credentialSet {
		h := &Handler{Credentials: Credentials{TokenURL: "https://as.example/token", ClientID: "id", ClientSecret: "secret-1"}}
		cs, err := h.configure(provisionReplacer())
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	k0 := base().key()
	ty := reflect.TypeFor[credentialSet]()
	for i := range ty.NumField() {
		f := ty.Field(i)
		if f.IsExported() {
			if tag := f.Tag.Get("json"); tag == "-" || strings.HasPrefix(tag, "-,") {
				t.Errorf("credentialSet.%s is left out of JSON, and so out of key()", f.Name)
				continue
			}
			cs := base()
			v := reflect.ValueOf(cs).Elem().Field(i)
			switch v.Kind() {
			case reflect.String:
				v.SetString(v.String() + "x")
			case reflect.Bool:
				v.SetBool(!v.Bool())
			case reflect.Int64:
				v.SetInt(v.Int() + 1)
			case reflect.Slice:
				v.Set(reflect.Append(v, reflect.ValueOf("x")))
			case reflect.Map:
				v.Set(reflect.ValueOf(map[string]string{"x": "y"}))
			default:
				t.Errorf("credentialSet.%s: a %s; teach this test to change it", f.Name, v.Kind())
				continue
			}
			if cs.key() == k0 {
				t.Errorf("changing credentialSet.%s leaves key() as it is", f.Name)
			}
			continue
		}
		if change, ok := hashed[f.Name]; ok {
			cs := base()
			change(cs)
			if cs.key() == k0 {
				t.Errorf("changing credentialSet.%s leaves key() as it is, though it is listed as hashed into it", f.Name)
			}
			continue
		}
		if derived[f.Name] == "" {
			t.Errorf("credentialSet.%s: hash it into key() (config.go) and list it in hashed, or list in derived what in the key it follows from", f.Name)
		}
	}
	for name := range hashed {
		if _, ok := ty.FieldByName(name); !ok {
			t.Errorf("hashed lists %s, which credentialSet no longer has", name)
		}
	}
	for name := range derived {
		if _, ok := ty.FieldByName(name); !ok {
			t.Errorf("derived lists %s, which credentialSet no longer has", name)
		}
	}
}

// A certificate renewed with the same key (certbot --reuse-key, a CA's
// renewal), its file replaced, then a reload: the next token request
// carries the new certificate's thumbprint. The server knows only the new
// one by then, as Entra ID does once the old certificate is removed from
// the app registration. (The sharing key left the certificate out: the
// reload kept the old token source, whose assertions named the old
// certificate until Caddy was restarted.)
func TestConfigSharingCertificateRenewedOnReload(t *testing.T) {
	clock := useFakeClock(t)
	k := testkeys.Keys()
	certA, certB := testkeys.SelfSignedCert(t, k.RSA, "renewed-a"), testkeys.SelfSignedCert(t, k.RSA, "renewed-b")
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, k.RSA))
	certPath := testkeys.WriteFile(t, "client.crt", testkeys.PEM("CERTIFICATE", certA.Raw))
	s := newJWTAS(t)
	s.register("renewed", k.RSA.Public(), oauthclient.CertThumbprint(certA))
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf("\t\ttoken_url %s\n\t\tclient_id renewed\n\t\tprivate_key %s\n\t\tcertificate %s",
		s.tokenURL(), keyPath, certPath), up)
	c := startCaddy(t, sites)
	wantInjected(t, c, up, "/before", "at-renewed-1")

	testkeys.ReplaceFile(t, certPath, testkeys.PEM("CERTIFICATE", certB.Raw))
	s.register("renewed", k.RSA.Public(), oauthclient.CertThumbprint(certB))
	if err := c.load(sites); err != nil {
		t.Fatal(err)
	}
	clock.add(2 * time.Hour) // the first token (3600 s) has expired
	status, body := c.get("/after")
	var thumbprints []string
	for _, a := range s.assertions() {
		tp, _ := a.JOSE["x5t#S256"].(string)
		thumbprints = append(thumbprints, map[string]string{oauthclient.CertThumbprint(certA): "A", oauthclient.CertThumbprint(certB): "B"}[tp])
	}
	if status != 200 || strings.Join(thumbprints, ",") != "A,B" {
		t.Fatalf("after the reload: status %d (%s); the assertions named the certificates %v, want [A B] (server: %q)",
			status, strings.TrimSpace(body), thumbprints, s.lastRefusal())
	}
	if got := up.last(t).Get("Authorization"); got != "Bearer at-renewed-2" {
		t.Errorf("upstream Authorization %q, want the token had with the renewed certificate", got)
	}
}
