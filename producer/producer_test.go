package producer_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const topic = "t"

// cluster starts a 3-broker embedded cluster with topic "t" (3 partitions)
// and closes it when the test ends.
func cluster(t testing.TB) *kdelivertest.Cluster {
	t.Helper()
	return kdelivertest.Start(t, kdelivertest.WithTopic(topic, 3))
}

// fast are raw options that make kgo notice kfake's changes quickly.
var fast = producer.WithKgoOpts(kgo.MetadataMinAge(100*time.Millisecond), kgo.DisableClientMetrics())

func newProducer(t testing.TB, c *kdelivertest.Cluster, sem kdeliver.Semantics, opts ...producer.Option) *producer.Producer {
	t.Helper()
	p, err := producer.New(c.Brokers(), sem, append([]producer.Option{fast}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func newTransactional(t testing.TB, c *kdelivertest.Cluster, id string, opts ...producer.Option) *producer.Transactional {
	t.Helper()
	p, err := producer.NewTransactional(c.Brokers(), id, append([]producer.Option{fast}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readCommitted reads back every committed record of topic t.
func readCommitted(t testing.TB, c *kdelivertest.Cluster) []*kgo.Record {
	t.Helper()
	return kdelivertest.ReadCommitted(t, c.Brokers(), topic)
}

// readLog reads back every record in the log of topic t, those of aborted
// transactions included: kdelivertest's exact reader, with read_uncommitted
// isolation. Call it only when no transaction is open (the reader stops at
// the last stable offset).
func readLog(t testing.TB, c *kdelivertest.Cluster) []*kgo.Record {
	t.Helper()
	return kdelivertest.ReadCommitted(t, c.Brokers(), topic, kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
}

// countValues counts the records read back by value.
func countValues(recs []*kgo.Record) map[string]int {
	m := map[string]int{}
	for _, r := range recs {
		m[string(r.Value)]++
	}
	return m
}

func TestProduceEachSemantics(t *testing.T) {
	c := cluster(t)
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
		p := newProducer(t, c, sem)
		if p.Semantics() != sem {
			t.Fatalf("Semantics() = %s, want %s", p.Semantics(), sem)
		}
		if err := p.Produce(testCtx(t), &kgo.Record{Topic: topic, Value: []byte(sem.String())}); err != nil {
			t.Fatalf("%s: %v", sem, err)
		}
		if err := p.Close(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	got := readLog(t, c)
	if len(got) != 2 {
		t.Fatalf("read %d records, want 2", len(got))
	}
}

func TestCloseTwiceThenErrClosed(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce)
	ctx := testCtx(t)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := p.Produce(ctx, &kgo.Record{Topic: topic}); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Produce after Close: %v, want ErrClosed", err)
	}
	if err := p.Flush(ctx); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Flush after Close: %v, want ErrClosed", err)
	}
	var asyncErr error
	p.ProduceAsync(ctx, &kgo.Record{Topic: topic}, func(_ *kgo.Record, err error) { asyncErr = err })
	if !errors.Is(asyncErr, kdeliver.ErrClosed) {
		t.Fatalf("ProduceAsync after Close: %v, want ErrClosed", asyncErr)
	}
}

func TestCloseFlushesAsyncRecords(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce)
	ctx := testCtx(t)
	const n = 200
	acked := make(chan error, n)
	for i := range n {
		p.ProduceAsync(ctx, &kgo.Record{Topic: topic, Value: []byte{byte(i)}}, func(_ *kgo.Record, err error) { acked <- err })
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(acked) != n {
		t.Fatalf("%d callbacks after Close, want %d", len(acked), n)
	}
	for range n {
		if err := <-acked; err != nil {
			t.Fatal(err)
		}
	}
	if got := len(readLog(t, c)); got != n {
		t.Fatalf("read %d, want %d", got, n)
	}
}

func TestMessageIDs(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce, producer.WithMessageIDs())
	ctx := testCtx(t)
	kept := &kgo.Record{Topic: topic, Headers: []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: []byte("app-chosen")}}}
	if err := p.Produce(ctx, kept); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for range 50 {
		if err := p.Produce(ctx, &kgo.Record{Topic: topic}); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range readLog(t, c) {
		var n int
		for _, h := range r.Headers {
			if h.Key == kdeliver.HeaderMessageID {
				n++
				ids[string(h.Value)] = true
				if string(h.Value) != "app-chosen" && (len(h.Value) != 33 || h.Value[16] != '-') {
					t.Fatalf("message ID %q is not <16 hex>-<16 hex>", h.Value)
				}
			}
		}
		if n != 1 {
			t.Fatalf("record has %d message ID headers, want 1", n)
		}
	}
	if len(ids) != 51 || !ids["app-chosen"] {
		t.Fatalf("%d distinct IDs (app-chosen kept: %v), want 51", len(ids), ids["app-chosen"])
	}
}

// TestSender: code that picks the semantics at run time writes through
// producer.Sender whichever constructor built it; a Transactional's Send is
// one transaction, so a failed record hides the others. (Producing outside a
// transaction on a Transactional does not compile: see the root package's
// TestMisuseDoesNotCompile.)
func TestSender(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	var want []string
	for i, sem := range kdeliver.All {
		var s producer.Sender
		var err error
		switch sem {
		case kdeliver.ExactlyOnce:
			s, err = producer.NewTransactional(c.Brokers(), "sender", fast)
		case kdeliver.AtMostOnce:
			// acks=1, so that Send returns once the broker has the records.
			s, err = producer.New(c.Brokers(), sem, fast, producer.WithLeaderAck())
		default:
			s, err = producer.New(c.Brokers(), sem, fast)
		}
		if err != nil {
			t.Fatal(err)
		}
		recs := kdelivertest.Records(topic, 3, kdelivertest.From(10*i))
		if err := s.Send(ctx, recs...); err != nil {
			t.Fatalf("%s Send: %v", sem, err)
		}
		want = append(want, kdelivertest.Values(recs)...)
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Send(ctx, recs...); !errors.Is(err, kdeliver.ErrClosed) {
			t.Fatalf("%s Send after Close: %v, want ErrClosed", sem, err)
		}
	}
	if r := kdelivertest.Audit(want, readCommitted(t, c)); !r.Exact() {
		t.Fatalf("read_committed after three Sends: %s", r)
	}

	// A record the broker refuses aborts the whole Send.
	p := newTransactional(t, c, "sender-refused", producer.WithKgoOpts(kgo.RecordPartitioner(kgo.ManualPartitioner())))
	c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{1}, Err: kerr.InvalidRecord})
	err := p.Send(ctx, &kgo.Record{Topic: topic, Partition: 0, Value: []byte("x0")}, &kgo.Record{Topic: topic, Partition: 1, Value: []byte("x1")})
	var de *kdeliver.DeliveryError
	if !errors.Is(err, kdeliver.ErrAborted) || !errors.As(err, &de) || !errors.Is(err, kerr.InvalidRecord) {
		t.Fatalf("Send with a refused record: %v, want ErrAborted wrapping a DeliveryError for INVALID_RECORD", err)
	}
	if r := kdelivertest.Audit(want, readCommitted(t, c)); !r.Exact() {
		t.Fatalf("read_committed after an aborted Send: %s", r)
	}
}

func TestTransactionalCloseTwiceThenErrClosed(t *testing.T) {
	c := cluster(t)
	p := newTransactional(t, c, "closed")
	ctx := testCtx(t)
	if err := p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error { return tx.Produce(ctx, rec("before")) }); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ran := false
	if err := p.Transact(ctx, func(context.Context, *producer.Tx) error { ran = true; return nil }); !errors.Is(err, kdeliver.ErrClosed) || ran {
		t.Fatalf("Transact after Close: %v (fn ran: %v), want ErrClosed without running fn", err, ran)
	}
	if err := p.Send(ctx, rec("after")); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
	if err := p.Ping(ctx); !errors.Is(err, kdeliver.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
	if p.Semantics() != kdeliver.ExactlyOnce {
		t.Fatalf("Semantics() = %s", p.Semantics())
	}
}

func TestPing(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce)
	if err := p.Ping(testCtx(t)); err != nil {
		t.Fatalf("Ping on a running cluster: %v", err)
	}
	// Nothing listens on port 1: Ping fails rather than waiting for a
	// delivery timeout.
	down, err := producer.New([]string{"127.0.0.1:1"}, kdeliver.AtLeastOnce, fast)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close(testCtx(t))
	if err := down.Ping(testCtx(t)); err == nil {
		t.Fatal("Ping on an address nothing listens on succeeded")
	}
}

// TestProduceAsyncCallbacks: each record's outcome reaches the callback it
// was produced with, and only that one, whether records share a callback,
// alternate between two, or each has a closure of its own.
func TestProduceAsyncCallbacks(t *testing.T) {
	c := cluster(t)
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
		t.Run(sem.String(), func(t *testing.T) {
			var opts []producer.Option
			if sem == kdeliver.AtMostOnce {
				opts = append(opts, producer.WithLeaderAck()) // acks=1: Flush waits for the leader
			}
			p := newProducer(t, c, sem, opts...)
			ctx := testCtx(t)
			const n = 300
			var mu sync.Mutex
			calls := make(map[string][]int) // callback name → record numbers
			note := func(name string, r *kgo.Record, err error) {
				if err != nil {
					t.Errorf("record %s: %v", r.Value, err)
				}
				i, _ := strconv.Atoi(string(r.Value))
				mu.Lock()
				calls[name] = append(calls[name], i)
				mu.Unlock()
			}
			even := func(r *kgo.Record, err error) { note("even", r, err) }
			odd := func(r *kgo.Record, err error) { note("odd", r, err) }
			for i := range n {
				r := &kgo.Record{Topic: topic, Value: []byte(strconv.Itoa(i))}
				switch {
				case i < n/3 && i%2 == 0:
					p.ProduceAsync(ctx, r, even)
				case i < n/3:
					p.ProduceAsync(ctx, r, odd)
				default:
					name := "own " + strconv.Itoa(i)
					p.ProduceAsync(ctx, r, func(r *kgo.Record, err error) { note(name, r, err) })
				}
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			total := 0
			for name, got := range calls {
				total += len(got)
				for _, i := range got {
					want := "own " + strconv.Itoa(i)
					if i < n/3 {
						want = map[bool]string{true: "even", false: "odd"}[i%2 == 0]
					}
					if name != want {
						t.Errorf("record %d's outcome went to callback %q, want %q", i, name, want)
					}
				}
			}
			if total != n {
				t.Errorf("%d callbacks for %d records", total, n)
			}
		})
	}
}
