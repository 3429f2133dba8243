package consumer

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
)

// BenchmarkRun measures records handled per second through Run (a no-op
// handler) on a 3-broker kfake cluster, 3 partitions, from produced records
// to the handler, commits included. The exactly-once variants add a guard
// over the memory store, or replace the handler with a sink that only
// counts (the consumer's own cost, without a database).
//
//	go test -run '^$' -bench Run -benchtime 20000x ./consumer/
func BenchmarkRun(b *testing.B) {
	cases := []struct {
		name string
		sem  kdeliver.Semantics
		opts func(done func(n int)) []Option
		sink bool // no handler: the sink counts
	}{
		{"at-most-once", kdeliver.AtMostOnce, nil, false},
		{"at-least-once", kdeliver.AtLeastOnce, nil, false},
		{"exactly-once guard memory", kdeliver.ExactlyOnce, func(func(int)) []Option {
			return []Option{WithDedup(newGuard(b, dedup.NewMemory(1<<21)))}
		}, false},
		{"exactly-once sink", kdeliver.ExactlyOnce, func(done func(int)) []Option {
			return []Option{WithSink(countSink(done))}
		}, true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			cl := newCluster(b, 3)
			produce(b, cl.ListenAddrs(), 0, b.N)
			var handled atomic.Int64
			finished := make(chan struct{})
			done := func(n int) {
				if handled.Add(int64(n)) == int64(b.N) {
					close(finished)
				}
			}
			var opts []Option
			if tc.opts != nil {
				opts = tc.opts(done)
			}
			h := Handler(func(context.Context, *kgo.Record) error { done(1); return nil })
			if tc.sink {
				h = nil
			}
			c := mustNew(b, cl, "g", tc.sem, opts...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ResetTimer()
			go func() { _ = c.Run(ctx, h) }()
			<-finished
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			if err := c.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// countSink is a dedup.Sink that stores nothing and reports each Write's
// record count.
type countSink func(n int)

func (s countSink) Assign(context.Context, dedup.Assignment) (map[string]map[int32]int64, error) {
	return nil, nil
}
func (s countSink) Write(_ context.Context, recs []*kgo.Record) error { s(len(recs)); return nil }
func (s countSink) Revoke(map[string][]int32)                         {}
