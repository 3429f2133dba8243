package eos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// copierRun drives one copier instance after another (same transactional
// ID, as a restarted process) until the group has committed all input.
type copierRun struct {
	t        *testing.T
	c        *kfake.Cluster
	group    string
	txnID    string
	in       string
	opts     []Option
	handler  Handler
	restarts func(handled int64) bool // true: stop the running session gracefully now

	crashes, graceful int
	stats             []Stats
}

// newCopierRun copies "in" of c in group "g" as transactional ID
// "copier-0", 250 records a transaction, with handler h.
func newCopierRun(t *testing.T, c *kfake.Cluster, h Handler) *copierRun {
	return &copierRun{t: t, c: c, group: "g", txnID: "copier-0", in: "in", opts: fastOpts(WithCommitEvery(250, time.Second)), handler: h}
}

// runFor runs copiers until all input is committed, for at most d.
func (r *copierRun) runFor(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r.run(ctx)
}

func (r *copierRun) run(ctx context.Context) {
	t := r.t
	addrs := r.c.ListenAddrs()
	for !committedAll(r.c, r.group, r.in) {
		if ctx.Err() != nil {
			t.Fatalf("copier did not finish: %v", ctx.Err())
		}
		s, err := New(addrs, r.group, []string{r.in}, r.txnID, r.opts...)
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.Run(runCtx, r.handler) }()
		var err2 error
	wait:
		for {
			select {
			case err2 = <-done:
				break wait
			case <-time.After(20 * time.Millisecond):
				if committedAll(r.c, r.group, r.in) || (r.restarts != nil && r.restarts(0)) {
					if !committedAll(r.c, r.group, r.in) {
						r.graceful++
					}
					cancel()
					err2 = <-done
					break wait
				}
			}
		}
		cancel()
		switch {
		case err2 == nil:
		case errors.Is(err2, crash.ErrCrash):
			r.crashes++
		default:
			t.Fatalf("Run: %v", err2)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatalf("Close: %v", err)
		}
		r.stats = append(r.stats, s.Stats())
	}
}

func (r *copierRun) total() Stats {
	var s Stats
	for _, x := range r.stats {
		s.Committed += x.Committed
		s.Aborted += x.Aborted
		s.AbortedHandler += x.AbortedHandler
		s.AbortedRebalance += x.AbortedRebalance
		s.Records += x.Records
		s.Recreated += x.Recreated
		s.RewindViolations += x.RewindViolations
	}
	return s
}

// faultyCopier copies to out, fails each record whose value v has v%every ==
// at once (the test's random aborts), and crashes the process (crash.ErrCrash:
// no End, client dropped) when the handled count passes each of crashAt.
func faultyCopier(out string, every, at int, crashAt []int64, handled *atomic.Int64) Handler {
	var failed sync.Map
	next := 0
	return func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if err := ctx.Err(); err != nil {
			// Run is stopping (a graceful restart): a crash now would be
			// taken for the shutdown and not counted as a crash.
			return err
		}
		h := handled.Add(1)
		v, _ := strconv.Atoi(string(in.Value))
		if every > 0 && v%every == at {
			if _, again := failed.LoadOrStore(v, true); !again {
				return fmt.Errorf("test abort of record %d", v)
			}
		}
		if next < len(crashAt) && h >= crashAt[next] {
			next++
			return fmt.Errorf("copier killed at %d handled: %w", h, crash.ErrCrash)
		}
		emit(&kgo.Record{Topic: out, Key: in.Key, Value: in.Value})
		return nil
	}
}

// T1 on kfake: 2 → 3 partitions, 250 records a transaction, a third of the
// transactions aborted by the handler, three crashes without End and one
// graceful restart; a concurrent and a final read_committed reader see every
// input exactly once.
func TestCopierExactlyOnceUnderAbortsAndCrashes(t *testing.T) {
	const n = 3000
	c := newCluster(t, map[string]int32{"in": 2, "out": 3})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", n)
	tail := startTail(t, addrs, "out")

	var handled atomic.Int64
	restarted := false
	r := newCopierRun(t, c, faultyCopier("out", 600, 123, []int64{n / 5, n / 2, 4 * n / 5}, &handled))
	r.restarts = func(int64) bool {
		if !restarted && handled.Load() >= n*35/100 {
			restarted = true
			return true
		}
		return false
	}
	r.runFor(60 * time.Second)

	final := auditValues(countValues(readCommitted(t, addrs, "out", 500*time.Millisecond)), n)
	tail.catchUp(t, n, final)
	concurrent := auditValues(tail.seen, n)
	st := r.total()
	t.Logf("crashes=%d graceful=%d stats=%+v final: %s concurrent: %s", r.crashes, r.graceful, st, final, concurrent)
	if final.total != n || final.dups != 0 || final.missing != 0 || final.unexpected != 0 {
		t.Errorf("final read_committed reader: %s, want %d exactly once", final, n)
	}
	if concurrent.dups != 0 || concurrent.missing != 0 || concurrent.unexpected != 0 {
		t.Errorf("concurrent read_committed reader: %s", concurrent)
	}
	if r.crashes != 3 || r.graceful != 1 {
		t.Errorf("crashes=%d graceful=%d, want 3 and 1: the faults did not happen", r.crashes, r.graceful)
	}
	if st.AbortedHandler < 3 {
		t.Errorf("handler aborts = %d, want at least 3 (one per failed record still ahead after the crashes)", st.AbortedHandler)
	}
	if st.RewindViolations != 0 {
		t.Errorf("rewind guard tripped %d times", st.RewindViolations)
	}
}

// T1 ordered: 1 → 1 partition; the output is the input, in order.
func TestCopierKeepsOrder(t *testing.T) {
	const n = 2000
	c := newCluster(t, map[string]int32{"in": 1, "out": 1})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", n)
	var handled atomic.Int64
	r := newCopierRun(t, c, faultyCopier("out", 600, 77, []int64{n / 4, 3 * n / 4}, &handled))
	r.runFor(60 * time.Second)
	got := readCommitted(t, addrs, "out", 500*time.Millisecond)
	if len(got) != n {
		t.Fatalf("read %d records, want %d", len(got), n)
	}
	for i, rec := range got {
		if rec.value != strconv.Itoa(i) {
			t.Fatalf("output[%d] = %s, want %d: order broken", i, rec.value, i)
		}
	}
	if r.crashes != 2 {
		t.Errorf("crashes = %d, want 2", r.crashes)
	}
}

// T2 on kfake: three sessions in one group, 6 → 6 partitions; members join
// and leave while copying. 0 duplicates, 0 lost, per-partition order kept.
func TestGroupRebalancesExactlyOnce(t *testing.T) {
	const n = 6000
	c := newCluster(t, map[string]int32{"in": 6, "out": 6})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", n)
	tail := startTail(t, addrs, "out")

	// The key names the input partition, so each input partition's
	// records land in one output partition, where their order shows.
	handler := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		time.Sleep(100 * time.Microsecond) // spread the copy over the membership changes
		emit(&kgo.Record{Topic: "out", Key: []byte("p" + strconv.Itoa(int(in.Partition))), Value: in.Value})
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	type member struct {
		s    *Session
		done chan error
	}
	start := func(id string) member {
		s, err := New(addrs, "g", []string{"in"}, id, fastOpts(WithCommitEvery(250, 100*time.Millisecond))...)
		if err != nil {
			t.Fatal(err)
		}
		m := member{s, make(chan error, 1)}
		go func() { m.done <- s.Run(ctx, handler) }()
		return m
	}
	stop := func(m member) Stats {
		if err := m.s.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-m.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		return m.s.Stats()
	}
	a := start("copier-a")
	waitFor(t, 30*time.Second, "a third copied", func() bool { return tail.count() >= n/6 })
	b := start("copier-b")
	waitFor(t, 30*time.Second, "half copied", func() bool { return tail.count() >= n/3 })
	cc := start("copier-c")
	waitFor(t, 30*time.Second, "two thirds copied", func() bool { return tail.count() >= n/2 })
	sa := stop(a)
	waitFor(t, 60*time.Second, "all input committed", func() bool { return committedAll(c, "g", "in") })
	sb, sc := stop(b), stop(cc)
	t.Logf("a=%+v\nb=%+v\nc=%+v", sa, sb, sc)

	got := readCommitted(t, addrs, "out", 500*time.Millisecond)
	final := auditValues(countValues(got), n)
	tail.catchUp(t, n, final)
	concurrent := auditValues(tail.seen, n)
	t.Logf("final: %s concurrent: %s", final, concurrent)
	if final.total != n || final.dups != 0 || final.missing != 0 || concurrent.dups != 0 {
		t.Errorf("final %s, concurrent %s: want %d exactly once", final, concurrent, n)
	}
	last := map[string]int{}
	for _, rec := range got {
		v, _ := strconv.Atoi(rec.value)
		if p, ok := last[rec.key]; ok && v <= p {
			t.Fatalf("input partition %s: %d after %d, order broken", rec.key, v, p)
		}
		last[rec.key] = v
	}
	if sa.Records == 0 || sb.Records == 0 || sc.Records == 0 {
		t.Errorf("a member copied nothing: the rebalances were not exercised")
	}
}

// Fault injection on kfake: lost acks on produce, coordinator moves and a
// stale generation on the offset commit, concurrent transactions on EndTxn.
// Every fault is hit; the output is still exactly once.
func TestCopierExactlyOnceUnderInjectedFaults(t *testing.T) {
	const n = 3000
	c := newCluster(t, map[string]int32{"in": 2, "out": 3})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", n)
	faults := []*kfake.FaultHandle{
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.NotCoordinator, Count: 2}),
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.IllegalGeneration, Count: 1}),
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.RequestTimedOut, Count: 3}),
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.ConcurrentTransactions, Count: 2, TopLevel: true}),
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.RequestTimedOut, Count: 1}),
	}
	// Errors that fail End or a produce: the client must be replaced.
	late := []*kfake.FaultHandle{
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.InvalidTxnState, Count: 1, TopLevel: true}),
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.InvalidRecord, Count: 1}),
	}
	var handled atomic.Int64
	r := newCopierRun(t, c, faultyCopier("out", 0, 0, nil, &handled))
	r.runFor(60 * time.Second)
	for i, f := range append(faults, late...) {
		if f.Hits() == 0 {
			t.Errorf("fault %d was never hit", i)
		}
	}
	final := auditValues(countValues(readCommitted(t, addrs, "out", 500*time.Millisecond)), n)
	st := r.total()
	t.Logf("stats=%+v final: %s", st, final)
	if st.Recreated < 2 {
		t.Errorf("client recreated %d times, want at least 2 (a failed End and a failed produce)", st.Recreated)
	}
	if final.total != n || final.dups != 0 || final.missing != 0 {
		t.Errorf("final read_committed reader: %s, want %d exactly once", final, n)
	}
}

// Fencing on kfake's default (Kafka 4.4, transaction.version 2), where kfake
// answers like Kafka: a second instance with the same transactional ID makes
// the first one's Run return ErrFenced, and the first one's open
// transaction stays invisible.
func TestFencedByNewInstance(t *testing.T) {
	c := newCluster(t, map[string]int32{"in": 1, "in2": 1, "out": 1})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", 10)
	seed(t, addrs, "in2", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	holding, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	old, err := New(addrs, "g-old", []string{"in"}, "copier-0", fastOpts(WithCommitEvery(1000, 2*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	oldDone := make(chan error, 1)
	go func() {
		oldDone <- old.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Topic: "out", Value: append([]byte("old-"), in.Value...)})
			if string(in.Value) == "5" {
				once.Do(func() { close(holding) })
				<-release
			}
			return nil
		})
	}()
	<-holding
	// The new instance takes over the transactional ID and commits.
	nu, err := New(addrs, "g-new", []string{"in2"}, "copier-0", fastOpts(WithCommitEvery(1, 10*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nu.Close(context.Background())
	nuCtx, nuCancel := context.WithCancel(ctx)
	nuDone := make(chan error, 1)
	go func() { nuDone <- nu.Run(nuCtx, copyTo("out")) }()
	waitFor(t, 10*time.Second, "the new instance to commit", func() bool { return committedAll(c, "g-new", "in2") })
	nuCancel()
	if err := <-nuDone; err != nil {
		t.Fatalf("new instance: %v", err)
	}
	close(release)
	err = <-oldDone
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("old instance Run = %v, want ErrFenced", err)
	}
	if !errors.Is(err, kerr.ProducerFenced) && !errors.Is(err, kerr.InvalidProducerEpoch) {
		t.Errorf("old instance error %v does not carry Kafka's fencing error", err)
	}
	// Issue 14: the fenced transaction was not counted.
	if st := old.Stats(); st.Fenced != 1 || st.Aborted != 1 || st.Committed != 0 {
		t.Errorf("old instance stats %+v: want its one transaction counted fenced and aborted", st)
	}
	got := readCommitted(t, addrs, "out", 500*time.Millisecond)
	if len(got) != 1 || got[0].value != "0" {
		t.Errorf("read_committed output = %v, want only the new instance's record 0", got)
	}
}

// A handler that keeps failing: with the stop policy Run returns a
// *HandlerError after the attempts, and nothing of the aborted transaction
// is visible; with a dead-letter topic the record is dead-lettered once,
// inside the transaction, and the rest copied.
func TestHandlerFailurePolicies(t *testing.T) {
	poison := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if string(in.Value) == "7" {
			panic("poison record")
		}
		if string(in.Value) == "3" {
			return errors.New("bad record")
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	}
	t.Run("stop", func(t *testing.T) {
		c := newCluster(t, map[string]int32{"in": 1, "out": 1})
		addrs := c.ListenAddrs()
		seed(t, addrs, "in", 10)
		var calls atomic.Int64
		s, err := New(addrs, "g", []string{"in"}, "t-stop", fastOpts(WithMaxAttempts(3), WithOutputTopic("out"), WithCommitEvery(100, time.Second))...)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err = s.Run(ctx, func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			if string(in.Value) == "3" {
				calls.Add(1)
			}
			return poison(ctx, in, emit)
		})
		var he *HandlerError
		if !errors.As(err, &he) || string(he.Record.Value) != "3" || he.Attempts != 3 {
			t.Fatalf("Run = %v, want a HandlerError on record 3 after 3 attempts", err)
		}
		if calls.Load() != 3 {
			t.Errorf("record 3 handled %d times, want 3", calls.Load())
		}
		if got := readCommitted(t, addrs, "out", 300*time.Millisecond); len(got) != 0 {
			t.Errorf("aborted output visible: %v", got)
		}
	})
	t.Run("dead-letter", func(t *testing.T) {
		c := newCluster(t, map[string]int32{"in": 1, "out": 1, "dlq": 1})
		addrs := c.ListenAddrs()
		seed(t, addrs, "in", 10)
		s, err := New(addrs, "g", []string{"in"}, "t-dlq", fastOpts(WithMaxAttempts(2), WithOutputTopic("out"), WithDeadLetterTopic("dlq"), WithCommitEvery(100, 200*time.Millisecond))...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx, poison) }()
		waitFor(t, 15*time.Second, "all input committed", func() bool { return committedAll(c, "g", "in") })
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		out := countValues(readCommitted(t, addrs, "out", 300*time.Millisecond))
		dlq := readCommitted(t, addrs, "dlq", 300*time.Millisecond)
		if len(out) != 8 || out["3"] != 0 || out["7"] != 0 {
			t.Errorf("output %v, want the 8 good records", out)
		}
		if len(dlq) != 2 || dlq[0].value != "3" || dlq[1].value != "7" {
			t.Errorf("dead letters %v, want records 3 and 7 once each", dlq)
		}
		if st := s.Stats(); st.DeadLettered != 2 || st.Records != 10 {
			t.Errorf("stats %+v, want 2 dead-lettered of 10", st)
		}
	})
}

// Close stops Run (nil), is safe twice, and Run after Close is ErrClosed.
func TestCloseLifecycle(t *testing.T) {
	c := newCluster(t, map[string]int32{"in": 1, "out": 1})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", 5)
	s, err := New(addrs, "g", []string{"in"}, "t-close", fastOpts(WithOutputTopic("out"))...)
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			handled <- struct{}{}
			emit(&kgo.Record{Value: in.Value})
			return nil
		})
	}()
	<-handled
	if err := s.Run(context.Background(), copyTo("out")); err == nil {
		t.Error("a second concurrent Run was accepted")
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after Close = %v, want nil", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := s.Run(context.Background(), copyTo("out")); !errors.Is(err, kdeliver.ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
}

// Cancelling Run's ctx returns nil; a crash (crash.ErrCrash) returns at
// once without committing.
func TestCrashCommitsNothing(t *testing.T) {
	c := newCluster(t, map[string]int32{"in": 1, "out": 1})
	addrs := c.ListenAddrs()
	seed(t, addrs, "in", 20)
	s, err := New(addrs, "g", []string{"in"}, "t-crash", fastOpts(WithOutputTopic("out"), WithCommitEvery(100, time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	err = s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		emit(&kgo.Record{Value: in.Value})
		if string(in.Value) == "10" {
			return fmt.Errorf("boom: %w", crash.ErrCrash)
		}
		return nil
	})
	if !errors.Is(err, crash.ErrCrash) {
		t.Fatalf("Run = %v, want the crash", err)
	}
	if g := c.GroupInfo("g"); g != nil && len(g.Commits["in"]) != 0 {
		t.Errorf("offsets committed after a crash: %v", g.Commits)
	}
	// A restarted instance fences the abandoned transaction and copies
	// everything once.
	s2, err := New(addrs, "g", []string{"in"}, "t-crash", fastOpts(WithOutputTopic("out"))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s2.Run(ctx, copyTo("out")) }()
	waitFor(t, 15*time.Second, "all input committed", func() bool { return committedAll(c, "g", "in") })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if err := s2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a := auditValues(countValues(readCommitted(t, addrs, "out", 300*time.Millisecond)), 20); a.total != 20 || a.dups != 0 || a.missing != 0 {
		t.Errorf("after crash and restart: %s", a)
	}
}

func TestRewindGuard(t *testing.T) {
	l := &loop{expect: map[string]map[int32]int64{"in": {0: 10, 1: 5}}}
	if l.checkRewind(&kgo.Record{Topic: "in", Partition: 0, Offset: 12}) {
		t.Error("a record above the committed offset (aborted records skipped) tripped the guard")
	}
	if l.checkRewind(&kgo.Record{Topic: "in", Partition: 0, Offset: 3}) {
		t.Error("the guard checked a partition twice")
	}
	if !l.checkRewind(&kgo.Record{Topic: "in", Partition: 1, Offset: 4}) {
		t.Error("a record below the committed offset passed the guard")
	}
	if l.checkRewind(&kgo.Record{Topic: "other", Partition: 0, Offset: 0}) {
		t.Error("a partition without a committed offset tripped the guard")
	}
}
