// Package oauthclient is the OAuth 2.0 client's wire code: what goes to an
// authorization server or a resource server and what comes back, with no
// knowledge of Caddy, of caching or of the requests a proxy serves.
//
// What lives here, by file:
//   - endpoint.go: Endpoint, one provider's token endpoint for one client
//     (Config): the client credentials and JWT bearer grants
//     (ClientCredentials), ExchangeCode, Refresh and Revoke, the request
//     body format, and the answers turned into a Token or a *TokenError;
//   - clientauth.go: Client, how the client authenticates (secret, Basic,
//     signed assertions, an assertion file, a certificate), the assertion
//     signers and Google service account key files;
//   - keys.go: private keys and certificates from a PEM file or PEM text;
//   - mtls.go: ClientCert, the TLS client certificate (RFC 8705), read
//     again when its files change;
//   - discovery.go: Metadata, read from the issuer (RFC 8414, then OpenID
//     Connect discovery) and cached by the Endpoint (Endpoint.Discover);
//   - text.go: Redact and Truncate for text from elsewhere, and
//     SecureEndpoint, the rule of which URLs may carry credentials;
//   - challenge.go: WWW-Authenticate challenges (ParseChallenges) and DPoP
//     nonce challenges;
//   - dpop.go, nonces.go (DPoP, RFC 9449), par.go (pushed authorization
//     requests, RFC 9126) and iss.go (the issuer of an authorization
//     response, RFC 9207): written for issue 18, not used by the handlers
//     yet.
//
// What does not: the configuration (Caddyfile and JSON, placeholders, the
// rules of the subdirectives: the root package resolves them and fills a
// Config), the token cache and its refreshes, the pool, sharing through
// Caddy's storage, grants and consent, the handlers, and the metrics, logs
// and clock, which the owner passes in: Config.Observe is told of every
// token request (the root counts it in Prometheus), Config.Now is the
// owner's clock, and ClientCert.LogTo takes the owner's logger.
//
// The package imports nothing from Caddy; imports_test.go fails if it
// does, directly or through a dependency. Errors never contain a secret, a
// token, a proof or key material.
package oauthclient
