package oauthbearer

// End-to-end tests of client authentication without a shared secret and of
// the JWT bearer grant: a real Caddy, loaded from a Caddyfile, gets a token
// from a token endpoint that verifies what it is sent as a provider does,
// and injects it into the proxied request. Each test also looks for the
// private key, the assertions and the secret where they must never appear:
// Caddy's log, the answer to the client, and the adapted JSON.

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// e2eSite is a site block with one oauth_bearer handler (its
// subdirectives given) in front of up.
func e2eSite(directive, subdirectives string, up *upstream) string {
	return fmt.Sprintf("http://LISTEN {\n\t%s {\n%s\n\t}\n\treverse_proxy %s\n}\n", directive, subdirectives, up.hostport())
}

// wantInjected fails unless a request through c reaches up with
// Authorization: Bearer <want>; it returns the answer's body.
func wantInjected(t *testing.T, c *testCaddy, up *upstream, path, want string) string {
	t.Helper()
	status, body := c.get(path)
	if status != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", path, status, body)
	}
	if got := up.last(t).Get("Authorization"); got != "Bearer "+want {
		t.Fatalf("upstream Authorization = %q, want %q", got, "Bearer "+want)
	}
	return body
}

// assertNothingLeaked looks for key material (pems) and secret values
// (assertions, secrets) in Caddy's log, in the answers given to the client,
// and in the adapted JSON of sites.
func assertNothingLeaked(t *testing.T, c *testCaddy, sites string, answers string, pems [][]byte, values []string) {
	t.Helper()
	adapted, err := c.adapt(sites)
	if err != nil {
		t.Fatal(err)
	}
	logs := c.logs()
	if !strings.Contains(logs, "first token obtained") {
		t.Errorf("the log does not show the token being obtained; is it the right log?\n%s", logs)
	}
	for where, text := range map[string]string{"Caddy's log": logs, "the answer to the client": answers, "the adapted JSON": string(adapted)} {
		testkeys.AssertNoKeyMaterial(t, where, text, pems...)
		if len(values) > 0 {
			assertNoValueLeak(t, where, text, values...)
		}
	}
}

// private_key_jwt with each kind of key: RSA from a PKCS#1 file with its
// certificate (x5t#S256, checked by the server), key_id and signing_alg
// PS256; EC P-256 as inline PEM from {env.X}; Ed25519 from a {file.…}
// placeholder. The server verifies each assertion against the registered
// key and issues one token, which the upstream receives; the next request
// uses the cached token.
func TestClientAuthE2EPrivateKeyJWT(t *testing.T) {
	k := testkeys.Keys()
	rsaPEM := testkeys.PEM("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.RSA))
	rsaCert := testkeys.SelfSignedCert(t, k.RSA, "e2e-rsa-client")
	p256PEM := testkeys.SEC1PEM(t, k.P256)
	edPEM := testkeys.PKCS8PEM(t, k.Ed)

	cases := []struct {
		name     string
		clientID string
		key      crypto.Signer
		pems     [][]byte
		env      map[string]string
		// lines names the key and how it signs; KEYFILE and CERTFILE
		// stand for the paths of the key and certificate files.
		lines    string
		certS256 string // registered with the server: it requires the header
		alg, kid string
		wantJSON string // what the adapted JSON holds instead of the key
	}{
		{
			name: "rsa-file-certificate-ps256", clientID: "e2e-rsa", key: k.RSA,
			pems:     [][]byte{rsaPEM},
			lines:    "\t\tprivate_key KEYFILE\n\t\tcertificate CERTFILE\n\t\tkey_id 2024-11\n\t\tsigning_alg PS256\n",
			certS256: oauthclient.CertThumbprint(rsaCert), alg: "PS256", kid: "2024-11",
		},
		{
			name: "p256-inline-env", clientID: "e2e-p256", key: k.P256,
			pems:  [][]byte{p256PEM},
			env:   map[string]string{"OAB_E2E_P256_KEY": string(p256PEM)},
			lines: "\t\tprivate_key {env.OAB_E2E_P256_KEY}\n",
			alg:   "ES256", wantJSON: "{env.OAB_E2E_P256_KEY}",
		},
		{
			name: "ed25519-file-placeholder", clientID: "e2e-ed25519", key: k.Ed,
			pems:  [][]byte{edPEM},
			lines: "\t\tprivate_key {file.KEYFILE}\n\t\tkey_id ed-1\n",
			alg:   "EdDSA", kid: "ed-1", wantJSON: "{file.",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			keyPath, certPath := filepath.Join(dir, "client.key"), filepath.Join(dir, "client.crt")
			if err := os.WriteFile(keyPath, tc.pems[0], 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(certPath, testkeys.PEM("CERTIFICATE", rsaCert.Raw), 0o600); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			s := newJWTAS(t)
			s.register(tc.clientID, tc.key.Public(), tc.certS256)
			up := newUpstream(t)
			sites := e2eSite("oauth_bearer", fmt.Sprintf("\t\ttoken_url %s\n\t\tclient_id %s\n\t\tclient_auth private_key_jwt\n", s.tokenURL(), tc.clientID)+
				strings.NewReplacer("KEYFILE", keyPath, "CERTFILE", certPath).Replace(tc.lines)+"\t\tscope read write", up)
			c := startCaddy(t, sites)

			want := "at-" + tc.clientID + "-1"
			answers := wantInjected(t, c, up, "/first", want)
			answers += wantInjected(t, c, up, "/second", want)
			if s.issued() != 1 || s.refused() != 0 || s.tokenRequests() != 1 {
				t.Fatalf("server: %d requests, %d issued, %d refused (%q); want one token for both requests",
					s.tokenRequests(), s.issued(), s.refused(), s.lastRefusal())
			}
			g := s.issuedLog()[0]
			if g.Client != tc.clientID || g.GrantType != "client_credentials" || g.Scope != "read write" || g.KID != tc.kid {
				t.Errorf("issued %+v", g)
			}
			sent := s.assertions()
			if len(sent) != 1 || sent[0].assertionParam() != "client_assertion" {
				t.Fatalf("assertions sent: %+v", sent)
			}
			h := sent[0].JOSE
			if h["alg"] != tc.alg || h["typ"] != "JWT" {
				t.Errorf("header %v, want alg %s and typ JWT", h, tc.alg)
			}
			if kid, _ := h["kid"].(string); kid != tc.kid {
				t.Errorf("kid %q, want %q", kid, tc.kid)
			}
			if got, _ := h["x5t#S256"].(string); got != tc.certS256 {
				t.Errorf("x5t#S256 %q, want %q", got, tc.certS256)
			}
			if _, has := h["x5t"]; has != (tc.certS256 != "") {
				t.Errorf("x5t present: %v, want %v", has, tc.certS256 != "")
			}
			f := s.tokenLog()[0].form()
			if f.Get("client_id") != tc.clientID || f.Has("client_secret") || f.Get("grant_type") != "client_credentials" {
				t.Errorf("token request form: %v", f)
			}
			if a := s.tokenLog()[0].Header.Get("Authorization"); a != "" {
				t.Errorf("token request had Authorization %q; the assertion is the only credential", a)
			}
			if tc.wantJSON != "" {
				adapted, err := c.adapt(sites)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(adapted), tc.wantJSON) {
					t.Errorf("adapted JSON does not hold the placeholder %s", tc.wantJSON)
				}
			}
			assertNothingLeaked(t, c, sites, answers, tc.pems, s.sentAssertions())
		})
	}
}

// client_secret_jwt: the assertion is signed HS256 with the client secret,
// which itself is never sent, logged, or written into the adapted JSON.
func TestClientAuthE2EClientSecretJWT(t *testing.T) {
	const secret = "e2e-client-secret-jwt-0123456789-abcdefghijklmnop"
	t.Setenv("OAB_E2E_CSJ_SECRET", secret)
	s := newJWTAS(t)
	s.register("web-app", []byte(secret), "")
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		token_url %s
		client_id web-app
		client_secret {env.OAB_E2E_CSJ_SECRET}
		client_auth client_secret_jwt`, s.tokenURL()), up)
	c := startCaddy(t, sites)

	answers := wantInjected(t, c, up, "/", "at-web-app-1")
	if s.issued() != 1 || s.refused() != 0 {
		t.Fatalf("issued %d refused %d (%q)", s.issued(), s.refused(), s.lastRefusal())
	}
	sent := s.assertions()
	if len(sent) != 1 || sent[0].JOSE["alg"] != "HS256" {
		t.Fatalf("assertions: %+v", sent)
	}
	for _, r := range s.tokenLog() {
		for name, vs := range r.form() {
			for _, v := range vs {
				if strings.Contains(v, secret) {
					t.Errorf("the token request's %s carries the secret", name)
				}
			}
		}
	}
	if a := s.tokenLog()[0].Header.Get("Authorization"); a != "" {
		t.Errorf("token request had Authorization %q", a)
	}
	assertNothingLeaked(t, c, sites, answers, nil, append(s.sentAssertions(), secret))
}

// client_assertion_file: the assertion another program keeps in a file (a
// projected service account token) is read again for every token request.
// The file is rewritten between two token requests (the first token
// expires on a fake clock), and the second request carries the new
// assertion; the server would refuse the old one as a replay.
func TestClientAuthE2EAssertionFile(t *testing.T) {
	clock := useFakeClock(t)
	key := testkeys.Keys().P384
	s := newJWTAS(t)
	s.register("workload", key.Public(), "")
	kubelet, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	mint := func() string {
		a, err := kubelet.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "workload", Subject: "workload", Audience: s.tokenURL()})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	path := filepath.Join(t.TempDir(), "token")
	first := mint()
	if err := os.WriteFile(path, []byte(first+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := newUpstream(t)
	// Nothing in this configuration is secret: the stored token needs an
	// encryption_key of its own.
	t.Setenv("OAB_E2E_RECORD_KEY", "bm90LWEtcmVhbC1rZXktYnV0LTMyLWJ5dGVzLWxvbmctZW5vdWdo")
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		token_url %s
		client_id workload
		client_assertion_file %s
		encryption_key {env.OAB_E2E_RECORD_KEY}`, s.tokenURL(), path), up)
	c := startCaddy(t, sites)

	answers := wantInjected(t, c, up, "/one", "at-workload-1")
	second := mint()
	testkeys.ReplaceFile(t, path, []byte(second+"\n"))
	clock.add(2 * time.Hour) // the first token (3600 s) has expired
	answers += wantInjected(t, c, up, "/two", "at-workload-2")

	sent := s.sentAssertions()
	if len(sent) != 2 || sent[0] != first || sent[1] != second {
		t.Fatalf("assertions sent: %d, first is the file's first: %v, second is the rewritten one: %v",
			len(sent), len(sent) > 0 && sent[0] == first, len(sent) > 1 && sent[1] == second)
	}
	if s.issued() != 2 || s.refused() != 0 {
		t.Fatalf("issued %d refused %d (%q)", s.issued(), s.refused(), s.lastRefusal())
	}
	if a := s.assertions()[0]; a.assertionParam() != "client_assertion" {
		t.Errorf("sent as %s", a.assertionParam())
	}
	assertNothingLeaked(t, c, sites, answers, [][]byte{testkeys.PKCS8PEM(t, key)}, sent)
}

// client_auth tls (RFC 8705): the token endpoint is behind TLS that
// requires a client certificate of its CA; tls_client_cert gives it, and
// ca_file makes Caddy trust the server's CA.
func TestClientAuthE2EMutualTLS(t *testing.T) {
	serverCA, clientCA := testkeys.NewCA(t, "e2e server CA"), testkeys.NewCA(t, "e2e client CA")
	s := newMTLSAS(t, serverCA, clientCA)
	files := writeMTLSClient(t, clientCA, "mtls-client", serverCA)
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		token_url %s
		client_id mtls-client
		client_auth tls
		tls_client_cert %s %s
		ca_file %s`, s.tokenURL(), files.cert, files.key, files.ca), up)
	c := startCaddy(t, sites)

	answers := wantInjected(t, c, up, "/", "at-mtls-mtls-client-1")
	if s.issued() != 1 || s.tokenRequests() != 1 {
		t.Fatalf("server: %d requests, %d issued; last refusal %q", s.tokenRequests(), s.issued(), s.lastRefusal())
	}
	assertNothingLeaked(t, c, sites, answers, [][]byte{files.keyPEM}, nil)
}

// mtlsClientFiles are a client certificate, its key and the server's CA,
// written to files.
type mtlsClientFiles struct {
	cert, key, ca string
	keyPEM        []byte
}

// writeMTLSClient issues a client certificate for cn by clientCA with a
// fresh key, and writes it, its key and serverCA's certificate to files.
func writeMTLSClient(t *testing.T, clientCA *testkeys.CA, cn string, serverCA *testkeys.CA) mtlsClientFiles {
	t.Helper()
	key := testkeys.Keys().P256b
	cert := clientCA.IssueClient(t, cn, key)
	dir := t.TempDir()
	f := mtlsClientFiles{cert: filepath.Join(dir, "client.crt"), key: filepath.Join(dir, "client.key"), ca: filepath.Join(dir, "ca.pem"),
		keyPEM: testkeys.SEC1PEM(t, key)}
	for path, data := range map[string][]byte{f.cert: testkeys.PEM("CERTIFICATE", cert.Raw), f.key: f.keyPEM, f.ca: testkeys.PEM("CERTIFICATE", serverCA.Cert.Raw)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// With issuer and a client certificate, the token request goes to the
// discovered mtls_endpoint_aliases.token_endpoint, not to token_endpoint.
// client_auth is left out: tls_client_cert implies it.
func TestClientAuthE2EMutualTLSDiscoveredAlias(t *testing.T) {
	serverCA, clientCA := testkeys.NewCA(t, "e2e server CA"), testkeys.NewCA(t, "e2e client CA")
	s := newMTLSAS(t, serverCA, clientCA)
	plain := newJWTAS(t) // token_endpoint: must not be used
	files := writeMTLSClient(t, clientCA, "alias-client", serverCA)
	is := newFakeAS(t)
	is.setMetadata(map[string]any{
		"issuer":                is.URL,
		"token_endpoint":        plain.tokenURL(),
		"mtls_endpoint_aliases": map[string]any{"token_endpoint": s.tokenURL()},
	}, http.StatusOK)
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		issuer %s
		client_id alias-client
		tls_client_cert %s %s
		ca_file %s`, is.URL, files.cert, files.key, files.ca), up)
	c := startCaddy(t, sites)

	answers := wantInjected(t, c, up, "/", "at-mtls-alias-client-1")
	if s.issued() != 1 || plain.tokenRequests() != 0 || is.metadataReads() != 1 {
		t.Fatalf("mTLS alias issued %d, token_endpoint got %d requests, discovery %d; want 1, 0, 1",
			s.issued(), plain.tokenRequests(), is.metadataReads())
	}
	assertNothingLeaked(t, c, sites, answers, [][]byte{files.keyPEM}, nil)
}

// grant jwt_bearer with a Google service account key file: the google
// preset's defaults (grant jwt_bearer, no client authentication), the
// token_uri of the file as the endpoint and the audience, the scope as a
// claim, the key id as kid.
func TestClientAuthE2EJWTBearerGoogle(t *testing.T) {
	key := testkeys.Keys().RSA2
	s := newJWTAS(t)
	saPath := testkeys.WriteFile(t, "sa.json", testkeys.GoogleKeyJSON(t, key, s.tokenURL(), nil))
	s.register("robot@proj.iam.gserviceaccount.com", key.Public(), "")
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer google", fmt.Sprintf(`		service_account_file %s
		scope https://www.googleapis.com/auth/cloud-platform`, saPath), up)
	c := startCaddy(t, sites)

	answers := wantInjected(t, c, up, "/", "at-robot@proj.iam.gserviceaccount.com-1")
	answers += wantInjected(t, c, up, "/again", "at-robot@proj.iam.gserviceaccount.com-1")
	if s.issued() != 1 || s.refused() != 0 {
		t.Fatalf("issued %d refused %d (%q)", s.issued(), s.refused(), s.lastRefusal())
	}
	g := s.issuedLog()[0]
	if g.GrantType != "urn:ietf:params:oauth:grant-type:jwt-bearer" || g.Scope != "https://www.googleapis.com/auth/cloud-platform" ||
		g.KID != "0123456789abcdef" || g.Sub != "" {
		t.Errorf("issued %+v", g)
	}
	f := s.tokenLog()[0].form()
	if f.Has("client_assertion") || f.Has("client_secret") || f.Get("assertion") == "" {
		t.Errorf("token request form: %v", f)
	}
	if a := s.tokenLog()[0].Header.Get("Authorization"); a != "" {
		t.Errorf("token request had Authorization %q", a)
	}
	assertNothingLeaked(t, c, sites, answers, [][]byte{testkeys.PKCS8PEM(t, key)}, s.sentAssertions())
}

// grant jwt_bearer with private_key and subject (Salesforce's shape),
// client_auth none: the assertion's iss is client_id, its sub the subject,
// its aud the token endpoint, the scope a claim.
func TestClientAuthE2EJWTBearerSubjectClientAuthNone(t *testing.T) {
	testJWTBearerSubject(t, "\t\tclient_auth none\n")
}

// The same Caddyfile as a user writes it from the documented surface
// (grant jwt_bearer, private_key, subject, scope), without client_auth:
// the signed assertion is the grant and there is no client secret, so the
// configuration must load and work as with client_auth none.
//
// FAILS (production): the generic preset's client_auth basic applies, and
// loading stops with "client_secret: is required (client_auth basic)".
func TestClientAuthE2EJWTBearerSubject(t *testing.T) {
	testJWTBearerSubject(t, "")
}

func testJWTBearerSubject(t *testing.T, extra string) {
	key := testkeys.Keys().RSA
	keyPEM := testkeys.PKCS8PEM(t, key)
	keyPath := testkeys.WriteFile(t, "sf.key", keyPEM)
	s := newJWTAS(t)
	s.register("3MVG9-consumer-key", key.Public(), "")
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		grant jwt_bearer
		token_url %s
		client_id 3MVG9-consumer-key
		private_key %s
		subject integration@example.com
%s		scope api`, s.tokenURL(), keyPath, extra), up)
	c := startCaddy(t, sites)

	answers := wantInjected(t, c, up, "/", "at-3MVG9-consumer-key-1")
	if s.issued() != 1 || s.refused() != 0 {
		t.Fatalf("issued %d refused %d (%q)", s.issued(), s.refused(), s.lastRefusal())
	}
	g := s.issuedLog()[0]
	if g.GrantType != "urn:ietf:params:oauth:grant-type:jwt-bearer" || g.Sub != "integration@example.com" ||
		g.Client != "3MVG9-consumer-key" || g.Scope != "api" {
		t.Errorf("issued %+v", g)
	}
	if f := s.tokenLog()[0].form(); f.Has("client_assertion") || f.Has("client_secret") {
		t.Errorf("token request form: %v", f)
	}
	assertNothingLeaked(t, c, sites, answers, [][]byte{keyPEM}, s.sentAssertions())
}

// An assertion file that goes bad after loading (its owner wrote
// something else into it) fails the token request with a token error, and
// neither the log nor the answer repeats what the file holds.
func TestClientAuthE2EAssertionFileGoesBad(t *testing.T) {
	clock := useFakeClock(t)
	key := testkeys.Keys().P384
	s := newJWTAS(t)
	s.register("workload", key.Public(), "")
	kubelet, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	good, err := kubelet.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "workload", Subject: "workload", Audience: s.tokenURL()})
	if err != nil {
		t.Fatal(err)
	}
	path := testkeys.WriteFile(t, "token", []byte(good))
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		token_url %s
		client_id workload
		client_assertion_file %s
		token_store memory`, s.tokenURL(), path), up)
	c := startCaddy(t, sites)
	answers := wantInjected(t, c, up, "/", "at-workload-1")

	const bad = "password=hunter2-not-a-jwt-at-all"
	testkeys.ReplaceFile(t, path, []byte(bad))
	clock.add(2 * time.Hour)
	status, body := c.get("/bad")
	if status != http.StatusBadGateway || !strings.Contains(body, "generic") {
		t.Fatalf("with a bad assertion file: %d %q, want 502 naming the provider", status, body)
	}
	if n := s.tokenRequests(); n != 1 {
		t.Errorf("the token endpoint got %d requests; a bad assertion file must not be sent", n)
	}
	logs := c.logs()
	if !strings.Contains(logs, "client_assertion_file") || !strings.Contains(logs, path) {
		t.Errorf("the log does not name the file:\n%s", logs)
	}
	assertNoValueLeak(t, "Caddy's log", logs, bad, good)
	assertNoValueLeak(t, "the answer to the client", answers+body, bad, good)
}

// client_secret_jwt with signing_alg HS512: resolveClientAuth signs with
// the configured HMAC algorithm (NewSecretAssertionSigner takes HS256,
// HS384 and HS512), and SigningAlg's own error points users with an HS
// algorithm to client_secret_jwt; so signing_alg HS512 with
// client_secret_jwt must load and sign HS512. (checkClientAuth once
// refused signing_alg without private_key, so that path was unreachable.)
func TestClientAuthE2EClientSecretJWTHS512(t *testing.T) {
	const secret = "e2e-client-secret-jwt-hs512-0123456789-abcdefghijklmnopqrstuvwxyz-0123"
	t.Setenv("OAB_E2E_CSJ512_SECRET", secret)
	s := newJWTAS(t)
	s.register("web-app-512", []byte(secret), "")
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf(`		token_url %s
		client_id web-app-512
		client_secret {env.OAB_E2E_CSJ512_SECRET}
		client_auth client_secret_jwt
		signing_alg HS512`, s.tokenURL()), up)
	c := startCaddy(t, sites)
	wantInjected(t, c, up, "/", "at-web-app-512-1")
	if sent := s.assertions(); len(sent) != 1 || sent[0].JOSE["alg"] != "HS512" {
		t.Fatalf("assertions: %+v", sent)
	}
}
