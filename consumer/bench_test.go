package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

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
		{"at-least-once by-key 8", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			c := mustNew(b, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithConcurrency(8, kdeliver.ByKey))
			return func(ctx context.Context) error { return c.Run(ctx, countHandler(done)) }
		}},
		{"at-least-once unordered 6", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			c := mustNew(b, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithConcurrency(6, kdeliver.Unordered))
			return func(ctx context.Context) error { return c.Run(ctx, countHandler(done)) }
		}},
		{"at-least-once by-partition 3", func(b *testing.B, cl *kdelivertest.Cluster, done func(int)) func(context.Context) error {
			c := mustNew(b, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithConcurrency(3, kdeliver.ByPartition))
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
			cpu := cpuTime()
			stopped := make(chan error, 1)
			go func() { stopped <- run(ctx) }()
			<-finished
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/record")
			cancel()
			if err := <-stopped; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru) // cannot fail for RUSAGE_SELF
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// BenchmarkConcurrent compares the concurrent consumer with the sequential
// one on a handler that sleeps 1 ms (a database or HTTP call): 20,000
// records on 12 partitions, by partition with a concurrency of 12; and
// 20,000 records of 10,000 keys on 1 partition, by key with a concurrency
// of 64. Each iteration reads all records with a new group; records/s is
// from the first poll to the last handler's return, commits included.
//
//	go test -run '^$' -bench Concurrent -benchtime 1x ./consumer/
func BenchmarkConcurrent(b *testing.B) {
	const n = 20000
	cases := []struct {
		name        string
		parts, keys int
		opts        []Option
	}{
		{"12 partitions/sequential", 12, 0, nil},
		{"12 partitions/by-partition 12", 12, 0, []Option{kdeliver.WithConcurrency(12, kdeliver.ByPartition)}},
		{"1 partition 10000 keys/sequential", 1, 10000, nil},
		{"1 partition 10000 keys/by-key 64", 1, 10000, []Option{kdeliver.WithConcurrency(64, kdeliver.ByKey)}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			cl := newCluster(b, int32(tc.parts))
			var seed []kdelivertest.SeedOption
			if tc.keys > 0 {
				seed = append(seed, kdelivertest.Keys(tc.keys))
			}
			kdelivertest.Seed(b, cl.Brokers(), "t", n, seed...)
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				var handled atomic.Int64
				var first atomic.Int64
				finished := make(chan time.Time, 1)
				c := mustNew(b, cl, fmt.Sprintf("g%d", i), kdeliver.AtLeastOnce,
					append([]Option{kdeliver.WithLogger(slog.New(slog.DiscardHandler))}, tc.opts...)...)
				ctx, cancel := context.WithCancel(context.Background())
				stopped := make(chan error, 1)
				b.StartTimer()
				go func() {
					stopped <- c.Run(ctx, func(context.Context, *kgo.Record) error {
						first.CompareAndSwap(0, time.Now().UnixNano())
						time.Sleep(time.Millisecond)
						if handled.Add(1) == n {
							finished <- time.Now()
						}
						return nil
					})
				}()
				end := <-finished
				b.StopTimer()
				total += end.Sub(time.Unix(0, first.Load()))
				cancel()
				if err := <-stopped; err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "records/s")
		})
	}
}
