package producer_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/shared"
	"github.com/kdeliver/kdeliver/producer"
)

// foreignOption stands for another package's option (a consumer option).
type foreignOption struct{}

func (foreignOption) Apply(c shared.Config) {
	c.Reject("a consumer option was passed to another package's constructor")
}

func TestNewRefuses(t *testing.T) {
	ok := []string{"127.0.0.1:9092"}
	tests := []struct {
		name    string
		brokers []string
		sem     kdeliver.Semantics
		opts    []producer.Option
		want    []string // substrings, one per expected problem
	}{
		{"invalid semantics", ok, 0, nil, []string{"not valid"}},
		{"exactly-once without ID", ok, kdeliver.ExactlyOnce, nil, []string{"needs a transactional ID"}},
		{"empty transactional ID", ok, kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("")}, []string{"empty ID", "needs a transactional ID"}},
		{"transactional ID under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithTransactionalID("x")}, []string{"only used by ExactlyOnce"}},
		{"transactional ID under at-most-once", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithTransactionalID("x")}, []string{"only used by ExactlyOnce"}},
		{"leader ack under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithLeaderAck()}, []string{"acks=1"}},
		{"leader ack under exactly-once", ok, kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("x"), producer.WithLeaderAck()}, []string{"acks=1"}},
		{"delivery timeout under at-most-once", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithDeliveryTimeout(5e9)}, []string{"does not retry"}},
		{"delivery timeout below 1s", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithDeliveryTimeout(5e8)}, []string{"below the 1s minimum"}},
		{"delivery timeout zero", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithDeliveryTimeout(0)}, []string{"WithDeliveryTimeout(0)"}},
		{"negative delivery timeout", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithDeliveryTimeout(-1)}, []string{"below the 1s minimum"}},
		{"no brokers", nil, kdeliver.AtLeastOnce, nil, []string{"no brokers"}},
		{"blank broker", []string{"127.0.0.1:9092", " "}, kdeliver.AtLeastOnce, nil, []string{"broker 2 of 2 is blank"}},
		{"nil option", ok, kdeliver.AtLeastOnce, []producer.Option{nil}, []string{"nil option"}},
		{"consumer option", ok, kdeliver.AtLeastOnce, []producer.Option{foreignOption{}}, []string{"consumer option"}},
		{"raw leader ack under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.LeaderAck()))}, []string{"acks=all"}},
		{"raw no ack under exactly-once", ok, kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("x"), producer.WithKgoOpts(kgo.RequiredAcks(kgo.NoAck()))}, []string{"acks=all"}},
		{"raw idempotence off under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.DisableIdempotentWrite())}, []string{"disabled idempotence"}},
		{"raw record retries under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.RecordRetries(3))}, []string{"capped record retries"}},
		{"raw record retries under exactly-once", ok, kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("x"), producer.WithKgoOpts(kgo.RecordRetries(3))}, []string{"capped record retries"}},
		{"raw transactional ID under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.TransactionalID("x"))}, []string{"transactional"}},
		{"raw transactional ID change under exactly-once", ok, kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("x"), producer.WithKgoOpts(kgo.TransactionalID("y"))}, []string{"changed the transactional ID"}},
		{"raw transactional ID under at-most-once", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithKgoOpts(kgo.TransactionalID("x"))}, []string{"AtMostOnce does not use"}},
		{"raw all-ISR acks under at-most-once", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.AllISRAcks()))}, []string{"AtMostOnce uses acks=0"}},
		{"raw leader ack under at-most-once without WithLeaderAck", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.LeaderAck()))}, []string{"use producer.WithLeaderAck"}},
		{"raw retries under at-most-once", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithKgoOpts(kgo.RecordRetries(5))}, []string{"enabled record retries"}},
		{"raw in-flight under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.MaxProduceRequestsInflightPerBroker(3))}, []string{"does not take (it keeps up to 5"}},
		{"raw consumer option", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.ConsumeTopics("x"))}, []string{"raw consumer option"}},
		{"raw manual flushing", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.ManualFlushing())}, []string{"ManualFlushing"}},
		{"raw cancellation under exactly-once", ok, kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("x"), producer.WithKgoOpts(kgo.AllowIdempotentProduceCancellation())}, []string{"refused by franz-go (cannot allow idempotent produce cancellation"}},
		// Issue 14: a raw option kgo refuses hid the problems of the
		// others, and one kgo refuses got franz-go's words only.
		{"leader ack, raw retries and a raw consumer option", ok, kdeliver.AtMostOnce, []producer.Option{producer.WithLeaderAck(), producer.WithKgoOpts(kgo.RecordRetries(1), kgo.DisableAutoCommit())},
			[]string{"enabled record retries", "raw option 2 of 2 was refused by franz-go (invalid autocommit options"}},
		{"leader ack under at-least-once, raw retries", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithLeaderAck(), producer.WithKgoOpts(kgo.RecordRetries(1), kgo.DisableAutoCommit())},
			[]string{"leader-only acks", "capped record retries", "raw option 2 of 2 was refused by franz-go"}},
		{"raw leader acks under at-least-once", ok, kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.LeaderAck()))},
			[]string{"a raw option set acks=1, but at-least-once needs acks=all: remove the kgo.RequiredAcks option"}},
		{"everything at once", []string{""}, kdeliver.ExactlyOnce, []producer.Option{producer.WithLeaderAck(), foreignOption{}, producer.WithDeliveryTimeout(1), producer.WithKgoOpts(kgo.RecordRetries(1))},
			[]string{"needs a transactional ID", "acks=1", "below the 1s minimum", "is blank", "consumer option", "capped record retries"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := producer.New(tt.brokers, tt.sem, tt.opts...)
			if err == nil {
				_ = p.Close(t.Context())
				t.Fatal("New succeeded, want an error")
			}
			if !errors.Is(err, kdeliver.ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			var ce *kdeliver.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *ConfigError", err)
			}
			if len(ce.Problems) != len(tt.want) {
				t.Errorf("%d problems, want %d:\n%v", len(ce.Problems), len(tt.want), err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestNewAccepts(t *testing.T) {
	ok := []string{"127.0.0.1:9092"}
	tests := []struct {
		name string
		sem  kdeliver.Semantics
		opts []producer.Option
	}{
		{"at-most-once", kdeliver.AtMostOnce, nil},
		{"at-most-once leader ack", kdeliver.AtMostOnce, []producer.Option{producer.WithLeaderAck()}},
		{"at-least-once", kdeliver.AtLeastOnce, []producer.Option{producer.WithDeliveryTimeout(5e9), producer.WithMessageIDs()}},
		{"exactly-once", kdeliver.ExactlyOnce, []producer.Option{producer.WithTransactionalID("x")}},
		{"raw tuning", kdeliver.AtLeastOnce, []producer.Option{producer.WithKgoOpts(kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))}},
		{"root options", kdeliver.AtLeastOnce, []producer.Option{kdeliver.WithClientID("me")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := producer.New(ok, tt.sem, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
