package consumer

import (
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/kdeliver/kdeliver/internal/metrics"
)

// Stats are a consumer's figures since it was built (InFlight and Lag: of
// the Run in progress). The same figures are exported through
// OpenTelemetry (see "Metrics" in the README) while Run runs.
type Stats struct {
	// Handled counts records finished: the handler (or the sink) took
	// them, or they were skipped or dead-lettered. The commit may pass
	// them.
	Handled int64
	// Failed counts handler calls that returned an error other than
	// [Skip] (each attempt counts), Retried the calls that were retries.
	Failed, Retried int64
	// Skipped counts records committed past without success: the handler
	// returned [Skip], or an at-most-once handler failed.
	Skipped int64
	// DeadLettered counts records written to the dead-letter topic.
	DeadLettered int64
	// Duplicates counts records a dedup guard found done already
	// ([NewWithGuard]), whose handler it did not run.
	Duplicates int64
	// Commits and CommitErrors count offset commits that succeeded and
	// failed.
	Commits, CommitErrors int64
	// HangingTransactions counts partitions reported held by a hanging
	// transaction ([kdeliver.WithHangingTransactionWatch]).
	HangingTransactions int64
	// InFlight is the records polled and not finished (the concurrent
	// engine; 0 for the sequential loop between records).
	InFlight int64
	// Lag is each owned partition's high watermark minus its committed
	// offset, by topic and partition: what a crash now would read again,
	// plus what is not read yet.
	Lag map[string]map[int32]int64
}

type counters struct {
	handled, failed, retried, skipped, commits, commitErrors atomic.Int64
}

// Stats returns the consumer's figures. It is safe to call at any time.
func (c *Consumer) Stats() Stats {
	s := Stats{
		Handled: c.stats.handled.Load(), Failed: c.stats.failed.Load(), Retried: c.stats.retried.Load(),
		Skipped: c.stats.skipped.Load(), DeadLettered: c.deadLettered.Load(),
		Commits: c.stats.commits.Load(), CommitErrors: c.stats.commitErrors.Load(),
		HangingTransactions: c.hanging.Load(), InFlight: c.inFlight(), Lag: c.lag.Snapshot(),
	}
	if c.guard != nil {
		s.Duplicates = c.guard.Stats().Duplicates
	}
	return s
}

// Stats is [Consumer.Stats].
func (s *SinkConsumer) Stats() Stats { return s.c.Stats() }

func (c *Consumer) inFlight() int64 {
	r := c.cur.Load()
	if r == nil || r.eng == nil {
		return 0
	}
	return r.eng.inFlight()
}

// noteCommit counts a commit that took since start and ended with err.
func (c *Consumer) noteCommit(start time.Time, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
		c.stats.commitErrors.Add(1)
	} else {
		c.stats.commits.Add(1)
	}
	c.commitDur.Record(time.Since(start).Seconds(), outcome)
}

// observe registers the consumer's instruments for the length of a Run.
func (c *Consumer) observe() (unregister func()) {
	m := metrics.Meter(c.cfg.t.Shared.MeterProvider)
	base := []attribute.KeyValue{metrics.KeySystem.String("kafka"), metrics.KeyGroup.String(c.group), metrics.KeySemantics.String(c.sem.String())}
	set := metrics.NewSet(m, c.log, base...)
	load := func(a *atomic.Int64) func() int64 { return a.Load }
	set.Counter("kdeliver.consumer.records", "{record}", "Records finished by outcome: handled (the handler or sink took them; includes skipped and dead-lettered), skipped, dead_lettered, duplicate (a dedup guard found them done)",
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("handled")}, Load: load(&c.stats.handled)},
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("skipped")}, Load: load(&c.stats.skipped)},
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("dead_lettered")}, Load: load(&c.deadLettered)},
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("duplicate")}, Load: func() int64 {
			if c.guard == nil {
				return 0
			}
			return c.guard.Stats().Duplicates
		}},
	)
	if g := c.guard; g != nil {
		set.Counter("kdeliver.dedup.store.errors", "{call}", "Failed dedup store calls (reserve, confirm, release)",
			metrics.Series{Load: func() int64 { return g.Stats().StoreErrors }})
		set.Counter("kdeliver.dedup.takeovers", "{key}", "Keys acquired after waiting for another holder's lease",
			metrics.Series{Load: func() int64 { return g.Stats().Takeovers }})
	}
	set.Counter("kdeliver.consumer.handler.calls", "{call}", "Handler calls that failed (outcome=failed, each attempt) and calls that were retries (outcome=retry)",
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("failed")}, Load: load(&c.stats.failed)},
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("retry")}, Load: load(&c.stats.retried)},
	)
	set.Counter("kdeliver.consumer.commits", "{commit}", "Offset commits by outcome (ok, error)",
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("ok")}, Load: load(&c.stats.commits)},
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("error")}, Load: load(&c.stats.commitErrors)},
	)
	set.Counter("kdeliver.transactions.hanging", "{partition}", "Partitions reported held by a hanging transaction (kdeliver.WithHangingTransactionWatch)",
		metrics.Series{Load: load(&c.hanging)})
	set.Gauge("kdeliver.consumer.in_flight", "{record}", "Records polled and not finished", func(observe func(int64, ...attribute.KeyValue)) {
		observe(c.inFlight())
	})
	set.Gauge("kdeliver.consumer.lag", "{record}", "Per owned partition: high watermark minus committed offset", func(observe func(int64, ...attribute.KeyValue)) {
		c.lag.Each(func(t string, p int32, lag int64) {
			observe(lag, metrics.KeyTopic.String(t), metrics.KeyPartition.String(strconv.Itoa(int(p))))
		})
	})
	return set.Register()
}
