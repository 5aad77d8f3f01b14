package oauthbearer

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// par and par_url in the Caddyfile and JSON: what they set, and each
// mistake named with its line and subdirective.

func TestParsePARSubdirectives(t *testing.T) {
	h := new(ConsentHandler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oauth_bearer_consent auth0 {
	domain        example.eu.auth0.com
	client_id     id
	client_secret {env.S}
	redirect_uri  https://proxy.example.com/oauth/callback
	par           on
	par_url       https://example.eu.auth0.com/oauth/par
}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.PAR != "on" || h.PARURL != "https://example.eu.auth0.com/oauth/par" {
		t.Errorf("parsed par %q par_url %q", h.PAR, h.PARURL)
	}
	b, _ := json.Marshal(h)
	if !strings.Contains(string(b), `"par":"on"`) || !strings.Contains(string(b), `"par_url":"https://example.eu.auth0.com/oauth/par"`) {
		t.Errorf("JSON %s", b)
	}
}

func TestParsePARErrors(t *testing.T) {
	const consent = "oauth_bearer_consent {\n\tclient_id id\n\tclient_secret s3cret-value\n\ttoken_url https://as.example.com/token\n" +
		"\tauthorize_url https://as.example.com/authorize\n\tredirect_uri https://p.example.com/oauth/cb\n"
	tests := []struct {
		name, input string
		line        int
		want        string
	}{
		{"bad value", consent + "\tpar always\n}", 7, `par: "always" is not auto, on or off`},
		{"no value", consent + "\tpar\n}", 7, "par: wrong argument count"},
		{"twice", consent + "\tpar on\n\tpar off\n}", 8, "given twice"},
		{"par_url not a URL", consent + "\tpar_url as.example.com/par\n}", 7, "par_url"},
		{"par_url over plain http", consent + "\tpar_url http://as.example.com/par\n}", 7, "par_url: \"http://as.example.com/par\" uses plain http"},
		{"par_url with par off", consent + "\tpar off\n\tpar_url https://as.example.com/par\n}", 7, "par: is off, but par_url is set"},
		{"par on with no endpoint to know", consent + "\tpar on\n}", 7, "par: is on, but no pushed authorization request endpoint can be known"},
		{"par for the injector", "oauth_bearer {\n\tclient_id id\n\tclient_secret s\n\ttoken_url https://as.example.com/token\n\tpar on\n}", 5, "par: belongs to oauth_bearer_consent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantRefusedAt(t, tc.input, tc.line, tc.want, "s3cret-value") })
	}
}

// JSON gets the same rules at load (Provision).
func TestPARJSONErrors(t *testing.T) {
	for _, tc := range []struct{ par, parURL, want string }{
		{"sometimes", "", `par: "sometimes" is not auto, on or off`},
		{"off", "https://as.example.com/par", "par: is off, but par_url is set"},
		{"on", "", "par: is on, but no pushed authorization request endpoint can be known"},
	} {
		h := &ConsentHandler{Credentials: Credentials{ClientID: "id", ClientSecret: "s", TokenURL: "https://as.example.com/token"},
			AuthorizeURL: "https://as.example.com/authorize", RedirectURI: "https://p.example.com/oauth/cb", PAR: tc.par, PARURL: tc.parURL}
		if err := h.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("par %q par_url %q: %v, want %q", tc.par, tc.parURL, err, tc.want)
		}
	}
}
