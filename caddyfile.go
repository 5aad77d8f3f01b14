package oauthbearer

import (
	"errors"
	"fmt"
	"net/textproto"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

// caddyfile.go: the oauth_bearer and oauth_bearer_consent directives. The
// parsers turn tokens into the handlers' fields and report syntax (argument
// counts, durations, sizes, a subdirective given twice); the rules of what
// may be combined are the handlers' check methods (config.go, module.go,
// consent.go), run at the end of each block so that a broken rule is
// reported on the line of the subdirective at fault.

func init() {
	httpcaddyfile.RegisterHandlerDirective("oauth_bearer", parseHandler)
	httpcaddyfile.RegisterHandlerDirective("oauth_bearer_consent", parseConsent)
	// Both right after request_header, the consent endpoints first: they
	// answer before an injector at the same level asks for a token, and
	// both run before a handle or route block holding reverse_proxy
	// (anchoring on reverse_proxy would sort them after such a block).
	httpcaddyfile.RegisterDirectiveOrder("oauth_bearer", httpcaddyfile.After, "request_header")
	httpcaddyfile.RegisterDirectiveOrder("oauth_bearer_consent", httpcaddyfile.After, "request_header")
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}

func parseConsent(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(ConsentHandler)
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	oauth_bearer [<matcher>] [<provider>] {
//		# the provider and the client (as in oauth_bearer_consent)
//		client_id        <id>
//		client_secret    <secret>          # use {env.X} or {file./path}
//		token_url        <url>             # required for the generic provider...
//		issuer           <url>             # ...or discovered from the issuer
//		environment      <name>            # bookable: production | sandbox
//		tenant|domain|authorization_server|base_url|realm <value>  # the preset's settings
//		client_auth      body|basic|client_secret_jwt|private_key_jwt|tls|none
//		private_key      <path|PEM>        # private_key_jwt, jwt_bearer
//		certificate      <path|PEM>        # x5t / x5t#S256 headers
//		key_id           <kid>
//		signing_alg      <alg>             # default from the key
//		assertion_audience <aud>           # default: the endpoint
//		client_assertion_file <path>       # an assertion made elsewhere, re-read each time
//		tls_client_cert  <cert> <key>      # client_auth tls (RFC 8705)
//		service_account_file <path|JSON>   # google: grant jwt_bearer
//		request_format   json|form|auto
//		timeout          <duration>
//		default_lifetime <duration>
//		ca_file          <path>
//		refresh_url      <url>             # grants
//		revoke_url       <url>             # grants
//		encryption_key   <key...>          # what is stored: the first encrypts, all decrypt
//
//		# the token
//		grant            client_credentials|jwt_bearer|authorization_code|refresh_token
//		scope            <scope...>        # client_credentials
//		audience         <value>           # client_credentials
//		resource         <uri>             # client_credentials; repeatable (RFC 8707)
//		param            <name> <value>    # client_credentials; repeatable
//		refresh_token    <token>           # grant refresh_token
//		subject          <sub>             # grant jwt_bearer: the user the token acts for (default: the client id)
//		account          <name|placeholder> # grants: whose grant a request uses
//		refresh_before   <duration>
//		token_store      storage|memory    # client_credentials; default storage
//
//		# the upstream request
//		header           <name> <value>    # repeatable; request placeholders allowed
//		org              <id>              # eventtemple: X-API-ORG
//		token_header     <name> [<prefix>]
//		upstream_401     retry|invalidate|off
//		replay_max_body  <size>            # default 64KiB
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	b, err := openBlock(d, &h.Provider)
	if err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if err := b.record(sub, "resource", "param", "header"); err != nil {
			return err
		}
		if ok, err := h.Credentials.unmarshalSub(d, sub); ok || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		switch sub {
		case "grant":
			err = oneArg(d, sub, &h.Grant)
		case "audience":
			err = oneArg(d, sub, &h.Audience)
		case "refresh_token":
			err = oneArg(d, sub, &h.RefreshToken)
		case "subject":
			err = oneArg(d, sub, &h.Subject)
		case "account":
			err = oneArg(d, sub, &h.Account)
		case "org":
			err = oneArg(d, sub, &h.Org)
		case "upstream_401":
			err = oneArg(d, sub, &h.Upstream401)
		case "token_store":
			err = oneArg(d, sub, &h.TokenStore)
		case "refresh_before":
			err = durationArg(d, sub, &h.RefreshBefore)
		case "scope":
			if h.Scopes = d.RemainingArgs(); len(h.Scopes) == 0 {
				err = argErr(d, sub)
			}
		case "resource":
			var r string
			if err = oneArg(d, sub, &r); err == nil {
				h.Resources = append(h.Resources, r)
				err = b.check(checkLoadTime(sub, "", r)) // on this line, not the last resource's
			}
		case "param":
			if err = h.unmarshalParam(d); err == nil {
				err = b.check(checkParamPlaceholders(h.Params)) // the earlier ones passed
			}
		case "header":
			err = h.unmarshalHeader(d)
		case "token_header":
			err = h.unmarshalTokenHeader(d)
		case "replay_max_body":
			err = h.unmarshalReplayMaxBody(d)
		case "redirect_uri", "authorize_url", "pkce", "connect_path", "status_path", "disconnect_path", "prompt", "display_name":
			err = d.Errf("%s: belongs to oauth_bearer_consent, the handler of the consent endpoints", sub)
		default:
			err = d.Errf("unrecognized subdirective '%s' (known: %s)", sub, strings.Join(handlerSubdirectives, ", "))
		}
		if err != nil {
			return err
		}
	}
	return b.check(h.check())
}

var handlerSubdirectives = append(slices.Clone(credentialSubdirectives), "grant", "scope", "audience", "resource",
	"param", "refresh_token", "subject", "account", "refresh_before", "token_store", "header", "org", "token_header", "upstream_401", "replay_max_body")

func (h *Handler) unmarshalParam(d *caddyfile.Dispenser) error {
	var name, val string
	if !d.AllArgs(&name, &val) {
		return argErr(d, "param")
	}
	if _, dup := h.Params[name]; dup {
		return d.Errf("param: '%s' given twice", name)
	}
	if h.Params == nil {
		h.Params = map[string]string{}
	}
	h.Params[name] = val
	return nil
}

func (h *Handler) unmarshalHeader(d *caddyfile.Dispenser) error {
	var name, val string
	if !d.AllArgs(&name, &val) {
		return argErr(d, "header")
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	if _, dup := h.Headers[key]; dup {
		return d.Errf("header: '%s' given twice", key)
	}
	if h.Headers == nil {
		h.Headers = map[string]string{}
	}
	h.Headers[key] = val
	return nil
}

// unmarshalTokenHeader: token_header <name> [<prefix>]; no prefix given
// means none, also for Authorization.
func (h *Handler) unmarshalTokenHeader(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return argErr(d, "token_header")
	}
	h.TokenHeader = args[0]
	prefix := ""
	if len(args) == 2 {
		prefix = args[1]
	}
	h.TokenPrefix = &prefix
	return nil
}

// unmarshalReplayMaxBody: a size such as 64KiB; 0 means that only requests
// without a body are replayed (JSON -1).
func (h *Handler) unmarshalReplayMaxBody(d *caddyfile.Dispenser) error {
	var val string
	if err := oneArg(d, "replay_max_body", &val); err != nil {
		return err
	}
	size, err := humanize.ParseBytes(val)
	if err != nil || size > 1<<30 {
		return d.Errf("replay_max_body: bad size '%s' (e.g. 64KiB, at most 1GiB)", val)
	}
	h.ReplayMaxBody = int64(size)
	if size == 0 {
		h.ReplayMaxBody = -1
	}
	return nil
}

// UnmarshalCaddyfile sets up the consent handler from Caddyfile tokens.
// Syntax:
//
//	oauth_bearer_consent [<matcher>] [<provider>] {
//		# the provider and the client, as in oauth_bearer
//		client_id        <id>
//		client_secret    <secret>
//		...
//		grant            authorization_code  # optional: the only grant it serves
//		redirect_uri     <url>               # required: the callback, as registered
//		authorize_url    <url>
//		scope            <scope...>
//		pkce             on|off              # default on (S256)
//		connect_path     <path>              # default: beside the callback
//		status_path      <path>
//		disconnect_path  <path>
//		account          <placeholder>       # bind the pages to the signed-in account
//		prompt           login|consent|select_account...
//		display_name     <text>              # the provider's name on the pages
//	}
func (h *ConsentHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	b, err := openBlock(d, &h.Provider)
	if err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if err := b.record(sub); err != nil {
			return err
		}
		if ok, err := h.Credentials.unmarshalSub(d, sub); ok || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		switch sub {
		case "grant":
			var g string
			if err = oneArg(d, sub, &g); err == nil && g != grantAuthorizationCode {
				err = d.Errf("grant: oauth_bearer_consent serves the authorization_code grant only, not '%s'", g)
			}
		case "redirect_uri":
			err = oneArg(d, sub, &h.RedirectURI)
		case "authorize_url":
			err = oneArg(d, sub, &h.AuthorizeURL)
		case "connect_path":
			err = oneArg(d, sub, &h.ConnectPath)
		case "status_path":
			err = oneArg(d, sub, &h.StatusPath)
		case "disconnect_path":
			err = oneArg(d, sub, &h.DisconnectPath)
		case "account":
			err = oneArg(d, sub, &h.Account)
		case "display_name":
			err = oneArg(d, sub, &h.DisplayName)
		case "prompt":
			var p []string
			if p = d.RemainingArgs(); len(p) == 0 {
				err = argErr(d, sub)
			}
			h.Prompt = strings.Join(p, " ")
		case "scope":
			if h.Scopes = d.RemainingArgs(); len(h.Scopes) == 0 {
				err = argErr(d, sub)
			}
		case "pkce":
			var v string
			if err = oneArg(d, sub, &v); err == nil {
				if v != "on" && v != "off" {
					err = d.Errf("pkce: '%s' is not on or off", v)
				}
				on := v == "on"
				h.PKCE = &on
			}
		case "header", "org", "token_header", "upstream_401", "replay_max_body", "refresh_before",
			"refresh_token", "audience", "resource", "param", "token_store":
			err = d.Errf("%s: belongs to oauth_bearer, the handler that injects tokens", sub)
		default:
			err = d.Errf("unrecognized subdirective '%s' (known: %s)", sub, strings.Join(consentSubdirectives, ", "))
		}
		if err != nil {
			return err
		}
	}
	return b.check(h.check())
}

var consentSubdirectives = append(slices.Clone(credentialSubdirectives), "grant", "redirect_uri", "authorize_url",
	"scope", "pkce", "connect_path", "status_path", "disconnect_path", "account", "prompt", "display_name")

var credentialSubdirectives = []string{"client_id", "client_secret", "token_url", "issuer", "environment", "client_auth",
	"private_key", "certificate", "key_id", "signing_alg", "assertion_audience", "client_assertion_file",
	"tls_client_cert", "service_account_file", "request_format", "timeout", "default_lifetime", "ca_file",
	"refresh_url", "revoke_url", "encryption_key", "tenant", "domain", "authorization_server", "base_url", "realm"}

// unmarshalSub parses one of the credential subdirectives shared by both
// directives; false when sub is not one of them.
func (c *Credentials) unmarshalSub(d *caddyfile.Dispenser, sub string) (bool, error) {
	strs := map[string]*string{"client_id": &c.ClientID, "client_secret": &c.ClientSecret, "token_url": &c.TokenURL,
		"environment": &c.Environment, "client_auth": &c.ClientAuth, "request_format": &c.RequestFormat,
		"ca_file": &c.CAFile, "refresh_url": &c.RefreshURL, "revoke_url": &c.RevokeURL, "issuer": &c.Issuer,
		"private_key": &c.PrivateKey, "certificate": &c.Certificate, "key_id": &c.KeyID, "signing_alg": &c.SigningAlg,
		"assertion_audience": &c.AssertionAudience, "client_assertion_file": &c.ClientAssertionFile,
		"service_account_file": &c.ServiceAccountFile}
	if p, ok := strs[sub]; ok {
		return true, oneArg(d, sub, p)
	}
	if p, _ := c.preset(); p.Name != "" {
		if _, ok := p.Param(sub); ok {
			var v string
			if err := oneArg(d, sub, &v); err != nil {
				return true, err
			}
			if c.ProviderParams == nil {
				c.ProviderParams = map[string]string{}
			}
			c.ProviderParams[sub] = v
			return true, nil
		}
	}
	switch sub {
	case "tls_client_cert":
		if !d.AllArgs(&c.TLSClientCert, &c.TLSClientKey) {
			return true, argErr(d, sub)
		}
		return true, nil
	case "encryption_key":
		if c.EncryptionKeys = d.RemainingArgs(); len(c.EncryptionKeys) == 0 {
			return true, argErr(d, sub)
		}
		return true, nil
	case "timeout":
		return true, durationArg(d, sub, &c.Timeout)
	case "default_lifetime":
		return true, durationArg(d, sub, &c.DefaultLifetime)
	}
	return false, nil
}

// block tracks the subdirectives of one directive: which were given, and
// on which line.
type block struct {
	d     *caddyfile.Dispenser
	name  string
	file  string
	line  int
	lines map[string]int
}

// openBlock steps over the directive name and reads the optional provider
// argument.
func openBlock(d *caddyfile.Dispenser, provider *string) (*block, error) {
	d.Next() // the directive name
	b := &block{d: d, name: d.Val(), file: d.File(), line: d.Line(), lines: map[string]int{}}
	if d.NextArg() {
		*provider = d.Val()
		b.lines["provider"] = d.Line()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return b, nil
}

// record notes a subdirective's line; one that is not repeatable may be
// given once.
func (b *block) record(sub string, repeatable ...string) error {
	if _, seen := b.lines[sub]; seen && !slices.Contains(repeatable, sub) {
		return b.d.Errf("subdirective '%s' given twice", sub)
	}
	b.lines[sub] = b.d.Line()
	return nil
}

// check reports a broken rule on the line of the subdirective at fault, or
// of the directive when the fault is a missing subdirective.
func (b *block) check(err error) error {
	var ce *configError
	if err == nil || !errors.As(err, &ce) {
		return err
	}
	line, ok := b.lines[ce.field]
	if !ok {
		line = b.line
	}
	return fmt.Errorf("%s %s, at %s:%d", b.name, err, b.file, line)
}

// oneArg reads the single argument of sub.
func oneArg(d *caddyfile.Dispenser, sub string, dst *string) error {
	if !d.AllArgs(dst) {
		return argErr(d, sub)
	}
	return nil
}

// durationArg reads a positive duration.
func durationArg(d *caddyfile.Dispenser, sub string, dst *caddy.Duration) error {
	var val string
	if err := oneArg(d, sub, &val); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(val)
	if err != nil {
		return d.Errf("%s: bad duration '%s': %v", sub, val, err)
	}
	if dur <= 0 {
		return d.Errf("%s: duration must be positive, got '%s'", sub, val)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// argErr reports a wrong argument count naming the subdirective, not the
// last token read (which may be the client secret).
func argErr(d *caddyfile.Dispenser, sub string) error {
	return d.Errf("%s: wrong argument count or unexpected line ending", sub)
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*ConsentHandler)(nil)
)
