package oauthbearer

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// The accounts page: the status endpoint answers a browser with HTML that
// lists every account and has a form for each action; the tests follow
// those forms as a browser would.

// browserGet is a GET from a browser (Accept: text/html).
func browserGet(t *testing.T, client *http.Client, u string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

// htmlBrowser is a browser that sends Accept: text/html with every
// request, as browsers do for navigations and form submissions.
func (g *grantSetup) htmlBrowser() *http.Client {
	c := g.browser()
	c.Transport = acceptHTML{c.Transport}
	return c
}

type acceptHTML struct{ next http.RoundTripper }

func (a acceptHTML) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Accept", "text/html,*/*;q=0.8")
	return a.next.RoundTrip(r)
}

func TestAccountsPage(t *testing.T) {
	g := newGrantSetup(t, "account {http.request.header.X-Account}")
	for _, a := range []string{"alice", "bob"} {
		if status, body := g.connect(a); status != 200 {
			t.Fatalf("connect %s: %d %q", a, status, body)
		}
	}
	// bob's grant is refused at the provider: needs consent.
	ge := grantEntry(t)
	g.as.setRefreshTokensDead(true)
	if _, err := ge.refresh(t.Context(), "bob", fetchRequest{force: true}); err == nil {
		t.Fatal("bob's refresh succeeded")
	}
	g.as.setRefreshTokensDead(false) // alice's grant is fine again; bob's record says consent is needed

	browser := g.htmlBrowser()
	page := g.c.url("/oauth/et/status")
	status, body := browserGet(t, browser, page)
	if status != 200 {
		t.Fatalf("accounts page: %d %q", status, body)
	}
	forms := parseForms(t, body) // valid HTML, a title, labels on every visible control
	// A row per account, with its state; a form to connect bob again and
	// one to connect a new account; alice's Disconnect leads to a
	// confirmation page.
	for _, want := range []string{"<caption>", "alice", "bob", "Connected", "Needs consent", "invalid_grant",
		`<th scope="col" role="columnheader">Access token</th>`, "expires in 59 min", "crm_read"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if len(forms) != 2 {
		t.Fatalf("%d forms, want 2 (connect bob again, connect a new account)", len(forms))
	}
	var reconnectBob, connectNew *htmlForm
	for i := range forms {
		f := &forms[i]
		switch {
		case f.action == "/oauth/et/connect" && f.values.Get("account") == "bob":
			reconnectBob = f
		case f.action == "/oauth/et/connect" && len(f.labelled) == 1:
			connectNew = f
		}
		if f.method != http.MethodPost {
			t.Errorf("form %q uses %s, want POST", f.action, f.method)
		}
	}
	if reconnectBob == nil || connectNew == nil {
		t.Fatalf("forms: %+v", forms)
	}
	if !slices.Contains(reconnectBob.buttons, "Connect again for bob") {
		t.Errorf("bob's button %q does not name its account", reconnectBob.buttons)
	}
	disconnectAlice := `<a class="button secondary" href="/oauth/et/disconnect?account=alice">Disconnect<span class="vh"> alice</span></a>`
	if !strings.Contains(body, disconnectAlice) {
		t.Errorf("the page lacks alice's Disconnect link, named for screen readers: %s", disconnectAlice)
	}
	if csp := "frame-ancestors 'none'"; !strings.Contains(fmt.Sprint(pageHeaders(t, browser, page)["Content-Security-Policy"]), csp) {
		t.Errorf("the page's CSP lacks %s", csp)
	}

	// The forms, followed. Connect a new account: to the provider and back.
	if status, body := submitForm(t, browser, page, *connectNew, url.Values{"account": {"carol"}}); status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("connecting carol from the page: %d %q", status, body)
	}
	// Connect bob again.
	if status, body := submitForm(t, browser, page, *reconnectBob, nil); status != 200 || !strings.Contains(body, "Connected") {
		t.Fatalf("reconnecting bob from the page: %d %q", status, body)
	}
	// Disconnect alice: a confirmation page, whose button disconnects and
	// comes back to the page, without her, saying so.
	status, confirm := browserGet(t, browser, g.c.url("/oauth/et/disconnect?account=alice"))
	if status != 200 || !strings.Contains(confirm, "Disconnect alice?") {
		t.Fatalf("disconnect confirmation page: %d %q", status, confirm)
	}
	if st := g.status("alice"); st["connected"] != true {
		t.Fatalf("the confirmation page disconnected alice: %v", st)
	}
	status, body = submitForm(t, browser, page, onlyForm(t, confirm), nil)
	if status != 200 || !strings.Contains(body, "<caption>") || !strings.Contains(body, "alice disconnected.") {
		t.Fatalf("disconnecting alice from the page: %d %q", status, body)
	}
	if strings.Contains(body, ">alice<") || !strings.Contains(body, ">carol<") || !strings.Contains(body, ">bob<") {
		t.Errorf("after the forms, the page lists the wrong accounts:\n%s", body)
	}
	for _, a := range []string{"bob", "carol"} {
		if st := g.status(a); st["connected"] != true {
			t.Errorf("%s: %v", a, st)
		}
	}
	if st := g.status("alice"); st["connected"] != false {
		t.Errorf("alice after disconnect: %v", st)
	}
	// The notice is said only when true: not of an account that is
	// connected.
	if _, body := browserGet(t, browser, g.c.url("/oauth/et/status?disconnected=bob")); strings.Contains(body, "bob disconnected") {
		t.Error("the page says bob disconnected while he is connected")
	}
	// Disconnecting an account that has no grant: 404, for the page and
	// for an API client.
	if status, body := browserGet(t, browser, g.c.url("/oauth/et/disconnect?account=alice")); status != 404 || !strings.Contains(body, "alice is not connected") {
		t.Errorf("confirmation page of an account with no grant: %d %q", status, body)
	}
	req, _ := http.NewRequest(http.MethodPost, g.c.url("/oauth/et/disconnect?account=nobody"), nil)
	resp, err := g.browser().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST disconnect of an account with no grant: %d, want 404", resp.StatusCode)
	}

	// The same-origin rule holds for the confirmation page's form: a
	// disconnect posted from another site is refused and changes nothing.
	_, confirm = browserGet(t, browser, g.c.url("/oauth/et/disconnect?account=bob"))
	forms = []htmlForm{onlyForm(t, confirm)}
	for _, f := range forms {
		if f.action != "/oauth/et/disconnect" {
			continue
		}
		req, _ := http.NewRequest(http.MethodPost, g.c.url(f.action), strings.NewReader(f.values.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "https://evil.example")
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a cross-site disconnect of %s: %d, want 403", f.values.Get("account"), resp.StatusCode)
		}
		if st := g.status(f.values.Get("account")); st["connected"] != true {
			t.Errorf("a refused cross-site disconnect disconnected %s", f.values.Get("account"))
		}
	}

	// API clients still get JSON.
	if st := g.status("bob"); st["account"] != "bob" {
		t.Errorf("JSON status: %v", st)
	}
}

// pageHeaders returns the headers of a browser's GET of u.
func pageHeaders(t *testing.T, client *http.Client, u string) http.Header {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/html")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Header
}
