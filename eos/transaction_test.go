package eos

import (
	"testing"
	"time"
)

// TestPollLimit: a transaction's next poll asks for pollShare of what its
// handling reaches by the deadline at its pace so far, within what it may
// still take, and at least one record.
func TestPollLimit(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name               string
		left, handled      int
		elapsed, remaining time.Duration
		want               int
	}{
		{"no pace yet: one record", 1000, 0, 5 * ms, 95 * ms, 1},
		{"no time elapsed: all it may take", 1000, 10, 0, 95 * ms, 1000},
		{"at its pace: 300 handled in 30 ms, 20 ms left", 100_000, 300, 30 * ms, 20 * ms, 160},
		{"capped by what it may take", 150, 300, 30 * ms, 20 * ms, 150},
		{"a slow handler: one record in 40 ms, 60 ms left", 500, 1, 40 * ms, 60 * ms, 1},
		{"at least one as the deadline nears", 500, 1, 90 * ms, time.Microsecond, 1},
	} {
		if got := pollLimit(c.left, c.handled, c.elapsed, c.remaining); got != c.want {
			t.Errorf("%s: pollLimit(%d, %d, %v, %v) = %d, want %d", c.name, c.left, c.handled, c.elapsed, c.remaining, got, c.want)
		}
	}
}
