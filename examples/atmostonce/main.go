// Command atmostonce sends five sensor readings with an AtMostOnce producer
// (acks=0: fire and forget) and handles them with an AtMostOnce consumer,
// which commits each batch before its handler sees it. A reading whose
// handler fails is skipped, never retried: at-most-once loses rather than
// repeats.
//
//	go run ./examples/atmostonce                      # embedded cluster
//	go run ./examples/atmostonce -brokers host:9092   # a real cluster
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

func main() { exampleenv.Main("atmostonce", run) }

func run(ctx context.Context, given []string, w io.Writer) error {
	// Fresh names, so that a rerun on a real cluster starts clean.
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic, group := "readings-"+id, "dashboard-"+id
	brokers, stop, err := exampleenv.Brokers(ctx, given, 1, topic)
	if err != nil {
		return err
	}
	defer stop()

	p, err := producer.New(brokers, kdeliver.AtMostOnce)
	if err != nil {
		return err
	}
	for i := 1; i <= 5; i++ {
		// Produce returns once the record is written to the connection:
		// with acks=0 nobody tells the producer whether it arrived.
		if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: fmt.Appendf(nil, "temperature-%d", i)}); err != nil {
			return err
		}
	}
	if err := p.Close(ctx); err != nil {
		return err
	}
	fmt.Fprintln(w, "sent temperature-1..temperature-5 with acks=0 (no acknowledgement, no retry)")

	c, err := consumer.New(brokers, group, []string{topic}, kdeliver.AtMostOnce)
	if err != nil {
		return err
	}
	runCtx, done := context.WithCancel(ctx)
	var seen atomic.Int32
	err = c.Run(runCtx, func(_ context.Context, rec *kgo.Record) error {
		defer func() {
			if seen.Add(1) == 5 {
				done()
			}
		}()
		if string(rec.Value) == "temperature-2" {
			fmt.Fprintln(w, "temperature-2: handler fails: skipped, its offset was committed before processing")
			return errors.New("dashboard unavailable")
		}
		fmt.Fprintf(w, "handled %s\n", rec.Value)
		return nil
	})
	done()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "4 of 5 readings handled: at-most-once never repeats a reading, and loses one on failure")
	return nil
}
