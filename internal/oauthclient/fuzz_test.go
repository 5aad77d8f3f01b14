package oauthclient

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzTokenResponse feeds arbitrary answers to the token response parser:
// it must never panic, and a token it accepts must be usable: non-empty, a
// valid header value, expiring after it was obtained and within the cap.
// (That the root package schedules such a token's refresh within its
// lifetime: its FuzzTokenSchedule.)
func FuzzTokenResponse(f *testing.F) {
	seeds := []struct {
		status int
		ct     string
		body   string
	}{
		{200, "application/json", `{"access_token":"a","token_type":"Bearer","expires_in":3600}`},
		{200, "application/json", `{"access_token":"a","expires_in":"3600","created_at":1700000000}`},
		{200, "application/json", `{"access_token":"eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDE4MDAsImlhdCI6MTcwMDAwMDAwMH0.","token_type":"bearer"}`},
		{200, "application/json", `{"access_token":"a","expires_in":-1}`},
		{200, "application/json", `{"access_token":"a","expires_in":1e308}`},
		{200, "application/json", `{"error":"invalid_scope"}`},
		{200, "application/x-www-form-urlencoded", `access_token=a&token_type=bearer&expires_in=60`},
		{400, "application/json", `{"error":"invalid_request","error_description":"x"}`},
		{401, "application/json", `{"message":"Unauthorized"}`},
		{429, "application/problem+json", `{"title":"Too Many Requests"}`},
		{502, "text/html", `<html>bad gateway</html>`},
		{200, "", ``},
		{302, "", ``},
	}
	for _, s := range seeds {
		f.Add(s.status, s.ct, s.body)
	}
	cfg := &Config{Provider: "fuzz", Client: Client{Secret: "secret"}, DefaultLifetime: 10 * time.Minute}
	start := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, status int, ct, body string) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {ct}}}
		tok, err := parseTokenResponse(cfg, resp, []byte(body), start, false)
		if err != nil {
			if tok != nil {
				t.Fatal("both a token and an error")
			}
			if te, ok := err.(*TokenError); !ok || te.Code == "" || te.Provider != "fuzz" {
				t.Fatalf("error %#v is not a TokenError with a code", err)
			}
			return
		}
		if status < 200 || status >= 300 {
			t.Fatalf("status %d accepted", status)
		}
		if tok.AccessToken == "" || strings.ContainsFunc(tok.AccessToken, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			t.Fatalf("unusable token %q", tok.AccessToken)
		}
		if !tok.Expiry.After(start) || tok.Expiry.Sub(start) > maxLifetime {
			t.Fatalf("expiry %v outside (start, start+%v]", tok.Expiry.Sub(start), maxLifetime)
		}
		if !tok.Obtained.Equal(start) {
			t.Fatalf("obtained %v, want the request's start", tok.Obtained)
		}
	})
}
