// Package sinktest checks that a [consumer.Sink] keeps the rules that an
// exactly-once [consumer.SinkConsumer] relies on: a member whose claim on a
// partition was superseded is fenced off and writes nothing, a batch whose
// side effect fails leaves nothing behind (offset included), and the offsets
// are stored with the rows, so that a new owner resumes after the last
// written record and a redelivered record adds nothing. Every sink in
// kdeliver passes it; a third-party sink should too:
//
//	func TestSinkConformance(t *testing.T) {
//		sinktest.Run(t, func(t *testing.T) sinktest.Harness {
//			return sinktest.Harness{
//				NewSink: func(fail func(*kgo.Record) error) consumer.Sink {
//					return mysink.New(db, func(tx Tx, r *kgo.Record) error {
//						if err := fail(r); err != nil {
//							return err
//						}
//						return insertRow(tx, r.Topic, r.Partition, r.Offset)
//					})
//				},
//				Rows: func(ctx context.Context, topic string, partition int32) ([]int64, error) {
//					return selectOffsets(ctx, db, topic, partition)
//				},
//			}
//		})
//	}
//
// [Memory] is a sink that passes the suite, in memory: a model to read, and
// a sink for tests of code around a sink consumer.
//
// The suite uses topics and groups unique to each run, so sinks backed by a
// shared database need no cleaning between runs. It needs no Kafka: it calls
// the sink's methods as a [consumer.SinkConsumer] would, with records it
// makes.
package sinktest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
)

// Harness is the sink under test, over one store, and a view of what it
// stored.
type Harness struct {
	// NewSink returns a new sink, as for a new consumer (a new group
	// member), over the harness's store: every sink it returns shares the
	// same rows and offsets. Its side effect of each record is a row
	// holding the record's topic, partition and offset, written in Write's
	// transaction, but first it calls fail(record): when fail returns an
	// error, the side effect fails with it (so that Write fails with an
	// error matching it, after the rows of the batch's earlier records
	// were written in its transaction).
	NewSink func(fail func(*kgo.Record) error) consumer.Sink
	// Rows returns the offsets of the rows stored for topic's partition,
	// one per row, in any order: a record stored twice appears twice.
	Rows func(ctx context.Context, topic string, partition int32) ([]int64, error)
}

// Run runs the conformance suite as subtests of t. newHarness is called once
// per subtest; harnesses may share their store.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()
	run := rand.Text()[:8]
	tests := []struct {
		name string
		fn   func(s *suite)
	}{
		{"FirstAssignHasNoOffset", testFirstAssign},
		{"ResumesAfterLastWritten", testResume},
		{"RedeliveredRecordsAddNothing", testRedelivered},
		{"OffsetsPerGroup", testOffsetsPerGroup},
		{"SupersededMemberFenced", testSuperseded},
		{"RevokedPartitionFenced", testRevoked},
		{"UnassignedPartitionFenced", testUnassigned},
		{"ClaimsPerPartition", testClaimsPerPartition},
		{"FailedBatchRollsBack", testRollback},
		{"FailedBatchRetriedByNewOwner", testRollbackNewOwner},
		{"ConcurrentPartitions", testConcurrentPartitions},
		{"SupersededWhileWriting", testSupersededWhileWriting},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if h.NewSink == nil || h.Rows == nil {
				t.Fatal("sinktest: the Harness needs NewSink and Rows")
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			tc.fn(&suite{
				t:     t,
				ctx:   ctx,
				h:     h,
				topic: fmt.Sprintf("sinktest-%s-%d", run, i),
				group: "sinktest-" + run,
			})
		})
	}
}

// errFail is the side effect's failure that the suite injects.
var errFail = errors.New("sinktest: injected side-effect failure")

// suite is the state of one subtest.
type suite struct {
	t     *testing.T
	ctx   context.Context
	h     Harness
	topic string
	group string
	gen   atomic.Int32
}

// member is a sink of the suite with the failure it injects.
type member struct {
	s    *suite
	name string
	sink consumer.Sink
	// failAt, when not negative, is the offset whose side effect fails.
	failAt atomic.Int64
}

func (s *suite) member(name string) *member {
	m := &member{s: s, name: name}
	m.failAt.Store(-1)
	m.sink = s.h.NewSink(func(r *kgo.Record) error {
		if r.Offset == m.failAt.Load() {
			return fmt.Errorf("%w at %s/%d@%d", errFail, r.Topic, r.Partition, r.Offset)
		}
		return nil
	})
	if m.sink == nil {
		s.t.Fatal("sinktest: NewSink returned nil")
	}
	return m
}

// assign claims the partitions of the suite's topic for m in group and
// returns the stored offsets.
func (m *member) assignIn(group string, parts ...int32) map[int32]int64 {
	m.s.t.Helper()
	got, err := m.sink.Assign(m.s.ctx, consumer.Assignment{
		Group:      group,
		MemberID:   m.name,
		Generation: m.s.gen.Add(1),
		Partitions: map[string][]int32{m.s.topic: parts},
	})
	if err != nil {
		m.s.t.Fatalf("%s: Assign(%v): %v", m.name, parts, err)
	}
	for topic := range got {
		if topic != m.s.topic {
			m.s.t.Fatalf("%s: Assign(%v) returned offsets of topic %q, which was not assigned", m.name, parts, topic)
		}
	}
	out := got[m.s.topic]
	for p := range out {
		if !slices.Contains(parts, p) {
			m.s.t.Fatalf("%s: Assign(%v) returned an offset for partition %d, which was not assigned", m.name, parts, p)
		}
	}
	return out
}

func (m *member) assign(parts ...int32) map[int32]int64 {
	m.s.t.Helper()
	return m.assignIn(m.s.group, parts...)
}

// wantOffset checks the offset Assign returned for partition p; -1 means
// none.
func (m *member) wantOffset(got map[int32]int64, p int32, want int64) {
	m.s.t.Helper()
	off, ok := got[p]
	switch {
	case want < 0 && ok:
		m.s.t.Fatalf("%s: Assign returned offset %d for partition %d, want none (nothing was written)", m.name, off, p)
	case want >= 0 && !ok:
		m.s.t.Fatalf("%s: Assign returned no offset for partition %d, want %d (the offset after the last written record)", m.name, p, want)
	case want >= 0 && off != want:
		m.s.t.Fatalf("%s: Assign returned offset %d for partition %d, want %d (the offset after the last written record)", m.name, off, p, want)
	}
}

// records returns the records of partition p at offsets from..to-1.
func (s *suite) records(p int32, from, to int64) []*kgo.Record {
	recs := make([]*kgo.Record, 0, to-from)
	for o := from; o < to; o++ {
		v := fmt.Appendf(nil, "%s/%d@%d", s.topic, p, o)
		recs = append(recs, &kgo.Record{
			Topic:     s.topic,
			Partition: p,
			Offset:    o,
			Key:       v,
			Value:     v,
			Headers:   []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: v}},
			Timestamp: time.Now(),
		})
	}
	return recs
}

// write writes offsets from..to-1 of partition p and returns Write's error.
func (m *member) write(p int32, from, to int64) error {
	return m.sink.Write(m.s.ctx, m.s.records(p, from, to))
}

func (m *member) mustWrite(p int32, from, to int64) {
	m.s.t.Helper()
	if err := m.write(p, from, to); err != nil {
		m.s.t.Fatalf("%s: Write(%d, %d..%d): %v", m.name, p, from, to-1, err)
	}
}

func (m *member) wantFenced(p int32, from, to int64) {
	m.s.t.Helper()
	err := m.write(p, from, to)
	if !errors.Is(err, kdeliver.ErrFenced) {
		m.s.t.Fatalf("%s: Write(%d, %d..%d) = %v, want an error matching kdeliver.ErrFenced", m.name, p, from, to-1, err)
	}
}

// wantRows checks that partition p holds one row for each offset below n,
// and no other.
func (s *suite) wantRows(p int32, n int64) {
	s.t.Helper()
	got, err := s.h.Rows(s.ctx, s.topic, p)
	if err != nil {
		s.t.Fatalf("Rows(%d): %v", p, err)
	}
	slices.Sort(got)
	want := make([]int64, n)
	for i := range want {
		want[i] = int64(i)
	}
	if !slices.Equal(got, want) {
		s.t.Fatalf("partition %d holds rows at offsets %s, want each of 0..%d once", p, summarize(got), n-1)
	}
}

// summarize describes sorted offsets briefly: runs, and duplicates.
func summarize(offs []int64) string {
	if len(offs) == 0 {
		return "[] (none)"
	}
	var b []byte
	b = append(b, '[')
	for i := 0; i < len(offs); {
		j := i
		for j+1 < len(offs) && offs[j+1] == offs[j]+1 {
			j++
		}
		if i > 0 {
			b = append(b, ' ')
		}
		if j > i {
			b = fmt.Appendf(b, "%d..%d", offs[i], offs[j])
		} else {
			b = fmt.Appendf(b, "%d", offs[i])
		}
		i = j + 1
		for i < len(offs) && offs[i] == offs[j] {
			b = fmt.Appendf(b, " %d(again)", offs[i])
			i++
		}
	}
	return string(append(b, ']'))
}

// A partition no sink wrote has no stored offset: the consumer starts it
// at its usual start.
func testFirstAssign(s *suite) {
	a := s.member("a")
	got := a.assign(0, 1)
	a.wantOffset(got, 0, -1)
	a.wantOffset(got, 1, -1)
	s.wantRows(0, 0)
}

// A new owner resumes at the offset after the last record written, per
// partition.
func testResume(s *suite) {
	a := s.member("a")
	a.assign(0, 1, 2)
	a.mustWrite(0, 0, 4)
	a.mustWrite(0, 4, 7)
	a.mustWrite(1, 0, 1)
	b := s.member("b")
	got := b.assign(0, 1, 2)
	b.wantOffset(got, 0, 7)
	b.wantOffset(got, 1, 1)
	b.wantOffset(got, 2, -1)
	b.mustWrite(0, 7, 12)
	c := s.member("c")
	c.wantOffset(c.assign(0), 0, 12)
	s.wantRows(0, 12)
	s.wantRows(1, 1)
	s.wantRows(2, 0)
}

// Records below the stored offset are skipped: a batch delivered again,
// whole or overlapping what is stored, adds nothing twice, and the offset
// does not go back.
func testRedelivered(s *suite) {
	a := s.member("a")
	a.assign(0)
	a.mustWrite(0, 0, 10)
	a.mustWrite(0, 0, 10) // the same batch again, as after an ambiguous commit
	s.wantRows(0, 10)
	b := s.member("b")
	b.wantOffset(b.assign(0), 0, 10)
	b.mustWrite(0, 0, 10) // redelivered to the new owner
	b.mustWrite(0, 3, 5)
	s.wantRows(0, 10)
	b.mustWrite(0, 5, 15) // overlapping: 10..14 are new
	s.wantRows(0, 15)
	c := s.member("c")
	c.wantOffset(c.assign(0), 0, 15)
}

// Offsets are stored per consumer group: another group reading the same
// topic into the same store starts afresh.
func testOffsetsPerGroup(s *suite) {
	a := s.member("a")
	a.assign(0)
	a.mustWrite(0, 0, 5)
	other := s.member("other")
	other.wantOffset(other.assignIn(s.group+"-other", 0), 0, -1)
	b := s.member("b")
	b.wantOffset(b.assign(0), 0, 5)
}

// A member whose partition was assigned to another is fenced: its Write
// fails with an error matching kdeliver.ErrFenced and writes nothing, while
// the new owner's writes work.
func testSuperseded(s *suite) {
	a := s.member("a")
	a.wantOffset(a.assign(0), 0, -1)
	a.mustWrite(0, 0, 10)
	b := s.member("b")
	b.wantOffset(b.assign(0), 0, 10)
	a.wantFenced(0, 10, 20)
	s.wantRows(0, 10)
	b.mustWrite(0, 5, 20)
	s.wantRows(0, 20)
	a.wantFenced(0, 20, 25)
	s.wantRows(0, 20)
	// A fenced write stored no offset either.
	c := s.member("c")
	c.wantOffset(c.assign(0), 0, 20)
	// Assigned again later, the first member writes once more.
	a.wantOffset(a.assign(0), 0, 20)
	a.mustWrite(0, 20, 22)
	s.wantRows(0, 22)
}

// After Revoke, the member's Writes to the partition fail fenced; its other
// partitions still work.
func testRevoked(s *suite) {
	a := s.member("a")
	a.assign(0, 1)
	a.mustWrite(0, 0, 5)
	a.sink.Revoke(map[string][]int32{s.topic: {0}})
	a.wantFenced(0, 5, 10)
	s.wantRows(0, 5)
	a.mustWrite(1, 0, 3)
	s.wantRows(1, 3)
	a.sink.Revoke(map[string][]int32{s.topic: {1}})
	a.wantFenced(1, 3, 4)
	s.wantRows(1, 3)
	b := s.member("b")
	got := b.assign(0, 1)
	b.wantOffset(got, 0, 5)
	b.wantOffset(got, 1, 3)
}

// A sink never assigned the partition refuses to write it.
func testUnassigned(s *suite) {
	a := s.member("a")
	a.wantFenced(0, 0, 5)
	a.assign(1)
	a.wantFenced(0, 0, 5)
	s.wantRows(0, 0)
	b := s.member("b")
	b.wantOffset(b.assign(0), 0, -1)
}

// Claims are per partition: a member assigned one partition does not fence
// the owner of another.
func testClaimsPerPartition(s *suite) {
	a, b := s.member("a"), s.member("b")
	a.assign(0)
	b.assign(1)
	a.mustWrite(0, 0, 3)
	b.mustWrite(1, 0, 4)
	a.mustWrite(0, 3, 6)
	s.wantRows(0, 6)
	s.wantRows(1, 4)
}

// A Write whose side effect fails mid-batch, or on its first or last
// record, fails with that error (not as fenced), leaves no row of the batch
// and the stored offset unchanged; the same batch written again stores each
// record once.
func testRollback(s *suite) {
	for i, failAt := range []int64{5, 7, 9} { // first, middle, last
		p := int32(i)
		a := s.member(fmt.Sprintf("a%d", p))
		a.assign(p)
		a.mustWrite(p, 0, 5)
		a.failAt.Store(failAt)
		err := a.write(p, 5, 10)
		if !errors.Is(err, errFail) || errors.Is(err, kdeliver.ErrFenced) {
			s.t.Fatalf("Write(%d, 5..9) failing at %d = %v, want the side effect's error", p, failAt, err)
		}
		s.wantRows(p, 5)
		err = a.write(p, 5, 10) // still failing: still nothing
		if !errors.Is(err, errFail) {
			s.t.Fatalf("Write(%d, 5..9) failing again = %v, want the side effect's error", p, err)
		}
		s.wantRows(p, 5)
		a.failAt.Store(-1)
		a.mustWrite(p, 5, 10) // the consumer's retry of the same batch
		s.wantRows(p, 10)
		b := s.member(fmt.Sprintf("b%d", p))
		b.wantOffset(b.assign(p), p, 10)
	}
}

// After a failed batch the stored offset is where it was: a new owner
// resumes there and writes the batch once.
func testRollbackNewOwner(s *suite) {
	a := s.member("a")
	a.assign(0)
	a.mustWrite(0, 0, 5)
	a.failAt.Store(8)
	if err := a.write(0, 5, 10); !errors.Is(err, errFail) {
		s.t.Fatalf("Write(0, 5..9) failing at 8 = %v, want the side effect's error", err)
	}
	b := s.member("b")
	b.wantOffset(b.assign(0), 0, 5)
	b.mustWrite(0, 5, 10)
	s.wantRows(0, 10)
	a.failAt.Store(-1)
	a.wantFenced(0, 5, 10)
	s.wantRows(0, 10)
}

// Writes to different partitions may run at once (the consumer claims new
// partitions while it writes others): each record is stored once, and each
// partition's offset is its own.
func testConcurrentPartitions(s *suite) {
	const parts, batches, size = 4, 10, 10
	a := s.member("a")
	a.assign(0, 1, 2, 3)
	var wg sync.WaitGroup
	errs := make(chan error, parts+1)
	for p := range int32(parts) {
		wg.Go(func() {
			for i := range int64(batches) {
				if err := a.write(p, i*size, (i+1)*size); err != nil {
					errs <- fmt.Errorf("Write(%d, %d..%d): %w", p, i*size, (i+1)*size-1, err)
					return
				}
			}
		})
	}
	b := s.member("b")
	wg.Go(func() { // another member claims other partitions meanwhile
		for p := int32(parts); p < 2*parts; p++ {
			a := consumer.Assignment{Group: s.group, MemberID: b.name, Generation: s.gen.Add(1), Partitions: map[string][]int32{s.topic: {p}}}
			if _, err := b.sink.Assign(s.ctx, a); err != nil {
				errs <- fmt.Errorf("b: Assign(%d): %w", p, err)
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		s.t.Fatal(err)
	}
	c := s.member("c")
	got := c.assign(0, 1, 2, 3)
	for p := range int32(parts) {
		s.wantRows(p, batches*size)
		c.wantOffset(got, p, batches*size)
	}
}

// A new owner claims the partition while the old one is writing: every
// Write of the old owner either committed before the claim (and the new
// owner resumes after it) or is fenced and wrote nothing. The new owner
// then writes on, and each record is stored once.
func testSupersededWhileWriting(s *suite) {
	const size = 5
	a, b := s.member("a"), s.member("b")
	a.assign(0)
	claimed := make(chan map[int32]int64, 1)
	claimErr := make(chan error, 1)
	var written atomic.Int64
	go func() {
		for written.Load() < 3*size { // let a few writes land first
			time.Sleep(time.Millisecond)
		}
		got, err := b.sink.Assign(s.ctx, consumer.Assignment{Group: s.group, MemberID: b.name, Generation: s.gen.Add(1),
			Partitions: map[string][]int32{s.topic: {0}}})
		if err != nil {
			claimErr <- err
			return
		}
		claimed <- got[s.topic]
	}()
	var off int64
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := a.write(0, off, off+size)
		if errors.Is(err, kdeliver.ErrFenced) {
			break
		}
		if err != nil {
			s.t.Fatalf("a: Write(0, %d..%d): %v", off, off+size-1, err)
		}
		off += size
		written.Store(off)
		if time.Now().After(deadline) {
			s.t.Fatalf("a wrote %d records in 10s while b claimed the partition: its writes were never fenced", off)
		}
	}
	var got map[int32]int64
	select {
	case got = <-claimed:
	case err := <-claimErr:
		s.t.Fatalf("b: Assign(0): %v", err)
	}
	b.wantOffset(got, 0, off)
	s.wantRows(0, off)
	for o := off; o < off+50; o += size {
		b.mustWrite(0, o, o+size)
	}
	a.wantFenced(0, off+50, off+55)
	s.wantRows(0, off+50)
}
