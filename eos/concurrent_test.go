package eos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// The tests of concurrent handlers (kdeliver.WithConcurrency, issue 9).

// seedRandomKeys writes n records numbered "0".."n-1" to topic, each keyed
// by one of keys keys at random (a key's records land in one partition, in
// seed order), and returns their values.
func seedRandomKeys(t testing.TB, brokers []string, topic string, n, keys int, seed uint64) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	recs := kdelivertest.Records(topic, n)
	for _, r := range recs {
		r.Key = []byte("k" + strconv.Itoa(rng.IntN(keys)))
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.MetadataMinAge(100*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	return kdelivertest.Values(recs)
}

// watch wraps a handler, recording how many calls run at once and whether
// two calls of one lane (a partition, or a key of a partition) ever
// overlapped.
type watch struct {
	order    kdeliver.Ordering
	mu       sync.Mutex
	active   int
	peak     int
	lanes    map[string]bool
	overlaps int
}

func newWatch(order kdeliver.Ordering) *watch { return &watch{order: order, lanes: map[string]bool{}} }

func (w *watch) wrap(h Handler) Handler {
	return func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		lane := fmt.Sprintf("%s/%d", in.Topic, in.Partition)
		if w.order == kdeliver.ByKey {
			lane += "/" + string(in.Key)
		}
		w.mu.Lock()
		w.active++
		w.peak = max(w.peak, w.active)
		if w.order != kdeliver.Unordered {
			if w.lanes[lane] {
				w.overlaps++
			}
			w.lanes[lane] = true
		}
		w.mu.Unlock()
		defer func() {
			w.mu.Lock()
			w.active--
			delete(w.lanes, lane)
			w.mu.Unlock()
		}()
		return h(ctx, in, emit)
	}
}

func (w *watch) check(t *testing.T, n int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.peak <= 1 || w.peak > n {
		t.Errorf("at most %d handler calls ran at once, want more than 1 and at most %d", w.peak, n)
	}
	if w.overlaps != 0 {
		t.Errorf("%d handler calls started while another of their lane ran (%v)", w.overlaps, w.order)
	}
}

// sleepy copies in to out after sleeping up to max, at random.
func sleepy(out string, maxSleep time.Duration) Handler {
	return func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		time.Sleep(rand.N(maxSleep))
		emit(&kgo.Record{Topic: out, Key: in.Key, Value: in.Value})
		return nil
	}
}

// TestConcurrentCopyExact: random keys, random handler latency, by key and
// by partition: the read_committed output holds every input once, in order
// per key; handlers ran concurrently, at most n at once, never two of one
// lane.
func TestConcurrentCopyExact(t *testing.T) {
	for _, order := range []kdeliver.Ordering{kdeliver.ByKey, kdeliver.ByPartition} {
		t.Run(order.String(), func(t *testing.T) {
			const n, conc = 2000, 8
			c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 4), kdelivertest.WithTopic("out", 3))
			want := seedRandomKeys(t, c.Brokers(), "in", n, 40, uint64(order))
			w := newWatch(order)
			s, err := New(c.Brokers(), "g", []string{"in"}, "conc-"+order.String(),
				fastOpts(WithCommitEvery(300, 200*time.Millisecond), kdeliver.WithConcurrency(conc, order))...)
			if err != nil {
				t.Fatal(err)
			}
			runUntilCommitted(t, c, s, w.wrap(sleepy("out", 2*time.Millisecond)))
			exactly(t, c, "out", want)
			w.check(t, conc)
			if st := s.Stats(); st.Records != n || st.Aborted != 0 {
				t.Errorf("stats %+v, want %d records committed and no abort", st, n)
			}
		})
	}
}

// TestConcurrentUnordered: unordered handlers lose and repeat nothing.
func TestConcurrentUnordered(t *testing.T) {
	const n, conc = 1000, 6
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	w := newWatch(kdeliver.Unordered)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-unordered",
		fastOpts(WithCommitEvery(200, 200*time.Millisecond), kdeliver.WithConcurrency(conc, kdeliver.Unordered))...)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCommitted(t, c, s, w.wrap(sleepy("out", time.Millisecond)))
	// Each record is its own key: the audit checks loss and repeats.
	exactly(t, c, "out", want)
	w.check(t, conc)
}

// concurrentFaulty is faultyCopier for concurrent handlers: it fails each
// record whose value v has v%every == at once, and crashes (crash.ErrCrash)
// when the handled count passes each of crashAt.
func concurrentFaulty(out string, every, at int, crashAt []int64, handled *atomic.Int64) Handler {
	var failed sync.Map
	var mu sync.Mutex
	next := 0
	return func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		h := handled.Add(1)
		time.Sleep(rand.N(time.Millisecond))
		v, _ := strconv.Atoi(string(in.Value))
		if every > 0 && v%every == at {
			if _, again := failed.LoadOrStore(v, true); !again {
				return fmt.Errorf("test abort of record %d", v)
			}
		}
		mu.Lock()
		crashNow := next < len(crashAt) && h >= crashAt[next]
		if crashNow {
			next++
		}
		mu.Unlock()
		if crashNow {
			return fmt.Errorf("copier killed at %d handled: %w", h, crash.ErrCrash)
		}
		emit(&kgo.Record{Topic: out, Key: in.Key, Value: in.Value})
		return nil
	}
}

// T1 concurrent, on kfake: 3 → 3 partitions, random keys, 250 records a
// transaction, records failing once (aborts), three crashes without End and
// one graceful restart, by key and by partition: a concurrent and a final
// read_committed reader see every input once, in order per key.
func TestConcurrentExactlyOnceUnderAbortsAndCrashes(t *testing.T) {
	for _, order := range []kdeliver.Ordering{kdeliver.ByKey, kdeliver.ByPartition} {
		t.Run(order.String(), func(t *testing.T) {
			const n = 3000
			c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 3), kdelivertest.WithTopic("out", 3))
			want := seedRandomKeys(t, c.Brokers(), "in", n, 60, 11+uint64(order))
			tail := startTail(t, c.Brokers(), "out")

			var handled atomic.Int64
			restarted := false
			w := newWatch(order)
			r := newCopierRun(t, c, w.wrap(concurrentFaulty("out", 500, 123, []int64{n / 5, n / 2, 4 * n / 5}, &handled)))
			r.opts = append(r.opts, kdeliver.WithConcurrency(8, order))
			r.restarts = func(int64) bool {
				if !restarted && handled.Load() >= n*35/100 {
					restarted = true
					return true
				}
				return false
			}
			r.runFor(90 * time.Second)

			checkFaultyCopy(t, c, r, tail, want, 2)
			w.check(t, 8)
		})
	}
}

// TestConcurrentDeadLetter: two records that always fail (an error, a
// panic), among concurrent handlers by key: each aborts its transactions,
// is retried, and after kdeliver.WithMaxAttempts(3) goes to the dead-letter
// topic once, with the headers of the sequential session; every other
// record is copied exactly once.
func TestConcurrentDeadLetter(t *testing.T) {
	const n = 400
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 4), kdelivertest.WithTopic("out", 2), kdelivertest.WithTopic("dlq", 1))
	want := seedRandomKeys(t, c.Brokers(), "in", n, 20, 3)
	var calls37, calls250 atomic.Int32
	h := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		time.Sleep(rand.N(500 * time.Microsecond))
		switch string(in.Value) {
		case "37":
			calls37.Add(1)
			return errors.New("bad record")
		case "250":
			calls250.Add(1)
			panic("poison record")
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	}
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-dlq", fastOpts(kdeliver.WithMaxAttempts(3), WithOutputTopic("out"),
		WithDeadLetterTopic("dlq"), WithCommitEvery(100, 200*time.Millisecond), kdeliver.WithConcurrency(6, kdeliver.ByKey))...)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	runUntilCommitted(t, c, s, h)
	good := slices.DeleteFunc(slices.Clone(want), func(v string) bool { return v == "37" || v == "250" })
	exactly(t, c, "out", good)
	dlq := kdelivertest.ReadCommitted(t, c.Brokers(), "dlq")
	got := kdelivertest.Values(dlq)
	slices.Sort(got)
	if !slices.Equal(got, []string{"250", "37"}) {
		t.Fatalf("dead letters %q, want records 37 and 250 once each", got)
	}
	for _, rec := range dlq {
		hs := headers(rec)
		cause := map[string]string{"37": "bad record", "250": "poison record"}[string(rec.Value)]
		if hs[kdeliver.HeaderDLQTopic] != "in" || hs[kdeliver.HeaderDLQAttempts] != "3" || hs[kdeliver.HeaderDLQPartition] == "" {
			t.Errorf("dead letter of %s: headers %v, want topic in, a partition, 3 attempts", rec.Value, hs)
		}
		if off, err := strconv.ParseInt(hs[kdeliver.HeaderDLQOffset], 10, 64); err != nil || off < 0 {
			t.Errorf("dead letter of %s: offset header %q", rec.Value, hs[kdeliver.HeaderDLQOffset])
		}
		if e := hs[kdeliver.HeaderDLQError]; !strings.Contains(e, cause) {
			t.Errorf("dead letter of %s: error header %q, want it to say %q", rec.Value, e, cause)
		}
		first, err := time.Parse(time.RFC3339Nano, hs[kdeliver.HeaderDLQFirstFailure])
		if err != nil || first.Before(began) || first.After(time.Now()) {
			t.Errorf("dead letter of %s: first failure header %q (%v), want a time within the run", rec.Value, hs[kdeliver.HeaderDLQFirstFailure], err)
		}
	}
	if a, b := calls37.Load(), calls250.Load(); a < 3 || b < 3 {
		t.Errorf("the failing records were handled %d and %d times, want at least 3 each", a, b)
	}
	if st := s.Stats(); st.DeadLettered != 2 || st.Records != n || st.AbortedHandler < 4 {
		t.Errorf("stats %+v, want 2 dead-lettered of %d, at least 4 handler aborts", st, n)
	}
}

// TestConcurrentStopOnFailure: without a dead-letter topic, a record that
// fails its attempts under concurrency stops Run with a HandlerError naming
// it, and nothing of the aborted transactions is visible.
func TestConcurrentStopOnFailure(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 1))
	want := kdelivertest.Seed(t, c.Brokers(), "in", 100)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-stop", fastOpts(kdeliver.WithMaxAttempts(2), WithOutputTopic("out"),
		WithCommitEvery(1000, time.Second), kdeliver.WithConcurrency(4, kdeliver.ByPartition))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if string(in.Value) == "42" {
			return errors.New("bad record")
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	})
	var he *kdeliver.HandlerError
	if !errors.As(err, &he) || string(he.Record.Value) != "42" || he.Attempts != 2 {
		t.Fatalf("Run = %v, want a HandlerError on record 42 after 2 attempts", err)
	}
	if got := kdelivertest.ReadCommitted(t, c.Brokers(), "out"); len(got) != 0 {
		t.Errorf("aborted output visible: %d records", len(got))
	}
	runUntilCommitted(t, c, s, copyTo("out"))
	exactly(t, c, "out", want)
}

// TestConcurrentCutMidPoll: transactions far smaller than a poll (by count,
// and by interval with slow handlers), under concurrent handlers by key on
// few keys, so that records of one partition are in flight out of offset
// order when a transaction is cut: every transaction commits exactly the
// records whose outputs it holds (the output is exact and nothing aborts).
func TestConcurrentCutMidPoll(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records int
		every   time.Duration
		sleep   time.Duration
	}{
		{"count", 15, 5 * time.Second, time.Millisecond},
		{"interval", 100000, 30 * time.Millisecond, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 1200
			c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
			want := seedRandomKeys(t, c.Brokers(), "in", n, 6, 5)
			var commits atomic.Int64
			s, err := New(c.Brokers(), "g", []string{"in"}, "conc-cut-"+tc.name, fastOpts(WithOutputTopic("out"),
				WithCommitEvery(tc.records, tc.every), WithTransactionTimeout(30*time.Second), WithSessionTimeout(40*time.Second),
				kdeliver.WithConcurrency(8, kdeliver.ByKey), WithKgoOpts(kgo.FetchMaxPartitionBytes(10<<20)))...)
			if err != nil {
				t.Fatal(err)
			}
			s.committed = func() { commits.Add(1) }
			w := newWatch(kdeliver.ByKey)
			done := make(chan error, 1)
			go func() { done <- s.Run(context.Background(), w.wrap(sleepy("out", tc.sleep))) }()
			kdelivertest.WaitFor(t, 60*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			exactly(t, c, "out", want)
			w.check(t, 8)
			st := s.Stats()
			t.Logf("stats %+v", st)
			if st.Aborted != 0 || st.Records != n {
				t.Errorf("stats %+v: want %d records committed and no abort", st, n)
			}
			if tc.name == "count" && st.Committed < int64(n/tc.records) {
				t.Errorf("%d transactions, want at least %d of at most %d records", st.Committed, n/tc.records, tc.records)
			}
			if tc.name == "interval" && st.Committed < 5 {
				t.Errorf("%d transactions, want at least 5: the interval did not cut", st.Committed)
			}
		})
	}
}

// TestConcurrentStopAtNextRecord: cancelling Run's ctx while concurrent
// handlers work through a large poll commits what was handled and leaves
// the rest: a second Run copies it, nothing lost or repeated.
func TestConcurrentStopAtNextRecord(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 3), kdelivertest.WithTopic("out", 2))
	const n = 900
	want := seedRandomKeys(t, c.Brokers(), "in", n, 10, 9)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-stop-next", fastOpts(
		WithOutputTopic("out"), WithCommitEvery(n, 30*time.Second), kdeliver.WithConcurrency(6, kdeliver.ByKey),
		WithTransactionTimeout(time.Minute), WithSessionTimeout(2*time.Minute))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	h := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if calls.Add(1) == 100 {
			cancel()
		}
		time.Sleep(time.Millisecond) // ignores ctx
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	}
	if err := s.Run(ctx, h); err != nil {
		t.Fatal(err)
	}
	if got := calls.Load(); got >= n {
		t.Errorf("%d handler calls before Run returned: it did not stop", got)
	}
	var committed int64
	for _, off := range c.Committed("g", "in") {
		committed += off
	}
	if committed < 100 || st(s).Records != committed {
		t.Errorf("committed %d offsets, %d records: want at least the 100 handled before the stop, all counted", committed, st(s).Records)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2, err := New(c.Brokers(), "g", []string{"in"}, "conc-stop-next", fastOpts(WithOutputTopic("out"), kdeliver.WithConcurrency(6, kdeliver.ByKey))...)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCommitted(t, c, s2, h)
	exactly(t, c, "out", want)
}

func st(s *Session) Stats { return s.Stats() }

// TestConcurrentCloseBounded: handlers that finish only when told to are
// cancelled when Close's ctx ends; Close returns that error within its
// bound, Run returns, nothing commits.
func TestConcurrentCloseBounded(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 4), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 40)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-close", fastOpts(WithOutputTopic("out"), kdeliver.WithConcurrency(4, kdeliver.ByPartition))...)
	if err != nil {
		t.Fatal(err)
	}
	var entered, cancelled atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- s.Run(context.Background(), func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			entered.Add(1)
			<-ctx.Done()
			cancelled.Add(1)
			return ctx.Err()
		})
	}()
	kdelivertest.WaitFor(t, 10*time.Second, "handlers running", func() bool { return entered.Load() >= 2 })
	const bound = 300 * time.Millisecond
	closeCtx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	began := time.Now()
	err = s.Close(closeCtx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want its ctx's error", err)
	}
	if took := time.Since(began); took > bound+5*time.Second {
		t.Errorf("Close took %v with a %v ctx", took, bound)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if e, c := entered.Load(), cancelled.Load(); e < 2 || c != e {
		t.Errorf("%d handler calls, %d cancelled: want every call in flight cancelled", e, c)
	}
	if got := c.Committed("g", "in"); len(got) != 0 {
		t.Errorf("committed %v: cancelled records must not be", got)
	}
}

// TestConcurrentSlowRecordSolo: one record slower than the transaction
// timeout among concurrent handlers: the transaction it made outlive its
// timeout aborts, the record is handled again first and alone, and the
// output ends exact.
func TestConcurrentSlowRecordSolo(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 1))
	const n = 60
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-solo", fastOpts(
		WithOutputTopic("out"), WithCommitEvery(n, 400*time.Millisecond), kdeliver.WithConcurrency(4, kdeliver.ByPartition),
		WithTransactionTimeout(time.Second), WithSessionTimeout(6*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	var slowCalls, active atomic.Int32
	var soloRunning, overlapped atomic.Bool
	runUntilCommitted(t, c, s, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		a := active.Add(1)
		defer active.Add(-1)
		if string(in.Value) == "5" {
			if slowCalls.Add(1) > 1 {
				// Handled again after the timeout: alone.
				if a != 1 {
					overlapped.Store(true)
				}
				soloRunning.Store(true)
				defer soloRunning.Store(false)
			}
			time.Sleep(1500 * time.Millisecond)
		} else if soloRunning.Load() {
			overlapped.Store(true)
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	})
	exactly(t, c, "out", want)
	st := s.Stats()
	t.Logf("stats %+v, slow record handled %d times", st, slowCalls.Load())
	if st.Aborted < 1 || slowCalls.Load() < 2 {
		t.Errorf("stats %+v, slow record handled %d times: want an abort (the broker timed the transaction out), then the record again", st, slowCalls.Load())
	}
	if overlapped.Load() {
		t.Error("another handler ran beside the slow record's attempt after the timeout")
	}
}

// TestConcurrencyValidation: kdeliver.WithMaxInFlight without
// concurrency is refused with a ConfigError naming both options.
func TestConcurrencyValidation(t *testing.T) {
	_, err := New([]string{"127.0.0.1:1"}, "g", []string{"in"}, "id", kdeliver.WithMaxInFlight(10))
	var ce *kdeliver.ConfigError
	if !errors.As(err, &ce) || !errors.Is(err, kdeliver.ErrInvalidConfig) || !strings.Contains(err.Error(), "WithMaxInFlight") || !strings.Contains(err.Error(), "WithConcurrency") {
		t.Fatalf("New = %v, want a ConfigError naming WithMaxInFlight and WithConcurrency", err)
	}
	if _, err := New([]string{"127.0.0.1:1"}, "g", []string{"in"}, "id", kdeliver.WithConcurrency(4, kdeliver.ByKey), kdeliver.WithMaxInFlight(10)); err != nil {
		t.Errorf("New with concurrency and a bound = %v", err)
	}
	for _, o := range []Option{kdeliver.WithConcurrency(0, kdeliver.ByKey), kdeliver.WithConcurrency(2, kdeliver.Ordering(7))} {
		if _, err := New([]string{"127.0.0.1:1"}, "g", []string{"in"}, "id", o); !errors.Is(err, kdeliver.ErrInvalidConfig) {
			t.Errorf("New = %v, want ErrInvalidConfig", err)
		}
	}
}

// TestConcurrentFenced: another instance taking over the transactional ID
// while concurrent handlers work stops Run with an error matching
// kdeliver.ErrFenced, and none of the fenced transaction is visible.
func TestConcurrentFenced(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 4), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 200)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-fenced", fastOpts(WithOutputTopic("out"),
		WithCommitEvery(1000, time.Second), kdeliver.WithConcurrency(4, kdeliver.ByKey))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var once sync.Once
	err = s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		var ferr error
		once.Do(func() {
			other, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.TransactionalID("conc-fenced"), kgo.DisableClientMetrics())
			if err != nil {
				ferr = err
				return
			}
			defer other.Close()
			if err := other.BeginTransaction(); err != nil {
				ferr = err
				return
			}
			if err := other.ProduceSync(ctx, &kgo.Record{Topic: "out", Value: []byte("other")}).FirstErr(); err != nil {
				ferr = err
				return
			}
			ferr = other.EndTransaction(ctx, kgo.TryCommit)
		})
		if ferr != nil {
			return ferr
		}
		time.Sleep(rand.N(time.Millisecond))
		emit(&kgo.Record{Value: in.Value})
		return nil
	})
	if !errors.Is(err, kdeliver.ErrFenced) {
		t.Fatalf("Run = %v, want an error matching kdeliver.ErrFenced", err)
	}
	if st := s.Stats(); st.Fenced != 1 || st.Committed != 0 {
		t.Errorf("stats %+v: want one fenced transaction and no commit", st)
	}
	if got := kdelivertest.Values(kdelivertest.ReadCommitted(t, c.Brokers(), "out")); len(got) != 1 || got[0] != "other" {
		t.Errorf("read_committed output %q, want only the other instance's record", got)
	}
}

// TestConcurrentHoleAtCut: by key, record 0 (key A) outlives the commit
// interval while records 2..9 (keys of their own) are done and record 1
// (key A) waits behind it. At the cut, record 1 is below records already
// handled of its partition: it runs too, so the transaction commits the
// whole prefix; cutting before it would have committed the outputs of 2..9
// with offset 1, and repeated them.
func TestConcurrentHoleAtCut(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	recs := kdelivertest.Records("in", 10)
	recs[0].Key, recs[1].Key = []byte("A"), []byte("A")
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	want := kdelivertest.Values(recs)
	s, err := New(c.Brokers(), "g", []string{"in"}, "conc-hole", fastOpts(WithOutputTopic("out"),
		WithCommitEvery(1000, 100*time.Millisecond), kdeliver.WithConcurrency(2, kdeliver.ByKey))...)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var doneOrder []string
	calls := map[string]int{}
	holeAfterOthers := false
	runUntilCommitted(t, c, s, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		v := string(in.Value)
		mu.Lock()
		calls[v]++
		if v == "1" && len(doneOrder) == 9 && !slices.Contains(doneOrder, "1") {
			holeAfterOthers = true // 0 and 2..9 done before it started
		}
		mu.Unlock()
		if v == "0" {
			time.Sleep(400 * time.Millisecond) // beyond the commit interval
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		mu.Lock()
		doneOrder = append(doneOrder, v)
		mu.Unlock()
		return nil
	})
	exactly(t, c, "out", want)
	if !holeAfterOthers {
		t.Errorf("record 1 did not start after the records around it were done (order %v): the hole did not happen", doneOrder)
	}
	for _, v := range want {
		if calls[v] != 1 {
			t.Errorf("record %s handled %d times, want once", v, calls[v])
		}
	}
	if st := s.Stats(); st.Aborted != 0 || st.Committed != 1 {
		t.Errorf("stats %+v: want one transaction, committed with all 10 records", st)
	}
}
