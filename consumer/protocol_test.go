package consumer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestConsumerProtocolRefuses: under the consumer protocol the options that
// set what the broker owns (session timeout, heartbeat interval) or that
// make kgo fall back to the classic protocol (a client-side balancer) are
// refused at construction, naming what to set broker-side; kgo's
// ServerSideBalancer passed raw under the classic protocol is refused too.
func TestConsumerProtocolRefuses(t *testing.T) {
	addrs, topics := []string{"127.0.0.1:1"}, []string{"t"}
	p848 := kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol)
	cases := []struct {
		name string
		opts []Option
		want []string
	}{
		{"session timeout", []Option{p848, WithKgoOpts(kgo.SessionTimeout(10 * time.Second))},
			[]string{"a raw kgo.SessionTimeout(10s) does nothing under kdeliver.ConsumerProtocol, where the broker owns the session timeout: remove it, and set group.consumer.session.timeout.ms"}},
		{"heartbeat", []Option{p848, WithKgoOpts(kgo.HeartbeatInterval(time.Second))},
			[]string{"a raw kgo.HeartbeatInterval(1s) does nothing under kdeliver.ConsumerProtocol, where the broker tells each member when to heartbeat: remove it, and set group.consumer.heartbeat.interval.ms"}},
		{"client-side balancer", []Option{p848, WithKgoOpts(kgo.Balancers(kgo.RoundRobinBalancer()))},
			[]string{"a raw kgo.Balancers option puts a *kgo.roundRobinBalancer first, with which kgo silently runs the classic protocol"}},
		{"raw server-side balancer", []Option{WithKgoOpts(kgo.ServerSideBalancer())},
			[]string{"a raw option set kgo.ServerSideBalancer (KIP-848): use kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) instead"}},
		{"bad protocol", []Option{kdeliver.WithGroupProtocol(kdeliver.GroupProtocol(5))},
			[]string{"kdeliver.WithGroupProtocol(GroupProtocol(5)): use kdeliver.ClassicProtocol or kdeliver.ConsumerProtocol"}},
		{"all at once", []Option{p848, WithKgoOpts(kgo.SessionTimeout(10*time.Second), kgo.HeartbeatInterval(time.Second), kgo.Balancers(kgo.RoundRobinBalancer()))},
			[]string{"kgo.SessionTimeout(10s)", "kgo.HeartbeatInterval(1s)", "*kgo.roundRobinBalancer"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
				_, err := New(addrs, "g", topics, sem, tc.opts...)
				assertConfigError(t, err, tc.want...)
			}
			_, err := NewWithGuard(addrs, "g", topics, newGuard(t, dedup.NewMemory(10)), tc.opts...)
			assertConfigError(t, err, tc.want...)
			_, err = NewWithSink(addrs, "g", topics, newMemSink(newMemDB(), "s"), tc.opts...)
			assertConfigError(t, err, tc.want...)
		})
	}
	t.Run("accepted", func(t *testing.T) {
		for _, opts := range [][]Option{
			{p848},
			{p848, WithKgoOpts(kgo.Balancers(kgo.RangeBalancer()), kgo.RebalanceTimeout(10*time.Second))},
			{kdeliver.WithGroupProtocol(kdeliver.ClassicProtocol), WithKgoOpts(kgo.SessionTimeout(10 * time.Second))},
		} {
			c, err := New(addrs, "g", topics, kdeliver.AtLeastOnce, opts...)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.Close(context.Background())
		}
	})
}

// TestConsumerProtocolUnsupported: on brokers without KIP-848 (here kfake
// advertising Kafka 3.9) Run fails with ErrUnsupported, where kgo alone
// would fall back to the classic protocol unseen.
func TestConsumerProtocolUnsupported(t *testing.T) {
	cl := kdelivertest.Start(t, kdelivertest.WithTopic("t", 1), kdelivertest.WithKfakeOpts(kfake.MaxVersions(kversion.V3_9_0())))
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol), kdeliver.WithStartTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(context.Background(), func(context.Context, *kgo.Record) error { return nil })
	if !errors.Is(err, kdeliver.ErrUnsupported) {
		t.Fatalf("Run = %v, want ErrUnsupported", err)
	}
	t.Log(err)
}

// TestConsumerProtocolFaults reruns the rebalance, revoke, gap and crash
// tests with every consumer joining with the consumer group protocol
// (KIP-848) on kfake, heartbeating every 100 ms; each asserts what it does
// under the classic protocol (0 lost; duplicates only at or past the
// committed prefix, none where the revoke commits what finished), and the
// cluster checks that no member joined with the classic protocol.
func TestConsumerProtocolFaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		body func(*testing.T)
	}{
		{"AtLeastOnceRebalance", TestAtLeastOnceRebalance},
		{"CommitOnRevoke", TestCommitOnRevoke},
		{"AtLeastOnceCrash", TestAtLeastOnceCrash},
		{"AtLeastOnceCommitFailureRedelivers", TestAtLeastOnceCommitFailureRedelivers},
		{"AtMostOnceCommitFailureDrops", TestAtMostOnceCommitFailureDrops},
		{"ConcurrentGap", TestConcurrentGap},
		{"ConcurrentRebalance", TestConcurrentRebalance},
		{"ConcurrentRevokeTimeout", TestConcurrentRevokeTimeout},
		{"ExactlyOnceSinkCrashesAndRebalance", TestExactlyOnceSinkCrashesAndRebalance},
	} {
		t.Run(tc.name, func(t *testing.T) { under848(t, tc.body) })
	}
}

// watch848 fails t if a member of cl joins a group with the classic
// protocol, and if no KIP-848 heartbeat arrived by the end of the test.
func watch848(t testing.TB, cl *kdelivertest.Cluster) {
	var joins, beats atomic.Int64
	k := cl.Kfake()
	k.ControlKey(int16(kmsg.JoinGroup), func(kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		joins.Add(1)
		return nil, nil, false
	})
	k.ControlKey(int16(kmsg.ConsumerGroupHeartbeat), func(kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		beats.Add(1)
		return nil, nil, false
	})
	t.Cleanup(func() {
		if j := joins.Load(); j != 0 {
			t.Errorf("%d JoinGroup requests under the consumer protocol: a member ran the classic protocol", j)
		}
		if beats.Load() == 0 {
			t.Error("no ConsumerGroupHeartbeat: no member ran the consumer protocol")
		}
	})
}
