package oauthbearer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// par.go: the consent handler's pushed authorization requests (RFC 9126)
// and its check of the issuer in the authorization response (RFC 9207).
// The wire is internal/oauthclient's (par.go, iss.go).

// The values of par.
const (
	parAuto = "auto"
	parOn   = "on"
	parOff  = "off"
)

var parModes = []string{parAuto, parOn, parOff}

// consentFailure is a connect that cannot go on: the page's status and
// what the person reads (the log line is written where it happens).
type consentFailure struct {
	status int
	msg    string
}

// parEndpoint is where the authorization request is pushed: par_url, or
// the one the issuer's metadata names; "" when it is not pushed (par off,
// or auto and the provider names none).
func (h *ConsentHandler) parEndpoint(ctx context.Context) (string, *consentFailure) {
	provider := h.grant.cfg.Provider
	switch {
	case h.PAR == parOff:
		return "", nil
	case h.parURL != "":
		return h.parURL, nil
	}
	target, err := h.grant.ep.DiscoveredPAREndpoint(ctx)
	if err != nil {
		// Whether the provider takes pushed requests is unknown (the
		// authorization endpoint is configured, else connect failed
		// before): par on requires them; auto falls back to the plain
		// redirect, as it would with a provider that takes none.
		if h.PAR == parOn {
			h.logger.Error("discovering the pushed authorization request endpoint failed", zap.String("provider", provider), zap.Error(err))
			return "", &consentFailure{http.StatusBadGateway,
				fmt.Sprintf("The metadata of %s cannot be read (discovery failed), and this site requires pushed authorization requests (par on); see the server log.", h.title)}
		}
		h.logger.Warn("discovering the pushed authorization request endpoint failed: redirecting without pushing (par auto)",
			zap.String("provider", provider), zap.Error(err))
		return "", nil
	}
	if target == "" && h.PAR == parOn {
		h.logger.Error("par is on, but the provider names no pushed authorization request endpoint: set par_url, or par auto",
			zap.String("provider", provider), zap.String("issuer", h.grant.cfg.Issuer))
		return "", &consentFailure{http.StatusBadGateway,
			fmt.Sprintf("%s does not take pushed authorization requests, which this site requires (par on); see the server log.", h.title)}
	}
	return target, nil
}

// pushAuthorization pushes the authorization request's parameters q when
// par says so, and returns where the browser goes then: the authorization
// endpoint with client_id and the request_uri alone; "" when the request
// is not pushed (the browser carries q). The push is bounded like the
// consent handler's other calls to the provider.
func (h *ConsentHandler) pushAuthorization(r *http.Request, authorizeURL string, q url.Values) (string, *consentFailure) {
	ctx, cancel := context.WithTimeout(r.Context(), h.workBound())
	defer cancel()
	target, failure := h.parEndpoint(ctx)
	if failure != nil || target == "" {
		return "", failure
	}
	provider := h.grant.cfg.Provider
	res, err := h.grant.ep.PushAuthorization(ctx, target, q)
	if err == nil {
		var redirect string
		if redirect, err = oauthclient.AuthorizationRedirectURL(authorizeURL, q.Get("client_id"), res.RequestURI); err == nil {
			return redirect, nil
		}
	}
	var pe *oauthclient.PARError
	if errors.As(err, &pe) && pe.Code != "" {
		h.logger.Error("pushed authorization request refused", zap.String("provider", provider), zap.String("endpoint", pe.Endpoint),
			zap.String("error", pe.Code), zap.Int("status", pe.Status), zap.String("error_description", pe.Description))
		return "", &consentFailure{http.StatusBadGateway,
			fmt.Sprintf("%s refused the authorization request (%s); see the server log.", h.title, pe.Code)}
	}
	h.logger.Error("pushed authorization request failed", zap.String("provider", provider), zap.String("error", h.grant.cfg.redact(err.Error())))
	return "", &consentFailure{http.StatusBadGateway,
		fmt.Sprintf("The authorization request could not be sent to %s; see the server log.", h.title)}
}

// checkIssuer applies RFC 9207 to an authorization response (the
// callback's query) before anything in it is used: an iss naming another
// issuer than the configured (or discovered) one is a mix-up, and so is a
// missing iss when the issuer's metadata says it always sends one. No
// issuer configured and no iss: accepted, as before. It returns the
// refusal, logged, or nil.
func (h *ConsentHandler) checkIssuer(ctx context.Context, q url.Values, account string) error {
	expected := h.grant.cfg.Issuer
	supported := false
	if expected != "" {
		var err error
		if supported, err = h.grant.ep.IssuerInResponses(ctx); err != nil {
			// Without the metadata, a missing iss cannot be judged; a
			// present one still is (and the exchange needs the metadata
			// anyway when the token endpoint is discovered).
			h.logger.Warn("reading the issuer's metadata for the issuer check failed", zap.String("provider", h.grant.cfg.Provider), zap.Error(err))
		}
	}
	err := oauthclient.CheckAuthorizationResponseIssuer(expected, supported, q)
	if err != nil {
		h.logger.Error("authorization response refused: issuer mismatch (a mix-up attack, or a misconfigured issuer); the code was not redeemed",
			zap.String("provider", h.grant.cfg.Provider), zap.String("account", account),
			zap.String("expected", expected), zap.Strings("iss", truncateAll(q["iss"], 200)), zap.Error(err))
	}
	return err
}

// truncateAll is truncate of each value.
func truncateAll(vs []string, n int) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = truncate(v, n)
	}
	return out
}

// issuerMismatchPage answers an authorization response checkIssuer
// refused: nothing was stored, the code was not redeemed.
func (h *ConsentHandler) issuerMismatchPage(w http.ResponseWriter, r *http.Request, user, account string, err error) error {
	v := &view{Title: "Sign-in refused", User: user, Links: h.startAgainLinks(user, account),
		Error: fmt.Sprintf("This sign-in was refused: the answer that brought you back here was not sent by %s.", h.title)}
	if errors.Is(err, oauthclient.ErrIssuerMissing) {
		v.Error = fmt.Sprintf("This sign-in was refused: the answer that brought you back here does not say it was sent by %s, as %s's answers always do.", h.title, h.title)
	}
	v.Message = "Nothing was stored, and the authorization code in the answer was not used."
	v.More = []string{
		"This can be an attempt to connect your account with another server's sign-in (a mix-up attack), or a misconfigured provider.",
		"Start again from this site's own page. If it happens again, tell the site's administrator: the server log says more.",
	}
	return h.render(w, r, http.StatusBadRequest, "message", v)
}
