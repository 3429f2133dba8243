package eos

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestRunAgainLosesNothing: one session's Run is stopped and called again
// hundreds of times while input keeps arriving, so some stops land while a
// poll is returning records. Every input is in the committed output exactly
// once: records a stopped Run polled but did not handle are not committed by
// the next Run.
func TestRunAgainLosesNothing(t *testing.T) {
	const n = 4000
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
	addrs := c.Brokers()

	// A writer adds 20 records every 2 ms.
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
			time.Sleep(2 * time.Millisecond)
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
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(5+runs%20)*time.Millisecond)
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
