package oauthbearer

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// caddyfile.go: the oauth_bearer and oauth_bearer_consent directives. One
// parser, driven by the table of subdirectives (subdirectives.go), turns
// tokens into the handlers' fields and reports syntax (argument counts,
// durations, sizes, a subdirective given twice or to the other directive);
// the rules of what may be combined are the handlers' check methods
// (config.go, module.go, consent.go, and the table's own through
// checkTable), run at the end of each block so that a broken rule is
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

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax
// (the table in subdirectives.go; TestDocsParserSyntax keeps this in step):
//
//	oauth_bearer [<matcher>] [<provider>] {
//		# the provider and the client (as in oauth_bearer_consent)
//		client_id        <id>              # the OAuth client id
//		client_secret    <secret>          # use {env.X} or {file./path}
//		token_url        <url>             # required for the generic provider...
//		issuer           <url>             # ...or discovered from the issuer
//		environment      <name>            # bookable: production | sandbox
//		tenant|domain|authorization_server|base_url|realm <value>  # the preset's settings
//		client_auth      body|basic|client_secret_jwt|private_key_jwt|tls|none  # default: the preset's
//		private_key      <path|PEM>        # private_key_jwt, jwt_bearer
//		certificate      <path|PEM>        # x5t / x5t#S256 headers
//		key_id           <kid>             # the assertions' kid header
//		signing_alg      <alg>             # default from the key
//		assertion_audience <aud>           # default: the endpoint
//		client_assertion_file <path>       # an assertion made elsewhere, re-read each time
//		tls_client_cert  <cert> <key>      # client_auth tls (RFC 8705)
//		service_account_file <path|JSON>   # google: grant jwt_bearer
//		request_format   json|form|auto    # default: the preset's
//		timeout          <duration>        # one request to the provider; default 10s
//		default_lifetime <duration>        # when a response gives none; default 10m
//		ca_file          <path>            # extra CA certificates for the provider
//		refresh_url      <url>             # grants: where refresh tokens are redeemed
//		revoke_url       <url>             # grants: where they are revoked
//		encryption_key   <key...>          # what is stored: the first encrypts, all decrypt
//		dpop             <url>             # DPoP (RFC 9449): the API's base URL
//		dpop_key         <path|PEM>        # default: a P-256 key kept in the storage
//
//		# the token
//		grant            client_credentials|authorization_code|refresh_token|jwt_bearer  # default client_credentials (google: jwt_bearer)
//		scope            <scope...>        # client_credentials, jwt_bearer
//		audience         <value>           # client_credentials, jwt_bearer
//		resource         <uri>             # repeatable (RFC 8707)
//		param            <name> <value>    # repeatable
//		refresh_token    <token>           # grant refresh_token
//		subject          <sub>             # grant jwt_bearer: the user the token acts for
//		account          <name|placeholder> # grants: whose grant a request uses
//		refresh_before   <duration>        # default 60s
//		token_store      storage|memory    # default storage
//
//		# the upstream request
//		header           <name> <value>    # repeatable; request placeholders allowed
//		org              <id>              # eventtemple: X-API-ORG
//		token_header     <name> [<prefix>] # default Authorization, Bearer
//		upstream_401     retry|invalidate|off  # default retry
//		replay_max_body  <size>            # default 64KiB
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return parseDirective(d, onBearer, h)
}

// UnmarshalCaddyfile sets up the consent handler from Caddyfile tokens.
// Syntax (the table in subdirectives.go):
//
//	oauth_bearer_consent [<matcher>] [<provider>] {
//		# the provider and the client, as in oauth_bearer
//		client_id        <id>              # the OAuth client id
//		client_secret    <secret>          # use {env.X} or {file./path}
//		...
//		grant            authorization_code  # optional: the only grant it serves
//		redirect_uri     <url>             # required: the callback, as registered
//		authorize_url    <url>             # default: the preset's
//		scope            <scope...>        # asked for at the authorization endpoint
//		pkce             on|off            # default on (S256)
//		connect_path     <path>            # default: beside the callback
//		status_path      <path>            # default: beside the callback
//		disconnect_path  <path>            # default: beside the callback
//		account          <placeholder>     # bind the pages to the signed-in account
//		prompt           login|consent|select_account... # sent to the authorization endpoint
//		display_name     <text>            # the provider's name on the pages
//		par              auto|on|off       # pushed authorization requests; default auto
//		par_url          <url>             # default: discovered from the issuer
//	}
func (h *ConsentHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return parseDirective(d, onConsent, h)
}

// parseDirective reads one directive's block with the table: the optional
// provider argument, each subdirective on its line, then the handler's
// check, whose errors name the line of the subdirective at fault.
func parseDirective(d *caddyfile.Dispenser, in directive, cfg configurable) error {
	c := cfg.credentials()
	b, err := openBlock(d, &c.Provider)
	if err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		s, err := lookup(d, in, c, sub)
		if err != nil {
			return err
		}
		if err := b.record(sub, s.repeat); err != nil {
			return err
		}
		item, err := s.read(d, cfg)
		if err != nil {
			return err
		}
		if item != "" {
			b.items[sub+"\x00"+item] = d.Line()
		}
	}
	return b.check(cfg.check())
}

// block tracks the subdirectives of one directive: which were given, and
// on which line (for a repeatable one, also each item's line).
type block struct {
	d     *caddyfile.Dispenser
	name  string
	file  string
	line  int
	lines map[string]int
	items map[string]int // subdirective NUL item
}

// openBlock steps over the directive name and reads the optional provider
// argument.
func openBlock(d *caddyfile.Dispenser, provider *string) (*block, error) {
	d.Next() // the directive name
	b := &block{d: d, name: d.Val(), file: d.File(), line: d.Line(), lines: map[string]int{}, items: map[string]int{}}
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
func (b *block) record(sub string, repeatable bool) error {
	if _, seen := b.lines[sub]; seen && !repeatable {
		return b.d.Errf("subdirective '%s' given twice", sub)
	}
	b.lines[sub] = b.d.Line()
	return nil
}

// check reports a broken rule on the line of the subdirective at fault
// (of its item at fault, for a repeatable one), or of the directive when
// the fault is a missing subdirective.
func (b *block) check(err error) error {
	var ce *configError
	if err == nil || !errors.As(err, &ce) {
		return err
	}
	line, ok := b.items[ce.field+"\x00"+ce.item]
	if !ok {
		line, ok = b.lines[ce.field]
	}
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
