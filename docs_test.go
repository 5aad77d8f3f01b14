package oauthbearer

// The docs, README.md and the pages of docs/, cannot drift from the code
// or fall apart: every Caddyfile example adapts, every JSON example's
// handlers decode with their fields, every relative link and anchor leads
// somewhere, and every page says first what it covers and is reachable
// from the README. (The lists in the docs are checked in
// docs_lists_test.go.)

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// docPages lists the pages of docs/.
func docPages(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("docs/*.md")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no pages in docs/ (%v)", err)
	}
	return pages
}

// docFiles lists README.md and the pages of docs/.
func docFiles(t *testing.T) []string {
	return append([]string{"README.md"}, docPages(t)...)
}

// fencedBlock is a fenced code block of a Markdown file: its language, its
// text and the line it starts on.
type fencedBlock struct {
	lang, text string
	line       int
}

var fence = regexp.MustCompile("(?ms)^[ \t]*```([a-z]*)\n(.*?)^[ \t]*```[ \t]*$")

// fencedBlocks returns the fenced code blocks of a Markdown text.
func fencedBlocks(text string) []fencedBlock {
	var out []fencedBlock
	for _, m := range fence.FindAllStringSubmatchIndex(text, -1) {
		out = append(out, fencedBlock{lang: text[m[2]:m[3]], text: text[m[4]:m[5]], line: strings.Count(text[:m[0]], "\n") + 1})
	}
	return out
}

func readDoc(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every Caddyfile example of the docs adapts, so the docs cannot drift
// from the parser. (The syntax summary, with <placeholders>, is skipped;
// a block that starts with the directive is adapted inside a site.)
func TestDocsCaddyfileExamplesAdapt(t *testing.T) {
	n := 0
	for _, file := range docFiles(t) {
		for _, b := range fencedBlocks(readDoc(t, file)) {
			if b.lang != "caddyfile" || strings.Contains(b.text, "<id>") {
				continue
			}
			n++
			src := b.text
			if strings.HasPrefix(strings.TrimSpace(src), "oauth_bearer") {
				src = ":8080 {\n" + src + "\n}\n"
			}
			if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": file}); err != nil {
				t.Errorf("%s:%d: the Caddyfile example does not adapt: %v\n%s", file, b.line, err, b.text)
			}
		}
	}
	if n < 15 {
		t.Fatalf("found %d Caddyfile examples in README.md and docs/", n)
	}
}

// Every JSON example's oauth_bearer and oauth_bearer_consent handlers
// decode into the handlers with no field the handlers do not have.
func TestDocsJSONExamplesDecode(t *testing.T) {
	n := 0
	for _, file := range docFiles(t) {
		for _, b := range fencedBlocks(readDoc(t, file)) {
			if b.lang != "json" {
				continue
			}
			if !json.Valid([]byte(b.text)) {
				t.Errorf("%s:%d: the JSON example is not valid JSON", file, b.line)
				continue
			}
			walkJSON(t, []byte(b.text), func(obj map[string]any) {
				var into any
				switch obj["handler"] {
				case "oauth_bearer":
					into = new(Handler)
				case "oauth_bearer_consent":
					into = new(ConsentHandler)
				default:
					return
				}
				n++
				fields := map[string]any{}
				for k, v := range obj {
					if k != "handler" {
						fields[k] = v
					}
				}
				raw, _ := json.Marshal(fields)
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.DisallowUnknownFields()
				if err := dec.Decode(into); err != nil {
					t.Errorf("%s:%d: the %s handler of the JSON example does not decode: %v", file, b.line, obj["handler"], err)
				}
			})
		}
	}
	if n == 0 {
		t.Fatal("no JSON example of a handler in README.md and docs/")
	}
}

// githubAnchor is the anchor GitHub gives a heading: its text in lower
// case, without punctuation, spaces made hyphens.
func githubAnchor(heading string) string {
	heading = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// withoutCode blanks a Markdown text's fenced blocks and code spans, where
// neither links nor headings are.
func withoutCode(text string) string {
	return regexp.MustCompile("`[^`\n]*`").ReplaceAllString(withoutCodeBlocks(text), "code")
}

// anchors lists the anchors of a Markdown file's headings, a repeated one
// numbered as GitHub does.
func anchors(t *testing.T, file string) []string {
	t.Helper()
	var out []string
	seen := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^#{1,6} +(.+?) *$`).FindAllStringSubmatch(withoutCodeBlocks(readDoc(t, file)), -1) {
		a := githubAnchor(m[1])
		if n := seen[a]; n > 0 {
			seen[a]++
			a += "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		out = append(out, a)
	}
	return out
}

// withoutCodeBlocks blanks a Markdown text's fenced blocks only (a
// heading's code spans are part of its anchor).
func withoutCodeBlocks(text string) string {
	return fence.ReplaceAllStringFunc(text, func(s string) string { return strings.Repeat("\n", strings.Count(s, "\n")) })
}

// Every relative link of the docs leads to a file that exists, and every
// anchor to a heading of its page; the troubleshooting link in the
// handler's answers leads to a heading of README.md.
func TestDocsLinks(t *testing.T) {
	files := append(docFiles(t), "BENCHMARKS.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	n := 0
	for _, file := range files {
		text := withoutCode(readDoc(t, file))
		for _, m := range link.FindAllStringSubmatchIndex(text, -1) {
			target := text[m[2]:m[3]]
			line := strings.Count(text[:m[0]], "\n") + 1
			if strings.HasPrefix(target, "https://") || strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			n++
			path, anchor, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.Join(filepath.Dir(file), path)
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s:%d: the link to %s leads nowhere: %v", file, line, target, err)
					continue
				}
			}
			if anchor != "" {
				if !strings.HasSuffix(dest, ".md") {
					t.Errorf("%s:%d: the link to %s has an anchor into a file that is not Markdown", file, line, target)
				} else if !slices.Contains(anchors(t, dest), anchor) {
					t.Errorf("%s:%d: the link to %s: %s has no heading #%s (it has %v)", file, line, target, dest, anchor, anchors(t, dest))
				}
			}
		}
	}
	if n < 30 {
		t.Fatalf("found %d relative links", n)
	}

	_, anchor, _ := strings.Cut(troubleshootingURL, "#")
	if !slices.Contains(anchors(t, "README.md"), anchor) {
		t.Errorf("troubleshootingURL (module.go) is %s, but README.md has no heading #%s", troubleshootingURL, anchor)
	}
}

// Every page of docs/ starts with its title and one paragraph saying what
// it covers, and README.md links to it.
func TestDocsPagesSayWhatTheyCover(t *testing.T) {
	readme := readDoc(t, "README.md")
	for _, page := range docPages(t) {
		lines := strings.Split(readDoc(t, page), "\n")
		if len(lines) < 3 || !strings.HasPrefix(lines[0], "# ") || lines[1] != "" || !strings.HasPrefix(lines[2], "This page ") {
			t.Errorf("%s: does not start with its title, a blank line and a paragraph \"This page ...\" saying what it covers", page)
		}
		if !strings.Contains(readme, "]("+filepath.ToSlash(page)+")") {
			t.Errorf("README.md does not link to %s", page)
		}
	}
}

// The troubleshooting table quotes the configuration errors as the parser
// gives them: each row's message (its first code span; … stands for any
// text) is in the error of a Caddyfile that makes it.
func TestDocsTroubleshootingConfigErrors(t *testing.T) {
	const creds = "\t\tclient_id a\n\t\tclient_secret {env.S}\n"
	cases := []struct{ row, block string }{
		{"oauth_bearer provider: unknown provider", "oauth_bearer eventtempel {\n" + creds + "\t}"},
		{"oauth_bearer client_id: is required", "oauth_bearer eventtemple {\n\t\tclient_secret {env.S}\n\t}"},
		{"oauth_bearer token_url: required for provider generic", "oauth_bearer generic {\n" + creds + "\t}"},
		{"token_url: \"http://", "oauth_bearer {\n" + creds + "\t\ttoken_url http://idp.example.com/t\n\t}"},
		{"environment: provider \"bookable\"", "oauth_bearer bookable {\n" + creds + "\t\tenvironment staging\n\t}"},
		{"org: provider generic", "oauth_bearer {\n" + creds + "\t\ttoken_url https://idp.example.com/t\n\t\torg 1\n\t}"},
		{"oauth_bearer param: the value of", "oauth_bearer {\n" + creds + "\t\ttoken_url https://idp.example.com/t\n\t\tparam tenant {http.request.header.X-Tenant}\n\t}"},
		{"redirect_uri: belongs to oauth_bearer_consent", "oauth_bearer eventtemple {\n" + creds + "\t\tredirect_uri https://p.example.com/cb\n\t}"},
	}
	rows := tableAfter(t, readDoc(t, "docs/troubleshooting.md"), "| You see |")
	for _, c := range cases {
		var quoted string
		for _, r := range rows {
			if m := regexp.MustCompile("`([^`]+)`").FindStringSubmatch(r[0]); m != nil && strings.HasPrefix(m[1], c.row) {
				quoted = m[1]
			}
		}
		if quoted == "" {
			t.Errorf("docs/troubleshooting.md: no row for %q", c.row)
			continue
		}
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\t"+c.block+"\n}\n"), map[string]any{"filename": "Caddyfile"})
		if err == nil {
			t.Errorf("%q: the Caddyfile adapts:\n%s", c.row, c.block)
			continue
		}
		for _, part := range strings.Split(quoted, "…") {
			if !strings.Contains(err.Error(), strings.TrimSpace(part)) {
				t.Errorf("docs/troubleshooting.md quotes %q, but the parser says %q", quoted, err)
				break
			}
		}
	}
}

// The commented real configurations in Caddyfile.example adapt too.
func TestCaddyfileExampleCommentedBlocksAdapt(t *testing.T) {
	data, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur []string
	depth, top := 0, 0
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "# \t") || strings.HasPrefix(line, "# }") ||
			(strings.HasPrefix(line, "# ") && strings.HasSuffix(line, "{") && !strings.Contains(line, "  ")):
			content := strings.TrimPrefix(line, "# ")
			if depth == 0 {
				top = len(cur)
			}
			cur = append(cur, content)
			depth += strings.Count(content, "{") - strings.Count(content, "}")
			// A block ends with its closing brace, unless it is a snippet:
			// that stays with the site block after it, which imports it.
			if depth == 0 && !strings.HasPrefix(cur[top], "(") {
				blocks = append(blocks, strings.Join(cur, "\n"))
				cur = nil
			}
		}
	}
	if len(blocks) < 6 {
		t.Fatalf("found %d commented site blocks", len(blocks))
	}
	for _, b := range blocks {
		b = strings.ReplaceAll(b, "<hash from caddy hash-password>", "$2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG")
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(b), map[string]any{"filename": "Caddyfile.example"}); err != nil {
			t.Errorf("commented block does not adapt: %v\n%s", err, b)
		}
	}
}
