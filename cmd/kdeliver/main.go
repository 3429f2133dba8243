// Command kdeliver shows what each Kafka delivery guarantee really delivers.
//
//	kdeliver demo       send numbered records through lost acknowledgements and
//	                    consumer crashes, per semantics, and count what arrived
//	kdeliver explain S  the settings of semantics S, what it guarantees under each
//	                    failure, and where the guarantee ends
//
// With no --brokers the demo runs on an embedded in-process cluster (kfake),
// so it needs no Kafka installed. Run "kdeliver help" for the flags.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the command ran and failed: a guarantee was violated, brokers unreachable, ...
	exitUsage = 2 // bad command line
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `kdeliver shows what each Kafka delivery guarantee delivers.

Usage:
  kdeliver demo [flags]          produce numbered records through lost acks and consumer
                                 crashes for each semantics and print what was delivered
  kdeliver explain SEMANTICS     settings, guarantees under each failure, and where the
                                 guarantee ends
  kdeliver verify [flags]        seed numbered records into your pipeline's input topic, kill
                                 and restart the pipeline, and count what its output lost,
                                 duplicated, reordered and aborted (kdeliver verify -h)
  kdeliver txns list|abort       list open and hanging transactions, abort a hanging one
                                 (--brokers required; kdeliver txns help)
  kdeliver help                  this text

Semantics: at-most-once (amo), at-least-once (alo), exactly-once (eos).

Run "kdeliver demo -h" for the demo's flags.
`

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// run is the whole command, in-process so tests can call it. It returns the
// exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "demo":
		err = runDemo(rest, stdout, stderr)
	case "explain":
		err = runExplain(rest, stdout, stderr)
	case "verify":
		err = runVerify(rest, stdout, stderr)
	case "txns":
		err = runTxns(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		err = usagef("unknown command %q: use demo, explain, verify, txns or help", cmd)
	}
	return report(err, stderr)
}

// report prints err on one line and returns the exit code for it.
func report(err error, stderr io.Writer) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errReported):
		return exitFail
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "kdeliver: %s (run \"kdeliver help\")\n", oneLine(err.Error()))
		return exitUsage
	}
	fmt.Fprintf(stderr, "kdeliver: %s\n", oneLine(err.Error()))
	return exitFail
}

// errReported is a failure whose explanation is already printed.
var errReported = errors.New("reported")

// oneLine joins a multi-line error (a ConfigError lists one problem a line).
func oneLine(s string) string {
	s = strings.TrimPrefix(s, "kdeliver: ")
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i]), "- "))
	}
	return strings.Join(lines, " ")
}

// flagSet is a flag.FlagSet that reports errors instead of exiting and
// prints its usage only when asked (-h).
type flagSet struct {
	*flag.FlagSet
	help   func()
	footer string // printed after the flags by -h
}

func newFlagSet(name, synopsis string, w io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // not on every error: one line is enough
	f := &flagSet{FlagSet: fs}
	f.help = func() {
		fmt.Fprintf(w, "Usage: %s\n", synopsis)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n == 0 {
			return
		}
		fmt.Fprintf(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		if f.footer != "" {
			fmt.Fprintf(w, "\n%s\n", f.footer)
		}
	}
	return f
}

// parse parses args, turning flag errors into usage errors and printing the
// usage for -h.
func (fs *flagSet) parse(args []string) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.help()
		return err
	}
	return usageError{err.Error()}
}
