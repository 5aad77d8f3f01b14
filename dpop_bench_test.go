package oauthbearer

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/oauthbearer/caddy-oauth-bearer/internal/benchcpu"
)

// BenchmarkServeHTTPDPoP is BenchmarkServeHTTP's handler with dpop (a
// token bound to an ES256, EdDSA or RS256 key: Authorization: DPoP and a
// fresh proof per request), side by side with Caddy's headers handler
// setting a static Authorization, in one run.
func BenchmarkServeHTTPDPoP(b *testing.B) {
	as := newBenchAS(b)
	type hc struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}
	var handlers []hc
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		// A client id each: three pool entries, three keys.
		h := benchHandler(b, as, func(h *Handler) { h.ClientID, h.DPoP = "bench-dpop-"+alg, "https://api.example/v1" })
		key := dpopTestKey(b, alg)
		h.source.store(&token{value: benchTokenValue, dpopKey: key, obtained: time.Now(), expiry: time.Now().Add(time.Hour), origin: originFetched})
		handlers = append(handlers, hc{"oauth_bearer_dpop/" + alg, h})
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	static := &headers.Handler{Request: &headers.HeaderOps{Set: http.Header{"Authorization": {"Bearer " + benchTokenValue + "-static"}}}}
	if err := static.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	handlers = append(handlers, hc{"request_header_static", static})
	for _, c := range handlers {
		serve := func(w *benchWriter, r *http.Request) {
			w.reset()
			r.Body, r.ContentLength = caddyBody, 0
			delete(r.Header, "Authorization")
			if err := c.h.ServeHTTP(w, r, nopNext); err != nil || w.status != http.StatusOK {
				panic(fmt.Sprintf("ServeHTTP: status %d, error %v", w.status, err))
			}
		}
		b.Run(c.name+"/serial", func(b *testing.B) {
			w, r := newBenchWriter(), benchRequest()
			b.ReportAllocs()
			report := benchcpu.PerOp(b)
			for b.Loop() {
				serve(w, r)
			}
			report()
			if _, ok := c.h.(*Handler); ok && len(r.Header.Values("DPoP")) != 1 {
				b.Fatal("no proof on the request")
			}
		})
	}
}
