package oauthbearer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// A real browser for the tests: Debian's Chromium, headless, driven with
// chromedp. Each browser has a new, empty profile, and is kept off the
// network (no background requests, component updates or sync): it only
// talks to the test's own servers on 127.0.0.1.

// browserPath finds Chromium; the browser tests fail (they do not skip)
// without it, saying what to install.
func browserPath(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the browser tests need Chromium: apt-get install chromium (make test installs it)")
	return ""
}

// browserOpts configures a browser.
type browserOpts struct {
	user, pass    string // basic_auth credentials, sent with every request
	width, height int64  // the viewport; default 1280×900
	mobile        bool   // emulate a phone (touch, device scale 2)
	dark          bool   // prefers-color-scheme: dark
}

// browser is one Chromium with its own profile, and one tab.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu   sync.Mutex
	docs map[string]int64 // status of each main-frame document, by URL
	navs int              // main-frame navigations so far
}

// newBrowser starts a browser that the test's cleanup stops.
func newBrowser(t *testing.T, o browserOpts) *browser {
	t.Helper()
	path := browserPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,
		chromedp.Flag("headless", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("lang", "en-US"),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	b := &browser{t: t, ctx: ctx, docs: map[string]int64{}}
	// The first call starts the browser, for the life of the context it
	// is given: ctx itself, without a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting the browser (%s): %v", path, err)
	}
	err := chromedp.Listen(ctx, func(ev any) {
		switch e := ev.(type) {
		case *network.EventResponseReceived:
			if e.Type == network.ResourceTypeDocument {
				b.mu.Lock()
				b.docs[e.Response.URL] = e.Response.Status
				b.mu.Unlock()
			}
		case *page.EventFrameNavigated:
			if e.Frame.ParentID == "" {
				b.mu.Lock()
				b.navs++
				b.mu.Unlock()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	steps := []chromedp.Action[chromedp.Void]{callVoid(network.Enable, network.EnableParams{})}
	if o.user != "" {
		cred := base64.StdEncoding.EncodeToString([]byte(o.user + ":" + o.pass))
		steps = append(steps, callVoid(network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Basic " + cred}}))
	}
	if o.width != 0 {
		vp := []chromedp.EmulateViewportOption{chromedp.EmulatePortrait}
		if o.mobile {
			vp = append(vp, chromedp.EmulateMobile, chromedp.EmulateTouch, chromedp.EmulateScale(2))
		}
		steps = append(steps, chromedp.EmulateViewport(o.width, o.height, vp...))
	}
	if o.dark {
		steps = append(steps, callVoid(emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}}))
	}
	b.do("set the browser up", steps...)
	return b
}

// callVoid is a protocol command as an action.
func callVoid[P, R any](cmd cdp.Command[P, R], params P) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cmd, params)
		return err
	})
}

// do runs chromedp actions within a minute, failing the test on error.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v (at %s)", what, err, b.location())
	}
}

// get runs one chromedp action that returns a value.
func get[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("browser: %s: %v (at %s)", what, err, b.location())
	}
	return v
}

// open navigates to u and returns the document's status.
func (b *browser) open(u string) int64 {
	b.t.Helper()
	n := b.navigations()
	b.do("open "+u, chromedp.Navigate(u))
	return b.waitAt(n, func(string) bool { return true })
}

// reload reloads the page and returns its status.
func (b *browser) reload() int64 {
	b.t.Helper()
	n := b.navigations()
	b.do("reload", chromedp.Reload())
	return b.waitAt(n, func(string) bool { return true })
}

// location is the current URL.
func (b *browser) location() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	return loc
}

// status is the HTTP status of the current document.
func (b *browser) status() int64 {
	b.t.Helper()
	loc := b.location()
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.docs[loc]
	if !ok {
		b.t.Fatalf("browser: no response seen for %s", loc)
	}
	return s
}

// text is the visible text of the first element sel matches (CSS).
func (b *browser) text(sel string) string {
	b.t.Helper()
	return get(b, "text of "+sel, chromedp.Text(chromedp.CSS(sel), chromedp.NodeReady))
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, js string) T {
	b.t.Helper()
	return get(b, "evaluate "+js, chromedp.Evaluate[T](js))
}

// submit clicks sel, which sends a form or follows a link, and waits until
// the browser has navigated and loaded a page whose URL satisfies where
// (after any redirects). It returns that page's status.
func (b *browser) submit(sel string, where func(string) bool) int64 {
	b.t.Helper()
	n := b.navigations()
	b.do("click "+sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
	return b.waitAt(n, where)
}

func (b *browser) navigations() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.navs
}

// navigate goes to u without waiting for it (a page that navigates on by
// itself); it returns the count of navigations before, for waitAt.
func (b *browser) navigate(u string) int {
	b.t.Helper()
	n := b.navigations()
	b.do("navigate to "+u, callVoid(page.Navigate, page.NavigateParams{URL: u}))
	return n
}

// waitAt waits until the main frame navigated more than n times in all
// and a page whose URL satisfies where is loaded, and returns its status.
func (b *browser) waitAt(n int, where func(string) bool) int64 {
	b.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		navigated := b.navigations() > n // first: then loc and state are of the new page
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		loc, err := chromedp.Run(ctx, chromedp.Location())
		state := ""
		if err == nil {
			state, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.readyState`))
		}
		cancel()
		if err == nil && navigated && state == "complete" && where(loc) {
			return b.status()
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("browser: at %s (state %q, %v) 30 s later", loc, state, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the page while it navigates
	}
}

// typeInto types s into the input sel (CSS), replacing its value.
func (b *browser) typeInto(sel, s string) {
	b.t.Helper()
	q, _ := json.Marshal(sel)
	b.do("type into "+sel, chromedp.Evaluate[chromedp.Void](`document.querySelector(`+string(q)+`).value = ''`),
		chromedp.SendKeys(chromedp.CSS(sel), s))
}

// screenshot saves a PNG of the whole page as name, in OAB_SCREENSHOTS
// when set (to look at them), else in the test's temporary directory.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	png := get(b, "screenshot", chromedp.FullScreenshot(100))
	dir := os.Getenv("OAB_SCREENSHOTS")
	if dir == "" {
		dir = b.t.TempDir()
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}

// frames returns every frame of the page, the main one first.
func (b *browser) frames() []cdp.Frame {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, page.GetFrameTree, cdp.Empty{})
	if err != nil {
		b.t.Fatal(err)
	}
	var out []cdp.Frame
	var walk func(*page.FrameTree)
	walk = func(ft *page.FrameTree) {
		out = append(out, *ft.Frame)
		for _, c := range ft.ChildFrames {
			walk(c)
		}
	}
	walk(res.FrameTree)
	return out
}

// has reports whether the page's text contains s.
func (b *browser) has(s string) bool {
	b.t.Helper()
	return strings.Contains(b.text("body"), s)
}
