package producer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

// lostAcks makes kfake write the next n produce requests and answer them with
// REQUEST_TIMED_OUT, as if the acknowledgement was lost on the way back.
func lostAcks(c *kdelivertest.Cluster, n int) *kfake.FaultHandle {
	return c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.RequestTimedOut, Count: n})
}

func values(n int) []string {
	vs := make([]string, n)
	for i := range vs {
		vs[i] = fmt.Sprintf("v%03d", i)
	}
	return vs
}

// TestLostAcksAtLeastOnceNoDuplicates: the broker wrote the records but the
// acknowledgements were lost; the producer retries, and idempotence makes
// the broker drop the repeated batches, so every record is there once.
func TestLostAcksAtLeastOnceNoDuplicates(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce)
	ctx := testCtx(t)
	faults := lostAcks(c, 3)
	for _, v := range values(30) {
		if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	if faults.Hits() != 3 {
		t.Fatalf("%d lost acks injected, want 3", faults.Hits())
	}
	got := countValues(readLog(t, c))
	for _, v := range values(30) {
		if got[v] != 1 {
			t.Errorf("%s read %d times, want 1", v, got[v])
		}
	}
	if len(got) != 30 {
		t.Errorf("read %d distinct values, want 30", len(got))
	}
}

// TestLostAcksExactlyOnceNoDuplicates: the same inside transactions, read
// back with read_committed.
func TestLostAcksExactlyOnceNoDuplicates(t *testing.T) {
	c := cluster(t)
	p := newTransactional(t, c, "lost-acks")
	ctx := testCtx(t)
	faults := lostAcks(c, 3)
	vs := values(30)
	for i := 0; i < len(vs); i += 10 {
		err := p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
			for _, v := range vs[i : i+10] {
				if err := tx.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if faults.Hits() != 3 {
		t.Fatalf("%d lost acks injected, want 3", faults.Hits())
	}
	for _, read := range []func(testing.TB, *kdelivertest.Cluster) []*kgo.Record{readCommitted, readLog} {
		got := countValues(read(t, c))
		for _, v := range vs {
			if got[v] != 1 {
				t.Errorf("%s read %d times, want 1", v, got[v])
			}
		}
	}
}

// TestLostAcksAtMostOnceNoRetry: with acks=1 the lost acknowledgement is
// reported as an error and the record is not re-sent: it is there once (the
// broker had written it), never twice. With acks=0 there is no answer to
// lose and nothing is re-sent either.
func TestLostAcksAtMostOnceNoRetry(t *testing.T) {
	for _, leader := range []bool{true, false} {
		t.Run(fmt.Sprintf("leaderAck=%v", leader), func(t *testing.T) {
			c := cluster(t)
			var opts []producer.Option
			if leader {
				opts = append(opts, producer.WithLeaderAck())
			}
			p := newProducer(t, c, kdeliver.AtMostOnce, opts...)
			ctx := testCtx(t)
			faults := lostAcks(c, 3)
			var failed int
			for _, v := range values(30) {
				if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}); err != nil {
					if !errors.Is(err, kerr.RequestTimedOut) && !errors.Is(err, kgo.ErrRecordRetries) {
						t.Fatalf("error %v, want REQUEST_TIMED_OUT or ErrRecordRetries", err)
					}
					failed++
				}
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// With acks=0 Flush returns once the requests are written; the
			// broker may not have read them yet.
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := faults.Wait(wctx, 3)
			cancel()
			if err != nil || faults.Hits() != 3 {
				t.Fatalf("%d lost acks injected, want 3", faults.Hits())
			}
			if leader && failed != 3 {
				t.Errorf("%d Produce calls failed, want 3 (one per lost ack)", failed)
			}
			got := countValues(readLog(t, c))
			for v, n := range got {
				if n > 1 {
					t.Errorf("%s read %d times: AtMostOnce must not duplicate", v, n)
				}
			}
			t.Logf("%d of 30 records read back, %d reported failed", len(got), failed)
		})
	}
}

// TestNotEnoughReplicasBounded: a partition that keeps refusing with
// NOT_ENOUGH_REPLICAS makes Produce fail with a DeliveryError after the
// delivery timeout instead of blocking.
func TestNotEnoughReplicasBounded(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce, producer.WithDeliveryTimeout(time.Second))
	ctx := testCtx(t)
	faults := c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.NotEnoughReplicas, Count: -1})
	defer faults.Remove()
	err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte("x")})
	var de *kdeliver.DeliveryError
	if !errors.As(err, &de) {
		t.Fatalf("got %v, want a *DeliveryError", err)
	}
	if !errors.Is(err, kerr.NotEnoughReplicas) && !errors.Is(err, kgo.ErrRecordTimeout) {
		t.Fatalf("got %v, want NOT_ENOUGH_REPLICAS or ErrRecordTimeout", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Produce returned only because the test context ended")
	}
	if de.Record.Topic != topic {
		t.Errorf("DeliveryError.Record.Topic = %q", de.Record.Topic)
	}
	t.Log(err)
}

// TestRefusedRecordFailsAsync: a record the broker refuses for good reaches
// the ProduceAsync callback as a DeliveryError.
func TestRefusedRecordFailsAsync(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce)
	ctx := testCtx(t)
	c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.InvalidRecord})
	done := make(chan error, 1)
	p.ProduceAsync(ctx, &kgo.Record{Topic: topic, Value: []byte("bad")}, func(_ *kgo.Record, err error) { done <- err })
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-done
	var de *kdeliver.DeliveryError
	if !errors.As(err, &de) || !errors.Is(err, kerr.InvalidRecord) {
		t.Fatalf("got %v, want a DeliveryError for INVALID_RECORD", err)
	}
}

// TestLostAcksDuplicateWithoutIdempotence is the control for the tests above:
// the same lost acknowledgements make a plain retrying producer without
// idempotence (what AtLeastOnce would be without its preset) write
// duplicates, so "no duplicates" above is the preset's doing.
func TestLostAcksDuplicateWithoutIdempotence(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.DisableIdempotentWrite(),
		kgo.MetadataMinAge(100*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	lostAcks(c, 3)
	for _, v := range values(30) {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	dups := 0
	for _, n := range countValues(readLog(t, c)) {
		dups += n - 1
	}
	if dups == 0 {
		t.Fatal("no duplicates without idempotence: the fault does not simulate lost acks")
	}
}
