package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// TestHangingTransactionWatch: a producer leaves a transaction open on
// partition 1 and more records pile up behind it; a read_committed
// consumer with the watch reads partition 0 and reports partition 1, once,
// with the producer holding it, while the other partition goes on.
func TestHangingTransactionWatch(t *testing.T) {
	cl := newCluster(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	seeds := kgo.SeedBrokers(cl.Brokers()...)
	txn, err := kgo.NewClient(seeds, kgo.TransactionalID("stuck-producer"), kgo.TransactionTimeout(10*time.Minute),
		kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	if err := txn.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := txn.ProduceSync(ctx, &kgo.Record{Partition: 1, Value: []byte("open")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	plain, err := kgo.NewClient(seeds, kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for i := range 10 {
		for _, p := range []int32{0, 1} {
			if err := plain.ProduceSync(ctx, &kgo.Record{Partition: p, Value: fmt.Appendf(nil, "%d", i)}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}

	reports := make(chan kdeliver.HangingTransaction, 10)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithReadCommitted(),
		kdeliver.WithHangingTransactionWatch(300*time.Millisecond, func(r kdeliver.HangingTransaction) { reports <- r }))
	r := start(c, func(context.Context, *kgo.Record) error { return nil })
	var rep kdeliver.HangingTransaction
	select {
	case rep = <-reports:
	case <-ctx.Done():
		t.Fatal("no hanging transaction reported")
	}
	if rep.Topic != "t" || rep.Partition != 1 || rep.ProducerID < 0 || rep.TransactionalID != "stuck-producer" || rep.HighWatermark <= rep.LastStableOffset {
		t.Errorf("report %+v, want t[1] held by stuck-producer with records behind it", rep)
	}
	if s := rep.String(); !strings.Contains(s, "kdeliver txns abort") {
		t.Errorf("report %q says nothing of how to free the partition", s)
	}
	waitFor(t, "partition 0 committed", func() bool { return committed(cl, "g")[0] == 10 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	select {
	case again := <-reports:
		t.Errorf("reported twice for one stall: %+v", again)
	default:
	}
	if n := c.Stats().HangingTransactions; n != 1 {
		t.Errorf("Stats().HangingTransactions = %d, want 1", n)
	}
}

// TestHangingTransactionWatchNeedsReadCommitted: the watch on a consumer
// that reads uncommitted records, or with a bound of 0, is refused.
func TestHangingTransactionWatchNeedsReadCommitted(t *testing.T) {
	for _, tc := range []struct {
		opts []Option
		want string
	}{
		{[]Option{kdeliver.WithHangingTransactionWatch(time.Minute, nil)}, "WithReadCommitted"},
		{[]Option{WithReadCommitted(), kdeliver.WithHangingTransactionWatch(0, nil)}, "bound must be positive"},
	} {
		_, err := New([]string{"127.0.0.1:9092"}, "g", []string{"t"}, kdeliver.AtLeastOnce, tc.opts...)
		if !errors.Is(err, kdeliver.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New = %v, want ErrInvalidConfig naming %q", err, tc.want)
		}
	}
}
