package preset

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
	if rt.gate.recording {
		t.Fatal("the noop provider was taken for a recording one")
	}
	fh := rt.fetchHook()
	if _, ok := fh.(kgo.HookFetchRecordUnbuffered); ok {
		t.Fatal("without an SDK the fetch hook ends spans: kgo walks every polled record again for it")
	}
	in := &kgo.Record{Topic: "in", Headers: []kgo.RecordHeader{{Key: "other", Value: []byte("x")}, {Key: "traceparent", Value: []byte(traceparent)}}}
	fh.(kgo.HookFetchRecordBuffered).OnFetchRecordBuffered(in)
	sc := trace.SpanContextFromContext(in.Context)
	if !sc.IsValid() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sc.IsRemote() {
		t.Fatalf("fetched record's span context = %+v, want the remote one of its traceparent header", sc)
	}

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
	fh := rt.fetchHook().(kgo.HookFetchRecordBuffered)
	r := &kgo.Record{Topic: "in", Headers: []kgo.RecordHeader{{Key: "kdeliver-message-id", Value: []byte("x")}}}
	fh.OnFetchRecordBuffered(r)
	if r.Context != nil {
		t.Fatalf("record context set to %v, want it left nil", r.Context)
	}
	r.Context = context.Background()
	fh.OnFetchRecordBuffered(r)
	if trace.SpanContextFromContext(r.Context).IsValid() {
		t.Fatal("a span context appeared from nowhere")
	}
}

// TestFetchHookWithSDKMakesReceiveSpans: with an SDK's provider the fetch
// hook is kotel's, which ends each record's receive span when it is polled.
func TestFetchHookWithSDKMakesReceiveSpans(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	prop := propagation.TraceContext{}
	rt := newRecordTracer(kotel.NewTracer(kotel.TracerProvider(tp), kotel.TracerPropagator(prop)), tp, false, prop)
	if _, ok := rt.fetchHook().(kgo.HookFetchRecordUnbuffered); !ok {
		t.Fatal("with an SDK the fetch hook does not end receive spans")
	}
}
