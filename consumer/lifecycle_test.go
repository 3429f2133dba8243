package consumer

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// The tests of this file check the lifecycle of issue 8: Run may be called
// again after it returned, Close is final, and where a new group starts.

// TestRunAgainReadsTheRest: Run, a stop mid-stream, then Run again on the
// same Consumer reads the rest. A clean stop commits what was handled (or,
// with a sink, the sink holds it), so nothing is lost and nothing repeated,
// in every semantics.
func TestRunAgainReadsTheRest(t *testing.T) {
	const n = 300
	type setup struct {
		// run runs the consumer, calling stop once it has handled
		// until records or more.
		run      func(ctx context.Context, stop func(), until int) error
		distinct func() int
		count    func() (lost, dups int)
	}
	handled := func(c *Consumer) setup {
		l := newLedger()
		return setup{
			run: func(ctx context.Context, stop func(), until int) error {
				return c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
					if l.add(rec); l.distinct() >= until {
						stop()
					}
					return nil
				})
			},
			distinct: l.distinct,
			count:    func() (int, int) { return l.count(n) },
		}
	}
	cases := []struct {
		name string
		new  func(t *testing.T, cl *kdelivertest.Cluster) setup
	}{
		{"at-most-once", func(t *testing.T, cl *kdelivertest.Cluster) setup {
			return handled(mustNew(t, cl, "g", kdeliver.AtMostOnce, WithMaxPollRecords(20)))
		}},
		{"at-least-once", func(t *testing.T, cl *kdelivertest.Cluster) setup {
			return handled(mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithMaxPollRecords(20)))
		}},
		{"exactly-once guard", func(t *testing.T, cl *kdelivertest.Cluster) setup {
			return handled(mustNewWithGuard(t, cl, "g", newGuard(t, dedup.NewMemory(n)), WithMaxPollRecords(20)))
		}},
		{"exactly-once sink", func(t *testing.T, cl *kdelivertest.Cluster) setup {
			db := newMemDB()
			sink := newMemSink(db, "s")
			c := mustNewWithSink(t, cl, "g", sink, WithMaxPollRecords(20))
			var onWrite atomic.Pointer[func()]
			sink.fault = func(_ int64, committed bool) error {
				if f := onWrite.Load(); committed && f != nil {
					(*f)()
				}
				return nil
			}
			return setup{
				run: func(ctx context.Context, stop func(), until int) error {
					f := func() {
						if db.distinct() >= until {
							stop()
						}
					}
					onWrite.Store(&f)
					return c.Run(ctx)
				},
				distinct: db.distinct,
				count: func() (int, int) {
					lost, dups, _ := db.count(n)
					return lost, dups
				},
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, 3)
			produce(t, cl, 0, n)
			s := tc.new(t, cl)
			var after []int
			for i, until := range []int{n / 3, 2 * n / 3, n} {
				ctx, cancel := context.WithCancel(context.Background())
				r := startFn(func(context.Context) error { return s.run(ctx, cancel, until) })
				waitFor(t, strconv.Itoa(until)+" records", func() bool { return s.distinct() >= until })
				if err := r.wait(t); err != nil {
					t.Fatalf("Run %d = %v, want nil", i+1, err)
				}
				cancel()
				r.cancel()
				after = append(after, s.distinct())
			}
			lost, dups := s.count()
			t.Logf("three Runs of one consumer: distinct records after each %v; %d lost, %d duplicated", after, lost, dups)
			if after[1] >= n {
				t.Fatalf("the second Run read every record (%v): the stops did not land mid-stream", after)
			}
			if lost != 0 || dups != 0 {
				t.Fatalf("lost %d, duplicated %d after Run, stop, Run again", lost, dups)
			}
		})
	}
}

// TestRunAgainAfterHandlerError: a Run that stopped on a record failing
// kdeliver.WithMaxAttempts times did not commit it; Run again starts at that
// record, and a Run that gets past it commits to the end.
func TestRunAgainAfterHandlerError(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 20)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, kdeliver.WithBackoff(time.Millisecond, time.Millisecond), kdeliver.WithMaxAttempts(2))
	var healthy atomic.Bool
	l := newLedger()
	h := func(_ context.Context, rec *kgo.Record) error {
		if rec.Offset == 7 && !healthy.Load() {
			return errors.New("downstream unavailable")
		}
		l.add(rec)
		return nil
	}
	for range 2 {
		var he *kdeliver.HandlerError
		if err := start(c, h).wait(t); !errors.As(err, &he) {
			t.Fatalf("Run = %v, want a *HandlerError", err)
		}
		assertHandlerError(t, he, 0, 7, 2)
		if got := committed(cl, "g")[0]; got != 7 {
			t.Fatalf("committed %d, want 7 (up to the failing record)", got)
		}
	}
	healthy.Store(true)
	r := start(c, h)
	waitFor(t, "commit to the end", func() bool { return committed(cl, "g")[0] == 20 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if lost, dups := l.count(20); lost != 0 || dups != 0 {
		t.Fatalf("lost %d, duplicated %d", lost, dups)
	}
}

// TestCloseIsFinal: Close after Run returned, or while it runs, is final:
// Run and Ping then return ErrClosed, and Close again returns nil.
func TestCloseIsFinal(t *testing.T) {
	ctx := context.Background()
	h := func(context.Context, *kgo.Record) error { return nil }
	assertClosed := func(t *testing.T, run func() error, ping, closeAgain func(context.Context) error) {
		t.Helper()
		if err := run(); !errors.Is(err, kdeliver.ErrClosed) {
			t.Fatalf("Run after Close = %v, want ErrClosed", err)
		}
		if err := ping(ctx); !errors.Is(err, kdeliver.ErrClosed) {
			t.Fatalf("Ping after Close = %v, want ErrClosed", err)
		}
		if err := closeAgain(ctx); err != nil {
			t.Fatalf("Close again = %v", err)
		}
	}
	cl := newCluster(t, 2)
	produce(t, cl, 0, 10)

	t.Run("after Run returned", func(t *testing.T) {
		c := mustNew(t, cl, "after", kdeliver.AtLeastOnce)
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("Ping = %v", err)
		}
		r := start(c, h)
		waitFor(t, "the commit of every record", func() bool { return cl.CommittedAll("after", "t") })
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
		assertClosed(t, func() error { return c.Run(ctx, h) }, c.Ping, c.Close)
	})
	t.Run("while running", func(t *testing.T) {
		c := mustNew(t, cl, "while", kdeliver.AtLeastOnce)
		r := start(c, h)
		waitFor(t, "the commit of every record", func() bool { return cl.CommittedAll("while", "t") })
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.wait(t); err != nil {
			t.Fatalf("Run stopped by Close = %v, want nil", err)
		}
		assertClosed(t, func() error { return c.Run(ctx, h) }, c.Ping, c.Close)
	})
	t.Run("sink consumer", func(t *testing.T) {
		db := newMemDB()
		c := mustNewWithSink(t, cl, "sink", newMemSink(db, "s"))
		r := startSink(c)
		waitFor(t, "every record in the sink", func() bool { return db.distinct() == 10 })
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.wait(t); err != nil {
			t.Fatalf("Run stopped by Close = %v, want nil", err)
		}
		assertClosed(t, func() error { return c.Run(ctx) }, c.Ping, c.Close)
	})
	t.Run("before Run", func(t *testing.T) {
		c := mustNew(t, cl, "before", kdeliver.AtMostOnce)
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
		assertClosed(t, func() error { return c.Run(ctx, h) }, c.Ping, c.Close)
	})
}

// TestCloseDeadlineCancelsHandler: the handler's ctx outlives Run's ctx, but
// not Close's: when Close's ctx ends before the handler returns, the
// handler's ctx is cancelled, Close returns the ctx's error, and Run returns
// once the handler does.
func TestCloseDeadlineCancelsHandler(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 5)
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	inHand := make(chan struct{})
	var cancelled atomic.Bool
	r := start(c, func(ctx context.Context, rec *kgo.Record) error {
		if rec.Offset != 2 {
			return nil
		}
		close(inHand)
		select {
		case <-ctx.Done():
			cancelled.Store(true)
			return ctx.Err()
		case <-time.After(wait):
			return nil
		}
	})
	select {
	case <-inHand:
	case <-time.After(wait):
		t.Fatal("no record in hand")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := c.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want its ctx's deadline", err)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if !cancelled.Load() {
		t.Fatal("the handler's ctx was not cancelled when Close gave up")
	}
	if got := committed(cl, "g")[0]; got > 2 {
		t.Fatalf("committed %d, past the record whose handler was cancelled", got)
	}
}

// TestWithStartAtLatest: a new group with WithStartAtLatest reads only what
// is produced after it joined; an offset it committed that fell out of range
// (records deleted past it) still resets to the earliest record kept, so
// nothing that exists is skipped.
func TestWithStartAtLatest(t *testing.T) {
	t.Run("a new group starts at the end", func(t *testing.T) {
		cl := newCluster(t, 2)
		const old = 50
		produce(t, cl, 0, old)
		c := mustNew(t, cl, "latest", kdeliver.AtLeastOnce, WithStartAtLatest())
		l := newLedger()
		r := start(c, recordAll(l))
		// The consumer's start is unknown from outside: produce until it
		// reads something.
		next := old
		waitFor(t, "a record produced after the consumer started", func() bool {
			if l.distinct() > 0 {
				return true
			}
			produce(t, cl, next, next+1)
			next++
			return false
		})
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for seq := range l.seen {
			if seq < old {
				t.Fatalf("read record %d, produced before the group started at the end", seq)
			}
		}
		t.Logf("produced %d records after the start; read %d", next-old, len(l.seen))
	})
	t.Run("an out-of-range offset resets to the earliest", func(t *testing.T) {
		cl := newCluster(t, 1)
		produce(t, cl, 0, 20)
		first := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		err := first.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
			if rec.Offset == 4 {
				cancel()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := committed(cl, "g")[0]; got != 5 {
			t.Fatalf("committed %d, want 5", got)
		}
		deleteRecords(t, cl, "t", 0, 10)

		c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, WithStartAtLatest())
		l := newLedger()
		r := start(c, recordAll(l))
		waitFor(t, "the records kept, 10..19", func() bool { return l.distinct() == 10 })
		waitFor(t, "commit to the end", func() bool { return committed(cl, "g")[0] == 20 })
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for seq := 10; seq < 20; seq++ {
			if l.seen[seq] != 1 {
				t.Fatalf("record %d read %d times, want once: the out-of-range offset did not reset to the earliest", seq, l.seen[seq])
			}
		}
	})
}

// deleteRecords deletes the records of topic's partition below offset, so
// that the log starts there.
func deleteRecords(t *testing.T, cl *kdelivertest.Cluster, topic string, partition int32, offset int64) {
	t.Helper()
	adm, err := kgo.NewClient(kgo.SeedBrokers(cl.Brokers()...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req := kmsg.NewPtrDeleteRecordsRequest()
	req.TimeoutMillis = 5000
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition, rp.Offset = partition, offset
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, adm)
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				t.Fatalf("delete records of %s/%d: %v", rt.Topic, rp.Partition, err)
			}
			if rp.LowWatermark != offset {
				t.Fatalf("%s/%d starts at %d after deleting records, want %d", rt.Topic, rp.Partition, rp.LowWatermark, offset)
			}
		}
	}
}

// TestPingDoesNotJoin: Ping checks the brokers and topics without joining
// the group, so that a health check calling it does not rebalance the
// group's running members (it joined and left, two rebalances a call).
func TestPingDoesNotJoin(t *testing.T) {
	cl := newCluster(t, 2)
	produce(t, cl, 0, 10)
	ctx := context.Background()
	idle := mustNew(t, cl, "idle", kdeliver.AtLeastOnce)
	if err := idle.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce)
	r := start(c, recordAll(newLedger()))
	waitFor(t, "the commit of every record", func() bool { return cl.CommittedAll("g", "t") })
	before := cl.Kfake().GroupInfo("g")
	for range 3 {
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // a join or leave would show by now
	after := cl.Kfake().GroupInfo("g")
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if g := cl.Kfake().GroupInfo("idle"); g != nil {
		t.Errorf("Ping of an idle consumer joined its group: %+v", g)
	}
	if after.Epoch != before.Epoch || len(after.Members) != 1 {
		t.Errorf("Ping rebalanced the running group: generation %d, then %d with %d members", before.Epoch, after.Epoch, len(after.Members))
	}
}
