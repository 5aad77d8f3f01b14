package oauthbearer

// endpoint.go: a credential set's OAuth client. The requests and their
// answers are internal/oauthclient's (Endpoint: token, refresh and
// revocation requests, client authentication, discovery); here the client
// gets its configuration from the credential set, its owner's clock and
// the module's metrics, and its tokens become the cache's.

import (
	"time"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// version is sent in the User-Agent of token requests.
const version = "0.1.0"

// TokenError is a failure to obtain a token (oauthclient.TokenError): Code
// is the provider's OAuth error code when it gave one, else a short local
// code (unreachable, timeout, http_502, invalid_response,
// local_config_error, backing_off, ...).
type TokenError = oauthclient.TokenError

// endpoint is the OAuth client of a credential set, owned by a pool entry
// or a grant (which closes it). Its methods are oauthclient.Endpoint's;
// fetched turns the tokens they return into the cache's.
type endpoint struct {
	*oauthclient.Endpoint
	cfg   *credentialSet
	clock *clock // its owner's: stamps when a token was obtained
}

func newEndpoint(cs *credentialSet, c *clock) *endpoint {
	initMetrics()
	provider := cs.Provider
	ep := oauthclient.NewEndpoint(oauthclient.Config{
		Provider:         cs.Provider,
		Grant:            cs.Grant,
		TokenURL:         cs.TokenURL,
		Issuer:           cs.Issuer,
		RefreshURL:       cs.RefreshURL,
		RevokeURL:        cs.RevokeURL,
		Format:           cs.Format,
		PreferredFormat:  cs.PreferredFormat,
		RefreshBearer:    cs.RefreshBearer,
		Timeout:          cs.Timeout,
		DefaultLifetime:  cs.DefaultLifetime,
		RootCAs:          cs.caPEM,
		UserAgent:        "caddy-oauth-bearer/" + version,
		Scope:            cs.Scope,
		Audience:         cs.Audience,
		Resources:        cs.Resources,
		Params:           cs.Params,
		AssertionIssuer:  cs.assertionIssuer,
		AssertionSubject: firstNonEmpty(cs.Subject, cs.assertionSubject),
		ScopeInAssertion: cs.scopeInAssertion,
		Client: oauthclient.Client{
			ID:                cs.ClientID,
			Auth:              cs.ClientAuth,
			Secret:            cs.clientSecret,
			Signer:            cs.signer,
			AssertionFile:     cs.AssertionFile,
			AssertionAudience: cs.AssertionAudience,
			Certificate:       cs.tlsCert,
		},
		Now: c.now,
		Observe: func(elapsed time.Duration, err error) {
			metrics.tokenDuration.WithLabelValues(provider).Observe(elapsed.Seconds())
			metrics.tokenRequests.WithLabelValues(provider, resultClass(err)).Inc()
		},
	})
	return &endpoint{Endpoint: ep, cfg: cs, clock: c}
}

// fetched is the cache's token of what a token request returned.
func fetched(t *oauthclient.Token, err error) (*token, error) {
	if err != nil {
		return nil, err
	}
	return &token{value: t.AccessToken, scope: t.Scope, refreshToken: t.RefreshToken, lifetimeFrom: t.LifetimeFrom,
		obtained: t.Obtained, expiry: t.Expiry, origin: originFetched}, nil
}
