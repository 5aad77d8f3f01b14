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
func issuerGrantSite(is *fakeAS, addr string, api *upstream) string {
	return fmt.Sprintf(`(client) {
	issuer        %s
	client_id     client-1
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
`, is.URL, addr, api.hostport())
}

// Disconnecting revokes the grant's tokens at the revocation endpoint that
// discovery found (no revoke_url is configured). Reconnecting revokes
// nothing: where revoking one token ends every grant of the client and the
// user, that would end the new grant too (issue 16).
func TestDiscoveredRevocationEndpointRevokes(t *testing.T) {
	addr := freeAddr(t)
	as := newFakeAS(t)
	as.RedirectURI, as.CreatedAt = "http://"+addr+"/oauth/callback", true
	api := newAPI(t, as)
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
	if n, live := as.revocations(), as.liveRefreshTokens(); n != 0 || live != 2 {
		t.Errorf("after reconnecting: %d revocations, %d live refresh tokens; want none revoked (0, 2)", n, live)
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
	if n, live := as.revocations(), as.liveRefreshTokens(); n != 2 || live != 1 {
		t.Errorf("after disconnecting: %d revocations, %d live refresh tokens; want the grant's refresh and access tokens revoked (2), the replaced grant's refresh token left (1)", n, live)
	}
	if status, _ := c.get("/api", "X-Account", "alice"); status != http.StatusServiceUnavailable {
		t.Errorf("after disconnecting: %d, want 503", status)
	}
}

// pointAt makes is publish tokenURL as its token endpoint.
func pointAt(is *fakeAS, tokenURL string) {
	is.setMetadata(map[string]any{"issuer": is.URL, "token_endpoint": tokenURL}, http.StatusOK)
}

// The discovered document has a lifetime: its Cache-Control max-age (here
// 10 minutes), kept in the shared record across restarts. Within it, a
// token is fetched from the endpoint discovered first, even after a
// restart; past it, the issuer is asked again and the new endpoint used,
// even by a process that starts with the old document in its record. A
// token endpoint that answers 404, or refuses connections, makes the next
// attempt discover again.
func TestDiscoveryLifetimeAndRediscovery(t *testing.T) {
	clock := useFakeClock(t)
	newAS := func(prefix string) *fakeAS {
		as := newFakeAS(t)
		as.Format, as.ClientAuth = "form", "basic"
		as.Mint, as.Lifetime = mintPrefixed(prefix), 120*time.Second
		return as
	}
	a, third, d := newAS("from-a"), newAS("from-c"), newAS("from-d")
	// b answers 404 once gone is set, as a token endpoint that moved.
	b := newAS("from-b")
	is := newFakeAS(t)
	is.setCacheControl("public, max-age=600")
	pointAt(is, a.tokenURL())
	up := newUpstream(t)
	t.Setenv("OAB_DISCOVERY_SECRET", a.Secret)
	sites := e2eSite("oauth_bearer", fmt.Sprintf("\t\tissuer %s\n\t\tclient_id %s\n\t\tclient_secret {env.OAB_DISCOVERY_SECRET}", is.URL, a.ClientID), up)
	c := startCaddy(t, sites)
	get := func(path, wantPrefix string) {
		t.Helper()
		status, body := c.get(path)
		if got := up.last(t).Get("Authorization"); status != 200 || !strings.HasPrefix(got, "Bearer "+wantPrefix) {
			t.Fatalf("GET %s: %d %q, upstream got %q; want a token %s…", path, status, body, got, wantPrefix)
		}
	}
	hits := func(want int64) {
		t.Helper()
		if n := is.metadataReads(); n != want {
			t.Fatalf("the issuer's metadata was read %d times, want %d", n, want)
		}
	}

	get("/1", "from-a")
	hits(1)

	// Within the lifetime (5 of 10 minutes), after a restart: the stored
	// document is used, not read again, though the issuer changed it.
	pointAt(is, b.tokenURL())
	clock.add(5 * time.Minute) // the 120 s token has expired
	c.restart(sites)
	get("/2", "from-a")
	hits(1)

	// Past the lifetime, after a restart: the new document.
	clock.add(6 * time.Minute)
	c.restart(sites)
	get("/3", "from-b")
	hits(2)

	// The token endpoint answers 404 (the provider moved it): the request
	// fails, and the next attempt reads the metadata again.
	pointAt(is, third.tokenURL())
	b.answerWith(http.NotFound)
	clock.add(3 * time.Minute)
	if status, _ := c.get("/4"); status == http.StatusOK {
		t.Fatal("a token endpoint answering 404 gave a token")
	}
	clock.add(5 * time.Second) // past the backoff
	get("/5", "from-c")
	hits(3)

	// The token endpoint refuses connections: the same.
	pointAt(is, d.tokenURL())
	third.Close()
	clock.add(3 * time.Minute)
	if status, _ := c.get("/6"); status == http.StatusOK {
		t.Fatal("a token endpoint refusing connections gave a token")
	}
	clock.add(5 * time.Second)
	get("/7", "from-d")
	hits(4)
}
