package oauthbearer

import (
	"strings"
	"testing"
)

// A mix-up as a person meets it, in a real browser (Chromium,
// browser_test.go): connect pushes the authorization request (PAR, from
// the issuer's metadata), the person signs in and consents at the
// provider, and the answer comes back naming another issuer: the callback
// shows the "Sign-in refused" page, redeems nothing, and offers to start
// again. The page is saved as iss-mismatch.png (in OAB_SCREENSHOTS when
// set).
func TestBrowserIssuerMismatchPage(t *testing.T) {
	s := newPARSite(t, oidcWithIss("https://attacker.example"), "", `display_name "Test Provider"`)
	b := newBrowser(t, browserOpts{})
	onProvider := func(loc string) bool { return strings.HasPrefix(loc, s.op.URL+"/") }
	b.open(s.url("/oauth/connect?account=alice"))
	b.submit("form button", onProvider)
	if loc := b.location(); !strings.Contains(loc, "/interaction/") {
		t.Fatalf("after connect the browser is at %s", loc)
	}
	b.typeInto("#login", "alice.idp")
	b.typeInto("#password", "pw")
	b.submit("button[type=submit]", onProvider)
	status := b.submit("#allow", func(loc string) bool { return strings.HasPrefix(loc, s.redirect) })
	if status != 400 || !b.has("Sign-in refused") || !b.has("was not sent by Test Provider") || !b.has("Nothing was stored") {
		t.Fatalf("callback: %d %q", status, b.text("body"))
	}
	if got := b.text("[role=alert]"); !strings.Contains(got, "was not sent by Test Provider") {
		t.Errorf("the alert says %q", got)
	}
	t.Logf("screenshot: %s", b.screenshot("iss-mismatch.png"))
	ev := s.op.events(t)
	if ev.Counts["pushed_authorization_request.success"] != 1 || ev.Counts["grant.success"] != 0 {
		t.Errorf("provider events %v: want one push and no code exchange", ev.Counts)
	}
	if s.connected("alice") {
		t.Errorf("alice is connected")
	}
	if st := b.submit("nav a", func(loc string) bool { return strings.HasPrefix(loc, s.url("/oauth/connect")) }); st != 200 {
		t.Errorf("start again: %d", st)
	}
}
