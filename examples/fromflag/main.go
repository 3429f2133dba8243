// Command fromflag takes the delivery guarantee from a flag and builds both
// ends from that one value: the producer (producer.New, or
// producer.NewTransactional for exactly-once, used through the
// producer.Sender both implement) and the consumer (consumer.New, or
// consumer.NewWithGuard with a dedup guard for exactly-once).
//
// It sends five orders, and order-3 a second time with the same message ID,
// as an application does that re-sends after a timeout it cannot tell from
// a failure. To Kafka the re-send is a new record: the at-most-once and
// at-least-once consumers handle order-3 twice, the exactly-once one's guard
// recognizes the message ID and skips it.
//
//	go run ./examples/fromflag -semantics at-least-once      # embedded cluster
//	go run ./examples/fromflag -semantics eos -brokers host:9092
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	sem := semanticsFlag(flag.CommandLine)
	exampleenv.Main("fromflag", func(ctx context.Context, brokers []string, w io.Writer) error {
		return run(ctx, *sem, brokers, w)
	})
}

// semanticsFlag defines -semantics on fs. kdeliver.Semantics is a
// flag.TextVar value: it parses every spelling ParseSemantics takes.
func semanticsFlag(fs *flag.FlagSet) *kdeliver.Semantics {
	var sem kdeliver.Semantics
	fs.TextVar(&sem, "semantics", kdeliver.AtLeastOnce, "delivery guarantee: at-most-once, at-least-once or exactly-once (amo, alo, eos)")
	return &sem
}

// newSender builds the producer end for sem.
func newSender(brokers []string, sem kdeliver.Semantics, id string) (producer.Sender, string, error) {
	pre := sem.Preset().Producer
	if sem == kdeliver.ExactlyOnce {
		// The transactional ID must be unique per running instance and
		// stable across its restarts (e.g. the pod name).
		p, err := producer.NewTransactional(brokers, "fromflag-"+id, producer.WithMessageIDs())
		if err != nil {
			return nil, "", err
		}
		return p, fmt.Sprintf("producer.NewTransactional: acks=%s, idempotent, each Send one transaction", pre.Acks), nil
	}
	p, err := producer.New(brokers, sem, producer.WithMessageIDs())
	if err != nil {
		return nil, "", err
	}
	idem := "not idempotent"
	if pre.Idempotent {
		idem = "idempotent"
	}
	return p, fmt.Sprintf("producer.New(%s): acks=%s, %s, retries: %s", sem, pre.Acks, idem, pre.Retries), nil
}

// newConsumer builds the consumer end for sem.
func newConsumer(brokers []string, sem kdeliver.Semantics, group, topic string) (*consumer.Consumer, string, error) {
	topics := []string{topic}
	if sem == kdeliver.ExactlyOnce {
		// A guard keyed by the message ID; its store outlives restarts in
		// production (pgstore, redisstore), here it is in memory.
		guard, err := dedup.NewGuard(dedup.NewMemory(10_000), group)
		if err != nil {
			return nil, "", err
		}
		c, err := consumer.NewWithGuard(brokers, group, topics, guard)
		return c, "consumer.NewWithGuard: read_committed, commits after handling, the guard skips a message ID already done", err
	}
	c, err := consumer.New(brokers, group, topics, sem)
	return c, fmt.Sprintf("consumer.New(%s): commits %s", sem, sem.Preset().Consumer.CommitOrder), err
}

func run(ctx context.Context, sem kdeliver.Semantics, given []string, w io.Writer) error {
	// Fresh names, so that a rerun on a real cluster starts clean.
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic, group := "orders-"+id, "billing-"+id
	brokers, stop, err := exampleenv.Brokers(ctx, given, 1, topic)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(w, "semantics %s\n", sem)

	p, desc, err := newSender(brokers, sem, id)
	if err != nil {
		return err
	}
	defer p.Close(ctx)
	fmt.Fprintln(w, desc)
	orders := make([]*kgo.Record, 5)
	for i := range orders {
		orders[i] = &kgo.Record{Topic: topic, Value: fmt.Appendf(nil, "order-%d", i+1)}
	}
	// Send returns once every record is as safe as sem promises.
	if err := p.Send(ctx, orders[:4]...); err != nil {
		return err
	}
	// The re-send keeps the message ID the producer stamped on order-3.
	again := &kgo.Record{Topic: topic, Value: orders[2].Value, Headers: orders[2].Headers}
	if err := p.Send(ctx, again, orders[4]); err != nil {
		return err
	}
	fmt.Fprintln(w, "sent order-1..order-4, order-3 again with its message ID, then order-5")

	c, desc, err := newConsumer(brokers, sem, group, topic)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	fmt.Fprintln(w, desc)
	runCtx, done := context.WithCancel(ctx)
	var third atomic.Int32
	err = c.Run(runCtx, func(_ context.Context, rec *kgo.Record) error {
		fmt.Fprintf(w, "handled %s\n", rec.Value)
		switch string(rec.Value) {
		case "order-3":
			third.Add(1)
		case "order-5":
			done() // Run commits what was handled, leaves the group and returns nil
		}
		return nil
	})
	done()
	if err != nil {
		return err
	}
	if n := third.Load(); n == 1 {
		fmt.Fprintln(w, "order-3 handled once: the guard dropped the re-send")
	} else {
		fmt.Fprintf(w, "order-3 handled %d times: a re-send is a new record to Kafka, only a dedup guard drops it\n", n)
	}
	return nil
}
