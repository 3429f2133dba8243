package kdeliver_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// misuses are the programs under testdata/compilefail that must not build,
// with the type error that stops each one: the guarantee and the option
// types say in Go's types what may be combined. Each program holds exactly
// one misuse.
var misuses = map[string]string{
	// An option of one package passed to another's constructor.
	"consumeroption": "cannot use consumer.WithMaxPollRecords(3) (value of interface type consumer.Option) as producer.Option value in argument to producer.New: consumer.Option does not implement producer.Option (missing method ApplyProducer)",
	"eosoption":      `cannot use eos.WithOutputTopic("o") (value of interface type eos.Option) as producer.Option value in argument to producer.New: eos.Option does not implement producer.Option (missing method ApplyProducer)`,
	"produceroption": "cannot use producer.WithLeaderAck() (value of interface type producer.Option) as consumer.Option value in argument to consumer.New: producer.Option does not implement consumer.Option (missing method ApplyConsumer)",
	// A root option of what runs a handler (retries) is no producer option.
	"handleroption": "kdeliver.HandlerOption does not implement producer.Option (missing method ApplyProducer)",
	// An exactly-once producer writes only inside a transaction.
	"producetx": "p.Produce undefined (type *producer.Transactional has no field or method Produce)",
}

var buildError = regexp.MustCompile(`(?m)^\S*main\.go:\d+:\d+: `)

// TestMisuseDoesNotCompile builds each program of testdata/compilefail with
// the go command running the test: "control" uses the API as intended and
// must build (so that a broken build cannot pass for the misuses failing),
// every other one must fail with exactly its expected type error.
func TestMisuseDoesNotCompile(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("testdata", "compilefail", "*"))
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, d := range dirs {
		found[filepath.Base(d)] = true
	}
	if !found["control"] {
		t.Fatal("testdata/compilefail/control is missing")
	}
	for name := range misuses {
		if !found[name] {
			t.Errorf("testdata/compilefail/%s is missing", name)
		}
	}
	for name := range found {
		if _, ok := misuses[name]; !ok && name != "control" {
			t.Errorf("testdata/compilefail/%s has no expected error in misuses", name)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	t.Cleanup(cancel)
	// The control first, alone: it compiles the packages the others need,
	// so that they then fail fast on their one error.
	if out, err := build(ctx, "control"); err != nil {
		t.Fatalf("the control program does not build, so the misuses prove nothing: %v\n%s", err, out)
	}
	for name, want := range misuses {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, err := build(ctx, name)
			if err == nil {
				t.Fatalf("testdata/compilefail/%s builds; want it refused with: %s", name, want)
			}
			if ctx.Err() != nil {
				t.Fatalf("go build did not finish in time: %v\n%s", err, out)
			}
			if !strings.Contains(out, want) {
				t.Fatalf("go build failed without the expected type error %q:\n%s", want, out)
			}
			if n := len(buildError.FindAllString(out, -1)); n != 1 {
				t.Errorf("%d build errors, want only the misuse:\n%s", n, out)
			}
		})
	}
}

// build runs go build on testdata/compilefail/name from the module root,
// with the test's environment, discarding the binary.
func build(ctx context.Context, name string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", os.DevNull, "./"+filepath.ToSlash(filepath.Join("testdata", "compilefail", name)))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}
