package oauthclient

// Pushed authorization requests (RFC 9126): the client posts the
// authorization request's parameters to the authorization server, directly
// and authenticated, and sends the browser to the authorization endpoint
// with only client_id and the request_uri it got back. The parameters are
// then neither visible to nor alterable by the browser, and the server
// knows the client before the person sees anything.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxAnswerSize caps what is read of an authorization server's answer.
const maxAnswerSize = 64 << 10

// ClientAuth adds the client's authentication to a request to an
// authorization server endpoint: parameters in form (client_id and
// client_secret, client_assertion...) and header fields (Authorization:
// Basic ...). It is called again for each attempt, so a single-use
// assertion is made afresh.
type ClientAuth func(endpoint string, form url.Values, header http.Header) error

// PARRequest is a pushed authorization request.
type PARRequest struct {
	// Endpoint is the pushed authorization request endpoint
	// (pushed_authorization_request_endpoint in the server's metadata).
	Endpoint string
	// Params are the authorization request's parameters: response_type,
	// client_id, redirect_uri, scope, state, code_challenge... They are not
	// modified.
	Params url.Values
	// ClientAuth authenticates the client, as at the token endpoint; nil
	// for a public client (client_id in Params).
	ClientAuth ClientAuth
	// DPoP, if set, puts a proof on the request, which binds the
	// authorization code to the key (RFC 9449 §10.1). A nonce challenge
	// (400 use_dpop_nonce) is answered once.
	DPoP *DPoPKey
	// Nonces keeps the server's DPoP nonces; nil: a store for this call.
	Nonces *Nonces
	// Header holds more header fields to send (User-Agent...).
	Header http.Header
}

// PARResponse is the server's answer to a pushed authorization request.
type PARResponse struct {
	// RequestURI references the pushed request, for the browser redirect.
	RequestURI string
	// ExpiresIn is how long RequestURI stays valid; zero when the server
	// did not say (it must, RFC 9126 §2.2, though some do not).
	ExpiresIn time.Duration
}

// PARError is a failed pushed authorization request. It holds no secret:
// the endpoint without its query, the status, and the server's error code
// and (shortened) description.
type PARError struct {
	Endpoint    string
	Status      int    // the answer's status; 0 when there was none
	Code        string // the OAuth error code, if the server gave one
	Description string // the server's error_description, shortened
	Err         error  // what went wrong otherwise
}

func (e *PARError) Error() string {
	var b strings.Builder
	b.WriteString("pushed authorization request to ")
	b.WriteString(e.Endpoint)
	b.WriteString(": ")
	switch {
	case e.Code != "":
		b.WriteString(e.Code)
		if e.Description != "" {
			b.WriteString(": ")
			b.WriteString(e.Description)
		}
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("failed")
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	return b.String()
}

func (e *PARError) Unwrap() error { return e.Err }

// PushAuthorizationRequest posts r's parameters to its endpoint with client
// and, if r.DPoP is set, a DPoP proof, and returns the request_uri and its
// lifetime (201 Created; 200 is taken too). A redirect is not followed: the
// request carries the client's credentials. Errors are *PARError.
func PushAuthorizationRequest(ctx context.Context, client *http.Client, r PARRequest) (*PARResponse, error) {
	u, err := url.Parse(r.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, &PARError{Endpoint: describeURL(r.Endpoint), Err: errors.New("the endpoint is not an absolute http or https URL")}
	}
	name := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	fail := func(status int, err error) error { return &PARError{Endpoint: name, Status: status, Err: err} }

	var htu, origin string
	nonces := r.Nonces
	if r.DPoP != nil {
		if htu, err = NormalizeHTU(r.Endpoint); err != nil {
			return nil, fail(0, err)
		}
		origin = OriginOf(u)
		if nonces == nil {
			nonces = &Nonces{}
		}
	}
	if client == nil {
		client = http.DefaultClient
	}
	direct := *client
	direct.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	for attempt := 0; ; attempt++ {
		form := make(url.Values, len(r.Params)+4)
		for k, v := range r.Params {
			form[k] = append([]string(nil), v...)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.Endpoint, nil)
		if err != nil {
			return nil, fail(0, err)
		}
		for k, v := range r.Header {
			req.Header[k] = append([]string(nil), v...)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		if r.ClientAuth != nil {
			if err := r.ClientAuth(r.Endpoint, form, req.Header); err != nil {
				return nil, fail(0, fmt.Errorf("client authentication: %w", err))
			}
		}
		if r.DPoP != nil {
			proof, err := r.DPoP.Proof(ProofParams{Method: http.MethodPost, URL: htu, Nonce: nonces.Get(origin)})
			if err != nil {
				return nil, fail(0, err)
			}
			req.Header.Set("DPoP", proof)
		}
		body := form.Encode()
		req.Body = io.NopCloser(strings.NewReader(body))
		req.ContentLength = int64(len(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }

		resp, err := direct.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // without the URL: the error names the endpoint
			}
			return nil, fail(0, err)
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerSize+1))
		resp.Body.Close()
		if err != nil {
			return nil, fail(resp.StatusCode, fmt.Errorf("reading the answer: %w", err))
		}
		if r.DPoP != nil {
			nonces.Observe(origin, resp.Header)
			if _, ok := TokenNonceChallenge(resp.StatusCode, resp.Header, data); ok && attempt == 0 {
				continue
			}
		}
		return parsePARAnswer(name, resp, data)
	}
}

// parsePARAnswer reads a pushed authorization request's answer.
func parsePARAnswer(name string, resp *http.Response, data []byte) (*PARResponse, error) {
	status := resp.StatusCode
	if len(data) > maxAnswerSize {
		return nil, &PARError{Endpoint: name, Status: status, Err: fmt.Errorf("the answer is larger than %d bytes", maxAnswerSize)}
	}
	if status != http.StatusCreated && status != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return nil, &PARError{Endpoint: name, Status: status, Code: printable(e.Error, 100), Description: printable(e.Description, 300)}
		}
		what := "an unexpected answer"
		if status >= 300 && status < 400 {
			what = "a redirect (a pushed authorization request endpoint answers directly)"
		}
		return nil, &PARError{Endpoint: name, Status: status, Err: fmt.Errorf("%s: %s", what, describeAnswer(resp.Header, data))}
	}
	var ok struct {
		RequestURI string          `json:"request_uri"`
		ExpiresIn  json.RawMessage `json:"expires_in"`
	}
	if err := json.Unmarshal(data, &ok); err != nil {
		return nil, &PARError{Endpoint: name, Status: status, Err: fmt.Errorf("the answer is not the expected JSON object: %s", describeAnswer(resp.Header, data))}
	}
	if ok.RequestURI == "" {
		return nil, &PARError{Endpoint: name, Status: status, Err: errors.New("the answer has no request_uri")}
	}
	out := &PARResponse{RequestURI: ok.RequestURI}
	if len(ok.ExpiresIn) > 0 && string(ok.ExpiresIn) != "null" {
		s, err := strconv.ParseFloat(strings.Trim(string(ok.ExpiresIn), `"`), 64)
		if err != nil || s <= 0 || s > math.MaxInt32 {
			return nil, &PARError{Endpoint: name, Status: status, Err: fmt.Errorf("expires_in %s is not a positive number of seconds", printable(string(ok.ExpiresIn), 40))}
		}
		out.ExpiresIn = time.Duration(s * float64(time.Second))
	}
	return out, nil
}

// AuthorizationRedirectURL is where the browser goes after a pushed
// authorization request: the authorization endpoint with client_id and
// request_uri only (RFC 9126 §4). A query the endpoint itself has is kept
// (RFC 6749 §3.1).
func AuthorizationRedirectURL(authorizationEndpoint, clientID, requestURI string) (string, error) {
	u, err := url.Parse(authorizationEndpoint)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("authorization endpoint %s is not an absolute http or https URL", describeURL(authorizationEndpoint))
	}
	if clientID == "" || requestURI == "" {
		return "", errors.New("a pushed authorization redirect needs client_id and request_uri")
	}
	q := u.Query()
	q.Set("client_id", clientID)
	q.Set("request_uri", requestURI)
	u.RawQuery = q.Encode()
	u.Fragment, u.RawFragment = "", ""
	return u.String(), nil
}

// describeAnswer says what an unexpected answer was without quoting it
// (it could echo what was sent): its media type and size.
func describeAnswer(h http.Header, data []byte) string {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	if ct == "" {
		ct = "no content type"
	}
	return fmt.Sprintf("%s, %d bytes", strings.TrimSpace(ct), len(data))
}

// printable is s from a server, fit for an error message: control
// characters dropped, at most n bytes.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	return Truncate(s, n)
}

// DiscoveredPAREndpoint is the pushed authorization request endpoint the
// issuer's metadata names (its mTLS alias with a client certificate); ""
// without an issuer or when the metadata names none.
func (e *Endpoint) DiscoveredPAREndpoint(ctx context.Context) (string, error) {
	d, err := e.Discover(ctx)
	if err != nil || d == nil {
		return "", err
	}
	if e.cfg.Client.Certificate != nil && d.MTLSEndpointAliases.PushedAuthorizationRequestEndpoint != "" {
		return d.MTLSEndpointAliases.PushedAuthorizationRequestEndpoint, nil
	}
	return d.PushedAuthorizationRequestEndpoint, nil
}

// PushAuthorization pushes an authorization request (params: response_type,
// client_id, redirect_uri, state, code_challenge...) to target, the pushed
// authorization request endpoint, within the configured timeout, the client
// authenticated as at the token endpoint (Basic, client_secret in the body,
// a client assertion, its certificate). A client assertion is addressed to
// the token endpoint (client_assertion_audience if set), which RFC 9126 §2
// has the server accept there as well, and which the provider already takes
// from this client. client_id stays in the request whatever the method: it
// is one of the authorization request's parameters. Errors are *PARError.
func (e *Endpoint) PushAuthorization(ctx context.Context, target string, params url.Values) (*PARResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	audience := target
	if tokenURL, err := e.tokenURL(ctx); err == nil && tokenURL != "" {
		audience = tokenURL
	}
	r := PARRequest{Endpoint: target, Params: params,
		ClientAuth: func(_ string, form url.Values, h http.Header) error {
			clientID := form.Get("client_id")
			authorization, err := e.cfg.Client.authenticate(form, audience, false)
			if err != nil {
				return err
			}
			if clientID != "" {
				form.Set("client_id", clientID)
			}
			if authorization != "" {
				h.Set("Authorization", authorization)
			}
			return nil
		}}
	if e.cfg.UserAgent != "" {
		r.Header = http.Header{"User-Agent": {e.cfg.UserAgent}}
	}
	res, err := PushAuthorizationRequest(ctx, e.client, r)
	var pe *PARError
	if errors.As(err, &pe) {
		if pe.Status == http.StatusNotFound || (pe.Status == 0 && pe.Code == "" && ctx.Err() == nil) {
			e.endpointFailed(target) // the metadata is read again at the next use
		}
		pe.Description = e.cfg.redact(pe.Description)
	}
	return res, err
}
