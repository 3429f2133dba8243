package eos

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestTracePassThroughWithoutSDK: with no OpenTelemetry SDK (a no-op tracer
// provider) the session makes no spans, yet an input record's upstream trace
// (its traceparent header) is carried on to the records emitted for it, and
// an input without one gives outputs without one.
func TestTracePassThroughWithoutSDK(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	addrs := c.Brokers()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	traced := &kgo.Record{Topic: "in", Value: []byte("traced"), Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-" + traceID + "-00f067aa0ba902b7-01")}}}
	plain := &kgo.Record{Topic: "in", Value: []byte("plain")}
	if err := cl.ProduceSync(context.Background(), traced, plain).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	s, err := New(addrs, "g", []string{"in"}, "t-trace", fastOpts(WithOutputTopic("out"), WithCommitEvery(10, 200*time.Millisecond), kdeliver.WithTracerProvider(noop.NewTracerProvider()))...)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCommitted(t, c, s, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		emit(&kgo.Record{Value: in.Value})
		return nil
	})

	got := map[string]string{} // value → traceparent
	for _, r := range kdelivertest.ReadCommitted(t, addrs, "out") {
		got[string(r.Value)] = headers(r)["traceparent"]
	}
	if len(got) != 2 {
		t.Fatalf("read %d output records, want 2", len(got))
	}
	if tp := got["traced"]; len(tp) < 35 || tp[3:35] != traceID {
		t.Errorf("output of the traced input has traceparent %q, want trace ID %s", tp, traceID)
	}
	if tp := got["plain"]; tp != "" {
		t.Errorf("output of the untraced input has traceparent %q, want none", tp)
	}
}
