package oauthbearer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// dpop and dpop_key mistakes are refused when the Caddyfile is read, with
// the line and the subdirective, and never with key material.
func TestDPoPCaddyfileErrors(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384PEM := string(testkeys.SEC1PEM(t, p384))
	p384File := testkeys.WriteFile(t, "p384.pem", []byte(p384PEM))
	const head = "oauth_bearer {\n\tclient_id svc\n\tclient_secret s3cr3t\n\ttoken_url https://as.example/token\n"
	tests := []struct {
		name, body string
		line       int
		want       []string
	}{
		{"dpop_key without dpop", "\tdpop_key " + p384File + "\n", 5, []string{"dpop_key", "needs dpop"}},
		{"not http", "\tdpop ftp://api.example/v1\n", 5, []string{"dpop", "absolute http or https"}},
		{"relative", "\tdpop /v1\n", 5, []string{"dpop", "absolute http or https"}},
		{"query", "\tdpop https://api.example/v1?x=1\n", 5, []string{"dpop", "query or a fragment"}},
		{"fragment", "\tdpop https://api.example/v1#f\n", 5, []string{"dpop", "query or a fragment"}},
		{"key of another type (P-384, file)", "\tdpop https://api.example/v1\n\tdpop_key " + p384File + "\n", 6, []string{"dpop_key", "P-384"}},
		{"not a key", "\tdpop https://api.example/v1\n\tdpop_key " + testkeys.WriteFile(t, "junk.pem", []byte("junk")) + "\n", 6, []string{"dpop_key"}},
		{"with token_header", "\tdpop https://api.example/v1\n\ttoken_header X-Token\n", 5, []string{"dpop", "token_header"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cfParse(head + tt.body + "}")
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			for _, w := range append(tt.want, "Testfile:"+strconv.Itoa(tt.line)) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if strings.Contains(msg, "BEGIN") || strings.Contains(msg, "s3cr3t") {
				t.Errorf("error %q holds key material or the secret", msg)
			}
		})
	}
	// The consent handler takes the same lines, with the same checks.
	const consentHead = "oauth_bearer_consent {\n\tclient_id web\n\tclient_secret s3cr3t\n\tissuer https://as.example\n\tredirect_uri https://app.example/oauth/callback\n"
	for _, tt := range []struct {
		name, body string
		line       int
		want       []string
	}{
		{"consent: dpop_key without dpop", "\tdpop_key " + p384File + "\n", 6, []string{"dpop_key", "needs dpop"}},
		{"consent: not http", "\tdpop ftp://api.example/v1\n", 6, []string{"dpop", "absolute http or https"}},
		{"consent: no base URL", "\tdpop\n", 6, []string{"dpop"}},
		{"consent: key of another type", "\tdpop https://api.example/v1\n\tdpop_key " + p384File + "\n", 7, []string{"dpop_key", "P-384"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := new(ConsentHandler)
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(consentHead + tt.body + "}"))
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			for _, w := range append(tt.want, "Testfile:"+strconv.Itoa(tt.line)) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if strings.Contains(msg, "BEGIN") || strings.Contains(msg, "s3cr3t") {
				t.Errorf("error %q holds key material or the secret", msg)
			}
		})
	}
	// Every grant takes dpop now: the consent flow's grants bind their
	// tokens to the grant's key.
	for _, body := range []string{
		"\tgrant authorization_code\n\tdpop https://api.example/v1\n",
		"\tgrant refresh_token\n\trefresh_token {env.RT}\n\tdpop https://api.example/v1\n",
	} {
		if _, err := cfParse(head + body + "}"); err != nil {
			t.Errorf("%q refused: %v", body, err)
		}
	}
	h := new(ConsentHandler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(consentHead + "\tdpop https://api.example/v1\n}")); err != nil || h.DPoP != "https://api.example/v1" {
		t.Errorf("consent with dpop: %v (dpop %q)", err, h.DPoP)
	}

	// An inline PEM of another type: refused without echoing it.
	inline := strings.ReplaceAll(p384PEM, "\n", `\n`)
	_, err := cfParse(head + "\tdpop https://api.example/v1\n\tdpop_key \"" + inline + "\"\n}")
	if err == nil || !strings.Contains(err.Error(), "dpop_key") || strings.Contains(err.Error(), "MII") || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("inline P-384 key: %v", err)
	}
}
