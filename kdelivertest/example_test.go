package kdelivertest_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

// Testing code that copies orders into invoices: start a cluster with its
// topics, seed numbered records, run the code, read back what was
// committed, and audit it against what was seeded. In a test, Start, Seed
// and ReadCommitted do the same and fail the test on an error.
func Example() {
	c, err := kdelivertest.NewCluster(kdelivertest.WithTopic("orders", 1), kdelivertest.WithTopic("invoices", 1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want, err := kdelivertest.SeedRecords(ctx, c.Brokers(), "orders", 10)
	if err != nil {
		fmt.Println(err)
		return
	}

	// The code under test: an at-least-once copy of orders into invoices.
	if err := copyOrders(ctx, c.Brokers(), len(want)); err != nil {
		fmt.Println(err)
		return
	}

	got, err := kdelivertest.ReadCommittedRecords(ctx, c.Brokers(), "invoices")
	if err != nil {
		fmt.Println(err)
		return
	}
	report := kdelivertest.Audit(want, got)
	fmt.Println("exact:", report.Exact())
	fmt.Println(report)
	fmt.Println("orders consumed to the end:", c.CommittedAll("billing", "orders"))
	// Output:
	// exact: true
	// expected 10, read 10, lost 0, duplicated 0 (0 extra copies), reordered 0, unexpected 0
	// orders consumed to the end: true
}

// copyOrders copies n orders into invoices and returns once they are
// copied and their offsets committed.
func copyOrders(ctx context.Context, brokers []string, n int) error {
	p, err := producer.New(brokers, kdeliver.AtLeastOnce)
	if err != nil {
		return err
	}
	defer p.Close(ctx)
	cons, err := consumer.New(brokers, "billing", []string{"orders"}, kdeliver.AtLeastOnce)
	if err != nil {
		return err
	}
	defer cons.Close(ctx)
	runCtx, done := context.WithCancel(ctx)
	defer done()
	var copied atomic.Int32
	return cons.Run(runCtx, func(ctx context.Context, r *kgo.Record) error {
		if err := p.Produce(ctx, &kgo.Record{Topic: "invoices", Key: r.Key, Value: r.Value}); err != nil {
			return err
		}
		if copied.Add(1) == int32(n) {
			done() // Run commits what was handled and returns nil
		}
		return nil
	})
}

// The audit names what went wrong: here a record lost, one read twice, and
// one read before a record of the same key written earlier.
func ExampleAudit() {
	want := []string{"0", "1", "2", "3"} // in the order written, as Seed returns them
	read := func(values ...string) []*kgo.Record {
		recs := make([]*kgo.Record, len(values))
		for i, v := range values {
			recs[i] = &kgo.Record{Key: []byte("k"), Value: []byte(v)}
		}
		return recs
	}
	r := kdelivertest.Audit(want, read("0", "3", "2", "2"))
	fmt.Println("exact:", r.Exact())
	fmt.Println(r)
	fmt.Println("lost:", r.Lost, "duplicated:", r.Duplicated, "reordered:", r.Reordered)
	// Output:
	// exact: false
	// expected 4, read 4, lost 1, duplicated 1 (1 extra copies), reordered 1, unexpected 0; lost e.g. ["1"]; duplicated e.g. ["2"]; reordered e.g. ["2"]
	// lost: [1] duplicated: map[2:1] reordered: [2]
}
