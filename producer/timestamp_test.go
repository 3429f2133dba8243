package producer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

// TestOldTimestampDelivered: a record that keeps an event time an hour old
// (a backlog being worked through) is delivered under every semantics, by
// Produce, ProduceAsync and inside a transaction, with its timestamp kept.
// franz-go's own RecordDeliveryTimeout counts from the record's Timestamp
// and failed such records at once ("records have timed out before they were
// able to be produced").
func TestOldTimestampDelivered(t *testing.T) {
	c := cluster(t)
	old := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	want := map[string]bool{}
	rec := func(v string) *kgo.Record {
		want[v] = true
		return &kgo.Record{Topic: topic, Value: []byte(v), Timestamp: old}
	}
	ctx := testCtx(t)
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
		var opts []producer.Option
		if sem == kdeliver.AtMostOnce {
			opts = append(opts, producer.WithLeaderAck()) // so that a refusal is seen
		}
		p := newProducer(t, c, sem, opts...)
		if err := p.Produce(ctx, rec(sem.String()+"-sync")); err != nil {
			t.Fatalf("%s Produce: %v", sem, err)
		}
		done := make(chan error, 1)
		p.ProduceAsync(ctx, rec(sem.String()+"-async"), func(_ *kgo.Record, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatalf("%s ProduceAsync: %v", sem, err)
		}
	}
	p := newTransactional(t, c, "old-ts")
	err := p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
		if err := tx.Produce(ctx, rec("exactly-once-sync")); err != nil {
			return err
		}
		var wg sync.WaitGroup
		wg.Add(1)
		tx.ProduceAsync(ctx, rec("exactly-once-async"), func(*kgo.Record, error) { wg.Done() })
		wg.Wait()
		return nil
	})
	if err != nil {
		t.Fatalf("Transact: %v", err)
	}
	got := readCommitted(t, c)
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d", len(got), len(want))
	}
	for _, r := range got {
		if !want[string(r.Value)] {
			t.Errorf("unexpected record %q", r.Value)
		}
		if !r.Timestamp.Equal(old) {
			t.Errorf("record %q has timestamp %v, want the one it was produced with, %v", r.Value, r.Timestamp, old)
		}
	}
}

// TestDeliveryTimeoutCountsFromHandOver: the delivery timeout still bounds a
// record that cannot be written, counted from the hand-over: the error says
// so and wraps kgo.ErrRecordTimeout, and the record's own Context (here a
// trace-like value) keeps its values.
func TestDeliveryTimeoutCountsFromHandOver(t *testing.T) {
	c := cluster(t)
	p := newProducer(t, c, kdeliver.AtLeastOnce, producer.WithDeliveryTimeout(time.Second))
	ctx := testCtx(t)
	faults := c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.NotEnoughReplicas, Count: -1})
	defer faults.Remove()
	type key struct{}
	own := context.WithValue(context.Background(), key{}, "mine")
	r := &kgo.Record{Topic: topic, Value: []byte("x"), Timestamp: time.Now().Add(-time.Hour), Context: own}
	err := p.Produce(ctx, r)
	if !errors.Is(err, kgo.ErrRecordTimeout) {
		t.Fatalf("got %v, want an error wrapping kgo.ErrRecordTimeout", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Produce returned only because the test context ended")
	}
	if r.Context == nil || r.Context.Value(key{}) != "mine" {
		t.Errorf("the record's Context lost its values: %v", r.Context)
	}
	t.Log(err)
}

// TestRawRecordDeliveryTimeoutRefused: kgo.RecordDeliveryTimeout is refused,
// with the reason, since it would bring back the failure above.
func TestRawRecordDeliveryTimeoutRefused(t *testing.T) {
	for _, sem := range kdeliver.All {
		raw := producer.WithKgoOpts(kgo.RecordDeliveryTimeout(time.Minute))
		var err error
		if sem == kdeliver.ExactlyOnce {
			_, err = producer.NewTransactional([]string{"127.0.0.1:9092"}, "x", raw)
		} else {
			_, err = producer.New([]string{"127.0.0.1:9092"}, sem, raw)
		}
		if !errors.Is(err, kdeliver.ErrInvalidConfig) || !strings.Contains(fmt.Sprint(err), "RecordDeliveryTimeout") {
			t.Errorf("%s: got %v, want a refusal naming kgo.RecordDeliveryTimeout", sem, err)
		}
	}
}

// TestMissingTopicNamed: a produce to a topic that does not exist fails
// with UNKNOWN_TOPIC_OR_PARTITION and advice that says so, not advice about
// broker health.
func TestMissingTopicNamed(t *testing.T) {
	c := cluster(t)
	for _, sem := range []kdeliver.Semantics{kdeliver.AtLeastOnce, kdeliver.AtMostOnce} {
		var opts []producer.Option
		if sem == kdeliver.AtMostOnce {
			opts = append(opts, producer.WithLeaderAck())
		}
		p, err := producer.New(c.Brokers(), sem, opts...)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = p.Produce(testCtx(t), &kgo.Record{Topic: "no-such-topic", Value: []byte("x")})
		t.Logf("%s: failed after %v: %v", sem, time.Since(start).Round(time.Millisecond), err)
		if !errors.Is(err, kerr.UnknownTopicOrPartition) || !strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "min.insync.replicas") {
			t.Errorf("%s: got %v, want UNKNOWN_TOPIC_OR_PARTITION saying the topic does not exist", sem, err)
		}
		_ = p.Close(context.Background())
	}
}
