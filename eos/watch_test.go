package eos

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestHangingTransactionWatch: another producer leaves a transaction open
// on input partition 1 with records behind it; a session with the watch
// copies partition 0 and reports partition 1, once, with the producer
// holding it.
func TestHangingTransactionWatch(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seeds := kgo.SeedBrokers(c.Brokers()...)
	txn, err := kgo.NewClient(seeds, kgo.TransactionalID("stuck-producer"), kgo.TransactionTimeout(10*time.Minute),
		kgo.DefaultProduceTopic("in"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
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
	plain, err := kgo.NewClient(seeds, kgo.DefaultProduceTopic("in"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
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
	s, err := New(c.Brokers(), "g", []string{"in"}, "watched", fastOpts(WithOutputTopic("out"),
		kdeliver.WithHangingTransactionWatch(300*time.Millisecond, func(r kdeliver.HangingTransaction) { reports <- r }))...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, copyTo("out")) }()
	var rep kdeliver.HangingTransaction
	select {
	case rep = <-reports:
	case <-ctx.Done():
		t.Fatal("no hanging transaction reported")
	}
	if rep.Topic != "in" || rep.Partition != 1 || rep.ProducerID < 0 || rep.TransactionalID != "stuck-producer" {
		t.Errorf("report %+v, want in[1] held by stuck-producer", rep)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().HangingTransactions; n != 1 {
		t.Errorf("Stats().HangingTransactions = %d, want 1", n)
	}
}
