package oauthbearer

// The lifecycle of what issuer discovery finds: the revocation endpoint is
// used to revoke, and the document is found again when it is old or when
// the token endpoint it named has gone.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"
)

// issuerGrantSite is a site whose consent handler and injector find as's
// endpoints through discovery at is.
func issuerGrantSite(is *issuerServer, addr string, api *apiUpstream) string {
	return fmt.Sprintf(`(client) {
	issuer        %s
	client_id     app-1
	client_secret {env.CAS_SECRET}
}
http://LISTEN {
	oauth_bearer_consent /oauth/* {
		import client
		redirect_uri http://%s/oauth/callback
		scope        read
	}
	oauth_bearer {
		grant   authorization_code
		import  client
		account {http.request.header.X-Account}
	}
	reverse_proxy %s
}
`, is.issuer, addr, api.hostport())
}

// Reconnecting an account revokes the refresh token of the grant it
// replaces, and disconnecting revokes the grant's tokens, at the
// revocation endpoint that discovery found (no revoke_url is configured).
func TestDiscoveredRevocationEndpointRevokes(t *testing.T) {
	addr := freeAddr(t)
	as := newCodeAS(t, "http://"+addr+"/oauth/callback")
	api := newAPIUpstream(t, as)
	is := issuerFor(t, as)
	t.Setenv("CAS_SECRET", as.Secret)
	c := startCaddyAt(t, addr, issuerGrantSite(is, addr, api))
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}

	for i := range 2 {
		if status, body := connectWith(t, browser, c.url("/oauth/connect"), "alice"); status != 200 || !strings.Contains(body, "Connected") {
			t.Fatalf("connect %d: %d %q", i+1, status, body)
		}
	}
	if n, live := as.Revocations.Load(), as.liveRefreshTokens(); n != 1 || live != 1 {
		t.Errorf("after reconnecting: %d revocations, %d live refresh tokens; want the replaced one revoked (1, 1)", n, live)
	}

	resp, err := browser.PostForm(c.url("/oauth/disconnect"), url.Values{"account": {"alice"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var answer map[string]any
	if resp.StatusCode != 200 || json.Unmarshal(b, &answer) != nil || answer["revoked"] != true {
		t.Errorf("disconnect: %d %s; want revoked true", resp.StatusCode, b)
	}
	if live := as.liveRefreshTokens(); live != 0 {
		t.Errorf("after disconnecting: %d live refresh tokens; want none", live)
	}
	if status, _ := c.get("/api", "X-Account", "alice"); status != http.StatusServiceUnavailable {
		t.Errorf("after disconnecting: %d, want 503", status)
	}
}
