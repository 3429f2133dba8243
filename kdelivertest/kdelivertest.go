// Package kdelivertest helps test code that uses kdeliver, with no Kafka
// installed: an embedded cluster (franz-go's kfake, on 127.0.0.1) started in
// one call, numbered records to seed it with, an exact read_committed reader,
// and an audit that reports lost, duplicated and reordered records.
//
//	func TestBilling(t *testing.T) {
//		c := kdelivertest.Start(t, kdelivertest.WithTopic("orders", 3))
//		want := kdelivertest.Seed(t, c.Brokers(), "orders", 100)
//		... run the code under test, writing to "invoices" ...
//		got := kdelivertest.ReadCommitted(t, c.Brokers(), "invoices")
//		if a := kdelivertest.Audit(want, got); !a.Exact() {
//			t.Fatal(a)
//		}
//	}
//
// The reader and the audit work on any cluster: pass a real one's brokers.
// kfake keeps no replicas and its fencing differs from Kafka's, so claims
// about replication, fencing timing or durability need real Kafka (module
// integration).
package kdelivertest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// MinSessionTimeout is the smallest consumer-group session timeout the
// embedded cluster accepts: low, so that tests can use short ones.
const MinSessionTimeout = 100 * time.Millisecond

// Option configures [Start] and [NewCluster].
type Option func(*config)

type config struct {
	brokers int
	topics  map[string]int32
	order   []string
	extra   []kfake.Opt
}

// WithBrokers sets the number of brokers, overriding the default of 3.
func WithBrokers(n int) Option { return func(c *config) { c.brokers = n } }

// WithTopic creates topic with the given number of partitions at start.
func WithTopic(topic string, partitions int32) Option {
	return func(c *config) {
		if _, ok := c.topics[topic]; !ok {
			c.order = append(c.order, topic)
		}
		c.topics[topic] = partitions
	}
}

// WithKfakeOpts passes raw kfake options through, after kdelivertest's own
// (which make group changes fast: a low minimum session timeout, a 250 ms
// KIP-848 heartbeat).
func WithKfakeOpts(opts ...kfake.Opt) Option {
	return func(c *config) { c.extra = append(c.extra, opts...) }
}

// Cluster is a running embedded cluster.
type Cluster struct {
	c *kfake.Cluster
}

// NewCluster starts a cluster of 3 brokers on 127.0.0.1, on random ports,
// with the topics asked for; it runs until Close. Programs (examples, a demo)
// use it; tests use [Start].
func NewCluster(opts ...Option) (*Cluster, error) {
	cfg := config{brokers: 3, topics: map[string]int32{}}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.brokers < 1 {
		return nil, fmt.Errorf("kdelivertest: %d brokers: need at least 1", cfg.brokers)
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(cfg.brokers),
		kfake.GroupMinSessionTimeout(MinSessionTimeout),
		// KIP-848 consumers heartbeat every 5s by default; make member
		// changes as fast as the classic protocol's.
		kfake.BrokerConfigs(map[string]string{"group.consumer.heartbeat.interval.ms": "250"}),
	}
	for _, t := range cfg.order {
		kopts = append(kopts, kfake.SeedTopics(cfg.topics[t], t))
	}
	kopts = append(kopts, cfg.extra...)
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("kdelivertest: start kfake: %w", err)
	}
	return &Cluster{c: c}, nil
}

// Start starts a cluster as [NewCluster] does and closes it when the test
// ends. It fails the test if the cluster cannot start.
func Start(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	c, err := NewCluster(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Brokers returns the seed addresses of the brokers, host:port on 127.0.0.1.
func (c *Cluster) Brokers() []string { return c.c.ListenAddrs() }

// Kfake returns the underlying cluster, for fault injection (Fault,
// ControlKey) and inspection (PartitionInfo, GroupInfo).
func (c *Cluster) Kfake() *kfake.Cluster { return c.c }

// CreateTopic creates a topic with the given number of partitions.
func (c *Cluster) CreateTopic(topic string, partitions int32) error {
	if err := c.c.CreateTopic(topic, partitions, nil); err != nil {
		return fmt.Errorf("kdelivertest: create topic %s: %w", topic, err)
	}
	return nil
}

// Committed returns the offsets group has committed on topic, by partition.
func (c *Cluster) Committed(group, topic string) map[int32]int64 {
	out := map[int32]int64{}
	g := c.c.GroupInfo(group)
	if g == nil {
		return out
	}
	for p, o := range g.Commits[topic] {
		out[p] = o.Offset
	}
	return out
}

// CommittedAll reports whether group has committed the end of every
// partition of topic (every record it holds is consumed).
func (c *Cluster) CommittedAll(group, topic string) bool {
	committed := c.Committed(group, topic)
	for _, pi := range c.c.PartitionInfos(topic) {
		if committed[pi.Partition] < pi.HighWatermark {
			return false
		}
	}
	return true
}

// Close stops the brokers and closes their connections. It is safe to call
// more than once.
func (c *Cluster) Close() { c.c.Close() }

// SeedOption configures [Seed] and [SeedRecords].
type SeedOption func(*seedConfig)

type seedConfig struct {
	from  int
	keys  int
	stamp time.Time
}

// From numbers the records from n, overriding 0.
func From(n int) SeedOption { return func(c *seedConfig) { c.from = n } }

// Keys gives the records k distinct keys, "k0".."k{k-1}" in turn, overriding
// the default of keying each record by its own value. Records with the same
// key go to the same partition in seed order, so the audit can check their
// order.
func Keys(k int) SeedOption { return func(c *seedConfig) { c.keys = k } }

// Timestamp gives every record the timestamp t, overriding the time it is
// produced (to test a backlog of old records, say).
func Timestamp(t time.Time) SeedOption { return func(c *seedConfig) { c.stamp = t } }

// Records returns n numbered records for topic: values "0".."n-1" (or from
// [From]), keyed by their value unless [Keys] says otherwise.
func Records(topic string, n int, opts ...SeedOption) []*kgo.Record {
	var cfg seedConfig
	for _, o := range opts {
		o(&cfg)
	}
	recs := make([]*kgo.Record, n)
	for i := range recs {
		v := []byte(strconv.Itoa(cfg.from + i))
		key := v
		if cfg.keys > 0 {
			key = []byte("k" + strconv.Itoa((cfg.from+i)%cfg.keys))
		}
		recs[i] = &kgo.Record{Topic: topic, Key: key, Value: v, Timestamp: cfg.stamp}
	}
	return recs
}

// Values returns the values of recs, as the audit compares them.
func Values(recs []*kgo.Record) []string {
	vs := make([]string, len(recs))
	for i, r := range recs {
		vs[i] = string(r.Value)
	}
	return vs
}

// SeedRecords writes the numbered records of [Records] to topic with an
// idempotent producer, in order, and returns their values. It is bounded by
// ctx.
func SeedRecords(ctx context.Context, brokers []string, topic string, n int, opts ...SeedOption) ([]string, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.MetadataMinAge(100*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		return nil, fmt.Errorf("kdelivertest: seed %s: %w", topic, err)
	}
	defer cl.Close()
	recs := Records(topic, n, opts...)
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return nil, fmt.Errorf("kdelivertest: seed %s: %w", topic, err)
	}
	return Values(recs), nil
}

// Seed is [SeedRecords] in a test: bounded by 30 seconds, it fails the test
// on an error.
func Seed(tb testing.TB, brokers []string, topic string, n int, opts ...SeedOption) []string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vs, err := SeedRecords(ctx, brokers, topic, n, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return vs
}

// WaitFor polls cond every 20 ms until it holds, failing the test if d
// passes first.
func WaitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
