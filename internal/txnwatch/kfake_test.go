package txnwatch

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestHangingOnKfake runs the whole story on kfake, which implements
// DescribeProducers, ListTransactions, DescribeTransactions and
// WriteTxnMarkers: a producer leaves a transaction open, more records come
// after it, the watcher reports the partition with the producer, Abort
// frees it and a read_committed reader then reads every other record.
func TestHangingOnKfake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "hang"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seeds := kgo.SeedBrokers(c.ListenAddrs()...)

	txn, err := kgo.NewClient(seeds, kgo.TransactionalID("stuck-1"), kgo.TransactionTimeout(10*time.Minute),
		kgo.DefaultProduceTopic("hang"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	if err := txn.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := txn.ProduceSync(ctx, &kgo.Record{Partition: 1, Value: fmt.Appendf(nil, "txn-%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	// The transaction stays open: the producer "froze".

	plain, err := kgo.NewClient(seeds, kgo.DefaultProduceTopic("hang"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for i := range 10 {
		if err := plain.ProduceSync(ctx, &kgo.Record{Partition: 1, Value: fmt.Appendf(nil, "plain-%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	watcher, err := kgo.NewClient(seeds)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	reports := make(chan Report, 4)
	w, err := New(watcher, 200*time.Millisecond, func() map[string][]int32 { return map[string][]int32{"hang": {0, 1}} },
		func(r Report) { reports <- r }, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- w.Run(wctx) }()
	var r Report
	select {
	case r = <-reports:
	case <-ctx.Done():
		t.Fatal("no report of the hanging partition within a minute")
	}
	wcancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pid, epoch, err := txn.ProducerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Topic != "hang" || r.Partition != 1 || r.ProducerID != pid || r.ProducerEpoch != epoch ||
		r.TransactionalID != "stuck-1" || r.TxnStartOffset != 0 || r.LastStableOffset != 0 || r.HighWatermark != 15 {
		t.Fatalf("report %+v; want hang[1] LSO 0 HWM 15 held by producer %d epoch %d (stuck-1) from offset 0", r, pid, epoch)
	}
	if !strings.Contains(r.String(), "--brokers "+c.ListenAddrs()[0]) {
		t.Errorf("report lacks the brokers: %s", r)
	}
	t.Log(r)

	adm := kadm.NewClient(watcher)
	open, err := OpenTransactions(ctx, adm, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 1 || open[0].ProducerID != pid || open[0].TransactionalID != "stuck-1" || open[0].State != "Ongoing" ||
		open[0].Topic != "hang" || open[0].Partition != 1 || open[0].StartOffset != 0 || open[0].TimeoutMillis != 600000 {
		t.Fatalf("open transactions %v; want one, stuck-1's on hang[1] from 0 (Ongoing, 10m timeout)", open)
	}

	if _, err := Abort(ctx, adm, "hang", 0, -1); err == nil || !strings.Contains(err.Error(), "no open transaction on hang[0]") {
		t.Errorf("Abort of a partition with no transaction: %v", err)
	}
	if _, err := Abort(ctx, adm, "hang", 1, pid+1); err == nil || !strings.Contains(err.Error(), "has no open transaction") {
		t.Errorf("Abort with another producer ID: %v", err)
	}
	aborted, err := Abort(ctx, adm, "hang", 1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if aborted.ProducerID != pid {
		t.Errorf("aborted %v, want producer %d", aborted, pid)
	}
	lso, err := adm.ListCommittedOffsets(ctx, "hang")
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := lso.Lookup("hang", 1); o.Offset != 16 { // 5 + 10 records, 1 marker
		t.Errorf("LSO %d after the abort, want 16", o.Offset)
	}

	reader, err := kgo.NewClient(seeds, kgo.ConsumeTopics("hang"), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	var got []string
	for len(got) < 10 && ctx.Err() == nil {
		reader.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if len(got) != 10 || got[0] != "plain-0" || got[9] != "plain-9" {
		t.Errorf("read_committed read %v; want plain-0..plain-9 (the aborted txn-* discarded)", got)
	}
}
