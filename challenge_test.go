package oauthbearer

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The decision WWW-Authenticate parsing (RFC 9110 §11.6.1, tested in
// internal/oauthclient) feeds: whether an upstream 401 refuses the token
// (RFC 6750 §3.1), so that the injector replaces the token and replays the
// request.

func TestTokenRejectedOnlyForBearerInvalidTokenOrNoChallenge(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		values []string // WWW-Authenticate lines; nil: no header
		want   bool
	}{
		{"401 without a challenge", 401, nil, true},
		{"401 with an empty challenge line", 401, []string{""}, true},
		{"401 with only empty list elements", 401, []string{", ,"}, true},
		{"Bearer without error: no credentials seen (RFC 6750 §3.1)", 401, []string{"Bearer"}, false},
		{"Bearer realm without error", 401, []string{`Bearer realm="api"`}, false},
		{"Bearer invalid_token", 401, []string{`Bearer error="invalid_token"`}, true},
		{"Bearer invalid_token unquoted", 401, []string{`Bearer error=invalid_token`}, true},
		{"Bearer insufficient_scope", 401, []string{`Bearer error="insufficient_scope"`}, false},
		{"Bearer invalid_request", 401, []string{`Bearer error="invalid_request"`}, false},
		{"Basic only", 401, []string{`Basic realm="x"`}, false},
		{"Basic token68 only", 401, []string{`Negotiate abc==`}, false},
		{"Bearer following Basic on one line", 401, []string{`Basic realm="api", Bearer realm="api", error="invalid_token"`}, true},
		{"Bearer without params following Basic on one line", 401, []string{`Basic realm="api", Bearer`}, false},
		{"Bearer following a token68 challenge", 401, []string{`Negotiate abc==, Bearer error="invalid_token"`}, true},
		{"Bearer invalid_request then Basic", 401, []string{`Bearer error="invalid_request", Basic realm="x"`}, false},
		{"lower-case scheme and upper-case param name", 401, []string{`bearer ERROR="invalid_token"`}, true},
		{"upper-case scheme, unquoted", 401, []string{`BEARER error=invalid_token`}, true},
		{"upper-case param name, insufficient_scope", 401, []string{`Bearer ERROR="insufficient_scope"`}, false},
		{"error-like text inside a quoted realm", 401, []string{`Bearer realm="error=\"insufficient_scope\"", error="invalid_token"`}, true},
		{"invalid_token only inside a quoted string", 401, []string{`Bearer error="insufficient_scope", realm="x, error=invalid_token"`}, false},
		{"a fake Bearer challenge inside a quoted string", 401, []string{`Basic realm="x, Bearer error=\"invalid_token\""`}, false},
		{"two lines, Bearer in the second", 401, []string{`Basic realm="x"`, `Bearer error="invalid_token"`}, true},
		{"two lines, neither refuses the token", 401, []string{`Basic realm="x"`, `Bearer error="insufficient_scope"`}, false},
		{"two lines, the second Bearer refuses the token", 401, []string{`Bearer error="invalid_request"`, `Bearer error="invalid_token"`}, true},
		{"403 with Bearer invalid_token", 403, []string{`Bearer error="invalid_token"`}, false},
		{"403 without a challenge", 403, nil, false},
		{"200", 200, []string{`Bearer error="invalid_token"`}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{}
			for _, v := range tc.values {
				hdr.Add("WWW-Authenticate", v)
			}
			if got := tokenRejected(tc.status, hdr); got != tc.want {
				t.Errorf("tokenRejected(%d, %q) = %v, want %v", tc.status, tc.values, got, tc.want)
			}
		})
	}
}

// chlTokName is the public part of a fakeAS token ("Bearer tok-2"), for
// messages.
func chlTokName(auth string) string {
	if i := strings.LastIndexByte(auth, '-'); i > 0 {
		return auth[:i]
	}
	return "(" + fmt.Sprint(len(auth)) + " characters)"
}

// An upstream that names Basic first and Bearer invalid_token second on
// one WWW-Authenticate line refuses the token: the injector replaces an
// old token and replays the request. Basic alone does not.
func TestUpstream401BearerAfterBasicOnOneLineIsReplayedWithNewToken(t *testing.T) {
	clock := useFakeClock(t)
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", as.credentials(), up))

	if status, body := c.get("/warm"); status != 200 {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	tok1 := up.authorizations()[0]
	if !strings.HasPrefix(tok1, "Bearer tok-1-") {
		t.Fatalf("first token %q…, want one from the token endpoint", chlTokName(tok1))
	}
	clock.add(time.Minute) // older than the 30 s below which a 401 is not the token's fault

	// Control: Basic alone is not about the token; the 401 is passed on
	// and the token kept.
	up.reject(`Basic realm="api"`, tok1)
	if status, _ := c.get("/basic-only"); status != http.StatusUnauthorized {
		t.Errorf("Basic-only 401: status %d, want the upstream's 401 passed on", status)
	}
	if n := as.issued(); n != 1 {
		t.Errorf("Basic-only 401: %d tokens issued, want 1 (token kept)", n)
	}

	// Basic first, Bearer invalid_token second, one line: replayed once
	// with a new token.
	up.reject(`Basic realm="api", Bearer error="invalid_token"`, tok1)
	before := len(up.authorizations())
	status, body := c.get("/items")
	if status != 200 || body != "ok /items" {
		t.Fatalf("GET /items: %d %q, want 200 from a replay with a new token", status, body)
	}
	if n := as.issued(); n != 2 {
		t.Errorf("%d tokens issued, want 2", n)
	}
	got := up.authorizations()[before:]
	if len(got) != 2 || got[0] != tok1 || got[1] == tok1 || !strings.HasPrefix(got[1], "Bearer tok-2-") {
		names := make([]string, len(got))
		for i, a := range got {
			names[i] = chlTokName(a)
		}
		t.Errorf("upstream saw %q, want the old token (tok-1) then the new one (tok-2)", names)
	}
}
