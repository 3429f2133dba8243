package redisstore_test

import (
	"context"
	"testing"

	"github.com/kdeliver/kdeliver/dedup/redisstore"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

// BenchmarkGuard is the per-record overhead of a guarded side effect in
// Redis: Reserve (Lua) and Confirm (SET), two round trips.
func BenchmarkGuard(b *testing.B) {
	rdb := client(b)
	storetest.Benchmark(b, redisstore.New(rdb, redisstore.WithPrefix("bench:")))
	b.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, "bench:*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
}
