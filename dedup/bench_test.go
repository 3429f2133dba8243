package dedup_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/kdeliver/kdeliver/dedup"
)

func noop(context.Context) error { return nil }

// BenchmarkMemoryGuard is the per-record overhead of a guarded side effect
// with the memory store: Reserve, the (empty) side effect, Confirm.
func BenchmarkMemoryGuard(b *testing.B) {
	g, err := dedup.NewGuard(dedup.NewMemory(1<<20), "bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := g.Do(ctx, "k"+strconv.Itoa(i), noop); err != nil {
			b.Fatal(err)
		}
	}
}
