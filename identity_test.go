package oauthbearer

// Identity: what names a credential set (its grant records, locks and
// event log, its shared token, its pool entry, its admin API and metrics
// id) tells apart every set that is not the same, and nothing more.

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// issuerFor is a discovery server publishing as's endpoints.
func issuerFor(t *testing.T, as *fakeAS) *fakeAS {
	t.Helper()
	is := newFakeAS(t)
	is.setMetadata(map[string]any{
		"issuer":                 is.URL,
		"token_endpoint":         as.tokenURL(),
		"authorization_endpoint": as.authorizeURL(),
		"revocation_endpoint":    as.revokeURL(),
	}, http.StatusOK)
	return is
}

// Two authorization servers found by issuer discovery (staging and
// production) with the same client id: an account connected on one has no
// grant on the other, the other's API never receives its token, and each
// keeps its grants under its own id in the storage.
func TestTwoIssuersOneClientIDAreTwoGrants(t *testing.T) {
	addr := freeAddr(t)
	stgAS := newFakeAS(t)
	stgAS.RedirectURI, stgAS.CreatedAt = "http://"+addr+"/stg/oauth/callback", true
	prodAS := newFakeAS(t)
	prodAS.RedirectURI, prodAS.CreatedAt = "http://"+addr+"/prod/oauth/callback", true
	stgAPI, prodAPI := newAPI(t, stgAS), newAPI(t, prodAS)
	stgIssuer, prodIssuer := issuerFor(t, stgAS), issuerFor(t, prodAS)
	t.Setenv("CAS_SECRET", stgAS.Secret) // both servers know client client-1 by the same secret
	site := func(name string, is *fakeAS, api *upstream) string {
		return fmt.Sprintf(`	handle /%[1]s/* {
		oauth_bearer_consent /%[1]s/oauth/* {
			issuer        %[2]s
			client_id     client-1
			client_secret {env.CAS_SECRET}
			redirect_uri  http://%[3]s/%[1]s/oauth/callback
			scope         read
		}
		oauth_bearer {
			grant         authorization_code
			issuer        %[2]s
			client_id     client-1
			client_secret {env.CAS_SECRET}
			account       {http.request.header.X-Account}
		}
		reverse_proxy %[4]s
	}
`, name, is.URL, addr, api.hostport())
	}
	c := startCaddyAt(t, addr, "http://LISTEN {\n"+site("stg", stgIssuer, stgAPI)+site("prod", prodIssuer, prodAPI)+"}\n")
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}

	if status, body := connectWith(t, browser, c.url("/stg/oauth/connect"), "alice"); status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("connecting alice on staging: %d %q", status, body)
	}
	if status, body := c.get("/stg/api", "X-Account", "alice"); status != 200 {
		t.Fatalf("staging API for alice: %d %q", status, body)
	}
	status, body := c.get("/prod/api", "X-Account", "alice")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "/prod/oauth/connect") {
		t.Errorf("production API for alice, connected on staging only: %d %q; want 503 naming production's connect path", status, body)
	}
	for _, a := range prodAPI.authorizations() {
		if a != "" {
			t.Errorf("production's API received %q: a token of staging's", a)
		}
	}

	// Connected on production too: two grants in the storage, each used
	// with its own server.
	if status, body := connectWith(t, browser, c.url("/prod/oauth/connect"), "alice"); status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("connecting alice on production: %d %q", status, body)
	}
	if status, body := c.get("/prod/api", "X-Account", "alice"); status != 200 {
		t.Fatalf("production API for alice: %d %q", status, body)
	}
	if status, body := c.get("/stg/api", "X-Account", "alice"); status != 200 {
		t.Fatalf("staging API for alice after connecting production: %d %q", status, body)
	}
	dirs, _ := os.ReadDir(filepath.Join(c.dir, "storage", "oauth_bearer", "grants"))
	if len(dirs) != 2 {
		t.Errorf("the storage holds %d grant ids, want one per issuer", len(dirs))
	}
	if stgAPI.answered(401) != 0 || prodAPI.answered(401) != 0 {
		t.Errorf("an API refused a token: staging %d, production %d", stgAPI.answered(401), prodAPI.answered(401))
	}
}

// The grant id of a configuration without an issuer is what it always
// was (its grants stay where they are); with an issuer it differs per
// issuer.
func TestGrantIDIssuer(t *testing.T) {
	cs := &credentialSet{Provider: "generic", TokenURL: "https://as.example/token", ClientID: "app-1"}
	if got := grantID(cs); got != "26ce029c9e5089d8" {
		t.Errorf("grantID without issuer = %s; it must not change (existing grants would move)", got)
	}
	a := &credentialSet{Provider: "generic", Issuer: "https://staging.example", ClientID: "app-1", clientSecret: "s"}
	b := &credentialSet{Provider: "generic", Issuer: "https://login.example", ClientID: "app-1", clientSecret: "s"}
	if grantID(a) == grantID(b) {
		t.Error("two issuers with one client id have one grant id")
	}
	// The other identities held the issuer already: the pool key (and so
	// the admin API and metrics id) and the shared token's record.
	if a.key() == b.key() {
		t.Error("two issuers with one client id have one pool key")
	}
	fa, err := newSharedFetcher(nil, &env{}, a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := newSharedFetcher(nil, &env{}, b)
	if err != nil {
		t.Fatal(err)
	}
	if fa.key == fb.key || fa.lock == fb.lock {
		t.Error("two issuers with one client id share a token record or its lock")
	}
}

// The same credentials once with token_store memory and once with the
// storage are two token sources: each has an id of its own, so that the
// expiry gauge has one series each and Caddy's whole /metrics scrape
// succeeds (a duplicate series fails it with 500). The admin API lists
// both under distinct ids.
func TestSameCredentialsTwoTokenStoresScrape(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	t.Setenv("OAB_SCRAPE_SECRET", as.Secret)
	handler := func(path, store string) string {
		return fmt.Sprintf(`	handle /%s/* {
		oauth_bearer {
			token_url     %s
			client_id     %s
			client_secret {env.OAB_SCRAPE_SECRET}
			token_store   %s
		}
		reverse_proxy %s
	}
`, path, as.tokenURL(), as.ClientID, store, up.hostport())
	}
	c := startCaddyAdmin(t, "http://LISTEN {\n\thandle /metrics {\n\t\tmetrics\n\t}\n"+handler("mem", "memory")+handler("shared", "storage")+"}\n")
	for _, p := range []string{"/mem/1", "/shared/1"} {
		if status, body := c.get(p); status != 200 {
			t.Fatalf("GET %s: %d %q", p, status, body)
		}
	}
	status, body := c.get("/metrics")
	if status != http.StatusOK {
		t.Fatalf("scraping /metrics: %d %q", status, body)
	}
	series := regexp.MustCompile(`caddy_oauth_bearer_token_expiry_seconds\{provider="generic",source="([0-9a-f]{12})"\} \d+`).FindAllStringSubmatch(body, -1)
	if len(series) != 2 || series[0][1] == series[1][1] {
		t.Errorf("the expiry gauge has %d series (%v); want two with distinct sources", len(series), series)
	}
	// The admin endpoint's /metrics too.
	if status, body := adminDo(t, c, http.MethodGet, "/metrics"); status != http.StatusOK {
		t.Errorf("scraping the admin endpoint's /metrics: %d %.200q", status, body)
	}
	sources, _ := adminSources(t, c)
	ids := map[any]bool{}
	for _, s := range sources {
		ids[s["id"]] = true
	}
	if len(sources) != 2 || len(ids) != 2 {
		t.Errorf("the admin API lists %d sources with %d distinct ids; want two", len(sources), len(ids))
	}
}
