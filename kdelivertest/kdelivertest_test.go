package kdelivertest_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func recs(keyed map[string]string, order ...string) []*kgo.Record {
	out := make([]*kgo.Record, len(order))
	for i, v := range order {
		out[i] = &kgo.Record{Key: []byte(keyed[v]), Value: []byte(v)}
	}
	return out
}

// TestAuditCatches: the audit reports an injected loss, duplicate and
// reorder, and nothing when the records are exact (per-key order only: two
// keys interleaved differently are not reordered).
func TestAuditCatches(t *testing.T) {
	want := []string{"0", "1", "2", "3", "4", "5"}
	keys := map[string]string{"0": "a", "1": "b", "2": "a", "3": "b", "4": "a", "5": "b", "x": "a"}
	for _, tc := range []struct {
		name                       string
		got                        []string
		lost, dup, reord, unexpect []string
	}{
		{name: "exact", got: []string{"0", "2", "4", "1", "3", "5"}},
		{name: "lost", got: []string{"0", "2", "1", "3", "5"}, lost: []string{"4"}},
		{name: "duplicated", got: []string{"0", "2", "0", "2", "4", "1", "3", "5"}, dup: []string{"0", "2"}},
		{name: "reordered", got: []string{"0", "4", "2", "1", "3", "5"}, reord: []string{"2"}},
		{name: "unexpected", got: []string{"0", "2", "4", "x", "1", "3", "5"}, unexpect: []string{"x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := kdelivertest.Audit(want, recs(keys, tc.got...))
			dups := make([]string, 0, len(r.Duplicated))
			for v := range r.Duplicated {
				dups = append(dups, v)
			}
			slices.Sort(dups)
			if !slices.Equal(r.Lost, tc.lost) || !slices.Equal(dups, tc.dup) || !slices.Equal(r.Reordered, tc.reord) || !slices.Equal(r.Unexpected, tc.unexpect) {
				t.Errorf("report %s: want lost %v, duplicated %v, reordered %v, unexpected %v", r, tc.lost, tc.dup, tc.reord, tc.unexpect)
			}
			if r.Exact() != (tc.name == "exact") {
				t.Errorf("Exact() = %v for %s", r.Exact(), tc.name)
			}
		})
	}
}

// txnClient returns a transactional client of c and a ctx bounding the
// test's requests; both end with the test.
func txnClient(t *testing.T, c *kdelivertest.Cluster) (*kgo.Client, context.Context) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.TransactionalID("x"), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return cl, ctx
}

// TestReadCommittedExact: the reader returns what committed transactions and
// plain producers wrote, not what an aborted transaction did, and in order.
func TestReadCommittedExact(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("t", 2))
	want := kdelivertest.Seed(t, c.Brokers(), "t", 20, kdelivertest.Keys(3))
	cl, ctx := txnClient(t, c)
	for _, commit := range []bool{false, true} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		v := "aborted"
		if commit {
			v = "committed"
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Key: []byte("k0"), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	got := kdelivertest.ReadCommitted(t, c.Brokers(), "t")
	r := kdelivertest.Audit(append(want, "committed"), got)
	if !r.Exact() {
		t.Fatalf("read_committed: %s", r)
	}
}

// listOffsetsHook signals once the client it is given to has read n
// ListOffsets responses.
type listOffsetsHook struct {
	n    int
	seen atomic.Int64
	once sync.Once
	done chan struct{}
}

func (h *listOffsetsHook) OnBrokerRead(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, _ error) {
	if key == 2 && h.seen.Add(1) == int64(h.n) {
		h.once.Do(func() { close(h.done) })
	}
}

// TestReadCommittedWaitsForMarkers: a transaction that commits after the
// reader listed the last stable offsets, while the reader waits for them to
// reach the high watermarks (as after an EndTxn whose markers the broker
// has not written yet), is read; one left open is not, and the records
// committed before it are.
func TestReadCommittedWaitsForMarkers(t *testing.T) {
	for _, commit := range []bool{true, false} {
		name := map[bool]string{true: "committed during the read", false: "left open"}[commit]
		t.Run(name, func(t *testing.T) {
			c := kdelivertest.Start(t, kdelivertest.WithTopic("t", 1))
			want := kdelivertest.Seed(t, c.Brokers(), "t", 5)
			cl, ctx := txnClient(t, c)
			if err := cl.BeginTransaction(); err != nil {
				t.Fatal(err)
			}
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("late")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
			// The reader lists the log starts, then the last stable
			// offsets: once it has, the transaction commits.
			h := &listOffsetsHook{n: 2, done: make(chan struct{})}
			ended := make(chan error, 1)
			go func() {
				select {
				case <-h.done:
				case <-ctx.Done():
					ended <- ctx.Err()
					return
				}
				if !commit {
					ended <- nil
					return
				}
				ended <- cl.EndTransaction(ctx, kgo.TransactionEndTry(kgo.TryCommit))
			}()
			got, err := kdelivertest.ReadCommittedRecords(ctx, c.Brokers(), "t", kgo.WithHooks(h))
			if err != nil {
				t.Fatal(err)
			}
			if err := <-ended; err != nil {
				t.Fatal(err)
			}
			if commit {
				want = append(want, "late")
			}
			if r := kdelivertest.Audit(want, got); !r.Exact() {
				t.Fatalf("read_committed: %s", r)
			}
		})
	}
}

func TestCommittedAll(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("t", 1))
	kdelivertest.Seed(t, c.Brokers(), "t", 3)
	if c.CommittedAll("g", "t") {
		t.Fatal("CommittedAll before any commit")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.ConsumerGroup("g"), kgo.ConsumeTopics("t"), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for n := 0; n < 3; {
		n += len(cl.PollFetches(ctx).Records())
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
	}
	if err := cl.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	kdelivertest.WaitFor(t, 10*time.Second, "the commit", func() bool { return c.CommittedAll("g", "t") })
	if got := c.Committed("g", "t")[0]; got != 3 {
		t.Errorf("committed %d, want 3", got)
	}
}

// TestStart: the cluster has the brokers and topics asked for, on
// 127.0.0.1, takes new topics, and is gone after the test.
func TestStart(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithBrokers(2), kdelivertest.WithTopic("t", 3), kdelivertest.WithTopic("u", 1), kdelivertest.WithTopic("t", 4))
	if got := len(c.Brokers()); got != 2 {
		t.Fatalf("Brokers() = %d addresses, want 2", got)
	}
	for _, b := range c.Brokers() {
		if !strings.HasPrefix(b, "127.0.0.1:") {
			t.Errorf("broker %s is not on 127.0.0.1", b)
		}
	}
	if err := c.CreateTopic("v", 2); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateTopic("v", 2); err == nil {
		t.Error("creating topic v again succeeded")
	}
	for topic, want := range map[string]int{"t": 4, "u": 1, "v": 2} {
		if got := len(c.Kfake().PartitionInfos(topic)); got != want {
			t.Errorf("topic %s has %d partitions, want %d", topic, got, want)
		}
	}
	want := kdelivertest.Seed(t, c.Brokers(), "v", 5, kdelivertest.From(10))
	if !slices.Equal(want, []string{"10", "11", "12", "13", "14"}) {
		t.Errorf("Seed From(10) = %v", want)
	}
	if r := kdelivertest.Audit(want, kdelivertest.ReadCommitted(t, c.Brokers(), "v")); !r.Exact() {
		t.Errorf("seeded topic v: %s", r)
	}
}

func TestNewClusterRejectsZeroBrokers(t *testing.T) {
	if c, err := kdelivertest.NewCluster(kdelivertest.WithBrokers(0)); err == nil {
		c.Close()
		t.Fatal("NewCluster with 0 brokers succeeded")
	}
}

// TestRecords: values count from From, keys are the values unless Keys
// says otherwise, and Timestamp is kept.
func TestRecords(t *testing.T) {
	at := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	recs := kdelivertest.Records("t", 4, kdelivertest.From(7), kdelivertest.Keys(2), kdelivertest.Timestamp(at))
	if got := kdelivertest.Values(recs); !slices.Equal(got, []string{"7", "8", "9", "10"}) {
		t.Errorf("values %v", got)
	}
	for i, want := range []string{"k1", "k0", "k1", "k0"} {
		if r := recs[i]; string(r.Key) != want || r.Topic != "t" || !r.Timestamp.Equal(at) {
			t.Errorf("record %d = key %q topic %q timestamp %v; want key %q, topic t, %v", i, r.Key, r.Topic, r.Timestamp, want, at)
		}
	}
	if r := kdelivertest.Records("t", 1)[0]; string(r.Key) != "0" || !r.Timestamp.IsZero() {
		t.Errorf("default record: key %q timestamp %v; want key \"0\", no timestamp", r.Key, r.Timestamp)
	}
}
