package preset

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func noopRecordTracer() *recordTracer {
	tp := noop.NewTracerProvider()
	prop := propagation.TraceContext{}
	return newRecordTracer(kotel.NewTracer(kotel.TracerProvider(tp), kotel.TracerPropagator(prop)), tp, false, prop)
}

// TestFetchKeepsUpstreamTraceWithoutSDK: with no OpenTelemetry SDK the fetch
// hooks skip kotel's spans, yet a fetched record's trace header still lands in
// its context, and a record produced under that context carries it on.
func TestFetchKeepsUpstreamTraceWithoutSDK(t *testing.T) {
	rt := noopRecordTracer()
	if rt.recording {
		t.Fatal("the noop provider was taken for a recording one")
	}
	in := &kgo.Record{Topic: "in", Headers: []kgo.RecordHeader{{Key: "other", Value: []byte("x")}, {Key: "traceparent", Value: []byte(traceparent)}}}
	rt.OnFetchRecordBuffered(in)
	sc := trace.SpanContextFromContext(in.Context)
	if !sc.IsValid() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sc.IsRemote() {
		t.Fatalf("fetched record's span context = %+v, want the remote one of its traceparent header", sc)
	}
	rt.OnFetchRecordUnbuffered(in, true)

	out := &kgo.Record{Topic: "out", Context: in.Context}
	rt.OnProduceRecordBuffered(out)
	var got string
	for _, h := range out.Headers {
		if h.Key == "traceparent" {
			got = string(h.Value)
		}
	}
	if want := "4bf92f3577b34da6a3ce929d0e0e4736"; len(got) < 35 || got[3:35] != want {
		t.Fatalf("produced record's traceparent = %q, want trace ID %s", got, want)
	}
	rt.OnProduceRecordUnbuffered(out, nil)
}

// TestFetchWithoutTraceHeaderDoesNothing: a record without a trace header is
// left alone (no context, no span) when nothing can be traced.
func TestFetchWithoutTraceHeaderDoesNothing(t *testing.T) {
	rt := noopRecordTracer()
	r := &kgo.Record{Topic: "in", Headers: []kgo.RecordHeader{{Key: "kdeliver-message-id", Value: []byte("x")}}}
	rt.OnFetchRecordBuffered(r)
	if r.Context != nil {
		t.Fatalf("record context set to %v, want it left nil", r.Context)
	}
	rt.OnFetchRecordUnbuffered(r, true)
	r.Context = context.Background()
	rt.OnFetchRecordBuffered(r)
	if trace.SpanContextFromContext(r.Context).IsValid() {
		t.Fatal("a span context appeared from nowhere")
	}
}
