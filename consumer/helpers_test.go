package consumer

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newCluster starts a 3-broker kfake cluster with topic "t" of parts
// partitions.
func newCluster(t testing.TB, parts int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(
		kfake.NumBrokers(3),
		kfake.SeedTopics(parts, "t"),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// fastOpts makes group joins, retries and polls quick on kfake.
func fastOpts() Option {
	return WithKgoOpts(
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.SessionTimeout(time.Second),
		kgo.HeartbeatInterval(100*time.Millisecond),
		kgo.RebalanceTimeout(5*time.Second),
		kgo.FetchMaxWait(100*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
	)
}

// produce writes records whose value is their sequence number from..to-1,
// keyed by the same number so they spread over the partitions, and returns
// how many went to each partition.
func produce(t testing.TB, addrs []string, from, to int) map[int32]int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic("t"), kgo.MetadataMinAge(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recs := make([]*kgo.Record, 0, to-from)
	for i := from; i < to; i++ {
		s := []byte(strconv.Itoa(i))
		recs = append(recs, &kgo.Record{Key: s, Value: s})
	}
	res := cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatal(err)
	}
	per := map[int32]int{}
	for _, r := range res {
		per[r.Record.Partition]++
	}
	return per
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

// waitFor polls cond every 10ms until it holds or 20s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// committed returns the group's committed offsets on topic "t".
func committed(c *kfake.Cluster, group string) map[int32]int64 {
	out := map[int32]int64{}
	gi := c.GroupInfo(group)
	if gi == nil {
		return out
	}
	for p, gc := range gi.Commits["t"] {
		out[p] = gc.Offset
	}
	return out
}

// sumCommitted adds up the group's committed offsets on topic "t".
func sumCommitted(c *kfake.Cluster, group string) int64 {
	var s int64
	for _, o := range committed(c, group) {
		s += o
	}
	return s
}

// runner is a consumer's Run in the background.
type runner struct {
	cancel context.CancelFunc
	ch     chan error
	got    bool
	err    error
}

func start(c *Consumer, h Handler) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, ch: make(chan error, 1)}
	go func() { r.ch <- c.Run(ctx, h) }()
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

func mustNew(t testing.TB, c *kfake.Cluster, group string, sem kdeliver.Semantics, opts ...Option) *Consumer {
	t.Helper()
	cs, err := New(c.ListenAddrs(), group, []string{"t"}, sem, append([]Option{fastOpts()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
