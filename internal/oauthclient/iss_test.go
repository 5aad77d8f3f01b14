package oauthclient

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestCheckAuthorizationResponseIssuer(t *testing.T) {
	const as = "https://as.example.com"
	for _, tc := range []struct {
		name      string
		expected  string
		supported bool
		query     string
		want      error
	}{
		// RFC 9207 §2: the example response.
		{"RFC 9207 example", "https://honest.as.example", true, "code=x1848ZT64p4IirMPT0R-X3141MFPTuBX-VFL_cvaplMH58&state=ZWVlNDBlYzA1NjdkMDNhYjg3ZjUxZjAyNGQzMTM2NzI&iss=https%3A%2F%2Fhonest.as.example", nil},
		{"match", as, true, "code=c&state=s&iss=https%3A%2F%2Fas.example.com", nil},
		{"match, not announced", as, false, "code=c&state=s&iss=https%3A%2F%2Fas.example.com", nil},
		{"error response matches", as, true, "error=access_denied&state=s&iss=https%3A%2F%2Fas.example.com", nil},
		{"mix-up", as, true, "code=c&state=s&iss=https%3A%2F%2Fattacker.example", ErrIssuerMismatch},
		{"mix-up, not announced", as, false, "code=c&state=s&iss=https%3A%2F%2Fattacker.example", ErrIssuerMismatch},
		{"error response from another issuer", as, true, "error=access_denied&iss=https%3A%2F%2Fattacker.example", ErrIssuerMismatch},
		{"no normalisation: trailing slash", as, true, "code=c&iss=https%3A%2F%2Fas.example.com%2F", ErrIssuerMismatch},
		{"no normalisation: case", as, true, "code=c&iss=https%3A%2F%2FAS.example.com", ErrIssuerMismatch},
		{"no normalisation: default port", as, true, "code=c&iss=https%3A%2F%2Fas.example.com%3A443", ErrIssuerMismatch},
		{"empty iss", as, true, "code=c&iss=", ErrIssuerMismatch},
		{"two iss", as, true, "code=c&iss=https%3A%2F%2Fas.example.com&iss=https%3A%2F%2Fattacker.example", ErrIssuerMismatch},
		{"missing, announced", as, true, "code=c&state=s", ErrIssuerMissing},
		{"missing error response, announced", as, true, "error=access_denied&state=s", ErrIssuerMissing},
		{"missing, not announced", as, false, "code=c&state=s", nil},
		{"no issuer known", "", false, "code=c&iss=https%3A%2F%2Fanything.example", nil},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		err = CheckAuthorizationResponseIssuer(tc.expected, tc.supported, q)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if tc.want == ErrIssuerMismatch && len(q["iss"]) == 1 && q.Get("iss") != "" && !strings.Contains(err.Error(), q.Get("iss")) {
			t.Errorf("%s: the error does not name the issuer the response names: %v", tc.name, err)
		}
	}
}
