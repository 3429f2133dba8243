package consumer

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
)

// TestProcessSpanJoinsProducerTrace: a record produced with a traceparent
// header is handled in a "process" span of the same trace, whose parent is
// the record's "receive" span, itself a child of the producer's span.
func TestProcessSpanJoinsProducerTrace(t *testing.T) {
	cl := newCluster(t, 1)
	const (
		traceID = "0af7651916cd43dd8448eb211c80319c"
		spanID  = "b7ad6b7169203331"
	)
	p, err := kgo.NewClient(kgo.SeedBrokers(cl.Brokers()...), kgo.DefaultProduceTopic("t"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.ProduceSync(ctx, &kgo.Record{Value: []byte("0"), Headers: []kgo.RecordHeader{
		{Key: "traceparent", Value: []byte("00-" + traceID + "-" + spanID + "-01")},
	}}).FirstErr()
	p.Close()
	if err != nil {
		t.Fatal(err)
	}

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithTracerProvider(tp))
	got := make(chan trace.SpanContext, 1)
	r := start(c, func(ctx context.Context, _ *kgo.Record) error {
		select {
		case got <- trace.SpanContextFromContext(ctx):
		default:
		}
		return nil
	})
	var sc trace.SpanContext
	select {
	case sc = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no record handled")
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if sc.TraceID().String() != traceID {
		t.Fatalf("handler's trace ID = %s, want the producer's %s", sc.TraceID(), traceID)
	}
	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = s
	}
	process, receive := spans["t process"], spans["t receive"]
	if process == nil || receive == nil {
		t.Fatalf("ended spans %v, want \"t process\" and \"t receive\"", spans)
	}
	if process.SpanContext().SpanID() != sc.SpanID() {
		t.Fatal("the handler's ctx does not carry the process span")
	}
	if process.Parent().SpanID() != receive.SpanContext().SpanID() {
		t.Fatal("the process span is not a child of the receive span")
	}
	if receive.Parent().SpanID().String() != spanID {
		t.Fatalf("the receive span's parent is %s, want the producer's %s", receive.Parent().SpanID(), spanID)
	}
}
