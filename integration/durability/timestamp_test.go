package durability

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/producer"
)

// Bug 1 of issue 14, producer, on real Kafka: a record timestamped an hour
// ago is delivered under each semantics, well within the default 2-minute
// delivery timeout, and keeps its timestamp. On b671d00 AtLeastOnce and
// ExactlyOnce set kgo.RecordDeliveryTimeout, which franz-go counts from the
// record's Timestamp, so the record fails at once ("records have timed out
// before they were able to be produced"). AtMostOnce never had a delivery
// timeout: its subtest guards against one being added.
func TestOldTimestampProducer(t *testing.T) {
	c := integration.Start(t, integration.WithNodes(1))
	requireReal(t, c, "the delivery timeout is the client's, but the timestamp kept must be the broker's")
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce, kdeliver.ExactlyOnce} {
		t.Run(sem.String(), func(t *testing.T) {
			ctx := timeout(t, 2*time.Minute)
			topic := topicName(t)
			if err := c.CreateTopic(ctx, topic, 1); err != nil {
				t.Fatal(err)
			}
			// ExactlyOnce writes only inside a transaction, through a
			// producer.Transactional.
			var produce func(context.Context, *kgo.Record) error
			if sem == kdeliver.ExactlyOnce {
				tp, err := producer.NewTransactional(c.Brokers(), topic+"-txn")
				if err != nil {
					t.Fatal(err)
				}
				defer tp.Close(context.Background())
				produce = func(ctx context.Context, rec *kgo.Record) error {
					return tp.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error { return tx.Produce(ctx, rec) })
				}
			} else {
				p, err := producer.New(c.Brokers(), sem)
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close(context.Background())
				produce = p.Produce
			}
			ts := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			rec := &kgo.Record{Topic: topic, Value: []byte("old:" + sem.String()), Timestamp: ts}
			// The bound is a liveness bound for a healthy single node, far
			// below the delivery timeout.
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			began := time.Now()
			err := produce(pctx, rec)
			if err != nil {
				t.Fatalf("producing a record timestamped an hour ago failed after %.2fs: %v", time.Since(began).Seconds(), err)
			}
			// acks=0 returns before the broker wrote the record: read
			// until it is there.
			var got []*kgo.Record
			err = waitFor(ctx, "the record to be readable", 100*time.Millisecond, func() (bool, string, error) {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				got, err = c.ReadCommitted(rctx, topic)
				if err != nil {
					return false, err.Error(), nil
				}
				return len(got) > 0, "nothing read yet", nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || string(got[0].Value) != string(rec.Value) {
				t.Fatalf("read %d records, want the one produced", len(got))
			}
			if !got[0].Timestamp.Equal(ts) {
				t.Errorf("the record has timestamp %v, want the one it was produced with, %v", got[0].Timestamp, ts)
			}
			t.Logf("delivered in %.2fs with its timestamp %v kept", time.Since(began).Seconds(), got[0].Timestamp)
		})
	}
}
