package oauthbearer

import (
	"fmt"
	"net/textproto"
	"reflect"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// subdirectives.go: the one table of the subdirectives of oauth_bearer and
// oauth_bearer_consent. A row says how a subdirective is written, which
// directive takes it, which grants accept it, the JSON field it sets and
// what it is for. Read from it:
//   - the Caddyfile parser of both directives (caddyfile.go): the argument
//     shape, a subdirective given twice, where one belongs, what is known;
//   - the rules that hold for JSON and Caddyfile alike (checkTable, run by
//     the handlers' check methods): an enumeration's values, and the
//     grants that accept a field;
//   - the docs tests (docs_lists_test.go): the parsers' doc comments, the
//     reference (docs/caddyfile.md) and the JSON fields' doc comments list
//     what the table lists.
//
// A preset's own settings (entra's tenant, okta's domain...) are not rows:
// they come from providers/, and are parsed into provider_params.
//
// Adding a subdirective is one row, after giving the handler (or
// Credentials, for one that both directives take) its field with a JSON
// tag and a doc comment. The field's type gives the argument shape:
//
//	string             <value>          once
//	caddy.Duration     <duration>       once; positive
//	[]string           <value...>       once, one or more values; with
//	                                    repeat: one value a line, any number of lines
//	map[string]string  <name> <value>   repeatable, each name once
//
// Any other shape (two fields from one line, a size, on|off) names a parse
// function. values makes the field an enumeration; grants limits the
// grants of oauth_bearer that accept it. Then the tests say what else to
// write: the line in the parser's doc comment (caddyfile.go;
// TestDocsParserSyntax prints the lines as the table gives them), the
// syntax summary's line and a row in the reference's tables
// (docs/caddyfile.md; TestDocsReferenceTables), the field's doc comment naming its values and
// grants (TestDocsJSONFieldComments), and whether the field decides which
// token is shared (TestConfigSharingKeyCoversEveryField: a case that
// changes it, or the reason it does not matter). TestCaddyfileTableRows
// and TestCaddyfileGrantRules check the row itself.

// directive is a set of the two directives.
type directive uint8

const (
	onBearer  directive = 1 << iota // oauth_bearer
	onConsent                       // oauth_bearer_consent
	onBoth    = onBearer | onConsent
)

func (d directive) String() string {
	switch d {
	case onBearer:
		return "oauth_bearer"
	case onConsent:
		return "oauth_bearer_consent"
	}
	return "oauth_bearer and oauth_bearer_consent"
}

// role names the directive for a subdirective given to the other one.
func (d directive) role() string {
	switch d {
	case onBearer:
		return "oauth_bearer, the handler that injects tokens"
	case onConsent:
		return "oauth_bearer_consent, the handler of the consent endpoints"
	}
	return d.String()
}

// subdirective is one row of the table.
type subdirective struct {
	name   string    // as written in the Caddyfile
	in     directive // the directives that take it
	args   string    // its arguments as the docs write them; an enumeration's values when left empty
	field  string    // the JSON field it sets; "" for none
	values []string  // an enumeration: the values the field accepts
	grants []string  // the grants of oauth_bearer that accept it; nil: every one
	repeat bool      // may be given on more than one line
	// parse reads the arguments when the field's type does not say how;
	// item is the value a repeatable line adds, for errors about it.
	parse func(d *caddyfile.Dispenser, cfg configurable) (item string, err error)
	hint  string // follows the refusal when the grant does not accept it
	doc   string // what it is for, one short line
}

// The grants, and the two kinds the rules name.
var (
	grantTypes    = []string{grantClientCredentials, grantAuthorizationCode, grantRefreshToken, grantJWTBearer}
	machineGrants = []string{grantClientCredentials, grantJWTBearer}
	personGrants  = []string{grantAuthorizationCode, grantRefreshToken}
)

// Enumerations of oauth_bearer.
var (
	tokenStores  = []string{tokenStoreStorage, tokenStoreMemory}
	upstream401s = []string{upstream401Retry, upstream401Invalidate, upstream401Off}
)

// subdirectives is the table. The order is the docs' order.
var subdirectives = []subdirective{
	// The provider and the client: both directives, fields of Credentials.
	{name: "client_id", in: onBoth, args: "<id>", field: "client_id", doc: "the OAuth client id"},
	{name: "client_secret", in: onBoth, args: "<secret>", field: "client_secret", doc: "use {env.X} or {file./path}"},
	{name: "token_url", in: onBoth, args: "<url>", field: "token_url", doc: "required for the generic provider..."},
	{name: "issuer", in: onBoth, args: "<url>", field: "issuer", doc: "...or discovered from the issuer"},
	{name: "environment", in: onBoth, args: "<name>", field: "environment", doc: "bookable: production | sandbox"},
	{name: "client_auth", in: onBoth, field: "client_auth", values: providers.ClientAuthMethods, doc: "default: the preset's"},
	{name: "private_key", in: onBoth, args: "<path|PEM>", field: "private_key", doc: "private_key_jwt, jwt_bearer"},
	{name: "certificate", in: onBoth, args: "<path|PEM>", field: "certificate", doc: "x5t / x5t#S256 headers"},
	{name: "key_id", in: onBoth, args: "<kid>", field: "key_id", doc: "the assertions' kid header"},
	{name: "signing_alg", in: onBoth, args: "<alg>", field: "signing_alg", doc: "default from the key"},
	{name: "assertion_audience", in: onBoth, args: "<aud>", field: "assertion_audience", doc: "default: the endpoint"},
	{name: "client_assertion_file", in: onBoth, args: "<path>", field: "client_assertion_file", doc: "an assertion made elsewhere, re-read each time"},
	{name: "tls_client_cert", in: onBoth, args: "<cert> <key>", field: "tls_client_cert", parse: readTLSClientCert, doc: "client_auth tls (RFC 8705)"},
	{name: "service_account_file", in: onBoth, args: "<path|JSON>", field: "service_account_file", grants: []string{grantJWTBearer}, doc: "google: grant jwt_bearer"},
	{name: "request_format", in: onBoth, field: "request_format", values: providers.Formats, doc: "default: the preset's"},
	{name: "timeout", in: onBoth, args: "<duration>", field: "timeout", doc: "one request to the provider; default 10s"},
	{name: "default_lifetime", in: onBoth, args: "<duration>", field: "default_lifetime", doc: "when a response gives none; default 10m"},
	{name: "ca_file", in: onBoth, args: "<path>", field: "ca_file", doc: "extra CA certificates for the provider"},
	{name: "refresh_url", in: onBoth, args: "<url>", field: "refresh_url", grants: personGrants, doc: "grants: where refresh tokens are redeemed"},
	{name: "revoke_url", in: onBoth, args: "<url>", field: "revoke_url", grants: personGrants, doc: "grants: where they are revoked"},
	{name: "encryption_key", in: onBoth, args: "<key...>", field: "encryption_keys", doc: "what is stored: the first encrypts, all decrypt"},
	{name: "dpop", in: onBoth, args: "<url>", field: "dpop", doc: "DPoP (RFC 9449): the API's base URL"},
	{name: "dpop_key", in: onBoth, args: "<path|PEM>", field: "dpop_key", doc: "default: a P-256 key kept in the storage"},

	// oauth_bearer: the token.
	{name: "grant", in: onBearer, field: "grant", values: grantTypes, doc: "default client_credentials (google: jwt_bearer)"},
	{name: "scope", in: onBearer, args: "<scope...>", field: "scopes", grants: machineGrants,
		hint: "; a grant's scopes are asked for by oauth_bearer_consent", doc: "client_credentials, jwt_bearer"},
	{name: "audience", in: onBearer, args: "<value>", field: "audience", grants: machineGrants, doc: "client_credentials, jwt_bearer"},
	{name: "resource", in: onBearer, args: "<uri>", field: "resources", grants: machineGrants, repeat: true, doc: "repeatable (RFC 8707)"},
	{name: "param", in: onBearer, args: "<name> <value>", field: "params", grants: machineGrants, repeat: true, doc: "repeatable"},
	{name: "refresh_token", in: onBearer, args: "<token>", field: "refresh_token", grants: []string{grantRefreshToken}, doc: "grant refresh_token"},
	{name: "subject", in: onBearer, args: "<sub>", field: "subject", grants: []string{grantJWTBearer}, doc: "grant jwt_bearer: the user the token acts for"},
	{name: "account", in: onBearer, args: "<name|placeholder>", field: "account", grants: personGrants, doc: "grants: whose grant a request uses"},
	{name: "refresh_before", in: onBearer, args: "<duration>", field: "refresh_before", doc: "default 60s"},
	{name: "token_store", in: onBearer, field: "token_store", values: tokenStores, doc: "default storage"},

	// oauth_bearer: the upstream request.
	{name: "header", in: onBearer, args: "<name> <value>", field: "headers", repeat: true, parse: readHeader, doc: "repeatable; request placeholders allowed"},
	{name: "org", in: onBearer, args: "<id>", field: "org", doc: "eventtemple: X-API-ORG"},
	{name: "token_header", in: onBearer, args: "<name> [<prefix>]", field: "token_header", parse: readTokenHeader, doc: "default Authorization, Bearer"},
	{name: "upstream_401", in: onBearer, field: "upstream_401", values: upstream401s, doc: "default retry"},
	{name: "replay_max_body", in: onBearer, args: "<size>", field: "replay_max_body", parse: readReplayMaxBody, doc: "default 64KiB"},

	// oauth_bearer_consent: the consent endpoints.
	{name: "grant", in: onConsent, args: grantAuthorizationCode, parse: readConsentGrant, doc: "optional: the only grant it serves"},
	{name: "redirect_uri", in: onConsent, args: "<url>", field: "redirect_uri", doc: "required: the callback, as registered"},
	{name: "authorize_url", in: onConsent, args: "<url>", field: "authorize_url", doc: "default: the preset's"},
	{name: "scope", in: onConsent, args: "<scope...>", field: "scopes", doc: "asked for at the authorization endpoint"},
	{name: "pkce", in: onConsent, args: "on|off", field: "pkce", parse: readPKCE, doc: "default on (S256)"},
	{name: "connect_path", in: onConsent, args: "<path>", field: "connect_path", doc: "default: beside the callback"},
	{name: "status_path", in: onConsent, args: "<path>", field: "status_path", doc: "default: beside the callback"},
	{name: "disconnect_path", in: onConsent, args: "<path>", field: "disconnect_path", doc: "default: beside the callback"},
	{name: "account", in: onConsent, args: "<placeholder>", field: "account", doc: "bind the pages to the signed-in account"},
	{name: "prompt", in: onConsent, args: "login|consent|select_account...", field: "prompt", parse: readPrompt, doc: "sent to the authorization endpoint"},
	{name: "display_name", in: onConsent, args: "<text>", field: "display_name", doc: "the provider's name on the pages"},
	{name: "par", in: onConsent, field: "par", values: parModes, doc: "pushed authorization requests; default auto"},
	{name: "par_url", in: onConsent, args: "<url>", field: "par_url", doc: "default: discovered from the issuer"},
}

// configurable is a handler the table configures: *Handler or
// *ConsentHandler.
type configurable interface {
	credentials() *Credentials
	check() error
}

func (c *Credentials) credentials() *Credentials { return c }

// jsonField is where a JSON field is in a handler's struct.
type jsonField struct {
	index  []int
	direct bool // the struct's own, not its embedded Credentials'
}

var (
	durationType = reflect.TypeFor[caddy.Duration]()
	// directiveOf is the directive of each struct the table configures
	// (Credentials: both).
	directiveOf = map[reflect.Type]directive{
		reflect.TypeFor[Handler]():        onBearer,
		reflect.TypeFor[ConsentHandler](): onConsent,
		reflect.TypeFor[Credentials]():    onBoth,
	}
	// fieldsOf indexes the JSON fields of each of those structs.
	fieldsOf = map[reflect.Type]map[string]jsonField{}
)

// init indexes the structs and checks the table against them: a mistake
// in a row is a panic at start, so that every test run finds it.
func init() {
	for t := range directiveOf {
		fieldsOf[t] = indexJSONFields(t)
	}
	creds := fieldsOf[reflect.TypeFor[Credentials]()]
	seen := map[string]bool{}
	for i := range subdirectives {
		s := &subdirectives[i]
		if s.args == "" {
			s.args = strings.Join(s.values, "|")
		}
		for t, in := range directiveOf {
			if in == onBoth || s.in&in == 0 {
				continue
			}
			key := in.String() + " " + s.name
			if seen[key] {
				panic("subdirectives: " + key + " has two rows")
			}
			seen[key] = true
			if s.field == "" {
				if s.parse == nil {
					panic("subdirectives: " + key + " sets no field and has no parse function")
				}
				continue
			}
			f, ok := fieldsOf[t][s.field]
			if !ok {
				panic(fmt.Sprintf("subdirectives: %s sets %q, which %s has no field for", key, s.field, t.Name()))
			}
			if _, inCreds := creds[s.field]; inCreds != (s.in == onBoth) {
				panic("subdirectives: " + key + ": the rows of both directives, and only those, set fields of Credentials")
			}
			ft := t.FieldByIndex(f.index).Type
			if s.parse == nil && !readableType(ft) {
				panic(fmt.Sprintf("subdirectives: %s: a field of type %s needs a parse function", key, ft))
			}
			if len(s.values) > 0 && ft.Kind() != reflect.String {
				panic("subdirectives: " + key + ": an enumeration sets a string")
			}
			if ft.Kind() == reflect.Map && !s.repeat || s.repeat && ft.Kind() != reflect.Map && ft.Kind() != reflect.Slice {
				panic("subdirectives: " + key + ": a map is repeatable, and only a map or a []string can be")
			}
		}
		for _, g := range s.grants {
			if !slices.Contains(grantTypes, g) {
				panic("subdirectives: " + s.name + ": unknown grant " + g)
			}
		}
	}
}

// indexJSONFields finds the JSON fields of t, those of an embedded struct
// too.
func indexJSONFields(t reflect.Type) map[string]jsonField {
	out := map[string]jsonField{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			for name, sub := range indexJSONFields(f.Type) {
				out[name] = jsonField{index: append([]int{i}, sub.index...)}
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && name != "" && name != "-" {
			out[name] = jsonField{index: []int{i}, direct: true}
		}
	}
	return out
}

// readableType: the types whose argument shape the table's reader knows.
func readableType(t reflect.Type) bool {
	switch {
	case t == durationType, t.Kind() == reflect.String:
		return true
	case t.Kind() == reflect.Slice:
		return t.Elem().Kind() == reflect.String
	case t.Kind() == reflect.Map:
		return t.Key().Kind() == reflect.String && t.Elem().Kind() == reflect.String
	}
	return false
}

// lookup finds the row of sub in directive in. A preset's setting is a row
// made for it (any preset's: check says which provider has it). Otherwise
// the error says where sub belongs, or what is known.
func lookup(d *caddyfile.Dispenser, in directive, c *Credentials, sub string) (*subdirective, error) {
	for i := range subdirectives {
		if s := &subdirectives[i]; s.name == sub && s.in&in != 0 {
			return s, nil
		}
	}
	if len(presetsWithSetting(sub)) > 0 {
		return &subdirective{name: sub, in: onBoth, args: "<value>", field: "provider_params", parse: readPresetSetting}, nil
	}
	for _, s := range subdirectives {
		if s.name == sub {
			return nil, d.Errf("%s: belongs to %s", sub, s.in.role())
		}
	}
	var known []string
	for _, s := range subdirectives {
		if s.in&in != 0 && !slices.Contains(known, s.name) {
			known = append(known, s.name)
		}
	}
	if p, err := c.preset(); err == nil {
		known = append(known, p.ParamNames()...)
	}
	return nil, d.Errf("unrecognized subdirective '%s' (known: %s)", sub, strings.Join(known, ", "))
}

// presetsWithSetting lists the presets that have a setting of that name.
func presetsWithSetting(name string) []string {
	var out []string
	for _, n := range providers.Names() {
		if p, _ := providers.Lookup(n); slices.Contains(p.ParamNames(), name) {
			out = append(out, n)
		}
	}
	return out
}

// read parses the arguments of the dispenser's line into cfg.
func (s *subdirective) read(d *caddyfile.Dispenser, cfg configurable) (item string, err error) {
	if s.parse != nil {
		return s.parse(d, cfg)
	}
	v := reflect.ValueOf(cfg).Elem()
	f := v.FieldByIndex(fieldsOf[v.Type()][s.field].index)
	switch {
	case f.Type() == durationType:
		var dur caddy.Duration
		if err = durationArg(d, s.name, &dur); err == nil {
			f.SetInt(int64(dur))
		}
	case f.Kind() == reflect.String:
		var val string
		if err = oneArg(d, s.name, &val); err == nil {
			f.SetString(val)
		}
	case f.Kind() == reflect.Slice && s.repeat:
		if err = oneArg(d, s.name, &item); err == nil {
			f.Set(reflect.Append(f, reflect.ValueOf(item)))
		}
	case f.Kind() == reflect.Slice:
		args := d.RemainingArgs()
		if len(args) == 0 {
			return "", argErr(d, s.name)
		}
		f.Set(reflect.ValueOf(args))
	case f.Kind() == reflect.Map:
		return readNamed(d, s.name, f.Addr().Interface().(*map[string]string), nil)
	}
	return item, err
}

// readNamed reads <name> <value> into *m, each name once (as canon writes
// it, when given); item is the name.
func readNamed(d *caddyfile.Dispenser, sub string, m *map[string]string, canon func(string) string) (string, error) {
	var name, val string
	if !d.AllArgs(&name, &val) {
		return "", argErr(d, sub)
	}
	if canon != nil {
		name = canon(name)
	}
	if _, dup := (*m)[name]; dup {
		return "", d.Errf("%s: '%s' given twice", sub, name)
	}
	if *m == nil {
		*m = map[string]string{}
	}
	(*m)[name] = val
	return name, nil
}

// readPresetSetting: a preset's setting, <value>, into provider_params.
func readPresetSetting(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	name := d.Val()
	var val string
	if err := oneArg(d, name, &val); err != nil {
		return "", err
	}
	c := cfg.credentials()
	if c.ProviderParams == nil {
		c.ProviderParams = map[string]string{}
	}
	c.ProviderParams[name] = val
	return "", nil
}

// readTLSClientCert: tls_client_cert <cert> <key>.
func readTLSClientCert(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	c := cfg.credentials()
	if !d.AllArgs(&c.TLSClientCert, &c.TLSClientKey) {
		return "", argErr(d, "tls_client_cert")
	}
	return "", nil
}

// readHeader: header <name> <value>, the name canonical.
func readHeader(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	return readNamed(d, "header", &cfg.(*Handler).Headers, textproto.CanonicalMIMEHeaderKey)
}

// readTokenHeader: token_header <name> [<prefix>]; no prefix given means
// none, also for Authorization.
func readTokenHeader(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	h := cfg.(*Handler)
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return "", argErr(d, "token_header")
	}
	h.TokenHeader = args[0]
	prefix := ""
	if len(args) == 2 {
		prefix = args[1]
	}
	h.TokenPrefix = &prefix
	return "", nil
}

// readReplayMaxBody: a size such as 64KiB; 0 means that only requests
// without a body are replayed (JSON -1).
func readReplayMaxBody(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	h := cfg.(*Handler)
	var val string
	if err := oneArg(d, "replay_max_body", &val); err != nil {
		return "", err
	}
	size, err := humanize.ParseBytes(val)
	if err != nil || size > 1<<30 {
		return "", d.Errf("replay_max_body: bad size '%s' (e.g. 64KiB, at most 1GiB)", val)
	}
	h.ReplayMaxBody = int64(size)
	if size == 0 {
		h.ReplayMaxBody = -1
	}
	return "", nil
}

// readConsentGrant: grant authorization_code, the only one the consent
// handler serves; it sets nothing.
func readConsentGrant(d *caddyfile.Dispenser, _ configurable) (string, error) {
	var g string
	if err := oneArg(d, "grant", &g); err != nil {
		return "", err
	}
	if g != grantAuthorizationCode {
		return "", d.Errf("grant: oauth_bearer_consent serves the authorization_code grant only, not '%s'", g)
	}
	return "", nil
}

// readPrompt: prompt <value...>, sent space-separated.
func readPrompt(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	p := d.RemainingArgs()
	if len(p) == 0 {
		return "", argErr(d, "prompt")
	}
	cfg.(*ConsentHandler).Prompt = strings.Join(p, " ")
	return "", nil
}

// readPKCE: pkce on|off.
func readPKCE(d *caddyfile.Dispenser, cfg configurable) (string, error) {
	var v string
	if err := oneArg(d, "pkce", &v); err != nil {
		return "", err
	}
	if v != "on" && v != "off" {
		return "", d.Errf("pkce: '%s' is not on or off", v)
	}
	on := v == "on"
	cfg.(*ConsentHandler).PKCE = &on
	return "", nil
}

// checkTable applies the table's rules to the fields cfg holds itself (a
// *Credentials, or a *Handler's own): an enumeration's value must be one
// of its values, and a field the grant does not accept must be left out.
// Rows are checked in the table's order, so that a bad grant is reported
// before the fields it would refuse.
func checkTable(cfg any, grant string) error {
	v := reflect.ValueOf(cfg).Elem()
	in, fields := directiveOf[v.Type()], fieldsOf[v.Type()]
	for _, s := range subdirectives {
		f, ok := fields[s.field]
		if s.in&in == 0 || !ok || !f.direct {
			continue
		}
		fv := v.FieldByIndex(f.index)
		if fv.IsZero() {
			continue
		}
		if len(s.values) > 0 {
			if err := oneOf(s.name, fv.String(), s.values...); err != nil {
				return err
			}
		}
		if s.grants != nil && !slices.Contains(s.grants, grant) {
			return errField(s.name, "only for %s, not %s%s", grantsPhrase(s.grants), grant, s.hint)
		}
	}
	return nil
}

// grantsPhrase names grants in a sentence: "grant jwt_bearer", "the
// client_credentials and jwt_bearer grants".
func grantsPhrase(grants []string) string {
	if len(grants) == 1 {
		return "grant " + grants[0]
	}
	return "the " + strings.Join(grants[:len(grants)-1], ", ") + " and " + grants[len(grants)-1] + " grants"
}
