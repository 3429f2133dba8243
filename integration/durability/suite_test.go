package durability

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/integration"
)

// TestThreeNodes runs the suite on three nodes: replication factor 3,
// min.insync.replicas 2, unclean leader election off. The consumer kills
// run under both group protocols, classic and KIP-848's consumer protocol.
func TestThreeNodes(t *testing.T) {
	c := integration.Start(t, append([]integration.Option{integration.WithNodes(3)}, consumerProtocolBrokers...)...)
	t.Run("ProducerLeaderKills", func(t *testing.T) {
		requireReal(t, c, "kfake keeps no replicas: killing a partition leader proves nothing about durability")
		producerDurability(t, c, 3)
	})
	t.Run("ConsumerKills", func(t *testing.T) { consumerKills(t, c, kdeliver.ClassicProtocol) })
	t.Run("ConsumerKills848", func(t *testing.T) { consumerKills(t, c, kdeliver.ConsumerProtocol) })
	t.Run("NotEnoughReplicas", func(t *testing.T) {
		requireReal(t, c, "kfake has no in-sync replicas and no min.insync.replicas")
		brokersDown(t, c, 2)
	})
}

// TestSingleNode runs what applies on one node: no replica to kill, so the
// producers run without faults and the node itself is killed once.
func TestSingleNode(t *testing.T) {
	c := integration.Start(t, integration.WithNodes(1))
	t.Run("Producer", func(t *testing.T) { producerDurability(t, c, 0) })
	t.Run("ConsumerKills", func(t *testing.T) { consumerKills(t, c, kdeliver.ClassicProtocol) })
	t.Run("BrokerDown", func(t *testing.T) {
		requireReal(t, c, "a removed kfake node keeps its data in the test process: nothing is restarted")
		brokersDown(t, c, 1)
	})
}

// requireReal skips (or with KDELIVER_REQUIRE_KAFKA fails) a test that
// proves nothing on kfake, saying why.
func requireReal(t *testing.T, c *integration.Cluster, why string) {
	t.Helper()
	if c.Kind() == integration.BackendKfake {
		t.Log(why)
	}
	c.RequireReal(t)
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// topicName turns the test's name into a topic name.
func topicName(t *testing.T) string {
	return strings.NewReplacer("/", ".", " ", "-", "#", "-").Replace(t.Name())
}

// result is one scenario's figures, logged as a line of key=value fields
// after "RESULT " so that RELIABILITY.md can be filled from a test log.
type result struct {
	keys []string
	vals map[string]string
}

func newResult(c *integration.Cluster, scenario string, sem kdeliver.Semantics) *result {
	r := &result{vals: map[string]string{}}
	r.set("scenario", scenario)
	r.set("semantics", sem)
	r.set("nodes", c.Nodes())
	r.set("kafka", c.Version())
	r.set("backend", c.Kind())
	return r
}

func (r *result) set(key string, v any) {
	if _, ok := r.vals[key]; !ok {
		r.keys = append(r.keys, key)
	}
	if d, ok := v.(time.Duration); ok {
		v = fmt.Sprintf("%.1fs", d.Seconds())
	}
	r.vals[key] = strings.ReplaceAll(fmt.Sprint(v), " ", "_")
}

func (r *result) String() string {
	var b strings.Builder
	b.WriteString("RESULT")
	for _, k := range r.keys {
		fmt.Fprintf(&b, " %s=%s", k, r.vals[k])
	}
	return b.String()
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

// waitNoOpenTransaction waits until every partition's last stable offset
// reaches its high watermark: no transaction is left open, so a
// read_committed reader sees every record that will ever be visible. A
// transaction still open after the producers closed is itself a failure (a
// hanging transaction), caught by ctx.
func waitNoOpenTransaction(ctx context.Context, c *integration.Cluster, topic string) error {
	return waitFor(ctx, "no open transaction on "+topic, 200*time.Millisecond, func() (bool, string, error) {
		done, state := reachedEnd(ctx, c, topic, "last stable offset", func(ctx context.Context) (map[int32]int64, error) {
			lso, err := c.Admin().ListCommittedOffsets(ctx, topic)
			if err == nil {
				err = lso.Error()
			}
			got := map[int32]int64{}
			lso.Each(func(o kadm.ListedOffset) { got[o.Partition] = o.Offset })
			return got, err
		})
		return done, state, nil
	})
}

// reachedEnd reports whether the offsets that offsets returns (by partition)
// reach the high watermark of every partition of topic, and if not, which
// fall short, naming them what. Errors are reported as not done.
func reachedEnd(ctx context.Context, c *integration.Cluster, topic, what string, offsets func(context.Context) (map[int32]int64, error)) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ends, err := c.Admin().ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	var got map[int32]int64
	if err == nil {
		got, err = offsets(ctx)
	}
	if err != nil {
		return false, err.Error()
	}
	var behind []string
	ends.Each(func(e kadm.ListedOffset) {
		if o, ok := got[e.Partition]; !ok || o < e.Offset {
			behind = append(behind, fmt.Sprintf("p%d %s %d < end %d", e.Partition, what, o, e.Offset))
		}
	})
	return len(behind) == 0, strings.Join(behind, ", ")
}
