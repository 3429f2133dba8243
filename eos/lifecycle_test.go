package eos

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestCrashWhileStopping: a simulated crash returned by the handler call in
// progress when Run's ctx is cancelled is still a crash: Run returns it and
// commits nothing. It was taken for the stop, so the copier tests' planned
// crashes could silently not happen under load.
func TestCrashWhileStopping(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	s, err := New(c.Brokers(), "g", []string{"in"}, "crash-stop", fastOpts(WithOutputTopic("out"), WithCommitEvery(100, 2*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		if string(in.Value) == "3" {
			cancel()
			return fmt.Errorf("killed while stopping: %w", crash.ErrCrash)
		}
		return nil
	})
	if !errors.Is(err, crash.ErrCrash) {
		t.Fatalf("Run = %v, want the crash", err)
	}
	if got := c.Committed("g", "in"); len(got) != 0 {
		t.Errorf("offsets committed after a crash: %v", got)
	}
}
