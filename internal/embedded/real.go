package embedded

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Brokers returns the brokers a demo or example should use. With no given
// brokers it starts an embedded cluster with the topics; otherwise it checks
// that the given brokers answer within 5 seconds and creates the topics
// there (an existing topic is kept). stop releases what Brokers started.
func Brokers(ctx context.Context, given []string, partitions int32, topics ...string) (brokers []string, stop func(), err error) {
	if len(given) == 0 {
		opts := make([]Option, 0, len(topics))
		for _, t := range topics {
			opts = append(opts, WithTopic(t, partitions))
		}
		c, err := Start(ctx, opts...)
		if err != nil {
			return nil, nil, err
		}
		return c.Brokers(), c.Close, nil
	}
	if err := CreateTopics(ctx, given, partitions, topics...); err != nil {
		return nil, nil, err
	}
	return given, func() {}, nil
}

// CreateTopics creates topics on a real cluster with the broker's default
// replication factor, after checking within 5 seconds that the brokers
// answer. A topic that already exists is kept as it is.
func CreateTopics(ctx context.Context, brokers []string, partitions int32, topics ...string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("brokers %s: %w", strings.Join(brokers, ","), err)
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := cl.Ping(pctx); err != nil {
		return fmt.Errorf("cannot reach brokers %s within 5s: %w", strings.Join(brokers, ","), err)
	}
	if len(topics) == 0 {
		return nil
	}
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 30000
	for _, topic := range topics {
		t := kmsg.NewCreateTopicsRequestTopic()
		t.Topic, t.NumPartitions, t.ReplicationFactor = topic, partitions, -1
		req.Topics = append(req.Topics, t)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("creating topics %s: %w", strings.Join(topics, ","), err)
	}
	for _, rt := range resp.Topics {
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("creating topic %s: %w", rt.Topic, err)
		}
	}
	return nil
}
