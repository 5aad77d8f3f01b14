package oauthbearer

import (
	"fmt"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// placeholders.go: values that are fixed when the configuration loads.
//
// A token request is made for the credential set, not for a request: one
// token serves every request that shares the set, and it is fetched ahead
// of time, in the background, or by another instance. Its values (scope,
// audience, resource, param, subject), the client's identity and the
// preset's settings can therefore only hold placeholders resolved at load,
// {env.*} and {file.*}; any other one (a request placeholder such as
// {http.request.header.X}, or {time.*}) would be sent literally, so it is
// refused, naming the subdirective and the placeholder. A literal brace is
// written \{.

// laterPlaceholder returns the first placeholder of raw that is not
// resolved at load ({env.*} and {file.*} are), or "" when it has none.
// Placeholders are found as Caddy's replacer finds them (escaped braces
// are not); a brace pair that cannot be a placeholder (JSON such as
// {"a":1}) is not one.
func laterPlaceholder(raw string) string {
	if !strings.Contains(raw, "{") {
		return ""
	}
	found := ""
	r := caddy.NewEmptyReplacer()
	r.Map(func(key string) (any, bool) {
		if found == "" && placeholderKey(key) && !strings.HasPrefix(key, "env.") && !strings.HasPrefix(key, "file.") {
			found = "{" + key + "}"
		}
		return nil, false
	})
	r.ReplaceKnown(raw, "")
	return found
}

// placeholderKey reports whether key can name a placeholder: it starts
// with a letter and holds no space, quote or comma.
func placeholderKey(key string) bool {
	if key == "" || !('a' <= key[0] && key[0] <= 'z' || 'A' <= key[0] && key[0] <= 'Z') {
		return false
	}
	return !strings.ContainsAny(key, " \t\r\n\"',")
}

// checkLoadTime refuses a placeholder of value that is not resolved at
// load; field is the subdirective, what (may be "") says which part of it.
func checkLoadTime(field, what, value string) error {
	ph := laterPlaceholder(value)
	if ph == "" {
		return nil
	}
	if what != "" {
		ph = what + " holds " + ph + ", which"
	}
	return errField(field, "%s is not known when the configuration loads, and this value is fixed then: "+
		"only {env.*} and {file.*} placeholders are resolved here (a token is shared by every request of its "+
		"credential set; send per-request values upstream with header, and write a literal brace as \\{)", ph)
}

// checkTokenParamPlaceholders applies checkLoadTime to the token request's
// own values (grants client_credentials and jwt_bearer).
func (h *Handler) checkTokenParamPlaceholders() error {
	for _, s := range h.Scopes {
		if err := checkLoadTime("scope", "", s); err != nil {
			return err
		}
	}
	if err := checkLoadTime("audience", "", h.Audience); err != nil {
		return err
	}
	for _, r := range h.Resources {
		if err := checkLoadTime("resource", "", r); err != nil {
			return about(r, err)
		}
	}
	if err := checkParamPlaceholders(h.Params); err != nil {
		return err
	}
	return checkLoadTime("subject", "", h.Subject)
}

// checkParamPlaceholders applies checkLoadTime to each param, in name order.
func checkParamPlaceholders(params map[string]string) error {
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := checkLoadTime("param", fmt.Sprintf("the value of %q", name), params[name]); err != nil {
			return about(name, err)
		}
	}
	return nil
}

// checkPlaceholders applies checkLoadTime to the credentials that name the
// client and the provider and are not secret (a secret is never echoed,
// and a URL is checked once resolved).
func (c *Credentials) checkPlaceholders() error {
	for _, f := range []struct{ field, value string }{
		{"client_id", c.ClientID}, {"assertion_audience", c.AssertionAudience}, {"key_id", c.KeyID},
	} {
		if err := checkLoadTime(f.field, "", f.value); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(c.ProviderParams))
	for name := range c.ProviderParams {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := checkLoadTime(name, "", c.ProviderParams[name]); err != nil {
			return err
		}
	}
	return nil
}
