package consumer

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// The tests of this file are the regressions of issue 14: failure paths
// that stalled or misled rather than losing or duplicating.

// TestRunMissingTopicOrBrokers: Run fails within the start timeout with a
// typed error naming the missing topic or the unreachable brokers; before,
// it blocked until its ctx ended and returned nil.
func TestRunMissingTopicOrBrokers(t *testing.T) {
	c := newCluster(t, 1)
	for _, tc := range []struct {
		name    string
		brokers []string
		topic   string
		want    error
		names   string
	}{
		{"topic", c.Brokers(), "no-such-topic", kdeliver.ErrTopicNotFound, "no-such-topic"},
		{"brokers", []string{"127.0.0.1:1"}, "t", kdeliver.ErrUnreachable, "127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cons, err := New(tc.brokers, "g-"+tc.name, []string{tc.topic}, kdeliver.AtLeastOnce, fastOpts(),
				kdeliver.WithStartTimeout(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer cons.Close(context.Background())
			if err := cons.Ping(context.Background()); !errors.Is(err, tc.want) {
				t.Errorf("Ping = %v, want %v", err, tc.want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = cons.Run(ctx, func(context.Context, *kgo.Record) error { return nil })
			if !errors.Is(err, tc.want) || ctx.Err() != nil {
				t.Fatalf("Run = %v (ctx %v), want %v before the ctx ends", err, ctx.Err(), tc.want)
			}
			if !strings.Contains(err.Error(), tc.names) || !strings.Contains(err.Error(), "WithStartTimeout") {
				t.Errorf("error %q does not name %s and the option to wait longer", err, tc.names)
			}
		})
	}
}

// joiningConsumer returns a consumer of group "g" running in r whose first
// join waits on the broker: a static member that left without a leave holds
// the group's rebalance until its 30 s session timeout.
func joiningConsumer(t *testing.T) (*Consumer, *runner) {
	t.Helper()
	c := newCluster(t, 2)
	produce(t, c, 0, 10)
	static, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.ConsumerGroup("g"), kgo.ConsumeTopics("t"),
		kgo.InstanceID("static"), kgo.SessionTimeout(30*time.Second), kgo.RebalanceTimeout(30*time.Second),
		kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if fs := static.PollRecords(ctx, 1); fs.Empty() {
		t.Fatal("the static member did not join")
	}
	static.Close() // a static member does not leave: the group waits for it
	cons, err := New(c.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, WithKgoOpts(kgo.MetadataMinAge(100*time.Millisecond),
		kgo.SessionTimeout(30*time.Second), kgo.RebalanceTimeout(30*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	r := start(cons, func(context.Context, *kgo.Record) error { return nil })
	// The consumer's join is in flight once the group is rebalancing.
	waitFor(t, "the group to start rebalancing", func() bool {
		g := c.Kfake().GroupInfo("g")
		return g != nil && g.State == "PreparingRebalance"
	})
	time.Sleep(200 * time.Millisecond) // Run is in its poll
	return cons, r
}

// TestStopWhileJoining: a consumer whose first join waits on the broker
// stops promptly when Run's ctx is cancelled, and Close keeps to its ctx;
// before, both waited for the join (here 30 s; the rebalance timeout on a
// real cluster). The bound asserted is a third of the join's wait.
func TestStopWhileJoining(t *testing.T) {
	returns := func(t *testing.T, r *runner, what string) {
		t.Helper()
		select {
		case err := <-r.ch:
			if err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Run did not return within 10 s of %s while joining", what)
		}
	}
	t.Run("Run", func(t *testing.T) {
		_, r := joiningConsumer(t)
		r.cancel()
		returns(t, r, "its ctx being cancelled")
	})
	t.Run("Close", func(t *testing.T) {
		cons, r := joiningConsumer(t)
		defer r.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		closed := make(chan error, 1)
		go func() { closed <- cons.Close(ctx) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("Close with a 1 s ctx did not return within 10 s while joining")
		}
		returns(t, r, "Close")
	})
}

// TestWarningsReachDefaultLogger: with no WithLogger, a failing handler's
// retries are logged through slog.Default(); before, they were silent.
func TestWarningsReachDefaultLogger(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, nil)))
	defer slog.SetDefault(prev)

	c := newCluster(t, 1)
	produce(t, c, 0, 1)
	cons, err := New(c.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, fastOpts(),
		kdeliver.WithBackoff(10*time.Millisecond, 10*time.Millisecond), kdeliver.WithMaxAttempts(3))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = cons.Run(ctx, func(context.Context, *kgo.Record) error { return errors.New("always fails") })
	var he *kdeliver.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("Run = %v, want a *HandlerError", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "handler failed: retrying") || !strings.Contains(buf.String(), "always fails") {
		t.Errorf("slog.Default() got %q, want the retry warnings", buf.String())
	}
	if strings.Contains(buf.String(), "level=INFO") {
		t.Errorf("slog.Default() got info lines by default: %q", buf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
