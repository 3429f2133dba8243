package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/internal/embedded"
)

// seed starts an in-process cluster with topic "orders" holding values.
func seed(values ...string) (*embedded.Cluster, error) {
	ctx := context.Background()
	cluster, err := embedded.Start(ctx, embedded.WithTopic("orders", 1))
	if err != nil {
		return nil, err
	}
	p, err := kgo.NewClient(kgo.SeedBrokers(cluster.Brokers()...), kgo.DefaultProduceTopic("orders"))
	if err != nil {
		cluster.Close()
		return nil, err
	}
	defer p.Close()
	var recs []*kgo.Record
	for _, v := range values {
		recs = append(recs, &kgo.Record{Value: []byte(v)})
	}
	if err := p.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		cluster.Close()
		return nil, err
	}
	return cluster, nil
}

// An at-least-once consumer: each record's offset is committed after its
// handler returns nil. Cancelling Run's ctx stops it cleanly.
func Example() {
	cluster, err := seed("order-1", "order-2", "order-3")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := consumer.New(cluster.Brokers(), "billing", []string{"orders"}, kdeliver.AtLeastOnce)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		fmt.Printf("charged %s\n", rec.Value)
		if rec.Offset == 2 {
			cancel() // stop after the third record: it is still committed
		}
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// charged order-1
	// charged order-2
	// charged order-3
	// Run returned <nil>
}

// New refuses a configuration with every problem listed at once.
func ExampleNew() {
	_, err := consumer.New(nil, "", []string{"orders"}, kdeliver.ExactlyOnce,
		consumer.WithMaxPollRecords(0))
	fmt.Println(errors.Is(err, kdeliver.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true
	// kdeliver: invalid exactly-once consumer configuration:
	//   - no brokers: pass at least one host:port to bootstrap from
	//   - the consumer group is empty: name the group whose offsets record progress
	//   - ExactlyOnce needs the sink in the commit: for Kafka-to-Kafka use package eos (eos.Session commits the offsets in the output transaction); other sinks need package dedup (not released yet); until then choose AtLeastOnce with an idempotent handler
	//   - max poll records 0 is not valid: use at least 1
}

// Skip gives up on a record that can never succeed: it is committed past
// instead of being retried for ever.
func ExampleSkip() {
	cluster, err := seed("order-1", "garbage", "order-3")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := consumer.New(cluster.Brokers(), "billing", []string{"orders"}, kdeliver.AtLeastOnce)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		if rec.Offset == 2 {
			cancel()
		}
		if !strings.HasPrefix(string(rec.Value), "order-") {
			fmt.Printf("skipping %s\n", rec.Value)
			return consumer.Skip(errors.New("not an order"))
		}
		fmt.Printf("charged %s\n", rec.Value)
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// charged order-1
	// skipping garbage
	// charged order-3
	// Run returned <nil>
}
