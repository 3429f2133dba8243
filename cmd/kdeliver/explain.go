package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/kdeliver/kdeliver"
)

// failure is one row of "what is guaranteed when X fails".
type failure struct{ what, outcome string }

// explanation is what `kdeliver explain` prints beyond the preset.
type explanation struct {
	promise  string
	build    []string // the constructors that give this semantics
	failures []failure
	ends     []string // where this semantics' guarantee ends
}

// weakestLinks is the end-to-end chain every semantics depends on: the
// overall guarantee is that of its weakest link.
var weakestLinks = []string{
	"source: a record created twice upstream (a retried HTTP request calling Produce twice) is two records to Kafka; stamp IDs (producer.WithMessageIDs) and deduplicate downstream",
	"producer: idempotence deduplicates retries within one producer session only; a restarted non-transactional producer that re-sends writes new records",
	"consumer: readers of transactional output must use read_committed, or they also see records of aborted transactions",
	"sink: a handler's effects outside Kafka (database writes, HTTP calls, emails) are not undone by a Kafka abort; the sink must be idempotent or commit the offsets in its own transaction",
}

var explanations = map[kdeliver.Semantics]explanation{
	kdeliver.AtMostOnce: {
		promise: "each record is delivered zero or one time: a failure loses records, never repeats them",
		build: []string{
			"producer  producer.New(brokers, kdeliver.AtMostOnce)",
			"consumer  consumer.New(brokers, group, topics, kdeliver.AtMostOnce)",
		},
		failures: []failure{
			{"producer retry", "there is none: with acks=0 the producer never learns whether a request arrived, so a request refused or lost on the way is lost silently; nothing is ever sent twice"},
			{"consumer crash", "a batch's offsets are committed before the handler sees it: the records of the batch not yet handled when the process dies are lost, never redelivered"},
			{"rebalance", "the polled batch is committed before processing and the rebalance waits for the batch: the new owner starts after it, so nothing is handled twice"},
			{"broker loss", "records the leader had not replicated are lost with it (acks=0, or acks=1 with producer.WithLeaderAck)"},
		},
		ends: []string{
			"no record is protected: any failure above loses records, and how many depends on batch sizes (consumer.WithMaxPollRecords bounds a crash's loss)",
			"a handler that fails is not retried: its record is skipped",
		},
	},
	kdeliver.AtLeastOnce: {
		promise: "nothing acknowledged is lost: each record is delivered one or more times, and a failure may repeat records",
		build: []string{
			"producer  producer.New(brokers, kdeliver.AtLeastOnce)",
			"consumer  consumer.New(brokers, group, topics, kdeliver.AtLeastOnce)",
		},
		failures: []failure{
			{"producer retry", "Produce retries until the delivery timeout; idempotence makes the broker drop a retried batch it already has, so a lost acknowledgement does not duplicate within one producer session. When the timeout expires Produce returns a *kdeliver.DeliveryError: the record may or may not be written, and re-sending it may duplicate"},
			{"consumer crash", "offsets are committed only after the handler succeeded: records handled since the last commit are delivered again after the restart (duplicates, never loss)"},
			{"rebalance", "processed offsets are committed on revoke and the rebalance waits for the batch in hand; a record whose handler had not finished is delivered again to the new owner"},
			{"broker loss", "acks=all: an acknowledged record is on every in-sync replica, so it survives losing the leader as long as the topic has min.insync.replicas >= 2 and unclean leader election is off (broker settings kdeliver cannot check)"},
		},
		ends: []string{
			"handlers must be idempotent, or duplicates become double effects (a second charge, a second email)",
			"a record whose Produce failed is not acknowledged and not covered: the application decides to re-send (may duplicate) or drop (loses)",
			"a handler that keeps failing is retried for ever, with backoff (kdeliver.WithBackoff), and its partition waits; kdeliver.WithMaxAttempts stops Run with a *kdeliver.HandlerError instead, without committing past the record",
			"loss is avoided only while replication is healthy (min.insync.replicas >= 2, no unclean leader election)",
		},
	},
	kdeliver.ExactlyOnce: {
		promise: "the effect of each record happens once: inside Kafka transactions (a transactional producer, an eos.Session), in a sink that stores the offsets with its rows, or behind a dedup guard",
		build: []string{
			"producer  producer.NewTransactional(brokers, transactionalID): writes only inside Transact, there is no Produce outside a transaction",
			"pipeline  eos.New(brokers, group, topics, transactionalID, eos.WithOutputTopic(topic)): consume, produce and commit in one transaction",
			"consumer  consumer.NewWithSink(brokers, group, topics, sink): the offsets commit in the sink's own transaction (pgstore.NewSink)",
			"          consumer.NewWithGuard(brokers, group, topics, guard): a dedup.Guard skips records whose effect was done",
		},
		failures: []failure{
			{"producer retry", "retries are deduplicated by the idempotent producer, and a transaction's records become visible all together or not at all: an aborted transaction's records stay in the log but read_committed readers never see them"},
			{"consumer crash", "input offsets are committed in the same transaction as the output (package eos) or in the sink's own transaction (consumer.NewWithSink): a crash aborts both, and the input is processed again into a fresh transaction"},
			{"rebalance", "a revoke aborts the open transaction and the new owner starts from the last committed offsets; a zombie instance is fenced by the producer epoch (its errors match kdeliver.ErrFenced) and must exit"},
			{"broker loss", "acks=all as for at-least-once; an open transaction is aborted or completed by the coordinator, never half-applied"},
		},
		ends: []string{
			"Kafka to Kafka only through package eos (a transactional producer alone makes its writes atomic, not what it read); other sinks only through consumer.NewWithSink or consumer.NewWithGuard: producer.New and consumer.New refuse ExactlyOnce and name these",
			"behind a dedup guard, a crash after the side effect and before the guard marks it done repeats the effect, unless the mark commits with it (dedup.ConfirmInTx, pgstore or redisstore ConfirmTx)",
			"every downstream reader must use read_committed (consumer.WithReadCommitted for an at-most-once or at-least-once consumer)",
			"the transactional ID must be unique per running instance and stable across its restarts, or instances fence each other",
			"side effects in a handler besides its output records (HTTP calls, database writes) are repeated when a transaction aborts and the input is processed again",
		},
	},
}

func runExplain(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("explain", "kdeliver explain SEMANTICS", stderr)
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("explain takes one semantics (at-most-once, at-least-once or exactly-once), got %d arguments", fs.NArg())
	}
	sem, err := kdeliver.ParseSemantics(fs.Arg(0))
	if err != nil {
		return usageError{err.Error()}
	}
	writeExplanation(stdout, sem)
	return nil
}

func writeExplanation(w io.Writer, sem kdeliver.Semantics) {
	e := explanations[sem]
	p := sem.Preset()
	fmt.Fprintf(w, "%s: %s.\n\n", sem, e.promise)

	fmt.Fprintf(w, "Settings (kdeliver.%s.Preset()):\n", goName(sem))
	timeout := "none"
	if p.Producer.DeliveryTimeout > 0 {
		timeout = p.Producer.DeliveryTimeout.String()
	}
	fmt.Fprintf(w, "  producer  acks=%s, idempotent=%s, retries: %s, in flight per broker: %d, delivery timeout: %s, transactional=%s\n",
		p.Producer.Acks, yesNo(p.Producer.Idempotent), p.Producer.Retries, p.Producer.MaxInFlight, timeout, yesNo(p.Producer.Transactional))
	fmt.Fprintf(w, "  consumer  commit %s, isolation %s, auto-commit=%s\n\n",
		p.Consumer.CommitOrder, p.Consumer.Isolation, yesNo(p.Consumer.AutoCommit))

	fmt.Fprintln(w, "Build it:")
	for _, b := range e.build {
		fmt.Fprintf(w, "  %s\n", b)
	}
	fmt.Fprintln(w)

	fmt.Fprintln(w, "Under each failure:")
	for _, f := range e.failures {
		fmt.Fprintf(w, "  %-15s %s\n", f.what, f.outcome)
	}
	fmt.Fprintln(w)

	fmt.Fprintln(w, "Where the guarantee ends:")
	for _, s := range e.ends {
		fmt.Fprintf(w, "  - %s\n", s)
	}
	fmt.Fprintln(w, "  End to end, the weakest link decides:")
	for i, s := range weakestLinks {
		fmt.Fprintf(w, "    %d. %s\n", i+1, s)
	}
	fmt.Fprintf(w, "\nSee it happen: go run ./cmd/kdeliver demo --semantics %s\n", sem)
}

// goName is the Go identifier of sem, e.g. AtLeastOnce.
func goName(sem kdeliver.Semantics) string {
	var b strings.Builder
	for _, w := range strings.Split(sem.String(), "-") {
		b.WriteString(strings.ToUpper(w[:1]) + w[1:])
	}
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
