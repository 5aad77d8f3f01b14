package oauthclient

// Tests of discovery.go against real HTTP(S) servers on 127.0.0.1.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// discoveryTestServer serves metadata documents and records the paths
// asked for.
type discoveryTestServer struct {
	srv    *httptest.Server
	mu     sync.Mutex
	routes map[string]http.HandlerFunc
	paths  []string
}

func newDiscoveryTestServer(t *testing.T, useTLS bool) *discoveryTestServer {
	t.Helper()
	d := &discoveryTestServer{routes: map[string]http.HandlerFunc{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.paths = append(d.paths, r.URL.Path)
		fn := d.routes[r.URL.Path]
		d.mu.Unlock()
		if fn == nil {
			http.NotFound(w, r)
			return
		}
		fn(w, r)
	})
	if useTLS {
		d.srv = httptest.NewTLSServer(h)
	} else {
		d.srv = httptest.NewServer(h)
	}
	t.Cleanup(d.srv.Close)
	return d
}

// handle routes path to fn.
func (d *discoveryTestServer) handle(path string, fn http.HandlerFunc) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.routes[path] = fn
}

// serveDoc serves doc as JSON at path.
func (d *discoveryTestServer) serveDoc(path string, doc any) {
	d.handle(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(doc)
	})
}

// requested returns the paths asked for so far.
func (d *discoveryTestServer) requested() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.paths)
}

// discoveryTestDoc is a complete metadata document for issuer, with its
// endpoints under base.
func discoveryTestDoc(issuer, base string) map[string]any {
	return map[string]any{
		"issuer":                 issuer,
		"token_endpoint":         base + "/token",
		"authorization_endpoint": base + "/authorize",
		"revocation_endpoint":    base + "/revoke",
		"mtls_endpoint_aliases": map[string]any{
			"token_endpoint":      "https://mtls.idp.example/token",
			"revocation_endpoint": "https://mtls.idp.example/revoke",
			"userinfo_endpoint":   "https://mtls.idp.example/userinfo",
		},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt", "tls_client_auth"},
		"grant_types_supported":                 []string{"client_credentials"},
		"jwks_uri":                              base + "/jwks",
	}
}

var discoveryTestClient = &http.Client{Timeout: 10 * time.Second}

// RFC 8414 first: its document is used and the OpenID one is not asked for.
func TestDiscoverRFC8414(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	issuer := d.srv.URL
	d.serveDoc("/.well-known/oauth-authorization-server", discoveryTestDoc(issuer, issuer))
	d.serveDoc("/.well-known/openid-configuration", discoveryTestDoc(issuer, "https://wrong.example"))

	doc, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Issuer != issuer || doc.TokenEndpoint != issuer+"/token" || doc.AuthorizationEndpoint != issuer+"/authorize" ||
		doc.RevocationEndpoint != issuer+"/revoke" || doc.source != issuer+"/.well-known/oauth-authorization-server" {
		t.Fatalf("document %+v", doc)
	}
	if doc.MTLSEndpointAliases.TokenEndpoint != "https://mtls.idp.example/token" ||
		doc.MTLSEndpointAliases.RevocationEndpoint != "https://mtls.idp.example/revoke" ||
		doc.mtlsTokenEndpoint() != "https://mtls.idp.example/token" {
		t.Fatalf("mtls aliases %+v", doc.MTLSEndpointAliases)
	}
	if got := d.requested(); !slices.Equal(got, []string{"/.well-known/oauth-authorization-server"}) {
		t.Fatalf("requested %v", got)
	}
}

// Defaults when optional members are absent.
func TestDiscoveryDocumentDefaults(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	issuer := d.srv.URL
	d.serveDoc("/.well-known/oauth-authorization-server", map[string]any{"issuer": issuer, "token_endpoint": issuer + "/token"})
	doc, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
	if err != nil {
		t.Fatal(err)
	}
	if doc.mtlsTokenEndpoint() != issuer+"/token" {
		t.Fatalf("defaults: %+v", doc)
	}
}

// Where the documents are looked for (RFC 8414 §3.1, OIDC Discovery §4).
func TestDiscoveryURLs(t *testing.T) {
	for _, c := range []struct{ issuer, oauth, openid string }{
		{"https://idp.example", "https://idp.example/.well-known/oauth-authorization-server", "https://idp.example/.well-known/openid-configuration"},
		{"https://idp.example/", "https://idp.example/.well-known/oauth-authorization-server", "https://idp.example/.well-known/openid-configuration"},
		{"https://idp.example/tenant/v2.0", "https://idp.example/.well-known/oauth-authorization-server/tenant/v2.0", "https://idp.example/tenant/v2.0/.well-known/openid-configuration"},
		{"https://idp.example:8443/realms/a%20b/", "https://idp.example:8443/.well-known/oauth-authorization-server/realms/a%20b", "https://idp.example:8443/realms/a%20b/.well-known/openid-configuration"},
		{"http://127.0.0.1:9000/x", "http://127.0.0.1:9000/.well-known/oauth-authorization-server/x", "http://127.0.0.1:9000/x/.well-known/openid-configuration"},
		{"http://localhost:9000", "http://localhost:9000/.well-known/oauth-authorization-server", "http://localhost:9000/.well-known/openid-configuration"},
	} {
		o, oi, err := discoveryURLs(c.issuer)
		if err != nil || o != c.oauth || oi != c.openid {
			t.Errorf("%s:\n got %s %s %v\nwant %s %s", c.issuer, o, oi, err, c.oauth, c.openid)
		}
	}
	for _, c := range []struct{ issuer, want string }{
		{"http://idp.example", "must be https"},
		{"ftp://idp.example", "must be https"},
		{"idp.example", "is not an absolute URL"},
		{"https://idp.example/?tenant=a", "must have no query"},
		{"https://idp.example/#x", "must have no query, fragment"},
		{"https://user@idp.example/", "user info"},
		{"https://", "is not an absolute URL"},
	} {
		_, _, err := discoveryURLs(c.issuer)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.issuer, err, c.want)
		}
		// and nothing is fetched
		if _, err2 := discoverIssuer(context.Background(), discoveryTestClient, c.issuer); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("%s: discoverIssuer error %v", c.issuer, err2)
		}
	}
}

// An issuer with a path: the RFC 8414 form first, then the OpenID form.
func TestDiscoverPathIssuerFallsBackToOpenID(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	issuer := d.srv.URL + "/tenant/"
	d.serveDoc("/tenant/.well-known/openid-configuration", discoveryTestDoc(issuer, d.srv.URL+"/tenant"))
	doc, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
	if err != nil {
		t.Fatal(err)
	}
	if doc.TokenEndpoint != d.srv.URL+"/tenant/token" || doc.source != d.srv.URL+"/tenant/.well-known/openid-configuration" {
		t.Fatalf("document %+v", doc)
	}
	want := []string{"/.well-known/oauth-authorization-server/tenant", "/tenant/.well-known/openid-configuration"}
	if got := d.requested(); !slices.Equal(got, want) {
		t.Fatalf("requested %v, want %v", got, want)
	}
}

// What makes discovery try the OpenID URL: a 4xx, or a 200 that is not a
// JSON object. A 5xx does not: it is reported as it is.
func TestDiscoverFallback(t *testing.T) {
	for _, c := range []struct {
		name     string
		first    http.HandlerFunc
		fallback bool
		want     string // the error when not falling back
	}{
		{"404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, true, ""},
		{"410", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusGone) }, true, ""},
		{"403", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) }, true, ""},
		{"html-page", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write([]byte("<!doctype html><title>App</title>"))
		}, true, ""},
		{"500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }, false,
			"/.well-known/oauth-authorization-server answered 500"},
		{"204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }, false, "answered 204"},
		{"bad-json", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"issuer": 42}`)) }, false, "is not a valid metadata document"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDiscoveryTestServer(t, false)
			issuer := d.srv.URL
			d.handle("/.well-known/oauth-authorization-server", c.first)
			d.serveDoc("/.well-known/openid-configuration", discoveryTestDoc(issuer, issuer))
			doc, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
			if c.fallback {
				if err != nil || doc.source != issuer+"/.well-known/openid-configuration" {
					t.Fatalf("%v, %+v", err, doc)
				}
				if n := len(d.requested()); n != 2 {
					t.Fatalf("%d requests, want 2", n)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), "discovery: ") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if got := d.requested(); len(got) != 1 {
				t.Fatalf("requested %v: the OpenID URL was tried after a failure that is not 'not found'", got)
			}
		})
	}
}

// Neither document: the error names both URLs and what each answered.
func TestDiscoverNeitherDocument(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	d.handle("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html>"))
	})
	_, err := discoverIssuer(context.Background(), discoveryTestClient, d.srv.URL)
	want := "discovery: " + d.srv.URL + "/.well-known/oauth-authorization-server answered 404; then " +
		d.srv.URL + "/.well-known/openid-configuration answered a text/html body, not a JSON object"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v\nwant %s", err, want)
	}
	var nf *discoveryNotFoundError
	if !errors.As(err, &nf) {
		t.Fatal("the second failure is not wrapped")
	}
}

// The document's issuer must be the configured one, exactly.
func TestDiscoverIssuerMismatch(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	for _, named := range []string{"https://evil.example", d.srv.URL + "/", strings.ToUpper(d.srv.URL), ""} {
		d.serveDoc("/.well-known/oauth-authorization-server", discoveryTestDoc(named, d.srv.URL))
		_, err := discoverIssuer(context.Background(), discoveryTestClient, d.srv.URL)
		want := `discovery: ` + d.srv.URL + `/.well-known/oauth-authorization-server names issuer "` + named + `", configured "` + d.srv.URL + `"`
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error %v\nwant %s", err, want)
		}
	}
}

// Endpoints must be https, or http on a loopback host; token_endpoint is
// required.
func TestDiscoverEndpointChecks(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	issuer := d.srv.URL
	for _, c := range []struct {
		name string
		mod  func(m map[string]any)
		want string // "" accepted
	}{
		{"complete", func(map[string]any) {}, ""},
		{"loopback-http", func(m map[string]any) { m["token_endpoint"] = "http://localhost:8080/token" }, ""},
		{"ipv6-loopback", func(m map[string]any) { m["token_endpoint"] = "http://[::1]:8080/token" }, ""},
		{"http-token", func(m map[string]any) { m["token_endpoint"] = "http://idp.example/token" }, "token_endpoint http://idp.example/token must be https"},
		{"http-authorize", func(m map[string]any) { m["authorization_endpoint"] = "http://idp.example/a" }, "authorization_endpoint http://idp.example/a must be https"},
		{"http-revoke", func(m map[string]any) { m["revocation_endpoint"] = "http://10.0.0.1/r" }, "revocation_endpoint http://10.0.0.1/r must be https"},
		{"http-mtls-alias", func(m map[string]any) {
			m["mtls_endpoint_aliases"] = map[string]any{"token_endpoint": "http://mtls.idp.example/token"}
		}, "mtls_endpoint_aliases.token_endpoint http://mtls.idp.example/token must be https"},
		{"http-mtls-revoke", func(m map[string]any) {
			m["mtls_endpoint_aliases"] = map[string]any{"revocation_endpoint": "http://mtls.idp.example/revoke"}
		}, "mtls_endpoint_aliases.revocation_endpoint http://mtls.idp.example/revoke must be https"},
		{"relative", func(m map[string]any) { m["token_endpoint"] = "/token" }, `token_endpoint "/token" is not an absolute URL`},
		{"no-token-endpoint", func(m map[string]any) { delete(m, "token_endpoint") }, "has no token_endpoint"},
	} {
		doc := discoveryTestDoc(issuer, issuer)
		c.mod(doc)
		d.serveDoc("/.well-known/oauth-authorization-server", doc)
		_, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

// The body is capped at 1 MiB: a document of exactly 1 MiB is read, one
// byte more is an error.
func TestDiscoverBodyCap(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	issuer := d.srv.URL
	doc := func(size int) []byte {
		head := `{"issuer":"` + issuer + `","token_endpoint":"` + issuer + `/token","padding":"`
		tail := `"}`
		return []byte(head + strings.Repeat("x", size-len(head)-len(tail)) + tail)
	}
	for _, c := range []struct {
		size int
		ok   bool
	}{{maxDiscoveryBody, true}, {maxDiscoveryBody + 1, false}} {
		body := doc(c.size)
		d.handle("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
		_, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
		if c.ok && err != nil {
			t.Errorf("%d bytes: %v", c.size, err)
		}
		if !c.ok && (err == nil || !strings.Contains(err.Error(), "answered a document larger than 1 MiB")) {
			t.Errorf("%d bytes: error %v", c.size, err)
		}
	}
}

// Redirects: followed on the same host; to another host, refused with both
// named and the other host never contacted; the caller's client unchanged.
func TestDiscoverRedirects(t *testing.T) {
	d := newDiscoveryTestServer(t, false)
	issuer := d.srv.URL
	d.handle("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/meta/", http.StatusFound)
	})
	d.serveDoc("/meta/", discoveryTestDoc(issuer, issuer))
	doc, err := discoverIssuer(context.Background(), discoveryTestClient, issuer)
	if err != nil || doc.TokenEndpoint != issuer+"/token" {
		t.Fatalf("same-host redirect: %v", err)
	}

	// another host: "localhost" is another host than "127.0.0.1" to a client
	other := newDiscoveryTestServer(t, false)
	other.serveDoc("/.well-known/oauth-authorization-server", discoveryTestDoc(issuer, issuer))
	otherURL := strings.Replace(other.srv.URL, "127.0.0.1", "localhost", 1)
	d.handle("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, otherURL+"/.well-known/oauth-authorization-server", http.StatusMovedPermanently)
	})
	client := &http.Client{Timeout: 10 * time.Second}
	_, err = discoverIssuer(context.Background(), client, issuer)
	want := "discovery: " + issuer + "/.well-known/oauth-authorization-server redirects to " + otherURL +
		"/.well-known/oauth-authorization-server (another host or scheme)"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v\nwant %s", err, want)
	}
	if n := len(other.requested()); n != 0 {
		t.Fatalf("the other host was asked %d times", n)
	}
	if client.CheckRedirect != nil {
		t.Fatal("the caller's client was changed")
	}

	// a loop on the same host stops
	d.handle("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path, http.StatusFound)
	})
	_, err = discoverIssuer(context.Background(), client, issuer)
	if err == nil || !strings.Contains(err.Error(), "(too many redirects)") {
		t.Fatalf("redirect loop: %v", err)
	}
}

// Over HTTPS with the caller's client (and its trust); a server it does not
// trust is an error, not a reason to try the OpenID URL.
func TestDiscoverHTTPS(t *testing.T) {
	d := newDiscoveryTestServer(t, true)
	issuer := d.srv.URL
	d.serveDoc("/.well-known/oauth-authorization-server", discoveryTestDoc(issuer, issuer))
	doc, err := discoverIssuer(context.Background(), d.srv.Client(), issuer)
	if err != nil || !strings.HasPrefix(doc.TokenEndpoint, "https://127.0.0.1:") {
		t.Fatalf("%v %+v", err, doc)
	}
	// an untrusted certificate is an error, not a fallback
	_, err = discoverIssuer(context.Background(), discoveryTestClient, issuer)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted server: %v", err)
	}
	if n := len(d.requested()); n != 1 {
		t.Fatalf("%d documents served, want 1", n)
	}
}

// A cancelled context stops discovery.
func TestDiscoverContext(t *testing.T) {
	arrived := make(chan struct{})
	d := newDiscoveryTestServer(t, false)
	d.handle("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done() // answered never: the client gives up
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := discoverIssuer(ctx, discoveryTestClient, d.srv.URL)
		done <- err
	}()
	<-arrived
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("error %v", err)
	}
}

// The lifetime of a discovered document, from its Cache-Control.
func TestDiscoveryLifetime(t *testing.T) {
	for cc, want := range map[string]time.Duration{
		"":                          24 * time.Hour,
		"max-age=600":               10 * time.Minute,
		"public, max-age=3600":      time.Hour,
		"max-age=0":                 time.Minute,
		"no-cache":                  time.Minute,
		"no-store, max-age=600":     time.Minute,
		"max-age=31536000":          7 * 24 * time.Hour,
		"max-age=banana":            24 * time.Hour,
		`private, max-age="120"`:    2 * time.Minute,
		"s-maxage=60, max-age=7200": 2 * time.Hour,
	} {
		h := http.Header{}
		if cc != "" {
			h.Set("Cache-Control", cc)
		}
		if got := discoveryLifetime(h); got != want {
			t.Errorf("Cache-Control %q: lifetime %v, want %v", cc, got, want)
		}
	}
}
