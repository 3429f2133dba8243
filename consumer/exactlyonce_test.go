package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/crash"
)

func newGuard(t testing.TB, store dedup.Store) *dedup.Guard {
	t.Helper()
	g, err := dedup.NewGuard(store, "g", dedup.WithLease(2*time.Second), dedup.WithTTL(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// countingStore counts the Confirm calls that reach a store through it.
type countingStore struct {
	dedup.Store
	confirms atomic.Int64
}

func (s *countingStore) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	s.confirms.Add(1)
	return s.Store.Confirm(ctx, key, ttl)
}

// TestNewWithGuardRunNeedsHandler: a guard consumer's Run refuses a nil
// handler; a sink consumer's Run takes none.
func TestNewWithGuardRunNeedsHandler(t *testing.T) {
	cl := newCluster(t, 1)
	ctx := context.Background()
	withGuard := mustNewWithGuard(t, cl, "g", newGuard(t, dedup.NewMemory(10)))
	if got := withGuard.Semantics(); got != kdeliver.ExactlyOnce {
		t.Fatalf("Semantics() = %v", got)
	}
	if err := withGuard.Run(ctx, nil); !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Fatalf("Run(nil) with a guard = %v, want ErrInvalidConfig", err)
	}
	if err := withGuard.Close(ctx); err != nil {
		t.Fatal(err)
	}
	withSink := mustNewWithSink(t, cl, "g2", newMemSink(newMemDB(), "s"))
	if got := withSink.Semantics(); got != kdeliver.ExactlyOnce {
		t.Fatalf("Semantics() = %v", got)
	}
	if err := withSink.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := withSink.Run(ctx); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
}

// TestExactlyOnceGuardCrash: a consumer with a guard over a shared memory
// store crashes mid-batch, after it processed records whose offsets are not
// committed yet; a second consumer takes over and gets them again. The
// guard skips them: each record's side effect happens once. A crash between
// the side effect and the guard's mark is the documented limit of
// Guard.Do: that record runs again, unless the handler marks it in the side
// effect's own transaction (dedup.ConfirmInTx).
func TestExactlyOnceGuardCrash(t *testing.T) {
	cases := []struct {
		name     string
		crash    string // where call 55 crashes: "before" the side effect, "after" it
		inTx     bool   // the handler marks the key with the side effect
		wantDups int
	}{
		{"crash before the side effect", "before", false, 0},
		{"crash after the side effect marked in its transaction", "after", true, 0},
		{"crash after the side effect before the guard's mark", "after", false, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, 3)
			const n, at = 300, 55
			produce(t, cl, 0, n)
			mem := dedup.NewMemory(10_000)
			store := &countingStore{Store: mem} // what the guard confirms
			guard := newGuard(t, store)
			effects := newLedger()
			var txMu sync.Mutex // the side effect's "transaction"
			effect := func(ctx context.Context, rec *kgo.Record) error {
				if !tc.inTx {
					effects.add(rec)
					return nil
				}
				key, ttl, ok := dedup.ConfirmInTx(ctx)
				if !ok {
					return errors.New("no reservation in the handler's ctx")
				}
				txMu.Lock()
				defer txMu.Unlock()
				effects.add(rec)
				return mem.Confirm(ctx, key, ttl)
			}
			var calls atomic.Int64
			crashing := func(ctx context.Context, rec *kgo.Record) error {
				now := calls.Add(1) == at
				if now && tc.crash == "before" {
					return crash.ErrCrash
				}
				if err := effect(ctx, rec); err != nil {
					return err
				}
				if now {
					return crash.ErrCrash
				}
				return nil
			}

			c1 := mustNewWithGuard(t, cl, "g", guard, WithMaxPollRecords(40))
			if err := start(c1, crashing).wait(t); !errors.Is(err, crash.ErrCrash) {
				t.Fatalf("Run = %v, want the crash", err)
			}
			commits := committed(cl, "g")
			redelivered := 0
			for _, p := range effects.pos {
				if p.offset >= commits[p.part] {
					redelivered++
				}
			}
			if redelivered < 10 {
				t.Fatalf("only %d processed records were left uncommitted: the crash was not mid-batch", redelivered)
			}

			c2 := mustNewWithGuard(t, cl, "g", guard)
			r := start(c2, effect)
			waitFor(t, "all records", func() bool { return effects.distinct() == n })
			waitFor(t, "commit to the end", func() bool { return sumCommitted(cl, "g") == n })
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
			lost, dups := effects.count(n)
			t.Logf("committed %v at the crash; %d processed records redelivered; side effects: %d lost, %d duplicated; guard confirms: %d",
				commits, redelivered, lost, dups, store.confirms.Load())
			if lost != 0 || dups != tc.wantDups {
				t.Fatalf("lost %d, duplicated %d; want 0 lost, %d duplicated", lost, dups, tc.wantDups)
			}
			if tc.inTx && store.confirms.Load() != 0 {
				t.Fatalf("the guard confirmed %d keys that the handler had marked in its transaction", store.confirms.Load())
			}
			if !tc.inTx && store.confirms.Load() != n {
				t.Fatalf("the guard confirmed %d keys, want one per record (%d): the crashed side effect is never marked", store.confirms.Load(), n)
			}
		})
	}
}

// TestExactlyOnceGuardStoreDown: while the store is down the handler is not
// run and nothing is committed; Run returns a HandlerError wrapping the
// store's error after WithMaxAttempts.
func TestExactlyOnceGuardStoreDown(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 10)
	guard := newGuard(t, downStore{})
	var ran atomic.Int64
	c := mustNewWithGuard(t, cl, "g", guard, kdeliver.WithBackoff(time.Millisecond, 5*time.Millisecond), kdeliver.WithMaxAttempts(3))
	err := start(c, func(context.Context, *kgo.Record) error { ran.Add(1); return nil }).wait(t)
	var he *kdeliver.HandlerError
	if !errors.As(err, &he) || !errors.Is(err, dedup.ErrStore) {
		t.Fatalf("Run = %v, want a HandlerError wrapping dedup.ErrStore", err)
	}
	assertHandlerError(t, he, 0, 0, 3)
	if ran.Load() != 0 {
		t.Fatalf("the handler ran %d times with the store down", ran.Load())
	}
	if got := committed(cl, "g"); len(got) != 0 {
		t.Fatalf("committed %v with the store down", got)
	}
}

type downStore struct{}

func (downStore) Reserve(context.Context, string, time.Duration) (dedup.Status, string, error) {
	return 0, "", fmt.Errorf("%w: connection refused", dedup.ErrStore)
}
func (downStore) Confirm(context.Context, string, time.Duration) error { return dedup.ErrStore }
func (downStore) Release(context.Context, string, string) error        { return dedup.ErrStore }

// TestExactlyOnceGuardNoKey: a record the key function gives no key stops
// Run at once with dedup.ErrNoKey (retrying cannot help), uncommitted.
func TestExactlyOnceGuardNoKey(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 5)
	guard, err := dedup.NewGuard(dedup.NewMemory(10), "g", dedup.WithKey(func(r *kgo.Record) string {
		if r.Offset == 2 {
			return ""
		}
		return dedup.Position(r)
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := mustNewWithGuard(t, cl, "g", guard)
	err = start(c, func(context.Context, *kgo.Record) error { return nil }).wait(t)
	var he *kdeliver.HandlerError
	if !errors.As(err, &he) || !errors.Is(err, dedup.ErrNoKey) {
		t.Fatalf("Run = %v, want a HandlerError wrapping dedup.ErrNoKey", err)
	}
	assertHandlerError(t, he, 0, 2, 1)
	if got := committed(cl, "g")[0]; got != 2 {
		t.Fatalf("committed %d, want 2", got)
	}
}

// tp is a topic partition.
type tp struct {
	topic string
	part  int32
}

// memDB is the database of the test sinks: rows (one per write of a
// sequence number) and, per partition, the offset after the last written
// record and the epoch of the latest claim, changed together under one lock
// as a database transaction would.
type memDB struct {
	mu     sync.Mutex
	rows   map[int][]string // sequence number → the sinks that wrote it
	onPart map[int32]int    // rows per partition
	next   map[tp]int64
	epoch  map[tp]int64
}

func newMemDB() *memDB {
	return &memDB{rows: map[int][]string{}, onPart: map[int32]int{}, next: map[tp]int64{}, epoch: map[tp]int64{}}
}

// claim takes the partition for a new owner, as an Assign elsewhere does.
func (db *memDB) claim(k tp) int64 {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.epoch[k]++
	return db.epoch[k]
}

func (db *memDB) distinct() int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return len(db.rows)
}

func (db *memDB) rowsOn(part int32) int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.onPart[part]
}

// count returns the lost and duplicated sequence numbers among 0..n-1, and
// how many different sinks wrote rows.
func (db *memDB) count(n int) (lost, dups, writers int) {
	db.mu.Lock()
	defer db.mu.Unlock()
	ws := map[string]bool{}
	for i := range n {
		rs := db.rows[i]
		if len(rs) == 0 {
			lost++
		}
		dups += max(len(rs)-1, 0)
		for _, w := range rs {
			ws[w] = true
		}
	}
	return lost, dups, len(ws)
}

func (db *memDB) sumNext() int64 {
	db.mu.Lock()
	defer db.mu.Unlock()
	var s int64
	for _, o := range db.next {
		s += o
	}
	return s
}

// memSink is a Sink into a memDB, built like pgstore.Sink: Assign
// claims partitions with a new epoch, Write checks the claim and stores
// rows and offset atomically, skipping records below the stored offset.
type memSink struct {
	db   *memDB
	name string
	slow time.Duration // pause per record written
	// fault, if set, is called before each Write's transaction (committed
	// false) and after it committed (true); an error it returns is Write's.
	fault func(write int64, committed bool) error

	mu      sync.Mutex
	claims  map[tp]int64
	writes  atomic.Int64
	fenced  atomic.Int64
	assigns atomic.Int64
	stale   atomic.Int64 // records received below the stored offset
}

var _ Sink = (*memSink)(nil)

func newMemSink(db *memDB, name string) *memSink {
	return &memSink{db: db, name: name, claims: map[tp]int64{}}
}

func (s *memSink) Assign(_ context.Context, a Assignment) (map[string]map[int32]int64, error) {
	s.assigns.Add(1)
	out := map[string]map[int32]int64{}
	s.db.mu.Lock()
	defer s.db.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range a.Partitions {
		for _, p := range ps {
			k := tp{t, p}
			s.db.epoch[k]++
			s.claims[k] = s.db.epoch[k]
			if next, ok := s.db.next[k]; ok {
				if out[t] == nil {
					out[t] = map[int32]int64{}
				}
				out[t][p] = next
			}
		}
	}
	return out, nil
}

func (s *memSink) Revoke(parts map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range parts {
		for _, p := range ps {
			delete(s.claims, tp{t, p})
		}
	}
}

func (s *memSink) Write(_ context.Context, recs []*kgo.Record) error {
	n := s.writes.Add(1)
	if s.slow > 0 {
		time.Sleep(s.slow * time.Duration(len(recs)))
	}
	if s.fault != nil {
		if err := s.fault(n, false); err != nil {
			return err
		}
	}
	k := tp{recs[0].Topic, recs[0].Partition}
	s.mu.Lock()
	epoch, ok := s.claims[k]
	s.mu.Unlock()
	s.db.mu.Lock()
	if !ok || s.db.epoch[k] != epoch {
		s.db.mu.Unlock()
		s.fenced.Add(1)
		return fmt.Errorf("%w: %s/%d", kdeliver.ErrFenced, k.topic, k.part)
	}
	next := s.db.next[k]
	for _, r := range recs {
		if r.Offset < next {
			s.stale.Add(1)
			continue
		}
		seq, err := strconv.Atoi(string(r.Value))
		if err != nil {
			panic(err)
		}
		s.db.rows[seq] = append(s.db.rows[seq], s.name)
		s.db.onPart[r.Partition]++
		s.db.next[k] = r.Offset + 1
	}
	s.db.mu.Unlock()
	if s.fault != nil {
		return s.fault(n, true)
	}
	return nil
}

// TestExactlyOnceSinkCrashesAndRebalance: consumers writing through a sink
// crash before a write's transaction and after one committed, then two
// consumers share the partitions and one leaves (two rebalances). Every
// record is in the sink exactly once, the sink's offsets end at the end of
// each partition, and nothing was committed to Kafka.
func TestExactlyOnceSinkCrashesAndRebalance(t *testing.T) {
	cl := newCluster(t, 4)
	const n = 1000
	produce(t, cl, 0, n)
	db := newMemDB()

	for _, committed := range []bool{false, true} {
		s := newMemSink(db, fmt.Sprintf("crash-committed-%v", committed))
		s.fault = func(write int64, done bool) error {
			if write == 3 && done == committed {
				return fmt.Errorf("write %d: %w", write, crash.ErrCrash)
			}
			return nil
		}
		c := mustNewWithSink(t, cl, "g", s, WithMaxPollRecords(30))
		if err := startSink(c).wait(t); !errors.Is(err, crash.ErrCrash) {
			t.Fatalf("Run = %v, want the crash", err)
		}
		t.Logf("crashed in write 3 (transaction committed: %v): %d records in the sink", committed, db.distinct())
	}
	if d := db.distinct(); d == 0 || d >= n {
		t.Fatalf("%d records in the sink after the crashes, want some", d)
	}

	sa, sb := newMemSink(db, "a"), newMemSink(db, "b")
	// Slow enough that the second consumer joins while records are left.
	sa.slow, sb.slow = 3*time.Millisecond, 3*time.Millisecond
	ra := startSink(mustNewWithSink(t, cl, "g", sa, WithMaxPollRecords(20)))
	waitFor(t, "300 records", func() bool { return db.distinct() >= 300 })
	rb := startSink(mustNewWithSink(t, cl, "g", sb, WithMaxPollRecords(20)))
	waitFor(t, "the second consumer to write", func() bool { return sb.writes.Load() > 0 })
	waitFor(t, "700 records", func() bool { return db.distinct() >= 700 })
	if err := rb.stop(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all records", func() bool { return db.distinct() == n })
	waitFor(t, "the sink's offsets at the end", func() bool { return db.sumNext() == n })
	if err := ra.stop(t); err != nil {
		t.Fatal(err)
	}
	lost, dups, writers := db.count(n)
	t.Logf("%d records: %d lost, %d duplicated; %d sinks wrote; assigns a=%d b=%d; fenced writes a=%d b=%d; stale records a=%d b=%d",
		n, lost, dups, writers, sa.assigns.Load(), sb.assigns.Load(), sa.fenced.Load(), sb.fenced.Load(), sa.stale.Load(), sb.stale.Load())
	if lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
	if writers != 4 {
		t.Fatalf("%d sinks wrote rows, want 4 (two crashed consumers, then two sharing the partitions)", writers)
	}
	if st := sa.stale.Load() + sb.stale.Load(); st != 0 {
		t.Fatalf("%d records were read again below the sink's offset: partitions did not start at the sink's offset", st)
	}
	if sa.assigns.Load() < 2 {
		t.Fatalf("the first consumer's sink saw %d assignments: the rebalances did not reach it", sa.assigns.Load())
	}
	if got := committed(cl, "g"); len(got) != 0 {
		t.Fatalf("offsets committed to Kafka %v: the sink holds them", got)
	}
}

// TestExactlyOnceSinkFencedDropsRecords: another member claims a partition
// behind a consumer's back (as after a rebalance it missed). The consumer's
// writes to that partition are refused with ErrFenced and its records
// dropped, while Run goes on and the other partition is written. A consumer
// that is assigned the partition later resumes at the sink's offset: no
// record is lost or written twice.
func TestExactlyOnceSinkFencedDropsRecords(t *testing.T) {
	cl := newCluster(t, 2)
	produce(t, cl, 0, 100)
	first := ends(cl)
	db := newMemDB()
	s1 := newMemSink(db, "s1")
	r1 := startSink(mustNewWithSink(t, cl, "g", s1))
	waitFor(t, "100 records", func() bool { return db.distinct() == 100 })

	db.claim(tp{"t", 0})
	produce(t, cl, 100, 200)
	both := ends(cl)
	waitFor(t, "a fenced write, and partition 1 written", func() bool {
		return s1.fenced.Load() > 0 && int64(db.rowsOn(1)) == both[1]
	})
	time.Sleep(200 * time.Millisecond) // let any wrong write land
	if got := int64(db.rowsOn(0)); got != first[0] {
		t.Fatalf("partition 0 has %d rows after the fence, want %d: a fenced write landed", got, first[0])
	}
	select {
	case err := <-r1.ch:
		t.Fatalf("Run returned %v on a fenced write; it should drop the records and go on", err)
	default:
	}
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}

	s2 := newMemSink(db, "s2")
	r2 := startSink(mustNewWithSink(t, cl, "g", s2))
	waitFor(t, "all records", func() bool { return db.distinct() == 200 })
	if err := r2.stop(t); err != nil {
		t.Fatal(err)
	}
	lost, dups, _ := db.count(200)
	t.Logf("fenced writes dropped: %d; then %d lost, %d duplicated", s1.fenced.Load(), lost, dups)
	if lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
	if got := committed(cl, "g"); len(got) != 0 {
		t.Fatalf("offsets committed to Kafka %v: the sink holds them", got)
	}
}

// TestExactlyOnceSinkWriteRetried: a failing Write (the sink's database
// down) is retried with backoff and nothing is lost or repeated; with
// WithMaxAttempts, Run stops with a HandlerError wrapping the sink's error.
func TestExactlyOnceSinkWriteRetried(t *testing.T) {
	down := fmt.Errorf("%w: connection refused", dedup.ErrStore)
	t.Run("until it succeeds", func(t *testing.T) {
		cl := newCluster(t, 1)
		produce(t, cl, 0, 50)
		db := newMemDB()
		s := newMemSink(db, "s")
		s.fault = func(write int64, committed bool) error {
			if write <= 3 && !committed {
				return down
			}
			return nil
		}
		r := startSink(mustNewWithSink(t, cl, "g", s, kdeliver.WithBackoff(time.Millisecond, 5*time.Millisecond)))
		waitFor(t, "all records", func() bool { return db.distinct() == 50 })
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		if lost, dups, _ := db.count(50); lost != 0 || dups != 0 || s.writes.Load() < 4 {
			t.Fatalf("lost %d, duplicated %d after %d writes", lost, dups, s.writes.Load())
		}
	})
	t.Run("max attempts", func(t *testing.T) {
		cl := newCluster(t, 1)
		produce(t, cl, 0, 50)
		db := newMemDB()
		s := newMemSink(db, "s")
		s.fault = func(int64, bool) error { return down }
		c := mustNewWithSink(t, cl, "g", s, kdeliver.WithBackoff(time.Millisecond, 5*time.Millisecond), kdeliver.WithMaxAttempts(3))
		err := startSink(c).wait(t)
		var he *kdeliver.HandlerError
		if !errors.As(err, &he) || !errors.Is(err, dedup.ErrStore) {
			t.Fatalf("Run = %v, want a HandlerError wrapping dedup.ErrStore", err)
		}
		assertHandlerError(t, he, 0, 0, 3) // the batch's first record
		if d := db.distinct(); d != 0 {
			t.Fatalf("%d records written while the sink failed", d)
		}
	})
}

// panickySink panics in its first Assign and in every Revoke.
type panickySink struct {
	*memSink
	assigns atomic.Int64
	revokes atomic.Int64
}

func (s *panickySink) Assign(ctx context.Context, a Assignment) (map[string]map[int32]int64, error) {
	if s.assigns.Add(1) == 1 {
		panic("assign bug")
	}
	return s.memSink.Assign(ctx, a)
}

func (s *panickySink) Revoke(parts map[string][]int32) {
	s.revokes.Add(1)
	s.memSink.Revoke(parts)
	panic("revoke bug")
}

// TestExactlyOnceSinkPanicsRecovered: a sink whose Assign or Revoke panics
// (both run on kgo's group goroutine) does not crash the process: a
// panicking Assign makes the member rejoin and claim the partitions again,
// a panicking Revoke is logged, and every record is written once.
func TestExactlyOnceSinkPanicsRecovered(t *testing.T) {
	cl := newCluster(t, 2)
	produce(t, cl, 0, 50)
	db := newMemDB()
	s := &panickySink{memSink: newMemSink(db, "s")}
	r := startSink(mustNewWithSink(t, cl, "g", s))
	waitFor(t, "all records", func() bool { return db.distinct() == 50 })
	if err := r.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if lost, dups, _ := db.count(50); lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
	if s.assigns.Load() < 2 || s.revokes.Load() < 1 {
		t.Fatalf("%d assigns, %d revokes: the panics did not happen", s.assigns.Load(), s.revokes.Load())
	}
}
