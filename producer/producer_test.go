package producer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const topic = "t"

// cluster starts a 3-broker kfake cluster on 127.0.0.1 with topic "t" (3
// partitions) and closes it when the test ends.
func cluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(3), kfake.SeedTopics(3, topic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// fast are raw options that make kgo notice kfake's changes quickly.
var fast = producer.WithKgoOpts(kgo.MetadataMinAge(100*time.Millisecond), kgo.DisableClientMetrics())

func newProducer(t testing.TB, c *kfake.Cluster, sem kdeliver.Semantics, opts ...producer.Option) *producer.Producer {
	t.Helper()
	p, err := producer.New(c.ListenAddrs(), sem, append([]producer.Option{fast}, opts...)...)
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

// readAll reads back every record of topic t with the given isolation. It
// first writes a sentinel to each partition with a plain client, then reads
// until it has seen all sentinels, which it leaves out. Call it only when no
// transaction is open.
func readAll(t testing.TB, c *kfake.Cluster, iso kgo.IsolationLevel) []*kgo.Record {
	t.Helper()
	ctx := testCtx(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(iso), kgo.DisableClientMetrics(), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.MetadataMinAge(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	parts := len(c.PartitionInfos(topic))
	for i := range parts {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: int32(i), Key: []byte(sentinel)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	var recs []*kgo.Record
	for seen := 0; seen < parts; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading back: %v (%d of %d sentinels seen)", ctx.Err(), seen, parts)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) == sentinel {
				seen++
				return
			}
			recs = append(recs, r)
		})
	}
	return recs
}

const sentinel = "readAll-sentinel"

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
	got := readAll(t, c, kgo.ReadUncommitted())
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
	if got := len(readAll(t, c, kgo.ReadUncommitted())); got != n {
		t.Fatalf("read %d, want %d", got, n)
	}
}

func TestMessageIDs(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce, producer.WithMessageIDs())
	ctx := testCtx(t)
	kept := &kgo.Record{Topic: topic, Headers: []kgo.RecordHeader{{Key: producer.MessageIDHeader, Value: []byte("app-chosen")}}}
	if err := p.Produce(ctx, kept); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for range 50 {
		if err := p.Produce(ctx, &kgo.Record{Topic: topic}); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range readAll(t, c, kgo.ReadUncommitted()) {
		var n int
		for _, h := range r.Headers {
			if h.Key == producer.MessageIDHeader {
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

func TestExactlyOnceProduceOutsideTransact(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.ExactlyOnce, producer.WithTransactionalID("eos-outside"))
	if err := p.Produce(testCtx(t), &kgo.Record{Topic: topic}); !errors.Is(err, producer.ErrNotInTransaction) {
		t.Fatalf("got %v, want ErrNotInTransaction", err)
	}
	alo := newProducer(t, c, kdeliver.AtLeastOnce)
	if err := alo.Transact(testCtx(t), func(context.Context, *producer.Tx) error { return nil }); !errors.Is(err, producer.ErrNotTransactional) {
		t.Fatalf("got %v, want ErrNotTransactional", err)
	}
}

func TestDeliveryErrorMessage(t *testing.T) {
	e := &producer.DeliveryError{Record: &kgo.Record{Topic: "orders", Partition: 2, Value: []byte("secret")}, Err: kgo.ErrRecordTimeout}
	msg := e.Error()
	for _, want := range []string{`"orders"`, "partition 2", "re-send"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "secret") {
		t.Errorf("message %q leaks the record value", msg)
	}
	if !errors.Is(e, kgo.ErrRecordTimeout) {
		t.Error("errors.Is does not see the cause")
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
