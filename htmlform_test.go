package oauthbearer

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// What a browser does with a page, done by hand: parse the HTML (failing
// on what a browser would not accept), find its forms, fill them and
// submit them, with the page's cookies and the headers a browser adds.

// htmlForm is one form of a page.
type htmlForm struct {
	method, action string
	values         url.Values        // the inputs' names and values
	labelled       map[string]string // input id → the text of its <label for>
	ids            []string          // ids of the form's inputs (not hidden)
	buttons        []string          // the text of its submit buttons
}

// parseForms parses an HTML document and returns its forms. The page must
// have a lang, a title and a charset; every visible input must have a
// label.
func parseForms(t *testing.T, body string) []htmlForm {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("page does not parse: %v", err)
	}
	var forms []htmlForm
	var cur *htmlForm
	labels := map[string]string{}
	hasTitle, hasLang, hasCharset := false, false, false
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "html":
				hasLang = attr(n, "lang") != ""
			case "title":
				hasTitle = strings.TrimSpace(text(n)) != ""
			case "meta":
				hasCharset = hasCharset || attr(n, "charset") != ""
			case "label":
				labels[attr(n, "for")] = strings.TrimSpace(text(n))
			case "form":
				forms = append(forms, htmlForm{method: strings.ToUpper(firstNonEmpty(attr(n, "method"), "GET")),
					action: attr(n, "action"), values: url.Values{}, labelled: map[string]string{}})
				cur = &forms[len(forms)-1]
				for c := n.FirstChild; c != nil; c = c.NextSibling {
					walk(c)
				}
				cur = nil
				return
			case "input":
				if cur != nil {
					if name := attr(n, "name"); name != "" {
						cur.values.Set(name, attr(n, "value"))
					}
					if attr(n, "type") != "hidden" {
						cur.ids = append(cur.ids, attr(n, "id"))
					}
				}
			case "button":
				if cur != nil && firstNonEmpty(attr(n, "type"), "submit") == "submit" {
					cur.buttons = append(cur.buttons, strings.TrimSpace(text(n)))
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if !hasTitle || !hasLang || !hasCharset {
		t.Errorf("page lacks a title, a lang or a charset: title %v lang %v charset %v", hasTitle, hasLang, hasCharset)
	}
	for i := range forms {
		for _, id := range forms[i].ids {
			if id == "" || labels[id] == "" {
				t.Errorf("form %d: an input (id %q) has no label", i, id)
				continue
			}
			forms[i].labelled[id] = labels[id]
		}
		if len(forms[i].buttons) == 0 {
			t.Errorf("form %d has no submit button", i)
		}
	}
	return forms
}

// onlyForm returns the page's one form.
func onlyForm(t *testing.T, body string) htmlForm {
	t.Helper()
	forms := parseForms(t, body)
	if len(forms) != 1 {
		t.Fatalf("page has %d forms, want 1:\n%s", len(forms), body)
	}
	return forms[0]
}

// submitForm submits f, found on the page at pageURL, with some values
// replaced, and returns where the browser ends up.
func submitForm(t *testing.T, browser *http.Client, pageURL string, f htmlForm, set url.Values) (int, string) {
	t.Helper()
	base, _ := url.Parse(pageURL)
	action, err := base.Parse(f.action)
	if err != nil {
		t.Fatalf("form action %q: %v", f.action, err)
	}
	values := url.Values{}
	for k, v := range f.values {
		values[k] = v
	}
	for k, v := range set {
		values[k] = v
	}
	var req *http.Request
	if f.method == http.MethodPost {
		req, _ = http.NewRequest(http.MethodPost, action.String(), strings.NewReader(values.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		action.RawQuery = values.Encode()
		req, _ = http.NewRequest(http.MethodGet, action.String(), nil)
	}
	resp, err := browser.Do(req)
	if err != nil {
		t.Fatalf("submitting the form to %s: %v", action, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}
