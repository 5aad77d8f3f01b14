package oauthbearer

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// Every Caddyfile example in the README adapts, so the docs cannot drift
// from the parser. (The syntax summary, with <placeholders>, is skipped.)
func TestREADMECaddyfileExamplesAdapt(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 5 {
		t.Fatalf("found %d Caddyfile examples in README.md", len(blocks))
	}
	for i, b := range blocks {
		src := b[1]
		if strings.Contains(src, "<id>") {
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(src), "oauth_bearer") {
			src = ":8080 {\n" + src + "\n}\n"
		}
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "README"})
		if err != nil {
			t.Errorf("README Caddyfile example %d does not adapt: %v\n%s", i+1, err, src)
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
