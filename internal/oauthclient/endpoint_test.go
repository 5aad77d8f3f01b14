package oauthclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// Tests of endpoint.go over real HTTP: every case runs a token endpoint on
// 127.0.0.1 (httptest) and calls the Endpoint with a fixed clock.

// epNow is the fixed "now" passed to fetch; expiries are checked against it.
var epNow = time.Date(2031, time.March, 4, 5, 6, 7, 0, time.UTC)

func epClock() time.Time { return epNow }

const (
	epClientID = "ep-client"
	epSecret   = "ep-s3cr3t-value"
)

// epUserAgent is the User-Agent the endpoints of these tests send.
const epUserAgent = "caddy-oauth-bearer/test"

func epConfig(tokenURL string) *Config {
	return &Config{
		Provider:        "testprov",
		TokenURL:        tokenURL,
		Client:          Client{ID: epClientID, Secret: epSecret, Auth: "body"},
		Format:          "form",
		DefaultLifetime: 10 * time.Minute,
		Timeout:         5 * time.Second,
		UserAgent:       epUserAgent,
		Now:             epClock,
	}
}

// epCanned is a canned token endpoint answer.
type epCanned struct {
	status      int
	contentType string // "" lets net/http sniff one (or send none for an empty body)
	headers     map[string]string
	body        string
}

// epServe starts a token endpoint that answers every request with c and
// counts the requests it gets.
func epServe(t *testing.T, c epCanned) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		for k, v := range c.headers {
			w.Header().Set(k, v)
		}
		if c.contentType != "" {
			w.Header().Set("Content-Type", c.contentType)
		}
		status := c.status
		if status == 0 {
			status = http.StatusOK
		}
		w.WriteHeader(status)
		io.WriteString(w, c.body)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// epFetch builds an endpoint for cfg and performs one fetch at epNow.
func epFetch(t *testing.T, cfg *Config) (*Token, error) {
	t.Helper()
	e := NewEndpoint(*cfg)
	t.Cleanup(e.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.ClientCredentials(ctx)
}

// epTokenError asserts err is a *TokenError and returns it.
func epTokenError(t *testing.T, err error) *TokenError {
	t.Helper()
	if err == nil {
		t.Fatal("fetch succeeded, want an error")
	}
	var te *TokenError
	if !errors.As(err, &te) {
		t.Fatalf("error %T %v is not a *TokenError", err, err)
	}
	return te
}

// epJWT builds an unsigned JWT (header.payload.signature, base64url) with
// the given claims.
func epJWT(claims map[string]any) string {
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(claims)
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString([]byte("sig"))
}

func epJSON(v map[string]any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestEndpointTokenLifetime(t *testing.T) {
	jwtExp := epJWT(map[string]any{"sub": "svc", "exp": epNow.Unix() + 1800})
	// The issuer's clock is 5 minutes ahead: exp-now would be 1200 s,
	// exp-iat is the real 900 s.
	jwtExpIat := epJWT(map[string]any{"sub": "svc", "iat": epNow.Unix() + 300, "exp": epNow.Unix() + 1200})
	// Handed out again 50 minutes after it was minted for an hour:
	// exp-iat would say 60 minutes, exp-now says the true 10.
	jwtReissued := epJWT(map[string]any{"sub": "svc", "iat": epNow.Unix() - 3000, "exp": epNow.Unix() + 600})
	const jsonCT = "application/json"
	tests := []struct {
		name     string
		resp     epCanned
		value    string
		lifetime time.Duration // expiry - now
		from     string
		scope    string
	}{
		{"expires_in number", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-num","token_type":"Bearer","expires_in":3600,"scope":"read write"}`},
			"tok-num", time.Hour, "expires_in", "read write"},
		{"expires_in string", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-str","token_type":"Bearer","expires_in":"3600"}`},
			"tok-str", time.Hour, "expires_in", ""},
		{"expires_in float", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-float","token_type":"Bearer","expires_in":3600.5}`},
			"tok-float", 3600500 * time.Millisecond, "expires_in", ""},
		{"expires_in short: refresh half-way", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-short","expires_in":90}`},
			"tok-short", 90 * time.Second, "expires_in", ""},
		{"expires_in absent, JWT with exp", epCanned{contentType: jsonCT,
			body: epJSON(map[string]any{"access_token": jwtExp, "token_type": "Bearer"})},
			jwtExp, 30 * time.Minute, "jwt_exp", ""},
		{"expires_in absent, JWT with exp and iat", epCanned{contentType: jsonCT,
			body: epJSON(map[string]any{"access_token": jwtExpIat, "token_type": "Bearer"})},
			jwtExpIat, 15 * time.Minute, "jwt_exp", ""},
		{"expires_in absent, JWT handed out again near its exp", epCanned{contentType: jsonCT,
			body: epJSON(map[string]any{"access_token": jwtReissued, "token_type": "Bearer"})},
			jwtReissued, 10 * time.Minute, "jwt_exp", ""},
		{"expires_in absent, not a JWT", epCanned{contentType: jsonCT,
			body: `{"access_token":"opaque","token_type":"Bearer"}`},
			"opaque", 10 * time.Minute, "default_lifetime", ""},
		{"expires_in null", epCanned{contentType: jsonCT,
			body: `{"access_token":"opaque-null","expires_in":null}`},
			"opaque-null", 10 * time.Minute, "default_lifetime", ""},
		{"expires_in zero treated as absent", epCanned{contentType: jsonCT,
			body: `{"access_token":"opaque-zero","token_type":"Bearer","expires_in":0}`},
			"opaque-zero", 10 * time.Minute, "default_lifetime", ""},
		{"expires_in negative treated as absent", epCanned{contentType: jsonCT,
			body: `{"access_token":"opaque-neg","token_type":"Bearer","expires_in":-30}`},
			"opaque-neg", 10 * time.Minute, "default_lifetime", ""},
		{"expires_in zero with a JWT uses exp", epCanned{contentType: jsonCT,
			body: epJSON(map[string]any{"access_token": jwtExp, "expires_in": 0})},
			jwtExp, 30 * time.Minute, "jwt_exp", ""},
		{"expires_in huge capped", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-huge","token_type":"Bearer","expires_in":1e12}`},
			"tok-huge", maxLifetime, "expires_in", ""},
		{"created_at 30 s ago anchors the expiry", epCanned{contentType: jsonCT,
			body: fmt.Sprintf(`{"access_token":"tok-ca","token_type":"Bearer","expires_in":7200,"created_at":%d}`, epNow.Unix()-30)},
			"tok-ca", 7200*time.Second - 30*time.Second, "expires_in", ""},
		{"created_at 2 h old ignored", epCanned{contentType: jsonCT,
			body: fmt.Sprintf(`{"access_token":"tok-old","token_type":"Bearer","expires_in":7200,"created_at":%d}`, epNow.Unix()-7200)},
			"tok-old", 2 * time.Hour, "expires_in", ""},
		{"token_type missing", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-nt","expires_in":3600}`},
			"tok-nt", time.Hour, "expires_in", ""},
		{"token_type bearer", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-lc","token_type":"bearer","expires_in":3600}`},
			"tok-lc", time.Hour, "expires_in", ""},
		{"token_type BEARER", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-uc","token_type":"BEARER","expires_in":3600}`},
			"tok-uc", time.Hour, "expires_in", ""},
		{"refresh_token tolerated", epCanned{contentType: jsonCT,
			body: `{"access_token":"tok-rt","refresh_token":"rt","expires_in":3600}`},
			"tok-rt", time.Hour, "expires_in", ""},
		{"form-encoded body", epCanned{contentType: "application/x-www-form-urlencoded",
			body: "access_token=form-tok&token_type=bearer&expires_in=1200&scope=repo+user"},
			"form-tok", 20 * time.Minute, "expires_in", "repo user"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := epServe(t, tc.resp)
			tok, err := epFetch(t, epConfig(srv.URL+"/oauth/token"))
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			if tok.AccessToken != tc.value {
				t.Errorf("value = %q, want %q", tok.AccessToken, tc.value)
			}
			if !tok.Obtained.Equal(epNow) {
				t.Errorf("obtained = %v, want the fixed now %v", tok.Obtained, epNow)
			}
			if got := tok.Expiry.Sub(epNow); got != tc.lifetime {
				t.Errorf("expiry = now+%v, want now+%v", got, tc.lifetime)
			}
			if tok.LifetimeFrom != tc.from {
				t.Errorf("lifetimeFrom = %q, want %q", tok.LifetimeFrom, tc.from)
			}
			if tok.Scope != tc.scope {
				t.Errorf("scope = %q, want %q", tok.Scope, tc.scope)
			}
		})
	}
}

func TestEndpointErrorResponses(t *testing.T) {
	const jsonCT = "application/json"
	html := `<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>` +
		`<body><h1>Upstream lb-7 failed</h1><p>request id 0xdeadbeef</p></body></html>`
	resetAt := fmt.Sprint(epNow.Unix() + 42)
	problem := `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"Rate limit exceeded"}`
	tests := []struct {
		name     string
		resp     epCanned
		code     string
		status   int
		desc     string   // exact description, unless descHas is set
		descHas  []string // substrings of the description
		descNot  []string // must not appear in the description nor in Error()
		retry    time.Duration
		exactErr string // when set, the full Error() text
	}{
		{name: "token_type mac", resp: epCanned{contentType: jsonCT,
			body: `{"access_token":"tok","token_type":"mac","expires_in":3600}`},
			code: "unsupported_token_type", status: 200, descHas: []string{`"mac"`}},
		{name: "error field on HTTP 200", resp: epCanned{contentType: jsonCT,
			body: `{"error":"access_denied","error_description":"client is disabled"}`},
			code: "access_denied", status: 200, desc: "client is disabled"},
		{name: "error field on HTTP 200 beside an access_token", resp: epCanned{contentType: jsonCT,
			body: `{"access_token":"tok","error":"server_error","error_description":"try later"}`},
			code: "server_error", status: 200, desc: "try later"},
		{name: "400 invalid_grant", resp: epCanned{status: 400, contentType: jsonCT,
			body: `{"error":"invalid_grant","error_description":"The grant is invalid"}`},
			code: "invalid_grant", status: 400, desc: "The grant is invalid",
			exactErr: "testprov token request failed: invalid_grant (HTTP 400): The grant is invalid"},
		{name: "401 invalid_client", resp: epCanned{status: 401, contentType: jsonCT,
			body: `{"error":"invalid_client","error_description":"Client authentication failed"}`},
			code: "invalid_client", status: 401, desc: "Client authentication failed"},
		{name: "400 invalid_client, form-encoded error", resp: epCanned{status: 400, contentType: "application/x-www-form-urlencoded",
			body: "error=invalid_client&error_description=bad+client"},
			code: "invalid_client", status: 400, desc: "bad client"},
		{name: "500 HTML page", resp: epCanned{status: 500, contentType: "text/html; charset=utf-8", body: html},
			code: "http_500", status: 500, descHas: []string{"text/html"},
			descNot: []string{"<html", "<h1>", "lb-7", "deadbeef", "Internal Server Error"}},
		{name: "502 HTML page without content type", resp: epCanned{status: 502, body: html},
			code: "http_502", status: 502, descNot: []string{"<html", "lb-7", "deadbeef"}},
		{name: "401 message body", resp: epCanned{status: 401, contentType: jsonCT, body: `{"message":"Unauthorized"}`},
			code: "http_401", status: 401, desc: "Unauthorized"},
		{name: "400 message body", resp: epCanned{status: 400, contentType: jsonCT, body: `{"message":"grant_type invalid"}`},
			code: "http_400", status: 400, desc: "grant_type invalid"},
		{name: "429 problem+json with X-RateLimit-Reset", resp: epCanned{status: 429, contentType: "application/problem+json",
			headers: map[string]string{"X-RateLimit-Reset": resetAt}, body: problem},
			code: "http_429", status: 429, desc: "Rate limit exceeded", retry: 42 * time.Second},
		{name: "429 problem+json with Retry-After seconds", resp: epCanned{status: 429, contentType: "application/problem+json",
			headers: map[string]string{"Retry-After": "17", "X-RateLimit-Reset": resetAt}, body: problem},
			code: "http_429", status: 429, desc: "Rate limit exceeded", retry: 17 * time.Second},
		{name: "429 problem+json with Retry-After date", resp: epCanned{status: 429, contentType: "application/problem+json",
			headers: map[string]string{"Retry-After": epNow.Add(90 * time.Second).Format(http.TimeFormat)}, body: problem},
			code: "http_429", status: 429, desc: "Rate limit exceeded", retry: 90 * time.Second},
		{name: "503 with Retry-After and empty body", resp: epCanned{status: 503, headers: map[string]string{"Retry-After": "5"}},
			code: "http_503", status: 503, desc: "empty body", retry: 5 * time.Second},
		{name: "Auth0 500 access_denied", resp: epCanned{status: 500, contentType: jsonCT,
			body: `{"error":"access_denied","error_description":"Too many requests"}`},
			code: "access_denied", status: 500, desc: "Too many requests"},
		{name: "invalid JSON on 200", resp: epCanned{contentType: jsonCT, body: `{"access_token": "tok", `},
			code: "invalid_response", status: 200, descHas: []string{"JSON"}},
		{name: "empty body on 200", resp: epCanned{contentType: jsonCT, body: ""},
			code: "invalid_response", status: 200, desc: "empty body"},
		{name: "missing access_token", resp: epCanned{contentType: jsonCT, body: `{"token_type":"Bearer","expires_in":3600}`},
			code: "invalid_response", status: 200, descHas: []string{"access_token"}},
		{name: "empty access_token", resp: epCanned{contentType: jsonCT, body: `{"access_token":"","expires_in":3600}`},
			code: "invalid_response", status: 200, descHas: []string{"access_token"}},
		{name: "access_token with CR LF", resp: epCanned{contentType: jsonCT, body: `{"access_token":"tok\r\nX-Evil: 1"}`},
			code: "invalid_response", status: 200, descHas: []string{"cannot be sent in a header"}},
		// Every byte that is not valid in a header (or is, but no bearer
		// token holds) is refused when the token arrives, not cached to
		// fail each request later.
		{name: "access_token with a space", resp: epCanned{contentType: jsonCT, body: `{"access_token":"tok en"}`},
			code: "invalid_response", status: 200, descHas: []string{"cannot be sent in a header"}},
		{name: "access_token with a tab", resp: epCanned{contentType: jsonCT, body: `{"access_token":"tok\ten"}`},
			code: "invalid_response", status: 200, descHas: []string{"cannot be sent in a header"}},
		{name: "access_token with DEL", resp: epCanned{contentType: jsonCT, body: `{"access_token":"tok\u007f"}`},
			code: "invalid_response", status: 200, descHas: []string{"cannot be sent in a header"}},
		{name: "access_token with a vertical tab", resp: epCanned{contentType: jsonCT, body: `{"access_token":"tok\u000b"}`},
			code: "invalid_response", status: 200, descHas: []string{"cannot be sent in a header"}},
		{name: "access_token with non-ASCII", resp: epCanned{contentType: jsonCT, body: `{"access_token":"tökén"}`},
			code: "invalid_response", status: 200, descHas: []string{"cannot be sent in a header"}},
		{name: "access_token a JWT already expired", resp: epCanned{contentType: jsonCT,
			body: epJSON(map[string]any{"access_token": epJWT(map[string]any{"iat": epNow.Unix() - 7200, "exp": epNow.Unix() - 60})})},
			code: "invalid_response", status: 200, descHas: []string{"expired"}},
		{name: "plain text on 200", resp: epCanned{contentType: "text/plain", body: "hello world"},
			code: "invalid_response", status: 200, descNot: []string{"hello"}},
		{name: "provider echoes the client secret", resp: epCanned{status: 401, contentType: jsonCT,
			body: `{"error":"invalid_client","error_description":"client_secret '` + epSecret + `' does not match"}`},
			code: "invalid_client", status: 401, desc: "client_secret '[REDACTED]' does not match", descNot: []string{epSecret}},
		{name: "provider echoes the client secret in a message", resp: epCanned{status: 403, contentType: jsonCT,
			body: `{"message":"forbidden for ` + epSecret + `"}`},
			code: "http_403", status: 403, desc: "forbidden for [REDACTED]", descNot: []string{epSecret}},
		{name: "control characters in the description are neutralised", resp: epCanned{status: 400, contentType: jsonCT,
			body: `{"error":"invalid_request","error_description":"line1\nline2\u001b[31m"}`},
			code: "invalid_request", status: 400, desc: "line1 line2 [31m"},
		{name: "body over 1 MiB", resp: epCanned{contentType: jsonCT,
			body: `{"access_token":"` + strings.Repeat("a", maxTokenResponse) + `"}`},
			code: "response_too_large", status: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := epServe(t, tc.resp)
			tok, err := epFetch(t, epConfig(srv.URL+"/oauth/token"))
			if tok != nil {
				t.Errorf("got a token %q alongside the error", tok.AccessToken)
			}
			te := epTokenError(t, err)
			if te.Code != tc.code {
				t.Errorf("Code = %q, want %q (error: %v)", te.Code, tc.code, te)
			}
			if te.Status != tc.status {
				t.Errorf("Status = %d, want %d", te.Status, tc.status)
			}
			if te.Provider != "testprov" {
				t.Errorf("Provider = %q", te.Provider)
			}
			if tc.descHas == nil && tc.desc != "" && te.Description != tc.desc {
				t.Errorf("Description = %q, want %q", te.Description, tc.desc)
			}
			for _, s := range tc.descHas {
				if !strings.Contains(te.Description, s) {
					t.Errorf("Description %q does not contain %q", te.Description, s)
				}
			}
			for _, s := range append(tc.descNot, epSecret) {
				if strings.Contains(te.Description, s) || strings.Contains(te.Error(), s) {
					t.Errorf("error %q echoes %q", te.Error(), s)
				}
			}
			if te.RetryAfter != tc.retry {
				t.Errorf("RetryAfter = %v, want %v", te.RetryAfter, tc.retry)
			}
			if tc.exactErr != "" && te.Error() != tc.exactErr {
				t.Errorf("Error() = %q, want %q", te.Error(), tc.exactErr)
			}
		})
	}
}

func TestEndpointLongDescriptionIsTruncatedToValidUTF8(t *testing.T) {
	// A localised description: one ASCII byte, then two-byte runes, so that
	// a cut at a fixed byte count lands inside a rune.
	desc := "a" + strings.Repeat("é", 400)
	srv, _ := epServe(t, epCanned{status: 400, contentType: "application/json",
		body: epJSON(map[string]any{"error": "invalid_scope", "error_description": desc})})
	_, err := epFetch(t, epConfig(srv.URL+"/oauth/token"))
	te := epTokenError(t, err)
	if te.Code != "invalid_scope" {
		t.Fatalf("Code = %q", te.Code)
	}
	if len(te.Description) >= len(desc) {
		t.Errorf("description of %d bytes was not truncated", len(te.Description))
	}
	if !utf8.ValidString(te.Description) {
		t.Errorf("truncated description is not valid UTF-8: ...%q", te.Description[len(te.Description)-8:])
	}
}

func TestEndpointBodyOfExactly1MiBIsRead(t *testing.T) {
	head, tail := `{"access_token":"`, `","token_type":"Bearer","expires_in":3600}`
	body := head + strings.Repeat("b", maxTokenResponse-len(head)-len(tail)) + tail
	if len(body) != maxTokenResponse {
		t.Fatalf("body is %d bytes", len(body))
	}
	srv, _ := epServe(t, epCanned{contentType: "application/json", body: body})
	tok, err := epFetch(t, epConfig(srv.URL+"/oauth/token"))
	if err != nil {
		t.Fatalf("a body of exactly 1 MiB must be accepted: %v", err)
	}
	if len(tok.AccessToken) != maxTokenResponse-len(head)-len(tail) {
		t.Errorf("token of %d bytes", len(tok.AccessToken))
	}
}

func TestEndpointRedirectIsNotFollowed(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			second, hits := epServe(t, epCanned{contentType: "application/json",
				body: `{"access_token":"stolen","token_type":"Bearer","expires_in":3600}`})
			first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				http.Redirect(w, r, second.URL+"/collect?client_secret=leaky-query", status)
			}))
			t.Cleanup(first.Close)
			_, err := epFetch(t, epConfig(first.URL+"/oauth/token"))
			te := epTokenError(t, err)
			if te.Code != "unexpected_redirect" || te.Status != status {
				t.Errorf("got %q HTTP %d, want unexpected_redirect HTTP %d", te.Code, te.Status, status)
			}
			if !strings.Contains(te.Description, second.URL+"/collect") {
				t.Errorf("Description %q should name the redirect target", te.Description)
			}
			if strings.Contains(te.Error(), "leaky-query") {
				t.Errorf("Description %q carries the Location's query", te.Description)
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("the redirect target received %d requests, want none", n)
			}
		})
	}
}

func TestEndpointConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = epFetch(t, epConfig("http://"+addr+"/oauth/token"))
	te := epTokenError(t, err)
	if te.Code != "unreachable" || te.Status != 0 {
		t.Errorf("got %q HTTP %d, want unreachable with no status (%v)", te.Code, te.Status, te)
	}
	if te.RetryAfter != 0 {
		t.Errorf("RetryAfter = %v", te.RetryAfter)
	}
}

// epSlowServer never answers until the client gives up (or the test ends).
func epSlowServer(t *testing.T) *httptest.Server {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	return srv
}

func TestEndpointTimeout(t *testing.T) {
	t.Run("context deadline", func(t *testing.T) {
		srv := epSlowServer(t)
		e := NewEndpoint(*epConfig(srv.URL + "/oauth/token"))
		t.Cleanup(e.Close)
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := e.ClientCredentials(ctx)
		te := epTokenError(t, err)
		if te.Code != "timeout" || te.Status != 0 {
			t.Errorf("got %q HTTP %d, want timeout (%v)", te.Code, te.Status, te)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("fetch took %v after a 150ms deadline", took)
		}
	})
	t.Run("configured timeout", func(t *testing.T) {
		srv := epSlowServer(t)
		cfg := epConfig(srv.URL + "/oauth/token")
		cfg.Timeout = 150 * time.Millisecond
		e := NewEndpoint(*cfg)
		t.Cleanup(e.Close)
		start := time.Now()
		_, err := e.ClientCredentials(context.Background())
		te := epTokenError(t, err)
		if te.Code != "timeout" {
			t.Errorf("got %q, want timeout (%v)", te.Code, te)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("fetch took %v with a 150ms timeout", took)
		}
	})
}

// epRequest is what a recording token endpoint received.
type epRequest struct {
	method, path string
	header       http.Header
	body         []byte
}

// epRecorder is a token endpoint that records every request and answers
// with a token.
type epRecorder struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []epRequest
}

func epRecord(t *testing.T) *epRecorder {
	t.Helper()
	rec := &epRecorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, epRequest{method: r.Method, path: r.URL.Path, header: r.Header.Clone(), body: b})
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"wire-tok","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(rec.Close)
	return rec
}

func (rec *epRecorder) only(t *testing.T) epRequest {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reqs) != 1 {
		t.Fatalf("token endpoint received %d requests, want 1", len(rec.reqs))
	}
	return rec.reqs[0]
}

// epParams decodes a token request body as the server would.
func epParams(t *testing.T, r epRequest) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	switch ct := r.header.Get("Content-Type"); ct {
	case "application/x-www-form-urlencoded":
		vals, err := url.ParseQuery(string(r.body))
		if err != nil {
			t.Fatalf("form body %q: %v", r.body, err)
		}
		return vals
	case "application/json":
		var obj map[string]any
		if err := json.Unmarshal(r.body, &obj); err != nil {
			t.Fatalf("JSON body %q: %v", r.body, err)
		}
		for k, v := range obj {
			switch v := v.(type) {
			case string:
				out[k] = []string{v}
			case []any:
				for _, e := range v {
					s, ok := e.(string)
					if !ok {
						t.Fatalf("JSON %s holds a %T", k, e)
					}
					out[k] = append(out[k], s)
				}
			default:
				t.Fatalf("JSON %s is a %T, want strings", k, v)
			}
		}
		return out
	default:
		t.Fatalf("Content-Type %q", ct)
		return nil
	}
}

func TestEndpointWireFormat(t *testing.T) {
	// A secret that form-encoding changes: ':' '+' '/' '%' and a space.
	const basicID, basicSecret = "my client:1", "p:a+s/s%w rd"
	const basicEncoded = "my+client%3A1:p%3Aa%2Bs%2Fs%25w+rd"
	tests := []struct {
		name       string
		format     string
		auth       string
		wantCT     string
		wantJSONRs bool // resource as a JSON array
	}{
		{"form body", "form", "body", "application/x-www-form-urlencoded", false},
		{"json body", "json", "body", "application/json", true},
		{"form basic", "form", "basic", "application/x-www-form-urlencoded", false},
		{"json basic", "json", "basic", "application/json", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := epRecord(t)
			cfg := epConfig(rec.URL + "/oauth/token")
			cfg.Format, cfg.Client.Auth = tc.format, tc.auth
			cfg.Scope = "read write"
			cfg.Audience = "api.example.com"
			cfg.Resources = []string{"https://api.example.com/a", "https://api.example.com/b"}
			cfg.Params = map[string]string{"tenant": "t-1", "connection": "m2m"}
			if tc.auth == "basic" {
				cfg.Client.ID, cfg.Client.Secret = basicID, basicSecret
			}
			tok, err := epFetch(t, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken != "wire-tok" {
				t.Errorf("token %q", tok.AccessToken)
			}
			r := rec.only(t)
			if r.method != http.MethodPost || r.path != "/oauth/token" {
				t.Errorf("request %s %s, want POST /oauth/token", r.method, r.path)
			}
			if ct := r.header.Get("Content-Type"); ct != tc.wantCT {
				t.Errorf("Content-Type = %q, want %q", ct, tc.wantCT)
			}
			if a := r.header.Get("Accept"); a != "application/json" {
				t.Errorf("Accept = %q, want application/json", a)
			}
			if ua := r.header.Get("User-Agent"); ua != epUserAgent {
				t.Errorf("User-Agent = %q, want %q", ua, epUserAgent)
			}
			p := epParams(t, r)
			want := map[string][]string{
				"grant_type": {"client_credentials"},
				"scope":      {"read write"},
				"audience":   {"api.example.com"},
				"resource":   {"https://api.example.com/a", "https://api.example.com/b"},
				"tenant":     {"t-1"},
				"connection": {"m2m"},
			}
			switch tc.auth {
			case "body":
				want["client_id"] = []string{epClientID}
				want["client_secret"] = []string{epSecret}
				if a := r.header.Get("Authorization"); a != "" {
					t.Errorf("Authorization = %q with body client auth", a)
				}
			case "basic":
				raw, ok := strings.CutPrefix(r.header.Get("Authorization"), "Basic ")
				if !ok {
					t.Fatalf("Authorization = %q, want Basic", r.header.Get("Authorization"))
				}
				dec, err := base64.StdEncoding.DecodeString(raw)
				if err != nil {
					t.Fatal(err)
				}
				if string(dec) != basicEncoded {
					t.Errorf("Basic credentials = %q, want %q (each part form-encoded first)", dec, basicEncoded)
				}
				// What an RFC 6749 server recovers.
				u, pw, _ := strings.Cut(string(dec), ":")
				if u, _ = url.QueryUnescape(u); u != basicID {
					t.Errorf("decoded id = %q", u)
				}
				if pw, _ = url.QueryUnescape(pw); pw != basicSecret {
					t.Errorf("decoded secret = %q", pw)
				}
			}
			if fmt.Sprint(p) != fmt.Sprint(want) {
				t.Errorf("parameters:\n got %v\nwant %v", p, want)
			}
			if tc.wantJSONRs && !strings.Contains(string(r.body), `"resource":["https://api.example.com/a","https://api.example.com/b"]`) {
				t.Errorf("JSON body %s: resource should be an array", r.body)
			}
		})
	}
}

func TestEndpointWireFormatMinimal(t *testing.T) {
	// Without scope, audience, resources or params only the grant and the
	// credentials are sent.
	rec := epRecord(t)
	cfg := epConfig(rec.URL + "/oauth/token")
	cfg.Format = "json"
	if _, err := epFetch(t, cfg); err != nil {
		t.Fatal(err)
	}
	p := epParams(t, rec.only(t))
	want := map[string][]string{"grant_type": {"client_credentials"}, "client_id": {epClientID}, "client_secret": {epSecret}}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Errorf("parameters = %v, want %v", p, want)
	}
}

// epFormatServer accepts token requests only in the listed body formats;
// the others get refuseStatus with invalid_request (or an empty body for
// 415). Requests in the format badClientFor get 401 invalid_client.
type epFormatServer struct {
	*httptest.Server
	mu      sync.Mutex
	formats []string
}

func epFormats(t *testing.T, refuseStatus int, badClientFor string, accept ...string) *epFormatServer {
	t.Helper()
	s := &epFormatServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		f := "other"
		switch r.Header.Get("Content-Type") {
		case "application/json":
			f = "json"
		case "application/x-www-form-urlencoded":
			f = "form"
		}
		s.mu.Lock()
		s.formats = append(s.formats, f)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case f == badClientFor:
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid_client","error_description":"unknown client"}`)
		case !slices.Contains(accept, f):
			w.WriteHeader(refuseStatus)
			if refuseStatus == http.StatusBadRequest {
				fmt.Fprintf(w, `{"error":"invalid_request","error_description":"%s bodies are not accepted"}`, f)
			}
		default:
			fmt.Fprintf(w, `{"access_token":"tok-%s","token_type":"Bearer","expires_in":3600}`, f)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *epFormatServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.formats)
}

func TestEndpointAutoFormat(t *testing.T) {
	autoCfg := func(url, preferred string) *Config {
		cfg := epConfig(url)
		cfg.Format, cfg.PreferredFormat = "auto", preferred
		return cfg
	}
	fetchN := func(t *testing.T, e *Endpoint, n int) ([]*Token, []error) {
		t.Helper()
		var toks []*Token
		var errs []error
		for i := 0; i < n; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			tok, err := e.ClientCredentials(ctx)
			cancel()
			toks, errs = append(toks, tok), append(errs, err)
		}
		return toks, errs
	}

	t.Run("form-only server: JSON then form once, then form only", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "", "form")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "json"))
		t.Cleanup(e.Close)
		toks, errs := fetchN(t, e, 1)
		if errs[0] != nil || toks[0].AccessToken != "tok-form" {
			t.Fatalf("first fetch: %v", errs[0])
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json", "form"}) {
			t.Errorf("first fetch sent %v, want [json form]", got)
		}
		toks, errs = fetchN(t, e, 2)
		for i := range toks {
			if errs[i] != nil || toks[i].AccessToken != "tok-form" {
				t.Errorf("later fetch %d: %v", i, errs[i])
			}
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json", "form", "form", "form"}) {
			t.Errorf("requests %v, want [json form form form]: the working format must be remembered", got)
		}
	})
	t.Run("415 also means wrong format", func(t *testing.T) {
		srv := epFormats(t, http.StatusUnsupportedMediaType, "", "form")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "json"))
		t.Cleanup(e.Close)
		toks, errs := fetchN(t, e, 2)
		if errs[0] != nil || errs[1] != nil || toks[1].AccessToken != "tok-form" {
			t.Fatalf("fetches: %v", errs)
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json", "form", "form"}) {
			t.Errorf("requests %v, want [json form form]", got)
		}
	})
	t.Run("JSON server: stays JSON", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "", "json")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "json"))
		t.Cleanup(e.Close)
		toks, errs := fetchN(t, e, 2)
		for i := range toks {
			if errs[i] != nil || toks[i].AccessToken != "tok-json" {
				t.Errorf("fetch %d: %v", i, errs[i])
			}
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json", "json"}) {
			t.Errorf("requests %v, want [json json]", got)
		}
	})
	t.Run("preferred form against a JSON server", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "", "json")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "form"))
		t.Cleanup(e.Close)
		if _, errs := fetchN(t, e, 2); errs[0] != nil || errs[1] != nil {
			t.Fatalf("fetches: %v", errs)
		}
		if got := srv.seen(); !slices.Equal(got, []string{"form", "json", "json"}) {
			t.Errorf("requests %v, want [form json json]", got)
		}
	})
	t.Run("server refusing both: the first error is returned", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "json"))
		t.Cleanup(e.Close)
		_, errs := fetchN(t, e, 1)
		te := epTokenError(t, errs[0])
		if te.Code != "invalid_request" || te.Status != 400 || te.Description != "json bodies are not accepted" {
			t.Errorf("error = %v, want the answer to the first (JSON) request", te)
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json", "form"}) {
			t.Errorf("requests %v, want [json form]", got)
		}
		// Nothing worked, so the next fetch starts with the preferred format again.
		fetchN(t, e, 1)
		if got := srv.seen(); !slices.Equal(got, []string{"json", "form", "json", "form"}) {
			t.Errorf("requests %v, want [json form json form]", got)
		}
	})
	t.Run("no fallback on a credentials error", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "json", "json", "form")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "json"))
		t.Cleanup(e.Close)
		_, errs := fetchN(t, e, 1)
		if te := epTokenError(t, errs[0]); te.Code != "invalid_client" {
			t.Errorf("error = %v, want invalid_client", te)
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json"}) {
			t.Errorf("requests %v, want [json] only", got)
		}
	})
	t.Run("fallback answered by another error: that error is returned", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "form", "form")
		e := NewEndpoint(*autoCfg(srv.URL+"/connect/token", "json"))
		t.Cleanup(e.Close)
		_, errs := fetchN(t, e, 1)
		if te := epTokenError(t, errs[0]); te.Code != "invalid_client" || te.Status != 401 {
			t.Errorf("error = %v, want invalid_client from the form request", te)
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json", "form"}) {
			t.Errorf("requests %v, want [json form]", got)
		}
	})
	t.Run("pinned format never falls back", func(t *testing.T) {
		srv := epFormats(t, http.StatusBadRequest, "", "form")
		cfg := epConfig(srv.URL + "/connect/token")
		cfg.Format = "json"
		e := NewEndpoint(*cfg)
		t.Cleanup(e.Close)
		_, errs := fetchN(t, e, 1)
		if te := epTokenError(t, errs[0]); te.Code != "invalid_request" {
			t.Errorf("error = %v, want invalid_request", te)
		}
		if got := srv.seen(); !slices.Equal(got, []string{"json"}) {
			t.Errorf("requests %v, want [json] only", got)
		}
	})
}
