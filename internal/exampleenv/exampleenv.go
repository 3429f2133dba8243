// Package exampleenv is where kdeliver's demo and example programs run: an
// embedded cluster (package kdelivertest) unless the user names a real one,
// on which they create their topics.
//
// [Brokers] picks between the two, [CreateTopics] creates topics on a real
// cluster, and [Main] is the main function of the example programs. Tests
// use package kdelivertest directly.
package exampleenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver/kdelivertest"
)

// Brokers returns the brokers a demo or example should use. With no given
// brokers it starts an embedded cluster (kdelivertest.NewCluster: 3 brokers
// on 127.0.0.1) with the topics; otherwise it checks that the given brokers
// answer within 5 seconds and creates the topics there (an existing topic is
// kept). stop releases what Brokers started.
func Brokers(ctx context.Context, given []string, partitions int32, topics ...string) (brokers []string, stop func(), err error) {
	if len(given) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		opts := make([]kdelivertest.Option, 0, len(topics))
		for _, t := range topics {
			opts = append(opts, kdelivertest.WithTopic(t, partitions))
		}
		c, err := kdelivertest.NewCluster(opts...)
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
// answer. A topic that already exists is kept as it is (and needs no
// Create ACL). With no topics it only checks the brokers.
func CreateTopics(ctx context.Context, brokers []string, partitions int32, topics ...string) error {
	return CreateTopicsWith(ctx, brokers, nil, partitions, topics...)
}

// CreateTopicsWith is [CreateTopics] with conn (TLS, SASL) added to the
// client's options.
func CreateTopicsWith(ctx context.Context, brokers []string, conn []kgo.Opt, partitions int32, topics ...string) error {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DisableClientMetrics()}, conn...)...)
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
	// Only missing topics are created: on a cluster with ACLs a principal
	// that may use a topic may not be allowed to create it, and Kafka
	// refuses such a create even when the topic exists.
	meta := kmsg.NewPtrMetadataRequest()
	meta.AllowAutoTopicCreation = false
	for _, topic := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		meta.Topics = append(meta.Topics, rt)
	}
	if mresp, err := meta.RequestWith(ctx, cl); err == nil {
		exist := map[string]bool{}
		for _, rt := range mresp.Topics {
			if rt.Topic != nil && rt.ErrorCode == 0 {
				exist[*rt.Topic] = true
			}
		}
		var missing []string
		for _, topic := range topics {
			if !exist[topic] {
				missing = append(missing, topic)
			}
		}
		if topics = missing; len(topics) == 0 {
			return nil
		}
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

// Main is the main function of kdeliver's example programs: it parses a
// -brokers flag (none: the example starts an embedded cluster, see
// [Brokers]), runs run with a one-minute limit, writing to stdout, and exits
// non-zero with the error on stderr if it fails. Define the program's own
// flags on flag.CommandLine before calling Main.
func Main(name string, run func(ctx context.Context, brokers []string, w io.Writer) error) {
	brokers := flag.String("brokers", "", "comma-separated brokers of a real cluster (default: an embedded one)")
	flag.Parse()
	given := SplitBrokers(*brokers)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err := run(ctx, given, os.Stdout)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// SplitBrokers splits a comma-separated broker list, dropping blanks; ""
// gives none.
func SplitBrokers(list string) []string {
	var out []string
	for _, b := range strings.Split(list, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}
