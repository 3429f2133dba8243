package eos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// copierRun drives one copier instance after another (same transactional
// ID, as a restarted process) until the group has committed all input.
type copierRun struct {
	t        *testing.T
	c        *kdelivertest.Cluster
	group    string
	txnID    string
	in       string
	opts     []Option
	handler  Handler
	restarts func(handled int64) bool // true: stop the running session gracefully now

	crashes, graceful int
	stats             []Stats
	// held and rewoundAhead sum the sessions' counters of records polled
	// while a transaction flushed and of their rewinds after an abort.
	held, rewoundAhead int64
}

// newCopierRun copies "in" of c in group "g" as transactional ID
// "copier-0", 250 records a transaction, with handler h.
func newCopierRun(t *testing.T, c *kdelivertest.Cluster, h Handler) *copierRun {
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
	addrs := r.c.Brokers()
	for !r.c.CommittedAll(r.group, r.in) {
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
				if r.c.CommittedAll(r.group, r.in) || (r.restarts != nil && r.restarts(0)) {
					if !r.c.CommittedAll(r.group, r.in) {
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
		r.held += s.stats.held.Load()
		r.rewoundAhead += s.stats.rewoundAhead.Load()
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
	return func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
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
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 3))
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	tail := startTail(t, c.Brokers(), "out")

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

	checkFaultyCopy(t, c, r, tail, want, 3)
	if r.held == 0 || r.rewoundAhead == 0 {
		t.Errorf("%d records polled while a transaction flushed, %d rewinds of them after an abort: want both above 0 (the overlap was not exercised)", r.held, r.rewoundAhead)
	}
}

// T1 ordered: 1 → 1 partition; the output is the input, in order.
func TestCopierKeepsOrder(t *testing.T) {
	const n = 2000
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", n)
	var handled atomic.Int64
	r := newCopierRun(t, c, faultyCopier("out", 600, 77, []int64{n / 4, 3 * n / 4}, &handled))
	r.runFor(60 * time.Second)
	got := kdelivertest.ReadCommitted(t, c.Brokers(), "out")
	if len(got) != n {
		t.Fatalf("read %d records, want %d", len(got), n)
	}
	for i, rec := range got {
		if string(rec.Value) != strconv.Itoa(i) {
			t.Fatalf("output[%d] = %s, want %d: order broken", i, rec.Value, i)
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
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 6), kdelivertest.WithTopic("out", 6))
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	tail := startTail(t, c.Brokers(), "out")

	// The key names the input partition, so each input partition's
	// records land in one output partition, where the audit checks their
	// order.
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
		s, err := New(c.Brokers(), "g", []string{"in"}, id, fastOpts(WithCommitEvery(250, 100*time.Millisecond))...)
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
	kdelivertest.WaitFor(t, 30*time.Second, "a third copied", func() bool { return tail.count() >= n/6 })
	b := start("copier-b")
	kdelivertest.WaitFor(t, 30*time.Second, "half copied", func() bool { return tail.count() >= n/3 })
	cc := start("copier-c")
	kdelivertest.WaitFor(t, 30*time.Second, "two thirds copied", func() bool { return tail.count() >= n/2 })
	sa := stop(a)
	kdelivertest.WaitFor(t, 60*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
	sb, sc := stop(b), stop(cc)
	t.Logf("a=%+v\nb=%+v\nc=%+v", sa, sb, sc)

	final := kdelivertest.Audit(want, kdelivertest.ReadCommitted(t, c.Brokers(), "out"))
	concurrent := tail.catchUp(t, want, final)
	t.Logf("final: %s concurrent: %s", final, concurrent)
	if !final.Exact() || !concurrent.Exact() {
		t.Errorf("final %s, concurrent %s: want %d exactly once, in order per input partition", final, concurrent, n)
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
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 3))
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	k := c.Kfake()
	faults := []*kfake.FaultHandle{
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.NotCoordinator, Count: 2}),
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.IllegalGeneration, Count: 1}),
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.RequestTimedOut, Count: 3}),
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.ConcurrentTransactions, Count: 2, TopLevel: true}),
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.RequestTimedOut, Count: 1}),
	}
	// Errors that fail End or a produce: the client must be replaced.
	late := []*kfake.FaultHandle{
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.InvalidTxnState, Count: 1, TopLevel: true}),
		k.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.InvalidRecord, Count: 1}),
	}
	var handled atomic.Int64
	r := newCopierRun(t, c, faultyCopier("out", 0, 0, nil, &handled))
	r.runFor(60 * time.Second)
	for i, f := range append(faults, late...) {
		if f.Hits() == 0 {
			t.Errorf("fault %d was never hit", i)
		}
	}
	final := kdelivertest.Audit(want, kdelivertest.ReadCommitted(t, c.Brokers(), "out"))
	st := r.total()
	t.Logf("stats=%+v final: %s", st, final)
	if st.Recreated < 2 {
		t.Errorf("client recreated %d times, want at least 2 (a failed End and a failed produce)", st.Recreated)
	}
	if !final.Exact() {
		t.Errorf("final read_committed reader: %s, want %d exactly once", final, n)
	}
}

// Fencing on kfake's default (Kafka 4.4, transaction.version 2), where kfake
// answers like Kafka: a second instance with the same transactional ID makes
// the first one's Run return an error matching kdeliver.ErrFenced, of class
// Fatal, and the first one's open transaction stays invisible.
func TestFencedByNewInstance(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("in2", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	kdelivertest.Seed(t, c.Brokers(), "in2", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	holding, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	old, err := New(c.Brokers(), "g-old", []string{"in"}, "copier-0", fastOpts(WithCommitEvery(1000, 2*time.Second))...)
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
	nu, err := New(c.Brokers(), "g-new", []string{"in2"}, "copier-0", fastOpts(WithCommitEvery(1, 10*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nu.Close(context.Background())
	nuCtx, nuCancel := context.WithCancel(ctx)
	nuDone := make(chan error, 1)
	go func() { nuDone <- nu.Run(nuCtx, copyTo("out")) }()
	kdelivertest.WaitFor(t, 10*time.Second, "the new instance to commit", func() bool { return c.CommittedAll("g-new", "in2") })
	nuCancel()
	if err := <-nuDone; err != nil {
		t.Fatalf("new instance: %v", err)
	}
	close(release)
	err = <-oldDone
	if !errors.Is(err, kdeliver.ErrFenced) {
		t.Fatalf("old instance Run = %v, want kdeliver.ErrFenced", err)
	}
	if !errors.Is(err, kerr.ProducerFenced) && !errors.Is(err, kerr.InvalidProducerEpoch) {
		t.Errorf("old instance error %v does not carry Kafka's fencing error", err)
	}
	if cl := kdeliver.ClassOf(err); cl != kdeliver.Fatal {
		t.Errorf("ClassOf(%v) = %v, want Fatal: a fenced instance must stop", err, cl)
	}
	// Issue 14: the fenced transaction was not counted.
	if st := old.Stats(); st.Fenced != 1 || st.Aborted != 1 || st.Committed != 0 {
		t.Errorf("old instance stats %+v: want its one transaction counted fenced and aborted", st)
	}
	if got := kdelivertest.Values(kdelivertest.ReadCommitted(t, c.Brokers(), "out")); len(got) != 1 || got[0] != "0" {
		t.Errorf("read_committed output = %q, want only the new instance's record 0", got)
	}
	if err := old.Close(context.Background()); err != nil {
		t.Errorf("Close of the fenced session: %v", err)
	}
}

// A handler that keeps failing: with kdeliver.WithMaxAttempts(3) and no dead
// letters, Run returns a *kdeliver.HandlerError after the attempts, and
// nothing of the aborted transaction is visible; with a dead-letter topic the
// record is dead-lettered once, inside the transaction, with headers saying
// where it came from, how often and why it failed and when it first did, and
// the rest copied.
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
		c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
		want := kdelivertest.Seed(t, c.Brokers(), "in", 10)
		var calls atomic.Int64
		s, err := New(c.Brokers(), "g", []string{"in"}, "t-stop", fastOpts(kdeliver.WithMaxAttempts(3), WithOutputTopic("out"), WithCommitEvery(100, time.Second))...)
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
		var he *kdeliver.HandlerError
		if !errors.As(err, &he) || string(he.Record.Value) != "3" || he.Attempts != 3 {
			t.Fatalf("Run = %v, want a HandlerError on record 3 after 3 attempts", err)
		}
		if he.Record.Topic != "in" || he.Record.Offset != 3 || he.Err == nil || he.Err.Error() != "bad record" {
			t.Errorf("HandlerError record %s/%d@%d, cause %v: want in/0@3 and the handler's error", he.Record.Topic, he.Record.Partition, he.Record.Offset, he.Err)
		}
		if calls.Load() != 3 {
			t.Errorf("record 3 handled %d times, want 3", calls.Load())
		}
		if got := kdelivertest.ReadCommitted(t, c.Brokers(), "out"); len(got) != 0 {
			t.Errorf("aborted output visible: %q", kdelivertest.Values(got))
		}
		// Run again on the same session, the cause fixed: it resumes at
		// the committed offsets and copies everything once.
		runUntilCommitted(t, c, s, copyTo("out"))
		exactly(t, c, "out", want)
	})
	t.Run("panic", func(t *testing.T) {
		c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
		kdelivertest.Seed(t, c.Brokers(), "in", 10, kdelivertest.From(7))
		s, err := New(c.Brokers(), "g", []string{"in"}, "t-panic", fastOpts(kdeliver.WithMaxAttempts(1), WithOutputTopic("out"))...)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err = s.Run(ctx, poison)
		var he *kdeliver.HandlerError
		if !errors.As(err, &he) || string(he.Record.Value) != "7" || he.Attempts != 1 || !errors.Is(err, kdeliver.ErrPanic) {
			t.Fatalf("Run = %v, want a HandlerError matching kdeliver.ErrPanic on record 7 after 1 attempt", err)
		}
		if cl := kdeliver.ClassOf(err); cl != kdeliver.Fatal {
			t.Errorf("ClassOf(%v) = %v, want Fatal: Run stopped", err, cl)
		}
	})
	// Issue 8: the default is to retry for ever (eos stopped after 3).
	t.Run("default retries for ever", func(t *testing.T) {
		c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
		want := kdelivertest.Seed(t, c.Brokers(), "in", 10)
		s, err := New(c.Brokers(), "g", []string{"in"}, "t-forever", fastOpts(WithOutputTopic("out"))...)
		if err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int64
		runUntilCommitted(t, c, s, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			if string(in.Value) == "3" && calls.Add(1) <= 6 {
				return errors.New("not yet")
			}
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
		if calls.Load() != 7 {
			t.Errorf("record 3 handled %d times, want 7 (6 failures, then success)", calls.Load())
		}
		if st := s.Stats(); st.AbortedHandler != 6 {
			t.Errorf("stats %+v, want 6 transactions aborted by the handler", st)
		}
		exactly(t, c, "out", want)
	})
	t.Run("dead-letter", func(t *testing.T) {
		c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1), kdelivertest.WithTopic("dlq", 1))
		want := kdelivertest.Seed(t, c.Brokers(), "in", 10)
		s, err := New(c.Brokers(), "g", []string{"in"}, "t-dlq", fastOpts(kdeliver.WithMaxAttempts(2), WithOutputTopic("out"), WithDeadLetterTopic("dlq"), WithCommitEvery(100, 200*time.Millisecond))...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		began := time.Now()
		done := make(chan error, 1)
		var calls3 atomic.Int64
		go func() {
			done <- s.Run(ctx, func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
				if string(in.Value) == "3" {
					calls3.Add(1)
				}
				return poison(ctx, in, emit)
			})
		}()
		kdelivertest.WaitFor(t, 15*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		good := slices.DeleteFunc(slices.Clone(want), func(v string) bool { return v == "3" || v == "7" })
		exactly(t, c, "out", good)
		dlq := kdelivertest.ReadCommitted(t, c.Brokers(), "dlq")
		if got := kdelivertest.Values(dlq); !slices.Equal(got, []string{"3", "7"}) {
			t.Fatalf("dead letters %q, want records 3 and 7 once each", got)
		}
		for _, tc := range []struct {
			rec   *kgo.Record
			in    string
			cause string
		}{{dlq[0], "3", "bad record"}, {dlq[1], "7", "poison record"}} {
			h := headers(tc.rec)
			if h[kdeliver.HeaderDLQTopic] != "in" || h[kdeliver.HeaderDLQPartition] != "0" ||
				h[kdeliver.HeaderDLQOffset] != tc.in || h[kdeliver.HeaderDLQAttempts] != "2" {
				t.Errorf("dead letter of %s: headers %v, want topic in, partition 0, offset %s, 2 attempts", tc.in, h, tc.in)
			}
			if e := h[kdeliver.HeaderDLQError]; !strings.Contains(e, tc.cause) {
				t.Errorf("dead letter of %s: error header %q, want it to say %q", tc.in, e, tc.cause)
			}
			first, err := time.Parse(time.RFC3339Nano, h[kdeliver.HeaderDLQFirstFailure])
			if err != nil || first.Location() != time.UTC || first.Before(began) || first.After(time.Now()) {
				t.Errorf("dead letter of %s: first failure header %q (%v), want a UTC RFC 3339 time within the run", tc.in, h[kdeliver.HeaderDLQFirstFailure], err)
			}
		}
		if st := s.Stats(); st.DeadLettered != 2 || st.Records != 10 {
			t.Errorf("stats %+v, want 2 dead-lettered of 10", st)
		}
		// Record 7's failures abort the transaction that dead-lettered
		// record 3: 3 keeps its count and is dead-lettered again after
		// one more call, not retried its 2 attempts again.
		if n := calls3.Load(); n < 2 || n > 3 {
			t.Errorf("record 3 handled %d times, want 2 attempts (and one more after an abort by record 7)", n)
		}
	})
}

// headers returns r's headers by key.
func headers(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

// Close stops Run (nil), is safe twice, and Run after Close is ErrClosed.
func TestCloseLifecycle(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 5)
	s, err := New(c.Brokers(), "g", []string{"in"}, "t-close", fastOpts(WithOutputTopic("out"))...)
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
	if err := s.Ping(context.Background()); !errors.Is(err, kdeliver.ErrClosed) {
		t.Errorf("Ping after Close = %v, want ErrClosed", err)
	}
}

// Cancelling Run's ctx returns nil; a crash (crash.ErrCrash) returns at
// once without committing.
func TestCrashCommitsNothing(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	want := kdelivertest.Seed(t, c.Brokers(), "in", 20)
	s, err := New(c.Brokers(), "g", []string{"in"}, "t-crash", fastOpts(WithOutputTopic("out"), WithCommitEvery(100, time.Second))...)
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
	if got := c.Committed("g", "in"); len(got) != 0 {
		t.Errorf("offsets committed after a crash: %v", got)
	}
	// A restarted instance fences the abandoned transaction and copies
	// everything once.
	s2, err := New(c.Brokers(), "g", []string{"in"}, "t-crash", fastOpts(WithOutputTopic("out"))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s2.Run(ctx, copyTo("out")) }()
	kdelivertest.WaitFor(t, 15*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if err := s2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	exactly(t, c, "out", want)
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
