package integration

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ReadCommitted reads every record of topic that is committed when it is
// called (below each partition's last stable offset), with read_committed
// isolation, and returns them in partition order, then offset order. It
// waits for records already acknowledged but not yet replicated to the
// followers, bounded by ctx. opts are added to the consumer client's options
// (for example kgo.FetchMaxWait).
//
// It knows when a partition is done exactly, because it also reads the
// transaction markers (and drops them from the result): the last offset
// below the last stable offset is always a committed record or a marker.
func ReadCommitted(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) ([]*kgo.Record, error) {
	adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, fmt.Errorf("integration: read %s: %w", topic, err)
	}
	defer adm.Close()
	ac := kadm.NewClient(adm)
	var starts, ends kadm.ListedOffsets
	err = poll(ctx, 200*time.Millisecond, "list offsets of "+topic, func(ctx context.Context) (bool, string, error) {
		if starts, err = ac.ListStartOffsets(ctx, topic); err == nil {
			ends, err = ac.ListCommittedOffsets(ctx, topic)
		}
		if err == nil {
			err = starts.Error()
		}
		if err == nil {
			err = ends.Error()
		}
		if err != nil {
			if !isRetriable(err) {
				return false, "", fmt.Errorf("integration: read %s: %w", topic, err)
			}
			return false, err.Error(), nil
		}
		return true, "", nil
	})
	if err != nil {
		return nil, err
	}
	want := map[int32]int64{} // partition -> last stable offset
	from := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		s, _ := starts.Lookup(topic, o.Partition)
		if o.Offset > s.Offset {
			want[o.Partition] = o.Offset
			from[o.Partition] = kgo.NewOffset().At(s.Offset)
		}
	})
	if len(want) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("integration: read %s: %w", topic, err)
	}
	defer cl.Close()
	byPart := map[int32][]*kgo.Record{}
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return flatten(byPart), fmt.Errorf("integration: read %s: %w (partitions not read to the end: %v)",
				topic, ctx.Err(), slices.Sorted(maps.Keys(want)))
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if ferr == nil && !isRetriable(err) {
				ferr = fmt.Errorf("integration: read %s/%d: %w", t, p, err)
			}
		})
		if ferr != nil {
			return flatten(byPart), ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := want[r.Partition]
			if !ok || r.Offset >= end {
				return // past what was committed when we started
			}
			if !r.Attrs.IsControl() {
				byPart[r.Partition] = append(byPart[r.Partition], r)
			}
			if r.Offset >= end-1 {
				delete(want, r.Partition)
			}
		})
	}
	return flatten(byPart), nil
}

func flatten(byPart map[int32][]*kgo.Record) []*kgo.Record {
	var out []*kgo.Record
	for _, p := range slices.Sorted(maps.Keys(byPart)) {
		out = append(out, byPart[p]...)
	}
	return out
}

// ReadCommitted is the package's [ReadCommitted] on this cluster.
func (c *Cluster) ReadCommitted(ctx context.Context, topic string, opts ...kgo.Opt) ([]*kgo.Record, error) {
	return ReadCommitted(ctx, c.brokers, topic, opts...)
}

// Audit compares the values read from a topic with the values that should be
// there. Values are compared as strings; make each one unique (for example
// "<writer>:<seq>").
type Audit struct {
	Expected int // number of distinct expected values
	Read     int // number of records read

	Missing    []string       // expected but never read, sorted
	Duplicates map[string]int // read more than once: value -> extra copies
	Unexpected []string       // read but not expected, sorted, once each
}

// AuditValues compares the values of records with expected.
func AuditValues(expected []string, records []*kgo.Record) Audit {
	seen := make(map[string]int, len(records))
	for _, r := range records {
		seen[string(r.Value)]++
	}
	want := make(map[string]bool, len(expected))
	for _, v := range expected {
		want[v] = true
	}
	a := Audit{Expected: len(want), Read: len(records), Duplicates: map[string]int{}}
	for v := range want {
		if seen[v] == 0 {
			a.Missing = append(a.Missing, v)
		}
	}
	for v, n := range seen {
		if n > 1 {
			a.Duplicates[v] = n - 1
		}
		if !want[v] {
			a.Unexpected = append(a.Unexpected, v)
		}
	}
	slices.Sort(a.Missing)
	slices.Sort(a.Unexpected)
	return a
}

// DuplicateCount returns the number of extra copies read.
func (a Audit) DuplicateCount() int {
	n := 0
	for _, d := range a.Duplicates {
		n += d
	}
	return n
}

// Exact reports whether every expected value was read exactly once and
// nothing else was.
func (a Audit) Exact() bool {
	return len(a.Missing) == 0 && len(a.Duplicates) == 0 && len(a.Unexpected) == 0
}

// String summarizes the audit, with at most a few examples of each problem.
func (a Audit) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "expected %d, read %d, missing %d, duplicated %d (%d extra), unexpected %d",
		a.Expected, a.Read, len(a.Missing), len(a.Duplicates), a.DuplicateCount(), len(a.Unexpected))
	examples := func(name string, vs []string) {
		if len(vs) == 0 {
			return
		}
		fmt.Fprintf(&b, "; %s e.g. %q", name, vs[:min(5, len(vs))])
	}
	examples("missing", a.Missing)
	examples("duplicated", slices.Sorted(maps.Keys(a.Duplicates)))
	examples("unexpected", a.Unexpected)
	return b.String()
}
