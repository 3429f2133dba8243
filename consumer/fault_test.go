package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// crashAfter returns a handler that records each record in l and crashes on
// the n-th call.
func crashAfter(l *ledger, n int64) Handler {
	var calls atomic.Int64
	return func(_ context.Context, rec *kgo.Record) error {
		l.add(rec)
		if calls.Add(1) == n {
			return crash.ErrCrash
		}
		return nil
	}
}

func recordAll(l *ledger) Handler {
	return func(_ context.Context, rec *kgo.Record) error { l.add(rec); return nil }
}

// TestAtLeastOnceCrash: a consumer crashes mid-batch (processed records of
// the batch not committed yet) or on a batch's first record; a second
// consumer takes over. Nothing is lost, and the duplicates are exactly the
// records the first one handled at or past the committed offsets.
func TestAtLeastOnceCrash(t *testing.T) {
	for _, at := range []int64{1, 55} {
		t.Run(fmt.Sprintf("at call %d", at), func(t *testing.T) {
			cl := newCluster(t, 3)
			const n = 300
			produce(t, cl, 0, n)

			l1 := newLedger()
			c1 := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(40))
			err := start(c1, crashAfter(l1, at)).wait(t)
			if !errors.Is(err, crash.ErrCrash) {
				t.Fatalf("Run = %v, want the crash", err)
			}
			commits := committed(cl, "g")
			var wantDups int
			for _, p := range l1.pos {
				if p.offset >= commits[p.part] {
					wantDups++
				}
			}

			all := newLedger()
			for seq, c := range l1.seen {
				all.seen[seq] = c
			}
			c2 := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
			r := start(c2, recordAll(all))
			waitFor(t, "all records", func() bool { return all.distinct() == n })
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
			lost, dups := all.count(n)
			t.Logf("crash at call %d: committed %v, lost %d, duplicated %d", at, commits, lost, dups)
			if lost != 0 {
				t.Fatalf("lost %d records", lost)
			}
			if dups != wantDups {
				t.Fatalf("duplicated %d, want %d (handled at or past the committed offset before the crash)", dups, wantDups)
			}
			if dups < 1 {
				t.Fatal("the crashing record was not redelivered")
			}
		})
	}
}

// TestAtMostOnceCrash: a consumer crashes mid-batch after the batch was
// committed; the rest of the batch is lost, nothing is repeated.
func TestAtMostOnceCrash(t *testing.T) {
	cl := newCluster(t, 3)
	const n = 300
	produce(t, cl, 0, n)

	l1 := newLedger()
	c1 := mustNew(t, cl, "g", kdeliver.AtMostOnce, WithMaxPollRecords(40))
	if err := start(c1, crashAfter(l1, 25)).wait(t); !errors.Is(err, crash.ErrCrash) {
		t.Fatalf("Run = %v, want the crash", err)
	}
	commits := committed(cl, "g")
	for seq, p := range l1.pos {
		if p.offset >= commits[p.part] {
			t.Fatalf("record %d (p%d@%d) was handled but not committed (committed %d)", seq, p.part, p.offset, commits[p.part])
		}
	}
	wantLost := int(sumCommitted(cl, "g")) - len(l1.seen)

	all := newLedger()
	for seq, c := range l1.seen {
		all.seen[seq] = c
	}
	c2 := mustNew(t, cl, "g", kdeliver.AtMostOnce)
	r := start(c2, recordAll(all))
	waitFor(t, "the uncommitted records", func() bool { return all.distinct() == n-wantLost })
	waitFor(t, "commit to the end", func() bool { return sumCommitted(cl, "g") == n })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	lost, dups := all.count(n)
	t.Logf("crash at call 25: committed %v, lost %d, duplicated %d", commits, lost, dups)
	if dups != 0 {
		t.Fatalf("duplicated %d records", dups)
	}
	if lost != wantLost || lost == 0 {
		t.Fatalf("lost %d, want %d > 0 (committed before processing, then crashed)", lost, wantLost)
	}
}

// TestAtLeastOnceRebalance: a second consumer joins mid-stream and leaves
// again; nothing is lost, and each leaver commits what it processed.
func TestAtLeastOnceRebalance(t *testing.T) {
	cl := newCluster(t, 4)
	const n = 800
	produce(t, cl, 0, n)
	all := newLedger()
	var byC2 atomic.Int64
	slow := func(mark *atomic.Int64) Handler { return slowRecorder(all, mark) }
	c1 := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(20))
	r1 := start(c1, slow(nil))
	waitFor(t, "200 records", func() bool { return all.distinct() >= 200 })
	c2 := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(20))
	r2 := start(c2, slow(&byC2))
	waitFor(t, "the second consumer to get records", func() bool { return byC2.Load() > 0 })
	waitFor(t, "500 records", func() bool { return all.distinct() >= 500 })
	if err := r2.stop(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all records", func() bool { return all.distinct() == n })
	waitFor(t, "commit to the end", func() bool { return sumCommitted(cl, "g") == n })
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}
	lost, dups := all.count(n)
	t.Logf("second consumer handled %d; lost %d, duplicated %d", byC2.Load(), lost, dups)
	if lost != 0 {
		t.Fatalf("lost %d records", lost)
	}
}

// commitFault fails the group's offset commits with a non-retriable
// partition error, count times (-1: until removed).
func commitFault(cl *kdelivertest.Cluster, count int) *kfake.FaultHandle {
	return cl.Kfake().Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.OffsetCommit},
		Group: "g",
		Err:   kerr.OffsetMetadataTooLarge,
		Count: count,
	})
}

// TestCommitOnRevoke: the commit after a batch fails, so the processed
// offsets are still pending when a second consumer joins; the revoke
// commits them and the newcomer gets nothing again.
func TestCommitOnRevoke(t *testing.T) {
	cl := newCluster(t, 2)
	const n = 20
	produce(t, cl, 0, n)
	f := commitFault(cl, -1)
	l1 := newLedger()
	c1 := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(100))
	var triedBeforeLast atomic.Int64
	r1 := start(c1, func(_ context.Context, rec *kgo.Record) error {
		if l1.distinct() == n-1 { // the last record: c1 sees each once
			triedBeforeLast.Store(c1.commitsTried.Load())
		}
		l1.add(rec)
		return nil
	})
	// Every commit after a batch fails, up to the one after the last
	// record; then commits work again, but no batch is left to commit.
	waitFor(t, "all records and the commit after them", func() bool {
		return l1.distinct() == n && c1.commitsTried.Load() > triedBeforeLast.Load()
	})
	f.Remove()
	if got := committed(cl, "g"); len(got) != 0 {
		t.Fatalf("committed %v despite the fault", got)
	}
	if got := c1.revokeCommits.Load(); got != 0 {
		t.Fatalf("%d commits on revoke before any rebalance", got)
	}
	l2 := newLedger()
	c2 := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	r2 := start(c2, recordAll(l2))
	waitFor(t, "a commit on revoke", func() bool { return c1.revokeCommits.Load() == 1 })
	waitFor(t, "both members assigned", func() bool {
		gi := cl.Kfake().GroupInfo("g")
		return gi != nil && len(gi.Members) == 2 && gi.Members[0].NumAssigned() == 1 && gi.Members[1].NumAssigned() == 1
	})
	assertCommittedAll(t, cl, "g", l1)
	time.Sleep(300 * time.Millisecond) // let the newcomer fetch, if it would
	if err := r2.stop(t); err != nil {
		t.Fatal(err)
	}
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}
	if d := l2.distinct(); d != 0 {
		t.Fatalf("the newcomer got %d records again: the revoke did not commit", d)
	}
}

// TestAtLeastOnceCommitFailureRedelivers: every commit fails while the first
// consumer handles all records; a second consumer gets them all again.
func TestAtLeastOnceCommitFailureRedelivers(t *testing.T) {
	cl := newCluster(t, 3)
	const n = 100
	produce(t, cl, 0, n)
	f := commitFault(cl, -1)
	l1 := newLedger()
	c1 := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(30))
	r1 := start(c1, recordAll(l1))
	waitFor(t, "all records", func() bool { return l1.distinct() == n })
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}
	if f.Hits() == 0 {
		t.Fatal("no commit was attempted")
	}
	if got := committed(cl, "g"); len(got) != 0 {
		t.Fatalf("committed %v despite the fault", got)
	}
	f.Remove()
	l2 := newLedger()
	c2 := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	r2 := start(c2, recordAll(l2))
	waitFor(t, "all records again", func() bool { return l2.distinct() == n })
	if err := r2.stop(t); err != nil {
		t.Fatal(err)
	}
	t.Logf("commits failed %d times; all %d records redelivered", f.Hits(), n)
}

// TestAtMostOnceCommitFailureDrops: a batch whose commit fails is not
// processed, so nothing is ever handled twice.
func TestAtMostOnceCommitFailureDrops(t *testing.T) {
	cl := newCluster(t, 1)
	const n = 100
	produce(t, cl, 0, 40)
	f := commitFault(cl, 1)
	all := newLedger()
	c1 := mustNew(t, cl, "g", kdeliver.AtMostOnce, WithMaxPollRecords(100))
	r1 := start(c1, recordAll(all))
	waitFor(t, "the failed commit", func() bool { return f.Hits() == 1 })
	produce(t, cl, 40, n)
	waitFor(t, "the later records", func() bool {
		all.mu.Lock()
		defer all.mu.Unlock()
		return all.seen[n-1] == 1
	})
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}
	// A second consumer starts at the committed offset: nothing more.
	c2 := mustNew(t, cl, "g", kdeliver.AtMostOnce)
	r2 := start(c2, recordAll(all))
	time.Sleep(300 * time.Millisecond)
	if err := r2.stop(t); err != nil {
		t.Fatal(err)
	}
	lost, dups := all.count(n)
	t.Logf("lost %d (the batch whose commit failed), duplicated %d", lost, dups)
	if dups != 0 {
		t.Fatalf("duplicated %d", dups)
	}
	if lost == 0 {
		t.Fatal("the batch whose commit failed was processed")
	}
}
