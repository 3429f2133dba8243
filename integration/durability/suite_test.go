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
// min.insync.replicas 2, unclean leader election off.
func TestThreeNodes(t *testing.T) {
	c := integration.Start(t, integration.WithNodes(3))
	t.Run("ProducerLeaderKills", func(t *testing.T) {
		c.RequireReal(t) // kfake keeps no replicas: killing a leader proves nothing
		producerDurability(t, c, 3)
	})
	t.Run("ConsumerKills", func(t *testing.T) { consumerKills(t, c) })
	t.Run("NotEnoughReplicas", func(t *testing.T) {
		c.RequireReal(t) // kfake has no in-sync replicas
		brokersDown(t, c, 2)
	})
}

// TestSingleNode runs what applies on one node: no replica to kill, so the
// producers run without faults and the node itself is killed once.
func TestSingleNode(t *testing.T) {
	c := integration.Start(t, integration.WithNodes(1))
	t.Run("Producer", func(t *testing.T) { producerDurability(t, c, 0) })
	t.Run("ConsumerKills", func(t *testing.T) { consumerKills(t, c) })
	t.Run("BrokerDown", func(t *testing.T) {
		c.RequireReal(t) // a kfake node keeps its data in the test process
		brokersDown(t, c, 1)
	})
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
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		hw, err := c.Admin().ListEndOffsets(actx, topic)
		if err == nil {
			err = hw.Error()
		}
		if err != nil {
			return false, err.Error(), nil
		}
		lso, err := c.Admin().ListCommittedOffsets(actx, topic)
		if err == nil {
			err = lso.Error()
		}
		if err != nil {
			return false, err.Error(), nil
		}
		var behind []string
		hw.Each(func(o kadm.ListedOffset) {
			if s, _ := lso.Lookup(topic, o.Partition); s.Offset < o.Offset {
				behind = append(behind, fmt.Sprintf("p%d lso %d < hw %d", o.Partition, s.Offset, o.Offset))
			}
		})
		return len(behind) == 0, strings.Join(behind, ", "), nil
	})
}
