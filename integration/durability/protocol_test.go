package durability

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/integration"
)

// envProtocol is the group protocol of a consumer helper process (classic
// or consumer, as [kdeliver.GroupProtocol] reads it); unset is classic.
const envProtocol = "DURABILITY_PROTOCOL"

// consumerProtocolBrokers gives KIP-848 groups the classic helpers' timers:
// under the consumer protocol the broker owns the session timeout and the
// heartbeat interval (defaults 45 s and 5 s, and no less), so the helpers'
// kgo.SessionTimeout(6s) and kgo.HeartbeatInterval(1s) are set here
// instead. Classic groups ignore these settings.
var consumerProtocolBrokers = []integration.Option{
	integration.WithBrokerConfig("group.consumer.min.session.timeout.ms", "6000"),
	integration.WithBrokerConfig("group.consumer.session.timeout.ms", "6000"),
	integration.WithBrokerConfig("group.consumer.min.heartbeat.interval.ms", "1000"),
	integration.WithBrokerConfig("group.consumer.heartbeat.interval.ms", "1000"),
}

// helperGroupOpts returns the group options of a consumer helper process for
// the protocol envProtocol names: under classic the helper sets its own
// session timeout and heartbeat; under the consumer protocol the brokers do
// ([consumerProtocolBrokers]).
func helperGroupOpts() ([]consumer.Option, kdeliver.GroupProtocol, error) {
	var p kdeliver.GroupProtocol
	if v := os.Getenv(envProtocol); v != "" {
		if err := p.UnmarshalText([]byte(v)); err != nil {
			return nil, p, err
		}
	}
	if p == kdeliver.ConsumerProtocol {
		return []consumer.Option{kdeliver.WithGroupProtocol(p)}, p, nil
	}
	return []consumer.Option{consumer.WithKgoOpts(kgo.SessionTimeout(sessionTimeout), kgo.HeartbeatInterval(time.Second))}, p, nil
}

// checkGroupProtocol fails unless the broker lists group as a group of
// protocol p: kgo would run the classic protocol unseen if it could not run
// KIP-848's.
func checkGroupProtocol(ctx context.Context, c *integration.Cluster, group string, p kdeliver.GroupProtocol) error {
	if c.Kind() == integration.BackendKfake {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	listed, err := c.Admin().ListGroupsByType(ctx, []string{p.String()})
	if err != nil {
		return fmt.Errorf("list %s groups: %w", p, err)
	}
	if _, ok := listed[group]; !ok {
		return fmt.Errorf("group %s is not a %s group: the brokers list %v as %s groups", group, p, listed.Groups(), p)
	}
	return nil
}
