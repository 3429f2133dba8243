package producer_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

// recordingTP is the smallest tracer provider whose spans have valid
// contexts (the noop one's do not, so nothing would be injected). It keeps
// the root module free of the OpenTelemetry SDK.
type recordingTP struct {
	embedded.TracerProvider
	started atomic.Int64
}

func (tp *recordingTP) Tracer(string, ...trace.TracerOption) trace.Tracer { return tracer{tp: tp} }

type tracer struct {
	embedded.Tracer
	tp *recordingTP
}

var testTraceID = trace.TraceID{0x4b, 0x64, 0x65, 0x6c, 0x69, 0x76, 0x65, 0x72, 1, 2, 3, 4, 5, 6, 7, 8}

func (t tracer) Start(ctx context.Context, _ string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	n := t.tp.started.Add(1)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    testTraceID,
		SpanID:     trace.SpanID{0, 0, 0, 0, 0, 0, 0, byte(n)},
		TraceFlags: trace.FlagsSampled,
	})
	s := span{Span: trace.SpanFromContext(context.Background()), sc: sc}
	return trace.ContextWithSpan(ctx, s), s
}

type span struct {
	trace.Span // a no-op span for everything but the context
	sc         trace.SpanContext
}

func (s span) SpanContext() trace.SpanContext { return s.sc }

// TestTraceContextInHeaders: a produced record carries the W3C traceparent
// of its publish span, which is what lets a consumer join the trace.
func TestTraceContextInHeaders(t *testing.T) {
	c := cluster(t)
	tp := &recordingTP{}
	p := newProducer(t, c, kdeliver.AtLeastOnce, kdeliver.WithTracerProvider(tp))
	if err := p.Produce(testCtx(t), &kgo.Record{Topic: topic, Value: []byte("traced")}); err != nil {
		t.Fatal(err)
	}
	if tp.started.Load() == 0 {
		t.Fatal("no span was started with the tracer provider passed")
	}
	recs := readLog(t, c)
	if len(recs) != 1 {
		t.Fatalf("read %d records, want 1", len(recs))
	}
	var parent string
	for _, h := range recs[0].Headers {
		if h.Key == "traceparent" {
			parent = string(h.Value)
		}
	}
	if !strings.Contains(parent, testTraceID.String()) {
		t.Fatalf("traceparent header %q does not carry trace %s (headers %v)", parent, testTraceID, recs[0].Headers)
	}
}

// TestTraceContextPassThrough: with a no-op tracer provider (as when no SDK
// is set up), a span context
// in the ctx passed to Produce (say from an incoming request) still reaches
// the record's headers, so a downstream service can continue the trace.
func TestTraceContextPassThrough(t *testing.T) {
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
		t.Run(sem.String(), func(t *testing.T) {
			c := cluster(t)
			opts := []producer.Option{kdeliver.WithTracerProvider(noop.NewTracerProvider())}
			if sem == kdeliver.AtMostOnce {
				opts = append(opts, producer.WithLeaderAck()) // Produce waits for the write
			}
			p := newProducer(t, c, sem, opts...)
			parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: testTraceID, SpanID: trace.SpanID{9}, TraceFlags: trace.FlagsSampled, Remote: true})
			traced := trace.ContextWithRemoteSpanContext(testCtx(t), parent)
			untraced := testCtx(t)
			// Alternating, and twice in a row each: the record contexts
			// shared by records produced with the same ctx answer for
			// each of them.
			for i, ctx := range []context.Context{traced, traced, untraced, untraced, traced, untraced} {
				v := "untraced " + strconv.Itoa(i)
				if ctx == traced {
					v = "passed " + strconv.Itoa(i)
				}
				if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}); err != nil {
					t.Fatal(err)
				}
			}
			got := 0
			for _, r := range readLog(t, c) {
				parent := headerValue(r, "traceparent")
				got++
				switch v := string(r.Value); {
				case strings.HasPrefix(v, "passed"):
					if !strings.Contains(parent, testTraceID.String()) {
						t.Errorf("%s: traceparent %q does not carry the caller's trace", v, parent)
					}
				case parent != "":
					t.Errorf("%s: got traceparent %q", v, parent)
				}
			}
			if got != 6 {
				t.Errorf("read %d records, want 6", got)
			}
		})
	}
}

// TestTraceGlobalProviderSetLater: a global tracer provider set after New
// is used (it must be the last test touching the global: it cannot be unset).
func TestTraceGlobalProviderSetLater(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce)
	tp := &recordingTP{}
	otel.SetTracerProvider(tp)
	if err := p.Produce(testCtx(t), &kgo.Record{Topic: topic, Value: []byte("late")}); err != nil {
		t.Fatal(err)
	}
	recs := readLog(t, c)
	if len(recs) != 1 || !strings.Contains(headerValue(recs[0], "traceparent"), testTraceID.String()) {
		t.Fatalf("record produced after otel.SetTracerProvider lacks its trace context")
	}
}

func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
