package sinktest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/consumer/sinktest"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is the suite's view of a Memory: one Memory per subtest.
func harness(*testing.T) sinktest.Harness {
	m := sinktest.NewMemory()
	return sinktest.Harness{
		NewSink: func(fail func(*kgo.Record) error) consumer.Sink { return m.NewSink(fail) },
		Rows: func(_ context.Context, topic string, partition int32) ([]int64, error) {
			var offs []int64
			for _, r := range m.Records(topic) {
				if r.Partition == partition {
					offs = append(offs, r.Offset)
				}
			}
			return offs, nil
		},
	}
}

func TestMemoryConformance(t *testing.T) {
	sinktest.Run(t, harness)
}

// envBroken names the broken sink that TestBrokenSink runs the suite on, in
// a child process of TestSuiteCatchesBrokenSinks.
const envBroken = "SINKTEST_BROKEN"

// broken are sinks that each break one rule of the protocol, and a subtest
// of the suite that must fail for it.
var broken = map[string]struct {
	wrap  func(consumer.Sink) consumer.Sink
	fails string
}{
	"unfenced":  {func(s consumer.Sink) consumer.Sink { return &unfenced{Sink: s} }, "SupersededMemberFenced"},
	"partial":   {func(s consumer.Sink) consumer.Sink { return partial{s} }, "FailedBatchRollsBack"},
	"forgetful": {func(s consumer.Sink) consumer.Sink { return forgetful{s} }, "ResumesAfterLastWritten"},
}

// TestSuiteCatchesBrokenSinks: the suite fails sinks that break each rule,
// so that passing it means something. Each runs in a child process, whose
// failure is the point.
func TestSuiteCatchesBrokenSinks(t *testing.T) {
	if os.Getenv(envBroken) != "" {
		t.Skip("child process")
	}
	for name, b := range broken {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenSink$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), envBroken+"="+name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a %s sink:\n%s", name, out)
			}
			if want := "--- FAIL: TestBrokenSink/" + b.fails; !strings.Contains(string(out), want) {
				t.Fatalf("the suite did not fail %s for a %s sink:\n%s", b.fails, name, out)
			}
		})
	}
}

// TestBrokenSink runs the suite on the broken sink that envBroken names.
func TestBrokenSink(t *testing.T) {
	b, ok := broken[os.Getenv(envBroken)]
	if !ok {
		t.Skip("helper of TestSuiteCatchesBrokenSinks")
	}
	sinktest.Run(t, func(t *testing.T) sinktest.Harness {
		h := harness(t)
		newSink := h.NewSink
		h.NewSink = func(fail func(*kgo.Record) error) consumer.Sink { return b.wrap(newSink(fail)) }
		return h
	})
}

// unfenced claims a partition again when its claim was superseded, and
// writes: two members write one partition.
type unfenced struct {
	consumer.Sink
	mu   sync.Mutex
	last consumer.Assignment
}

func (u *unfenced) Assign(ctx context.Context, a consumer.Assignment) (map[string]map[int32]int64, error) {
	u.mu.Lock()
	u.last = a
	u.mu.Unlock()
	return u.Sink.Assign(ctx, a)
}

func (u *unfenced) Write(ctx context.Context, recs []*kgo.Record) error {
	err := u.Sink.Write(ctx, recs)
	u.mu.Lock()
	a := u.last
	u.mu.Unlock()
	if errors.Is(err, kdeliver.ErrFenced) && a.Group != "" {
		a.Partitions = map[string][]int32{recs[0].Topic: {recs[0].Partition}}
		if _, err := u.Sink.Assign(ctx, a); err != nil {
			return err
		}
		return u.Sink.Write(ctx, recs)
	}
	return err
}

// partial writes a batch's records one by one, keeping those before a
// failure.
type partial struct{ consumer.Sink }

func (p partial) Write(ctx context.Context, recs []*kgo.Record) error {
	for i := range recs {
		if err := p.Sink.Write(ctx, recs[i:i+1]); err != nil {
			return err
		}
	}
	return nil
}

// forgetful returns no stored offsets from Assign.
type forgetful struct{ consumer.Sink }

func (f forgetful) Assign(ctx context.Context, a consumer.Assignment) (map[string]map[int32]int64, error) {
	_, err := f.Sink.Assign(ctx, a)
	return nil, err
}

// TestMemoryUnderSinkConsumer: a sink consumer writes a topic into a Memory
// over two Runs and a second consumer sharing the partitions; the rows are
// the topic's records exactly once, and the stored offsets its ends.
func TestMemoryUnderSinkConsumer(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("orders", 4))
	const n = 400
	want := kdelivertest.Seed(t, c.Brokers(), "orders", n)
	m := sinktest.NewMemory()
	opts := []consumer.Option{
		consumer.WithMaxPollRecords(25),
		consumer.WithKgoOpts(kgo.SessionTimeout(time.Second), kgo.HeartbeatInterval(100*time.Millisecond),
			kgo.MetadataMinAge(100*time.Millisecond), kgo.FetchMaxWait(100*time.Millisecond)),
	}
	var slow atomic.Bool
	newConsumer := func() *consumer.SinkConsumer {
		sink := m.NewSink(func(*kgo.Record) error {
			if slow.Load() {
				time.Sleep(time.Millisecond)
			}
			return nil
		})
		sc, err := consumer.NewWithSink(c.Brokers(), "billing", []string{"orders"}, sink, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return sc
	}
	rows := func() int { return len(m.Records("orders")) }
	run := func(sc *consumer.SinkConsumer) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sc.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
		}
	}
	slow.Store(true)
	a := newConsumer()
	stop := run(a)
	kdelivertest.WaitFor(t, 20*time.Second, "100 rows", func() bool { return rows() >= 100 })
	stop()
	stopA := run(a) // the same consumer again
	kdelivertest.WaitFor(t, 20*time.Second, "200 rows", func() bool { return rows() >= 200 })
	b := newConsumer()
	stopB := run(b)
	kdelivertest.WaitFor(t, 20*time.Second, "300 rows", func() bool { return rows() >= 300 })
	slow.Store(false)
	stopB()
	kdelivertest.WaitFor(t, 20*time.Second, "every row", func() bool { return rows() >= n })
	stopA()
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rep := kdelivertest.Audit(want, m.Records("orders")); !rep.Exact() {
		t.Fatalf("rows: %v", rep)
	}
	ends := map[int32]int64{}
	for _, pi := range c.Kfake().PartitionInfos("orders") {
		ends[pi.Partition] = pi.HighWatermark
	}
	got := m.Offsets("billing", "orders")
	for p, end := range ends {
		if got[p] != end {
			t.Fatalf("stored offsets %v, want the partitions' ends %v", got, ends)
		}
	}
	if committed := c.Committed("billing", "orders"); len(committed) != 0 {
		t.Fatalf("offsets committed to Kafka %v: the sink holds them", committed)
	}
}
