// Package txnwatchtest checks the hanging-transaction watchdog
// (internal/txnwatch) and `kdeliver txns` against real Kafka: a
// transactional producer SIGSTOPped in the middle of a transaction with a
// 10-minute transaction timeout holds a partition's last stable offset, a
// read_committed consumer is stuck behind it, the watcher reports the
// partition with the producer's ID, `kdeliver txns abort` frees it, and the
// consumer then reads every record written after the transaction.
//
//	KDELIVER_KAFKA_HOME=~/.cache/kdeliver/kafka-4.4.0 KDELIVER_KAFKA_BACKEND=process KDELIVER_REQUIRE_KAFKA=1 \
//		go test -race ./integration/txnwatchtest/
//
// With no real Kafka it runs on kfake, or fails when KDELIVER_REQUIRE_KAFKA
// is set.
package txnwatchtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

var cluster *integration.Cluster

// kdeliver is the command, built once by TestMain.
var kdeliver string

func TestMain(m *testing.M) {
	if os.Getenv(integration.EnvHelper) != "" {
		os.Exit(m.Run())
	}
	ctx := context.Background()
	var err error
	cluster, err = integration.New(ctx, integration.WithNodes(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "kdeliver-txnwatchtest-")
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

// Environment of the stuck producer helper.
const (
	envTopic = "TXNWATCHTEST_TOPIC"
	envTxnID = "TXNWATCHTEST_TXN_ID"
)

const (
	txnRecords   = 20 // in the transaction left open
	plainRecords = 50 // written after it, non-transactionally
	bound        = 3 * time.Second
)

// readyLine is what the helper prints once its records are written.
var readyLine = regexp.MustCompile(`stuck producer ready: producer ID (\d+) epoch (\d+)`)

// TestHelperStuckProducer begins a transaction, writes txnRecords records
// to partition 0 inside it, says so, and waits to be frozen.
func TestHelperStuckProducer(t *testing.T) {
	if !integration.InHelper("TestHelperStuckProducer") {
		t.Skip("runs only as a helper process")
	}
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(os.Getenv(integration.EnvBrokers), ",")...),
		kgo.TransactionalID(os.Getenv(envTxnID)),
		kgo.TransactionTimeout(10*time.Minute), // below the broker's transaction.max.timeout.ms (15m by default)
		kgo.DefaultProduceTopic(os.Getenv(envTopic)), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := range txnRecords {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: fmt.Appendf(nil, "txn-%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	pid, epoch, err := cl.ProducerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("stuck producer ready: producer ID %d epoch %d\n", pid, epoch)
	select {} // until SIGSTOP, then SIGKILL
}

var runs int

func TestHangingTransactionFoundAndAborted(t *testing.T) {
	runs++
	name := "txnwatch-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(runs)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := cluster.CreateTopic(ctx, name, 1); err != nil {
		t.Fatal(err)
	}
	brokers := strings.Join(cluster.Brokers(), ",")

	// The producer writes inside a transaction, then freezes.
	p := integration.StartHelper(t, "TestHelperStuckProducer", append(cluster.Env(), envTopic+"="+name, envTxnID+"="+name+"-txn")...)
	var pid int64
	for ready := false; !ready; {
		if m := readyLine.FindStringSubmatch(p.Output()); m != nil {
			pid, _ = strconv.ParseInt(m[1], 10, 64)
			ready = true
			continue
		}
		select {
		case <-p.Done():
			t.Fatalf("the stuck producer exited before it was ready: %v\n%s", p.Wait(ctx), p.Output())
		case <-ctx.Done():
			t.Fatalf("the stuck producer was not ready in time\n%s", p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Logf("producer %d wrote %d records in a transaction and is SIGSTOPped", pid, txnRecords)

	// More records after the open transaction.
	plain := cluster.Client(t, kgo.DefaultProduceTopic(name), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	for i := range plainRecords {
		if err := plain.ProduceSync(ctx, &kgo.Record{Value: fmt.Appendf(nil, "plain-%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	// A read_committed consumer, stuck at the last stable offset.
	consumer := cluster.Client(t, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{name: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	got := make(chan string, txnRecords+plainRecords+1)
	cctx, ccancel := context.WithCancel(ctx)
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for cctx.Err() == nil {
			consumer.PollFetches(cctx).EachRecord(func(r *kgo.Record) { got <- string(r.Value) })
		}
	}()
	defer func() { ccancel(); <-consumed }()

	// The watcher reports the partition and the frozen producer.
	watcher := cluster.Client(t)
	reports := make(chan txnwatch.Report, 4)
	w, err := txnwatch.New(watcher, bound, func() map[string][]int32 { return map[string][]int32{name: {0}} },
		func(r txnwatch.Report) { reports <- r }, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	watched := make(chan error)
	go func() { watched <- w.Run(wctx) }()
	var r txnwatch.Report
	select {
	case r = <-reports:
	case <-ctx.Done():
		t.Fatal("the watcher did not report the hanging partition")
	}
	wcancel()
	if err := <-watched; err != nil {
		t.Errorf("watcher: %v", err)
	}
	t.Logf("report: %s", r)
	if r.Topic != name || r.Partition != 0 || r.ProducerID != pid || r.TransactionalID != name+"-txn" ||
		r.TxnStartOffset != 0 || r.LastStableOffset != 0 || r.HighWatermark < txnRecords+plainRecords || r.StalledFor <= bound {
		t.Fatalf("report %+v; want %s[0] held at LSO 0 by producer %d (%s-txn) from offset 0, HWM at least %d, stalled longer than %v",
			r, name, pid, name, txnRecords+plainRecords, bound)
	}
	if n := len(got); n != 0 {
		t.Fatalf("the read_committed consumer read %d records past an open transaction", n)
	}

	// kdeliver txns list --hanging finds it too.
	var hanging []struct {
		Topic           string
		Partition       int32
		StartOffset     int64  `json:"start_offset"`
		ProducerID      int64  `json:"producer_id"`
		TransactionalID string `json:"transactional_id"`
	}
	out := kdeliverRun(t, ctx, "txns", "list", "--brokers", brokers, "--hanging", "--older-than", "1s", "--json")
	if err := json.Unmarshal(out, &hanging); err != nil {
		t.Fatalf("txns list --hanging --json is not JSON: %v\n%s", err, out)
	}
	found := false
	for _, h := range hanging {
		found = found || h.Topic == name && h.Partition == 0 && h.ProducerID == pid && h.StartOffset == 0 && h.TransactionalID == name+"-txn"
	}
	if !found {
		t.Fatalf("txns list --hanging does not list %s[0] held by producer %d:\n%s", name, pid, out)
	}

	// kdeliver txns abort frees the partition.
	out = kdeliverRun(t, ctx, "txns", "abort", "--brokers", brokers, "--topic", name, "--partition", "0",
		"--producer-id", strconv.FormatInt(pid, 10), "--yes")
	t.Logf("txns abort: %s", bytes.TrimSpace(out))
	if !bytes.Contains(out, []byte(fmt.Sprintf("aborted the transaction of producer ID %d", pid))) {
		t.Fatalf("txns abort printed no abort:\n%s", out)
	}

	// The consumer now reads every record written after the transaction
	// and none of the aborted ones.
	var values []string
	for len(values) < plainRecords {
		select {
		case v := <-got:
			values = append(values, v)
		case <-ctx.Done():
			t.Fatalf("the consumer read %d of %d records after the abort: %d lost", len(values), plainRecords, plainRecords-len(values))
		}
	}
	for i, v := range values {
		if want := fmt.Sprintf("plain-%d", i); v != want {
			t.Fatalf("record %d after the abort is %q, want %q (the aborted txn-* records must not be read)", i, v, want)
		}
	}
	t.Logf("after the abort the consumer read all %d records, 0 lost", len(values))

	// The partition's leader no longer lists the transaction.
	if cluster.Kind() != integration.BackendKfake { // kfake's WriteTxnMarkers keeps the producer's state
		open, err := txnwatch.OpenTransactions(ctx, cluster.Admin(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range open {
			if o.Topic == name {
				t.Errorf("after the abort, still open: %s", o)
			}
		}
	}
}

// kdeliverRun runs the kdeliver command and returns its stdout; a non-zero
// exit fails the test.
func kdeliverRun(t *testing.T, ctx context.Context, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, kdeliver, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kdeliver %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}
