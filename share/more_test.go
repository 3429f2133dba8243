package share

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/crash"
)

// TestAtMostOnceAcceptsBeforeHandler: every record's accept reaches the
// broker before its handler runs, so a crash mid-handler loses the
// record (and the rest of its poll) and never delivers it again.
func TestAtMostOnceAcceptsBeforeHandler(t *testing.T) {
	// What the crashed client had fetched ahead comes back when its
	// acquisition lock expires (kfake does not release on disconnect).
	cl := newCluster(t, 3, 2*time.Second)
	a := watchAcks(cl)
	startAll(cl, "g")
	want := produce(t, cl, 0, 200)
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtMostOnce, quiet(), fast(), WithMaxRecords(20))
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	var early atomic.Int64 // handler calls of records not accepted yet
	crashOn := want[57]
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err = c.Run(ctx, func(_ context.Context, r *kgo.Record) error {
		as := a.of(r.Partition, r.Offset)
		if len(as) != 1 || as[0].typ != 1 {
			early.Add(1)
		}
		s.add(string(r.Value))
		if string(r.Value) == crashOn {
			return fmt.Errorf("mid-handler: %w", crash.ErrCrash)
		}
		return nil
	})
	if !errors.Is(err, crash.ErrCrash) {
		t.Fatalf("Run returned %v, want the simulated crash", err)
	}
	if n := early.Load(); n > 0 {
		t.Fatalf("%d handler calls before their record's accept reached the broker", n)
	}
	before := s.distinct()

	c2, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtMostOnce, quiet(), fast(), WithMaxRecords(20))
	if err != nil {
		t.Fatal(err)
	}
	stop := runBG(t, c2, func(_ context.Context, r *kgo.Record) error {
		s.add(string(r.Value))
		return nil
	})
	// Records the first consumer accepted and did not handle are lost;
	// every other record is handled once. Wait until nothing is left to
	// deliver: every record of the topic accepted.
	waitFor(t, "every record accepted", func() bool {
		t.Logf("accepts %d releases %d distinct %d stats %+v c1 %+v", a.count(1), a.count(2), s.distinct(), c2.Stats(), c.Stats())
		return a.count(1) == len(want)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := s.dups(); len(d) > 0 {
		t.Fatalf("at most once delivered %d records twice: %v", len(d), d)
	}
	if s.count(crashOn) != 1 {
		t.Fatalf("the record of the crash was handled %d times, want 1", s.count(crashOn))
	}
	lost := len(want) - s.distinct()
	if lost < 1 || lost > 19 {
		t.Fatalf("%d records lost, want those of the crashed poll after its crash (1..19); %d handled before the crash", lost, before)
	}
	if a.count(2) != 0 || a.count(3) != 0 {
		t.Fatalf("at most once sent %d releases and %d rejects", a.count(2), a.count(3))
	}
}

// TestAtMostOnceFailureSkipped: a failing handler is not called again.
func TestAtMostOnceFailureSkipped(t *testing.T) {
	cl := newCluster(t, 1, 30*time.Second)
	startAll(cl, "g")
	want := produce(t, cl, 0, 10)
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtMostOnce, quiet(), fast())
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		s.add(string(r.Value))
		if string(r.Value) == want[3] {
			return errors.New("fails")
		}
		return nil
	})
	waitFor(t, "every record handled", func() bool { return c.Stats().Handled+c.Stats().Skipped == 10 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if s.count(want[3]) != 1 || len(s.dups()) > 0 {
		t.Fatalf("the failing record was handled %d times", s.count(want[3]))
	}
	if st := c.Stats(); st.Skipped != 1 || st.Accepted != 10 || st.Released != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCancellationReleases: when Run's ctx is cancelled mid-poll, the
// record in hand finishes and is accepted, the records no handler started
// are released, and another consumer gets them with a higher delivery
// count.
func TestCancellationReleases(t *testing.T) {
	for _, n := range []int{1, 4} {
		t.Run(fmt.Sprintf("concurrency=%d", n), func(t *testing.T) {
			cl := newCluster(t, 1, 30*time.Second)
			a := watchAcks(cl)
			startAll(cl, "g")
			want := produce(t, cl, 0, 100)
			opts := []Option{quiet(), fast(), WithMaxRecords(100)}
			if n > 1 {
				opts = append(opts, kdeliver.WithConcurrency(n, kdeliver.Unordered))
			}
			c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, opts...)
			if err != nil {
				t.Fatal(err)
			}
			s := newSeen()
			inHand := make(chan struct{})
			release := make(chan struct{})
			var once sync.Once
			stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
				if string(r.Value) == want[5] {
					once.Do(func() { close(inHand) })
					<-release
				} else {
					// With concurrent handlers, one started after the
					// record in hand waits with it: else the other
					// handlers can finish the whole poll before Run's
					// ctx is cancelled, leaving nothing to release (seen
					// in CI).
					select {
					case <-inHand:
						<-release
					default:
					}
				}
				s.add(string(r.Value))
				return nil
			})
			select {
			case <-inHand:
			case <-time.After(wait):
				t.Fatal("the record to hold never reached its handler")
			}
			go func() {
				// Run's ctx is cancelled while the handler holds its
				// record; the handler then returns.
				time.Sleep(50 * time.Millisecond)
				close(release)
			}()
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			st := c.Stats()
			if st.Released == 0 {
				t.Fatalf("nothing released on cancellation: %+v", st)
			}
			if s.count(want[5]) != 1 {
				t.Fatalf("the record in hand was handled %d times", s.count(want[5]))
			}
			if as := a.of(0, 5); len(as) != 1 || as[0].typ != 1 {
				t.Fatalf("the record in hand: acknowledgements %+v, want an accept", as)
			}
			handledFirst := s.distinct()

			c2, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast())
			if err != nil {
				t.Fatal(err)
			}
			var redelivered atomic.Int64
			stop2 := runBG(t, c2, func(_ context.Context, r *kgo.Record) error {
				if r.DeliveryCount() > 1 {
					redelivered.Add(1)
				}
				s.add(string(r.Value))
				return nil
			})
			waitFor(t, "every record handled", func() bool { return s.distinct() == len(want) })
			if err := stop2(); err != nil {
				t.Fatal(err)
			}
			if d := s.dups(); len(d) > 0 {
				t.Fatalf("records handled twice: %v", d)
			}
			if int(redelivered.Load()) != len(want)-handledFirst {
				t.Fatalf("%d records redelivered, want the %d released", redelivered.Load(), len(want)-handledFirst)
			}
		})
	}
}

// TestConcurrency: WithConcurrency(n, Unordered) runs n handlers at once.
func TestConcurrency(t *testing.T) {
	cl := newCluster(t, 3, 30*time.Second)
	startAll(cl, "g")
	want := produce(t, cl, 0, 400)
	const n = 4
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast(), kdeliver.WithConcurrency(n, kdeliver.Unordered))
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	var cur, peak atomic.Int64
	all := make(chan struct{})
	var once sync.Once
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		v := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if v <= p || peak.CompareAndSwap(p, v) {
				break
			}
		}
		if v == n {
			once.Do(func() { close(all) })
		}
		if peak.Load() < n {
			// Hold until n handlers ran at once (bounded).
			select {
			case <-all:
			case <-time.After(wait):
			}
		}
		s.add(string(r.Value))
		return nil
	})
	waitFor(t, "every record handled", func() bool { return s.distinct() == len(want) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if peak.Load() != n {
		t.Fatalf("at most %d handlers ran at once, want %d", peak.Load(), n)
	}
	if d := s.dups(); len(d) > 0 {
		t.Fatalf("duplicates without a fault: %v", d)
	}
}

// TestGuardExactlyOnceUnderRedelivery: acknowledgements lost on the way
// make the broker deliver handled records again (after their acquisition
// lock); the guard finds them done and their side effect runs once.
func TestGuardExactlyOnceUnderRedelivery(t *testing.T) {
	cl := newCluster(t, 3, time.Second)
	a := watchAcks(cl)
	startAll(cl, "g")
	want := produce(t, cl, 0, 100)
	g, err := dedup.NewGuard(dedup.NewMemory(10000), "share-test", kdeliver.WithLogger(slog.New(slog.DiscardHandler)), dedup.WithLease(5*time.Second), dedup.WithTTL(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewWithGuard(cl.Brokers(), "g", []string{"t"}, g, quiet(), fast(), kdeliver.WithConcurrency(3, kdeliver.Unordered))
	if err != nil {
		t.Fatal(err)
	}
	if c.Semantics() != kdeliver.ExactlyOnce {
		t.Fatalf("semantics %v", c.Semantics())
	}
	effects := newSeen()
	var redelivered atomic.Int64
	a.setStrip(true) // the broker sees no acknowledgement
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		effects.add(string(r.Value))
		return nil
	})
	waitFor(t, "every side effect once", func() bool { return effects.distinct() == len(want) })
	waitFor(t, "records delivered again", func() bool {
		st := c.Stats()
		redelivered.Store(st.Redelivered)
		return st.Redelivered >= int64(len(want)) && st.Duplicates > 0
	})
	a.setStrip(false)
	waitFor(t, "every record accepted", func() bool { return a.count(1) >= len(want)*2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := effects.dups(); len(d) > 0 {
		t.Fatalf("side effects repeated under redelivery: %v", d)
	}
	if st := c.Stats(); st.Duplicates == 0 || st.Redelivered == 0 {
		t.Fatalf("stats %+v: want redeliveries the guard skipped", st)
	}
}

// TestConfigRefusals: options that mean nothing for a share group, or
// contradict the semantics, are refused at construction with the reason.
func TestConfigRefusals(t *testing.T) {
	b := []string{"127.0.0.1:1"}
	cases := []struct {
		name string
		sem  kdeliver.Semantics
		opts []Option
		want string
	}{
		{"exactly once", kdeliver.ExactlyOnce, nil, "not transactional in Kafka 4.4"},
		{"hanging watch", kdeliver.AtLeastOnce, []Option{kdeliver.WithHangingTransactionWatch(time.Minute, nil)}, "WithHangingTransactionWatch"},
		{"by partition", kdeliver.AtLeastOnce, []Option{kdeliver.WithConcurrency(2, kdeliver.ByPartition)}, "a share group keeps no order"},
		{"by key", kdeliver.AtLeastOnce, []Option{kdeliver.WithConcurrency(2, kdeliver.ByKey)}, "a share group keeps no order"},
		{"max in flight", kdeliver.AtLeastOnce, []Option{kdeliver.WithConcurrency(2, kdeliver.Unordered), kdeliver.WithMaxInFlight(9)}, "share.WithMaxRecords"},
		{"amo retries", kdeliver.AtMostOnce, []Option{kdeliver.WithMaxAttempts(3)}, "AtMostOnce accepts each record before"},
		{"amo dead letters", kdeliver.AtMostOnce, []Option{WithDeadLetterTopic("dlq")}, "AtMostOnce never delivers"},
		{"dead letter is input", kdeliver.AtLeastOnce, []Option{WithDeadLetterTopic("t")}, "also an input topic"},
		{"consumer group", kdeliver.AtLeastOnce, []Option{WithKgoOpts(kgo.ConsumerGroup("x"))}, ""},
		{"ack callback", kdeliver.AtLeastOnce, []Option{WithKgoOpts(kgo.ShareAckCallback(func(*kgo.Client, kgo.ShareAckResults) {}))}, "ShareAckCallback"},
		{"nil option", kdeliver.AtLeastOnce, []Option{nil}, "is nil"},
		{"max records", kdeliver.AtLeastOnce, []Option{WithMaxRecords(0)}, "WithMaxRecords(0)"},
		{"group protocol", kdeliver.AtLeastOnce, []Option{kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol)}, "a share group always runs its own"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(b, "g", []string{"t"}, tc.sem, tc.opts...)
			if !errors.Is(err, kdeliver.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want ErrInvalidConfig with %q", err, tc.want)
			}
		})
	}
	if _, err := NewWithGuard(b, "g", []string{"t"}, nil); !errors.Is(err, kdeliver.ErrInvalidConfig) {
		t.Fatalf("NewWithGuard(nil): %v", err)
	}
	if _, err := New(nil, "", nil, kdeliver.AtLeastOnce); err == nil || !strings.Contains(err.Error(), "no brokers") || !strings.Contains(err.Error(), "no share group") || !strings.Contains(err.Error(), "no topics") {
		t.Fatalf("New of nothing: %v, want every problem listed", err)
	}
	if _, err := New(b, "g", []string{"t"}, kdeliver.AtLeastOnce, kdeliver.WithConcurrency(2, kdeliver.Unordered), kdeliver.WithMaxAttempts(3), kdeliver.WithBackoff(time.Millisecond, time.Second), WithDeadLetterTopic("dlq")); err != nil {
		t.Fatalf("a valid configuration was refused: %v", err)
	}
}

// TestLifecycle: Run once at a time, Close final and safe twice, Run after
// Close returns ErrClosed.
func TestLifecycle(t *testing.T) {
	cl := newCluster(t, 1, 30*time.Second)
	startAll(cl, "g")
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- c.Run(context.Background(), func(context.Context, *kgo.Record) error {
			once.Do(func() { close(started) })
			return nil
		})
	}()
	produce(t, cl, 0, 1)
	<-started
	if err := c.Run(context.Background(), func(context.Context, *kgo.Record) error { return nil }); err == nil {
		t.Fatal("a second concurrent Run was allowed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx, func(context.Context, *kgo.Record) error { return nil }); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
	if err := c.Ping(ctx); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
}

// TestStartAtEarliest: the option sets the group's share.auto.offset.reset,
// so records produced before the group started are read.
func TestStartAtEarliest(t *testing.T) {
	cl := newCluster(t, 2, 30*time.Second)
	want := produce(t, cl, 0, 20)
	c, err := New(cl.Brokers(), "fresh", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast(), WithStartAtEarliest())
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		s.add(string(r.Value))
		return nil
	})
	waitFor(t, "every earlier record handled", func() bool { return s.distinct() == len(want) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
