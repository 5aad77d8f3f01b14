// Package oauthclient is the OAuth 2.0 client's wire code: what goes to an
// authorization server or a resource server and what comes back, with no
// knowledge of Caddy, of caching or of the requests a proxy serves.
//
// It holds, for now:
//   - DPoP (RFC 9449): keys (dpop.go), proofs, the latest server nonce per
//     origin (nonces.go) and the recognition of nonce challenges
//     (challenge.go);
//   - pushed authorization requests (RFC 9126, par.go);
//   - the issuer check of an authorization response (RFC 9207, iss.go).
//
// The token, refresh and revocation requests, client authentication,
// discovery and TLS client certificates move here from the root package
// next. The package imports nothing from Caddy; imports_test.go fails if it
// does, directly or through a dependency.
//
// Errors never contain a secret, a token, a proof or key material.
package oauthclient
