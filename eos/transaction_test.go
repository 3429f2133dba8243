package eos

import (
	"testing"
	"time"
)

// TestPollLimit: a transaction's next poll asks for pollShare of what its
// handling reaches by the deadline at its pace so far, within what it may
// still take, and at least one record; and for all kgo has buffered when
// the pace handles it by the deadline plus the slack.
func TestPollLimit(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name                      string
		left, buffered, handled   int
		elapsed, remaining, slack time.Duration
		want                      int
	}{
		{"no pace yet: one record", 1000, 500, 0, 5 * ms, 95 * ms, 10 * ms, 1},
		{"no time elapsed: all it may take", 1000, 0, 10, 0, 95 * ms, 10 * ms, 1000},
		{"at its pace: 300 handled in 30 ms, 20 ms left", 100_000, 0, 300, 30 * ms, 20 * ms, 10 * ms, 160},
		{"capped by what it may take", 150, 0, 300, 30 * ms, 20 * ms, 10 * ms, 150},
		{"a slow handler: one record in 40 ms, 60 ms left", 500, 0, 1, 40 * ms, 60 * ms, 10 * ms, 1},
		{"at least one as the deadline nears", 500, 0, 1, 90 * ms, time.Microsecond, 10 * ms, 1},
		{"all kgo holds, handled by the deadline plus the slack", 100_000, 250, 300, 30 * ms, 20 * ms, 10 * ms, 250},
		{"all kgo holds, just within the slack", 100_000, 300, 300, 30 * ms, 20 * ms, 10 * ms, 300},
		{"past the slack, the buffer's rest stays", 100_000, 301, 300, 30 * ms, 20 * ms, 10 * ms, 160},
		{"no slack: the buffer's rest stays", 100_000, 250, 300, 30 * ms, 20 * ms, 0, 160},
		{"all kgo holds, within what it may take", 200, 250, 300, 30 * ms, 20 * ms, 10 * ms, 200},
		{"a slow handler leaves the buffer", 500, 400, 1, 40 * ms, 60 * ms, 10 * ms, 1},
		{"past the deadline, a small rest within the slack", 500, 8, 100, 100 * ms, 0, 10 * ms, 8},
	} {
		if got := pollLimit(c.left, c.buffered, c.handled, c.elapsed, c.remaining, c.slack); got != c.want {
			t.Errorf("%s: pollLimit(%d, %d, %d, %v, %v, %v) = %d, want %d", c.name, c.left, c.buffered, c.handled, c.elapsed, c.remaining, c.slack, got, c.want)
		}
	}
}
