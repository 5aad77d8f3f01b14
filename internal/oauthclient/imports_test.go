package oauthclient

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// The OAuth client imports nothing from Caddy, directly or through another
// package: it must stay usable (and testable) without a Caddy instance, and
// the arrows point from the Caddy glue to the client, never back.

const forbiddenPrefix = "github.com/caddyserver/"

// TestNoCaddyImportsDirect reads every Go file of the package, tests
// included.
func TestNoCaddyImportsDirect(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files found (%v)", err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, forbiddenPrefix) || path == "github.com/oauthbearer/caddy-oauth-bearer" {
				t.Errorf("%s imports %s: package oauthclient must not depend on Caddy or on the root package", fset.Position(imp.Pos()), path)
			}
		}
	}
}

// TestNoCaddyImportsTransitive asks the go command for every package the
// package and its tests depend on.
func TestNoCaddyImportsTransitive(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goTool); err != nil {
			t.Skip("the go command is not available to list dependencies")
		}
	}
	out, err := exec.Command(goTool, "list", "-deps", "-test", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list named only %d packages, suspiciously few:\n%s", len(deps), out)
	}
	for _, dep := range deps {
		if strings.HasPrefix(dep, forbiddenPrefix) || dep == "github.com/oauthbearer/caddy-oauth-bearer" {
			t.Errorf("package oauthclient depends on %s", dep)
		}
	}
}
