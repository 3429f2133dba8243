package consumer

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// BenchmarkEngine measures the concurrent engine alone, without Kafka: polls
// of 6 partitions × 100 records (10,000 keys) are dispatched to it as fast
// as it takes them, to a no-op handler; commits are left out. ns/op and
// cpu-ns/record are the engine's cost per record, which the no-op
// benchmark against the raw loop (integration/perf) adds to kgo's.
//
//	go test -run '^$' -bench Engine -benchtime 2000000x ./consumer/
func BenchmarkEngine(b *testing.B) {
	for _, mode := range []struct {
		name  string
		order kdeliver.Ordering
	}{{"by-partition", kdeliver.ByPartition}, {"by-key", kdeliver.ByKey}, {"unordered", kdeliver.Unordered}} {
		b.Run(mode.name+" 6", func(b *testing.B) {
			c, err := New([]string{"127.0.0.1:1"}, "g", []string{"t"}, kdeliver.AtLeastOnce,
				kdeliver.WithConcurrency(6, mode.order), kdeliver.WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				b.Fatal(err)
			}
			const parts, per = 6, 100
			keys := make([][]byte, 10000)
			for i := range keys {
				keys[i] = []byte("k" + strconv.Itoa(i))
			}
			// poll returns the records of a poll, made new like kgo's.
			var next int64 // of each partition
			poll := func() kgo.Fetches {
				slab := make([]kgo.Record, parts*per)
				ps := make([]kgo.FetchPartition, parts)
				for p := range parts {
					recs := make([]*kgo.Record, per)
					for j := range recs {
						off := next + int64(j)
						rec := &slab[p*per+j]
						rec.Topic, rec.Partition, rec.Offset, rec.Key = "t", int32(p), off, keys[(off*parts+int64(p))%int64(len(keys))]
						recs[j] = rec
					}
					ps[p] = kgo.FetchPartition{Partition: int32(p), Records: recs}
				}
				next += per
				return kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "t", Partitions: ps}}}}
			}
			var handled atomic.Int64
			finished := make(chan struct{})
			total := int64(b.N/(parts*per)+1) * parts * per
			r := &run{c: c, pending: map[string]map[int32]kgo.EpochOffset{}}
			e := newEngine(r, func(context.Context, *kgo.Record) error {
				if handled.Add(1) == total {
					close(finished)
				}
				return nil
			}, nil)
			ctx := context.Background()
			workers := e.start(ctx, ctx, func() {})
			b.ResetTimer()
			cpu := cpuTime()
			for next*parts < total {
				f := poll()
				// Wait, like the poll loop, until the backlogs are
				// below a share.
				e.mu.Lock()
				for e.deep() {
					e.space.Wait()
				}
				e.mu.Unlock()
				e.dispatch(f)
			}
			<-finished
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu)/float64(total), "cpu-ns/record")
			e.mu.Lock()
			e.exiting = true
			e.work.Broadcast()
			e.mu.Unlock()
			workers.Wait()
			e.rescue.timer.Stop()
			for _, ps := range e.parts {
				if off, _, _ := ps.offs.Committable(); off != next {
					b.Fatalf("partition %d: committable offset %d after %d records", ps.tp.part, off, next)
				}
			}
		})
	}
}
