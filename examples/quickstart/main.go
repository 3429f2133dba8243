// Command quickstart is the README's quick start: an at-least-once producer
// and consumer against a Kafka at 127.0.0.1:9092 (compiled by the tests,
// run it against your own cluster).
package main

import (
	"context"
	"fmt"
	"log"
	"os/signal"
	"syscall"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	brokers := []string{"127.0.0.1:9092"}

	// One value picks every setting: acks=all, idempotence, retries until
	// the delivery timeout. Contradicting options are refused by New.
	p, err := producer.New(brokers, kdeliver.AtLeastOnce)
	if err != nil {
		log.Fatal(err) // wraps kdeliver.ErrInvalidConfig, listing every problem
	}
	defer p.Close(context.Background())
	// Produce returns once every in-sync replica has the record.
	if err := p.Produce(ctx, &kgo.Record{Topic: "orders", Value: []byte("order-1")}); err != nil {
		log.Fatal(err) // a *kdeliver.DeliveryError
	}

	// The handler runs first; its offset is committed only after it returns
	// nil. A failing handler is retried with backoff, never skipped. Up to
	// 16 handlers run at once, each key's records one at a time in order;
	// a partition's commit never passes a record still being handled.
	c, err := consumer.New(brokers, "billing", []string{"orders"}, kdeliver.AtLeastOnce,
		kdeliver.WithConcurrency(16, kdeliver.ByKey))
	if err != nil {
		log.Fatal(err)
	}
	err = c.Run(ctx, func(ctx context.Context, rec *kgo.Record) error {
		fmt.Printf("charging %s\n", rec.Value) // may repeat after a crash: keep it idempotent; runs concurrently
		return nil
	})
	if err != nil { // nil after Ctrl-C: the last offsets are committed first
		log.Fatal(err)
	}
}
