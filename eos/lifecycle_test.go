package eos

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

type ctxKey struct{}

// TestHandlerContext: the handler's ctx carries Run's values but not its
// cancellation (issue 8: as in package consumer). Cancelling Run's ctx lets
// the handler call in progress finish with a live ctx, commits it, and
// handles no further record; the handler's ctx is cancelled only when
// Close's ctx ends before Run has stopped, and Close then returns that ctx's
// error within its bound.
func TestHandlerContext(t *testing.T) {
	t.Run("Run's ctx cancelled", func(t *testing.T) {
		c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
		kdelivertest.Seed(t, c.Brokers(), "in", 5)
		s, err := New(c.Brokers(), "g", []string{"in"}, "hctx-run", fastOpts(WithOutputTopic("out"), WithCommitEvery(100, 2*time.Second))...)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		runCtx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "run"))
		defer cancel()
		var calls int
		var value any
		var afterCancel error
		err = s.Run(runCtx, func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			calls++
			value = ctx.Value(ctxKey{})
			cancel()
			time.Sleep(50 * time.Millisecond) // a cancellation would have reached ctx by now
			afterCancel = ctx.Err()
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
		if err != nil {
			t.Fatalf("Run = %v, want nil after its ctx was cancelled", err)
		}
		if value != "run" {
			t.Errorf("the handler's ctx carries %v, want Run's value %q", value, "run")
		}
		if afterCancel != nil {
			t.Errorf("the handler's ctx ended (%v) when Run's was cancelled, want it live until the handler returns", afterCancel)
		}
		if calls != 1 {
			t.Errorf("%d handler calls, want 1: Run stops at the next record", calls)
		}
		if got := c.Committed("g", "in"); got[0] != 1 {
			t.Errorf("committed %v, want offset 1: the record handled while stopping is committed", got)
		}
		exactly(t, c, "out", []string{"0"})
	})

	t.Run("Close's ctx ends first", func(t *testing.T) {
		c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
		kdelivertest.Seed(t, c.Brokers(), "in", 5)
		s, err := New(c.Brokers(), "g", []string{"in"}, "hctx-close", fastOpts(WithOutputTopic("out"))...)
		if err != nil {
			t.Fatal(err)
		}
		entered := make(chan struct{})
		ended := make(chan error, 1)
		done := make(chan error, 1)
		go func() {
			done <- s.Run(context.Background(), func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
				close(entered)
				<-ctx.Done() // a handler that finishes only when told to
				ended <- ctx.Err()
				return ctx.Err()
			})
		}()
		<-entered
		const bound = 300 * time.Millisecond
		closeCtx, cancelClose := context.WithTimeout(context.Background(), bound)
		defer cancelClose()
		began := time.Now()
		err = s.Close(closeCtx)
		took := time.Since(began)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close = %v, want its ctx's error: Run had not stopped", err)
		}
		if took > bound+5*time.Second {
			t.Errorf("Close took %v with a %v ctx", took, bound)
		}
		select {
		case err := <-ended:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("the handler's ctx ended with %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the handler's ctx was not cancelled when Close's ctx ended")
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after Close")
		}
		if got := c.Committed("g", "in"); len(got) != 0 {
			t.Errorf("committed %v: the record whose handler was cancelled must not be", got)
		}
		if got := kdelivertest.ReadCommitted(t, c.Brokers(), "out"); len(got) != 0 {
			t.Errorf("output %q visible", kdelivertest.Values(got))
		}
	})
}

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

// TestFencedErrorFamily: the error of a fenced session is the root family's:
// it matches kdeliver.ErrFenced (whichever package returns it), carries
// Kafka's error, and is of class Fatal, so generic code stops the instance.
// The session is fenced here by a bare producer initializing its
// transactional ID between two transactions.
func TestFencedErrorFamily(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 1)
	s, err := New(c.Brokers(), "g", []string{"in"}, "fenced-family", fastOpts(WithOutputTopic("out"), WithCommitEvery(1, 10*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := true
	err = s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if first {
			first = false
			// Another instance takes over the transactional ID while
			// this transaction is open.
			other, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.TransactionalID("fenced-family"), kgo.DisableClientMetrics())
			if err != nil {
				return err
			}
			defer other.Close()
			if err := other.BeginTransaction(); err != nil {
				return err
			}
			if err := other.ProduceSync(ctx, &kgo.Record{Topic: "out", Value: []byte("other")}).FirstErr(); err != nil {
				return err
			}
			if err := other.EndTransaction(ctx, kgo.TryCommit); err != nil {
				return err
			}
		}
		emit(&kgo.Record{Value: in.Value})
		return nil
	})
	if !errors.Is(err, kdeliver.ErrFenced) {
		t.Fatalf("Run = %v, want an error matching kdeliver.ErrFenced", err)
	}
	if cl := kdeliver.ClassOf(err); cl != kdeliver.Fatal {
		t.Errorf("ClassOf(%v) = %v, want Fatal", err, cl)
	}
	var he *kdeliver.HandlerError
	if errors.As(err, &he) {
		t.Errorf("a fenced session's error is a HandlerError: %v", err)
	}
	if st := s.Stats(); st.Fenced != 1 || st.Committed != 0 {
		t.Errorf("stats %+v: want one fenced transaction and no commit", st)
	}
	if got := kdelivertest.Values(kdelivertest.ReadCommitted(t, c.Brokers(), "out")); len(got) != 1 || got[0] != "other" {
		t.Errorf("read_committed output %q, want only the other instance's record", got)
	}
}
