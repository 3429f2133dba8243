package storetest

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/kdeliver/kdeliver/dedup"
)

// Benchmark measures the per-record overhead that s adds to a guarded side
// effect (an empty one): Reserve, then Confirm, each on a new key. The
// "serial" sub-benchmark is one record at a time; "parallel16" has 16
// goroutines per GOMAXPROCS in flight, where a networked store's round
// trips overlap.
func Benchmark(b *testing.B, s dedup.Store) {
	g, err := dedup.NewGuard(s, "bench:"+rand.Text()[:8])
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	noop := func(context.Context) error { return nil }
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			if _, err := g.Do(ctx, "s"+strconv.Itoa(i), noop); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel16", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := g.Do(ctx, "p"+strconv.FormatInt(n.Add(1), 10), noop); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
