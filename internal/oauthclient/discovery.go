package oauthclient

// Authorization server metadata discovery from an issuer: RFC 8414, with
// OpenID Connect Discovery 1.0 as the fallback. The Endpoint caches what
// discoverIssuer returns (Endpoint.Discover), for the lifetime the answer's
// Cache-Control gives (discoveryLifetime); nothing is cached here.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	// maxDiscoveryBody caps a metadata document.
	maxDiscoveryBody = 1 << 20
	// maxDiscoveryRedirects caps the same-origin redirects followed.
	maxDiscoveryRedirects = 3

	wellKnownOAuthServer = "/.well-known/oauth-authorization-server"
	wellKnownOpenID      = "/.well-known/openid-configuration"

	// How long a discovered document is used before the issuer is asked
	// again: its Cache-Control max-age, within these bounds; a day when
	// it gives none. no-store and no-cache mean the shortest.
	defaultDiscoveryLifetime = 24 * time.Hour
	minDiscoveryLifetime     = time.Minute
	maxDiscoveryLifetime     = 7 * 24 * time.Hour
)

// Metadata is the part of an authorization server's metadata (RFC 8414)
// that the client uses. Endpoints are absolute https URLs (http only on a
// loopback host); absent ones are "". It is stored as JSON (the fleet
// shares it): the field names are kept.
type Metadata struct {
	Issuer                string `json:"issuer"`
	TokenEndpoint         string `json:"token_endpoint"`
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	RevocationEndpoint    string `json:"revocation_endpoint"`
	// MTLSEndpointAliases are the endpoints to use with a client
	// certificate (RFC 8705 §5).
	MTLSEndpointAliases struct {
		TokenEndpoint                      string `json:"token_endpoint"`
		RevocationEndpoint                 string `json:"revocation_endpoint"`
		PushedAuthorizationRequestEndpoint string `json:"pushed_authorization_request_endpoint,omitempty"`
	} `json:"mtls_endpoint_aliases"`
	// PushedAuthorizationRequestEndpoint is where authorization requests
	// are pushed (RFC 9126 §5); "" when the server takes none.
	PushedAuthorizationRequestEndpoint string `json:"pushed_authorization_request_endpoint,omitempty"`
	// AuthorizationResponseIssParameterSupported: the server names itself
	// (iss) in every authorization response (RFC 9207 §3), so one
	// without it is refused.
	AuthorizationResponseIssParameterSupported bool `json:"authorization_response_iss_parameter_supported,omitempty"`
	// Fetched and Expires are when the document was read and until when
	// it is used (set by the endpoint that read it, kept in the shared
	// record so that the fleet and a restart honour them).
	Fetched time.Time `json:"fetched,omitzero"`
	Expires time.Time `json:"expires,omitzero"`

	// source is the URL the document was read from.
	source string
	// lifetime is what the answer's Cache-Control gives.
	lifetime time.Duration
	// failed: an endpoint it names failed at transport level or answered
	// 404; it is read again at the next use.
	failed bool
}

// fresh reports whether d may be used at now without asking the issuer
// again.
func (d *Metadata) fresh(now time.Time) bool {
	return d != nil && !d.failed && now.Before(d.Expires)
}

// names reports whether target is one of the endpoints d gives.
func (d *Metadata) names(target string) bool {
	return target != "" && (target == d.TokenEndpoint || target == d.RevocationEndpoint ||
		target == d.MTLSEndpointAliases.TokenEndpoint || target == d.MTLSEndpointAliases.RevocationEndpoint ||
		target == d.PushedAuthorizationRequestEndpoint || target == d.MTLSEndpointAliases.PushedAuthorizationRequestEndpoint)
}

// discoveryLifetime is how long a document may be used, from its answer's
// Cache-Control (max-age; no-store or no-cache: the shortest), within
// [minDiscoveryLifetime, maxDiscoveryLifetime]; defaultDiscoveryLifetime
// when it says nothing usable.
func discoveryLifetime(h http.Header) time.Duration {
	lifetime := time.Duration(-1)
	for _, field := range h.Values("Cache-Control") {
		for dir := range strings.SplitSeq(field, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(dir), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				return minDiscoveryLifetime
			case "max-age":
				if secs, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(value), `"`), 10, 64); err == nil && secs >= 0 {
					lifetime = time.Duration(min(secs, int64(maxDiscoveryLifetime/time.Second))) * time.Second
				}
			}
		}
	}
	if lifetime < 0 {
		return defaultDiscoveryLifetime
	}
	return min(max(lifetime, minDiscoveryLifetime), maxDiscoveryLifetime)
}

// mtlsTokenEndpoint is the token endpoint to use with a client certificate:
// the mtls_endpoint_aliases one if given, else token_endpoint.
func (d *Metadata) mtlsTokenEndpoint() string {
	if d.MTLSEndpointAliases.TokenEndpoint != "" {
		return d.MTLSEndpointAliases.TokenEndpoint
	}
	return d.TokenEndpoint
}

// discoveryURLs returns where the metadata of issuer is published: the
// RFC 8414 §3.1 URL (the well-known segment between host and path, a
// trailing "/" of the path dropped) and the OpenID Connect Discovery §4 URL
// (the issuer, without a trailing "/", followed by the well-known segment).
// The issuer must be an https URL (http only on a loopback host) without
// query or fragment (RFC 8414 §2).
func discoveryURLs(issuer string) (oauthURL, openidURL string, err error) {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return "", "", fmt.Errorf("discovery: issuer %q is not an absolute URL", issuer)
	}
	if !SecureEndpoint(u) {
		return "", "", fmt.Errorf("discovery: issuer %s must be https (http only on a loopback host)", issuer)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
		return "", "", fmt.Errorf("discovery: issuer %s must have no query, fragment or user info (RFC 8414 §2)", issuer)
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	origin := u.Scheme + "://" + u.Host
	return origin + wellKnownOAuthServer + path, origin + path + wellKnownOpenID, nil
}

// discoverIssuer reads the authorization server metadata of issuer with
// client: first the RFC 8414 URL; if that answers a 4xx status (most
// servers that do not publish it answer 404) or a 200 that is not a JSON
// object (a web app's catch-all page), the OpenID Connect URL. Any other
// failure of the first URL (5xx, a network error, a redirect elsewhere) is
// returned at once rather than masked by the second.
//
// The document's issuer must equal issuer exactly (RFC 8414 §3.3), it must
// name a token_endpoint, and every endpoint in it must be https (http only
// on a loopback host). The body is capped at 1 MiB.
//
// Redirects: followed only within the same scheme and host (at most 3), as
// a server may normalise a path; a redirect to another host or scheme is an
// error naming both, never followed silently: the issuer configured is the
// one trusted, and the issuer check alone would not show where the request
// went. client itself is not changed (a copy with this policy is used), so
// its own CheckRedirect, if any, does not apply here.
func discoverIssuer(ctx context.Context, client *http.Client, issuer string) (*Metadata, error) {
	oauthURL, openidURL, err := discoveryURLs(issuer)
	if err != nil {
		return nil, err
	}
	if client == nil {
		client = http.DefaultClient
	}
	c := *client
	c.CheckRedirect = sameOriginRedirects

	doc, err := fetchDiscovery(ctx, &c, oauthURL)
	var nf *discoveryNotFoundError
	if errors.As(err, &nf) {
		doc, err = fetchDiscovery(ctx, &c, openidURL)
		if err != nil {
			return nil, fmt.Errorf("discovery: %v; then %w", nf, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	if err := doc.check(issuer); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	return doc, nil
}

// discoveryNotFoundError says a metadata URL does not hold a document, in a
// way that lets the other URL be tried.
type discoveryNotFoundError struct {
	url    string
	reason string // "answered 404", "answered a text/html page, not JSON"
}

func (e *discoveryNotFoundError) Error() string { return e.url + " " + e.reason }

// discoveryRedirectError is a redirect that discovery refuses to follow.
type discoveryRedirectError struct {
	from, to string
	reason   string
}

func (e *discoveryRedirectError) Error() string {
	return fmt.Sprintf("%s redirects to %s (%s); configure the issuer the provider publishes", e.from, e.to, e.reason)
}

// sameOriginRedirects is discovery's redirect policy: same scheme and host,
// at most maxDiscoveryRedirects.
func sameOriginRedirects(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	switch {
	case req.URL.Scheme != first.Scheme || !strings.EqualFold(req.URL.Host, first.Host):
		return &discoveryRedirectError{from: first.String(), to: req.URL.String(), reason: "another host or scheme"}
	case len(via) > maxDiscoveryRedirects:
		return &discoveryRedirectError{from: first.String(), to: req.URL.String(), reason: "too many redirects"}
	}
	return nil
}

// fetchDiscovery GETs one metadata URL and decodes it. A 4xx answer or a
// 200 that is not a JSON object is a *discoveryNotFoundError.
func fetchDiscovery(ctx context.Context, client *http.Client, rawURL string) (*Metadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", rawURL, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		var re *discoveryRedirectError
		if errors.As(err, &re) {
			return nil, re
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDiscoveryBody+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the answer: %v", rawURL, err)
	}
	switch {
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		return nil, &discoveryNotFoundError{url: rawURL, reason: fmt.Sprintf("answered %d", resp.StatusCode)}
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s answered %d", rawURL, resp.StatusCode)
	case len(body) > maxDiscoveryBody:
		return nil, fmt.Errorf("%s answered a document larger than 1 MiB", rawURL)
	}
	trimmed := strings.TrimSpace(string(body))
	if !strings.HasPrefix(trimmed, "{") {
		what := "a body that is not a JSON object"
		if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && mt != "application/json" {
			what = "a " + mt + " body, not a JSON object"
		}
		return nil, &discoveryNotFoundError{url: rawURL, reason: "answered " + what}
	}
	doc := new(Metadata)
	if err := json.Unmarshal(body, doc); err != nil {
		return nil, fmt.Errorf("%s is not a valid metadata document: %v", rawURL, err)
	}
	doc.source, doc.lifetime = rawURL, discoveryLifetime(resp.Header)
	return doc, nil
}

// check validates a fetched document against the configured issuer.
func (d *Metadata) check(issuer string) error {
	if d.Issuer != issuer {
		return fmt.Errorf("%s names issuer %q, configured %q; they must be identical", d.source, d.Issuer, issuer)
	}
	if d.TokenEndpoint == "" {
		return fmt.Errorf("%s has no token_endpoint", d.source)
	}
	for _, ep := range []struct{ name, value string }{
		{"token_endpoint", d.TokenEndpoint},
		{"authorization_endpoint", d.AuthorizationEndpoint},
		{"revocation_endpoint", d.RevocationEndpoint},
		{"mtls_endpoint_aliases.token_endpoint", d.MTLSEndpointAliases.TokenEndpoint},
		{"mtls_endpoint_aliases.revocation_endpoint", d.MTLSEndpointAliases.RevocationEndpoint},
		{"pushed_authorization_request_endpoint", d.PushedAuthorizationRequestEndpoint},
		{"mtls_endpoint_aliases.pushed_authorization_request_endpoint", d.MTLSEndpointAliases.PushedAuthorizationRequestEndpoint},
	} {
		if ep.value == "" {
			continue
		}
		if err := checkFetchedURL(d.source+": "+ep.name, ep.value); err != nil {
			return err
		}
	}
	return nil
}
