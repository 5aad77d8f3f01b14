package oauthbearer

// A client assertion is single-use: providers refuse a jti they have seen
// (RFC 7523 §3, item 7). These tests make many token requests through the
// real paths, against a server that refuses a repeated jti.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/testkeys"
)

// 100 tokens through a real Caddy with private_key_jwt: the cached token
// expires on a fake clock before each request, so each request makes a
// token request with a fresh assertion; the server accepts all 100 and
// their jti all differ.
func TestClientAuthJTINeverRepeatsThroughCaddy(t *testing.T) {
	clock := useFakeClock(t)
	key := testkeys.Keys().P256
	s := newJWTAS(t)
	s.register("jti-client", key.Public(), "")
	keyPath := testkeys.WriteFile(t, "client.key", testkeys.PKCS8PEM(t, key))
	up := newUpstream(t)
	c := startCaddy(t, e2eSite("oauth_bearer", fmt.Sprintf(`		token_url %s
		client_id jti-client
		client_auth private_key_jwt
		private_key %s`, s.tokenURL(), keyPath), up))
	const n = 100
	for i := 1; i <= n; i++ {
		clock.add(2 * time.Hour) // the last token (3600 s) has expired
		wantInjected(t, c, up, "/", fmt.Sprintf("at-jti-client-%d", i))
	}
	wantDistinctJTI(t, s, n)
}

// 100 JWT bearer grants (a Google service account) from one endpoint, 4 at
// a time: the signer is shared by concurrent token requests and still
// never repeats a jti.
func TestClientAuthJTINeverRepeatsConcurrentJWTBearer(t *testing.T) {
	key := testkeys.Keys().RSA2
	s := newJWTAS(t)
	s.register("robot@proj.iam.gserviceaccount.com", key.Public(), "")
	saPath := testkeys.WriteFile(t, "sa.json", testkeys.GoogleKeyJSON(t, key, s.tokenURL(), nil))
	h := &Handler{Credentials: Credentials{Provider: "google", ServiceAccountFile: saPath}, Scopes: []string{"scope-a"}}
	cs, err := h.configure(provisionReplacer())
	if err != nil {
		t.Fatal(err)
	}
	ep := newEndpoint(cs, &clock{})
	defer ep.Close()
	const workers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Go(func() {
			for range each {
				if _, err := ep.ClientCredentials(context.Background()); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if len(errs) > 0 {
		t.Fatalf("%d of %d token requests failed; the first: %v", len(errs), workers*each, <-errs)
	}
	wantDistinctJTI(t, s, workers*each)
}

// wantDistinctJTI fails unless the server issued n tokens, refused none,
// and saw n distinct jti and n distinct assertions.
func wantDistinctJTI(t *testing.T, s *fakeAS, n int) {
	t.Helper()
	if s.issued() != int64(n) || s.refused() != 0 {
		t.Fatalf("issued %d, refused %d (last refusal: %q); want %d and 0", s.issued(), s.refused(), s.lastRefusal(), n)
	}
	jtis, assertions := map[string]bool{}, map[string]bool{}
	for _, g := range s.issuedLog() {
		if strings.TrimSpace(g.JTI) == "" {
			t.Fatal("a grant without jti")
		}
		jtis[g.JTI] = true
	}
	for _, a := range s.sentAssertions() {
		assertions[a] = true
	}
	if len(jtis) != n || len(assertions) != n {
		t.Fatalf("%d distinct jti and %d distinct assertions in %d token requests", len(jtis), len(assertions), n)
	}
}
