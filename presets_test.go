package oauthbearer

// The identity-provider presets (entra, auth0, okta, keycloak, google):
// the endpoints built from each preset's own settings, the defaults they
// bring, and the errors when a required setting is missing.

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

func TestPresetEndpointsAndDefaults(t *testing.T) {
	k := testkeys.Keys()
	saPath := testkeys.WriteFile(t, "sa.json", testkeys.GoogleKeyJSON(t, k.RSA, "https://oauth2.token-uri-from-the-file.example/token", nil))
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, k.RSA))
	certPath := testkeys.WriteFile(t, "client.crt", testkeys.PEM("CERTIFICATE", testkeys.SelfSignedCert(t, k.RSA, "entra-app").Raw))
	t.Setenv("OAB_PRESET_TENANT", "11111111-2222-3333-4444-555555555555")
	const sec = "preset-secret"
	params := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name string
		h    *Handler
		// what the credential set resolves to
		grant, tokenURL, revokeURL, clientAuth, format string
		// the consent handler's authorization endpoint ("" to skip)
		authorize string
		check     func(t *testing.T, cs *credentialSet)
	}{
		{
			name:  "entra",
			h:     &Handler{Credentials: Credentials{Provider: "entra", ProviderParams: params("tenant", "contoso.onmicrosoft.com"), ClientID: "app", ClientSecret: sec}},
			grant: "client_credentials", tokenURL: "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
			clientAuth: "body", format: "form",
			authorize: "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
		},
		{
			name: "entra tenant from {env.X}, certificate credentials",
			h: &Handler{Credentials: Credentials{Provider: "entra", ProviderParams: params("tenant", "{env.OAB_PRESET_TENANT}"), ClientID: "app",
				ClientAuth: "private_key_jwt", PrivateKey: keyPath, Certificate: certPath}},
			grant: "client_credentials", tokenURL: "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token",
			clientAuth: "private_key_jwt", format: "form",
			authorize: "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/authorize",
			check: func(t *testing.T, cs *credentialSet) {
				if cs.signer == nil || cs.signer.Alg() != "RS256" {
					t.Errorf("signer %+v", cs.signer)
				}
			},
		},
		{
			name:  "auth0 client credentials: no revocation",
			h:     &Handler{Credentials: Credentials{Provider: "auth0", ProviderParams: params("domain", "example.eu.auth0.com"), ClientID: "m2m", ClientSecret: sec}, Audience: "https://api.example.com"},
			grant: "client_credentials", tokenURL: "https://example.eu.auth0.com/oauth/token",
			clientAuth: "body", format: "form",
			authorize: "https://example.eu.auth0.com/authorize",
			check: func(t *testing.T, cs *credentialSet) {
				if cs.Audience != "https://api.example.com" {
					t.Errorf("audience %q", cs.Audience)
				}
			},
		},
		{
			name: "auth0 grant: revocation endpoint",
			h: &Handler{Credentials: Credentials{Provider: "auth0", ProviderParams: params("domain", "example.eu.auth0.com"), ClientID: "web", ClientSecret: sec},
				Grant: "authorization_code"},
			grant: "authorization_code", tokenURL: "https://example.eu.auth0.com/oauth/token", revokeURL: "https://example.eu.auth0.com/oauth/revoke",
			clientAuth: "body", format: "form",
		},
		{
			name:  "okta default authorization server",
			h:     &Handler{Credentials: Credentials{Provider: "okta", ProviderParams: params("domain", "example.okta.com"), ClientID: "svc", ClientSecret: sec}},
			grant: "client_credentials", tokenURL: "https://example.okta.com/oauth2/default/v1/token",
			clientAuth: "basic", format: "form",
			authorize: "https://example.okta.com/oauth2/default/v1/authorize",
		},
		{
			name: "okta authorization_server custom1, grant",
			h: &Handler{Credentials: Credentials{Provider: "okta", ProviderParams: params("domain", "example.okta.com", "authorization_server", "custom1"), ClientID: "svc", ClientSecret: sec},
				Grant: "authorization_code"},
			grant: "authorization_code", tokenURL: "https://example.okta.com/oauth2/custom1/v1/token", revokeURL: "https://example.okta.com/oauth2/custom1/v1/revoke",
			clientAuth: "basic", format: "form",
			authorize: "https://example.okta.com/oauth2/custom1/v1/authorize",
		},
		{
			name: "keycloak",
			h: &Handler{Credentials: Credentials{Provider: "keycloak", ProviderParams: params("base_url", "https://sso.example.com", "realm", "acme"), ClientID: "svc", ClientSecret: sec},
				Grant: "authorization_code"},
			grant: "authorization_code", tokenURL: "https://sso.example.com/realms/acme/protocol/openid-connect/token",
			revokeURL:  "https://sso.example.com/realms/acme/protocol/openid-connect/revoke",
			clientAuth: "basic", format: "form",
			authorize: "https://sso.example.com/realms/acme/protocol/openid-connect/auth",
		},
		{
			name:  "keycloak before 17 (/auth)",
			h:     &Handler{Credentials: Credentials{Provider: "keycloak", ProviderParams: params("base_url", "https://sso.example.com/auth", "realm", "acme"), ClientID: "svc", ClientSecret: sec}},
			grant: "client_credentials", tokenURL: "https://sso.example.com/auth/realms/acme/protocol/openid-connect/token",
			clientAuth: "basic", format: "form",
		},
		{
			name:  "google service account file",
			h:     &Handler{Credentials: Credentials{Provider: "google", ServiceAccountFile: saPath}, Scopes: []string{"https://www.googleapis.com/auth/cloud-platform"}},
			grant: "jwt_bearer", tokenURL: "https://oauth2.token-uri-from-the-file.example/token",
			clientAuth: "none", format: "form",
			check: func(t *testing.T, cs *credentialSet) {
				if cs.ClientID != "robot@proj.iam.gserviceaccount.com" || cs.assertionIssuer != "robot@proj.iam.gserviceaccount.com" {
					t.Errorf("client id %q, assertion issuer %q: want the file's client_email", cs.ClientID, cs.assertionIssuer)
				}
				if cs.AssertionAudience != "https://oauth2.token-uri-from-the-file.example/token" {
					t.Errorf("assertion audience %q, want the file's token_uri", cs.AssertionAudience)
				}
				if cs.signer == nil || cs.signer.Alg() != "RS256" || cs.Scope != "https://www.googleapis.com/auth/cloud-platform" {
					t.Errorf("signer %+v, scope %q", cs.signer, cs.Scope)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if g := tc.h.grantType(); g != tc.grant {
				t.Errorf("grant %q, want %q", g, tc.grant)
			}
			cs, err := tc.h.configure(provisionReplacer())
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{"grant": cs.Grant, "token_url": cs.TokenURL, "revoke_url": cs.RevokeURL, "client_auth": cs.ClientAuth, "format": cs.Format}
			want := map[string]string{"grant": tc.grant, "token_url": tc.tokenURL, "revoke_url": tc.revokeURL, "client_auth": tc.clientAuth, "format": tc.format}
			for k := range want {
				if got[k] != want[k] {
					t.Errorf("%s = %q, want %q", k, got[k], want[k])
				}
			}
			if tc.check != nil {
				tc.check(t, cs)
			}
			if tc.authorize == "" {
				return
			}
			ch := &ConsentHandler{Credentials: tc.h.Credentials, RedirectURI: "https://app.example.com/oauth/callback"}
			if _, err := ch.configure(provisionReplacer()); err != nil {
				t.Fatalf("consent handler: %v", err)
			}
			if ch.authorizeURL != tc.authorize {
				t.Errorf("authorize URL %q, want %q", ch.authorizeURL, tc.authorize)
			}
		})
	}
}

// A preset without a setting its endpoints need names that setting, for
// both directives; a setting a preset does not have is refused by name.
func TestPresetMissingSettings(t *testing.T) {
	t.Setenv("OAB_PRESET_EMPTY", "")
	const sec = "preset-missing-secret"
	creds := func(provider string, kv ...string) Credentials {
		c := Credentials{Provider: provider, ClientID: "id", ClientSecret: sec}
		if len(kv) > 0 {
			c.ProviderParams = map[string]string{}
			for i := 0; i+1 < len(kv); i += 2 {
				c.ProviderParams[kv[i]] = kv[i+1]
			}
		}
		return c
	}
	cases := []struct {
		name string
		c    Credentials
		want []string
	}{
		{"entra without tenant", creds("entra"), []string{"tenant", "entra"}},
		{"entra tenant resolves empty", creds("entra", "tenant", "{env.OAB_PRESET_EMPTY}"), []string{"tenant"}},
		{"auth0 without domain", creds("auth0"), []string{"domain", "auth0"}},
		{"okta without domain", creds("okta", "authorization_server", "custom1"), []string{"domain", "okta"}},
		{"keycloak without realm", creds("keycloak", "base_url", "https://sso.example.com"), []string{"realm", "keycloak"}},
		{"keycloak realm resolves empty", creds("keycloak", "base_url", "https://sso.example.com", "realm", "{env.OAB_PRESET_EMPTY}"), []string{"realm"}},
		{"keycloak without base_url", creds("keycloak", "realm", "acme"), []string{"base_url", "keycloak"}},
		{"keycloak base_url in clear text", creds("keycloak", "base_url", "http://sso.example.com", "realm", "acme"), []string{"base_url", "https"}},
		{"tenant on okta", creds("okta", "domain", "example.okta.com", "tenant", "x"), []string{"tenant", "okta"}},
		{"tenant on generic", Credentials{TokenURL: "https://idp.example.com/token", ClientID: "id", ClientSecret: sec, ProviderParams: map[string]string{"tenant": "x"}},
			[]string{"tenant", "generic"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for directive, configure := range map[string]func() error{
				"oauth_bearer": func() error { _, err := (&Handler{Credentials: tc.c}).configure(provisionReplacer()); return err },
				"oauth_bearer_consent": func() error {
					_, err := (&ConsentHandler{Credentials: tc.c, RedirectURI: "https://app.example.com/cb"}).configure(provisionReplacer())
					return err
				},
			} {
				err := configure()
				if err == nil {
					t.Errorf("%s: no error", directive)
					continue
				}
				field := err.Error()
				if ce := (*configError)(nil); !errors.As(err, &ce) {
					t.Errorf("%s: %v is not a configError", directive, err)
				} else {
					field = ce.field
				}
				if field != tc.want[0] {
					t.Errorf("%s: the error is about %q, want %q: %v", directive, field, tc.want[0], err)
				}
				for _, w := range tc.want[1:] {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error %q does not contain %q", directive, err, w)
					}
				}
				assertNoValueLeak(t, "the error", err.Error(), sec)
			}
		})
	}
}

// In a Caddyfile, each preset's settings are subdirectives of their names,
// kept in provider_params; a missing one is reported on the directive's
// line, one the preset does not have is not a subdirective of it.
func TestPresetCaddyfile(t *testing.T) {
	t.Setenv("OAB_PRESET_CF_SECRET", "preset-caddyfile-secret")
	sites := `http://LISTEN {
	oauth_bearer okta {
		domain               example.okta.com
		authorization_server custom1
		client_id            svc
		client_secret        {env.OAB_PRESET_CF_SECRET}
	}
	reverse_proxy 127.0.0.1:9
}
`
	if _, adaptErr, validateErr := loadCaddyfile(t, sites); adaptErr != nil || validateErr != nil {
		t.Fatalf("adapt: %v; validate: %v", adaptErr, validateErr)
	}
	out, err := adaptCaddyfileText(strings.ReplaceAll(sites, "LISTEN", "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	walkJSON(t, out, func(m map[string]any) {
		if m["handler"] == "oauth_bearer" {
			found = true
			pp, _ := json.Marshal(m["provider_params"])
			if string(pp) != `{"authorization_server":"custom1","domain":"example.okta.com"}` {
				t.Errorf("provider_params %s", pp)
			}
		}
	})
	if !found {
		t.Fatalf("no oauth_bearer handler in %s", out)
	}

	for _, c := range []struct {
		name, text string
		want       []string
	}{
		{"entra without tenant", "http://127.0.0.1:0 {\n\toauth_bearer entra {\n\t\tclient_id a\n\t\tclient_secret b\n\t}\n}\n",
			[]string{"tenant", "is required by provider entra", "Caddyfile:2"}},
		{"realm given twice", "http://127.0.0.1:0 {\n\toauth_bearer keycloak {\n\t\tbase_url https://sso.example.com\n\t\trealm a\n\t\trealm b\n\t\tclient_id a\n\t\tclient_secret b\n\t}\n}\n",
			[]string{"realm", "twice", "Caddyfile:5"}},
		{"tenant on generic", "http://127.0.0.1:0 {\n\toauth_bearer {\n\t\ttoken_url https://idp.example.com/t\n\t\ttenant x\n\t\tclient_id a\n\t\tclient_secret b\n\t}\n}\n",
			[]string{"tenant", "Caddyfile:4"}},
	} {
		if _, err := adaptCaddyfileText(c.text); err == nil {
			t.Errorf("%s: adapted", c.name)
		} else {
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error %q does not contain %q", c.name, err, w)
				}
			}
		}
	}
}

// adaptCaddyfileText adapts a whole Caddyfile named "Caddyfile".
func adaptCaddyfileText(text string) ([]byte, error) {
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// walkJSON calls fn for every object in a JSON document.
func walkJSON(t *testing.T, doc []byte, fn func(map[string]any)) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			fn(x)
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
}
