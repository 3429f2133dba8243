package eos

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestRunAgainLosesNothing: one session's Run is stopped and called again
// many times while input keeps arriving, so some stops land while a
// poll is returning records. Every input is in the committed output exactly
// once: records a stopped Run polled but did not handle are not committed by
// the next Run.
func TestRunAgainLosesNothing(t *testing.T) {
	const n = 4000
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
	addrs := c.Brokers()

	// A writer adds 20 records every 15 ms, for about 3 s.
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	written := make(chan error, 1)
	var want []string
	for i := 0; i < n; i += 20 {
		want = append(want, kdelivertest.Values(kdelivertest.Records("in", 20, kdelivertest.From(i)))...)
	}
	go func() {
		for i := 0; i < n; i += 20 {
			rs := kdelivertest.Records("in", 20, kdelivertest.From(i))
			if err := cl.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
				written <- err
				return
			}
			time.Sleep(15 * time.Millisecond)
		}
		written <- nil
	}()

	s, err := New(addrs, "g", []string{"in"}, "t-rerun", fastOpts(WithOutputTopic("out"), WithCommitEvery(50, 20*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	copyOut := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	writerDone := false
	for runs := 0; ; runs++ {
		if time.Now().After(deadline) {
			t.Fatalf("input not all committed after %d runs", runs)
		}
		if !writerDone {
			select {
			case err := <-written:
				if err != nil {
					t.Fatal(err)
				}
				writerDone = true
			default:
			}
		}
		if writerDone && c.CommittedAll("g", "in") {
			t.Logf("%d runs", runs)
			break
		}
		// Each Run joins the group again (Run leaves it when it returns)
		// and stops after 100 to 550 ms, some while a poll is returning.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(100+50*(runs%10))*time.Millisecond)
		err := s.Run(ctx, copyOut)
		cancel()
		if err != nil {
			t.Fatalf("Run %d: %v", runs, err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	exactly(t, c, "out", want)
}

// TestRunLeavesGroup: whenever Run returns (its ctx cancelled, or the
// handler's error), the session has left the group, so its partitions go to
// the other members at once instead of when the session times out; the
// next Run joins again.
func TestRunLeavesGroup(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
	s, err := New(c.Brokers(), "g", []string{"in"}, "t-leave", fastOpts(kdeliver.WithMaxAttempts(1), WithOutputTopic("out"), WithCommitEvery(5, 20*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for run := range 3 {
		kdelivertest.Seed(t, c.Brokers(), "in", 10, kdelivertest.From(10*run))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		h := copyTo("out")
		if run == 2 {
			// The last Run ends with the handler's error.
			h = func(context.Context, *kgo.Record, func(*kgo.Record)) error { return errors.New("bad record") }
		}
		go func() { done <- s.Run(ctx, h) }()
		if run < 2 {
			kdelivertest.WaitFor(t, 10*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
			if n := groupMembers(t, c.Brokers(), "g"); n != 1 {
				t.Fatalf("run %d: the group has %d members while Run runs, want 1", run, n)
			}
		}
		if run < 2 {
			cancel()
		}
		var err error
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("run %d: Run did not return", run)
		}
		cancel()
		if run < 2 && err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if run == 2 && err == nil {
			t.Fatalf("run %d: Run returned nil, want the handler's error", run)
		}
		if n := groupMembers(t, c.Brokers(), "g"); n != 0 {
			t.Fatalf("run %d: the group has %d members after Run returned, want 0", run, n)
		}
	}
}

// groupMembers returns how many members group has now.
func groupMembers(t *testing.T, brokers []string, group string) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Groups) != 1 {
		t.Fatalf("describe %s: %d groups", group, len(resp.Groups))
	}
	if err := kerr.ErrorForCode(resp.Groups[0].ErrorCode); err != nil {
		t.Fatalf("describe %s: %v", group, err)
	}
	return len(resp.Groups[0].Members)
}
