package oauthbearer

import (
	"fmt"
	"github.com/dustin/go-humanize"
	"net/textproto"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/http/httpguts"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oauth_bearer", parseCaddyfile)
	// After request_header rather than before reverse_proxy: anchoring on
	// reverse_proxy would sort the handler after a handle block holding the
	// proxy, and the proxy would run without the token.
	httpcaddyfile.RegisterDirectiveOrder("oauth_bearer", httpcaddyfile.After, "request_header")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	oauth_bearer [<matcher>] [<provider>] {
//		client_id        <id>
//		client_secret    <secret>          # use {env.X} or {file./path}
//		token_url        <url>             # required for the generic provider
//		environment      <name>            # e.g. bookable: production | sandbox
//		scope            <scope...>
//		audience         <value>
//		resource         <uri>             # repeatable (RFC 8707)
//		param            <name> <value>    # repeatable
//		request_format   json|form|auto
//		client_auth      body|basic
//		refresh_before   <duration>
//		default_lifetime <duration>
//		timeout          <duration>
//		header           <name> <value>    # repeatable; request placeholders allowed
//		org              <id>              # X-API-ORG for eventtemple
//		token_header     <name> [<prefix>]
//		ca_file          <path>            # extra CA for the token endpoint
//		upstream_401     retry|invalidate|off
//		replay_max_body  <size>            # default 64KiB
//
//		# authorization_code and refresh_token grants
//		grant            client_credentials|authorization_code|refresh_token
//		redirect_uri     <url>             # makes this the consent handler
//		connect_path     <path>            # default: beside the callback
//		status_path      <path>
//		disconnect_path  <path>
//		authorize_url    <url>
//		refresh_url      <url>
//		revoke_url       <url>
//		pkce             on|off            # default on (S256)
//		refresh_token    <token>           # seeds grant refresh_token
//		account          <name|placeholder>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		h.Provider = d.Val()
		if _, ok := providers.Lookup(h.Provider); !ok {
			return d.Errf("unknown provider '%s' (known: %s)", h.Provider, strings.Join(providers.Names(), ", "))
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	preset, _ := providers.Lookup(firstNonEmpty(h.Provider, providers.Generic))

	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		switch sub {
		case "resource", "param", "header":
			// repeatable
		default:
			if seen[sub] {
				return d.Errf("subdirective '%s' given twice", sub)
			}
		}
		seen[sub] = true

		switch sub {
		case "client_id", "client_secret", "token_url", "environment", "audience",
			"request_format", "client_auth", "refresh_before", "default_lifetime", "timeout", "org",
			"ca_file", "upstream_401", "replay_max_body", "grant", "redirect_uri", "connect_path",
			"status_path", "disconnect_path", "authorize_url", "refresh_url", "revoke_url", "pkce",
			"refresh_token", "account":
			var val string
			if !d.AllArgs(&val) {
				return subArgErr(d, sub)
			}
			if err := h.setSingle(d, sub, val, preset); err != nil {
				return err
			}
		case "scope":
			h.Scopes = d.RemainingArgs()
			if len(h.Scopes) == 0 {
				return subArgErr(d, sub)
			}
		case "resource":
			var val string
			if !d.AllArgs(&val) {
				return subArgErr(d, sub)
			}
			if !strings.Contains(val, "{") {
				if u, err := url.Parse(val); err != nil || !u.IsAbs() || u.Fragment != "" {
					return d.Errf("resource: '%s' is not an absolute URI without a fragment (RFC 8707)", val)
				}
			}
			h.Resources = append(h.Resources, val)
		case "param":
			var name, val string
			if !d.AllArgs(&name, &val) {
				return subArgErr(d, sub)
			}
			switch name {
			case "grant_type", "client_id", "client_secret":
				return d.Errf("param: '%s' is set by the handler; use its own subdirective", name)
			}
			if _, dup := h.Params[name]; dup {
				return d.Errf("param: '%s' given twice", name)
			}
			if h.Params == nil {
				h.Params = map[string]string{}
			}
			h.Params[name] = val
		case "header":
			var name, val string
			if !d.AllArgs(&name, &val) {
				return subArgErr(d, sub)
			}
			if !httpguts.ValidHeaderFieldName(name) {
				return d.Errf("header: '%s' is not a valid header name", name)
			}
			key := textproto.CanonicalMIMEHeaderKey(name)
			if _, dup := h.Headers[key]; dup {
				return d.Errf("header: '%s' given twice", key)
			}
			if h.Headers == nil {
				h.Headers = map[string]string{}
			}
			h.Headers[key] = val
		case "token_header":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return subArgErr(d, sub)
			}
			if !httpguts.ValidHeaderFieldName(args[0]) {
				return d.Errf("token_header: '%s' is not a valid header name", args[0])
			}
			h.TokenHeader = args[0]
			prefix := ""
			if len(args) == 2 {
				prefix = args[1]
			}
			h.TokenPrefix = &prefix
		default:
			return d.Errf("unrecognized subdirective '%s' (known: %s)", sub, strings.Join(subdirectives, ", "))
		}
	}

	// What a block must hold, checked here so the error names the line.
	switch {
	case h.ClientID == "":
		return d.Errf("oauth_bearer %s: missing subdirective 'client_id'", preset.Name)
	case h.ClientSecret == "":
		return d.Errf("oauth_bearer %s: missing subdirective 'client_secret'", preset.Name)
	case h.TokenURL == "" && len(preset.Environments) == 0:
		return d.Errf("oauth_bearer %s: missing subdirective 'token_url' (required without a provider preset)", preset.Name)
	case h.RedirectURI != "" && h.Grant != grantAuthorizationCode:
		return d.Errf("redirect_uri: only with 'grant authorization_code'")
	case h.RefreshToken != "" && h.Grant != grantRefreshToken:
		return d.Errf("refresh_token: only with 'grant refresh_token'")
	case h.Grant == grantRefreshToken && h.RefreshToken == "":
		return d.Errf("oauth_bearer %s: missing subdirective 'refresh_token' (required by grant refresh_token)", preset.Name)
	case h.Org != "" && hasKey(h.Headers, textproto.CanonicalMIMEHeaderKey(preset.OrgHeader)):
		return d.Errf("org: %s is also set with header", preset.OrgHeader)
	}
	if th := textproto.CanonicalMIMEHeaderKey(firstNonEmpty(h.TokenHeader, "Authorization")); hasKey(h.Headers, th) {
		return d.Errf("header: %s carries the token (token_header); it cannot also be an extra header", th)
	}
	return nil
}

var subdirectives = []string{"client_id", "client_secret", "token_url", "environment", "scope", "audience",
	"resource", "param", "request_format", "client_auth", "refresh_before", "default_lifetime", "timeout",
	"header", "org", "token_header", "ca_file", "upstream_401", "replay_max_body", "grant", "redirect_uri",
	"connect_path", "status_path", "disconnect_path", "authorize_url", "refresh_url", "revoke_url", "pkce",
	"refresh_token", "account"}

// setSingle stores a one-argument subdirective, checking what can be
// checked before placeholders are resolved.
func (h *Handler) setSingle(d *caddyfile.Dispenser, sub, val string, preset providers.Provider) error {
	switch sub {
	case "client_id":
		h.ClientID = val
	case "client_secret":
		h.ClientSecret = val
	case "token_url":
		if !strings.Contains(val, "{") {
			if err := checkTokenURL(val); err != nil {
				return d.Errf("token_url: %v", err)
			}
		}
		h.TokenURL = val
	case "environment":
		if _, err := preset.TokenURL(val); err != nil {
			return d.Errf("environment: %v", err)
		}
		h.Environment = val
	case "audience":
		h.Audience = val
	case "request_format":
		switch val {
		case providers.FormatJSON, providers.FormatForm, providers.FormatAuto:
		default:
			return d.Errf("request_format: '%s' is not json, form or auto", val)
		}
		h.RequestFormat = val
	case "client_auth":
		switch val {
		case providers.AuthBody, providers.AuthBasic:
		default:
			return d.Errf("client_auth: '%s' is not body or basic", val)
		}
		h.ClientAuth = val
	case "refresh_before", "default_lifetime", "timeout":
		dur, err := caddy.ParseDuration(val)
		if err != nil {
			return d.Errf("%s: bad duration '%s': %v", sub, val, err)
		}
		if dur <= 0 {
			return d.Errf("%s: duration must be positive, got '%s'", sub, val)
		}
		switch sub {
		case "refresh_before":
			h.RefreshBefore = caddy.Duration(dur)
		case "default_lifetime":
			h.DefaultLifetime = caddy.Duration(dur)
		default:
			h.Timeout = caddy.Duration(dur)
		}
	case "org":
		if preset.OrgHeader == "" {
			return d.Errf("org: provider '%s' has no organisation header; use header <name> <value>", preset.Name)
		}
		h.Org = val
	case "ca_file":
		h.CAFile = val
	case "upstream_401":
		switch val {
		case upstream401Retry, upstream401Invalidate, upstream401Off:
		default:
			return d.Errf("upstream_401: '%s' is not retry, invalidate or off", val)
		}
		h.Upstream401 = val
	case "replay_max_body":
		size, err := humanize.ParseBytes(val)
		if err != nil || size > 1<<30 {
			return d.Errf("replay_max_body: bad size '%s' (e.g. 64KiB, at most 1GiB)", val)
		}
		h.ReplayMaxBody = int64(size)
		if size == 0 {
			h.ReplayMaxBody = -1 // only requests without a body are replayed
		}
	case "grant":
		switch val {
		case grantClientCredentials, grantAuthorizationCode, grantRefreshToken:
		default:
			return d.Errf("grant: '%s' is not client_credentials, authorization_code or refresh_token", val)
		}
		h.Grant = val
	case "redirect_uri":
		if !strings.Contains(val, "{") {
			if _, err := deriveConsentPaths(val, "", "", ""); err != nil {
				return d.Err(err.Error())
			}
		}
		h.RedirectURI = val
	case "connect_path", "status_path", "disconnect_path":
		if !strings.HasPrefix(val, "/") {
			return d.Errf("%s: '%s' must start with /", sub, val)
		}
		*map[string]*string{"connect_path": &h.ConnectPath, "status_path": &h.StatusPath, "disconnect_path": &h.DisconnectPath}[sub] = val
	case "authorize_url", "refresh_url", "revoke_url":
		if !strings.Contains(val, "{") {
			if err := checkTokenURL(val); err != nil {
				return d.Errf("%s: %v", sub, err)
			}
		}
		*map[string]*string{"authorize_url": &h.AuthorizeURL, "refresh_url": &h.RefreshURL, "revoke_url": &h.RevokeURL}[sub] = val
	case "pkce":
		switch val {
		case "on", "off":
		default:
			return d.Errf("pkce: '%s' is not on or off", val)
		}
		on := val == "on"
		h.PKCE = &on
	case "refresh_token":
		h.RefreshToken = val
	case "account":
		if !strings.Contains(val, "{") {
			if err := checkAccount(val); err != nil {
				return d.Errf("account: %v", err)
			}
		}
		h.Account = val
	default:
		return fmt.Errorf("internal: no setter for %s", sub)
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

// subArgErr reports a wrong argument count naming the subdirective, not the
// last token read (which may be the client secret).
func subArgErr(d *caddyfile.Dispenser, sub string) error {
	return d.Errf("%s: wrong argument count or unexpected line ending", sub)
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }
