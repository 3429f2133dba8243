package main

import (
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func runExample(sem kdeliver.Semantics) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, sem, nil, os.Stdout); err != nil {
		panic(err)
	}
}

func Example_atMostOnce() {
	runExample(kdeliver.AtMostOnce)
	// Output:
	// semantics at-most-once
	// producer.New(at-most-once): acks=0, not idempotent, retries: none
	// sent order-1..order-4, order-3 again with its message ID, then order-5
	// consumer.New(at-most-once): commits before processing
	// handled order-1
	// handled order-2
	// handled order-3
	// handled order-4
	// handled order-3
	// handled order-5
	// order-3 handled 2 times: a re-send is a new record to Kafka, only a dedup guard drops it
}

func Example_atLeastOnce() {
	runExample(kdeliver.AtLeastOnce)
	// Output:
	// semantics at-least-once
	// producer.New(at-least-once): acks=all, idempotent, retries: until the delivery timeout
	// sent order-1..order-4, order-3 again with its message ID, then order-5
	// consumer.New(at-least-once): commits after processing
	// handled order-1
	// handled order-2
	// handled order-3
	// handled order-4
	// handled order-3
	// handled order-5
	// order-3 handled 2 times: a re-send is a new record to Kafka, only a dedup guard drops it
}

func Example_exactlyOnce() {
	runExample(kdeliver.ExactlyOnce)
	// Output:
	// semantics exactly-once
	// producer.NewTransactional: acks=all, idempotent, each Send one transaction
	// sent order-1..order-4, order-3 again with its message ID, then order-5
	// consumer.NewWithGuard: read_committed, commits after handling, the guard skips a message ID already done
	// handled order-1
	// handled order-2
	// handled order-3
	// handled order-4
	// handled order-5
	// order-3 handled once: the guard dropped the re-send
}

func TestSemanticsFlag(t *testing.T) {
	for args, want := range map[string]kdeliver.Semantics{
		"":                         kdeliver.AtLeastOnce,
		"-semantics eos":           kdeliver.ExactlyOnce,
		"-semantics at-most-once":  kdeliver.AtMostOnce,
		"-semantics=AT_LEAST_ONCE": kdeliver.AtLeastOnce,
	} {
		fs := flag.NewFlagSet("fromflag", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		sem := semanticsFlag(fs)
		if err := fs.Parse(strings.Fields(args)); err != nil || *sem != want {
			t.Errorf("%q: semantics %v, %v; want %v", args, *sem, err, want)
		}
	}
	fs := flag.NewFlagSet("fromflag", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	semanticsFlag(fs)
	if err := fs.Parse([]string{"-semantics", "twice"}); err == nil || !strings.Contains(err.Error(), "exactly-once") {
		t.Errorf("-semantics twice: %v; want an error listing the accepted values", err)
	}
}
