package consumer

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/ready"
	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

// run is the state of one Run: its client and the offsets of records whose
// handler finished but which are not committed yet.
type run struct {
	c    *Consumer
	h    Handler
	cl   *kgo.Client
	clp  atomic.Pointer[kgo.Client] // cl, for kgo callbacks that may run before NewClient returned
	kill context.CancelFunc         // cancels the client's root context

	// Offsets of records whose handler finished but which are not
	// committed yet (AtLeastOnce): the next offset to read, by partition.
	pmu     sync.Mutex
	pending map[string]map[int32]kgo.EpochOffset

	crashed atomic.Bool

	// When the sequential loop last committed (or tried to); only the
	// loop's goroutine reads and writes it.
	lastCommit time.Time

	eng *engine // the concurrent engine, nil for the sequential loop

	assigned txnwatch.Assignment // the partitions owned, for the hanging-transaction watch

	fmu      sync.Mutex
	fatal    error              // the first failure no retry fixes; Run returns it
	stopLoop context.CancelFunc // stops the loop as a cancellation would; nil before it starts
}

// fail records err, a failure no retry fixes (nil: nothing), as what Run
// returns, and stops the loop. Safe for concurrent use, kgo hooks included.
func (r *run) fail(err error) {
	if err == nil {
		return
	}
	r.fmu.Lock()
	defer r.fmu.Unlock()
	if r.fatal != nil {
		return
	}
	r.fatal = err
	r.c.log.Error("consumer stopping: a failure no retry fixes", "err", err)
	if r.stopLoop != nil {
		r.stopLoop()
	}
}

func (r *run) fatalErr() error {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	return r.fatal
}

// fetchErrors logs the errors of a poll and returns the first failure no
// retry fixes among them ([fatal.Scope.Fetches]), or nil.
func (r *run) fetchErrors(fetches kgo.Fetches) error {
	return r.c.scope.Fetches(fetches, func(t string, p int32, err error) {
		r.c.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
	})
}

// watchTopics checks, every start timeout while the loop runs, that the
// brokers accept the client and the topics still exist ([ready.Watch]);
// wait returns once it stopped.
func (r *run) watchTopics(ctx context.Context, topics []string) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ready.Watch(ctx, func() *kgo.Client { return r.cl }, r.c.scope, topics, r.c.hd.Start(), r.fail)
	}()
	return func() { <-done }
}

// loop polls and processes until runCtx ends or a handler stops it.
func (r *run) loop(runCtx, hardCtx context.Context) error {
	h := r.h
	for {
		fetches, idle := r.poll(runCtx)
		if idle {
			// Caught up, and a commit came due while waiting for
			// records: commit what was handled since the last.
			r.commit(hardCtx)
			r.cl.AllowRebalance()
			continue
		}
		if runCtx.Err() != nil {
			// Records polled now are neither committed nor
			// processed: the group delivers them again.
			return nil
		}
		if fetches.IsClientClosed() {
			return kdeliver.ErrClosed
		}
		if err := r.fetchErrors(fetches); err != nil {
			// Nothing of this poll is handled: its records are read
			// again by the partitions' next owner, and the final
			// commit covers only what was handled before.
			r.fail(err)
			return err
		}
		r.c.lag.Fetched(fetches)
		var err error
		switch {
		case r.c.sem == kdeliver.AtMostOnce:
			err = r.atMostOnce(hardCtx, fetches, h)
		case r.c.sink != nil:
			err = r.writeSink(runCtx, hardCtx, fetches)
		default: // AtLeastOnce, ExactlyOnce with a guard
			err = r.atLeastOnce(runCtx, hardCtx, fetches, h)
		}
		if err != nil || runCtx.Err() != nil {
			return err
		}
		r.cl.AllowRebalance()
	}
}

// atMostOnce commits the batch, then processes it. A batch whose commit
// failed is not processed: it was not committed, so another consumer may get
// it, and processing it here could make a second delivery.
func (r *run) atMostOnce(hardCtx context.Context, fetches kgo.Fetches, h Handler) error {
	recs := fetches.Records()
	if len(recs) == 0 {
		return nil
	}
	start := time.Now()
	err := r.cl.CommitRecords(hardCtx, recs...)
	r.c.noteCommit(start, err)
	if err != nil {
		r.c.log.Warn("commit before processing failed: dropping the batch unprocessed (at-most-once loses, never repeats)", "records", len(recs), "err", err)
		return nil
	}
	r.c.lag.CommittedRecords(recs)
	// The offsets are committed: a rebalance can move the partitions now
	// without a second delivery.
	r.cl.AllowRebalance()
	handled := 0
	defer func() { r.c.stats.handled.Add(int64(handled)) }()
	for _, rec := range recs {
		if hardCtx.Err() != nil {
			return nil
		}
		// The batch is committed, so it is processed even after runCtx is
		// cancelled: stopping here would lose it on a clean shutdown.
		err := r.call(hardCtx, h, rec, 1)
		switch {
		case err == nil:
			handled++
		case errors.Is(err, crash.ErrCrash):
			r.crashed.Store(true)
			return &kdeliver.HandlerError{Record: rec, Attempts: 1, Err: err}
		default:
			handled++
			r.c.stats.skipped.Add(1)
			r.c.log.Warn("handler failed: record skipped (at-most-once)", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		}
	}
	return nil
}

// atLeastOnce processes the batch partition by partition in offset order,
// then commits what succeeded once a commit is due ([run.commitDue]).
func (r *run) atLeastOnce(runCtx, hardCtx context.Context, fetches kgo.Fetches, h Handler) error {
	var stopErr error
	stopped, progressed := false, false
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		// The partition's records run in offset order, so the last one
		// done is the partition's progress: marked once, not per record.
		var last *kgo.Record
		handled := 0
		defer func() {
			if last != nil {
				r.markDone(last)
				progressed = true
				r.c.stats.handled.Add(int64(handled))
			}
		}()
		for _, rec := range p.Records {
			if stopped {
				return
			}
			if runCtx.Err() != nil {
				stopped = true
				return
			}
			done, err := r.retry(runCtx, hardCtx, rec, whatHandler, func(attempt int) error { return r.call(hardCtx, h, rec, attempt) })
			if err != nil {
				stopped, stopErr = true, err
				return
			}
			if !done {
				stopped = true // cancelled while waiting to retry
				return
			}
			last = rec
			handled++
		}
	})
	if r.crashed.Load() || !progressed {
		// A commit that failed earlier is retried with the next batch,
		// on revoke or on shutdown.
		return stopErr
	}
	if r.commitDue() {
		r.commit(hardCtx)
	}
	return stopErr
}

// commitDue says whether the sequential loop commits after this batch: once
// a commit interval ([WithCommitInterval]) has passed since the last. A
// consumer that has caught up commits when the interval has passed while it
// waits for records ([run.poll]), so an idle consumer's offsets are never
// left uncommitted for longer than an interval. Records finished since the
// last commit are also committed on revoke and on shutdown, so only a crash
// repeats them: up to an interval's worth.
//
// (Committing as soon as the client held no more fetched records, as this
// loop once did, made a commit round trip whenever the handler outran the
// fetches: on real Kafka, 0.80x the throughput of a loop committing once a
// second, at 1.15x its CPU per record; see BENCHMARKS.md.)
func (r *run) commitDue() bool {
	return time.Since(r.lastCommit) >= r.c.cfg.commitInterval
}

// poll polls the next records. While handled records wait for their commit
// (AtLeastOnce, the sequential loop), it waits for records only until that
// commit is due; idle says the wait ran out with no records polled.
func (r *run) poll(runCtx context.Context) (fetches kgo.Fetches, idle bool) {
	if r.c.sem == kdeliver.AtMostOnce || r.c.sink != nil || !r.hasPending() {
		return r.cl.PollRecords(runCtx, r.c.cfg.maxPoll), false
	}
	ctx, cancel := context.WithDeadline(runCtx, r.lastCommit.Add(r.c.cfg.commitInterval))
	defer cancel()
	fetches = r.cl.PollRecords(ctx, r.c.cfg.maxPoll)
	if runCtx.Err() == nil && fetches.NumRecords() == 0 && errors.Is(fetches.Err0(), context.DeadlineExceeded) {
		return nil, true
	}
	return fetches, false
}

// commit commits what the sequential loop handled since its last commit. A
// failed commit is retried with the next one.
func (r *run) commit(hardCtx context.Context) {
	if r.crashed.Load() {
		return
	}
	r.lastCommit = time.Now()
	if err := r.commitPending(hardCtx); err != nil {
		r.c.log.Warn("commit after processing failed: will retry with the next commit; a crash now repeats these records", "err", err)
	}
}

const whatHandler = "handler"

// retry runs try (the handler on rec, or a sink write of the batch starting
// at rec; what names it in logs) until it succeeds, is skipped, or runs out
// of attempts. done is false if runCtx ended while waiting for a retry.
func (r *run) retry(runCtx, hardCtx context.Context, rec *kgo.Record, what string, try func(attempt int) error) (done bool, err error) {
	var bo *backoff.ExponentialBackOff // made at the first failure: most records never fail
	for attempt := 1; ; attempt++ {
		herr := try(attempt)
		switch {
		case herr == nil:
			return true, nil
		case errors.Is(herr, crash.ErrCrash):
			r.crashed.Store(true)
			return false, &kdeliver.HandlerError{Record: rec, Attempts: attempt, Err: herr}
		case what == whatHandler && isSkip(herr):
			// Only a handler may skip: a sink that skipped a batch
			// would store a later offset past it, losing it.
			r.c.stats.skipped.Add(1)
			r.c.log.Warn(what+" skipped the record: committing past it", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", herr)
			return true, nil
		case r.c.guard != nil && errors.Is(herr, dedup.ErrNoKey),
			r.c.hd.MaxAttempts > 0 && attempt >= r.c.hd.MaxAttempts:
			// A record without a dedup key fails every retry the same way.
			return false, &kdeliver.HandlerError{Record: rec, Attempts: attempt, Err: herr}
		}
		if bo == nil {
			initial, limit := r.c.hd.Backoff()
			bo = backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(initial),
				backoff.WithMaxInterval(limit),
				backoff.WithMaxElapsedTime(0),
			)
		}
		wait := bo.NextBackOff()
		r.c.log.Warn(what+" failed: retrying", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "attempt", attempt, "wait", wait, "err", herr)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-runCtx.Done():
			t.Stop()
			return false, nil
		case <-hardCtx.Done():
			t.Stop()
			return false, nil
		}
	}
}

// call runs h once in a process span, turning a panic into an error.
func (r *run) call(ctx context.Context, h Handler, rec *kgo.Record, attempt int) (err error) {
	if attempt > 1 {
		r.c.stats.retried.Add(1)
	}
	defer func() {
		if err != nil && !isSkip(err) {
			r.c.stats.failed.Add(1)
		}
	}()
	if !r.c.spans.Needed(rec) {
		defer func() {
			if v := recover(); v != nil {
				r.c.log.Error("handler panicked", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				err = fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
			}
		}()
		return h(ctx, rec)
	}
	_, span := r.c.tracer.WithProcessSpan(rec)
	defer func() {
		if v := recover(); v != nil {
			r.c.log.Error("handler panicked", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
		}
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "handler failed")
		}
		span.End()
	}()
	if attempt > 1 {
		span.AddEvent("retry")
	}
	return h(trace.ContextWithSpan(ctx, span), rec)
}
