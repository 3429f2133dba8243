package consumer

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
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
		new  func(b *testing.B, cl *kdelivertest.Cluster, done func(n int)) func(ctx context.Context) error
	}{
		{"at-most-once", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			c := mustNew(b, cl, "g", kdeliver.AtMostOnce)
			return func(ctx context.Context) error { return c.Run(ctx, countHandler(done)) }
		}},
		{"at-least-once", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			c := mustNew(b, cl, "g", kdeliver.AtLeastOnce)
			return func(ctx context.Context) error { return c.Run(ctx, countHandler(done)) }
		}},
		{"exactly-once guard memory", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			c := mustNewWithGuard(b, cl, "g", newGuard(b, dedup.NewMemory(1<<21)))
			return func(ctx context.Context) error { return c.Run(ctx, countHandler(done)) }
		}},
		{"exactly-once sink", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			return mustNewWithSink(b, cl, "g", countSink(done)).Run
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			cl := newCluster(b, 3)
			produce(b, cl, 0, b.N)
			var handled atomic.Int64
			finished := make(chan struct{})
			done := func(n int) {
				if handled.Add(int64(n)) == int64(b.N) {
					close(finished)
				}
			}
			run := tc.new(b, cl, done)
			ctx, cancel := context.WithCancel(context.Background())
			b.ResetTimer()
			stopped := make(chan error, 1)
			go func() { stopped <- run(ctx) }()
			<-finished
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			cancel()
			if err := <-stopped; err != nil {
				b.Fatal(err)
			}
		})
	}
}

func countHandler(done func(int)) Handler {
	return func(context.Context, *kgo.Record) error { done(1); return nil }
}

// countSink is a Sink that stores nothing and reports each Write's
// record count.
type countSink func(n int)

func (s countSink) Assign(context.Context, Assignment) (map[string]map[int32]int64, error) {
	return nil, nil
}
func (s countSink) Write(_ context.Context, recs []*kgo.Record) error { s(len(recs)); return nil }
func (s countSink) Revoke(map[string][]int32)                         {}
