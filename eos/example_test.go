package eos_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// Copy "orders" to "orders-upper" exactly once, upper-casing the values, then
// read the output as a downstream reader must: with read_committed.
func ExampleSession_Run() {
	c, err := kdelivertest.NewCluster(kdelivertest.WithBrokers(1), kdelivertest.WithTopic("orders", 1), kdelivertest.WithTopic("orders-upper", 1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	brokers := c.Brokers()

	in, _ := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DisableClientMetrics())
	for _, v := range []string{"apple", "pear", "plum"} {
		in.ProduceSync(context.Background(), &kgo.Record{Topic: "orders", Value: []byte(v)})
	}
	in.Close()

	s, err := eos.New(brokers, "upper", []string{"orders"}, "upper-0",
		eos.WithOutputTopic("orders-upper"), eos.WithKgoOpts(kgo.DisableClientMetrics()))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(_ context.Context, r *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Key: r.Key, Value: []byte(strings.ToUpper(string(r.Value)))})
			return nil
		})
	}()

	out, _ := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("orders-upper"),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.DisableClientMetrics())
	defer out.Close()
	for n := 0; n < 3; {
		out.PollFetches(context.Background()).EachRecord(func(r *kgo.Record) {
			fmt.Println(string(r.Value))
			n++
		})
	}
	cancel()
	fmt.Println("run:", <-done)
	fmt.Println("close:", s.Close(context.Background()))
	// Output:
	// APPLE
	// PEAR
	// PLUM
	// run: <nil>
	// close: <nil>
}

// Invalid configurations are rejected up front, every problem at once.
func ExampleNew_invalid() {
	_, err := eos.New([]string{"127.0.0.1:9092"}, "g", []string{"in"}, "",
		eos.WithTransactionTimeout(time.Minute), eos.WithDeadLetterTopic("in"))
	fmt.Println(errors.Is(err, kdeliver.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true
	// kdeliver: invalid exactly-once eos session configuration:
	//   - ExactlyOnce needs a transactional ID, unique and stable per producer instance: pass a non-empty transactionalID to eos.New
	//   - transaction timeout 1m0s must be below the session timeout 45s, or a member the group dropped could still commit: lower WithTransactionTimeout or raise WithSessionTimeout
	//   - WithDeadLetterTopic needs kdeliver.WithMaxAttempts(n): after how many attempts a record goes to the dead-letter topic
	//   - the dead-letter topic "in" is also an input topic: a failing record would loop
}
