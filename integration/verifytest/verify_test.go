// Package verifytest runs `kdeliver verify` against real Kafka: the
// command's own eos copier (kdeliver verify copy, an eos.Session),
// SIGKILLed three times, must keep exactly-once.
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

func TestEOSCopierKilledThreeTimes(t *testing.T) {
	cluster.RequireReal(t)
	runs++
	name := "verify-eos-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(runs)
	// The copier's defaults suit real Kafka: a 10s session timeout (a
	// killed copier's partitions are free again after it) and an 8s
	// transaction timeout. 2ms a record spreads the copy over the kills.
	pipeline := "exec '" + kdeliver + "' verify copy --mode eos --delay 2ms"
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kdeliver, "verify", "--json",
		"--brokers", strings.Join(cluster.Brokers(), ","), "--input", name+"-in", "--output", name+"-out",
		"--records", "3000", "--keys", "10", "--partitions", "3",
		"--run", pipeline, "--kills", "3", "--expect", "exactly-once",
		"--quiet", "60s", "--timeout", "5m")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var rep report
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("kdeliver verify: %v; its --json output is not JSON: %v\nstdout:\n%s\nstderr:\n%s", err, jerr, stdout.Bytes(), stderr.Bytes())
	}
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
		t.Logf("stdout:\n%s\nstderr:\n%s", stdout.Bytes(), stderr.Bytes())
	}
}
