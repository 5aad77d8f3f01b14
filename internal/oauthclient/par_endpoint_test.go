package oauthclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// Endpoint.PushAuthorization and the metadata of PAR and RFC 9207, against
// real HTTP servers on 127.0.0.1.

// An issuer whose metadata names a PAR endpoint and promises iss; the
// push authenticates the client as the token requests do (Basic here),
// keeps client_id in the form (an authorization request parameter), and
// sends the User-Agent; the provider's refusal is a *PARError with its
// code and no secret.
func TestEndpointPushAuthorization(t *testing.T) {
	var mu sync.Mutex
	var forms []url.Values
	var headers []http.Header
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/oauth-authorization-server":
			w.Write([]byte(`{"issuer":"` + srv.URL + `","token_endpoint":"` + srv.URL + `/token","authorization_endpoint":"` + srv.URL + `/authorize",` +
				`"pushed_authorization_request_endpoint":"` + srv.URL + `/par","authorization_response_iss_parameter_supported":true}`))
		case "/par":
			r.ParseForm()
			mu.Lock()
			forms, headers = append(forms, r.PostForm), append(headers, r.Header.Clone())
			n := len(forms)
			mu.Unlock()
			if n > 1 {
				w.WriteHeader(http.StatusUnauthorized)
				w.Write([]byte(`{"error":"invalid_client","error_description":"client authentication failed for ep-s3cr3t-value"}`))
				return
			}
			w.WriteHeader(http.StatusCreated)
			w.Write([]byte(`{"request_uri":"urn:ietf:params:oauth:request_uri:x1","expires_in":90}`))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	cfg := epConfig("")
	cfg.Issuer = srv.URL
	cfg.Client.Auth = "basic"
	ep := NewEndpoint(*cfg)
	t.Cleanup(ep.Close)
	ctx := context.Background()

	target, err := ep.DiscoveredPAREndpoint(ctx)
	if err != nil || target != srv.URL+"/par" {
		t.Fatalf("discovered PAR endpoint %q, %v", target, err)
	}
	if iss, err := ep.IssuerInResponses(ctx); err != nil || !iss {
		t.Errorf("IssuerInResponses = %v, %v; want true", iss, err)
	}
	params := url.Values{"client_id": {epClientID}, "response_type": {"code"}, "state": {"s1"}, "redirect_uri": {"https://p.example/cb"}}
	res, err := ep.PushAuthorization(ctx, target, params)
	if err != nil || res.RequestURI != "urn:ietf:params:oauth:request_uri:x1" {
		t.Fatalf("push: %+v, %v", res, err)
	}
	mu.Lock()
	f, h := forms[0], headers[0]
	mu.Unlock()
	if f.Get("client_id") != epClientID || f.Get("state") != "s1" || f.Get("client_secret") != "" {
		t.Errorf("pushed form %v: want client_id and the parameters, no secret", f)
	}
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte(epClientID+":"+epSecret)); h.Get("Authorization") != want || h.Get("User-Agent") != epUserAgent {
		t.Errorf("headers %v", h)
	}

	_, err = ep.PushAuthorization(ctx, target, params)
	var pe *PARError
	if !errors.As(err, &pe) || pe.Code != "invalid_client" || pe.Status != 401 || strings.Contains(err.Error(), epSecret) {
		t.Errorf("refused push: %v", err)
	}
}

// The metadata's PAR endpoints must be https (http only on a loopback
// host), as its other endpoints.
func TestDiscoveryChecksPAREndpoint(t *testing.T) {
	d := &Metadata{Issuer: "https://as.example.com", TokenEndpoint: "https://as.example.com/token", source: "doc",
		PushedAuthorizationRequestEndpoint: "http://as.example.com/par"}
	if err := d.check("https://as.example.com"); err == nil || !strings.Contains(err.Error(), "pushed_authorization_request_endpoint") {
		t.Errorf("check: %v", err)
	}
	d.PushedAuthorizationRequestEndpoint = "https://as.example.com/par"
	d.MTLSEndpointAliases.PushedAuthorizationRequestEndpoint = "http://mtls.as.example.com/par"
	if err := d.check("https://as.example.com"); err == nil || !strings.Contains(err.Error(), "mtls_endpoint_aliases.pushed_authorization_request_endpoint") {
		t.Errorf("check: %v", err)
	}
}

// With private_key_jwt, the push carries a fresh client assertion
// addressed to the token endpoint (which RFC 9126 §2 has the server accept
// at the PAR endpoint, and which the provider already takes from this
// client), or to client_assertion_audience when set.
func TestEndpointPushAuthorizationAssertionAudience(t *testing.T) {
	var mu sync.Mutex
	var forms []url.Values
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		mu.Lock()
		forms = append(forms, r.PostForm)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"request_uri":"urn:x","expires_in":60}`))
	}))
	t.Cleanup(srv.Close)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := NewAssertionSigner(key, jose.ES256, "k1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ audience, want string }{{"", srv.URL + "/token"}, {"https://as.example.com/", "https://as.example.com/"}} {
		cfg := epConfig(srv.URL + "/token")
		cfg.Client = Client{ID: epClientID, Auth: "private_key_jwt", Signer: signer, AssertionAudience: tc.audience}
		ep := NewEndpoint(*cfg)
		if _, err := ep.PushAuthorization(context.Background(), srv.URL+"/par", url.Values{"client_id": {epClientID}}); err != nil {
			t.Fatal(err)
		}
		ep.Close()
		mu.Lock()
		f := forms[len(forms)-1]
		mu.Unlock()
		parts := strings.Split(f.Get("client_assertion"), ".")
		if len(parts) != 3 || f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || f.Get("client_id") != epClientID {
			t.Fatalf("pushed %v", f)
		}
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var claims struct {
			Aud any `json:"aud"`
		}
		json.Unmarshal(payload, &claims)
		if claims.Aud != tc.want {
			t.Errorf("assertion_audience %q: aud %v, want %s", tc.audience, claims.Aud, tc.want)
		}
	}
}
