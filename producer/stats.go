package producer

import (
	"log/slog"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/metrics"
)

// Stats are a producer's figures since it was built. The same figures are
// exported through OpenTelemetry (see "Metrics" in the README) until
// Close.
type Stats struct {
	// Delivered counts records the brokers acknowledged (under
	// ExactlyOnce: written in a transaction, which may still abort).
	Delivered int64
	// Failed counts records that were not delivered: their promise got
	// an error (a *kdeliver.DeliveryError from Produce and Send).
	Failed int64
	// RequestErrors counts produce requests that failed on the wire (the
	// connection broke while writing or before the response: a lost
	// acknowledgement). The client sends their batches again; the
	// idempotent producer makes the brokers drop the copies they have.
	RequestErrors int64
}

// deliveries counts outcomes from kgo's hooks, for every way of producing.
type deliveries struct {
	delivered, failed, requestErrors atomic.Int64
}

var (
	_ kgo.HookProduceRecordUnbuffered = (*deliveries)(nil)
	_ kgo.HookBrokerE2E               = (*deliveries)(nil)
)

func (d *deliveries) OnProduceRecordUnbuffered(_ *kgo.Record, err error) {
	if err != nil {
		d.failed.Add(1)
		return
	}
	d.delivered.Add(1)
}

func (d *deliveries) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if key == 0 && e2e.Err() != nil { // 0: Produce
		d.requestErrors.Add(1)
	}
}

func (d *deliveries) load() Stats {
	return Stats{Delivered: d.delivered.Load(), Failed: d.failed.Load(), RequestErrors: d.requestErrors.Load()}
}

// observe registers the instruments; the returned function unregisters
// them.
func (d *deliveries) observe(mp metric.MeterProvider, log *slog.Logger, sem kdeliver.Semantics) func() {
	set := metrics.NewSet(metrics.Meter(mp), log, metrics.KeySystem.String("kafka"), metrics.KeySemantics.String(sem.String()))
	set.Counter("kdeliver.producer.records", "{record}", "Records by delivery outcome (delivered: acknowledged; failed: their promise got an error)",
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("delivered")}, Load: d.delivered.Load},
		metrics.Series{Attrs: []attribute.KeyValue{metrics.KeyOutcome.String("failed")}, Load: d.failed.Load},
	)
	set.Counter("kdeliver.producer.request.errors", "{request}", "Produce requests that failed on the wire (a lost acknowledgement); their batches are sent again",
		metrics.Series{Load: d.requestErrors.Load})
	return set.Register()
}
