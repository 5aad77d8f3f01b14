// Package providers holds the presets of the oauth_bearer handler: what each
// API provider's token endpoint expects on the wire. A preset is plain data;
// adding one is one small file that calls register in its init function.
package providers

import (
	"fmt"
	"sort"
	"strings"
)

// Request formats of a token request body.
const (
	FormatForm = "form" // application/x-www-form-urlencoded (RFC 6749)
	FormatJSON = "json" // application/json, as many providers' docs show
	FormatAuto = "auto" // the preferred format first, the other one once on 400 invalid_request or 415
)

// Formats lists the request formats, as the docs give them.
var Formats = []string{FormatJSON, FormatForm, FormatAuto}

// Client authentication methods.
const (
	AuthBody  = "body"  // client_secret_post: client_id and client_secret in the body (RFC 6749 2.3.1)
	AuthBasic = "basic" // client_secret_basic: HTTP Basic, each part form-encoded first (RFC 6749 2.3.1)
	// AuthClientSecretJWT: a JWT signed (HS256) with the client secret (RFC 7523, OIDC).
	AuthClientSecretJWT = "client_secret_jwt"
	// AuthPrivateKeyJWT: a JWT signed with the client's private key, or an
	// assertion made by someone else (RFC 7523, OIDC).
	AuthPrivateKeyJWT = "private_key_jwt"
	AuthTLS           = "tls"  // mutual TLS with a client certificate (RFC 8705)
	AuthNone          = "none" // client_id only: a public client
)

// ClientAuthMethods lists the client authentication methods, as the docs
// give them.
var ClientAuthMethods = []string{AuthBody, AuthBasic, AuthClientSecretJWT, AuthPrivateKeyJWT, AuthTLS, AuthNone}

// Grants a preset may default to.
const (
	GrantJWTBearer = "jwt_bearer" // RFC 7523 2.1: the signed assertion is the grant
)

// Param is a setting of a preset that its endpoints are built from (a
// tenant, a domain, a realm), given with the subdirective of its name.
type Param struct {
	Name     string
	Default  string // "" and Required: must be given
	Required bool
	Doc      string
}

// Provider is a preset: defaults for one API provider. Every value can be
// overridden in the handler's configuration.
type Provider struct {
	// Name is what users write after the directive: oauth_bearer <name>.
	Name string
	// Title is the human name used in docs and messages.
	Title string
	// Environments maps an environment name to its token URL. A provider
	// with one endpoint has a single entry named by DefaultEnvironment.
	Environments map[string]string
	// DefaultEnvironment is the environment used when none is configured.
	DefaultEnvironment string
	// AuthorizeURL and RevokeURL are the provider's other endpoints, where
	// it has them (used by the authorization-code grant).
	AuthorizeURL string
	RevokeURL    string
	// RefreshURL is where refresh tokens are redeemed, when not the token URL.
	RefreshURL string
	// RefreshBearer sends the refresh token as Authorization: Bearer too.
	RefreshBearer bool
	// ScopeSeparator joins scopes in the authorize URL (default a space).
	ScopeSeparator string
	// RequestFormat is the token request body format the provider's docs show.
	RequestFormat string
	// PreferredFormat is the first format tried when RequestFormat is auto.
	PreferredFormat string
	// ClientAuth is how the client authenticates at the token endpoint.
	ClientAuth string
	// Audience is the default audience parameter (Auth0-style providers).
	Audience string
	// RequiresAudience makes a configuration without audience an error.
	RequiresAudience bool
	// OrgHeader is the upstream header set by the `org` shorthand, if any.
	OrgHeader string

	// Params are the preset's own settings; the templates below use them
	// as {name}.
	Params []Param
	// TokenURLTemplate, AuthorizeURLTemplate and RevokeURLTemplate build
	// the endpoints from Params, for providers whose endpoints name a
	// tenant, a domain or a realm.
	TokenURLTemplate     string
	AuthorizeURLTemplate string
	RevokeURLTemplate    string
	// Grant is the grant used when none is configured (google: jwt_bearer).
	Grant string
}

// Param returns the preset's setting of that name.
func (p Provider) Param(name string) (Param, bool) {
	for _, pp := range p.Params {
		if pp.Name == name {
			return pp, true
		}
	}
	return Param{}, false
}

// ParamNames lists the preset's settings.
func (p Provider) ParamNames() []string {
	names := make([]string, len(p.Params))
	for i, pp := range p.Params {
		names[i] = pp.Name
	}
	return names
}

// MissingParamError is a template's setting that was not given.
type MissingParamError struct{ Provider, Name string }

func (e *MissingParamError) Error() string { return "provider " + e.Provider + " needs " + e.Name }

// Expand fills a template with the settings given (or their defaults; a
// trailing slash dropped). A required setting missing is a
// *MissingParamError.
func (p Provider) Expand(template string, given map[string]string) (string, error) {
	if template == "" {
		return "", nil
	}
	out := template
	for _, pp := range p.Params {
		v := strings.TrimSuffix(given[pp.Name], "/")
		if v == "" {
			v = pp.Default
		}
		if v == "" && strings.Contains(template, "{"+pp.Name+"}") {
			return "", &MissingParamError{Provider: p.Name, Name: pp.Name}
		}
		out = strings.ReplaceAll(out, "{"+pp.Name+"}", v)
	}
	return out, nil
}

// TokenURL returns the token URL of the named environment, or of the
// default environment when env is empty.
func (p Provider) TokenURL(env string) (string, error) {
	if env == "" {
		env = p.DefaultEnvironment
	}
	if u, ok := p.Environments[env]; ok {
		return u, nil
	}
	if len(p.Environments) == 0 {
		if p.TokenURLTemplate != "" {
			return "", fmt.Errorf("provider %q builds its token URL from %s", p.Name, strings.Join(p.ParamNames(), ", "))
		}
		return "", fmt.Errorf("provider %q has no built-in token URL: set token_url", p.Name)
	}
	return "", fmt.Errorf("provider %q has no environment %q (known: %s)", p.Name, env, strings.Join(p.EnvironmentNames(), ", "))
}

// EnvironmentNames lists the provider's environments, sorted.
func (p Provider) EnvironmentNames() []string {
	names := make([]string, 0, len(p.Environments))
	for n := range p.Environments {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var registry = map[string]Provider{}

func register(p Provider) {
	if p.ScopeSeparator == "" {
		p.ScopeSeparator = " "
	}
	if _, dup := registry[p.Name]; dup {
		panic("providers: duplicate preset " + p.Name)
	}
	registry[p.Name] = p
}

// Lookup returns the preset with the given name.
func Lookup(name string) (Provider, bool) {
	p, ok := registry[name]
	return p, ok
}

// Names lists the known presets, sorted.
func Names() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Generic is the name of the preset used when none is named.
const Generic = "generic"
