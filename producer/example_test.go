package producer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

// startKafka starts an embedded Kafka (package kdelivertest) with topic
// "orders"; real code passes its own broker addresses.
func startKafka() *kdelivertest.Cluster {
	c, err := kdelivertest.NewCluster(kdelivertest.WithBrokers(1), kdelivertest.WithTopic("orders", 3))
	if err != nil {
		panic(err)
	}
	return c
}

func ExampleNew() {
	kafka := startKafka()
	defer kafka.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	p, err := producer.New(kafka.Brokers(), kdeliver.AtLeastOnce)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close(ctx)

	// Produce returns once every in-sync replica has the record.
	if err := p.Produce(ctx, &kgo.Record{Topic: "orders", Key: []byte("42"), Value: []byte("paid")}); err != nil {
		fmt.Println("not delivered:", err)
		return
	}
	fmt.Println("delivered")
	// Output: delivered
}

func ExampleNew_refused() {
	// Every contradiction is reported at once.
	_, err := producer.New(nil, kdeliver.AtLeastOnce, producer.WithLeaderAck())
	fmt.Println(errors.Is(err, kdeliver.ErrInvalidConfig))
	fmt.Println(err)

	// Exactly-once writes only inside transactions, through another
	// constructor.
	_, err = producer.New([]string{"127.0.0.1:9092"}, kdeliver.ExactlyOnce)
	fmt.Println(err)
	// Output:
	// true
	// kdeliver: invalid at-least-once producer configuration:
	//   - leader-only acks (acks=1) can lose acknowledged records, which at-least-once forbids: remove WithLeaderAck
	//   - no brokers: pass at least one seed broker address, e.g. "127.0.0.1:9092"
	// kdeliver: invalid exactly-once producer configuration: ExactlyOnce writes only inside transactions: use producer.NewTransactional(brokers, transactionalID) instead of producer.New
}

func ExampleProducer_ProduceAsync() {
	kafka := startKafka()
	defer kafka.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	p, err := producer.New(kafka.Brokers(), kdeliver.AtLeastOnce, producer.WithMessageIDs())
	if err != nil {
		fmt.Println(err)
		return
	}
	failed := make(chan error, 100)
	for i := range 100 {
		// The callback runs on the client's goroutine: keep it short.
		p.ProduceAsync(ctx, &kgo.Record{Topic: "orders", Value: fmt.Appendf(nil, "order %d", i)}, func(_ *kgo.Record, err error) {
			if err != nil {
				failed <- err
			}
		})
	}
	// Close flushes: every callback has run when it returns.
	if err := p.Close(ctx); err != nil {
		fmt.Println(err)
	}
	fmt.Println("failed:", len(failed))
	// Output: failed: 0
}

func ExampleTransactional_Transact() {
	kafka := startKafka()
	defer kafka.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The transactional ID is unique per running instance and stable
	// across its restarts.
	p, err := producer.NewTransactional(kafka.Brokers(), "billing-0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close(ctx)

	// Both records become visible to read_committed readers together.
	err = p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
		if err := tx.Produce(ctx, &kgo.Record{Topic: "orders", Value: []byte("debit")}); err != nil {
			return err
		}
		return tx.Produce(ctx, &kgo.Record{Topic: "orders", Value: []byte("credit")})
	})
	fmt.Println("committed:", err == nil)

	// An error from fn aborts: neither record is ever visible.
	err = p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
		if err := tx.Produce(ctx, &kgo.Record{Topic: "orders", Value: []byte("refund")}); err != nil {
			return err
		}
		return errors.New("payment provider said no")
	})
	fmt.Println("aborted:", errors.Is(err, kdeliver.ErrAborted), kdeliver.ClassOf(err))

	switch kdeliver.ClassOf(err) {
	case kdeliver.Abortable:
		// Nothing is visible; the transaction can be run again.
	case kdeliver.Fatal:
		// Fenced (errors.Is(err, kdeliver.ErrFenced)): another instance took
		// over this transactional ID. Close and exit.
	}

	recs, err := kdelivertest.ReadCommittedRecords(ctx, kafka.Brokers(), "orders")
	if err != nil {
		fmt.Println(err)
		return
	}
	seen := kdelivertest.Values(recs)
	slices.Sort(seen)
	fmt.Println("read_committed sees:", seen)
	// Output:
	// committed: true
	// aborted: true abortable
	// read_committed sees: [credit debit]
}
