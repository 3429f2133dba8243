// Command atleastonce sends five orders with an AtLeastOnce producer and
// handles them with an AtLeastOnce consumer whose handler fails once: the
// failing record is retried (its offset is not committed while it fails) and
// nothing is lost.
//
//	go run ./examples/atleastonce                      # embedded cluster
//	go run ./examples/atleastonce -brokers host:9092   # a real cluster
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/producer"
)

func main() { exampleenv.Main("atleastonce", run) }

func run(ctx context.Context, given []string, w io.Writer) error {
	// Fresh names, so that a rerun on a real cluster starts clean.
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic, group := "orders-"+id, "billing-"+id
	brokers, stop, err := exampleenv.Brokers(ctx, given, 1, topic)
	if err != nil {
		return err
	}
	defer stop()

	p, err := producer.New(brokers, kdeliver.AtLeastOnce)
	if err != nil {
		return err
	}
	defer p.Close(ctx)
	for i := 1; i <= 5; i++ {
		// Produce returns once all in-sync replicas have the record.
		if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: fmt.Appendf(nil, "order-%d", i)}); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "produced order-1..order-5, each acknowledged by all in-sync replicas")

	c, err := consumer.New(brokers, group, []string{topic}, kdeliver.AtLeastOnce,
		kdeliver.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		return err
	}
	runCtx, done := context.WithCancel(ctx)
	var handled, failedOnce atomic.Int32
	err = c.Run(runCtx, func(_ context.Context, rec *kgo.Record) error {
		if string(rec.Value) == "order-3" && failedOnce.Add(1) == 1 {
			fmt.Fprintln(w, "order-3: the payment service is down, handler fails: retried, offset not committed")
			return errors.New("payment service unavailable")
		}
		fmt.Fprintf(w, "handled %s\n", rec.Value)
		if handled.Add(1) == 5 {
			done() // Run commits what was handled, leaves the group and returns nil
		}
		return nil
	})
	done()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "all %d orders handled; offsets committed after processing, so a crash would repeat, never lose\n", handled.Load())
	return nil
}
