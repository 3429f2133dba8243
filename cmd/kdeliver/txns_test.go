package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// hangingCluster is a kfake cluster with a transaction left open on
// hang[1] (3 records) and 4 plain records after it.
func hangingCluster(t *testing.T) (brokers string, pid int64) {
	t.Helper()
	return hangingClusterWith(t, nil, nil)
}

// hangingClusterWith is hangingCluster with more options of the cluster,
// and the clients' options to connect to it.
func hangingClusterWith(t *testing.T, cluster []kfake.Opt, conn []kgo.Opt) (brokers string, pid int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(2, "hang")}, cluster...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	opts := append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("hang"), kgo.RecordPartitioner(kgo.ManualPartitioner())}, conn...)
	txn, err := kgo.NewClient(append(opts, kgo.TransactionalID("stuck-1"), kgo.TransactionTimeout(10*time.Minute))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(txn.Close)
	plain, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := txn.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := txn.ProduceSync(ctx, &kgo.Record{Partition: 1, Value: fmt.Appendf(nil, "txn-%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		if err := plain.ProduceSync(ctx, &kgo.Record{Partition: 1, Value: fmt.Appendf(nil, "plain-%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	pid, _, err = txn.ProducerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(c.ListenAddrs(), ","), pid
}

func TestTxnsListAndAbort(t *testing.T) {
	brokers, pid := hangingCluster(t)

	code, out, errOut := runCmd("txns", "list", "--brokers", brokers)
	if code != exitOK || !strings.Contains(out, "stuck-1") || !strings.Contains(out, "Ongoing") || !strings.Contains(out, "hang[1]") ||
		!strings.Contains(out, fmt.Sprint(pid)) || !strings.Contains(out, "10m0s") {
		t.Fatalf("txns list: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	t.Logf("txns list:\n%s", out)

	code, out, errOut = runCmd("txns", "list", "--brokers", brokers, "--json")
	var listed []ListedTxn
	if code != exitOK || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 ||
		listed[0].TransactionalID != "stuck-1" || listed[0].ProducerID != pid || listed[0].Partitions[0] != "hang[1]" || listed[0].TimeoutSeconds != 600 {
		t.Fatalf("txns list --json: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// The producer wrote just now: not older than 15m.
	code, out, _ = runCmd("txns", "list", "--brokers", brokers, "--hanging")
	if code != exitOK || !strings.Contains(out, "no partition") {
		t.Errorf("txns list --hanging (15m): exit %d, stdout:\n%s", code, out)
	}
	code, out, errOut = runCmd("txns", "list", "--brokers", brokers, "--hanging", "--older-than", "0s")
	if code != exitOK || !strings.Contains(out, "stuck-1") ||
		!strings.Contains(out, "kdeliver txns abort --brokers "+brokers+" --topic hang --partition 1 --producer-id "+fmt.Sprint(pid)) {
		t.Fatalf("txns list --hanging --older-than 0s: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	t.Logf("txns list --hanging:\n%s", out)
	code, out, _ = runCmd("txns", "list", "--brokers", brokers, "--hanging", "--older-than", "0s", "--json")
	var hanging []HangingTxn
	if code != exitOK || json.Unmarshal([]byte(out), &hanging) != nil || len(hanging) != 1 ||
		hanging[0].Topic != "hang" || hanging[0].Partition != 1 || hanging[0].StartOffset != 0 || hanging[0].ProducerID != pid || hanging[0].TransactionalID != "stuck-1" {
		t.Fatalf("txns list --hanging --json: exit %d, stdout:\n%s", code, out)
	}

	stdin = strings.NewReader("n\n")
	defer func() { stdin = nil }()
	code, out, errOut = runCmd("txns", "abort", "--brokers", brokers, "--topic", "hang", "--partition", "1")
	if code != exitFail || !strings.Contains(errOut, "not aborted") || !strings.Contains(out, "[y/N]") {
		t.Fatalf("txns abort answered n: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, _, errOut = runCmd("txns", "abort", "--brokers", brokers, "--topic", "hang", "--partition", "0", "--yes")
	if code != exitFail || !strings.Contains(errOut, "no open transaction on hang[0]") {
		t.Errorf("txns abort of a free partition: exit %d, stderr:\n%s", code, errOut)
	}
	stdin = strings.NewReader("y\n")
	code, out, errOut = runCmd("txns", "abort", "--brokers", brokers, "--topic", "hang", "--partition", "1")
	want := fmt.Sprintf("aborted the transaction of producer ID %d epoch 0 on hang[1] (from offset 0); its last stable offset is now 8", pid)
	if code != exitOK || !strings.Contains(out, want) {
		t.Fatalf("txns abort answered y: exit %d, stdout:\n%s\nstderr:\n%s\nwant %q", code, out, errOut, want)
	}
	t.Logf("txns abort:\n%s", out)
	// kfake's WriteTxnMarkers frees the LSO (checked above) but leaves
	// the producer's state alone, so DescribeProducers still lists the
	// transaction here; integration/txnwatchtest checks on real Kafka
	// that it is gone.
}

func TestTxnsUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"txns"}, "list or abort"},
		{[]string{"txns", "frob"}, `unknown txns command "frob"`},
		{[]string{"txns", "list"}, "txns list needs --brokers"},
		{[]string{"txns", "abort", "--topic", "t", "--partition", "0"}, "txns abort needs --brokers"},
		{[]string{"txns", "list", "--brokers", "127.0.0.1:1", "--older-than", "1m"}, "--older-than needs --hanging"},
		{[]string{"txns", "list", "--brokers", "127.0.0.1:1", "extra"}, "takes no arguments"},
		{[]string{"txns", "list", "--brokers", ",", "--hanging"}, "empty address"},
		{[]string{"txns", "abort", "--brokers", "127.0.0.1:1", "--partition", "0"}, "needs --topic"},
		{[]string{"txns", "abort", "--brokers", "127.0.0.1:1", "--topic", "t"}, "needs --partition"},
		{[]string{"txns", "abort", "--brokers", "127.0.0.1:1", "--topic", "t", "--partition", "0", "--producer-id", "-5"}, "producer IDs are 0 or more"},
		{[]string{"txns", "abort", "--nope"}, "flag provided but not defined"},
	} {
		code, _, errOut := runCmd(c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("kdeliver %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}
	code, out, _ := runCmd("txns", "help")
	if code != exitOK || !strings.Contains(out, "kafka-transactions.sh find-hanging") {
		t.Errorf("txns help: exit %d, stdout:\n%s", code, out)
	}
	code, _, errOut := runCmd("txns", "list", "--brokers", "127.0.0.1:1", "--timeout", "2s")
	if code != exitFail || !strings.Contains(errOut, "check --brokers") {
		t.Errorf("txns list on a closed port: exit %d, stderr %q; want exit 1 naming --brokers", code, errOut)
	}
}
