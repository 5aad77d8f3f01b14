package oauthbearer

// The docs and doc comments that list presets, client_auth values, grants
// and subdirectives list all of them: each list is checked against what it
// lists (the table of subdirectives, providers/), so that adding a preset,
// a method or a subdirective without documenting it fails here, naming
// what is missing and where. The JSON fields' doc comments are what
// caddyserver.com shows as the JSON reference.

import (
	"cmp"
	"fmt"
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/oauthbearer/caddy-oauth-bearer/providers"
)

// goFieldDocs returns the doc comments of the fields of the named structs
// in the package's non-test files, by JSON name; fields[type][json] = doc.
func goFieldDocs(t *testing.T, types ...string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	fset := gotoken.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range pkgs["oauthbearer"].Files {
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || !slices.Contains(types, ts.Name.Name) {
				return true
			}
			st := ts.Type.(*ast.StructType)
			fields := map[string]string{}
			for _, fld := range st.Fields.List {
				if fld.Tag == nil || len(fld.Names) == 0 {
					continue
				}
				tag := reflect.StructTag(strings.Trim(fld.Tag.Value, "`"))
				name, _, _ := strings.Cut(tag.Get("json"), ",")
				if name == "" || name == "-" {
					continue
				}
				doc := fld.Doc.Text()
				if !strings.HasPrefix(doc, fld.Names[0].Name+" ") {
					t.Errorf("%s.%s (JSON %s): its doc comment must start with the field's name (caddyserver.com shows it): %q",
						ts.Name.Name, fld.Names[0].Name, name, doc)
				}
				fields[name] = strings.Join(strings.Fields(doc), " ")
			}
			out[ts.Name.Name] = fields
			return false
		})
	}
	for _, ty := range types {
		if out[ty] == nil {
			t.Fatalf("type %s not found", ty)
		}
	}
	return out
}

// mentions reports whether text names word as a word of its own
// (client_secret_basic does not name basic).
func mentions(text, word string) bool {
	return regexp.MustCompile(`(^|[^A-Za-z0-9_])` + regexp.QuoteMeta(word) + `($|[^A-Za-z0-9_])`).MatchString(text)
}

// missing returns the words text does not mention.
func missing(text string, words []string) []string {
	var out []string
	for _, w := range words {
		if !mentions(text, w) {
			out = append(out, w)
		}
	}
	return out
}

// presetSettings lists every preset's own settings, each once.
func presetSettings() []string {
	var out []string
	for _, n := range providers.Names() {
		p, _ := providers.Lookup(n)
		for _, s := range p.ParamNames() {
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// fieldDoc is the doc comment of a JSON field of the struct that holds it.
func fieldDoc(docs map[string]map[string]string, in directive, field string) string {
	if d, ok := docs["Credentials"][field]; ok {
		return d
	}
	if in&onBearer != 0 {
		return docs["Handler"][field]
	}
	return docs["ConsentHandler"][field]
}

// Every JSON field's doc comment names what its subdirective accepts: an
// enumeration's values and the grants that take it; the provider's, every
// preset; provider_params', every preset setting and the presets that have
// them. Every JSON field has a subdirective (or is set by another's
// argument).
func TestDocsJSONFieldComments(t *testing.T) {
	docs := goFieldDocs(t, "Credentials", "Handler", "ConsentHandler")
	for _, s := range subdirectives {
		if s.field == "" {
			continue
		}
		doc := fieldDoc(docs, s.in, s.field)
		if m := missing(doc, s.values); len(m) > 0 {
			t.Errorf("the doc comment of JSON field %s does not name the %s values %s", s.field, s.name, strings.Join(m, ", "))
		}
		if m := missing(doc, s.grants); len(m) > 0 {
			t.Errorf("the doc comment of JSON field %s does not name the grants %s, which accept %s", s.field, strings.Join(m, ", "), s.name)
		}
	}
	if m := missing(docs["Credentials"]["provider"], providers.Names()); len(m) > 0 {
		t.Errorf("the doc comment of JSON field provider does not name the presets %s", strings.Join(m, ", "))
	}
	pp := docs["Credentials"]["provider_params"]
	if m := missing(pp, presetSettings()); len(m) > 0 {
		t.Errorf("the doc comment of JSON field provider_params does not name the settings %s", strings.Join(m, ", "))
	}
	for _, n := range providers.Names() {
		if p, _ := providers.Lookup(n); len(p.Params) > 0 && !strings.Contains(pp, n) {
			t.Errorf("the doc comment of JSON field provider_params does not name preset %s, which has settings", n)
		}
	}

	// Fields set by an argument of the directive or of another
	// subdirective rather than by a row of their own.
	byArgument := map[string]string{"provider": "the directive's argument", "provider_params": "a preset's settings",
		"tls_client_key": "tls_client_cert's second argument", "token_prefix": "token_header's second argument"}
	for ty, fields := range docs {
		for field := range fields {
			if _, ok := byArgument[field]; ok {
				continue
			}
			if !slices.ContainsFunc(subdirectives, func(s subdirective) bool { return s.field == field }) {
				t.Errorf("JSON field %s of %s has no subdirective in the table (subdirectives.go)", field, ty)
			}
		}
	}
}

// syntaxLine is one line of a syntax summary: a subdirective, its
// arguments and its comment.
type syntaxLine struct{ name, args, doc string }

// parseSyntax reads the subdirective lines of a syntax summary (the lines
// between "<directive> [<matcher>] [<provider>] {" and "}"): comment lines
// and "..." are skipped; the preset settings' line ("a|b|c <value>") is
// returned apart, as its names.
func parseSyntax(lines []string) (subs []syntaxLine, settings []string) {
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || l == "..." {
			continue
		}
		head, doc := l, ""
		if i := strings.Index(l, " #"); i >= 0 {
			head, doc = l[:i], strings.TrimSpace(l[i+2:])
		}
		words := strings.Fields(head)
		if strings.Contains(words[0], "|") {
			settings = strings.Split(words[0], "|")
			continue
		}
		subs = append(subs, syntaxLine{name: words[0], args: strings.Join(words[1:], " "), doc: doc})
	}
	return subs, settings
}

// syntaxBlock returns the lines inside the block of directive name in a
// syntax summary.
func syntaxBlock(text, name string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(text, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(t, name+" [<matcher>]"):
			in = true
		case in && t == "}":
			return out
		case in:
			out = append(out, l)
		}
	}
	return out
}

// rowsOf lists the table's rows of directive in.
func rowsOf(in directive) []subdirective {
	var out []subdirective
	for _, s := range subdirectives {
		if s.in&in != 0 {
			out = append(out, s)
		}
	}
	return out
}

// wantSyntax is the syntax summary of directive in as the table gives it,
// for the parser's doc comment.
func wantSyntax(in directive) string {
	var b strings.Builder
	for _, s := range rowsOf(in) {
		if in == onConsent && s.in == onBoth {
			continue
		}
		line := fmt.Sprintf("%-16s %s", s.name, s.args)
		fmt.Fprintf(&b, "//\t\t%-34s # %s\n", line, s.doc)
	}
	return b.String()
}

// checkSyntax compares a syntax summary of directive in with the table:
// every row of the directive (for oauth_bearer_consent, its own rows; the
// shared ones may be shown too) in the table's order, each with the
// table's arguments (and with strict, its doc), nothing else, and for
// oauth_bearer the line of every preset setting.
func checkSyntax(t *testing.T, where, text string, in directive, strict bool) {
	t.Helper()
	subs, settings := parseSyntax(syntaxBlock(text, in.String()))
	var got []syntaxLine
	for _, l := range subs {
		if in == onConsent {
			if i := slices.IndexFunc(subdirectives, func(s subdirective) bool { return s.name == l.name && s.in == onBoth }); i >= 0 {
				if s := subdirectives[i]; s.args != l.args || strict && s.doc != l.doc {
					t.Errorf("%s, %s: %s %s # %s; the table says %s %s # %s", where, in, l.name, l.args, l.doc, s.name, s.args, s.doc)
				}
				continue
			}
		}
		if !strict {
			l.doc = ""
		}
		got = append(got, l)
	}
	var want []syntaxLine
	for _, s := range rowsOf(in) {
		if in == onConsent && s.in == onBoth {
			continue
		}
		l := syntaxLine{name: s.name, args: s.args}
		if strict {
			l.doc = s.doc
		}
		want = append(want, l)
	}
	if !slices.Equal(got, want) {
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("%s, %s: no line %q (or not as the table says)", where, in, strings.TrimSpace(w.name+" "+w.args+" # "+w.doc))
			}
		}
		for _, g := range got {
			if !slices.Contains(want, g) {
				t.Errorf("%s, %s: line %q is not in the table", where, in, strings.TrimSpace(g.name+" "+g.args+" # "+g.doc))
			}
		}
		if strict {
			t.Errorf("%s, %s: the lines as the table gives them, in its order:\n%s", where, in, wantSyntax(in))
		} else {
			t.Errorf("%s, %s: the lines are not in the table's order", where, in)
		}
	}
	if in == onBearer {
		if m := missing(strings.Join(settings, " "), presetSettings()); len(m) > 0 || len(settings) != len(presetSettings()) {
			t.Errorf("%s, %s: the preset settings' line lists %v; the presets have %v", where, in, settings, presetSettings())
		}
	}
}

// The parsers' doc comments show each directive's syntax as the table
// gives it; so does the reference's syntax summary (its comments are its
// own).
func TestDocsParserSyntax(t *testing.T) {
	fset := gotoken.NewFileSet()
	f, err := parser.ParseFile(fset, "caddyfile.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "UnmarshalCaddyfile" || fn.Recv == nil {
			continue
		}
		recv := fn.Recv.List[0].Type.(*ast.StarExpr).X.(*ast.Ident).Name
		in := map[string]directive{"Handler": onBearer, "ConsentHandler": onConsent}[recv]
		checkSyntax(t, "caddyfile.go, the doc comment of "+recv+".UnmarshalCaddyfile", fn.Doc.Text(), in, true)
	}

	sec := docSection(t, referencePage, "## Syntax")
	block, _, _ := strings.Cut(sec[strings.Index(sec, "```caddyfile"):], "```\n\n")
	checkSyntax(t, referencePage+", the syntax summary", block, onBearer, false)
	checkSyntax(t, referencePage+", the syntax summary", block, onConsent, false)
}

// referencePage is the page of the Caddyfile and JSON reference.
const referencePage = "docs/caddyfile.md"

// docSection returns a page of the docs from the heading to the next
// heading of its level or above.
func docSection(t *testing.T, file, heading string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("%s has no %q", file, heading)
	}
	s = s[i+1:]
	level := strings.Index(heading, " ")
	for _, l := range regexp.MustCompile(`(?m)^#{1,6} `).FindAllStringIndex(s[len(heading):], -1) {
		if l[1]-l[0]-1 <= level {
			return s[:len(heading)+l[0]]
		}
	}
	return s
}

// tableAfter returns the rows of the Markdown table that follows marker
// in text, split into cells.
func tableAfter(t *testing.T, text, marker string) [][]string {
	t.Helper()
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("no %q in:\n%s", marker, text)
	}
	var rows [][]string
	started := false
	for _, l := range strings.Split(text[i:], "\n")[1:] {
		if !strings.HasPrefix(l, "|") {
			if started {
				break
			}
			continue
		}
		started = true
		if strings.HasPrefix(l, "|---") {
			continue
		}
		l = strings.ReplaceAll(l, `\|`, "/")
		rows = append(rows, strings.Split(strings.Trim(l, "|"), "|"))
	}
	return rows
}

// The reference's tables have a row for every subdirective, naming its
// JSON field, its values and the grants that accept it; the provider's row
// names every preset, and the preset settings' row every setting; the
// client authentication table has a row for each client_auth value.
func TestDocsReferenceTables(t *testing.T) {
	const where = referencePage
	tables := map[directive][][]string{
		onBoth:    tableAfter(t, docSection(t, where, "## The provider and the client"), "| Caddyfile |"),
		onBearer:  tableAfter(t, docSection(t, where, "## `oauth_bearer`: the token and the upstream request"), "| Caddyfile |"),
		onConsent: tableAfter(t, docSection(t, where, "## `oauth_bearer_consent`: the consent endpoints"), "| Caddyfile |"),
	}
	rowFor := func(in directive, name string) []string {
		for _, r := range tables[in] {
			if regexp.MustCompile("`" + regexp.QuoteMeta(name) + "[` ]").MatchString(r[0]) {
				return r
			}
		}
		return nil
	}
	for _, s := range subdirectives {
		r := rowFor(s.in, s.name)
		if r == nil {
			t.Errorf("%s: the %s table has no row for %s", where, s.in, s.name)
			continue
		}
		switch json := strings.TrimSpace(r[1]); {
		case s.field == "" && json == "(none)":
		case s.field == s.name && json == "same":
		case s.field != "" && strings.Contains(json, "`"+s.field+"`"):
		default:
			t.Errorf("%s: the %s row of the %s table gives JSON field %q, not `%s`", where, s.name, s.in, json, s.field)
		}
		line := strings.Join(r, "|")
		if m := missing(line, s.values); len(m) > 0 {
			t.Errorf("%s: the %s row of the %s table does not name the values %s", where, s.name, s.in, strings.Join(m, ", "))
		}
		if m := missing(line, s.grants); len(m) > 0 {
			t.Errorf("%s: the %s row of the %s table does not name the grants %s, which accept it", where, s.name, s.in, strings.Join(m, ", "))
		}
	}
	if r := rowFor(onBoth, "oauth_bearer <provider>"); r == nil {
		t.Errorf("%s: no provider row", where)
	} else if m := missing(strings.Join(r, "|"), providers.Names()); len(m) > 0 {
		t.Errorf("%s: the provider row does not name the presets %s", where, strings.Join(m, ", "))
	}
	if r := rowFor(onBoth, presetSettings()[0]); r == nil || !strings.Contains(r[1], "`provider_params`") {
		t.Errorf("%s: no row for the preset settings (provider_params)", where)
	} else if m := missing(r[0], presetSettings()); len(m) > 0 {
		t.Errorf("%s: the preset settings' row does not name %s", where, strings.Join(m, ", "))
	}

	// "Subdirectives other than `resource`, `param` and `header` may be
	// given once".
	sec := docSection(t, where, "## Rules")
	i := strings.Index(sec, "Subdirectives other than")
	if i < 0 {
		t.Fatalf("%s does not say which subdirectives may be repeated", where)
	}
	once, _, _ := strings.Cut(sec[i:], " may be given once")
	for _, s := range subdirectives {
		if s.repeat != strings.Contains(once, "`"+s.name+"`") {
			t.Errorf("%s: %q, but %s is repeatable: %v", where, once, s.name, s.repeat)
		}
	}

	var methods []string
	for _, r := range tableAfter(t, docSection(t, "docs/client-auth.md", "## Client authentication without shared secrets"), "| `client_auth` |") {
		methods = append(methods, r[0])
	}
	if m := missing(strings.Join(methods, " "), providers.ClientAuthMethods); len(m) > 0 {
		t.Errorf("docs/client-auth.md: the client authentication table has no row for %s", strings.Join(m, ", "))
	}
}

// The presets page's tables are generated from providers/: a preset added
// there is in the docs once this test has run with -update, and the test
// fails (printing the tables) until then.
func TestDocsPresetTable(t *testing.T) {
	const file = "docs/presets.md"
	const begin, end = "<!-- The tables below are generated from providers/ by TestDocsPresetTable", "<!-- end of the generated tables -->"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s: no %q ... %q around the generated tables", file, begin, end)
	}
	i += strings.Index(s[i:], "-->\n") + len("-->\n")
	want := "\n" + presetTables() + "\n"
	if s[i:j] == want {
		return
	}
	if *update {
		if err := os.WriteFile(file, []byte(s[:i]+want+s[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: the generated tables are rewritten", file)
		return
	}
	t.Errorf("%s: the presets' tables are not what providers/ gives (go test -run TestDocsPresetTable -update . rewrites them); they should read:\n%s", file, want)
}

// The README's introduction of oauth_bearer names every preset.
func TestDocsREADMENamesThePresets(t *testing.T) {
	sec := docSection(t, "README.md", "### `oauth_bearer`: put a token on the request")
	var names []string
	for _, n := range providers.Names() {
		if n != providers.Generic {
			names = append(names, "`"+n+"`")
		}
	}
	if m := missing(sec, names); len(m) > 0 {
		t.Errorf("README.md, the introduction of oauth_bearer, does not name the presets %s", strings.Join(m, ", "))
	}
}

// presetTables renders the presets and their settings as Markdown tables.
func presetTables() string {
	code := func(s string) string { return "`" + s + "`" }
	// A template's {setting} reads <setting> in the docs.
	tmpl := func(s string) string { return code(regexp.MustCompile(`\{([a-z_]+)\}`).ReplaceAllString(s, "<$1>")) }
	var b strings.Builder
	b.WriteString("| Preset | Token URL | Format | Client auth | Also |\n|---|---|---|---|---|\n")
	var settings []string
	for _, n := range providers.Names() {
		p, _ := providers.Lookup(n)
		name := fmt.Sprintf("`%s` (%s)", n, p.Title)
		if n == providers.Generic {
			name = fmt.Sprintf("`%s` (%s; the default)", n, p.Title)
		}

		var tokenURL string
		switch envs := p.EnvironmentNames(); {
		case p.TokenURLTemplate != "":
			var req []string
			for _, pp := range p.Params {
				if strings.Contains(p.TokenURLTemplate, "{"+pp.Name+"}") {
					if pp.Required {
						req = append(req, code(pp.Name)+" required")
					} else {
						req = append(req, code(pp.Name)+" default "+code(pp.Default))
					}
				}
			}
			tokenURL = tmpl(p.TokenURLTemplate) + " (" + strings.Join(req, "; ") + ")"
		case len(envs) == 1:
			tokenURL = code(p.Environments[envs[0]])
		case len(envs) > 1:
			var lines []string
			for _, e := range envs {
				l := code(e)
				if e == p.DefaultEnvironment {
					l += " (default)"
				}
				lines = append(lines, l+": "+code(p.Environments[e]))
			}
			tokenURL = strings.Join(lines, "<br>")
		default:
			tokenURL = "none: `token_url` (or `issuer`) is required"
		}

		format := code(p.RequestFormat)
		if p.RequestFormat == providers.FormatAuto {
			format += ": " + code(p.PreferredFormat) + " first, then the other once"
		}

		var also []string
		if u := cmp.Or(p.AuthorizeURL, p.AuthorizeURLTemplate); u != "" {
			also = append(also, "authorize URL "+tmpl(u))
		}
		if p.RefreshURL != "" {
			r := "refresh URL " + tmpl(p.RefreshURL)
			if p.RefreshBearer {
				r += ", with the refresh token as a bearer credential"
			}
			also = append(also, r)
		}
		if u := cmp.Or(p.RevokeURL, p.RevokeURLTemplate); u != "" {
			also = append(also, "revoke URL "+tmpl(u))
		}
		if p.ScopeSeparator != " " {
			also = append(also, "scopes joined with "+code(p.ScopeSeparator)+" in the authorize URL")
		}
		if p.Grant != "" {
			also = append(also, "grant "+code(p.Grant)+" by default")
		}
		if p.Audience != "" {
			a := "`audience` defaults to " + code(p.Audience)
			if p.RequiresAudience {
				a += " and is required"
			}
			also = append(also, a)
		}
		if p.OrgHeader != "" {
			also = append(also, "`org <id>` sets "+code(p.OrgHeader))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, tokenURL, format, code(p.ClientAuth), strings.Join(also, "; "))

		for _, pp := range p.Params {
			def := "required"
			if !pp.Required {
				def = code(pp.Default)
			}
			settings = append(settings, fmt.Sprintf("| %s | %s | %s | %s |", code(pp.Name), code(n), def, pp.Doc))
		}
	}
	b.WriteString("\nThe presets' own settings, each a subdirective of its name (JSON: `provider_params`):\n\n")
	b.WriteString("| Setting | Preset | Default | Meaning |\n|---|---|---|---|\n")
	b.WriteString(strings.Join(settings, "\n") + "\n")
	return b.String()
}
