package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A test binary started with envRunMain set is the kdeliver command: the
// built-in copier of `kdeliver verify` runs os.Executable(), which in a
// test is this binary.
const envRunMain = "KDELIVER_TEST_RUN_MAIN"

func init() {
	if os.Getenv(envRunMain) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// buildKdeliver builds the kdeliver command (without the race detector: it
// only runs the copier) into a temporary directory.
func buildKdeliver(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH, needed to build the copier: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "kdeliver")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build of cmd/kdeliver: %v\n%s", err, out)
	}
	return bin
}

// verifyJSON runs kdeliver verify --json with args and decodes its report.
func verifyJSON(t *testing.T, args ...string) (int, VerifyReport, string) {
	t.Helper()
	code, out, errOut := runCmd(append([]string{"verify", "--json"}, args...)...)
	var rep VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify exit %d, --json output is not JSON: %v\nstdout:\n%s\nstderr:\n%s", code, err, out, errOut)
	}
	return code, rep, errOut
}

// copierCmd is the --run command of the copier in mode: short group
// timeouts (kfake takes them), a millisecond per record so that the three
// kills land mid-copy.
func copierCmd(bin, mode string) string {
	return shellQuote(bin) + " verify copy --mode " + mode + " --session-timeout 2s --txn-timeout 1s --delay 1ms"
}

func TestVerifyCatchesAtLeastOnceCopier(t *testing.T) {
	bin := buildKdeliver(t)
	code, rep, errOut := verifyJSON(t, "--expect", "exactly-once", "--records", "2000", "--kills", "3", "--quiet", "20s",
		"--run", copierCmd(bin, "alo"))
	if code != exitFail {
		t.Errorf("verify of an at-least-once copier under --expect exactly-once exited %d; want %d", code, exitFail)
	}
	if rep.Pass || rep.Kills != 3 || rep.Starts != 4 {
		t.Errorf("pass %v, kills %d, starts %d; want a failure after 3 kills and 4 starts", rep.Pass, rep.Kills, rep.Starts)
	}
	// Killed between writing a batch and committing its offsets, the
	// copier writes it again: the checker must see the copies.
	if rep.Duplicated == 0 || rep.ExtraCopies < rep.Duplicated || len(rep.Examples.Duplicated) == 0 {
		t.Errorf("duplicated %d (%d extra copies, examples %v); the killed at-least-once copier writes again what it had not committed",
			rep.Duplicated, rep.ExtraCopies, rep.Examples.Duplicated)
	}
	if rep.Lost != 0 || rep.Expected != 2000 || rep.DeliveredOnce+rep.Duplicated != 2000 {
		t.Errorf("expected %d, lost %d, delivered once %d, duplicated %d; at least once loses nothing", rep.Expected, rep.Lost, rep.DeliveredOnce, rep.Duplicated)
	}
	if !strings.Contains(errOut, "exactly-once broken") || !strings.Contains(errOut, "duplicated") {
		t.Errorf("stderr does not say the guarantee broke:\n%s", errOut)
	}
	if t.Failed() {
		t.Logf("report: %+v\nstderr:\n%s", rep, errOut)
	}
}

func TestVerifyPassesEOSCopier(t *testing.T) {
	bin := buildKdeliver(t)
	code, rep, errOut := verifyJSON(t, "--expect", "exactly-once", "--records", "2000", "--kills", "3", "--quiet", "20s",
		"--run", copierCmd(bin, "eos"))
	if code != exitOK || !rep.Pass {
		t.Errorf("verify of the eos copier exited %d (pass %v, failed %v); want 0", code, rep.Pass, rep.Failed)
	}
	if rep.Kills != 3 || rep.Starts != 4 {
		t.Errorf("kills %d, starts %d; want 3 and 4", rep.Kills, rep.Starts)
	}
	if rep.Expected != 2000 || rep.DeliveredOnce != 2000 || rep.Lost != 0 || rep.Duplicated != 0 || rep.ReadCommitted != 2000 {
		t.Errorf("expected %d, delivered once %d, lost %d, duplicated %d, read committed %d; want 2000 exactly once",
			rep.Expected, rep.DeliveredOnce, rep.Lost, rep.Duplicated, rep.ReadCommitted)
	}
	// The copier keeps keys, and eos keeps each input partition's order.
	if rep.Reordered != 0 {
		t.Errorf("reordered %d, e.g. %v; the eos copier keeps each key's order", rep.Reordered, rep.Examples.Reordered)
	}
	if t.Failed() {
		t.Logf("report: %+v\nstderr:\n%s", rep, errOut)
	}
}

func TestVerifyCatchesAtMostOnceCopier(t *testing.T) {
	bin := buildKdeliver(t)
	code, rep, errOut := verifyJSON(t, "--expect", "at-least-once", "--records", "2000", "--kills", "1", "--quiet", "5s",
		"--run", copierCmd(bin, "amo"))
	// Killed after committing a batch's offsets and before writing it,
	// the at-most-once copier never writes it.
	if code != exitFail || rep.Pass || rep.Lost == 0 || len(rep.Examples.Lost) == 0 || rep.Duplicated != 0 {
		t.Errorf("exit %d, pass %v, lost %d (e.g. %v), duplicated %d; want exit 1 with records lost and none duplicated\nstderr:\n%s",
			code, rep.Pass, rep.Lost, rep.Examples.Lost, rep.Duplicated, errOut)
	}
}

func TestVerifyDefaultRunsBuiltInCopier(t *testing.T) {
	// The built-in copier is os.Executable(), this test binary: init
	// makes it the command.
	t.Setenv(envRunMain, "1")
	code, out, errOut := runCmd("verify", "--records", "1000", "--quiet", "20s")
	if code != exitOK {
		t.Fatalf("kdeliver verify exited %d; want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"kdeliver verify: 1000 records of run ",
		"on the embedded kfake cluster",
		"kdeliver verify copy --mode eos (built in): started 4 times, SIGKILLed 3 times",
		"verdict: exactly-once held",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "kdeliver verify: committed output holds ") {
		t.Errorf("no progress line on stderr:\n%s", errOut)
	}
}

func TestVerifyUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--brokers", "127.0.0.1:1"}, "--brokers needs --input and --output"},
		{[]string{"--brokers", "127.0.0.1:1,", "--input", "a", "--output", "b"}, "empty address"},
		{[]string{"--input", "a", "--output", "a"}, "must write to another topic"},
		{[]string{"--no-seed"}, "--no-seed needs --brokers"},
		{[]string{"--seed", "--no-seed", "--brokers", "127.0.0.1:1", "--input", "a", "--output", "b"}, "contradict"},
		{[]string{"--records", "0"}, "--records 0: use at least 1"},
		{[]string{"--keys", "0"}, "--keys 0: use at least 1"},
		{[]string{"--kills", "-2"}, "--kills -2: use 0 or more"},
		{[]string{"--kills", "2", "--brokers", "127.0.0.1:1", "--input", "a", "--output", "b"}, "needs --run"},
		{[]string{"--expect", "twice"}, "use exactly-once, at-least-once or at-most-once"},
		{[]string{"--timeout", "0s"}, "use a positive duration"},
		{[]string{"--quiet", "-1s"}, "use a positive duration"},
		{[]string{"--partitions", "0"}, "use at least 1"},
		{[]string{"extra"}, "quote the pipeline's command"},
		{[]string{"--bogus"}, "flag provided but not defined"},
		{[]string{"copy", "--mode", "xo"}, "use eos, alo or amo"},
	} {
		code, out, errOut := runCmd(append([]string{"verify"}, tc.args...)...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, tc.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("verify %q: exit %d, stdout %q, stderr %q; want exit 2 and one line naming %q", tc.args, code, out, errOut, tc.want)
		}
	}
	// The copier outside verify is told what it lacks.
	for _, name := range []string{envBrokers, envInput, envOutput, envGroup} {
		t.Setenv(name, "")
	}
	code, _, errOut := runCmd("verify", "copy")
	if code != exitUsage || !strings.Contains(errOut, "KDELIVER_BROKERS, KDELIVER_GROUP, KDELIVER_INPUT, KDELIVER_OUTPUT") {
		t.Errorf("verify copy without its environment: exit %d, stderr %q; want exit 2 naming the variables", code, errOut)
	}
	code, _, errOut = runCmd("verify", "-h")
	if code != exitOK || !strings.Contains(errOut, "KDELIVER_BROKERS") || !strings.Contains(errOut, "kdv1:RUN:SEQ:KEY:KSEQ") {
		t.Errorf("verify -h: exit %d, usage lacks the environment or the record format:\n%s", code, errOut)
	}
}
