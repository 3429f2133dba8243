package eos

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// The cluster, seeding, waiting, exact read_committed reading and the audit
// come from package kdelivertest; this file holds what is particular to
// sessions.

// proto848 is set while a test body runs under KIP-848's consumer group
// protocol (see under848): fastOpts then adds
// kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) and leaves out
// WithSessionTimeout and kgo.HeartbeatInterval, which the broker owns there
// (kdelivertest's kfake heartbeats 848 members every 250 ms). Tests of
// this package do not run in parallel.
var proto848 bool

// under848 runs body as a subtest with every session of fastOpts joining
// with the consumer group protocol.
func under848(t *testing.T, body func(*testing.T)) {
	t.Helper()
	t.Run("consumer-protocol", func(t *testing.T) {
		proto848 = true
		defer func() { proto848 = false }()
		body(t)
	})
}

// fastOpts makes a session react in milliseconds on kfake.
func fastOpts(extra ...Option) []Option {
	if proto848 {
		return append([]Option{
			kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol),
			WithTransactionTimeout(5 * time.Second),
			kdeliver.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
			WithKgoOpts(kgo.MetadataMinAge(100*time.Millisecond), kgo.FetchMaxWait(200*time.Millisecond), kgo.DisableClientMetrics()),
		}, extra...)
	}
	return append([]Option{
		WithTransactionTimeout(5 * time.Second),
		WithSessionTimeout(6 * time.Second),
		kdeliver.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		WithKgoOpts(kgo.MetadataMinAge(100*time.Millisecond), kgo.HeartbeatInterval(100*time.Millisecond),
			kgo.FetchMaxWait(200*time.Millisecond), kgo.DisableClientMetrics()),
	}, extra...)
}

// readerClient reads topic from the start with read_committed isolation, as
// a downstream reader of a Session's output must, for as long as it runs.
func readerClient(t testing.TB, brokers []string, topic string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.MetadataMinAge(100*time.Millisecond),
		kgo.FetchMaxWait(100*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// tailReader reads topic with read_committed while a test runs, keeping
// every record it sees, in the order each partition gave them.
type tailReader struct {
	mu       sync.Mutex
	recs     []*kgo.Record
	distinct map[string]bool
	cancel   context.CancelFunc
	done     chan struct{}
}

func startTail(t testing.TB, brokers []string, topic string) *tailReader {
	t.Helper()
	cl := readerClient(t, brokers, topic)
	ctx, cancel := context.WithCancel(context.Background())
	r := &tailReader{distinct: map[string]bool{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer cl.Close()
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) {
				r.mu.Lock()
				r.recs = append(r.recs, rec)
				r.distinct[string(rec.Value)] = true
				r.mu.Unlock()
			})
		}
	}()
	t.Cleanup(r.stop)
	return r
}

// count returns the number of distinct values seen.
func (r *tailReader) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.distinct)
}

// catchUp waits until the reader has seen every value of want, then stops it
// and returns its audit. The test fails, showing final (the audit of the
// reader that ran at the end), if it does not within 20 s.
func (r *tailReader) catchUp(t testing.TB, want []string, final kdelivertest.Report) kdelivertest.Report {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.count() < len(want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	r.stop()
	if c := r.count(); c < len(want) {
		t.Fatalf("the concurrent reader saw %d of %d values in 20s; the final reader: %s", c, len(want), final)
	}
	return kdelivertest.Audit(want, r.recs)
}

func (r *tailReader) stop() {
	r.cancel()
	<-r.done
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
func runUntilCommitted(t testing.TB, c *kdelivertest.Cluster, s *Session, h Handler) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background(), h) }()
	kdelivertest.WaitFor(t, 10*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// exactly fails t unless the committed records of topic are want, each once,
// in order per key.
func exactly(t testing.TB, c *kdelivertest.Cluster, topic string, want []string) {
	t.Helper()
	if a := kdelivertest.Audit(want, kdelivertest.ReadCommitted(t, c.Brokers(), topic)); !a.Exact() {
		t.Errorf("read_committed %s: %s, want %d exactly once", topic, a, len(want))
	}
}

// checkFaultyCopy checks a copier run of r, whose handler crashed three times
// and was restarted gracefully once while failing records (see
// faultyCopier): the read_committed output, read at the end and by tail
// during the run, holds want exactly once; the planned faults happened; at
// least minHandlerAborts transactions aborted on a handler error; the
// rewind guard never tripped.
func checkFaultyCopy(t *testing.T, c *kdelivertest.Cluster, r *copierRun, tail *tailReader, want []string, minHandlerAborts int64) {
	t.Helper()
	final := kdelivertest.Audit(want, kdelivertest.ReadCommitted(t, c.Brokers(), "out"))
	concurrent := tail.catchUp(t, want, final)
	st := r.total()
	t.Logf("crashes=%d graceful=%d stats=%+v held=%d rewoundAhead=%d final: %s concurrent: %s", r.crashes, r.graceful, st, r.held, r.rewoundAhead, final, concurrent)
	if !final.Exact() {
		t.Errorf("final read_committed reader: %s, want %d exactly once", final, len(want))
	}
	if !concurrent.Exact() {
		t.Errorf("concurrent read_committed reader: %s", concurrent)
	}
	if r.crashes != 3 || r.graceful != 1 {
		t.Errorf("crashes=%d graceful=%d, want 3 and 1: the faults did not happen", r.crashes, r.graceful)
	}
	if st.AbortedHandler < minHandlerAborts {
		t.Errorf("handler aborts = %d, want at least %d (failed records still ahead after the crashes)", st.AbortedHandler, minHandlerAborts)
	}
	if st.RewindViolations != 0 {
		t.Errorf("rewind guard tripped %d times", st.RewindViolations)
	}
}
