package share

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
)

// collect reads every kdeliver sum and gauge of reader: name and outcome
// (or delivery count) to value.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != "github.com/kdeliver/kdeliver" {
			continue
		}
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, p := range points {
				key := m.Name
				if o, ok := p.Attributes.Value("kdeliver.outcome"); ok {
					key += "{" + o.AsString() + "}"
				}
				if o, ok := p.Attributes.Value("kdeliver.delivery_count"); ok {
					key += "{" + o.AsString() + "}"
				}
				if s, ok := p.Attributes.Value("kdeliver.semantics"); !ok || s.AsString() != "at-least-once" {
					t.Errorf("%s: kdeliver.semantics is not at-least-once in %v", key, p.Attributes.ToSlice())
				}
				out[key] = p.Value
			}
		}
	}
	return out
}

// TestMetricsCountDeliveries: records failing once and a poison record
// dead-lettered after 3 deliveries are counted, through an OpenTelemetry
// SDK reader, as Stats counts them: releases, redeliveries by delivery
// count, the reject and the dead letter.
func TestMetricsCountDeliveries(t *testing.T) {
	cl := newCluster(t, 3, 30*time.Second)
	startAll(cl, "g")
	want := produce(t, cl, 0, 30)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast(),
		kdeliver.WithMeterProvider(mp), kdeliver.WithMaxAttempts(3), WithDeadLetterTopic("dlq"),
		kdeliver.WithConcurrency(4, kdeliver.Unordered))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.CreateTopic("dlq", 1); err != nil {
		t.Fatal(err)
	}
	poison := want[3]
	failOnce := map[string]bool{want[5]: true, want[11]: true, want[17]: true, want[23]: true}
	s := newSeen()
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		v := string(r.Value)
		if v == poison || failOnce[v] && r.DeliveryCount() == 1 {
			return errors.New("failing")
		}
		s.add(v)
		return nil
	})
	waitFor(t, "every record accepted or rejected", func() bool {
		st := c.Stats()
		return s.distinct() == len(want)-1 && st.Accepted == int64(len(want)-1) && st.Rejected == 1
	})
	// The instruments are registered while Run runs.
	st := c.Stats()
	got := collect(t, reader)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]int64{
		"kdeliver.share.records{received}":      st.Received,
		"kdeliver.share.records{redelivered}":   st.Redelivered,
		"kdeliver.share.records{handled}":       st.Handled,
		"kdeliver.share.records{dead_lettered}": 1,
		"kdeliver.share.acks{accept}":           int64(len(want) - 1),
		"kdeliver.share.acks{release}":          4 + 2,
		"kdeliver.share.acks{reject}":           1,
		"kdeliver.share.handler.calls{failed}":  4 + 3,
		"kdeliver.share.handler.calls{retry}":   4 + 2,
		"kdeliver.share.deliveries{1}":          int64(len(want)),
		"kdeliver.share.deliveries{2}":          5,
		"kdeliver.share.deliveries{3}":          1,
	} {
		if got[name] != v {
			t.Errorf("%s = %d, want %d (stats %+v)", name, got[name], v, st)
		}
	}
	if st.Handled != int64(len(want)) || st.Redelivered != 6 {
		t.Errorf("stats %+v: want %d handled, 6 redelivered", st, len(want))
	}
}

// TestProcessSpans: with an OpenTelemetry SDK each handled record gets
// kotel's process span and the handler's ctx carries it; without one the
// span is skipped (SpanGate) and the ctx carries none.
func TestProcessSpans(t *testing.T) {
	for _, sdk := range []bool{true, false} {
		t.Run(map[bool]string{true: "sdk", false: "no sdk"}[sdk], func(t *testing.T) {
			cl := newCluster(t, 1, 30*time.Second)
			startAll(cl, "g")
			want := produce(t, cl, 0, 3)
			rec := tracetest.NewSpanRecorder()
			opts := []Option{quiet(), fast()}
			if sdk {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
				defer func() { _ = tp.Shutdown(context.Background()) }()
				opts = append(opts, kdeliver.WithTracerProvider(tp))
			}
			c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, opts...)
			if err != nil {
				t.Fatal(err)
			}
			s := newSeen()
			var valid atomic.Int64
			stop := runBG(t, c, func(ctx context.Context, r *kgo.Record) error {
				if trace.SpanContextFromContext(ctx).IsValid() {
					valid.Add(1)
				}
				s.add(string(r.Value))
				return nil
			})
			waitFor(t, "every record handled", func() bool { return s.distinct() == len(want) })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			process := 0
			for _, sp := range rec.Ended() {
				if strings.HasSuffix(sp.Name(), "process") {
					process++
				}
			}
			n := 0
			if sdk {
				n = len(want)
			}
			if process != n || valid.Load() != int64(n) {
				t.Fatalf("%d process spans ended, %d handler contexts with a span; want %d each", process, valid.Load(), n)
			}
		})
	}
}
