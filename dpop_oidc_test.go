package oauthbearer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// DPoP, PAR and the issuer check against the real authorization server of
// the tests (npm's oidc-provider, testdata/oidc), with only
// internal/oauthclient on the client side (no Caddy): proof that the
// server does what the integration through Caddy will need, and that the
// package's proofs, nonce handling, pushes and checks work with it.

// dpopNonceSecret is oidc-provider's features.dPoP.nonceSecret (32 bytes).
const dpopNonceSecret = "6f61757468206265617265722064706f70206e6f6e6365207365637265742121"

// dpopOIDCConfig is an authorization server with DPoP (nonces required),
// client credentials, PAR and introspection, and three clients: svc
// (client credentials, DPoP-bound tokens only), web (authorization code)
// and rs (the resource server, for introspection).
func dpopOIDCConfig(redirectURI string) oidcConfig {
	noResponses := map[string]any{"response_types": []string{}}
	return oidcConfig{
		Clients: []oidcClient{
			{ClientID: "svc", ClientSecret: "svc-secret", GrantTypes: []string{"client_credentials"}, TokenEndpointAuthMethod: "client_secret_basic",
				Extra: map[string]any{"response_types": []string{}, "dpop_bound_access_tokens": true}},
			{ClientID: "web", ClientSecret: "web-secret", RedirectURIs: []string{redirectURI}, GrantTypes: []string{"authorization_code", "refresh_token"},
				ResponseTypes: []string{"code"}, TokenEndpointAuthMethod: "client_secret_basic"},
			{ClientID: "rs", ClientSecret: "rs-secret", GrantTypes: []string{}, TokenEndpointAuthMethod: "client_secret_basic", Extra: noResponses},
		},
		IssueRefreshToken: true,
		Features: map[string]any{
			"dPoP":                        map[string]any{"enabled": true, "nonceSecret": dpopNonceSecret, "requireNonce": true},
			"clientCredentials":           map[string]any{"enabled": true},
			"pushedAuthorizationRequests": map[string]any{"enabled": true},
		},
		Configuration: map[string]any{
			"enabledJWA": map[string]any{"dPoPSigningAlgValues": []string{"ES256", "EdDSA", "RS256"}},
		},
	}
}

const dpopTestRedirect = "http://127.0.0.1:9/callback" // never contacted

// basicClientAuth is client_secret_basic as an oauthclient.ClientAuth.
func basicClientAuth(id, secret string) oauthclient.ClientAuth {
	return func(_ string, _ url.Values, h http.Header) error {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret))))
		return nil
	}
}

// dpopTokenRequest posts form to the token endpoint with client
// authentication and a DPoP proof, and answers a nonce challenge once, as
// the integration will: the statuses of the answers, and the last one's
// JSON.
func dpopTokenRequest(t testing.TB, key *oauthclient.DPoPKey, nonces *oauthclient.Nonces, tokenURL string, auth oauthclient.ClientAuth, form url.Values) ([]int, map[string]any) {
	t.Helper()
	htu, err := oauthclient.NormalizeHTU(tokenURL)
	if err != nil {
		t.Fatal(err)
	}
	origin, _ := oauthclient.Origin(tokenURL)
	var statuses []int
	for attempt := 0; ; attempt++ {
		proof, err := key.Proof(oauthclient.ProofParams{Method: "POST", URL: htu, Nonce: nonces.Get(origin)})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("POST", tokenURL, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("DPoP", proof)
		if err := auth(tokenURL, form, req.Header); err != nil {
			t.Fatal(err)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		nonces.Observe(origin, resp.Header)
		if _, ok := oauthclient.TokenNonceChallenge(resp.StatusCode, resp.Header, body); ok && attempt == 0 {
			continue
		}
		var out map[string]any
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("token endpoint: HTTP %d: %s", resp.StatusCode, body)
		}
		return statuses, out
	}
}

// dpopResourceRequest sends method to target with the token and a proof
// whose htu is base with target's path, keeps every DPoP-Nonce answered,
// and replays once on a nonce challenge: the statuses of the answers.
func dpopResourceRequest(t testing.TB, key *oauthclient.DPoPKey, nonces *oauthclient.Nonces, base, method, target, token string) []int {
	t.Helper()
	u, _ := url.Parse(target)
	htu, err := oauthclient.NormalizeHTU(strings.TrimSuffix(base, "/") + u.EscapedPath())
	if err != nil {
		t.Fatal(err)
	}
	origin, _ := oauthclient.Origin(base)
	ath := oauthclient.AccessTokenHash(token)
	var statuses []int
	for attempt := 0; ; attempt++ {
		proof, err := key.Proof(oauthclient.ProofParams{Method: method, URL: htu, AccessTokenHash: ath, Nonce: nonces.Get(origin)})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(method, target, nil)
		req.Header.Set("Authorization", "DPoP "+token)
		req.Header.Set("DPoP", proof)
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		nonces.Observe(origin, resp.Header)
		if _, ok := oauthclient.ResourceNonceChallenge(resp.StatusCode, resp.Header); ok && attempt == 0 {
			continue
		}
		return statuses
	}
}

func intsEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Client credentials with DPoP, for each key type: the token endpoint's
// nonce challenge answered once, a DPoP token, which the resource server
// accepts after its own nonce challenge (cnf.jkt through introspection),
// then steady traffic through two nonce rotations without a retry. The
// token presented with another key is refused.
func TestDPoPClientCredentialsOIDCProvider(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		t.Run(alg, func(t *testing.T) {
			key := dpopTestKey(t, alg)
			var nonces oauthclient.Nonces
			statuses, tok := dpopTokenRequest(t, key, &nonces, op.tokenURL(), basicClientAuth("svc", "svc-secret"), url.Values{"grant_type": {"client_credentials"}})
			if !intsEqual(statuses, []int{400, 200}) {
				t.Fatalf("token requests answered %v, want a nonce challenge then the token; last answer %v", statuses, tok)
			}
			access, _ := tok["access_token"].(string)
			if tok["token_type"] != "DPoP" || access == "" {
				t.Fatalf("token answer %v, want token_type DPoP", tok)
			}
			// A second token request carries the kept nonce: no challenge.
			if statuses, tok := dpopTokenRequest(t, key, &nonces, op.tokenURL(), basicClientAuth("svc", "svc-secret"), url.Values{"grant_type": {"client_credentials"}}); !intsEqual(statuses, []int{200}) {
				t.Errorf("second token request answered %v (%v), want 200 at once with the kept nonce", statuses, tok)
			}

			rs := newDPoPResourceServer(t, dpopRSConfig{RequireNonce: true, RotateEvery: 4,
				Introspect: &rsIntrospection{URL: op.introspectURL(), ClientID: "rs", ClientSecret: "rs-secret"}})
			if got := dpopResourceRequest(t, key, &nonces, rs.URL, "GET", rs.URL+"/v1/things?page=2", access); !intsEqual(got, []int{401, 200}) {
				_, refused := rs.counts()
				t.Fatalf("first resource request answered %v (refused %v), want a nonce challenge then 200", got, refused)
			}
			for i := range 9 {
				method := []string{"GET", "POST", "DELETE"}[i%3]
				if got := dpopResourceRequest(t, key, &nonces, rs.URL, method, rs.URL+"/v1/things/"+method, access); !intsEqual(got, []int{200}) {
					_, refused := rs.counts()
					t.Fatalf("request %d answered %v (refused %v), want 200 at once: the rotated nonce comes with the answers", i+2, got, refused)
				}
			}
			accepted, refused := rs.counts()
			if accepted != 10 || len(refused) != 1 || refused[rsNonce] != 1 {
				t.Errorf("resource server accepted %d, refused %v; want 10, and 1 nonce challenge", accepted, refused)
			}
			proofs := rs.acceptedProofs()
			if proofs[len(proofs)-1]["nonce"] == proofs[0]["nonce"] {
				t.Errorf("the nonce did not rotate: %v", proofs[0]["nonce"])
			}

			// The token is bound to key: with another key's proof, the
			// resource server refuses it (cnf.jkt from introspection).
			thief, _ := oauthclient.GenerateDPoPKey()
			if got := dpopResourceRequest(t, thief, &nonces, rs.URL, "GET", rs.URL+"/v1/things", access); !intsEqual(got, []int{401}) {
				t.Errorf("the token with another key's proof answered %v, want 401", got)
			}
			if _, refused := rs.counts(); refused[rsJKT] != 1 {
				t.Errorf("refused %v, want one jkt_mismatch", refused)
			}
		})
	}
}

// dpopRSAKey is made once: RSA key generation is slow under -race.
var dpopRSAKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// dpopTestKey is a DPoP key (loaded from PEM, as dpop_key will) of the algorithm's type.
func dpopTestKey(t testing.TB, alg string) *oauthclient.DPoPKey {
	t.Helper()
	var key any
	switch alg {
	case "ES256":
		k, err := oauthclient.GenerateDPoPKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	case "EdDSA":
		_, key, _ = ed25519.GenerateKey(rand.Reader)
	case "RS256":
		key = dpopRSAKey()
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := oauthclient.LoadDPoPKey(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	if err != nil {
		t.Fatal(err)
	}
	if k.Algorithm() != alg {
		t.Fatalf("key signs %s, want %s", k.Algorithm(), alg)
	}
	return k
}

// A JWT access token (RFC 9068) bound to the key: cnf.jkt in the token,
// checked by the resource server with the authorization server's keys. The
// resource server sees its requests as https://api.example.com (it listens
// on 127.0.0.1): htu is that base URL with the request's path.
func TestDPoPJWTAccessTokenOIDCProvider(t *testing.T) {
	const api = "https://api.example.com/"
	cfg := dpopOIDCConfig(dpopTestRedirect)
	cfg.ResourceServers = map[string]oidcResourceServer{api: {Scope: "orders:read", AccessTokenFormat: "jwt"}}
	op := startOIDCProvider(t, cfg)
	key, _ := oauthclient.GenerateDPoPKey()
	var nonces oauthclient.Nonces
	_, tok := dpopTokenRequest(t, key, &nonces, op.tokenURL(), basicClientAuth("svc", "svc-secret"), url.Values{"grant_type": {"client_credentials"}, "scope": {"orders:read"}})
	access, _ := tok["access_token"].(string)
	if tok["token_type"] != "DPoP" || strings.Count(access, ".") != 2 {
		t.Fatalf("token answer %v, want a DPoP-bound JWT", tok)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(access, ".")[1])
	var claims struct {
		Cnf struct {
			JKT string `json:"jkt"`
		} `json:"cnf"`
		Aud any `json:"aud"`
	}
	json.Unmarshal(payload, &claims)
	if claims.Cnf.JKT != key.Thumbprint() {
		t.Fatalf("the JWT's cnf.jkt %q, want the key's thumbprint %s (claims %s)", claims.Cnf.JKT, key.Thumbprint(), payload)
	}

	rs := newDPoPResourceServer(t, dpopRSConfig{Base: "https://api.example.com", RequireNonce: true,
		JWT: &rsJWTCheck{JWKSURL: op.jwksURL(), Issuer: op.URL, Audience: api}})
	if got := dpopResourceRequest(t, key, &nonces, "https://api.example.com", "GET", rs.URL+"/v1/orders", access); !intsEqual(got, []int{401, 200}) {
		_, refused := rs.counts()
		t.Fatalf("answered %v (refused %v), want a nonce challenge then 200", got, refused)
	}
	// The listener's address as htu is not the resource server's URL.
	if got := dpopResourceRequest(t, key, &nonces, rs.URL, "GET", rs.URL+"/v1/orders", access); !intsEqual(got, []int{401}) {
		t.Errorf("htu with the listener's address answered %v, want 401", got)
	}
	if accepted, refused := rs.counts(); accepted != 1 || refused[rsHTU] != 1 {
		t.Errorf("accepted %d, refused %v; want 1, and one htu refusal", accepted, refused)
	}
}

// A pushed authorization request: accepted with client_secret_basic, its
// request_uri (alone with client_id) starts the login at the authorization
// endpoint; a wrong secret and an unregistered redirect_uri are refused with
// their OAuth error codes.
func TestPAROIDCProvider(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	meta := oidcMetadata(t, op)
	if meta["pushed_authorization_request_endpoint"] != op.parURL() {
		t.Fatalf("metadata names PAR endpoint %v, want %s", meta["pushed_authorization_request_endpoint"], op.parURL())
	}
	params := url.Values{
		"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {dpopTestRedirect},
		"scope": {"openid"}, "state": {"st-1"},
		"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"},
	}
	res, err := oauthclient.PushAuthorizationRequest(context.Background(), testClient, oauthclient.PARRequest{
		Endpoint: op.parURL(), Params: params, ClientAuth: basicClientAuth("web", "web-secret"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.RequestURI, "urn:ietf:params:oauth:request_uri:") || res.ExpiresIn <= 0 {
		t.Fatalf("PAR answer %+v", res)
	}
	redirect, err := oauthclient.AuthorizationRedirectURL(op.authorizeURL(), "web", res.RequestURI)
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := url.Parse(redirect); len(u.Query()) != 2 {
		t.Errorf("the browser redirect %s carries more than client_id and request_uri", redirect)
	}
	noFollow := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(redirect)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode/100 != 3 || !strings.HasPrefix(loc, "/interaction/") {
		t.Errorf("the authorization endpoint answered %d, Location %q; want a redirect to the login interaction", resp.StatusCode, loc)
	}

	for _, tc := range []struct {
		name   string
		auth   oauthclient.ClientAuth
		modify func(url.Values)
		code   string
		status int
	}{
		{"wrong secret", basicClientAuth("web", "wrong"), nil, "invalid_client", 401},
		{"unregistered redirect_uri", basicClientAuth("web", "web-secret"), func(v url.Values) { v.Set("redirect_uri", "https://evil.example/cb") }, "invalid_request", 400},
	} {
		p := url.Values{}
		for k, v := range params {
			p[k] = v
		}
		if tc.modify != nil {
			tc.modify(p)
		}
		_, err := oauthclient.PushAuthorizationRequest(context.Background(), testClient, oauthclient.PARRequest{Endpoint: op.parURL(), Params: p, ClientAuth: tc.auth})
		var pe *oauthclient.PARError
		if !errors.As(err, &pe) || pe.Code != tc.code || pe.Status != tc.status {
			t.Errorf("%s: %v, want %s (HTTP %d)", tc.name, err, tc.code, tc.status)
		} else if strings.Contains(err.Error(), "web-secret") || strings.Contains(err.Error(), "wrong") {
			t.Errorf("%s: the error holds the secret: %v", tc.name, err)
		}
	}
}

// The whole consent flow the integration will run, DPoP-bound: a PAR push
// with a proof (the server's nonce challenge answered once; the code is
// bound to the key), the login and consent pages, the callback with iss,
// checked (RFC 9207), the code exchange with a proof of the same key, and
// the token accepted by the resource server.
func TestPARWithDPoPCodeFlowOIDCProvider(t *testing.T) {
	op := startOIDCProvider(t, dpopOIDCConfig(dpopTestRedirect))
	meta := oidcMetadata(t, op)
	key, _ := oauthclient.GenerateDPoPKey()
	var nonces oauthclient.Nonces
	verifier := "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	params := url.Values{
		"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {dpopTestRedirect},
		"scope": {"openid"}, "state": {"st-dpop"}, "prompt": {"consent"},
		"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"},
	}
	res, err := oauthclient.PushAuthorizationRequest(context.Background(), testClient, oauthclient.PARRequest{
		Endpoint: op.parURL(), Params: params, ClientAuth: basicClientAuth("web", "web-secret"), DPoP: key, Nonces: &nonces,
	})
	if err != nil {
		t.Fatal(err)
	}
	asOrigin, _ := oauthclient.Origin(op.URL)
	if nonces.Get(asOrigin) == "" {
		t.Errorf("no nonce kept from the PAR endpoint's challenge")
	}
	redirect, _ := oauthclient.AuthorizationRedirectURL(op.authorizeURL(), "web", res.RequestURI)
	cb := oidcAuthorize(t, redirect, dpopTestRedirect, false)
	if cb.Get("state") != "st-dpop" || cb.Get("code") == "" {
		t.Fatalf("callback %v", cb)
	}
	if err := oauthclient.CheckAuthorizationResponseIssuer(op.URL, meta["authorization_response_iss_parameter_supported"] == true, cb); err != nil {
		t.Fatalf("issuer check: %v (callback %v)", err, cb)
	}

	statuses, tok := dpopTokenRequest(t, key, &nonces, op.tokenURL(), basicClientAuth("web", "web-secret"), url.Values{
		"grant_type": {"authorization_code"}, "code": {cb.Get("code")}, "redirect_uri": {dpopTestRedirect}, "code_verifier": {verifier},
	})
	access, _ := tok["access_token"].(string)
	if tok["token_type"] != "DPoP" || access == "" || tok["refresh_token"] == nil {
		t.Fatalf("code exchange answered %v: %v, want a DPoP token and a refresh token", statuses, tok)
	}
	if !intsEqual(statuses, []int{200}) {
		t.Errorf("code exchange answered %v, want 200 at once (the nonce is kept from the PAR endpoint)", statuses)
	}
	rs := newDPoPResourceServer(t, dpopRSConfig{RequireNonce: true, Introspect: &rsIntrospection{URL: op.introspectURL(), ClientID: "rs", ClientSecret: "rs-secret"}})
	if got := dpopResourceRequest(t, key, &nonces, rs.URL, "GET", rs.URL+"/me", access); !intsEqual(got, []int{401, 200}) {
		_, refused := rs.counts()
		t.Errorf("resource request answered %v (refused %v), want a nonce challenge then 200", got, refused)
	}
	// The refresh carries a proof of the same key, and stays bound.
	_, refreshed := dpopTokenRequest(t, key, &nonces, op.tokenURL(), basicClientAuth("web", "web-secret"), url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {tok["refresh_token"].(string)},
	})
	if refreshed["token_type"] != "DPoP" {
		t.Errorf("refresh answered %v, want a DPoP token", refreshed)
	}
}

// The issuer in the authorization response (RFC 9207): oidc-provider always
// sends it and says so in its metadata; the check accepts it, refuses
// another issuer's (a mix-up) and a missing one, on success and error
// responses alike.
func TestIssuerInAuthorizationResponseOIDCProvider(t *testing.T) {
	for _, tc := range []struct {
		name    string
		iss     string // authResponseIss
		deny    bool
		wantIss string // "" expected absent; "issuer": the provider's own
		want    error
	}{
		{"sent", "", false, "issuer", nil},
		{"sent on an error response", "", true, "issuer", nil},
		{"another issuer", "https://attacker.example", false, "https://attacker.example", oauthclient.ErrIssuerMismatch},
		{"another issuer on an error response", "https://attacker.example", true, "https://attacker.example", oauthclient.ErrIssuerMismatch},
		{"omitted", "omit", false, "", oauthclient.ErrIssuerMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := dpopOIDCConfig(dpopTestRedirect)
			cfg.AuthResponseIss = tc.iss
			op := startOIDCProvider(t, cfg)
			meta := oidcMetadata(t, op)
			if meta["authorization_response_iss_parameter_supported"] != true {
				t.Fatalf("metadata: authorization_response_iss_parameter_supported = %v", meta["authorization_response_iss_parameter_supported"])
			}
			authURL := op.authorizeURL() + "?" + url.Values{
				"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {dpopTestRedirect}, "scope": {"openid"}, "state": {"st"},
				"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"}, "prompt": {"consent"},
			}.Encode()
			cb := oidcAuthorize(t, authURL, dpopTestRedirect, tc.deny)
			if tc.deny != (cb.Get("error") == "access_denied") || cb.Get("state") != "st" {
				t.Fatalf("callback %v", cb)
			}
			wantIss := tc.wantIss
			if wantIss == "issuer" {
				wantIss = op.URL
			}
			if got, present := cb["iss"]; (wantIss == "") == present || (present && got[0] != wantIss) {
				t.Fatalf("callback iss %v, want %q", got, wantIss)
			}
			err := oauthclient.CheckAuthorizationResponseIssuer(op.URL, true, cb)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("issuer check: %v, want %v", err, tc.want)
			}
		})
	}
}

// oidcMetadata is the provider's discovery document.
func oidcMetadata(t testing.TB, op *oidcProvider) map[string]any {
	t.Helper()
	resp, err := testClient.Get(op.URL + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// oidcAuthorize drives the provider's login and consent pages over HTTP,
// without a browser, from authURL until the provider redirects to
// redirectURI, and returns that redirect's query. deny cancels at the
// consent page.
func oidcAuthorize(t testing.TB, authURL, redirectURI string, deny bool) url.Values {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), redirectURI) || len(via) > 10 {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := c.Get(authURL)
	for step := 0; ; step++ {
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && strings.HasPrefix(loc, redirectURI) {
			u, _ := url.Parse(loc)
			return u.Query()
		}
		if resp.StatusCode != 200 || step > 4 {
			t.Fatalf("authorization step %d: %s answered %d: %s", step, resp.Request.URL, resp.StatusCode, body)
		}
		page := resp.Request.URL
		action := ""
		switch {
		case strings.Contains(string(body), page.Path+`/login"`):
			action = "/login"
		case strings.Contains(string(body), `id="allow"`) && deny:
			action = "/abort"
		case strings.Contains(string(body), `id="allow"`):
			action = "/confirm"
		default:
			t.Fatalf("authorization step %d: an unexpected page at %s: %s", step, page, body)
		}
		next := page.ResolveReference(&url.URL{Path: page.Path + action})
		resp, err = c.PostForm(next.String(), url.Values{"login": {"alice"}, "password": {"pw"}})
	}
}

// Many requests at once with one key and one nonce store, while the
// resource server rotates its nonce (keeping the previous one valid): the
// only refusals are nonce challenges, most requests pass at once (the new
// nonce comes with the answers), and a request refused twice is one that
// saw two rotations between its challenge and its replay, which only
// happens because rotation here is far more frequent than any server's.
// Run with -race: the key and the store are shared.
func TestDPoPNoncesUnderConcurrentLoad(t *testing.T) {
	key, _ := oauthclient.GenerateDPoPKey()
	const token = "tok-load"
	const workers, each, rotateEvery = 8, 40, 20
	rs := newDPoPResourceServer(t, dpopRSConfig{RequireNonce: true, RotateEvery: rotateEvery, Tokens: map[string]string{token: key.Thumbprint()}})
	var nonces oauthclient.Nonces
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{} // the answers' statuses → requests
	for w := range workers {
		wg.Go(func() {
			for range each {
				got := dpopResourceRequest(t, key, &nonces, rs.URL, "GET", rs.URL+"/load/"+strconv.Itoa(w), token)
				mu.Lock()
				outcomes[fmt.Sprint(got)]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	accepted, refused := rs.counts()
	rotations := accepted / rotateEvery
	t.Logf("%d requests, %d accepted, %d rotations; outcomes %v", workers*each, accepted, rotations, outcomes)
	if len(refused) != 1 && len(refused) != 0 || refused[rsNonce] != outcomes["[401 200]"]+2*outcomes["[401 401]"] {
		t.Errorf("refused %v, outcomes %v: want nonce challenges only, one per replay", refused, outcomes)
	}
	if accepted != outcomes["[200]"]+outcomes["[401 200]"] || accepted+outcomes["[401 401]"] != workers*each {
		t.Errorf("accepted %d, outcomes %v: every request ends accepted or twice challenged", accepted, outcomes)
	}
	// Without the rotated nonce taken from the successes, every second
	// rotation would challenge every worker: about 4 per rotation here
	// (measured: 49 to 55 replays of 320; with it, 8 to 15).
	if replays := workers*each - outcomes["[200]"]; replays > 2*rotations {
		t.Errorf("%d of %d requests needed a replay with %d rotations: the nonce is not taken from the answers", replays, workers*each, rotations)
	}
}
