package kdelivertest

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Report is what [Audit] found: how the records read compare with the
// values that should be there.
type Report struct {
	Expected int // distinct expected values
	Read     int // records read

	// Lost are expected values never read, in expected order.
	Lost []string
	// Duplicated are values read more than once: value -> extra copies.
	Duplicated map[string]int
	// Reordered are values read, the first time, after a value of the same
	// key that comes later in the expected order: per key, the order of
	// first deliveries does not follow the expected order.
	Reordered []string
	// Unexpected are values read but not expected, once each, sorted.
	Unexpected []string
}

// Audit compares records with want, the values that should be there in the
// order they were written (what [Seed] returns). Values are compared as
// strings: make each one unique. Order is checked per record key, on each
// value's first delivery, in the order records are given (read them in
// partition and offset order, as [ReadCommitted] returns them): a repeat
// after a crash is a duplicate, not a reorder.
func Audit(want []string, records []*kgo.Record) Report {
	pos := make(map[string]int, len(want))
	for i, v := range want {
		if _, ok := pos[v]; !ok {
			pos[v] = i
		}
	}
	r := Report{Expected: len(pos), Read: len(records), Duplicated: map[string]int{}}
	seen := make(map[string]int, len(records))
	latest := map[string]int{} // key -> highest expected position delivered first so far
	unexpected := map[string]bool{}
	for _, rec := range records {
		v := string(rec.Value)
		seen[v]++
		p, ok := pos[v]
		switch {
		case !ok:
			unexpected[v] = true
		case seen[v] > 1:
			r.Duplicated[v] = seen[v] - 1
		default:
			k := string(rec.Key)
			if last, ok := latest[k]; ok && p < last {
				r.Reordered = append(r.Reordered, v)
			} else {
				latest[k] = p
			}
		}
	}
	for i, v := range want {
		if seen[v] == 0 && pos[v] == i {
			r.Lost = append(r.Lost, v)
		}
	}
	r.Unexpected = slices.Sorted(maps.Keys(unexpected))
	return r
}

// DuplicateCount returns the number of extra copies read.
func (r Report) DuplicateCount() int {
	n := 0
	for _, d := range r.Duplicated {
		n += d
	}
	return n
}

// Exact reports whether every expected value was read exactly once, in
// order per key, and nothing else was.
func (r Report) Exact() bool {
	return len(r.Lost) == 0 && len(r.Duplicated) == 0 && len(r.Reordered) == 0 && len(r.Unexpected) == 0
}

// String summarizes the report, with a few examples of each problem.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "expected %d, read %d, lost %d, duplicated %d (%d extra copies), reordered %d, unexpected %d",
		r.Expected, r.Read, len(r.Lost), len(r.Duplicated), r.DuplicateCount(), len(r.Reordered), len(r.Unexpected))
	examples := func(name string, vs []string) {
		if len(vs) > 0 {
			fmt.Fprintf(&b, "; %s e.g. %q", name, vs[:min(5, len(vs))])
		}
	}
	examples("lost", r.Lost)
	examples("duplicated", slices.Sorted(maps.Keys(r.Duplicated)))
	examples("reordered", r.Reordered)
	examples("unexpected", r.Unexpected)
	return b.String()
}
