package eos

import (
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/metrics"
)

// attrs are the attributes of every instrument of the session.
func (s *Session) attrs() []attribute.KeyValue {
	return []attribute.KeyValue{
		metrics.KeySystem.String("kafka"), metrics.KeyGroup.String(s.group),
		metrics.KeySemantics.String(kdeliver.ExactlyOnce.String()), metrics.KeyTransaction.String(s.txnID),
	}
}

// observe registers the session's counters for the length of a Run.
func (s *Session) observe() (unregister func()) {
	set := metrics.NewSet(metrics.Meter(s.cfg.t.Shared.MeterProvider), s.log, s.attrs()...)
	c := &s.stats
	series := func(a *atomic.Int64, kv ...attribute.KeyValue) metrics.Series {
		return metrics.Series{Attrs: kv, Load: a.Load}
	}
	aborted := metrics.KeyOutcome.String("aborted")
	set.Counter("kdeliver.eos.transactions", "{transaction}", "Transactions by outcome (committed, aborted) and, for aborts, cause (rebalance, handler, timeout, fenced, produce, other)",
		series(&c.committed, metrics.KeyOutcome.String("committed")),
		series(&c.abortedRebalance, aborted, metrics.KeyCause.String("rebalance")),
		series(&c.abortedHandler, aborted, metrics.KeyCause.String("handler")),
		series(&c.abortedTimeout, aborted, metrics.KeyCause.String("timeout")),
		series(&c.fenced, aborted, metrics.KeyCause.String("fenced")),
		series(&c.abortedProduce, aborted, metrics.KeyCause.String("produce")),
		series(&c.abortedOther, aborted, metrics.KeyCause.String("other")),
	)
	set.Counter("kdeliver.eos.records", "{record}", "Input records whose transaction committed, by outcome (committed; dead_lettered: of those, the ones sent to the dead-letter topic)",
		series(&c.records, metrics.KeyOutcome.String("committed")),
		series(&c.deadLettered, metrics.KeyOutcome.String("dead_lettered")),
	)
	set.Counter("kdeliver.transactions.hanging", "{partition}", "Partitions reported held by a hanging transaction (kdeliver.WithHangingTransactionWatch)",
		series(&s.hanging))
	set.Counter("kdeliver.eos.client.recreated", "{client}", "Times the session's client was closed and built again after an error",
		series(&c.recreated))
	set.Counter("kdeliver.eos.rewind.violations", "{record}", "Records polled below the committed offset after an abort",
		series(&c.rewind))
	return set.Register()
}
