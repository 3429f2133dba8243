// Package metrics exports kdeliver's guarantee figures through
// OpenTelemetry.
//
// The figures are atomic counters the clients keep anyway (their Stats
// methods read them); the instruments here are observable ones, read by a
// callback when a reader collects. So the hot path pays an atomic add, with
// or without an SDK, and nothing else: no attribute sets, no instrument
// calls per record. Only durations (a commit, a transaction) are recorded
// when they happen, once per commit or transaction.
package metrics

import (
	"context"
	"log/slog"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Scope is the instrumentation scope of every kdeliver instrument.
const Scope = "github.com/kdeliver/kdeliver"

// Attribute keys. Names follow OpenTelemetry's messaging conventions where
// one exists.
const (
	KeySystem      = attribute.Key("messaging.system") // always "kafka"
	KeyGroup       = attribute.Key("messaging.consumer.group.name")
	KeyTopic       = attribute.Key("messaging.destination.name")
	KeyPartition   = attribute.Key("messaging.destination.partition.id")
	KeySemantics   = attribute.Key("kdeliver.semantics")
	KeyOutcome     = attribute.Key("kdeliver.outcome")
	KeyCause       = attribute.Key("kdeliver.cause")
	KeyTransaction = attribute.Key("messaging.kafka.transactional_id")
)

// Meter returns mp's meter for kdeliver, or the global provider's if mp is
// nil. A meter of the global provider follows an SDK installed later.
func Meter(mp metric.MeterProvider) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(Scope)
}

// Series is one observed value of an instrument: its attributes (besides
// the set's own) and where to read it.
type Series struct {
	Attrs []attribute.KeyValue
	Load  func() int64
}

// Set gathers observable instruments of one client into one callback.
type Set struct {
	m     metric.Meter
	base  []attribute.KeyValue
	log   *slog.Logger
	insts []metric.Observable
	obs   []func(metric.Observer)
}

// NewSet starts a set on m whose every series carries base.
func NewSet(m metric.Meter, log *slog.Logger, base ...attribute.KeyValue) *Set {
	return &Set{m: m, base: base, log: log}
}

func (s *Set) attrs(extra []attribute.KeyValue) metric.MeasurementOption {
	all := make([]attribute.KeyValue, 0, len(s.base)+len(extra))
	all = append(append(all, s.base...), extra...)
	return metric.WithAttributeSet(attribute.NewSet(all...))
}

// Counter adds a monotonic counter with one value per series.
func (s *Set) Counter(name, unit, desc string, series ...Series) {
	c, err := s.m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	if err != nil {
		s.log.Warn("kdeliver: metric not registered", "metric", name, "err", err)
		return
	}
	opts := make([]metric.MeasurementOption, len(series))
	for i, sr := range series {
		opts[i] = s.attrs(sr.Attrs)
	}
	s.insts = append(s.insts, c)
	s.obs = append(s.obs, func(o metric.Observer) {
		for i, sr := range series {
			o.ObserveInt64(c, sr.Load(), opts[i])
		}
	})
}

// Gauge adds a gauge whose values each reports at collection time, with
// their own attributes (besides the set's).
func (s *Set) Gauge(name, unit, desc string, each func(observe func(v int64, attrs ...attribute.KeyValue))) {
	g, err := s.m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
	if err != nil {
		s.log.Warn("kdeliver: metric not registered", "metric", name, "err", err)
		return
	}
	s.insts = append(s.insts, g)
	s.obs = append(s.obs, func(o metric.Observer) {
		each(func(v int64, attrs ...attribute.KeyValue) { o.ObserveInt64(g, v, s.attrs(attrs)) })
	})
}

// Register registers the set's callback. The returned function unregisters
// it (a closed client stops reporting); it is safe to call more than once.
func (s *Set) Register() (unregister func()) {
	if len(s.insts) == 0 {
		return func() {}
	}
	obs := s.obs
	reg, err := s.m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, f := range obs {
			f(o)
		}
		return nil
	}, s.insts...)
	if err != nil {
		s.log.Warn("kdeliver: metrics callback not registered", "err", err)
		return func() {}
	}
	var once sync.Once
	return func() { once.Do(func() { _ = reg.Unregister() }) }
}

// Durations is a histogram of seconds with fixed attributes per outcome,
// built once so that a recording makes no attribute set.
type Durations struct {
	h    metric.Float64Histogram
	opts map[string]metric.RecordOption
}

// NewDurations makes a histogram of seconds named name, with one attribute
// set per outcome (base plus kdeliver.outcome=outcome).
func NewDurations(m metric.Meter, log *slog.Logger, name, desc string, base []attribute.KeyValue, outcomes ...string) *Durations {
	h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc))
	if err != nil {
		log.Warn("kdeliver: metric not registered", "metric", name, "err", err)
		return nil
	}
	d := &Durations{h: h, opts: make(map[string]metric.RecordOption, len(outcomes))}
	for _, o := range outcomes {
		all := append(append([]attribute.KeyValue(nil), base...), KeyOutcome.String(o))
		d.opts[o] = metric.WithAttributeSet(attribute.NewSet(all...))
	}
	return d
}

// Record records seconds under outcome; a nil Durations records nothing.
func (d *Durations) Record(seconds float64, outcome string) {
	if d == nil {
		return
	}
	d.h.Record(context.Background(), seconds, d.opts[outcome])
}
