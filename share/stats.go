package share

import (
	"maps"
	"strconv"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"

	"github.com/kdeliver/kdeliver/internal/metrics"
)

// Stats are a share consumer's figures since it was built. The same
// figures are exported through OpenTelemetry while Run runs.
type Stats struct {
	// Received counts records polled (each delivery counts), Redelivered
	// those with a delivery count above 1, and Deliveries the records
	// polled by delivery count.
	Received, Redelivered int64
	Deliveries            map[int]int64
	// Handled counts records finished: the handler succeeded, or the
	// record was dead-lettered.
	Handled int64
	// Failed counts handler calls that returned an error (a panic
	// included); Retried the calls on a redelivered record.
	Failed, Retried int64
	// Skipped counts at-most-once records whose handler failed: accepted
	// already, never delivered again.
	Skipped int64
	// Unconfirmed counts at-most-once records whose accept the broker did
	// not confirm: not handled (they may be delivered to another consumer).
	Unconfirmed int64
	// DeadLettered counts records written to the dead-letter topic (then
	// rejected); DeadLetterErrors the dead-letter writes that failed.
	DeadLettered, DeadLetterErrors int64
	// Accepted, Released and Rejected count the acknowledgements sent, by
	// type; AckErrors the partitions' acknowledgements the broker
	// refused or that could not be sent.
	Accepted, Released, Rejected, AckErrors int64
	// Duplicates counts records a dedup guard found done already
	// ([NewWithGuard]), whose handler it did not run.
	Duplicates int64
}

type counters struct {
	receivedN, redelivered, handled, failed, retried, skipped, unconfirmed atomic.Int64
	deadLettered, deadLetterErrors                                         atomic.Int64
	accepted, released, rejected, ackErrors                                atomic.Int64

	dmu        sync.Mutex
	deliveries map[int]int64
}

func (s *counters) received(deliveryCount int) {
	s.receivedN.Add(1)
	if deliveryCount > 1 {
		s.redelivered.Add(1)
	}
	s.dmu.Lock()
	s.deliveries[deliveryCount]++
	s.dmu.Unlock()
}

// Stats returns the consumer's figures. It is safe to call at any time.
func (c *Consumer) Stats() Stats {
	s := &c.stats
	st := Stats{
		Received: s.receivedN.Load(), Redelivered: s.redelivered.Load(),
		Handled: s.handled.Load(), Failed: s.failed.Load(), Retried: s.retried.Load(),
		Skipped: s.skipped.Load(), Unconfirmed: s.unconfirmed.Load(),
		DeadLettered: s.deadLettered.Load(), DeadLetterErrors: s.deadLetterErrors.Load(),
		Accepted: s.accepted.Load(), Released: s.released.Load(), Rejected: s.rejected.Load(), AckErrors: s.ackErrors.Load(),
	}
	s.dmu.Lock()
	st.Deliveries = maps.Clone(s.deliveries)
	s.dmu.Unlock()
	if c.guard != nil {
		st.Duplicates = c.guard.Stats().Duplicates
	}
	return st
}

// observe registers the consumer's instruments for the Run in progress.
func (c *Consumer) observe() (unregister func()) {
	m := metrics.Meter(c.cfg.t.Shared.MeterProvider)
	base := []attribute.KeyValue{metrics.KeySystem.String("kafka"), metrics.KeyGroup.String(c.group), metrics.KeySemantics.String(c.sem.String())}
	set := metrics.NewSet(m, c.log, base...)
	load := func(a *atomic.Int64) func() int64 { return a.Load }
	out := func(s string) []attribute.KeyValue { return []attribute.KeyValue{metrics.KeyOutcome.String(s)} }
	s := &c.stats
	set.Counter("kdeliver.share.records", "{record}", "Share-group records by outcome: received (each delivery), redelivered (delivery count above 1), handled, skipped (at most once, handler failed), unconfirmed (at most once, accept not confirmed), dead_lettered, duplicate (a dedup guard found them done)",
		metrics.Series{Attrs: out("received"), Load: load(&s.receivedN)},
		metrics.Series{Attrs: out("redelivered"), Load: load(&s.redelivered)},
		metrics.Series{Attrs: out("handled"), Load: load(&s.handled)},
		metrics.Series{Attrs: out("skipped"), Load: load(&s.skipped)},
		metrics.Series{Attrs: out("unconfirmed"), Load: load(&s.unconfirmed)},
		metrics.Series{Attrs: out("dead_lettered"), Load: load(&s.deadLettered)},
		metrics.Series{Attrs: out("duplicate"), Load: func() int64 {
			if c.guard == nil {
				return 0
			}
			return c.guard.Stats().Duplicates
		}},
	)
	set.Counter("kdeliver.share.handler.calls", "{call}", "Handler calls that failed (outcome=failed) and calls on a redelivered record (outcome=retry)",
		metrics.Series{Attrs: out("failed"), Load: load(&s.failed)},
		metrics.Series{Attrs: out("retry"), Load: load(&s.retried)},
	)
	set.Counter("kdeliver.share.acks", "{ack}", "Acknowledgements sent by type (accept, release, reject) and partition acknowledgements that failed (error)",
		metrics.Series{Attrs: out("accept"), Load: load(&s.accepted)},
		metrics.Series{Attrs: out("release"), Load: load(&s.released)},
		metrics.Series{Attrs: out("reject"), Load: load(&s.rejected)},
		metrics.Series{Attrs: out("error"), Load: load(&s.ackErrors)},
	)
	set.Counter("kdeliver.share.dead_letter.errors", "{write}", "Dead-letter writes that failed (each is retried; the record is not rejected meanwhile)",
		metrics.Series{Load: load(&s.deadLetterErrors)})
	set.Gauge("kdeliver.share.deliveries", "{record}", "Records received by delivery count (kdeliver.delivery_count)", func(observe func(int64, ...attribute.KeyValue)) {
		s.dmu.Lock()
		d := maps.Clone(s.deliveries)
		s.dmu.Unlock()
		for n, v := range d {
			observe(v, attribute.Key("kdeliver.delivery_count").String(strconv.Itoa(n)))
		}
	})
	return set.Register()
}
