package eos

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestValidation(t *testing.T) {
	brokers := []string{"127.0.0.1:1"}
	for _, tc := range []struct {
		name    string
		brokers []string
		group   string
		topics  []string
		txnID   string
		opts    []Option
		want    []string // substrings, one per expected problem
	}{
		{"no brokers, group, topics or id", nil, "", nil, "", nil,
			[]string{"no seed brokers", "transactional ID", "consumer group is empty", "no topics"}},
		{"txn timeout not below session timeout", brokers, "g", []string{"in"}, "id",
			[]Option{WithTransactionTimeout(50 * time.Second)}, []string{"must be below the session timeout"}},
		{"bad batching, backoff, attempts", brokers, "g", []string{"in"}, "id",
			[]Option{WithCommitEvery(0, 0), kdeliver.WithBackoff(0, 0), kdeliver.WithMaxAttempts(0)},
			[]string{"at least 1", "must be positive", "WithBackoff", "WithMaxAttempts"}},
		{"commit interval near txn timeout", brokers, "g", []string{"in"}, "id",
			[]Option{WithCommitEvery(10, 30*time.Second)}, []string{"keep it under half"}},
		{"dead-letter topic is an input", brokers, "g", []string{"in"}, "id",
			[]Option{WithDeadLetterTopic("in"), kdeliver.WithMaxAttempts(3)}, []string{"would loop"}},
		{"dead-letter topic without max attempts", brokers, "g", []string{"in"}, "id",
			[]Option{WithDeadLetterTopic("dlq")}, []string{"WithDeadLetterTopic needs kdeliver.WithMaxAttempts"}},
		{"dead-letter topic unnamed", brokers, "g", []string{"in"}, "id",
			[]Option{WithDeadLetterTopic(""), kdeliver.WithMaxAttempts(3)}, []string{"name the topic"}},
		// Issue 8: eos.New(..., nil) panicked.
		{"nil option", brokers, "g", []string{"in"}, "id",
			[]Option{nil}, []string{"option 1 of 1 is nil"}},
		{"nil option among others", brokers, "g", []string{"in"}, "id",
			[]Option{WithOutputTopic("out"), nil, kdeliver.WithMaxAttempts(3)}, []string{"option 2 of 3 is nil"}},
		{"nil raw option", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.DisableClientMetrics(), nil)}, []string{"raw option 2 of 2 is nil"}},
		{"zero root options", brokers, "g", []string{"in"}, "id",
			[]Option{kdeliver.Option{}, kdeliver.HandlerOption{}}, []string{"an empty option"}}, // the same problem, listed once
		{"raw read_uncommitted", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.FetchIsolationLevel(kgo.ReadUncommitted()))}, []string{"read_uncommitted"}},
		{"raw auto-commit, acks=1, other txn id", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.AutoCommitMarks(), kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite(), kgo.TransactionalID("other"))},
			nil}, // kgo itself rejects acks=1 with a transactional ID
		{"raw timeouts", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.TransactionTimeout(50 * time.Second))}, []string{"raw option left the transaction timeout"}},
		{"raw BlockRebalanceOnPoll", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.BlockRebalanceOnPoll())}, []string{"BlockRebalanceOnPoll"}},
		{"raw group", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.ConsumerGroup("other"))}, []string{"changed the consumer group"}},
		// Issue 8 item 6: a reset to the end skips records whose offsets
		// fall out of range; eos accepted it.
		{"raw reset offset at end", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))}, []string{"remove kgo.ConsumeResetOffset"}},
		{"raw start offset at end", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.ConsumeStartOffset(kgo.NewOffset().AtEnd()))}, []string{"remove kgo.ConsumeStartOffset"}},
		{"raw topics", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.ConsumeTopics("other"))}, []string{"topics to consume"}},
		{"raw root context", brokers, "g", []string{"in"}, "id",
			[]Option{WithKgoOpts(kgo.WithContext(context.Background()))}, []string{"kgo.WithContext"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.brokers, tc.group, tc.topics, tc.txnID, tc.opts...)
			if err == nil {
				s.Close(context.Background())
				t.Fatal("New accepted an invalid configuration")
			}
			if !errors.Is(err, kdeliver.ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			var ce *kdeliver.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *ConfigError", err)
			}
			if tc.want != nil && len(ce.Problems) != len(tc.want) {
				t.Errorf("%d problems, want %d:\n%v", len(ce.Problems), len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		s, err := New(brokers, "g", []string{"in"}, "id", WithCommitEvery(500, 50*time.Millisecond), WithDeadLetterTopic("dlq"),
			kdeliver.WithMaxAttempts(5), kdeliver.WithBackoff(time.Millisecond, time.Second), kdeliver.WithStartTimeout(time.Second),
			WithKgoOpts(kgo.DisableClientMetrics()), kdeliver.WithClientID("test"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// Each transaction is a span with its outcome and abort reason, linked to
// the traces of the records it consumed.
func TestTransactionSpans(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	addrs := c.Brokers()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())

	// Seed through a traced producer so the input carries trace context.
	seedCl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ctx, root := tp.Tracer("test").Start(context.Background(), "upstream")
	for _, v := range []string{"a", "b"} {
		r := &kgo.Record{Topic: "in", Value: []byte(v), Context: ctx}
		// W3C trace context header, as kotel writes it.
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: "traceparent", Value: []byte("00-" + root.SpanContext().TraceID().String() + "-" + root.SpanContext().SpanID().String() + "-01")})
		if err := seedCl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	root.End()
	seedCl.Close()

	s, err := New(addrs, "g", []string{"in"}, "t-otel", fastOpts(WithOutputTopic("out"), WithCommitEvery(10, 200*time.Millisecond), kdeliver.WithTracerProvider(tp))...)
	if err != nil {
		t.Fatal(err)
	}
	failed := false
	runUntilCommitted(t, c, s, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if string(in.Value) == "b" && !failed {
			failed = true
			return errors.New("once")
		}
		emit(&kgo.Record{Value: in.Value})
		return nil
	})
	var commits, aborts int
	for _, sp := range rec.Ended() {
		if sp.Name() != "eos transaction" {
			continue
		}
		attrs := map[string]string{}
		for _, a := range sp.Attributes() {
			attrs[string(a.Key)] = a.Value.String()
		}
		switch attrs["eos.outcome"] {
		case "commit":
			commits++
		case "abort":
			aborts++
			if attrs["eos.reason"] != reasonHandler {
				t.Errorf("abort reason %q, want %q", attrs["eos.reason"], reasonHandler)
			}
		}
		linked := false
		for _, l := range sp.Links() {
			linked = linked || l.SpanContext.TraceID() == root.SpanContext().TraceID()
		}
		if !linked {
			t.Errorf("transaction span (%v) has no link to the records' trace", attrs)
		}
	}
	if commits < 1 || aborts != 1 {
		t.Errorf("%d commit and %d abort spans, want ≥1 and 1", commits, aborts)
	}
}
