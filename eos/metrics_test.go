package eos

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// transactions reads kdeliver.eos.transactions from reader, by outcome and
// cause ("committed", "aborted/handler", ...), and the number of
// transaction durations recorded by outcome ("duration/committed", ...).
func transactions(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name != "kdeliver.eos.transactions" {
					continue
				}
				for _, p := range d.DataPoints {
					k, _ := p.Attributes.Value("kdeliver.outcome")
					key := k.AsString()
					if c, ok := p.Attributes.Value("kdeliver.cause"); ok {
						key += "/" + c.AsString()
					}
					out[key] = p.Value
				}
			case metricdata.Histogram[float64]:
				if m.Name != "kdeliver.eos.transaction.duration" {
					continue
				}
				for _, p := range d.DataPoints {
					k, _ := p.Attributes.Value("kdeliver.outcome")
					out["duration/"+k.AsString()] = int64(p.Count)
				}
			}
		}
	}
	return out
}

// TestMetricsCountAbortsByCause: transactions aborted by a failing handler
// and by a handler slower than the transaction timeout are counted under
// their causes, through an OpenTelemetry SDK reader and in Stats alike,
// and every transaction's duration is recorded under its outcome.
func TestMetricsCountAbortsByCause(t *testing.T) {
	for _, tc := range []struct {
		name, cause string
		opts        []Option
		slow        time.Duration // the handler of record 5 sleeps this long once
		fails       int64         // or fails this many times
	}{
		{name: "handler", cause: "handler", fails: 3},
		{name: "timeout", cause: "timeout", slow: 1500 * time.Millisecond,
			opts: []Option{WithTransactionTimeout(time.Second), WithSessionTimeout(6 * time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
			want := kdelivertest.Seed(t, c.Brokers(), "in", 20)
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			opts := append([]Option{kdeliver.WithMeterProvider(mp), WithOutputTopic("out"), WithCommitEvery(20, 400*time.Millisecond)}, tc.opts...)
			s, err := New(c.Brokers(), "g", []string{"in"}, "metrics-"+tc.name, fastOpts(opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int64
			done := make(chan error, 1)
			go func() {
				done <- s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
					if string(in.Value) == "5" {
						n := calls.Add(1)
						if n <= tc.fails {
							return errors.New("not yet")
						}
						if tc.slow > 0 && n == 1 {
							time.Sleep(tc.slow)
						}
					}
					emit(&kgo.Record{Key: in.Key, Value: in.Value})
					return nil
				})
			}()
			kdelivertest.WaitFor(t, 60*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
			got := transactions(t, reader)
			st := s.Stats()
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			exactly(t, c, "out", want)
			byCause := map[string]int64{"handler": st.AbortedHandler, "timeout": st.AbortedTimeout, "rebalance": st.AbortedRebalance,
				"fenced": st.Fenced, "produce": st.AbortedProduce, "other": st.AbortedOther}
			for cause, n := range byCause {
				if got["aborted/"+cause] != n {
					t.Errorf("aborted/%s = %d, Stats says %d (all: %v)", cause, got["aborted/"+cause], n, got)
				}
			}
			if got["committed"] != st.Committed || st.Committed < 1 {
				t.Errorf("committed = %d, Stats %d, want the same and ≥ 1", got["committed"], st.Committed)
			}
			if min := max(1, tc.fails); got["aborted/"+tc.cause] < min {
				t.Errorf("aborted/%s = %d, want ≥ %d (all: %v)", tc.cause, got["aborted/"+tc.cause], min, got)
			}
			if got["duration/committed"] != st.Committed || got["duration/aborted"] != st.Aborted {
				t.Errorf("durations recorded: %d committed, %d aborted; Stats: %d, %d", got["duration/committed"], got["duration/aborted"], st.Committed, st.Aborted)
			}
		})
	}
}

// TestMetricsCountRebalanceAborts: a second session joins the group while
// the first is inside a transaction; the partition it takes is revoked
// from the first, whose transaction aborts under cause rebalance (Stats
// and the SDK reader agree), and the output is still exactly the input.
//
// Every other abort must have the cause the session logged for it. Once in
// some thousand runs (seen in CI under load, not reproduced in 1,400 runs
// here) kfake answers the first session's produce after the rebalance abort
// with OUT_OF_ORDER_SEQUENCE_NUMBER: a produce error, which the session
// aborts under cause produce and replaces the client for, as it must. So the
// produce aborts are counted against the session's own "replacing the
// client" warnings with reason produce_error, not assumed to be none.
func TestMetricsCountRebalanceAborts(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
	want := kdelivertest.Seed(t, c.Brokers(), "in", 40)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	newSession := func(txnID string, opts ...Option) *Session {
		s, err := New(c.Brokers(), "g", []string{"in"}, txnID, fastOpts(append(opts, WithOutputTopic("out"),
			WithTransactionTimeout(20*time.Second), WithSessionTimeout(25*time.Second))...)...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	copyTo := func(started func()) Handler {
		return func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			started()
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		}
	}
	// a's first record waits, inside a's first transaction, until b has
	// handled one: b then owns a partition a owned.
	bHandled := make(chan struct{})
	var aOnce, bOnce sync.Once
	var replaced replaceLog
	a := newSession("rebalance-a", kdeliver.WithMeterProvider(mp), kdeliver.WithLogger(slog.New(&replaced)))
	b := newSession("rebalance-b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	aDone, bDone := make(chan error, 1), make(chan error, 1)
	go func() {
		aDone <- a.Run(ctx, copyTo(func() {
			aOnce.Do(func() {
				go func() { bDone <- b.Run(ctx, copyTo(func() { bOnce.Do(func() { close(bHandled) }) })) }()
				select {
				case <-bHandled:
				case <-time.After(15 * time.Second):
					t.Error("the second session handled nothing within 15s of joining")
				}
			})
		}))
	}()
	kdelivertest.WaitFor(t, 60*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
	got, st := transactions(t, reader), a.Stats()
	cancel()
	for _, done := range []chan error{aDone, bDone} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*Session{a, b} {
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	exactly(t, c, "out", want)
	if st.AbortedRebalance < 1 || got["aborted/rebalance"] != st.AbortedRebalance {
		t.Errorf("aborted/rebalance: metric %d, Stats %d; want the same and ≥ 1 (all: %v)", got["aborted/rebalance"], st.AbortedRebalance, got)
	}
	if st.AbortedHandler+st.AbortedTimeout+st.Fenced+st.AbortedOther != 0 {
		t.Errorf("aborts under other causes: %+v; only the rebalance aborted (and produce errors, if any were logged)", st)
	}
	if logged := replaced.produce.Load(); st.AbortedProduce != logged {
		t.Errorf("aborted/produce: Stats %d, but the session logged %d produce errors it replaced the client for", st.AbortedProduce, logged)
	} else if logged > 0 {
		t.Logf("%d produce error(s) after the rebalance (%v), aborted under cause produce", logged, replaced.last.Load())
	}
}

// replaceLog is a slog.Handler that counts a session's "replacing the
// client" warnings whose reason is a produce error, and keeps the last
// such error.
type replaceLog struct {
	produce atomic.Int64
	last    atomic.Value
}

func (h *replaceLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *replaceLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *replaceLog) WithGroup(string) slog.Handler            { return h }
func (h *replaceLog) Handle(_ context.Context, r slog.Record) error {
	var produce bool
	var err string
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "reason":
			produce = a.Value.String() == reasonProduce
		case "err":
			err = a.Value.String()
		}
		return true
	})
	if produce {
		h.produce.Add(1)
		h.last.Store(err)
	}
	return nil
}
