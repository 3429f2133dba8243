package eos

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestConsumerProtocolRefuses: under the consumer protocol eos.New refuses
// WithSessionTimeout and the raw options that set what the broker owns or
// make kgo fall back to the classic protocol, naming what to set
// broker-side; the classic rule that the transaction timeout stays below
// the session timeout no longer applies (KIP-447 holds on every broker
// that serves KIP-848).
func TestConsumerProtocolRefuses(t *testing.T) {
	addrs, topics := []string{"127.0.0.1:1"}, []string{"in"}
	p848 := kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol)
	for _, tc := range []struct {
		name string
		opts []Option
		want []string
	}{
		{"session timeout", []Option{p848, WithSessionTimeout(time.Minute)},
			[]string{"eos.WithSessionTimeout(1m0s) does nothing under kdeliver.ConsumerProtocol, where the broker owns the session timeout: remove it, and set group.consumer.session.timeout.ms"}},
		{"raw session timeout", []Option{p848, WithKgoOpts(kgo.SessionTimeout(time.Minute))},
			[]string{"a raw kgo.SessionTimeout(1m0s) does nothing under kdeliver.ConsumerProtocol"}},
		{"heartbeat", []Option{p848, WithKgoOpts(kgo.HeartbeatInterval(time.Second))},
			[]string{"a raw kgo.HeartbeatInterval(1s) does nothing under kdeliver.ConsumerProtocol"}},
		{"client-side balancer", []Option{p848, WithKgoOpts(kgo.Balancers(kgo.RoundRobinBalancer()))},
			[]string{"a raw kgo.Balancers option puts a *kgo.roundRobinBalancer first"}},
		{"raw server-side balancer", []Option{WithKgoOpts(kgo.ServerSideBalancer())},
			[]string{"a raw option set kgo.ServerSideBalancer (KIP-848): use kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) instead"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(addrs, "g", topics, "tx", tc.opts...)
			if !errors.Is(err, kdeliver.ErrInvalidConfig) {
				t.Fatalf("New = %v, want ErrInvalidConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
	t.Run("transaction timeout above the classic session timeout", func(t *testing.T) {
		s, err := New(addrs, "g", topics, "tx", p848, WithTransactionTimeout(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Close(context.Background())
	})
}

// TestConsumerProtocolUnsupported: on brokers without KIP-848 (kfake
// advertising Kafka 3.9) Run fails with ErrUnsupported before joining.
func TestConsumerProtocolUnsupported(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1), kdelivertest.WithKfakeOpts(kfake.MaxVersions(kversion.V3_9_0())))
	proto848 = true
	defer func() { proto848 = false }()
	s, err := New(c.Brokers(), "g", []string{"in"}, "tx", fastOpts(kdeliver.WithStartTimeout(5*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close(context.Background()) }()
	err = s.Run(context.Background(), func(context.Context, *kgo.Record, func(*kgo.Record)) error { return nil })
	if !errors.Is(err, kdeliver.ErrUnsupported) {
		t.Fatalf("Run = %v, want ErrUnsupported", err)
	}
	t.Log(err)
}

// TestConsumerProtocolFaults reruns the exactly-once tests of rebalances,
// crashes, injected faults and fencing with every session joining with the
// consumer group protocol (KIP-848): the read_committed output is still
// every input exactly once.
func TestConsumerProtocolFaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		body func(*testing.T)
	}{
		{"GroupRebalancesExactlyOnce", TestGroupRebalancesExactlyOnce},
		{"CopierExactlyOnceUnderAbortsAndCrashes", TestCopierExactlyOnceUnderAbortsAndCrashes},
		{"CopierExactlyOnceUnderInjectedFaults", TestCopierExactlyOnceUnderInjectedFaults},
		{"FencedByNewInstance", TestFencedByNewInstance},
		{"ConcurrentExactlyOnceUnderAbortsAndCrashes", TestConcurrentExactlyOnceUnderAbortsAndCrashes},
		{"ConcurrentFenced", TestConcurrentFenced},
		{"RunAgainLosesNothing", TestRunAgainLosesNothing},
	} {
		t.Run(tc.name, func(t *testing.T) { under848(t, tc.body) })
	}
}
