package providers

import (
	"net/url"
	"strings"
	"testing"
)

func TestPresetsAreComplete(t *testing.T) {
	for _, want := range []string{"bookable", "calcom", "eventbookings", "eventtemple", "generic"} {
		if _, ok := Lookup(want); !ok {
			t.Errorf("preset %q is not registered", want)
		}
	}
	for _, name := range Names() {
		p, _ := Lookup(name)
		if p.Name != name || p.Title == "" {
			t.Errorf("%s: name/title incomplete: %+v", name, p)
		}
		switch p.RequestFormat {
		case FormatForm, FormatJSON:
		case FormatAuto:
			if p.PreferredFormat != FormatForm && p.PreferredFormat != FormatJSON {
				t.Errorf("%s: auto format needs a preferred format, got %q", name, p.PreferredFormat)
			}
		default:
			t.Errorf("%s: bad request format %q", name, p.RequestFormat)
		}
		switch p.ClientAuth {
		case AuthBody, AuthBasic, AuthNone:
		default:
			t.Errorf("%s: bad client auth %q", name, p.ClientAuth)
		}
		if p.RequiresAudience && p.Audience == "" {
			t.Errorf("%s: requires an audience but has no default", name)
		}
		for env, raw := range p.Environments {
			u, err := url.Parse(raw)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				t.Errorf("%s/%s: token URL %q is not an absolute https URL", name, env, raw)
			}
		}
		if len(p.Environments) > 0 {
			if _, err := p.TokenURL(""); err != nil {
				t.Errorf("%s: default environment: %v", name, err)
			}
		}
	}
}

func TestTokenURL(t *testing.T) {
	b, _ := Lookup("bookable")
	if u, _ := b.TokenURL(""); u != "https://auth.bookabletech.com/oauth/token" {
		t.Errorf("bookable default = %q", u)
	}
	if u, _ := b.TokenURL("sandbox"); u != "https://auth-sandbox.bookabletech.com/oauth/token" {
		t.Errorf("bookable sandbox = %q", u)
	}
	_, err := b.TokenURL("staging")
	if err == nil || !strings.Contains(err.Error(), "production, sandbox") {
		t.Errorf("unknown environment error = %v, want the known ones listed", err)
	}
	g, _ := Lookup(Generic)
	if _, err := g.TokenURL(""); err == nil || !strings.Contains(err.Error(), "token_url") {
		t.Errorf("generic without token_url: %v", err)
	}
}
