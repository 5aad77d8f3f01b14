package oauthbearer

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// The consent pages in a real browser, as a person sees them: laid out
// down to a 360 px wide phone with no sideways scrolling, styled (the
// inline style sheet passes the page's CSP), light and dark, usable with
// the keyboard, and checking an account name before sending it. The
// accounts come from the stand-in provider of grant_test.go.

// layout is what measureLayout finds.
type layout struct {
	InnerWidth  int      `json:"innerWidth"`
	ScrollWidth int      `json:"scrollWidth"`
	Wide        []string `json:"wide"` // elements that reach past the viewport
}

// measureLayout finds the elements of the page that stick out of the
// viewport (or of main), sideways.
func measureLayout(b *browser) layout {
	b.t.Helper()
	return eval[layout](b, `(() => {
	const w = document.documentElement.clientWidth;
	const main = document.querySelector('main').getBoundingClientRect();
	const wide = [];
	for (const el of document.body.querySelectorAll('*')) {
		const r = el.getBoundingClientRect();
		if (r.width === 0 || r.height === 0) continue;
		const right = el.closest('main') ? main.right : w; // nothing sticks out of main either
		if (r.right > right + 0.5 || r.left < -0.5) {
			wide.push(el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).replace(/ /g, '.') : '') +
				' ' + Math.round(r.left) + '..' + Math.round(r.right) + ': ' + el.textContent.slice(0, 40));
		}
	}
	return {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, wide};
})()`)
}

// pagesSetup connects accounts with the stand-in provider: alice, bob
// (whose grant the provider then refuses: needs consent), one with a long
// name and one with an e-mail address as its name.
func pagesSetup(t *testing.T) (*grantSetup, string) {
	t.Helper()
	long := "team-" + strings.Repeat("integration", 10) + "-sandbox"
	return connectAccounts(t, "bob", "alice", "bob", long, "dave@example.com"), long
}

// connectAccounts connects accounts with the stand-in provider, then has
// the provider refuse the grant of refused (it needs consent).
func connectAccounts(t *testing.T, refused string, accounts ...string) *grantSetup {
	t.Helper()
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	for _, a := range accounts {
		if status, body := g.connect(a); status != 200 {
			t.Fatalf("connect %s: %d %q", a, status, body)
		}
	}
	g.as.setRefreshTokensDead(true)
	if _, err := grantEntry(t).refresh(t.Context(), refused, fetchRequest{force: true}); err == nil {
		t.Fatalf("%s's refresh succeeded", refused)
	}
	g.as.setRefreshTokensDead(false)
	return g
}

// The screenshot of the accounts page in the docs (docs/consent.md) is made here:
//
//	OAB_DOCS_SCREENSHOT=$PWD/docs/accounts-page.png go test -run TestBrowserAccountsPageForTheDocs .
func TestBrowserAccountsPageForTheDocs(t *testing.T) {
	g := connectAccounts(t, "events@example.com", "bookings@example.com", "events@example.com", "sales-team")
	b := newBrowser(t, browserOpts{user: adminUser, pass: adminPass, width: 1040, height: 600})
	if st := b.open(g.c.url("/oauth/et/status")); st != 200 {
		t.Fatalf("accounts page: %d", st)
	}
	if n := eval[int](b, `document.querySelectorAll('tbody tr').length`); n != 3 {
		t.Fatalf("%d rows, want 3", n)
	}
	png := get(b, "screenshot", chromedp.FullScreenshot(100))
	if p := os.Getenv("OAB_DOCS_SCREENSHOT"); p != "" {
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBrowserPagesFitAPhone(t *testing.T) {
	g, long := pagesSetup(t)
	for _, dev := range []struct {
		name string
		o    browserOpts
	}{
		{"desktop", browserOpts{}},
		{"phone", browserOpts{width: 360, height: 740, mobile: true}},
		{"phone-dark", browserOpts{width: 360, height: 740, mobile: true, dark: true}},
	} {
		t.Run(dev.name, func(t *testing.T) {
			dev.o.user, dev.o.pass = adminUser, adminPass
			b := newBrowser(t, dev.o)
			pages := []struct{ name, path string }{
				{"accounts", "/oauth/et/status"},
				{"connect (connected)", "/oauth/et/connect?account=" + url.QueryEscape(long)},
				{"connect (refused name)", "/oauth/et/connect?account=a..b"},
				{"disconnect", "/oauth/et/disconnect?account=" + url.QueryEscape(long)},
				{"not connected (404)", "/oauth/et/disconnect?account=nobody"},
				{"callback error", "/oauth/et/callback?state=x&code=y"},
			}
			for _, p := range pages {
				b.open(g.c.url(p.path))
				l := measureLayout(b)
				if l.ScrollWidth > l.InnerWidth || len(l.Wide) > 0 || (dev.o.width != 0 && int64(l.InnerWidth) != dev.o.width) {
					t.Errorf("%s: scrollWidth %d, innerWidth %d; wider than the viewport or main: %q", p.name, l.ScrollWidth, l.InnerWidth, l.Wide)
				}
				if os.Getenv("OAB_SCREENSHOTS") != "" {
					b.screenshot(fmt.Sprintf("page-%s-%s.png", dev.name, strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(p.name)))
				}
				// Styled: the inline sheet passed the CSP (by its hash).
				if font := eval[string](b, `getComputedStyle(document.body).fontFamily`); !strings.Contains(font, "system-ui") {
					t.Errorf("%s: the style sheet was not applied (font %q)", p.name, font)
				}
				// Every control has a name.
				if unnamed := eval[[]string](b, `[...document.querySelectorAll('input:not([type=hidden]), button, a')]
					.filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()).map(e => e.outerHTML)`); len(unnamed) > 0 {
					t.Errorf("%s: controls without a name: %q", p.name, unnamed)
				}
			}
			b.open(g.c.url("/oauth/et/status"))
			bg := eval[string](b, `getComputedStyle(document.body).backgroundColor`)
			var r, gr, bl int
			fmt.Sscanf(bg, "rgb(%d, %d, %d)", &r, &gr, &bl)
			if dark := r+gr+bl < 200; dark != dev.o.dark {
				t.Errorf("background %s: dark %v, want %v (prefers-color-scheme)", bg, dark, dev.o.dark)
			}
			// On a phone the table's rows are cards: each cell on its own
			// line, labelled, and the buttons within reach.
			if dev.o.width != 0 {
				if d := eval[string](b, `getComputedStyle(document.querySelector('tbody tr')).display`); d != "block" {
					t.Errorf("on a phone the rows are displayed %q, want block (stacked)", d)
				}
				if lbl := eval[string](b, `getComputedStyle(document.querySelector('td[data-label]'), '::before').content`); lbl != `"Status"` {
					t.Errorf("a stacked cell's label is %s, want \"Status\"", lbl)
				}
			}
			b.screenshot("accounts-page-" + dev.name + ".png")

			// The keyboard: Tab reaches the first control, which shows
			// its focus.
			b.do("tab", chromedp.KeyEvent(kb.Tab))
			focused := eval[string](b, `document.activeElement.textContent.trim()`)
			outline := eval[string](b, `getComputedStyle(document.activeElement).outlineStyle + ' ' + getComputedStyle(document.activeElement).outlineWidth`)
			if focused == "" || !strings.HasPrefix(outline, "solid 3px") {
				t.Errorf("after Tab the focus is on %q with outline %q, want a control with a visible outline", focused, outline)
			}
		})
	}
}

// The account name input: the browser refuses what the pattern refuses
// before sending it; what only the server refuses comes back on the same
// page, with the message and the form filled.
func TestBrowserAccountNameIsCheckedFirst(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	b := newBrowser(t, browserOpts{user: adminUser, pass: adminPass})
	b.open(g.c.url("/oauth/et/status"))
	attrs := eval[[]string](b, `['pattern', 'maxlength', 'aria-describedby'].map(a => document.querySelector('#account').getAttribute(a) || '')`)
	if attrs[0] == "" || attrs[1] != "128" || attrs[2] != "account-hint" || !eval[bool](b, `document.querySelector('#account').required`) {
		t.Errorf("the account input's pattern, maxlength, hint: %q", attrs)
	}
	if hint := b.text("#account-hint"); !strings.Contains(hint, "1 to 128 letters") {
		t.Errorf("hint %q", hint)
	}
	for _, bad := range []string{"../etc", "has space", "-leading"} {
		b.typeInto("#account", bad)
		if mismatch := eval[bool](b, `document.querySelector('#account').validity.patternMismatch`); !mismatch {
			t.Errorf("%q: the browser's pattern accepts it", bad)
		}
		n := b.navigations()
		b.do("press Connect", chromedp.Click(chromedp.CSS("form.card button")))
		if valid := eval[bool](b, `document.querySelector('#account').checkValidity()`); valid || b.navigations() != n {
			t.Errorf("%q: the browser sent the form", bad)
		}
	}
	for _, good := range []string{"alice", "dave@example.com", "x_1+2=3.y-z"} {
		b.typeInto("#account", good)
		if mismatch := eval[bool](b, `document.querySelector('#account').validity.patternMismatch`); mismatch {
			t.Errorf("%q: the browser's pattern refuses a valid name (value %q, pattern %q)", good,
				eval[string](b, `document.querySelector('#account').value`), eval[string](b, `document.querySelector('#account').pattern`))
		}
	}
	// "a..b" passes the pattern; the server refuses it on the same page.
	b.typeInto("#account", "a..b")
	if st := b.submit("form.card button", func(l string) bool { return strings.Contains(l, "/oauth/et/connect") }); st != 400 {
		t.Fatalf("a..b: %d %q", st, b.text("body"))
	}
	if v := eval[string](b, `document.querySelector('#account').value`); v != "a..b" || !b.has("invalid account name") {
		t.Errorf("the refused name comes back as %q, page %q", v, b.text("main"))
	}
	if inv := eval[string](b, `document.querySelector('#account').getAttribute('aria-invalid')`); inv != "true" {
		t.Errorf("aria-invalid %q", inv)
	}
	// Corrected, it goes through.
	b.typeInto("#account", "a.b")
	if st := b.submit("form button", func(l string) bool { return strings.Contains(l, "/oauth/et/callback") }); st != 200 || !b.has("a.b is connected") {
		t.Errorf("a.b: %d %q", st, b.text("body"))
	}
}
