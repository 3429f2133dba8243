// Package verifytest runs `kdeliver verify` against real Kafka: the
// command's own eos copier (kdeliver verify copy, an eos.Session),
// SIGKILLed three times, must keep exactly-once (and verify --no-seed must
// find the same run again), and its at-least-once copier, SIGKILLed three
// times, must be caught duplicating.
//
//	KDELIVER_KAFKA_HOME=~/.cache/kdeliver/kafka-4.4.0 KDELIVER_KAFKA_BACKEND=process KDELIVER_REQUIRE_KAFKA=1 \
//		go test -race ./integration/verifytest/
//
// With no real Kafka it runs on kfake and skips, or fails when
// KDELIVER_REQUIRE_KAFKA is set.
package verifytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver/integration"
)

var cluster *integration.Cluster

// kdeliver is the command, built once by TestMain.
var kdeliver string

func TestMain(m *testing.M) {
	ctx := context.Background()
	var err error
	cluster, err = integration.New(ctx, integration.WithNodes(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "kdeliver-verifytest-")
	if err == nil {
		kdeliver = filepath.Join(dir, "kdeliver")
		var out []byte
		out, err = exec.Command("go", "build", "-o", kdeliver, "github.com/kdeliver/kdeliver/cmd/kdeliver").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("go build of cmd/kdeliver: %w\n%s", err, out)
		}
	}
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	if code != 0 {
		cluster.LogTails(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }, 30)
	}
	cluster.Close(ctx)
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// report is the part of `kdeliver verify --json` the test reads.
type report struct {
	Run                         string
	Kills, Starts               int
	Expected                    int
	DeliveredOnce               int `json:"delivered_once"`
	Lost, Duplicated, Reordered int
	AbortedReads                int `json:"aborted_reads"`
	ReadCommitted               int `json:"read_committed"`
	Pass                        bool
	Failed                      []string
	Ended                       string
	Seconds                     float64
}

var runs int

// topics returns fresh topic names: -count reruns share the cluster.
func topics(kind string) (in, out string) {
	runs++
	name := "verify-" + kind + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(runs)
	return name + "-in", name + "-out"
}

// verify runs kdeliver verify --json on the cluster and decodes its report.
func verify(t *testing.T, args ...string) (report, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	args = append([]string{"verify", "--json", "--brokers", strings.Join(cluster.Brokers(), ",")}, args...)
	cmd := exec.CommandContext(ctx, kdeliver, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var rep report
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("kdeliver %q: %v; its --json output is not JSON: %v\nstdout:\n%s\nstderr:\n%s", args, err, jerr, stdout.Bytes(), stderr.Bytes())
	}
	return rep, fmt.Sprintf("stdout:\n%s\nstderr:\n%s", stdout.Bytes(), stderr.Bytes()), err
}

// copier is the --run command of kdeliver's copier in mode. Its defaults
// suit real Kafka: a 10s session timeout (a killed copier's partitions are
// free again after it) and an 8s transaction timeout. 2ms a record spreads
// the copy over the kills.
func copier(mode string) string {
	return "exec '" + kdeliver + "' verify copy --mode " + mode + " --delay 2ms"
}

func TestEOSCopierKilledThreeTimes(t *testing.T) {
	cluster.RequireReal(t)
	in, out := topics("eos")
	rep, output, err := verify(t, "--input", in, "--output", out,
		"--records", "3000", "--keys", "10", "--partitions", "3",
		"--run", copier("eos"), "--kills", "3", "--expect", "exactly-once",
		"--quiet", "60s", "--timeout", "5m")
	if err != nil || !rep.Pass {
		t.Errorf("kdeliver verify failed: %v (failed: %v)", err, rep.Failed)
	}
	if rep.Kills != 3 || rep.Starts != 4 {
		t.Errorf("kills %d, starts %d; want 3 and 4", rep.Kills, rep.Starts)
	}
	if rep.Expected != 3000 || rep.DeliveredOnce != 3000 || rep.Lost != 0 || rep.Duplicated != 0 || rep.ReadCommitted != 3000 {
		t.Errorf("expected %d, delivered once %d, lost %d, duplicated %d, read committed %d; want 3000 exactly once",
			rep.Expected, rep.DeliveredOnce, rep.Lost, rep.Duplicated, rep.ReadCommitted)
	}
	if rep.Reordered != 0 {
		t.Errorf("reordered %d; the eos copier keeps each key's order", rep.Reordered)
	}
	t.Logf("verify: %s after %.1fs; %d aborted reads (killed transactions, invisible to read_committed)", rep.Ended, rep.Seconds, rep.AbortedReads)
	if t.Failed() {
		t.Fatal(output)
	}

	// --no-seed checks the same run again from what is in the topics.
	again, output, err := verify(t, "--input", in, "--output", out, "--no-seed", "--quiet", "5s")
	if err != nil || !again.Pass || again.Run != rep.Run || again.Expected != 3000 || again.DeliveredOnce != 3000 {
		t.Errorf("verify --no-seed: %v; run %s (want %s), pass %v, expected %d, delivered once %d; want the same run, 3000 exactly once\n%s",
			err, again.Run, rep.Run, again.Pass, again.Expected, again.DeliveredOnce, output)
	}
}

func TestAtLeastOnceCopierCaught(t *testing.T) {
	cluster.RequireReal(t)
	in, out := topics("alo")
	rep, output, err := verify(t, "--input", in, "--output", out,
		"--records", "3000", "--keys", "10", "--partitions", "3",
		"--run", copier("alo"), "--kills", "3", "--expect", "exactly-once",
		"--quiet", "60s", "--timeout", "5m")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || rep.Pass {
		t.Errorf("kdeliver verify of the at-least-once copier under --expect exactly-once: %v, pass %v; want exit status 1", err, rep.Pass)
	}
	// Killed between writing a batch and committing its offsets, the
	// copier writes it again.
	if rep.Kills != 3 || rep.Duplicated == 0 || rep.Lost != 0 {
		t.Errorf("kills %d, duplicated %d, lost %d; want 3 kills, duplicates, nothing lost", rep.Kills, rep.Duplicated, rep.Lost)
	}
	t.Logf("verify: %s after %.1fs; %d duplicated", rep.Ended, rep.Seconds, rep.Duplicated)
	if t.Failed() {
		t.Log(output)
	}
}
