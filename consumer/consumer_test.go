package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestNewRefuses(t *testing.T) {
	cl := newCluster(t, 1)
	addrs := cl.Brokers()
	topics := []string{"t"}
	alo := kdeliver.AtLeastOnce
	cases := []struct {
		name    string
		brokers []string
		group   string
		topics  []string
		sem     kdeliver.Semantics
		opts    []Option
		want    []string // substrings of the error, one per problem
	}{
		{"no brokers", nil, "g", topics, alo, nil, []string{"no brokers"}},
		{"empty broker", []string{""}, "g", topics, alo, nil, []string{"broker address is empty"}},
		{"empty group", addrs, "", topics, alo, nil, []string{"group is empty"}},
		{"no topics", addrs, "g", nil, alo, nil, []string{"no topics"}},
		{"empty topic", addrs, "g", []string{"t", ""}, alo, nil, []string{"topic name is empty"}},
		{"zero semantics", addrs, "g", topics, 0, nil, []string{"not valid"}},
		{"exactly once", addrs, "g", topics, kdeliver.ExactlyOnce, nil, []string{"use consumer.NewWithGuard(brokers, group, topics, guard) (a dedup.Guard skips redelivered records), consumer.NewWithSink(brokers, group, topics, sink) (the offsets commit in the sink's own transaction, e.g. pgstore.Sink), or, Kafka to Kafka, eos.New"}},
		{"exactly once and a nil option", addrs, "g", topics, kdeliver.ExactlyOnce, []Option{nil}, []string{"consumer.NewWithGuard", "option 1 of 1 is nil"}},
		{"amo backoff", addrs, "g", topics, kdeliver.AtMostOnce, []Option{kdeliver.WithBackoff(time.Millisecond, time.Second)}, []string{"never retries"}},
		{"amo max attempts", addrs, "g", topics, kdeliver.AtMostOnce, []Option{kdeliver.WithMaxAttempts(3)}, []string{"never retries"}},
		{"backoff zero", addrs, "g", topics, alo, []Option{kdeliver.WithBackoff(0, time.Second)}, []string{"kdeliver.WithBackoff(0s, 1s)"}},
		{"backoff inverted", addrs, "g", topics, alo, []Option{kdeliver.WithBackoff(2*time.Second, time.Second)}, []string{"kdeliver.WithBackoff(2s, 1s)"}},
		{"max attempts zero", addrs, "g", topics, alo, []Option{kdeliver.WithMaxAttempts(0)}, []string{"kdeliver.WithMaxAttempts(0)"}},
		{"start timeout zero", addrs, "g", topics, alo, []Option{kdeliver.WithStartTimeout(0)}, []string{"kdeliver.WithStartTimeout(0s)"}},
		{"max poll zero", addrs, "g", topics, alo, []Option{WithMaxPollRecords(0)}, []string{"WithMaxPollRecords(0)"}},
		{"nil option", addrs, "g", topics, alo, []Option{nil}, []string{"option 1 of 1 is nil"}},
		{"nil option among others", addrs, "g", topics, alo, []Option{WithMaxPollRecords(5), nil, WithReadCommitted()}, []string{"option 2 of 3 is nil"}},
		{"zero root option", addrs, "g", topics, alo, []Option{kdeliver.Option{}}, []string{"an empty option"}},
		{"nil logger", addrs, "g", topics, alo, []Option{kdeliver.WithLogger(nil)}, []string{"kdeliver.WithLogger(nil)"}},
		{"raw greedy autocommit", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.GreedyAutoCommit())}, []string{"enabled auto-commit"}},
		{"raw autocommit marks", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.AutoCommitMarks())}, []string{"enabled auto-commit"}},
		{"raw other group", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.ConsumerGroup("other"))}, []string{"changed the consumer group"}},
		{"raw revoke callback", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.OnPartitionsRevoked(func(context.Context, *kgo.Client, map[string][]int32) {}))}, []string{"OnPartitionsRevoked"}},
		{"raw lost callback", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) {}))}, []string{"OnPartitionsLost"}},
		{"raw reset offset", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))}, []string{"reset offset"}},
		{"raw reset offset with start at latest", addrs, "g", topics, alo, []Option{WithStartAtLatest(), WithKgoOpts(kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))}, []string{"reset offset"}},
		{"raw start offset", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.ConsumeStartOffset(kgo.NewOffset().AtEnd()))}, []string{"kgo.ConsumeStartOffset (consumer.WithStartAtLatest starts at the end without changing the reset)"}},
		{"raw start offset at start with start at latest", addrs, "g", topics, alo, []Option{WithStartAtLatest(), WithKgoOpts(kgo.ConsumeStartOffset(kgo.NewOffset().AtStart()))}, []string{"kgo.ConsumeStartOffset"}},
		{"raw root context", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.WithContext(context.Background()))}, []string{"kgo.WithContext"}},
		{"raw read uncommitted amo is fine but revoke and group are not", addrs, "g", topics, kdeliver.AtMostOnce,
			[]Option{WithKgoOpts(kgo.ConsumerGroup("x"), kgo.OnPartitionsRevoked(func(context.Context, *kgo.Client, map[string][]int32) {}))},
			[]string{"changed the consumer group", "OnPartitionsRevoked"}},
		{"all at once", nil, "", []string{""}, kdeliver.AtLeastOnce, []Option{WithMaxPollRecords(-1), kdeliver.WithBackoff(0, 0)},
			[]string{"no brokers", "group is empty", "topic name is empty", "WithMaxPollRecords(-1)", "kdeliver.WithBackoff(0s, 0s)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.brokers, tc.group, tc.topics, tc.sem, tc.opts...)
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("New accepted the configuration")
			}
			assertConfigError(t, err, tc.want...)
		})
	}
}

// assertConfigError checks that err is a *kdeliver.ConfigError wrapping
// ErrInvalidConfig with one problem per wanted substring.
func assertConfigError(t *testing.T, err error, want ...string) {
	t.Helper()
	if !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Fatalf("error does not wrap ErrInvalidConfig: %v", err)
	}
	var ce *kdeliver.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("error is not a *ConfigError: %v", err)
	}
	if len(ce.Problems) != len(want) {
		t.Errorf("got %d problems, want %d: %v", len(ce.Problems), len(want), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}

// TestNewWithGuardAndSinkRefuse: a nil guard or sink, and nil or bad
// options, are ConfigErrors listing every problem, never a panic; the sink
// consumer also refuses a raw AdjustFetchOffsetsFn, and the guard consumer
// a raw read_uncommitted.
func TestNewWithGuardAndSinkRefuse(t *testing.T) {
	cl := newCluster(t, 1)
	addrs, topics := cl.Brokers(), []string{"t"}
	guard := newGuard(t, dedup.NewMemory(10))
	sink := newMemSink(newMemDB(), "refused")
	var nilSink *memSink
	adjust := WithKgoOpts(kgo.AdjustFetchOffsetsFn(func(_ context.Context, o map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		return o, nil
	}))
	guardCases := []struct {
		name  string
		guard *dedup.Guard
		opts  []Option
		want  []string
	}{
		{"nil guard", nil, nil, []string{"the guard is nil"}},
		{"nil guard and nil option", nil, []Option{nil}, []string{"the guard is nil", "option 1 of 1 is nil"}},
		{"nil option", guard, []Option{WithMaxPollRecords(5), nil}, []string{"option 2 of 2 is nil"}},
		{"raw read uncommitted", guard, []Option{WithKgoOpts(kgo.FetchIsolationLevel(kgo.ReadUncommitted()))}, []string{"read_uncommitted"}},
		{"bad retry options", guard, []Option{kdeliver.WithMaxAttempts(-1)}, []string{"kdeliver.WithMaxAttempts(-1)"}},
	}
	for _, tc := range guardCases {
		t.Run("guard/"+tc.name, func(t *testing.T) {
			c, err := NewWithGuard(addrs, "g", topics, tc.guard, tc.opts...)
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("NewWithGuard accepted the configuration")
			}
			assertConfigError(t, err, tc.want...)
		})
	}
	sinkCases := []struct {
		name string
		sink Sink
		opts []Option
		want []string
	}{
		{"nil sink", nil, nil, []string{"the sink is nil"}},
		{"typed nil sink", nilSink, nil, []string{"the sink is a nil *consumer.memSink"}},
		{"nil sink and nil option", nil, []Option{nil}, []string{"the sink is nil", "option 1 of 1 is nil"}},
		{"nil option", sink, []Option{nil}, []string{"option 1 of 1 is nil"}},
		{"raw adjust offsets", sink, []Option{adjust}, []string{"AdjustFetchOffsetsFn"}},
		{"raw read uncommitted", sink, []Option{WithKgoOpts(kgo.FetchIsolationLevel(kgo.ReadUncommitted()))}, []string{"read_uncommitted"}},
	}
	for _, tc := range sinkCases {
		t.Run("sink/"+tc.name, func(t *testing.T) {
			c, err := NewWithSink(addrs, "g", topics, tc.sink, tc.opts...)
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("NewWithSink accepted the configuration")
			}
			assertConfigError(t, err, tc.want...)
		})
	}
}

func TestLifecycle(t *testing.T) {
	cl := newCluster(t, 1)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithClientID("life"))
	if got := c.Semantics(); got != kdeliver.AtLeastOnce {
		t.Fatalf("Semantics() = %v", got)
	}
	ctx := context.Background()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Run(ctx, func(context.Context, *kgo.Record) error { return nil }); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
}

// TestRunTwiceAndClose: Close stops a running Run, which returns nil; a
// second Run is refused.
func TestRunTwiceAndClose(t *testing.T) {
	cl := newCluster(t, 2)
	produce(t, cl, 0, 10)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	l := newLedger()
	r := start(c, func(_ context.Context, rec *kgo.Record) error { l.add(rec); return nil })
	waitFor(t, "10 records", func() bool { return l.distinct() == 10 })
	if err := c.Run(context.Background(), func(context.Context, *kgo.Record) error { return nil }); err == nil {
		t.Fatal("second Run was accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("Run after Close = %v, want nil", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	assertCommittedAll(t, cl, "g", l)
}

// assertCommittedAll checks that each partition's committed offset is one
// past the last record the ledger saw on it.
func assertCommittedAll(t *testing.T, cl *kdelivertest.Cluster, group string, l *ledger) {
	t.Helper()
	want := map[int32]int64{}
	l.mu.Lock()
	for _, p := range l.pos {
		want[p.part] = max(want[p.part], p.offset+1)
	}
	l.mu.Unlock()
	got := committed(cl, group)
	for p, w := range want {
		if got[p] != w {
			t.Errorf("partition %d: committed %d, want %d", p, got[p], w)
		}
	}
}

// TestAtLeastOnceAllThenCancel: every record handled once, offsets committed
// to the end, ctx cancel returns nil.
func TestAtLeastOnceAllThenCancel(t *testing.T) {
	cl := newCluster(t, 3)
	const n = 300
	produce(t, cl, 0, n)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(40))
	l := newLedger()
	r := start(c, func(_ context.Context, rec *kgo.Record) error { l.add(rec); return nil })
	waitFor(t, "all records", func() bool { return l.distinct() == n })
	if err := r.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	lost, dups := l.count(n)
	if lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
	if sum := sumCommitted(cl, "g"); sum != n {
		t.Fatalf("committed offsets sum to %d, want %d", sum, n)
	}
}

// TestAtMostOnceCommitsFirst: when the handler sees a record, its offset is
// already committed.
func TestAtMostOnceCommitsFirst(t *testing.T) {
	cl := newCluster(t, 3)
	const n = 100
	produce(t, cl, 0, n)
	c := mustNew(t, cl, "g", kdeliver.AtMostOnce, WithMaxPollRecords(15))
	l := newLedger()
	var early atomic.Int64
	r := start(c, func(_ context.Context, rec *kgo.Record) error {
		if committed(cl, "g")[rec.Partition] <= rec.Offset {
			early.Add(1)
		}
		l.add(rec)
		if rec.Offset == 5 {
			panic("a panic is skipped too, and does not crash the process")
		}
		return errors.New("failures are skipped under at-most-once")
	})
	waitFor(t, "all records", func() bool { return l.distinct() == n })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if e := early.Load(); e != 0 {
		t.Fatalf("%d records reached the handler before their offset was committed", e)
	}
	if lost, dups := l.count(n); lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
}

// TestCommitInterval: the sequential AtLeastOnce loop commits once a commit
// interval has passed, not whenever it has caught up (a commit round trip
// each time the handler outran the fetches), and a consumer that waits for
// records still commits what it handled once the interval has passed.
func TestCommitInterval(t *testing.T) {
	t.Run("not when caught up", func(t *testing.T) {
		cl := newCluster(t, 1)
		produce(t, cl, 0, 10)
		c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithCommitInterval(time.Hour))
		var handled atomic.Int64
		seen := make(chan int64, 1) // the group's commit when the 11th record arrives
		r := start(c, func(_ context.Context, rec *kgo.Record) error {
			if handled.Add(1) == 11 {
				seen <- committed(cl, "g")[0]
			}
			return nil
		})
		waitFor(t, "the first 10 records", func() bool { return handled.Load() == 10 })
		// The loop handled the 10 records it had and polls again: the
		// 11th record reaches the handler only after that poll.
		produce(t, cl, 10, 11)
		var got int64
		select {
		case got = <-seen:
		case <-time.After(wait):
			t.Fatal("the 11th record was not handled")
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		if got != 0 {
			t.Errorf("committed %d while caught up, before the hour's interval had passed: want 0", got)
		}
		if c := committed(cl, "g")[0]; c != 11 {
			t.Errorf("committed %d on shutdown, want 11", c)
		}
	})
	t.Run("idle", func(t *testing.T) {
		cl := newCluster(t, 1)
		produce(t, cl, 0, 10)
		c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithCommitInterval(50*time.Millisecond))
		r := start(c, func(context.Context, *kgo.Record) error { return nil })
		waitFor(t, "the 10 handled records committed while Run waits for more", func() bool { return committed(cl, "g")[0] == 10 })
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCancelFinishesRecordInHand: cancelling Run's ctx mid-record lets the
// handler finish with a live ctx, commits that record and returns nil.
func TestCancelFinishesRecordInHand(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 50)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handled atomic.Int64
	var lastOffset atomic.Int64
	var ctxErrInHand atomic.Value
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(hctx context.Context, rec *kgo.Record) error {
			if handled.Add(1) == 20 {
				cancel()
				time.Sleep(50 * time.Millisecond) // still working on it
				ctxErrInHand.Store(errOrNil(hctx.Err()))
			}
			lastOffset.Store(rec.Offset)
			return nil
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if e := ctxErrInHand.Load().(errBox).err; e != nil {
		t.Fatalf("the handler's ctx was cancelled mid-record: %v", e)
	}
	if h := handled.Load(); h != 20 {
		t.Fatalf("handled %d records after cancel at 20", h)
	}
	if got, want := committed(cl, "g")[0], lastOffset.Load()+1; got != want {
		t.Fatalf("committed %d, want %d (one past the record in hand)", got, want)
	}
}

type errBox struct{ err error }

func errOrNil(err error) errBox { return errBox{err} }

// TestFailingHandlerRetriedNotCommitted: under AtLeastOnce a failing record
// is retried with backoff and its offset stays uncommitted until it succeeds.
func TestFailingHandlerRetriedNotCommitted(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 20)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	const failOffset, failures = 7, 5
	var attempts atomic.Int64
	var committedWhileFailing []int64
	l := newLedger()
	r := start(c, func(_ context.Context, rec *kgo.Record) error {
		if rec.Offset == failOffset {
			if a := attempts.Add(1); a <= failures {
				committedWhileFailing = append(committedWhileFailing, committed(cl, "g")[0])
				return errors.New("downstream unavailable")
			}
		}
		l.add(rec)
		return nil
	})
	waitFor(t, "all records", func() bool { return l.distinct() == 20 })
	waitFor(t, "commit to the end", func() bool { return committed(cl, "g")[0] == 20 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if a := attempts.Load(); a != failures+1 {
		t.Fatalf("record handled %d times, want %d", a, failures+1)
	}
	for i, o := range committedWhileFailing {
		if o > failOffset {
			t.Fatalf("attempt %d: committed offset %d is past the failing record %d", i+1, o, failOffset)
		}
	}
	if lost, dups := l.count(20); lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
}

// TestMaxAttemptsHandlerError: a record that keeps failing (here by
// panicking) stops Run with a *HandlerError; records before it are
// committed, it is not.
func TestMaxAttemptsHandlerError(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 20)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithBackoff(time.Millisecond, 5*time.Millisecond), kdeliver.WithMaxAttempts(3))
	var attempts atomic.Int64
	r := start(c, func(_ context.Context, rec *kgo.Record) error {
		if rec.Offset == 12 {
			attempts.Add(1)
			panic("poison")
		}
		return nil
	})
	err := r.wait(t)
	var he *kdeliver.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("Run = %v, want *HandlerError", err)
	}
	assertHandlerError(t, he, 0, 12, 3)
	if !errors.Is(err, kdeliver.ErrPanic) {
		t.Fatalf("error does not wrap ErrPanic: %v", err)
	}
	if a := attempts.Load(); a != 3 {
		t.Fatalf("handler ran %d times, want 3", a)
	}
	if got := committed(cl, "g")[0]; got != 12 {
		t.Fatalf("committed %d, want 12 (up to the failing record, not past it)", got)
	}
}

// assertHandlerError checks that he carries the record of topic "t" at
// part and offset (whose value produce made its sequence number on a
// one-partition topic) and the attempts, and names them.
func assertHandlerError(t *testing.T, he *kdeliver.HandlerError, part int32, offset int64, attempts int) {
	t.Helper()
	rec := he.Record
	if rec == nil || rec.Topic != "t" || rec.Partition != part || rec.Offset != offset || he.Attempts != attempts {
		t.Fatalf("HandlerError = %+v (record %+v), want t[%d]@%d after %d attempts", he, rec, part, offset, attempts)
	}
	if len(rec.Value) == 0 {
		t.Fatalf("HandlerError's record has no value: %+v", rec)
	}
	if want := fmt.Sprintf("t[%d]@%d after %d attempt(s)", part, offset, attempts); !strings.Contains(he.Error(), want) {
		t.Fatalf("HandlerError %q does not name %q", he.Error(), want)
	}
}

// TestSkipCommitsPast: Skip under AtLeastOnce gives up on the record
// without retrying and commits past it.
func TestSkipCommitsPast(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 10)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	var calls atomic.Int64
	r := start(c, func(_ context.Context, rec *kgo.Record) error {
		calls.Add(1)
		if rec.Offset == 3 {
			return Skip(errors.New("malformed"))
		}
		return nil
	})
	waitFor(t, "commit to the end", func() bool { return committed(cl, "g")[0] == 10 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 10 {
		t.Fatalf("handler ran %d times, want 10 (no retry of a skipped record)", n)
	}
	if Skip(nil) != nil {
		t.Fatal("Skip(nil) != nil")
	}
}
