package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// seed starts an embedded cluster with topic "orders" holding values.
func seed(values ...string) (*kdelivertest.Cluster, error) {
	cluster, err := kdelivertest.NewCluster(kdelivertest.WithTopic("orders", 1))
	if err != nil {
		return nil, err
	}
	var recs []*kgo.Record
	for _, v := range values {
		recs = append(recs, &kgo.Record{Value: []byte(v)})
	}
	if err := produce(cluster.Brokers(), recs...); err != nil {
		cluster.Close()
		return nil, err
	}
	return cluster, nil
}

// produce writes recs to topic "orders".
func produce(brokers []string, recs ...*kgo.Record) error {
	p, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("orders"))
	if err != nil {
		return err
	}
	defer p.Close()
	return p.ProduceSync(context.Background(), recs...).FirstErr()
}

// An at-least-once consumer: each record's offset is committed after its
// handler returns nil. Cancelling Run's ctx stops it cleanly.
func Example() {
	cluster, err := seed("order-1", "order-2", "order-3")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := consumer.New(cluster.Brokers(), "billing", []string{"orders"}, kdeliver.AtLeastOnce)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		fmt.Printf("charged %s\n", rec.Value)
		if rec.Offset == 2 {
			cancel() // stop after the third record: it is still committed
		}
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// charged order-1
	// charged order-2
	// charged order-3
	// Run returned <nil>
}

// New refuses a configuration with every problem listed at once.
func ExampleNew() {
	_, err := consumer.New(nil, "", []string{"orders"}, kdeliver.ExactlyOnce,
		consumer.WithMaxPollRecords(0))
	fmt.Println(errors.Is(err, kdeliver.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true
	// kdeliver: invalid exactly-once consumer configuration:
	//   - no brokers: pass at least one host:port to bootstrap from
	//   - the consumer group is empty: name the group whose offsets record progress
	//   - ExactlyOnce needs the side effect tied to the offsets: use consumer.NewWithGuard(brokers, group, topics, guard) (a dedup.Guard skips redelivered records), consumer.NewWithSink(brokers, group, topics, sink) (the offsets commit in the sink's own transaction, e.g. pgstore.Sink), or, Kafka to Kafka, eos.New (the offsets commit in the output transaction)
	//   - WithMaxPollRecords(0): use at least 1
}

// Skip gives up on a record that can never succeed: it is committed past
// instead of being retried for ever.
func ExampleSkip() {
	cluster, err := seed("order-1", "garbage", "order-3")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := consumer.New(cluster.Brokers(), "billing", []string{"orders"}, kdeliver.AtLeastOnce)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		if rec.Offset == 2 {
			cancel()
		}
		if !strings.HasPrefix(string(rec.Value), "order-") {
			fmt.Printf("skipping %s\n", rec.Value)
			return consumer.Skip(errors.New("not an order"))
		}
		fmt.Printf("charged %s\n", rec.Value)
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// charged order-1
	// skipping garbage
	// charged order-3
	// Run returned <nil>
}

// An exactly-once consumer with a dedup guard: a message the producer sent
// twice (same message ID, two records) is charged once. A redelivery after
// a crash or rebalance is skipped the same way.
func ExampleNewWithGuard() {
	cluster, err := seed()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	order := func(id string) *kgo.Record {
		return &kgo.Record{Value: []byte(id), Headers: []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: []byte(id)}}}
	}
	if err := produce(cluster.Brokers(), order("order-1"), order("order-1"), order("order-2")); err != nil {
		fmt.Println(err)
		return
	}

	// A shared store (redisstore, pgstore) in production; memory here.
	guard, err := dedup.NewGuard(dedup.NewMemory(100_000), "billing")
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := consumer.NewWithGuard(cluster.Brokers(), "billing", []string{"orders"}, guard)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		fmt.Printf("charged %s (offset %d)\n", rec.Value, rec.Offset)
		if rec.Offset == 2 {
			cancel()
		}
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// charged order-1 (offset 0)
	// charged order-2 (offset 2)
	// Run returned <nil>
}

// An exactly-once consumer into a sink that stores the offsets with the
// rows: a second consumer resumes where the sink's table ends, without
// reading a record again, and nothing is committed to Kafka.
func ExampleNewWithSink() {
	cluster, err := seed("order-1", "order-2", "order-3")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	table := &tableSink{next: map[int32]int64{}}
	consume := func(until int) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		table.onWrite = func(rows int) {
			if rows == until {
				cancel()
			}
		}
		c, err := consumer.NewWithSink(cluster.Brokers(), "billing", []string{"orders"},
			table) // a new sink per consumer in production (pgstore.NewSink)
		if err != nil {
			return err
		}
		return c.Run(ctx) // no handler: the sink's Write is the side effect
	}
	if err := consume(3); err != nil {
		fmt.Println(err)
		return
	}
	if err := produce(cluster.Brokers(), &kgo.Record{Value: []byte("order-4")}); err != nil {
		fmt.Println(err)
		return
	}
	if err := consume(4); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("rows:", table.rows)
	fmt.Println("stored offset:", table.next[0])
	// Output:
	// rows: [order-1 order-2 order-3 order-4]
	// stored offset: 4
}

// tableSink is a toy consumer.Sink whose "database" is this struct: rows and
// offsets change together under one lock, as in one transaction. A real
// sink (pgstore.Sink) also claims each partition with an epoch on Assign
// and refuses writes from a member that lost it (consumer/sinktest checks
// that, and sinktest.Memory does it in memory).
type tableSink struct {
	mu      sync.Mutex
	rows    []string
	next    map[int32]int64 // offset after the last written record
	onWrite func(rows int)
}

func (s *tableSink) Assign(_ context.Context, a consumer.Assignment) (map[string]map[int32]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[int32]int64{}
	for t, parts := range a.Partitions {
		out[t] = map[int32]int64{}
		for _, p := range parts {
			if next, ok := s.next[p]; ok {
				out[t][p] = next
			}
		}
	}
	return out, nil
}

func (s *tableSink) Write(_ context.Context, recs []*kgo.Record) error {
	s.mu.Lock()
	for _, r := range recs {
		if r.Offset >= s.next[r.Partition] {
			s.rows = append(s.rows, string(r.Value))
			s.next[r.Partition] = r.Offset + 1
		}
	}
	rows := len(s.rows)
	s.mu.Unlock()
	s.onWrite(rows)
	return nil
}

func (s *tableSink) Revoke(map[string][]int32) {}

// A concurrent consumer in key mode: up to 8 handlers at once, the records
// of each key in offset order, different keys in parallel. Offsets commit
// gap-free every commit interval, on revoke and when Run stops.
func Example_concurrent() {
	cluster, err := kdelivertest.NewCluster(kdelivertest.WithTopic("orders", 1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	var recs []*kgo.Record
	for i := 1; i <= 3; i++ {
		for _, customer := range []string{"alice", "bob", "carol"} {
			recs = append(recs, &kgo.Record{Key: []byte(customer), Value: []byte(fmt.Sprintf("%s-%d", customer, i))})
		}
	}
	if err := produce(cluster.Brokers(), recs...); err != nil {
		fmt.Println(err)
		return
	}

	c, err := consumer.New(cluster.Brokers(), "billing", []string{"orders"}, kdeliver.AtLeastOnce,
		kdeliver.WithConcurrency(8, kdeliver.ByKey))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	charged := map[string][]string{}
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		mu.Lock() // the handler runs concurrently
		defer mu.Unlock()
		charged[string(rec.Key)] = append(charged[string(rec.Key)], string(rec.Value))
		if len(charged["alice"])+len(charged["bob"])+len(charged["carol"]) == len(recs) {
			cancel()
		}
		return nil
	})
	for _, customer := range []string{"alice", "bob", "carol"} {
		fmt.Println(customer, strings.Join(charged[customer], " "))
	}
	fmt.Println("Run returned", err)
	// Output:
	// alice alice-1 alice-2 alice-3
	// bob bob-1 bob-2 bob-3
	// carol carol-1 carol-2 carol-3
	// Run returned <nil>
}

// RunBatch hands each call one partition's records of a poll, in offset
// order: a bulk insert per batch. nil commits the batch; an error retries
// it whole.
func ExampleConsumer_RunBatch() {
	cluster, err := seed("order-1", "order-2", "order-3", "order-4")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := consumer.New(cluster.Brokers(), "warehouse", []string{"orders"}, kdeliver.AtLeastOnce)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rows := 0
	err = c.RunBatch(ctx, func(_ context.Context, recs []*kgo.Record) error {
		for _, rec := range recs {
			fmt.Println("insert", string(rec.Value))
		}
		if rows += len(recs); rows == 4 {
			cancel()
		}
		return nil
	})
	fmt.Println("Run returned", err)
	// Output:
	// insert order-1
	// insert order-2
	// insert order-3
	// insert order-4
	// Run returned <nil>
}
