// Package sharetest runs the share-group (KIP-932) delivery suite against
// real Kafka: share.Consumer processes (helper runs of this test binary)
// read one topic as one share group and are SIGKILLed and replaced while
// they work, and the records their handlers wrote to disk are audited:
//
//   - at least once: nothing lost, every redelivery seen with its delivery
//     count and following a kill, a poison record dead-lettered after
//     kdeliver.WithMaxAttempts deliveries and nothing else;
//   - at most once: nothing handled twice, the loss bounded by the polls the
//     killed processes held;
//   - share.NewWithGuard over a dedup store that the processes share (a
//     file, see filestore_test.go): every side effect exactly once.
//
// Run it with
//
//	cd integration && KDELIVER_KAFKA_HOME=/root/.cache/kdeliver/kafka-4.4.0 \
//		KDELIVER_KAFKA_BACKEND=process KDELIVER_REQUIRE_KAFKA=1 \
//		go test -race -count=1 ./sharetest/
//
// With KDELIVER_REQUIRE_KAFKA set, a cluster that cannot start fails the
// run; without it, a kfake fall back skips the tests.
package sharetest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/kdeliver/kdeliver/integration"
)

// cluster is shared by the tests of this binary: one node, since the
// faults are the consumers' (a share group's records are acquired and
// acknowledged on the partition leader whatever the replication).
var cluster *integration.Cluster

func TestMain(m *testing.M) {
	if os.Getenv(integration.EnvHelper) != "" {
		os.Exit(m.Run())
	}
	ctx := context.Background()
	began := time.Now()
	var err error
	cluster, err = integration.New(ctx, integration.WithNodes(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s cluster (Kafka %s) started in %s\n", cluster.Kind(), cluster.Version(), time.Since(began).Round(time.Millisecond))
	code := m.Run()
	if code != 0 {
		cluster.LogTails(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }, 30)
	}
	cluster.Close(ctx)
	os.Exit(code)
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// topics numbers the topics of this binary: with -count=N the tests run
// again on the same cluster.
var topics atomic.Int64

// topicName turns the test's name into a topic name of its own.
func topicName(t *testing.T) string {
	return strings.NewReplacer("/", ".", " ", "-", "#", "-").Replace(t.Name()) + "-" + strconv.FormatInt(topics.Add(1), 10)
}

// waitFor polls cond every interval until it holds, ctx ends (an error
// naming what and the last state) or cond fails.
func waitFor(ctx context.Context, what string, interval time.Duration, cond func() (bool, string, error)) error {
	var last string
	for {
		ok, state, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		last = state
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// groupDone reports whether share group has acknowledged every record of
// topic: every partition's lag (DescribeShareGroupOffsets v1, KIP-1226:
// the records from the share-partition start offset to the end that are
// not acknowledged) is 0, and if not, which partitions fall short. The
// start offset itself is not the test: the broker persists it lazily, and
// Kafka 4.4 reported a start offset up to a poll behind the end with a lag
// of 0 once everything was acknowledged.
func groupDone(ctx context.Context, c *integration.Cluster, group, topic string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ends, err := c.Admin().ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return false, err.Error()
	}
	described, err := c.Admin().DescribeShareGroupOffsets(ctx, group)
	if err == nil {
		err = described.Error()
	}
	if err != nil {
		return false, err.Error()
	}
	starts := described[group].Offsets[topic]
	var behind []string
	ends.Each(func(e kadm.ListedOffset) {
		s, ok := starts[e.Partition]
		if !ok || s.Err != nil || s.Lag != 0 {
			behind = append(behind, fmt.Sprintf("p%d lag %d (start %d, end %d, err %v)", e.Partition, s.Lag, s.StartOffset, e.Offset, s.Err))
		}
	})
	return len(behind) == 0, strings.Join(behind, ", ")
}
