package consumer

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
)

func TestNewRefuses(t *testing.T) {
	cl := newCluster(t, 1)
	addrs := cl.ListenAddrs()
	topics := []string{"t"}
	alo, eo := kdeliver.AtLeastOnce, kdeliver.ExactlyOnce
	guard := newGuard(t, dedup.NewMemory(10))
	sink := newMemSink(newMemDB(), "refused")
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
		{"exactly once without dedup", addrs, "g", topics, eo, nil, []string{"pass consumer.WithSink(sink) (the offsets commit in the sink's own transaction, e.g. pgstore.Sink) or consumer.WithDedup(guard) (a dedup.Guard skips redelivered records); for Kafka-to-Kafka use eos.Session"}},
		{"exactly once with both", addrs, "g", topics, eo, []Option{WithDedup(guard), WithSink(sink)}, []string{"both given: choose one"}},
		{"exactly once with nil guard", addrs, "g", topics, eo, []Option{WithDedup(nil)}, []string{"WithDedup(nil)"}},
		{"exactly once with nil sink", addrs, "g", topics, eo, []Option{WithSink(nil)}, []string{"WithSink(nil)"}},
		{"at least once with guard", addrs, "g", topics, alo, []Option{WithDedup(guard)}, []string{"choose kdeliver.ExactlyOnce"}},
		{"at most once with sink", addrs, "g", topics, kdeliver.AtMostOnce, []Option{WithSink(sink)}, []string{"choose kdeliver.ExactlyOnce"}},
		{"sink and raw adjust offsets", addrs, "g", topics, eo, []Option{WithSink(sink), WithKgoOpts(kgo.AdjustFetchOffsetsFn(
			func(_ context.Context, o map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
				return o, nil
			}))},
			[]string{"AdjustFetchOffsetsFn"}},
		{"guard and raw read uncommitted", addrs, "g", topics, eo, []Option{WithDedup(guard), WithKgoOpts(kgo.FetchIsolationLevel(kgo.ReadUncommitted()))}, []string{"read_uncommitted"}},
		{"amo backoff", addrs, "g", topics, kdeliver.AtMostOnce, []Option{WithBackoff(time.Millisecond, time.Second)}, []string{"never retries"}},
		{"amo max attempts", addrs, "g", topics, kdeliver.AtMostOnce, []Option{WithMaxAttempts(3)}, []string{"never retries"}},
		{"backoff zero", addrs, "g", topics, alo, []Option{WithBackoff(0, time.Second)}, []string{"backoff 0s..1s"}},
		{"backoff inverted", addrs, "g", topics, alo, []Option{WithBackoff(2*time.Second, time.Second)}, []string{"backoff 2s..1s"}},
		{"max attempts zero", addrs, "g", topics, alo, []Option{WithMaxAttempts(0)}, []string{"max attempts 0"}},
		{"max poll zero", addrs, "g", topics, alo, []Option{WithMaxPollRecords(0)}, []string{"max poll records 0"}},
		{"nil option", addrs, "g", topics, alo, []Option{nil}, []string{"option is nil"}},
		{"raw greedy autocommit", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.GreedyAutoCommit())}, []string{"enabled auto-commit"}},
		{"raw autocommit marks", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.AutoCommitMarks())}, []string{"enabled auto-commit"}},
		{"raw other group", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.ConsumerGroup("other"))}, []string{"changed the consumer group"}},
		{"raw revoke callback", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.OnPartitionsRevoked(func(context.Context, *kgo.Client, map[string][]int32) {}))}, []string{"OnPartitionsRevoked"}},
		{"raw lost callback", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) {}))}, []string{"OnPartitionsLost"}},
		{"raw reset offset", addrs, "g", topics, alo, []Option{WithKgoOpts(kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))}, []string{"reset offset"}},
		{"raw read uncommitted amo is fine but revoke and group are not", addrs, "g", topics, kdeliver.AtMostOnce,
			[]Option{WithKgoOpts(kgo.ConsumerGroup("x"), kgo.OnPartitionsRevoked(func(context.Context, *kgo.Client, map[string][]int32) {}))},
			[]string{"changed the consumer group", "OnPartitionsRevoked"}},
		{"all at once", nil, "", []string{""}, kdeliver.AtLeastOnce, []Option{WithMaxPollRecords(-1), WithBackoff(0, 0)},
			[]string{"no brokers", "group is empty", "topic name is empty", "max poll records -1", "backoff 0s..0s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.brokers, tc.group, tc.topics, tc.sem, tc.opts...)
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("New accepted the configuration")
			}
			if !errors.Is(err, kdeliver.ErrInvalidConfig) {
				t.Fatalf("error does not wrap ErrInvalidConfig: %v", err)
			}
			var ce *kdeliver.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error is not a *ConfigError: %v", err)
			}
			if len(ce.Problems) != len(tc.want) {
				t.Errorf("got %d problems, want %d: %v", len(ce.Problems), len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
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
	produce(t, cl.ListenAddrs(), 0, 10)
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
func assertCommittedAll(t *testing.T, cl *kfake.Cluster, group string, l *ledger) {
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
	produce(t, cl.ListenAddrs(), 0, n)
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
	produce(t, cl.ListenAddrs(), 0, n)
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

// TestCancelFinishesRecordInHand: cancelling Run's ctx mid-record lets the
// handler finish with a live ctx, commits that record and returns nil.
func TestCancelFinishesRecordInHand(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl.ListenAddrs(), 0, 50)
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
	produce(t, cl.ListenAddrs(), 0, 20)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithBackoff(5*time.Millisecond, 20*time.Millisecond))
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
	produce(t, cl.ListenAddrs(), 0, 20)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithBackoff(time.Millisecond, 5*time.Millisecond), WithMaxAttempts(3))
	var attempts atomic.Int64
	r := start(c, func(_ context.Context, rec *kgo.Record) error {
		if rec.Offset == 12 {
			attempts.Add(1)
			panic("poison")
		}
		return nil
	})
	err := r.wait(t)
	var he *HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("Run = %v, want *HandlerError", err)
	}
	if he.Offset != 12 || he.Partition != 0 || he.Topic != "t" || he.Attempts != 3 {
		t.Fatalf("HandlerError = %+v", he)
	}
	if !errors.Is(err, ErrPanic) {
		t.Fatalf("error does not wrap ErrPanic: %v", err)
	}
	if a := attempts.Load(); a != 3 {
		t.Fatalf("handler ran %d times, want 3", a)
	}
	if got := committed(cl, "g")[0]; got != 12 {
		t.Fatalf("committed %d, want 12 (up to the failing record, not past it)", got)
	}
}

// TestSkipCommitsPast: Skip under AtLeastOnce gives up on the record
// without retrying and commits past it.
func TestSkipCommitsPast(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl.ListenAddrs(), 0, 10)
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
