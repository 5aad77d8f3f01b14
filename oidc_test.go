package oauthbearer

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A real authorization server for the tests: npm's oidc-provider, run by
// node from testdata/oidc (server.mjs, with login and consent pages of its
// own). scripts/test-deps installs its packages (npm ci) for make test.

// oidcConfig configures the server; see testdata/oidc/server.mjs. Port is
// chosen by startOIDCProvider.
type oidcConfig struct {
	Clients []oidcClient `json:"clients,omitempty"`
	// Users may sign in, with these passwords; nil: any login with any
	// password.
	Users map[string]string `json:"users,omitempty"`
	// IssueRefreshToken: a refresh token whenever the client may use the
	// refresh_token grant (else oidc-provider's rule: offline_access with
	// prompt consent).
	IssueRefreshToken bool `json:"issueRefreshToken,omitempty"`
	// Features are merged over revocation and introspection on (for
	// example dPoP, pushedAuthorizationRequests).
	Features map[string]any `json:"features,omitempty"`
	// Configuration is merged into oidc-provider's configuration (ttl,
	// pkce, scopes...).
	Configuration map[string]any `json:"configuration,omitempty"`
	// ResourceServers are the resource indicators tokens are issued for,
	// the first in sorted order by default (accessTokenFormat "jwt": RFC
	// 9068 JWTs).
	ResourceServers map[string]oidcResourceServer `json:"resourceServers,omitempty"`
	// AuthResponseIss: "omit" drops iss from authorization responses,
	// another value replaces the issuer in them (a mix-up).
	AuthResponseIss string `json:"authResponseIss,omitempty"`
}

// oidcResourceServer is what oidc-provider issues tokens for a resource
// indicator with.
type oidcResourceServer struct {
	Scope             string `json:"scope,omitempty"`
	AccessTokenFormat string `json:"accessTokenFormat,omitempty"` // opaque (default) or jwt
	Audience          string `json:"audience,omitempty"`
	AccessTokenTTL    int    `json:"accessTokenTTL,omitempty"` // seconds
}

// oidcClient is a client's metadata, as oidc-provider takes it; Extra is
// merged in (for example dpop_bound_access_tokens).
type oidcClient struct {
	ClientID                string         `json:"client_id"`
	ClientSecret            string         `json:"client_secret,omitempty"`
	RedirectURIs            []string       `json:"redirect_uris,omitempty"`
	GrantTypes              []string       `json:"grant_types,omitempty"`
	ResponseTypes           []string       `json:"response_types,omitempty"`
	TokenEndpointAuthMethod string         `json:"token_endpoint_auth_method,omitempty"`
	ClientName              string         `json:"client_name,omitempty"`
	Extra                   map[string]any `json:"-"`
}

func (c oidcClient) MarshalJSON() ([]byte, error) {
	type plain oidcClient
	b, err := json.Marshal(plain(c))
	if err != nil || len(c.Extra) == 0 {
		return b, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range c.Extra {
		m[k] = v
	}
	return json.Marshal(m)
}

// oidcProvider is a running server.
type oidcProvider struct {
	URL string // the issuer: http://127.0.0.1:port
	cmd *exec.Cmd
	out *lockedBuffer
}

func (p *oidcProvider) authorizeURL() string  { return p.URL + "/auth" }
func (p *oidcProvider) tokenURL() string      { return p.URL + "/token" }
func (p *oidcProvider) revokeURL() string     { return p.URL + "/token/revocation" }
func (p *oidcProvider) userinfoURL() string   { return p.URL + "/me" }
func (p *oidcProvider) hostport() string      { return strings.TrimPrefix(p.URL, "http://") }
func (p *oidcProvider) output() string        { return p.out.String() }
func (p *oidcProvider) introspectURL() string { return p.URL + "/token/introspection" }
func (p *oidcProvider) parURL() string        { return p.URL + "/request" }
func (p *oidcProvider) jwksURL() string       { return p.URL + "/jwks" }

// oidcEvents is what GET /_test/events answers: how often each provider
// event was emitted, and who signed in and consented, in order.
type oidcEvents struct {
	Counts   map[string]int `json:"counts"`
	Logins   []string       `json:"logins"`
	Consents []string       `json:"consents"`
}

func (p *oidcProvider) events(t testing.TB) oidcEvents {
	t.Helper()
	resp, err := testClient.Get(p.URL + "/_test/events")
	if err != nil {
		t.Fatalf("oidc provider events: %v", err)
	}
	defer resp.Body.Close()
	var ev oidcEvents
	if err := json.NewDecoder(resp.Body).Decode(&ev); err != nil {
		t.Fatalf("oidc provider events: %v", err)
	}
	return ev
}

// startOIDCProvider starts the server on a free loopback port, waits until
// it answers its discovery document, and stops it when the test ends. It
// fails the test, saying what to install, when node or the server's
// packages are missing.
func startOIDCProvider(t testing.TB, cfg oidcConfig) *oidcProvider {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("the authorization server of the browser tests needs node: apt-get install nodejs npm, then npm ci --prefix testdata/oidc (make test does both)")
	}
	dir, _ := filepath.Abs(filepath.Join("testdata", "oidc"))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider")); err != nil {
		t.Fatal("the authorization server of the browser tests needs its node packages: npm ci --prefix testdata/oidc (make test does it)")
	}
	addr := freeAddr(t)
	_, port, _ := strings.Cut(addr, ":")
	conf := map[string]any{}
	b, _ := json.Marshal(cfg)
	json.Unmarshal(b, &conf)
	conf["port"] = json.Number(port)
	b, _ = json.Marshal(conf)

	p := &oidcProvider{URL: "http://" + addr, out: &lockedBuffer{}}
	p.cmd = exec.Command(node, filepath.Join(dir, "server.mjs"))
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), "OIDC_CONFIG="+string(b), "NODE_ENV=test")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting the oidc provider: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("oidc provider output:\n%s", p.output())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the oidc provider exited (%v):\n%s", err, p.output())
		default:
		}
		resp, err := client.Get(p.URL + "/.well-known/openid-configuration")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the oidc provider did not answer within 60 s (last: %v):\n%s", err, p.output())
		}
		time.Sleep(50 * time.Millisecond) // polling a child process that is starting
	}
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
