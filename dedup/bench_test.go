package dedup_test

import (
	"testing"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

// BenchmarkMemoryGuard is the per-record overhead of a guarded side effect
// with the memory store.
func BenchmarkMemoryGuard(b *testing.B) { storetest.Benchmark(b, dedup.NewMemory(1<<21)) }
