package oauthbearer

// What is kept in Caddy's storage is secret from whoever can read or write
// the storage but does not hold the configuration's secrets: a record (a
// shared token, a grant) and the consent state cookie are sealed with a key
// derived from encryption_key or from secret material of the configuration
// (the client secret, the private key, the TLS client key, the service
// account's key), never from public inputs alone (the fixed purpose string
// and the record's id, which is in its storage key too). A configuration
// that holds nothing secret must give encryption_key to store anything.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// publicAEAD is the AES-256-GCM of a key anyone can derive who reads the
// storage: HKDF-SHA256 of a public secret (empty, as the derivation of a
// configuration without a client secret was; or the client id), salted
// with the record kind's fixed purpose string and bound to the record's id.
func publicAEAD(t *testing.T, secret, purpose, id string) cipher.AEAD {
	t.Helper()
	key, err := hkdf.Key(sha256.New, []byte(secret), []byte(purpose), id, 32)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return aead
}

// publicOpen tries to open sealed (nonce first, bound to aad) with aead.
func publicOpen(aead cipher.AEAD, aad string, sealed []byte) ([]byte, bool) {
	ns := aead.NonceSize()
	if len(sealed) < ns+aead.Overhead() {
		return nil, false
	}
	plain, err := aead.Open(nil, sealed[:ns], sealed[ns:], []byte(aad))
	return plain, err == nil
}

// publicSeal seals plain for aad with aead, as a forger would.
func publicSeal(aead cipher.AEAD, aad string, plain []byte) []byte {
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	return aead.Seal(nonce, nonce, plain, []byte(aad))
}

// storedTokenRecord returns the storage key and the id of the one
// client-credentials token record in c's file_system storage.
func storedTokenRecord(t *testing.T, c *testCaddy) (key, path, id string) {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(c.dir, "storage", "oauth_bearer", "tokens", "*.json"))
	if len(paths) != 1 {
		t.Fatalf("want one stored token record, found %d: %v", len(paths), paths)
	}
	id = strings.TrimSuffix(filepath.Base(paths[0]), ".json")
	return "oauth_bearer/tokens/" + id + ".json", paths[0], id
}

// recordSecrecyCase is one way a client proves itself, with a token
// endpoint that checks it: the subdirectives of the site and the access
// token its first request gets.
type recordSecrecyCase struct {
	name     string
	clientID string
	setup    func(t *testing.T) (subdirectives, firstToken string)
}

func recordSecrecyCases() []recordSecrecyCase {
	return []recordSecrecyCase{
		{name: "client_secret", clientID: "client-1", setup: func(t *testing.T) (string, string) {
			as := newFakeAS(t)
			as.Format, as.ClientAuth = "form", "basic"
			t.Setenv("OAB_SECRECY_SECRET", as.Secret)
			return fmt.Sprintf("\t\ttoken_url %s\n\t\tclient_id client-1\n\t\tclient_secret {env.OAB_SECRECY_SECRET}\n\t\tclient_auth basic", as.tokenURL()), "tok-1-"
		}},
		{name: "private_key_jwt", clientID: "secrecy-pkjwt", setup: func(t *testing.T) (string, string) {
			key := testkeys.Keys().P256
			s := newJWTAS(t)
			s.register("secrecy-pkjwt", key.Public(), "")
			path := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, key))
			return fmt.Sprintf("\t\ttoken_url %s\n\t\tclient_id secrecy-pkjwt\n\t\tprivate_key %s", s.tokenURL(), path), "at-secrecy-pkjwt-1"
		}},
		{name: "tls", clientID: "secrecy-mtls", setup: func(t *testing.T) (string, string) {
			serverCA, clientCA := testkeys.NewCA(t, "secrecy server CA"), testkeys.NewCA(t, "secrecy client CA")
			s := newMTLSAS(t, serverCA, clientCA)
			files := writeMTLSClient(t, clientCA, "secrecy-mtls", serverCA)
			return fmt.Sprintf("\t\ttoken_url %s\n\t\tclient_id secrecy-mtls\n\t\tclient_auth tls\n\t\ttls_client_cert %s %s\n\t\tca_file %s",
				s.tokenURL(), files.cert, files.key, files.ca), "at-mtls-secrecy-mtls-1"
		}},
		{name: "jwt_bearer_private_key", clientID: "secrecy-bearer", setup: func(t *testing.T) (string, string) {
			key := testkeys.Keys().RSA
			s := newJWTAS(t)
			s.register("secrecy-bearer", key.Public(), "")
			path := testkeys.WriteFile(t, "bearer.key", testkeys.PKCS8PEM(t, key))
			return fmt.Sprintf("\t\tgrant jwt_bearer\n\t\ttoken_url %s\n\t\tclient_id secrecy-bearer\n\t\tprivate_key %s\n\t\tsubject someone@example.com\n\t\tscope api",
				s.tokenURL(), path), "at-secrecy-bearer-1"
		}},
		{name: "jwt_bearer_service_account", clientID: "robot@proj.iam.gserviceaccount.com", setup: func(t *testing.T) (string, string) {
			key := testkeys.Keys().RSA2
			s := newJWTAS(t)
			s.register("robot@proj.iam.gserviceaccount.com", key.Public(), "")
			path := testkeys.WriteFile(t, "sa.json", testkeys.GoogleKeyJSON(t, key, s.tokenURL(), nil))
			return fmt.Sprintf("\t\tservice_account_file %s\n\t\tscope https://www.googleapis.com/auth/cloud-platform", path),
				"at-robot@proj.iam.gserviceaccount.com-1"
		}},
	}
}

// For each way of client authentication, the token record a real Caddy
// stores cannot be opened with a key derived from public inputs, and a
// record forged with such a key is not used: after a restart the proxy
// fetches a token of its own instead of sending the forged one upstream.
// The record written is readable with the configuration's own key (a
// restart uses it: a warm start, no token request).
func TestStoredTokenRecordNotOpenableFromPublicInputs(t *testing.T) {
	for _, tc := range recordSecrecyCases() {
		t.Run(tc.name, func(t *testing.T) {
			subdirectives, first := tc.setup(t)
			up := newUpstream(t)
			directive := "oauth_bearer"
			if tc.name == "jwt_bearer_service_account" {
				directive = "oauth_bearer google"
			}
			sites := e2eSite(directive, subdirectives, up)
			c := startCaddy(t, sites)
			if status, body := c.get("/first"); status != http.StatusOK {
				t.Fatalf("GET /first: %d %q", status, body)
			}
			got := up.last(t).Get("Authorization")
			if !strings.HasPrefix(got, "Bearer "+first) {
				t.Fatalf("upstream got %q, want the token %s…", got, first)
			}

			key, path, id := storedTokenRecord(t, c)
			sealed, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, public := range []string{"", tc.clientID, id} {
				if plain, ok := publicOpen(publicAEAD(t, public, "caddy-oauth-bearer token v1", id), key, sealed); ok {
					t.Fatalf("the stored token record opens with a key derived from public inputs (secret %q): %.60s…", public, plain)
				}
			}

			// A restart takes the stored token: the record is sealed with
			// a key the configuration derives again.
			c.restart(sites)
			c.get("/warm")
			if again := up.last(t).Get("Authorization"); again != got {
				t.Fatalf("after a restart the upstream got %q, want the stored %q (a warm start)", again, got)
			}

			// A record forged with the public key is not taken.
			now := time.Now()
			forged, _ := json.Marshal(tokenRecord{AccessToken: "forged-by-a-storage-writer", Obtained: now, Expiry: now.Add(time.Hour)})
			if err := os.WriteFile(path, publicSeal(publicAEAD(t, "", "caddy-oauth-bearer token v1", id), key, forged), 0o600); err != nil {
				t.Fatal(err)
			}
			c.restart(sites)
			c.get("/after-forgery")
			if sent := up.last(t).Get("Authorization"); sent == "Bearer forged-by-a-storage-writer" || sent == got || !strings.HasPrefix(sent, "Bearer ") {
				t.Fatalf("after a record was forged with a public key the upstream got %q; want a newly fetched token", sent)
			}
		})
	}
}

// A configuration that holds nothing secret (client_auth none, or an
// assertion read from client_assertion_file) and stores something (a
// client-credentials token with token_store storage, the default; a grant;
// the consent state) is refused at load, by the Caddyfile adapter (on the
// directive's line) and by Provision for JSON, with an error that names
// encryption_key, says how to make one and mentions token_store memory. It
// loads with token_store memory (tokens only) or with encryption_key.
func TestNoSecretNeedsEncryptionKey(t *testing.T) {
	jwtShaped := "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.c2lnbmF0dXJl"
	assertion := testkeys.WriteFile(t, "assertion", []byte(jwtShaped))
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	const tokenURL = "http://127.0.0.1:9/token"
	consent := func(extra string) string {
		return fmt.Sprintf(`http://LISTEN {
	oauth_bearer_consent /oauth/* {
		token_url     %s
		authorize_url http://127.0.0.1:9/authorize
		client_id     public-app
		client_auth   none
		redirect_uri  http://LISTEN/oauth/callback
%s	}
	respond "next"
}
`, tokenURL, extra)
	}
	injector := func(lines, extra string) string {
		return fmt.Sprintf("http://LISTEN {\n\toauth_bearer {\n\t\ttoken_url %s\n%s%s\t}\n\trespond \"next\"\n}\n", tokenURL, lines, extra)
	}
	cases := []struct {
		name      string
		sites     func(extra string) string
		tokenOnly bool // token_store memory is an alternative
	}{
		{"client_credentials client_assertion_file", func(extra string) string {
			return injector("\t\tclient_id workload\n\t\tclient_assertion_file "+assertion+"\n", extra)
		}, true},
		{"client_credentials client_auth none", func(extra string) string {
			return injector("\t\tclient_id public\n\t\tclient_auth none\n", extra)
		}, true},
		{"jwt_bearer client_assertion_file", func(extra string) string {
			return injector("\t\tgrant jwt_bearer\n\t\tclient_id workload\n\t\tclient_assertion_file "+assertion+"\n", extra)
		}, true},
		{"authorization_code client_auth none", func(extra string) string {
			return injector("\t\tgrant authorization_code\n\t\tclient_id public-app\n\t\tclient_auth none\n", extra)
		}, false},
		{"oauth_bearer_consent client_auth none", consent, false},
	}
	c := startCaddy(t, "http://LISTEN {\n\trespond \"up\"\n}\n")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.adapt(tc.sites(""))
			if err == nil {
				t.Fatal("the Caddyfile adapted; want it refused for want of encryption_key")
			}
			msg := err.Error()
			// Line 13: the directive's, after the harness's 11 lines of
			// global options and the site's address.
			for _, want := range []string{"encryption_key", "openssl rand -base64 32", "token_store memory", "at Caddyfile:13"} {
				if !strings.Contains(msg, want) {
					t.Errorf("the error does not say %q: %s", want, msg)
				}
			}
			// The same configuration as JSON: Provision refuses it.
			withKey, err := c.adapt(tc.sites("\t\tencryption_key " + key + "\n"))
			if err != nil {
				t.Fatalf("with encryption_key: %v", err)
			}
			if err := c.loadJSON(withKey); err != nil {
				t.Fatalf("with encryption_key the configuration does not load: %v", err)
			}
			withoutKey, dropped := dropJSONField(t, withKey, "encryption_keys")
			if dropped == 0 {
				t.Fatalf("encryption_keys not found in the adapted JSON: %s", withKey)
			}
			err = c.loadJSON(withoutKey)
			if err == nil || !strings.Contains(err.Error(), "encryption_key") || !strings.Contains(err.Error(), "openssl rand -base64 32") {
				t.Errorf("JSON without encryption_key: Provision said %v; want the refusal naming encryption_key", err)
			}
			if tc.tokenOnly {
				if err := c.load(tc.sites("\t\ttoken_store memory\n")); err != nil {
					t.Errorf("with token_store memory the configuration does not load: %v", err)
				}
			}
		})
	}
}

// loadJSON loads a JSON configuration (a reload when one is running).
func (c *testCaddy) loadJSON(cfg []byte) error {
	c.t.Helper()
	return caddy.Load(cfg, true)
}

// dropJSONField removes every member named field from the JSON document,
// however nested, and says how many it removed.
func dropJSONField(t *testing.T, doc []byte, field string) ([]byte, int) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if _, ok := v[field]; ok {
				delete(v, field)
				n++
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(v)
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return out, n
}

// The consent state cookie is sealed with the grant's record key: with
// private_key_jwt (no client secret), a cookie the connect endpoint set
// does not open with a key derived from public inputs, and a cookie forged
// with one is refused by the callback as not valid.
func TestConsentStateCookieNotForgeableFromPublicInputs(t *testing.T) {
	key := testkeys.Keys().P256
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, key))
	s := newJWTAS(t)
	s.register("secrecy-consent", key.Public(), "")
	addr := freeAddr(t)
	sites := fmt.Sprintf(`http://LISTEN {
	oauth_bearer_consent /oauth/* {
		token_url     %s
		authorize_url http://127.0.0.1:9/authorize
		client_id     secrecy-consent
		private_key   %s
		redirect_uri  http://%s/oauth/callback
	}
	respond "next"
}
`, s.tokenURL(), keyPath, addr)
	c := startCaddyAt(t, addr, sites)
	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.PostForm(c.url("/oauth/connect"), url.Values{"account": {"alice"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if strings.HasPrefix(ck.Name, "oauth_bearer_state_") {
			cookie = ck
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == nil {
		t.Fatalf("connect: %d, cookies %v; want a redirect with a state cookie", resp.StatusCode, resp.Cookies())
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if loc.Query().Get("state") == "" {
		t.Fatalf("the redirect to the provider has no state: %s", loc)
	}
	sealed, err := base64.RawURLEncoding.DecodeString(cookie.Value)
	if err != nil {
		t.Fatal(err)
	}
	// The grant's record id is what its storage keys hold.
	id := grantID(&credentialSet{Provider: "generic", TokenURL: s.tokenURL(), ClientID: "secrecy-consent"})
	for _, public := range []string{"", "secrecy-consent"} {
		if _, ok := publicOpen(publicAEAD(t, public, "caddy-oauth-bearer grant v1", id), "state", sealed); ok {
			t.Fatalf("the consent state cookie opens with a key derived from public inputs (secret %q)", public)
		}
	}

	forgedState := "forged-state-0123456789"
	plain, _ := json.Marshal(pendingState{State: forgedState, Account: "mallory", Expires: time.Now().Add(5 * time.Minute)})
	forged := base64.RawURLEncoding.EncodeToString(publicSeal(publicAEAD(t, "", "caddy-oauth-bearer grant v1", id), "state", plain))
	req, _ := http.NewRequest(http.MethodGet, c.url("/oauth/callback?code=stolen-code&state="+forgedState), nil)
	ck := (&ConsentHandler{paths: consentPaths{callback: "/oauth/callback", redirect: "http://" + addr + "/oauth/callback"}}).stateCookie(forgedState, forged, 300)
	req.AddCookie(ck)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "state cookie is not valid") {
		t.Fatalf("callback with a state cookie forged with a public key: %d %q; want 400 \"the state cookie is not valid\"", resp.StatusCode, body)
	}
	if n := len(s.log()); n != 0 {
		t.Fatalf("the forged callback reached the token endpoint (%d requests)", n)
	}
}

// With encryption_key and nothing secret in the configuration
// (client_assertion_file), the configured key alone opens records: a
// record forged with a key derived from public inputs is not taken after a
// restart, and the record written does not open with one.
func TestEncryptionKeyAloneOpensRecords(t *testing.T) {
	key := testkeys.Keys().P384
	s := newJWTAS(t)
	s.register("workload", key.Public(), "")
	kubelet, err := oauthclient.NewAssertionSigner(key, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	assertion, err := kubelet.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "workload", Subject: "workload", Audience: s.tokenURL(), Lifetime: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	path := testkeys.WriteFile(t, "token", []byte(assertion))
	t.Setenv("OAB_SECRECY_KEY", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")))
	up := newUpstream(t)
	sites := e2eSite("oauth_bearer", fmt.Sprintf("\t\ttoken_url %s\n\t\tclient_id workload\n\t\tclient_assertion_file %s\n\t\tencryption_key {env.OAB_SECRECY_KEY}", s.tokenURL(), path), up)
	c := startCaddy(t, sites)
	wantInjected(t, c, up, "/", "at-workload-1")

	recKey, recPath, id := storedTokenRecord(t, c)
	sealed, err := os.ReadFile(recPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := publicOpen(publicAEAD(t, "", "caddy-oauth-bearer token v1", id), recKey, sealed); ok {
		t.Fatal("the record opens with a key derived from public inputs")
	}
	now := time.Now()
	forged, _ := json.Marshal(tokenRecord{AccessToken: "forged-by-a-storage-writer", Obtained: now, Expiry: now.Add(time.Hour)})
	if err := os.WriteFile(recPath, publicSeal(publicAEAD(t, "", "caddy-oauth-bearer token v1", id), recKey, forged), 0o600); err != nil {
		t.Fatal(err)
	}
	c.restart(sites)
	// The assertion file is read again for the new token (its jti is
	// refused twice by the server): a fresh one.
	again, err := kubelet.Sign(time.Now(), oauthclient.AssertionClaims{Issuer: "workload", Subject: "workload", Audience: s.tokenURL(), Lifetime: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	testkeys.ReplaceFile(t, path, []byte(again))
	wantInjected(t, c, up, "/after-forgery", "at-workload-2")
}

// A provider's error description that echoes tokens (the refresh token it
// refused, an access token, a JWT, a long hex or base64 value) is stored in
// the grant's reason; status, the accounts page, the admin API and the log
// show it with every token-shaped part redacted, and keep what helps a
// person (the provider's error code, a trace id).
func TestProviderDescriptionTokensRedacted(t *testing.T) {
	s := newAdminSetup(t)
	if status, body := s.connect("alice"); status != 200 {
		t.Fatalf("connect: %d %q", status, body)
	}
	const (
		jwtLike = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl"
		hexRun  = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
		b64Run  = "QmFzZTY0U2VjcmV0VmFsdWUrV2l0aC9TbGFzaGVzQW5kUGx1c2Vz=="
		opaque  = "gho_16C7e42F292c6912E7710c838347Ae178B4a"
		traceID = "0f8fad5b-d9cb-469f-a165-70867728950e"
	)
	var refused []string
	s.as.InvalidGrantDescription = func(rt string) string {
		refused = append(refused, rt)
		return fmt.Sprintf("AADSTS70008: Trace ID: %s: refresh_token=%s has expired; the last access token was Bearer %s (%s, %s, %s)",
			traceID, rt, opaque, jwtLike, hexRun, b64Run)
	}
	s.as.setRefreshTokensDead(true)
	if _, err := grantEntry(t).refresh(t.Context(), "alice", fetchRequest{force: true}); err == nil {
		t.Fatal("the refresh succeeded; want invalid_grant")
	}
	if len(refused) == 0 {
		t.Fatal("the provider was not asked")
	}

	secrets := append([]string{jwtLike, hexRun, b64Run, opaque}, refused...)
	statusJSON, _ := cnsStatus(t, s.grantSetup, "alice")
	_, page := browserGet(t, s.htmlBrowser(), s.c.url("/oauth/et/status"))
	_, sources := adminSources(t, s.c)
	var accounts string
	for _, src := range func() []map[string]any { l, _ := adminSources(t, s.c); return l }() {
		if src["kind"] == "grant" {
			_, accounts = adminDo(t, s.c, http.MethodGet, "/oauth_bearer/sources/"+src["id"].(string)+"/accounts")
		}
	}
	for where, text := range map[string]string{"status": statusJSON, "the accounts page": page,
		"the admin API's sources": sources, "the admin API's accounts": accounts, "Caddy's log": s.c.logs()} {
		for _, v := range secrets {
			if strings.Contains(text, v) {
				t.Errorf("%s holds a token-shaped value from the provider's description: %.12s…", where, v)
			}
			if parts := strings.Split(v, "."); len(parts) == 3 && strings.Contains(text, parts[2]) {
				t.Errorf("%s holds a JWT's signature", where)
			}
		}
	}
	for where, text := range map[string]string{"status": statusJSON, "the accounts page": page, "the admin API's accounts": accounts} {
		for _, keep := range []string{"AADSTS70008", traceID, "[REDACTED]"} {
			if !strings.Contains(text, keep) {
				t.Errorf("%s does not show %q of the provider's description:\n%s", where, keep, text)
			}
		}
	}

	// A reason stored unredacted (by an earlier version) is redacted
	// when shown.
	ge := grantEntry(t)
	old := &grantRecord{Account: "bob", NeedsConsent: true, Reason: "the provider refused the refresh token (invalid_grant): refresh_token=" + opaque + " is dead"}
	if err := ge.store.save(t.Context(), ge.recordKey("bob"), old); err != nil {
		t.Fatal(err)
	}
	bobStatus, _ := cnsStatus(t, s.grantSetup, "bob")
	_, page = browserGet(t, s.htmlBrowser(), s.c.url("/oauth/et/status"))
	for where, text := range map[string]string{"status": bobStatus, "the accounts page": page} {
		if strings.Contains(text, opaque) || !strings.Contains(text, "refresh_token=[REDACTED] is dead") {
			t.Errorf("%s shows a stored reason unredacted: %s", where, text)
		}
	}

	// The provider's error_description on the way back from consent.
	browser, _ := cnsBrowser(s.grantSetup, false)
	r := cnsDo(t, browser, http.MethodPost, s.c.url("/oauth/et/connect"), url.Values{"account": {"carol"}})
	loc, err := url.Parse(r.header.Get("Location"))
	if r.status != http.StatusSeeOther || err != nil {
		t.Fatalf("connect: %d %v", r.status, err)
	}
	q := url.Values{"state": {loc.Query().Get("state")}, "error": {"access_denied"},
		"error_description": {"the user declined; code_verifier=" + opaque + " Bearer " + jwtLike}}
	r = cnsDo(t, browser, http.MethodGet, s.c.url("/oauth/et/callback?"+q.Encode()), nil)
	if !strings.Contains(r.body, "access_denied") || !strings.Contains(r.body, "the user declined") {
		t.Fatalf("callback with an error: %d %q", r.status, r.body)
	}
	for where, text := range map[string]string{"the callback page": r.body, "Caddy's log": s.c.logs()} {
		for _, v := range []string{opaque, jwtLike, strings.Split(jwtLike, ".")[2]} {
			if strings.Contains(text, v) {
				t.Errorf("%s holds a token from the provider's error_description: %.12s…", where, v)
			}
		}
	}
}
