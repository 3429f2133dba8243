package kdeliver_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kdeliver/kdeliver"
)

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReadmePresetTable(t *testing.T) {
	s := readme(t)
	const start, end = "<!-- preset-table -->\n", "<!-- /preset-table -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", start, end)
	}
	if got, want := s[i+len(start):j], kdeliver.PresetTable(); got != want {
		t.Errorf("README's preset table is out of date; replace it with kdeliver.PresetTable():\n%s", want)
	}
}

func TestReadmeQuickStartCompiles(t *testing.T) {
	// The quick start is examples/quickstart/main.go, which `go vet ./...`
	// and the tests compile.
	src, err := os.ReadFile("examples/quickstart/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(readme(t), "```go\n"+string(src)+"```") {
		t.Error("README's quick start differs from examples/quickstart/main.go: copy the file into the ```go block")
	}
}

// readmeCommands returns the commands in README's sh blocks and code spans.
func readmeCommands(s string) []string {
	var cmds []string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(s, -1) {
		for _, line := range strings.Split(block[1], "\n") {
			if i := strings.Index(line, " #"); i >= 0 {
				line = line[:i]
			}
			if line = strings.TrimSpace(line); line != "" {
				cmds = append(cmds, line)
			}
		}
	}
	for _, span := range regexp.MustCompile("`((?:go (?:run|test)|\\./test)[^`]*)`").FindAllStringSubmatch(s, -1) {
		cmds = append(cmds, span[1])
	}
	return cmds
}

func TestReadmeCommandsExist(t *testing.T) {
	cmds := readmeCommands(readme(t))
	if len(cmds) < 5 {
		t.Fatalf("found only %d commands in README.md: %q", len(cmds), cmds)
	}
	flags := commandFlags(t)
	// Flags quoted on their own (`--records N`) are one of the commands'.
	for _, m := range regexp.MustCompile("`--([a-z-]+)").FindAllStringSubmatch(readme(t), -1) {
		if !flags["demo"][m[1]] && !flags["verify"][m[1]] && !flags["txns"][m[1]] {
			t.Errorf("README mentions --%s, which neither demo, verify nor txns defines", m[1])
		}
	}
	for _, cmd := range cmds {
		f := strings.Fields(strings.NewReplacer("'", "", `"`, "").Replace(cmd))
		switch {
		case f[0] == "./test":
			if fi, err := os.Stat("test"); err != nil || fi.Mode()&0o111 == 0 {
				t.Errorf("%q: ./test is missing or not executable (%v)", cmd, err)
			}
		case len(f) >= 3 && f[0] == "go" && f[1] == "run":
			checkGoRun(t, cmd, f[2:], flags)
		case len(f) >= 3 && f[0] == "go" && f[1] == "test":
			checkGoTest(t, cmd, "", f[2:])
		case len(f) >= 6 && f[0] == "cd" && f[2] == "&&" && f[3] == "go" && f[4] == "test":
			// a test of another module: cd integration && go test ...
			checkGoTest(t, cmd, f[1], f[5:])
		default:
			t.Errorf("README command %q is not one this test knows how to check", cmd)
		}
	}
}

// commandFlags returns the flags of each kdeliver command the README runs:
// its own, and the connection flags all three take.
func commandFlags(t *testing.T) map[string]map[string]bool {
	flags := map[string]map[string]bool{
		"demo":   flagNames(t, "cmd/kdeliver/demo.go"),
		"verify": flagNames(t, "cmd/kdeliver/verify.go"),
		"txns":   flagNames(t, "cmd/kdeliver/txns.go"),
	}
	for name := range flagNames(t, "cmd/kdeliver/connect.go") {
		for _, f := range flags {
			f[name] = true
		}
	}
	return flags
}

func checkGoRun(t *testing.T, cmd string, args []string, flags map[string]map[string]bool) {
	dir := filepath.Clean(args[0])
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	isMain := false
	for _, file := range files {
		b, _ := os.ReadFile(file)
		isMain = isMain || strings.Contains(string(b), "\npackage main\n") || strings.HasPrefix(string(b), "package main\n")
	}
	if !isMain {
		t.Errorf("%q: %s is not a main package", cmd, dir)
		return
	}
	if dir != filepath.Join("cmd", "kdeliver") || len(args) < 2 {
		return
	}
	switch args[1] {
	case "demo", "verify", "txns":
		if args[1] == "txns" && (len(args) < 3 || args[2] != "list" && args[2] != "abort") {
			t.Errorf("%q: txns takes list or abort", cmd)
		}
		for _, a := range args[2:] {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if strings.HasPrefix(a, "-") && !flags[args[1]][name] {
				t.Errorf("%q: %s has no flag %s", cmd, args[1], a)
			}
		}
	case "explain":
		if len(args) != 3 {
			t.Errorf("%q: explain takes one semantics", cmd)
		} else if _, err := kdeliver.ParseSemantics(args[2]); err != nil {
			t.Errorf("%q: %v", cmd, err)
		}
	default:
		t.Errorf("%q: kdeliver has no command %s", cmd, args[1])
	}
}

func checkGoTest(t *testing.T, cmd, dir string, args []string) {
	var names, pkgs []string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "-run" && i+1 < len(args):
			if args[i+1] != "^$" { // -run '^$' with -bench: no test
				names = strings.Split(args[i+1], "|")
			}
			i++
		case args[i] == "-bench" && i+1 < len(args):
			for _, b := range strings.Split(args[i+1], "|") {
				names = append(names, "Benchmark"+strings.SplitN(b, "/", 2)[0])
			}
			i++
		case args[i] == "." || strings.HasPrefix(args[i], "./"):
			pkgs = append(pkgs, strings.TrimSuffix(args[i], "..."))
		}
	}
	if len(pkgs) == 0 {
		t.Errorf("%q names no package", cmd)
	}
	var src strings.Builder
	for _, p := range pkgs {
		files, _ := filepath.Glob(filepath.Join(dir, p, "*_test.go"))
		if len(files) == 0 {
			t.Errorf("%q: %s has no tests", cmd, p)
		}
		for _, file := range files {
			b, _ := os.ReadFile(file)
			src.Write(b)
		}
	}
	// -run and -bench patterns are unanchored: a name matches the tests it
	// begins.
	for _, n := range names {
		n, _, _ = strings.Cut(n, "/") // a subtest: its test must exist
		if !strings.Contains(src.String(), "func "+n) {
			t.Errorf("%q: no test %s in %v", cmd, n, pkgs)
		}
	}
}

// flagNames returns the flags a flag set in file defines.
func flagNames(t *testing.T, file string) map[string]bool {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{"h": true, "help": true}
	for _, m := range regexp.MustCompile(`fs\.\w+\((?:[^,()"]+, )?"([a-z-]+)",`).FindAllStringSubmatch(string(b), -1) {
		names[m[1]] = true
	}
	if len(names) < 5 {
		t.Fatalf("found only flags %v in %s", names, file)
	}
	return names
}

// pendingDocs are documents other work items are writing. Until they land a
// link to them is logged, not failed; remove each entry when its file exists
// (the test fails to remind you).
var pendingDocs = map[string]bool{}

func TestReadmeLinksExist(t *testing.T) {
	for _, m := range regexp.MustCompile(`\]\(([^)#:]+)\)`).FindAllStringSubmatch(readme(t), -1) {
		_, err := os.Stat(m[1])
		switch {
		case err != nil && pendingDocs[m[1]]:
			t.Logf("README links to %s, which is not written yet", m[1])
		case err != nil:
			t.Errorf("README links to %s, which does not exist", m[1])
		case pendingDocs[m[1]]:
			t.Errorf("%s exists now: remove it from pendingDocs", m[1])
		}
	}
}
