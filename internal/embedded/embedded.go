// Package embedded starts an in-process Kafka cluster (kfake) for the demo,
// the examples and tests, so they run with no Kafka installed.
//
// The cluster listens on 127.0.0.1 only, on random ports. Its Kfake method
// exposes the underlying *kfake.Cluster for fault injection (Fault,
// ControlKey) and inspection (PartitionInfo, GroupInfo).
//
// [Brokers] picks between an embedded cluster and a real one given by the
// user (creating the topics there), and [Main] is the main function of the
// example programs.
package embedded

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Option configures [Start].
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

// WithKfakeOpts passes raw kfake options through, after kdeliver's own.
func WithKfakeOpts(opts ...kfake.Opt) Option {
	return func(c *config) { c.extra = append(c.extra, opts...) }
}

// MinSessionTimeout is the smallest consumer-group session timeout the
// cluster accepts: low, so that tests and the demo can use short ones.
const MinSessionTimeout = 100 * time.Millisecond

// Cluster is a running in-process cluster. Close stops it.
type Cluster struct {
	c *kfake.Cluster
}

// Start starts a cluster of 3 brokers on 127.0.0.1 with the topics asked
// for. ctx bounds the start only; the cluster runs until Close.
func Start(ctx context.Context, opts ...Option) (*Cluster, error) {
	cfg := config{brokers: 3, topics: map[string]int32{}}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.brokers < 1 {
		return nil, fmt.Errorf("embedded: %d brokers: need at least 1", cfg.brokers)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(cfg.brokers),
		kfake.GroupMinSessionTimeout(MinSessionTimeout),
		// KIP-848 consumers heartbeat every 5s by default; make member
		// changes as fast as the classic protocol's on kfake.
		kfake.BrokerConfigs(map[string]string{"group.consumer.heartbeat.interval.ms": "250"}),
	}
	for _, t := range cfg.order {
		kopts = append(kopts, kfake.SeedTopics(cfg.topics[t], t))
	}
	kopts = append(kopts, cfg.extra...)
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("embedded: start kfake: %w", err)
	}
	return &Cluster{c: c}, nil
}

// Brokers returns the seed addresses of the brokers, host:port on 127.0.0.1.
func (c *Cluster) Brokers() []string { return c.c.ListenAddrs() }

// Kfake returns the underlying cluster, for fault injection and inspection.
func (c *Cluster) Kfake() *kfake.Cluster { return c.c }

// CreateTopic creates a topic with the given number of partitions.
func (c *Cluster) CreateTopic(topic string, partitions int32) error {
	if err := c.c.CreateTopic(topic, partitions, nil); err != nil {
		return fmt.Errorf("embedded: create topic %s: %w", topic, err)
	}
	return nil
}

// Close stops the brokers and closes their connections. It is safe to call
// more than once.
func (c *Cluster) Close() { c.c.Close() }
