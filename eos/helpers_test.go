package eos

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// newCluster starts a 3-broker kfake cluster with the topics given as
// name → partitions.
func newCluster(t testing.TB, topics map[string]int32, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(3), kfake.GroupMinSessionTimeout(100 * time.Millisecond)}, opts...)
	for name, n := range topics {
		opts = append(opts, kfake.SeedTopics(n, name))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// fastOpts makes a session react in milliseconds on kfake.
func fastOpts(extra ...Option) []Option {
	return append([]Option{
		WithTransactionTimeout(5 * time.Second),
		WithSessionTimeout(6 * time.Second),
		WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		WithKgoOpts(kgo.MetadataMinAge(100*time.Millisecond), kgo.HeartbeatInterval(100*time.Millisecond),
			kgo.FetchMaxWait(200*time.Millisecond), kgo.DisableClientMetrics()),
	}, extra...)
}

// seed writes values "0".."n-1" to topic, keyed by value, so the key decides
// the partition.
func seed(t testing.TB, addrs []string, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.MetadataMinAge(100*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rs := make([]*kgo.Record, n)
	for i := range rs {
		v := []byte(strconv.Itoa(i))
		rs[i] = &kgo.Record{Topic: topic, Key: v, Value: v}
	}
	if err := cl.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// committedAll reports whether group has committed the end of every
// partition of topic.
func committedAll(c *kfake.Cluster, group, topic string) bool {
	g := c.GroupInfo(group)
	if g == nil {
		return false
	}
	for _, pi := range c.PartitionInfos(topic) {
		if g.Commits[topic][pi.Partition].Offset < pi.HighWatermark {
			return false
		}
	}
	return true
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readRecord is what a read_committed reader saw.
type readRecord struct {
	partition int32
	key       string
	value     string
}

// readerClient reads topic from the start with read_committed isolation, as
// a downstream reader of a Session's output must.
func readerClient(t testing.TB, addrs []string, topic string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.MetadataMinAge(100*time.Millisecond),
		kgo.FetchMaxWait(100*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// readCommitted reads topic from the start with read_committed isolation
// until nothing new arrives for idle.
func readCommitted(t testing.TB, addrs []string, topic string, idle time.Duration) []readRecord {
	t.Helper()
	cl := readerClient(t, addrs, topic)
	defer cl.Close()
	var out []readRecord
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), idle)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) {
			n++
			out = append(out, readRecord{r.Partition, string(r.Key), string(r.Value)})
		})
		if n == 0 {
			return out
		}
	}
	t.Fatal("reader did not go idle in 30s")
	return nil
}

// tailReader reads topic with read_committed while a test runs and counts
// every value it sees.
type tailReader struct {
	mu     sync.Mutex
	seen   map[string]int
	cancel context.CancelFunc
	done   chan struct{}
}

func startTail(t testing.TB, addrs []string, topic string) *tailReader {
	t.Helper()
	cl := readerClient(t, addrs, topic)
	ctx, cancel := context.WithCancel(context.Background())
	r := &tailReader{seen: map[string]int{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer cl.Close()
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) {
				r.mu.Lock()
				r.seen[string(rec.Value)]++
				r.mu.Unlock()
			})
		}
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *tailReader) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// catchUp waits until the reader has seen n values, then stops it. The final
// audit is logged if it does not.
func (r *tailReader) catchUp(t testing.TB, n int, final audit) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.count() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	r.stop()
	if c := len(r.seen); c < n {
		t.Fatalf("the concurrent reader saw %d of %d values in 20s; the final reader: %s", c, n, final)
	}
}

func (r *tailReader) stop() {
	r.cancel()
	<-r.done
}

// audit compares what a reader saw with the values "0".."n-1".
type audit struct{ total, distinct, dups, missing, unexpected int }

func (a audit) String() string {
	return fmt.Sprintf("total=%d distinct=%d dups=%d missing=%d unexpected=%d", a.total, a.distinct, a.dups, a.missing, a.unexpected)
}

func auditValues(counts map[string]int, n int) audit {
	a := audit{}
	for v, c := range counts {
		a.total += c
		a.distinct++
		if c > 1 {
			a.dups += c - 1
		}
		if i, err := strconv.Atoi(v); err != nil || i < 0 || i >= n {
			a.unexpected++
		}
	}
	for i := range n {
		if counts[strconv.Itoa(i)] == 0 {
			a.missing++
		}
	}
	return a
}

func countValues(rs []readRecord) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.value]++
	}
	return m
}

// copyTo is a handler that copies each input record to topic, keyed as the
// input.
func copyTo(topic string) Handler {
	return func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		emit(&kgo.Record{Topic: topic, Key: in.Key, Value: in.Value})
		return nil
	}
}

// runUntilCommitted runs s with h until group "g" has committed all of
// topic "in", then closes s and fails t if Run or Close failed.
func runUntilCommitted(t testing.TB, c *kfake.Cluster, s *Session, h Handler) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background(), h) }()
	waitFor(t, 10*time.Second, "all input committed", func() bool { return committedAll(c, "g", "in") })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
