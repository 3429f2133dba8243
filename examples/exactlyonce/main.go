// Command exactlyonce writes payments with an ExactlyOnce (transactional)
// producer: one transaction is aborted after its records were written, the
// next one commits. A read_committed reader sees only the committed
// payments; the aborted ones stay in the log, invisible to it.
//
// Kafka-to-Kafka processing (consume, produce, commit offsets in one
// transaction) goes through package eos; this example shows the producer
// side and what read_committed readers see.
//
//	go run ./examples/exactlyonce                      # embedded cluster
//	go run ./examples/exactlyonce -brokers host:9092   # a real cluster
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

func main() { exampleenv.Main("exactlyonce", run) }

var errCardDeclined = errors.New("card declined")

func run(ctx context.Context, given []string, w io.Writer) error {
	// Fresh names, so that a rerun on a real cluster starts clean.
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic := "payments-" + id
	brokers, stop, err := exampleenv.Brokers(ctx, given, 1, topic)
	if err != nil {
		return err
	}
	defer stop()

	// The transactional ID must be unique per running instance and stable
	// across its restarts (e.g. the pod name).
	p, err := producer.NewTransactional(brokers, "payments-writer-"+id)
	if err != nil {
		return err
	}
	defer p.Close(ctx)

	write := func(names ...string) func(context.Context, *producer.Tx) error {
		return func(ctx context.Context, tx *producer.Tx) error {
			for _, n := range names {
				if err := tx.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(n)}); err != nil {
					return err
				}
			}
			if names[0] == "payment-a" {
				return errCardDeclined // written, then aborted
			}
			return nil
		}
	}
	err = p.Transact(ctx, write("payment-a", "payment-b"))
	fmt.Fprintf(w, "transaction 1 wrote payment-a, payment-b, then failed: aborted=%t\n", errors.Is(err, kdeliver.ErrAborted))
	if err := p.Transact(ctx, write("payment-c", "payment-d", "payment-e")); err != nil {
		return err
	}
	fmt.Fprintln(w, "transaction 2 wrote payment-c, payment-d, payment-e: committed")

	// kdelivertest's reader reads a topic to its end exactly: with
	// read_uncommitted isolation, it sees the whole log.
	all, err := kdelivertest.ReadCommittedRecords(ctx, brokers, topic, kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "read_uncommitted sees the log:  %s\n", strings.Join(kdelivertest.Values(all), " "))
	committed, err := kdelivertest.ReadCommittedRecords(ctx, brokers, topic)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "read_committed sees:            %s\n", strings.Join(kdelivertest.Values(committed), " "))
	return nil
}
