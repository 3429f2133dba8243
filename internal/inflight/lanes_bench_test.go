package inflight

import (
	"math/rand/v2"
	"testing"
)

type benchKey struct{ gen, key uint64 }

// BenchmarkLanes pushes and finishes records of 10,000 keys with 64 in
// flight, finishing in push order: the by-key engine's pattern.
//
//	go test -run '^$' -bench Lanes ./internal/inflight/
func BenchmarkLanes(b *testing.B) {
	keys := make([]benchKey, 1<<16)
	for i := range keys {
		keys[i] = benchKey{1, rand.Uint64N(10000) * 0x9e3779b97f4a7c15}
	}
	l := NewLanes[benchKey, int](func(k benchKey) uint64 { return k.gen*0x9e3779b97f4a7c15 ^ k.key })
	const inflight = 64
	for i := 0; i < b.N; i++ {
		l.Push(keys[i&(len(keys)-1)], i)
		if i >= inflight {
			l.Next(keys[(i-inflight)&(len(keys)-1)])
		}
	}
}
