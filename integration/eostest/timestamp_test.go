package eostest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
)

// produceErrors counts a client's produce errors by text (a kgo hook), so a
// test can say why outputs were not written: the session itself only counts
// the aborts.
type produceErrors struct {
	mu    sync.Mutex
	texts []string // in order of first appearance
	n     map[string]int
}

func (h *produceErrors) OnProduceRecordUnbuffered(_ *kgo.Record, err error) {
	if err == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]int{}
	}
	if h.n[err.Error()] == 0 {
		h.texts = append(h.texts, err.Error())
	}
	h.n[err.Error()]++
}

func (h *produceErrors) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "produce errors:")
	if len(h.texts) == 0 {
		b.WriteString(" none")
	}
	for _, e := range h.texts {
		fmt.Fprintf(&b, " %dx %q;", h.n[e], e)
	}
	return b.String()
}

// Bug 1 of issue 14 on real Kafka: input records timestamped an hour ago
// are copied by an eos session whose outputs keep the input's timestamp,
// and one input record fails every time and is dead-lettered (max attempts
// 2). Every output and the dead letter must be committed with the input's
// timestamp kept. On b671d00 the session's client has
// kgo.RecordDeliveryTimeout (2 minutes), which franz-go counts from a
// batch's first record's Timestamp, so every output fails at once ("records
// have timed out before they were able to be produced") and no transaction
// commits.
func TestOldTimestamps(t *testing.T) {
	const (
		n      = 200
		bound  = 60 * time.Second // the copy takes a few seconds
		failed = "v:57"
	)
	cluster.RequireReal(t)
	ctx := timeout(t, 5*time.Minute)
	in, out := topics(t, ctx, 2, 2)
	dlq := in + "-dlq"
	if err := cluster.CreateTopic(ctx, dlq, 1); err != nil {
		t.Fatal(err)
	}
	// Seed n records, each with its own timestamp about an hour ago
	// (milliseconds: what Kafka stores).
	hourAgo := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	stamps := map[string]time.Time{}
	var want []string
	recs := make([]*kgo.Record, n)
	for i := range n {
		v := "v:" + strconv.Itoa(i)
		stamps[v] = hourAgo.Add(time.Duration(i) * time.Millisecond)
		recs[i] = &kgo.Record{Topic: in, Key: []byte(v), Value: []byte(v), Timestamp: stamps[v]}
		if v != failed {
			want = append(want, v)
		}
	}
	if err := cluster.Client(t).ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("seed: %v", err)
	}

	perrs := &produceErrors{}
	s, err := eos.New(cluster.Brokers(), in+"-g", []string{in}, in+"-copier",
		eos.WithOutputTopic(out),
		eos.WithDeadLetterTopic(dlq),
		kdeliver.WithMaxAttempts(2),
		kdeliver.WithBackoff(50*time.Millisecond, 200*time.Millisecond),
		eos.WithTransactionTimeout(8*time.Second),
		eos.WithSessionTimeout(10*time.Second),
		eos.WithKgoOpts(kgo.WithHooks(perrs)),
	)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- s.Run(rctx, func(_ context.Context, r *kgo.Record, emit func(*kgo.Record)) error {
			if string(r.Value) == failed {
				return errors.New("this record always fails")
			}
			emit(&kgo.Record{Key: r.Key, Value: r.Value, Timestamp: r.Timestamp})
			return nil
		})
	}()
	began := time.Now()
	for s.Stats().Records < n && time.Since(began) < bound {
		time.Sleep(50 * time.Millisecond)
	}
	st := s.Stats()
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	t.Logf("after %.1fs: %+v; %s", time.Since(began).Seconds(), st, perrs)
	if st.Records < n {
		t.Errorf("%d of %d input records committed within %v (committed %d transactions, aborted %d, clients replaced %d): outputs timestamped an hour ago were not delivered",
			st.Records, n, bound, st.Committed, st.Aborted, st.Recreated)
	}
	if st.DeadLettered != 1 {
		t.Errorf("Stats().DeadLettered = %d, want 1", st.DeadLettered)
	}

	for _, c := range []struct {
		topic string
		want  []string
	}{{out, want}, {dlq, []string{failed}}} {
		a, got := readAudit(t, ctx, c.topic, c.want)
		t.Logf("%s, read_committed: %s", c.topic, a)
		if !a.Exact() {
			t.Errorf("%s is not what it should be: %s", c.topic, a)
		}
		var changed int
		for _, r := range got {
			if want, ok := stamps[string(r.Value)]; ok && !r.Timestamp.Equal(want) {
				if changed == 0 {
					t.Errorf("%s: %s has timestamp %v, want the input's %v", c.topic, r.Value, r.Timestamp, want)
				}
				changed++
			}
		}
		if changed > 0 {
			t.Errorf("%s: %d of %d records did not keep the input's timestamp", c.topic, changed, len(got))
		}
	}
}
