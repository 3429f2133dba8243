package consumer

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait bounds the waits of the tests.
const wait = 20 * time.Second

// newCluster starts a 3-broker embedded cluster with topic "t" of parts
// partitions.
func newCluster(t testing.TB, parts int32) *kdelivertest.Cluster {
	t.Helper()
	cl := kdelivertest.Start(t, kdelivertest.WithTopic("t", parts), kdelivertest.WithKfakeOpts(fast848...))
	if proto848 {
		watch848(t, cl)
	}
	return cl
}

// fast848 makes KIP-848 groups react as fast on kfake as fastOpts makes
// classic ones: the broker owns the heartbeat and session timeout there.
var fast848 = []kfake.Opt{kfake.BrokerConfigs(map[string]string{
	"group.consumer.heartbeat.interval.ms": "100",
	"group.consumer.session.timeout.ms":    "1000",
})}

// proto848 is set while a test body runs under KIP-848's consumer group
// protocol (see under848): fastOpts then adds
// kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) and leaves out the
// classic protocol's member-side timers, which it refuses. Tests of this
// package do not run in parallel.
var proto848 bool

// under848 runs body as a subtest with every consumer of fastOpts joining
// with the consumer group protocol.
func under848(t *testing.T, body func(*testing.T)) {
	t.Helper()
	t.Run("consumer-protocol", func(t *testing.T) {
		proto848 = true
		defer func() { proto848 = false }()
		body(t)
	})
}

// fastOpts makes group joins, retries and polls quick on kfake.
func fastOpts() Option {
	if proto848 {
		return option(func(c *config) {
			kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol).ApplyConsumer(c.t)
			WithKgoOpts(
				kgo.MetadataMinAge(100*time.Millisecond),
				kgo.RebalanceTimeout(5*time.Second),
				kgo.FetchMaxWait(100*time.Millisecond),
				kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
			).ApplyConsumer(c.t)
		})
	}
	return WithKgoOpts(
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.SessionTimeout(time.Second),
		kgo.HeartbeatInterval(100*time.Millisecond),
		kgo.RebalanceTimeout(5*time.Second),
		kgo.FetchMaxWait(100*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
	)
}

// produce seeds topic "t" with the records whose value (and key) is their
// sequence number from..to-1, so that they spread over the partitions.
func produce(t testing.TB, cl *kdelivertest.Cluster, from, to int) {
	t.Helper()
	kdelivertest.Seed(t, cl.Brokers(), "t", to-from, kdelivertest.From(from))
}

// ends returns each partition's high watermark on topic "t": after
// [produce], how many records each partition holds.
func ends(cl *kdelivertest.Cluster) map[int32]int64 {
	out := map[int32]int64{}
	for _, pi := range cl.Kfake().PartitionInfos("t") {
		out[pi.Partition] = pi.HighWatermark
	}
	return out
}

// committed returns the group's committed offsets on topic "t".
func committed(cl *kdelivertest.Cluster, group string) map[int32]int64 {
	return cl.Committed(group, "t")
}

// sumCommitted adds up the group's committed offsets on topic "t".
func sumCommitted(cl *kdelivertest.Cluster, group string) int64 {
	var s int64
	for _, o := range committed(cl, group) {
		s += o
	}
	return s
}

// waitFor polls cond until it holds, failing the test after [wait].
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	kdelivertest.WaitFor(t, wait, what, cond)
}

// ledger counts how many times each sequence number was handled.
type ledger struct {
	mu   sync.Mutex
	seen map[int]int
	pos  map[int]pos // where each sequence number lives
}

type pos struct {
	part   int32
	offset int64
}

func newLedger() *ledger { return &ledger{seen: map[int]int{}, pos: map[int]pos{}} }

func (l *ledger) add(rec *kgo.Record) int {
	n, err := strconv.Atoi(string(rec.Value))
	if err != nil {
		panic(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen[n]++
	l.pos[n] = pos{rec.Partition, rec.Offset}
	return n
}

func (l *ledger) distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// count returns the lost (never seen) and duplicated (extra deliveries)
// sequence numbers among 0..n-1.
func (l *ledger) count(n int) (lost, dups int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range n {
		switch c := l.seen[i]; {
		case c == 0:
			lost++
		case c > 1:
			dups += c - 1
		}
	}
	return lost, dups
}

// runner is a consumer's Run in the background.
type runner struct {
	cancel context.CancelFunc
	ch     chan error
	got    bool
	err    error
}

func start(c *Consumer, h Handler) *runner {
	return startFn(func(ctx context.Context) error { return c.Run(ctx, h) })
}

func startSink(c *SinkConsumer) *runner { return startFn(c.Run) }

func startFn(run func(context.Context) error) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, ch: make(chan error, 1)}
	go func() { r.ch <- run(ctx) }()
	return r
}

// wait returns Run's error once it has returned by itself.
func (r *runner) wait(t testing.TB) error {
	t.Helper()
	if !r.got {
		select {
		case r.err = <-r.ch:
			r.got = true
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return")
		}
	}
	return r.err
}

// stop cancels Run's ctx and returns its error.
func (r *runner) stop(t testing.TB) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

func mustNew(t testing.TB, cl *kdelivertest.Cluster, group string, sem kdeliver.Semantics, opts ...Option) *Consumer {
	t.Helper()
	cs, err := New(cl.Brokers(), group, []string{"t"}, sem, append([]Option{fastOpts()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func mustNewWithGuard(t testing.TB, cl *kdelivertest.Cluster, group string, guard *dedup.Guard, opts ...Option) *Consumer {
	t.Helper()
	cs, err := NewWithGuard(cl.Brokers(), group, []string{"t"}, guard, append([]Option{fastOpts()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func mustNewWithSink(t testing.TB, cl *kdelivertest.Cluster, group string, sink Sink, opts ...Option) *SinkConsumer {
	t.Helper()
	cs, err := NewWithSink(cl.Brokers(), group, []string{"t"}, sink, append([]Option{fastOpts()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// slowRecorder is a handler that takes a millisecond a record, adds it to
// all and counts it in mark (if not nil).
func slowRecorder(all *ledger, mark *atomic.Int64) Handler {
	return func(_ context.Context, rec *kgo.Record) error {
		time.Sleep(time.Millisecond)
		all.add(rec)
		if mark != nil {
			mark.Add(1)
		}
		return nil
	}
}
