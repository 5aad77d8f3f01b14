package oauthclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// A token endpoint that requires a DPoP nonce: the first request (no
// nonce) is answered 400 use_dpop_nonce with DPoP-Nonce, and asked again
// once with it; the answer's token_type DPoP is accepted only for a
// request that carried a proof; a second call carries the kept nonce and
// is answered at once. Every proof names the endpoint (htu) and POST.
func TestEndpointDPoPNonceAndTokenType(t *testing.T) {
	var mu sync.Mutex
	var claims []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proof := r.Header.Get("DPoP")
		var c map[string]any
		if parts := strings.Split(proof, "."); len(parts) == 3 {
			b, _ := base64.RawURLEncoding.DecodeString(parts[1])
			json.Unmarshal(b, &c)
		}
		mu.Lock()
		claims = append(claims, c)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if c == nil {
			w.Write([]byte(`{"access_token":"tok","token_type":"DPoP","expires_in":60}`))
			return
		}
		if c["nonce"] != "n-1" {
			w.Header().Set("DPoP-Nonce", "n-1")
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"use_dpop_nonce"}`))
			return
		}
		w.Write([]byte(`{"access_token":"tok","token_type":"DPoP","expires_in":60}`))
	}))
	t.Cleanup(srv.Close)
	ep := NewEndpoint(*epConfig(srv.URL + "/token?x=1"))
	defer ep.Close()
	key, err := GenerateDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	ctx := WithDPoPKey(context.Background(), key)
	tok, err := ep.ClientCredentials(ctx)
	if err != nil || tok.TokenType != TokenTypeDPoP {
		t.Fatalf("ClientCredentials with a key: %+v, %v; want a DPoP token after one nonce challenge", tok, err)
	}
	if _, err := ep.ClientCredentials(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(claims) != 3 || claims[0]["nonce"] != nil || claims[1]["nonce"] != "n-1" || claims[2]["nonce"] != "n-1" {
		t.Errorf("proofs %v; want no nonce, then n-1 (the retry), then n-1 at once (kept)", claims)
	}
	for _, c := range claims {
		if c["htm"] != "POST" || c["htu"] != srv.URL+"/token" {
			t.Errorf("proof htm %v htu %v; want POST %s/token (no query)", c["htm"], c["htu"], srv.URL)
		}
	}
	mu.Unlock()
	// Without a key, token_type DPoP is refused as before.
	if _, err := ep.ClientCredentials(context.Background()); err == nil || !strings.Contains(err.Error(), "unsupported_token_type") {
		t.Errorf("a DPoP token without a proof: %v, want unsupported_token_type", err)
	}
}
