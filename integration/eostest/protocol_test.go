package eostest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/integration"
)

// copierSession is the copier's session timeout: eos.WithSessionTimeout
// under the classic protocol, the brokers' group.consumer.session.timeout.ms
// under KIP-848's consumer protocol ([consumerProtocolBrokers]).
const copierSession = 10 * time.Second

// consumerProtocolBrokers gives KIP-848 groups the classic copier's timers,
// which the broker owns under the consumer protocol (defaults 45 s and 5 s,
// and no less): a 10 s session timeout and kgo's classic 3 s heartbeat.
// Classic groups ignore these settings.
var consumerProtocolBrokers = func() []integration.Option {
	var opts []integration.Option
	for k, ms := range map[string]time.Duration{
		"session.timeout.ms":        copierSession,
		"heartbeat.interval.ms":     3 * time.Second,
		"min.session.timeout.ms":    copierSession,
		"min.heartbeat.interval.ms": 3 * time.Second,
	} {
		opts = append(opts, integration.WithBrokerConfig("group.consumer."+k, fmt.Sprint(ms.Milliseconds())))
	}
	return opts
}()

// checkConsumerGroup describes group with KIP-848's ConsumerGroupDescribe
// and fails unless it is a consumer-protocol group whose members all joined
// with the consumer protocol (kgo would run the classic protocol unseen if
// it could not run KIP-848's); it logs the group and member epochs.
func checkConsumerGroup(t *testing.T, ctx context.Context, group string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ds, err := cluster.Admin().DescribeConsumerGroups(ctx, group)
	if err == nil {
		err = ds.Error()
	}
	if err != nil {
		t.Fatalf("describe %s as a KIP-848 consumer group: %v", group, err)
	}
	d := ds[group]
	members := make([]string, 0, len(d.Members))
	for _, m := range d.Members {
		if m.MemberType != 1 {
			t.Errorf("member %s (%s) of %s has member type %d, not 1 (consumer protocol)", m.MemberID, m.ClientID, group, m.MemberType)
		}
		members = append(members, fmt.Sprintf("%s epoch %d", m.ClientID, m.MemberEpoch))
	}
	t.Logf("consumer group %s: %s, group epoch %d, assignor %s, members: %s", group, d.State, d.Epoch, d.AssignorName, strings.Join(members, ", "))
}

// protocolEnv is the copier environment for group protocol p.
func protocolEnv(p kdeliver.GroupProtocol) string { return envProtocol + "=" + p.String() }

// withoutStats drops a copier's periodic stats lines from its output.
func withoutStats(out string) string {
	var b strings.Builder
	for l := range strings.Lines(out) {
		if !strings.HasPrefix(l, statsPrefix) {
			b.WriteString(l)
		}
	}
	return b.String()
}
