package consumer

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// produceTxn writes the sequence numbers from..to-1 to topic "t" in one
// transaction and commits it, or aborts it when commit is false.
func produceTxn(t *testing.T, addrs []string, from, to int, commit bool) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic("t"),
		kgo.TransactionalID("writer"), kgo.MetadataMinAge(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		s := []byte(strconv.Itoa(i))
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: s, Value: s}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		t.Fatal(err)
	}
}

// TestWithReadCommitted: a transactional writer aborts records 0..99 and
// commits 100..199 (as eos.Session does when it redoes a transaction). An
// AtLeastOnce consumer reads the aborted ones too unless it was built with
// WithReadCommitted, and AtMostOnce honours the option as well.
func TestWithReadCommitted(t *testing.T) {
	cl := newCluster(t, 3)
	produceTxn(t, cl.Brokers(), 0, 100, false)
	produceTxn(t, cl.Brokers(), 100, 200, true)
	for _, tc := range []struct {
		name string
		sem  kdeliver.Semantics
		opts []Option
		want int // distinct records read
	}{
		{"at-least-once read_uncommitted", kdeliver.AtLeastOnce, nil, 200},
		{"at-least-once read_committed", kdeliver.AtLeastOnce, []Option{WithReadCommitted()}, 100},
		{"at-most-once read_committed", kdeliver.AtMostOnce, []Option{WithReadCommitted()}, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustNew(t, cl, tc.name, tc.sem, tc.opts...)
			l := newLedger()
			r := start(c, func(_ context.Context, rec *kgo.Record) error { l.add(rec); return nil })
			// In every partition the aborted records come before the
			// committed ones: once all committed ones were handled, the
			// consumer has gone past every aborted one.
			waitFor(t, "the committed records", func() bool {
				l.mu.Lock()
				defer l.mu.Unlock()
				n := 0
				for v := range l.seen {
					if v >= 100 {
						n++
					}
				}
				return n == 100
			})
			if err := r.stop(t); err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
			if got := l.distinct(); got != tc.want {
				t.Fatalf("read %d distinct records, want %d", got, tc.want)
			}
			for n := range l.seen {
				if tc.want == 100 && n < 100 {
					t.Fatalf("read %d, a record of the aborted transaction", n)
				}
			}
		})
	}
}

// TestWithReadCommittedRefusesRawReadUncommitted: the raw option that undoes
// WithReadCommitted is refused at construction.
func TestWithReadCommittedRefusesRawReadUncommitted(t *testing.T) {
	cl := newCluster(t, 1)
	_, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce,
		WithReadCommitted(), WithKgoOpts(kgo.FetchIsolationLevel(kgo.ReadUncommitted())))
	if err == nil {
		t.Fatal("New accepted WithReadCommitted with a raw read_uncommitted option")
	}
}
