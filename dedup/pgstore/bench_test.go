package pgstore_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup/pgstore"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

// BenchmarkGuard is the per-record overhead of a guarded side effect in
// PostgreSQL: Reserve (one INSERT ... ON CONFLICT) and Confirm (one upsert).
func BenchmarkGuard(b *testing.B) {
	p := pool(b)
	ctx := context.Background()
	if _, err := p.Exec(ctx, `DROP TABLE IF EXISTS bench_dedup`); err != nil {
		b.Fatal(err)
	}
	store := pgstore.New(p, pgstore.WithTable("bench_dedup"))
	if err := store.CreateTable(ctx); err != nil {
		b.Fatal(err)
	}
	storetest.Benchmark(b, store)
}

// BenchmarkSinkWrite is the per-record cost of exactly-once into
// PostgreSQL through the sink: one INSERT per record plus, per batch, the
// offset row lock, the offset update and the commit. ns/record is the
// figure to compare.
func BenchmarkSinkWrite(b *testing.B) {
	for _, batch := range []int{1, 100, 1000} {
		b.Run("batch"+strconv.Itoa(batch), func(b *testing.B) {
			p := pool(b)
			s := freshTables(b, p, "bench_events", "bench_offsets")
			if _, err := s.Assign(context.Background(), consumer.Assignment{Group: "g", Partitions: map[string][]int32{"t": {0}}}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var off int64
			for b.Loop() {
				if err := s.Write(context.Background(), recs("t", 0, off, off+int64(batch))); err != nil {
					b.Fatal(err)
				}
				off += int64(batch)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(off), "ns/record")
		})
	}
}
