package main

import (
	"reflect"
	"slices"
	"testing"

	"github.com/kdeliver/kdeliver"
)

// out builds output records: each element is a mark of run "r1" (seq with
// 2 keys) at the next offset of partition p.
type outBuilder struct {
	recs []outRecord
	next map[int32]int64
}

func (b *outBuilder) add(p int32, value string) *outBuilder {
	if b.next == nil {
		b.next = map[int32]int64{}
	}
	b.recs = append(b.recs, outRecord{partition: p, offset: b.next[p], value: []byte(value)})
	b.next[p]++
	return b
}

// seq adds the marks of seqs to partition p.
func (b *outBuilder) seq(p int32, seqs ...int64) *outBuilder {
	for _, s := range seqs {
		b.add(p, seedMark("r1", s, 2).String())
	}
	return b
}

// gap skips an offset of partition p (a transaction marker, or an aborted
// record that read_committed filters out).
func (b *outBuilder) gap(p int32) *outBuilder {
	if b.next == nil {
		b.next = map[int32]int64{}
	}
	b.next[p]++
	return b
}

func seqs(n int) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = int64(i)
	}
	return s
}

func TestMarkRoundTrip(t *testing.T) {
	m := seedMark("m3x0q1", 17, 10)
	if got := m.String(); got != "kdv1:m3x0q1:17:k7:1" {
		t.Fatalf("mark = %q; want kdv1:m3x0q1:17:k7:1", got)
	}
	for _, v := range []string{
		"kdv1:m3x0q1:17:k7:1",
		`{"in":"kdv1:m3x0q1:17:k7:1","enriched":true}`,
		"prefix kdv1:m3x0q1:17:k7:1",
	} {
		got, ok := parseMark([]byte(v))
		if !ok || got != m {
			t.Errorf("parseMark(%q) = %+v, %v; want %+v", v, got, ok, m)
		}
	}
	for _, v := range []string{"", "17", "kdv1:", "kdv1:r:17:k7", "kdv1:r:x:k7:1", "kdv1:r:17:k7:", "kdv1:R:17:k7:1", "kdv1:r:-1:k7:1"} {
		if got, ok := parseMark([]byte(v)); ok {
			t.Errorf("parseMark(%q) = %+v; want no mark", v, got)
		}
	}
}

func TestCheckClean(t *testing.T) {
	// Keys alternate; each key's records keep their order in one
	// partition, as a copier that keeps keys writes them. Offsets with
	// gaps (transaction markers) are fine.
	b := (&outBuilder{}).seq(0, 0, 2, 4).gap(0).seq(0, 6).seq(1, 1, 3).gap(1).seq(1, 5, 7)
	c := check("r1", seqs(8), b.recs, b.recs)
	want := Counts{Expected: 8, ReadCommitted: 8, ReadUncommitted: 8, DeliveredOnce: 8}
	if !countsEqual(c, want) {
		t.Fatalf("check = %+v; want %+v", c, want)
	}
	for _, sem := range kdeliver.All {
		if pass, why := verdict(sem, c, true); !pass {
			t.Errorf("%v: verdict fails a clean output: %v", sem, why)
		}
	}
}

func TestCheckLost(t *testing.T) {
	b := (&outBuilder{}).seq(0, 0, 2, 4, 6).seq(1, 1, 5, 7) // 3 missing
	c := check("r1", seqs(8), b.recs, b.recs)
	if c.Lost != 1 || !slices.Equal(c.Examples.Lost, []int64{3}) || c.DeliveredOnce != 7 || c.Duplicated != 0 {
		t.Fatalf("check = %+v; want 3 lost, 7 delivered once", c)
	}
	wantVerdicts(t, c, map[kdeliver.Semantics]bool{kdeliver.ExactlyOnce: false, kdeliver.AtLeastOnce: false, kdeliver.AtMostOnce: true})
}

func TestCheckDuplicated(t *testing.T) {
	// A crash after 2 and 4 were written, before their offsets were
	// committed: both come again. Repeats are duplicates, not reorders.
	b := (&outBuilder{}).seq(0, 0, 2, 4, 2, 4, 6, 4).seq(1, 1, 3, 5, 7)
	c := check("r1", seqs(8), b.recs, b.recs)
	if c.Duplicated != 2 || c.ExtraCopies != 3 || !slices.Equal(c.Examples.Duplicated, []int64{2, 4}) ||
		c.Lost != 0 || c.DeliveredOnce != 6 || c.Reordered != 0 || c.ReadCommitted != 11 {
		t.Fatalf("check = %+v; want 2 and 4 duplicated (3 extra copies), nothing lost or reordered", c)
	}
	wantVerdicts(t, c, map[kdeliver.Semantics]bool{kdeliver.ExactlyOnce: false, kdeliver.AtLeastOnce: true, kdeliver.AtMostOnce: false})
}

func TestCheckReordered(t *testing.T) {
	// Key k0 is 0, 2, 4, 6 (KSEQ 0..3): 4 first delivered before 2. Key
	// k1 in another partition is in order; order across partitions is
	// not judged (1 after 3 there would be, within partition 1).
	b := (&outBuilder{}).seq(0, 0, 4, 2, 6).seq(1, 1, 3).seq(2, 5, 7)
	c := check("r1", seqs(8), b.recs, b.recs)
	if c.Reordered != 1 || !slices.Equal(c.Examples.Reordered, []int64{2}) || c.Lost != 0 || c.Duplicated != 0 {
		t.Fatalf("check = %+v; want 2 reordered, nothing else", c)
	}
	if pass, _ := verdict(kdeliver.ExactlyOnce, c, false); !pass {
		t.Error("a reorder failed exactly-once without --ordered")
	}
	if pass, why := verdict(kdeliver.ExactlyOnce, c, true); pass || !slices.Equal(why, []string{"1 reordered"}) {
		t.Errorf("--ordered verdict = %v, %q; want a failure naming 1 reordered", pass, why)
	}
}

func TestCheckAbortedReads(t *testing.T) {
	// Partition 0's log: 0, 2 (aborted), 2, 4, 6; read_committed skips the
	// aborted 2 at offset 1.
	all := (&outBuilder{}).seq(0, 0, 2, 2, 4, 6).seq(1, 1, 3, 5, 7)
	var committed []outRecord
	for _, r := range all.recs {
		if r.partition != 0 || r.offset != 1 {
			committed = append(committed, r)
		}
	}
	c := check("r1", seqs(8), committed, all.recs)
	if c.AbortedReads != 1 || !slices.Equal(c.Examples.AbortedReads, []int64{2}) || c.Duplicated != 0 || c.Lost != 0 ||
		c.ReadCommitted != 8 || c.ReadUncommitted != 9 {
		t.Fatalf("check = %+v; want 1 aborted read (2), nothing lost or duplicated", c)
	}
	wantVerdicts(t, c, map[kdeliver.Semantics]bool{kdeliver.ExactlyOnce: true, kdeliver.AtLeastOnce: true, kdeliver.AtMostOnce: true})
}

func TestCheckOtherRunsAndUnrecognized(t *testing.T) {
	b := (&outBuilder{}).add(0, seedMark("old", 0, 2).String()).add(0, "not a mark").seq(0, 0, 1, 9)
	c := check("r1", seqs(2), b.recs, b.recs)
	if c.OtherRuns != 1 || c.Unrecognized != 2 || !slices.Equal(c.Examples.Unrecognized, []string{"0/1", "0/4"}) ||
		c.DeliveredOnce != 2 || c.ReadCommitted != 2 {
		t.Fatalf("check = %+v; want 1 other run, 2 unrecognized (0/1, and 9, not in the input, at 0/4)", c)
	}
}

func TestCheckInputTwice(t *testing.T) {
	// --no-seed: a producer that duplicated its input counts each record
	// once.
	b := (&outBuilder{}).seq(0, 0)
	c := check("r1", []int64{0, 1, 1}, b.recs, b.recs)
	if c.Expected != 2 || c.Lost != 1 || c.DeliveredOnce != 1 {
		t.Fatalf("check = %+v; want 2 expected, 1 lost, 1 delivered once", c)
	}
}

func TestCheckExamplesBounded(t *testing.T) {
	c := check("r1", seqs(1000), nil, nil)
	if c.Lost != 1000 || len(c.Examples.Lost) != maxExamples {
		t.Fatalf("lost %d with %d examples; want 1000 with %d", c.Lost, len(c.Examples.Lost), maxExamples)
	}
}

func wantVerdicts(t *testing.T, c Counts, want map[kdeliver.Semantics]bool) {
	t.Helper()
	for sem, ok := range want {
		if pass, why := verdict(sem, c, false); pass != ok {
			t.Errorf("%v: verdict %v (%v); want %v", sem, pass, why, ok)
		}
	}
}

func countsEqual(a, b Counts) bool {
	return reflect.DeepEqual(a, b)
}
