package producer_test

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

// ctor builds a producer one way or the other, for tables that check both
// constructors.
type ctor struct {
	name string
	new  func(brokers []string, opts ...producer.Option) (producer.Sender, error)
}

// plain is producer.New with sem.
func plain(sem kdeliver.Semantics) ctor {
	return ctor{"New(" + sem.String() + ")", func(brokers []string, opts ...producer.Option) (producer.Sender, error) {
		p, err := producer.New(brokers, sem, opts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	}}
}

// txn is producer.NewTransactional with the transactional ID id.
func txn(id string) ctor {
	return ctor{"NewTransactional(" + id + ")", func(brokers []string, opts ...producer.Option) (producer.Sender, error) {
		p, err := producer.NewTransactional(brokers, id, opts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	}}
}

// A consumer or eos option, or kdeliver.WithBackoff, passed to New does not
// compile: the root package's TestMisuseDoesNotCompile checks that.
func TestNewRefuses(t *testing.T) {
	ok := []string{"127.0.0.1:9092"}
	amo, alo := plain(kdeliver.AtMostOnce), plain(kdeliver.AtLeastOnce)
	tests := []struct {
		name    string
		ctor    ctor
		brokers []string
		opts    []producer.Option
		want    []string // substrings, one per expected problem
	}{
		{"invalid semantics", plain(0), ok, nil, []string{"not valid"}},
		{"exactly-once through New", plain(kdeliver.ExactlyOnce), ok, nil, []string{"use producer.NewTransactional(brokers, transactionalID) instead of producer.New"}},
		{"exactly-once through New with a nil option", plain(kdeliver.ExactlyOnce), ok, []producer.Option{nil}, []string{"use producer.NewTransactional", "option 1 of 1 is nil"}},
		{"empty transactional ID", txn(""), ok, nil, []string{"needs a transactional ID, unique and stable per producer instance: pass a non-empty transactionalID to producer.NewTransactional"}},
		{"leader ack under at-least-once", alo, ok, []producer.Option{producer.WithLeaderAck()}, []string{"acks=1"}},
		{"leader ack under exactly-once", txn("x"), ok, []producer.Option{producer.WithLeaderAck()}, []string{"acks=1"}},
		{"delivery timeout under at-most-once", amo, ok, []producer.Option{producer.WithDeliveryTimeout(5e9)}, []string{"does not retry"}},
		{"delivery timeout below 1s", alo, ok, []producer.Option{producer.WithDeliveryTimeout(5e8)}, []string{"below the 1s minimum"}},
		{"delivery timeout below 1s under exactly-once", txn("x"), ok, []producer.Option{producer.WithDeliveryTimeout(5e8)}, []string{"below the 1s minimum"}},
		{"delivery timeout zero", alo, ok, []producer.Option{producer.WithDeliveryTimeout(0)}, []string{"WithDeliveryTimeout(0)"}},
		{"negative delivery timeout", alo, ok, []producer.Option{producer.WithDeliveryTimeout(-1)}, []string{"below the 1s minimum"}},
		{"no brokers", alo, nil, nil, []string{"no brokers"}},
		{"no brokers, transactional", txn("x"), nil, nil, []string{"no brokers"}},
		{"blank broker", alo, []string{"127.0.0.1:9092", " "}, nil, []string{"broker 2 of 2 is blank"}},
		{"blank broker, transactional", txn("x"), []string{" ", "127.0.0.1:9092"}, nil, []string{"broker 1 of 2 is blank"}},
		{"nil option", alo, ok, []producer.Option{nil}, []string{"option 1 of 1 is nil"}},
		{"nil option, transactional", txn("x"), ok, []producer.Option{producer.WithMessageIDs(), nil}, []string{"option 2 of 2 is nil"}},
		{"zero root option", alo, ok, []producer.Option{kdeliver.Option{}}, []string{"an empty option"}},
		{"nil logger", txn("x"), ok, []producer.Option{kdeliver.WithLogger(nil)}, []string{"kdeliver.WithLogger(nil)"}},
		{"empty client ID", amo, ok, []producer.Option{kdeliver.WithClientID("")}, []string{"kdeliver.WithClientID(\"\")"}},
		{"raw leader ack under at-least-once", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.LeaderAck()))}, []string{"acks=all"}},
		{"raw no ack under exactly-once", txn("x"), ok, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.NoAck()))}, []string{"acks=all"}},
		{"raw idempotence off under at-least-once", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.DisableIdempotentWrite())}, []string{"disabled idempotence"}},
		{"raw record retries under at-least-once", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.RecordRetries(3))}, []string{"capped record retries"}},
		{"raw record retries under exactly-once", txn("x"), ok, []producer.Option{producer.WithKgoOpts(kgo.RecordRetries(3))}, []string{"capped record retries"}},
		{"raw transactional ID under at-least-once", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.TransactionalID("x"))}, []string{"transactional"}},
		{"raw transactional ID change under exactly-once", txn("x"), ok, []producer.Option{producer.WithKgoOpts(kgo.TransactionalID("y"))}, []string{"changed the transactional ID"}},
		{"raw transactional ID under at-most-once", amo, ok, []producer.Option{producer.WithKgoOpts(kgo.TransactionalID("x"))}, []string{"AtMostOnce does not use"}},
		{"raw all-ISR acks under at-most-once", amo, ok, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.AllISRAcks()))}, []string{"AtMostOnce uses acks=0"}},
		{"raw leader ack under at-most-once without WithLeaderAck", amo, ok, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.LeaderAck()))}, []string{"use producer.WithLeaderAck"}},
		{"raw retries under at-most-once", amo, ok, []producer.Option{producer.WithKgoOpts(kgo.RecordRetries(5))}, []string{"enabled record retries"}},
		{"raw in-flight under at-least-once", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.MaxProduceRequestsInflightPerBroker(3))}, []string{"does not take (it keeps up to 5"}},
		{"raw consumer option", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.ConsumeTopics("x"))}, []string{"raw consumer option"}},
		{"raw consumer option, transactional", txn("x"), ok, []producer.Option{producer.WithKgoOpts(kgo.ConsumerGroup("g"))}, []string{"raw consumer option"}},
		{"raw manual flushing", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.ManualFlushing())}, []string{"ManualFlushing"}},
		{"raw cancellation under exactly-once", txn("x"), ok, []producer.Option{producer.WithKgoOpts(kgo.AllowIdempotentProduceCancellation())}, []string{"refused by franz-go (cannot allow idempotent produce cancellation"}},
		// Issue 14: a raw option kgo refuses hid the problems of the
		// others, and one kgo refuses got franz-go's words only.
		{"leader ack, raw retries and a raw consumer option", amo, ok, []producer.Option{producer.WithLeaderAck(), producer.WithKgoOpts(kgo.RecordRetries(1), kgo.DisableAutoCommit())},
			[]string{"enabled record retries", "raw option 2 of 2 was refused by franz-go (invalid autocommit options"}},
		{"leader ack under at-least-once, raw retries", alo, ok, []producer.Option{producer.WithLeaderAck(), producer.WithKgoOpts(kgo.RecordRetries(1), kgo.DisableAutoCommit())},
			[]string{"leader-only acks", "capped record retries", "raw option 2 of 2 was refused by franz-go"}},
		{"raw leader acks under at-least-once", alo, ok, []producer.Option{producer.WithKgoOpts(kgo.RequiredAcks(kgo.LeaderAck()))},
			[]string{"a raw option set acks=1, but at-least-once needs acks=all: remove the kgo.RequiredAcks option"}},
		{"everything at once", txn(""), []string{""}, []producer.Option{producer.WithLeaderAck(), nil, producer.WithDeliveryTimeout(1), producer.WithKgoOpts(kgo.RecordRetries(1)), kdeliver.WithLogger(nil)},
			[]string{"needs a transactional ID", "acks=1", "below the 1s minimum", "is blank", "option 2 of 5 is nil", "capped record retries", "WithLogger(nil)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.ctor.new(tt.brokers, tt.opts...)
			if err == nil {
				_ = p.Close(t.Context())
				t.Fatalf("%s succeeded, want an error", tt.ctor.name)
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
			if c := kdeliver.ClassOf(err); c != kdeliver.Fatal {
				t.Errorf("ClassOf = %s, want fatal", c)
			}
		})
	}
}

func TestNewAccepts(t *testing.T) {
	ok := []string{"127.0.0.1:9092"}
	tests := []struct {
		name string
		ctor ctor
		opts []producer.Option
	}{
		{"at-most-once", plain(kdeliver.AtMostOnce), nil},
		{"at-most-once leader ack", plain(kdeliver.AtMostOnce), []producer.Option{producer.WithLeaderAck()}},
		{"at-least-once", plain(kdeliver.AtLeastOnce), []producer.Option{producer.WithDeliveryTimeout(5e9), producer.WithMessageIDs()}},
		{"exactly-once", txn("x"), nil},
		{"exactly-once with options", txn("x"), []producer.Option{producer.WithDeliveryTimeout(5e9), producer.WithMessageIDs(), kdeliver.WithClientID("me")}},
		{"raw tuning", plain(kdeliver.AtLeastOnce), []producer.Option{producer.WithKgoOpts(kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))}},
		{"root options", plain(kdeliver.AtLeastOnce), []producer.Option{kdeliver.WithClientID("me"), kdeliver.WithLogger(slog.New(slog.DiscardHandler))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.ctor.new(ok, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
