package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	segkafka "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

// Producer settings shared by every client where it has them: kgo's
// defaults, which kdeliver keeps.
const (
	linger        = 10 * time.Millisecond // kgo.ProducerLinger default
	batchBytes    = 1_000_000             // about kgo.ProducerBatchMaxBytes' default (1,000,012)
	maxBuffered   = 10_000                // kgo.MaxBufferedRecords default
	inFlight      = 5                     // per broker, idempotent
	deliveryLimit = 2 * time.Minute       // kdeliver.DefaultDeliveryTimeout
)

func produceSection(e *env) section {
	var topics []string
	sides := []side{
		{name: "raw kgo at-least-once", run: rawKgoProduce(kdeliver.AtLeastOnce)},
		{name: "kdeliver at-least-once", base: "raw kgo at-least-once", run: kdeliverProduce(kdeliver.AtLeastOnce)},
		{name: "sarama", base: "raw kgo at-least-once", run: saramaProduce,
			note: "idempotent, acks=all; sarama allows only 1 request in flight per broker with idempotence (Net.MaxOpenRequests=1)"},
		{name: "kafka-go", base: "raw kgo at-least-once", run: kafkaGoProduce,
			note: "acks=all, NOT idempotent (kafka-go has no idempotent producer): a retry may duplicate"},
		{name: "confluent-kafka-go", base: "raw kgo at-least-once", run: confluentProduce,
			note: "idempotent (acks=all, 5 in flight), librdkafka " + confluentVersion()},
		{name: "Java ProducerPerformance", base: "raw kgo at-least-once", run: javaProduce,
			note: "idempotent, acks=all; its own rate (send of the first record to the last ack); CPU minus a 1-record run's; values are random A–Z letters, partitioner Kafka's default (sticky: no keys)"},
		{name: "raw kgo at-most-once", run: rawKgoProduce(kdeliver.AtMostOnce)},
		{name: "kdeliver at-most-once", base: "raw kgo at-most-once", run: kdeliverProduce(kdeliver.AtMostOnce)},
	}
	if !confluentBuilt {
		sides = deleteSide(sides, "confluent-kafka-go")
	}
	if e.javaCP == "" {
		sides = deleteSide(sides, "Java ProducerPerformance")
	}
	// Each turn writes to a topic of its own, deleted after the turn so
	// that the disk does not fill.
	wrap := func(run func(ctx context.Context, e *env, n int) (result, error)) func(ctx context.Context, e *env, n int) (result, error) {
		return func(ctx context.Context, e *env, n int) (result, error) {
			topic := e.name("bench-produce")
			if err := e.c.CreateTopic(ctx, topic, partitions); err != nil {
				return result{}, fmt.Errorf("create topic %s: %w", topic, err)
			}
			topics = append(topics, topic)
			if err := waitTopic(ctx, e, topic); err != nil {
				return result{}, err
			}
			e.topic = topic
			return run(ctx, e, n)
		}
	}
	for i := range sides {
		sides[i].run = wrap(sides[i].run)
	}
	return section{name: "producer", records: e.cfg.produceRecords, sides: keep(e, sides), cleanup: func(ctx context.Context) {
		deleteTopics(ctx, e, topics...)
		topics = topics[:0]
	}}
}

// waitTopic waits until every partition of topic takes writes: a
// partition can be in the metadata before its leader accepts produce
// requests, and kafka-go fails such a produce instead of waiting (kgo backs
// off for seconds). It writes one record to each partition.
func waitTopic(ctx context.Context, e *env, topic string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }))
	if err != nil {
		return err
	}
	defer cl.Close()
	rs := make([]*kgo.Record, partitions)
	for p := range rs {
		rs[p] = &kgo.Record{Topic: topic, Partition: int32(p), Value: []byte("ready")}
	}
	if err := cl.ProduceSync(wctx, rs...).FirstErr(); err != nil {
		return fmt.Errorf("topic %s does not take writes: %w", topic, err)
	}
	return nil
}

func deleteSide(sides []side, name string) []side {
	out := sides[:0]
	for _, s := range sides {
		if s.name != name {
			out = append(out, s)
		}
	}
	return out
}

func deleteTopics(ctx context.Context, e *env, topics ...string) {
	if len(topics) == 0 {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := e.c.Admin().DeleteTopics(dctx, topics...); err != nil {
		fmt.Printf("warning: delete topics %v: %v\n", topics, err)
	}
}

// rawKgoOpts is what kdeliver's producer preset sets for sem (package
// internal/preset), on a raw client.
func rawKgoOpts(sem kdeliver.Semantics) []kgo.Opt {
	switch sem {
	case kdeliver.AtMostOnce:
		return []kgo.Opt{kgo.DisableIdempotentWrite(), kgo.RequiredAcks(kgo.NoAck()), kgo.RecordRetries(0),
			kgo.MaxProduceRequestsInflightPerBroker(1), kgo.MetadataMaxAge(10 * time.Second)}
	default:
		return []kgo.Opt{kgo.RequiredAcks(kgo.AllISRAcks()), kgo.AllowIdempotentProduceCancellation()}
	}
}

// record i of a turn: partitions taken in turn, the same for every Go client.
func (e *env) record(i int) *kgo.Record {
	return &kgo.Record{Topic: e.topic, Partition: int32(i % partitions), Value: e.payload.value(i)}
}

// acks counts the acknowledgements of a turn and keeps its first error.
type acks struct {
	n    atomic.Int64
	once sync.Once
	err  error
	done chan struct{}
	want int64
}

func newAcks(n int) *acks { return &acks{done: make(chan struct{}), want: int64(n)} }

func (a *acks) ack(err error) {
	if err != nil {
		a.once.Do(func() { a.err = err })
	}
	if a.n.Add(1) == a.want {
		close(a.done)
	}
}

func (a *acks) wait(ctx context.Context) error {
	select {
	case <-a.done:
	case <-ctx.Done():
		return fmt.Errorf("%d of %d records acknowledged: %w", a.n.Load(), a.want, ctx.Err())
	}
	if a.err != nil {
		return fmt.Errorf("a record failed: %w", a.err)
	}
	return nil
}

func rawKgoProduce(sem kdeliver.Semantics) func(ctx context.Context, e *env, n int) (result, error) {
	return func(ctx context.Context, e *env, n int) (result, error) {
		cl, err := kgo.NewClient(append(rawKgoOpts(sem), kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
		if err != nil {
			return result{}, err
		}
		defer cl.Close()
		a := newAcks(n)
		promise := func(_ *kgo.Record, err error) { a.ack(err) }
		m := startMeter()
		for i := range n {
			cl.Produce(ctx, e.record(i), promise)
		}
		if err := a.wait(ctx); err != nil {
			return result{}, err
		}
		return m.stop(n), nil
	}
}

func kdeliverProduce(sem kdeliver.Semantics) func(ctx context.Context, e *env, n int) (result, error) {
	return func(ctx context.Context, e *env, n int) (result, error) {
		p, err := producer.New(e.brokers, sem, kdeliver.WithLogger(slog.New(slog.DiscardHandler)),
			producer.WithKgoOpts(kgo.RecordPartitioner(kgo.ManualPartitioner())))
		if err != nil {
			return result{}, err
		}
		defer p.Close(context.Background())
		a := newAcks(n)
		done := func(_ *kgo.Record, err error) { a.ack(err) }
		m := startMeter()
		for i := range n {
			p.ProduceAsync(ctx, e.record(i), done)
		}
		if err := a.wait(ctx); err != nil {
			return result{}, err
		}
		return m.stop(n), nil
	}
}

func saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V4_0_0_0
	c.ClientID = "bench-sarama"
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1 // sarama refuses idempotence with more
	c.Producer.Retry.Max = 10
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.Flush.Frequency = linger
	c.Producer.Flush.Bytes = batchBytes
	c.Producer.MaxMessageBytes = batchBytes
	c.Producer.Compression = sarama.CompressionNone
	return c
}

func saramaProduce(ctx context.Context, e *env, n int) (result, error) {
	p, err := sarama.NewAsyncProducer(e.brokers, saramaConfig())
	if err != nil {
		return result{}, err
	}
	defer p.Close()
	a := newAcks(n)
	go func() {
		for range p.Successes() {
			a.ack(nil)
		}
	}()
	go func() {
		for pe := range p.Errors() {
			a.ack(pe.Err)
		}
	}()
	m := startMeter()
	for i := range n {
		msg := &sarama.ProducerMessage{Topic: e.topic, Partition: int32(i % partitions), Value: sarama.ByteEncoder(e.payload.value(i))}
		select {
		case p.Input() <- msg:
		case <-ctx.Done():
			return result{}, fmt.Errorf("after %d records: %w", i, ctx.Err())
		}
	}
	if err := a.wait(ctx); err != nil {
		return result{}, err
	}
	return m.stop(n), nil
}

// kafkaGoChunk is how many messages each kafka-go WriteMessages call takes
// (its API is per slice; one message per call costs it a batch each).
const kafkaGoChunk = 100

func kafkaGoProduce(ctx context.Context, e *env, n int) (result, error) {
	a := newAcks(n)
	// kafka-go's asynchronous writer buffers without bound: hold at most
	// maxBuffered records unacknowledged, as kgo does.
	sem := make(chan struct{}, maxBuffered)
	// A transport of its own: the default one is shared and caches the
	// metadata, which does not know a topic created since.
	tr := &segkafka.Transport{ClientID: "bench-kafka-go"}
	defer tr.CloseIdleConnections()
	w := &segkafka.Writer{
		Addr:         segkafka.TCP(e.brokers...),
		Transport:    tr,
		Topic:        e.topic,
		Balancer:     &segkafka.RoundRobin{},
		RequiredAcks: segkafka.RequireAll,
		Async:        true,
		BatchSize:    batchBytes / recordSize,
		BatchBytes:   batchBytes,
		BatchTimeout: linger,
		MaxAttempts:  10,
		Completion: func(msgs []segkafka.Message, err error) {
			for range msgs {
				a.ack(err)
				<-sem
			}
		},
	}
	defer w.Close()
	m := startMeter()
	msgs := make([]segkafka.Message, 0, kafkaGoChunk)
	for i := range n {
		msgs = append(msgs, segkafka.Message{Value: e.payload.value(i)})
		if len(msgs) == kafkaGoChunk || i == n-1 {
			for range msgs {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return result{}, fmt.Errorf("after %d records: %w", i, ctx.Err())
				}
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				return result{}, err
			}
			msgs = make([]segkafka.Message, 0, kafkaGoChunk)
		}
	}
	if err := a.wait(ctx); err != nil {
		return result{}, err
	}
	return m.stop(n), nil
}
