package oauthclient

// The issuer in the authorization response (RFC 9207): the authorization
// server names itself in the redirect back to the client, so that a client
// talking to several servers cannot be tricked into sending a code from one
// to another (a mix-up attack).

import (
	"context"
	"errors"
	"fmt"
	"net/url"
)

// The refusals of CheckAuthorizationResponseIssuer; match them with
// errors.Is.
var (
	// ErrIssuerMismatch: the response names another issuer, or several.
	ErrIssuerMismatch = errors.New("the authorization response comes from another issuer")
	// ErrIssuerMissing: the server says it names itself in its responses
	// (authorization_response_iss_parameter_supported), and this one does
	// not.
	ErrIssuerMissing = errors.New("the authorization response does not name its issuer")
)

// CheckAuthorizationResponseIssuer decides whether the client may use an
// authorization response (its callback's parameters: code or error, state,
// iss), RFC 9207 §2.4, for successful and error responses alike:
//
//   - iss present: it must equal expected, the issuer identifier the client
//     configured or discovered, by simple string comparison (RFC 3986
//     §6.2.1: no normalisation); otherwise ErrIssuerMismatch. More than one
//     iss is a mismatch too.
//   - iss absent: ErrIssuerMissing when the server's metadata says
//     authorization_response_iss_parameter_supported (issSupported);
//     accepted otherwise.
//
// An empty expected (no issuer known: endpoints configured by hand) cannot
// be compared with: the response is accepted whatever its iss.
func CheckAuthorizationResponseIssuer(expected string, issSupported bool, response url.Values) error {
	iss, present := response["iss"]
	switch {
	case !present:
		if issSupported {
			return fmt.Errorf("%w, though its server's metadata says it always does", ErrIssuerMissing)
		}
		return nil
	case expected == "":
		return nil
	case len(iss) != 1:
		return fmt.Errorf("%w: it names %d issuers, expected %s", ErrIssuerMismatch, len(iss), Truncate(expected, 200))
	case iss[0] != expected:
		return fmt.Errorf("%w: it names %q, expected %s", ErrIssuerMismatch, Truncate(iss[0], 200), Truncate(expected, 200))
	}
	return nil
}

// IssuerInResponses reports whether the issuer's metadata says every
// authorization response names its issuer
// (authorization_response_iss_parameter_supported); false without an
// issuer.
func (e *Endpoint) IssuerInResponses(ctx context.Context) (bool, error) {
	d, err := e.Discover(ctx)
	if err != nil || d == nil {
		return false, err
	}
	return d.AuthorizationResponseIssParameterSupported, nil
}
