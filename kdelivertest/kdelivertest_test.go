package kdelivertest_test

import (
	"context"
	"slices"
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

// TestReadCommittedExact: the reader returns what committed transactions and
// plain producers wrote, not what an aborted transaction did, and in order.
func TestReadCommittedExact(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("t", 2))
	want := kdelivertest.Seed(t, c.Brokers(), "t", 20, kdelivertest.Keys(3))
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.TransactionalID("x"), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
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
