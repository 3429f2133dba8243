package redisstore_test

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/redisstore"
)

func noop(context.Context) error { return nil }

// BenchmarkGuard is the per-record overhead of a guarded side effect in
// Redis: Reserve (Lua) and Confirm (SET), two round trips. The parallel
// variant shows the throughput with 16 records in flight.
func BenchmarkGuard(b *testing.B) {
	rdb := client(b)
	store := redisstore.New(rdb, redisstore.WithPrefix("bench:"+rand.Text()[:8]+":"))
	g, err := dedup.NewGuard(store, "bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
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
		b.SetParallelism(16) // 16 x GOMAXPROCS goroutines
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
	b.Cleanup(func() {
		iter := rdb.Scan(ctx, 0, "bench:*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
}
