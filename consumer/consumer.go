package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/preset"
)

// shutdownTimeout bounds the final commit and the group leave when Run's ctx
// was cancelled and no Close deadline applies.
const shutdownTimeout = 30 * time.Second

// Handler processes one record. Its return value drives the commit:
//
//   - nil: the record is done; its offset may be committed.
//   - an error: the record failed. Under AtLeastOnce it is retried with
//     exponential backoff ([WithBackoff]) and its offset is never committed
//     while it fails; under AtMostOnce (already committed) it is logged and
//     skipped.
//   - [Skip](err): give up on the record; it is logged and committed past.
//
// A panic is recovered and treated as an error wrapping [ErrPanic].
//
// The handler runs on Run's goroutine, one record at a time, in offset order
// within a partition. ctx carries the record's "process" span (joined to the
// producer's trace) and Run's values; it is not cancelled when Run's ctx is,
// so the record in hand can finish, but it is cancelled when [Consumer.Close]
// gives up waiting. The record and its slices must not be kept after the
// handler returns.
type Handler func(ctx context.Context, rec *kgo.Record) error

// Consumer reads records of a consumer group and hands them to a [Handler],
// committing offsets in the order its [kdeliver.Semantics] requires. Create
// it with [New], run it once with [Consumer.Run], stop it by cancelling Run's
// ctx or with [Consumer.Close]. Its methods are safe for concurrent use.
type Consumer struct {
	cl     *kgo.Client
	sem    kdeliver.Semantics
	cfg    config
	tracer *kotel.Tracer
	log    *slog.Logger

	mu    sync.Mutex
	state int // stateNew, stateRunning, stateClosed
	stop  context.CancelFunc
	hard  context.CancelFunc
	done  chan struct{}

	// Offsets of records whose handler finished but which are not
	// committed yet (AtLeastOnce): the next offset to read, by partition.
	pmu     sync.Mutex
	pending map[string]map[int32]kgo.EpochOffset

	crashed       atomic.Bool
	probing       atomic.Bool // New is checking the callbacks
	probed        atomic.Bool
	revokeCommits atomic.Int64 // commits made in OnPartitionsRevoked (tests)
	commitsTried  atomic.Int64 // commits of pending offsets sent (tests)
}

const (
	stateNew = iota
	stateRunning
	stateClosed
)

// New builds a consumer of topics for group with the preset of sem. Nothing
// is read until [Consumer.Run]. It returns an error wrapping
// [kdeliver.ErrInvalidConfig] that lists every problem when: brokers, group
// or topics are missing or empty; sem is invalid; an option is invalid or
// contradicts sem; a raw kgo option weakens the preset. ExactlyOnce is
// refused: Kafka-to-Kafka exactly-once goes through package eos, other sinks
// need package dedup.
func New(brokers []string, group string, topics []string, sem kdeliver.Semantics, opts ...Option) (*Consumer, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			cfg.Reject("an option is nil")
			continue
		}
		o.Apply(&cfg)
	}
	var ps kdeliver.Problems
	ps.Add(len(brokers) == 0, "no brokers: pass at least one host:port to bootstrap from")
	for _, b := range brokers {
		ps.Add(b == "", "a broker address is empty")
	}
	pc := preset.Consumer{Semantics: sem, Group: group, Topics: topics}
	pc.Validate(&ps)
	ps.Add(sem == kdeliver.ExactlyOnce, "ExactlyOnce needs the sink in the commit: for Kafka-to-Kafka use package eos (eos.Session commits the offsets in the output transaction); other sinks need package dedup (not released yet); until then choose AtLeastOnce with an idempotent handler")
	ps.Add(sem == kdeliver.AtMostOnce && cfg.retrySet, "AtMostOnce never retries a handler (a retry can repeat a partial effect): remove WithBackoff and WithMaxAttempts, or choose AtLeastOnce")
	for _, p := range cfg.problems {
		ps.Add(true, p)
	}
	if err := ps.Err("consumer", sem); err != nil {
		return nil, err
	}

	c := &Consumer{
		sem:     sem,
		cfg:     cfg,
		log:     cfg.shared.Logger,
		pending: make(map[string]map[int32]kgo.EpochOffset),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("group", group, "semantics", sem.String())
	base, tracer := preset.Base(&cfg.shared, group)
	c.tracer = tracer
	kopts := append(base, kgo.SeedBrokers(brokers...))
	kopts = append(kopts, pc.Opts()...)
	// Rebalances wait until a polled batch is committed (AtMostOnce) or
	// processed and committed (AtLeastOnce): no partition changes owner
	// with records in hand.
	kopts = append(kopts,
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	kopts = append(kopts, cfg.kgoOpts...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		ps.Add(true, "franz-go refused the options: "+err.Error())
		return nil, ps.Err("consumer", sem)
	}
	pc.Check(cl, &ps)
	revokedOK, lostOK := c.probeCallbacks(cl)
	ps.Add(!revokedOK, "a raw option set OnPartitionsRevoked, which kdeliver uses to commit processed offsets on revoke: remove it")
	ps.Add(!lostOK, "a raw option set OnPartitionsLost, which kdeliver uses to forget offsets it may no longer commit: remove it")
	ps.Add(cl.OptValue(kgo.ConsumeResetOffset).(kgo.Offset) != kgo.NewOffset().AtStart(),
		"a raw option changed the reset offset, which would skip records whose offset is out of range: remove kgo.ConsumeResetOffset")
	if err := ps.Err("consumer", sem); err != nil {
		cl.Close()
		return nil, err
	}
	c.cl = cl
	return c, nil
}

// probeCallbacks reports whether the built client's revoke and lost
// callbacks are still kdeliver's. kgo wraps callbacks, so they cannot be
// compared; instead each is called with no partitions while c is probing, and
// kdeliver's callbacks only note the call. A raw callback that replaced ours
// gets an empty call, which kgo makes too (a cooperative rebalance revoking
// nothing).
func (c *Consumer) probeCallbacks(cl *kgo.Client) (revoked, lost bool) {
	call := func(opt any) bool {
		fn, ok := cl.OptValue(opt).(func(context.Context, *kgo.Client, map[string][]int32))
		if !ok || fn == nil {
			return false
		}
		c.probed.Store(false)
		c.probing.Store(true)
		defer c.probing.Store(false)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		fn(ctx, cl, map[string][]int32{})
		return c.probed.Load()
	}
	return call(kgo.OnPartitionsRevoked), call(kgo.OnPartitionsLost)
}

// Semantics returns the semantics the consumer was built with.
func (c *Consumer) Semantics() kdeliver.Semantics { return c.sem }

// Run joins the group and hands each record to h until ctx is cancelled,
// [Consumer.Close] is called, or a handler keeps failing. It blocks, and a
// Consumer runs once: a second call returns an error, a call after Close
// returns [kdeliver.ErrClosed].
//
// When ctx is cancelled Run finishes the record in hand (AtMostOnce: the rest
// of the batch too, since its offsets are committed already), commits what
// the semantics allows, leaves the group, closes the client and returns nil.
// It returns a [*HandlerError] when a record failed [WithMaxAttempts] times.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: consumer: nil handler", kdeliver.ErrInvalidConfig)
	}
	c.mu.Lock()
	switch c.state {
	case stateClosed:
		c.mu.Unlock()
		return kdeliver.ErrClosed
	case stateRunning:
		c.mu.Unlock()
		return errors.New("consumer: Run called twice: a Consumer runs once")
	}
	runCtx, stop := context.WithCancel(ctx)
	hardCtx, hard := context.WithCancel(context.WithoutCancel(ctx))
	c.state, c.stop, c.hard, c.done = stateRunning, stop, hard, make(chan struct{})
	c.mu.Unlock()

	defer func() {
		stop()
		hard()
		c.mu.Lock()
		c.state = stateClosed
		close(c.done)
		c.mu.Unlock()
	}()

	c.log.Info("consumer running")
	err := c.loop(runCtx, hardCtx, h)
	if c.crashed.Load() {
		// A simulated SIGKILL: no commit, no graceful leave.
		c.log.Warn("simulated crash: closing without committing", "err", err)
		c.cl.CloseAllowingRebalance()
		return err
	}
	sctx, cancel := context.WithTimeout(hardCtx, shutdownTimeout)
	defer cancel()
	if cerr := c.commitPending(sctx); cerr != nil {
		c.log.Warn("final commit failed: records after the last commit will be delivered again", "err", cerr)
	}
	c.cl.AllowRebalance()
	if lerr := c.cl.LeaveGroupContext(sctx); lerr != nil {
		c.log.Warn("leaving the group", "err", lerr)
	}
	c.cl.Close()
	c.log.Info("consumer stopped")
	return err
}

// Close stops a running [Consumer.Run] gracefully and waits for it to return,
// or closes a consumer that never ran. If ctx ends first, the handler's ctx is
// cancelled and Close returns ctx's error without waiting further. Close is
// safe to call twice and concurrently; later calls return nil once Run has
// returned.
func (c *Consumer) Close(ctx context.Context) error {
	c.mu.Lock()
	switch c.state {
	case stateNew:
		c.state = stateClosed
		c.mu.Unlock()
		if err := c.cl.LeaveGroupContext(ctx); err != nil {
			c.log.Warn("leaving the group", "err", err)
		}
		c.cl.CloseAllowingRebalance()
		return nil
	case stateRunning:
		c.stop()
	}
	done, hard := c.done, c.hard
	c.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		hard()
		return ctx.Err()
	}
}

// loop polls and processes until runCtx ends or a handler stops it.
func (c *Consumer) loop(runCtx, hardCtx context.Context, h Handler) error {
	for {
		fetches := c.cl.PollRecords(runCtx, c.cfg.maxPoll)
		if runCtx.Err() != nil {
			// Records polled now are neither committed nor
			// processed: the group delivers them again.
			return nil
		}
		if fetches.IsClientClosed() {
			return kdeliver.ErrClosed
		}
		fetches.EachError(func(t string, p int32, err error) {
			c.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
		})
		var err error
		switch c.sem {
		case kdeliver.AtMostOnce:
			err = c.atMostOnce(hardCtx, fetches, h)
		default:
			err = c.atLeastOnce(runCtx, hardCtx, fetches, h)
		}
		if err != nil || runCtx.Err() != nil {
			return err
		}
		c.cl.AllowRebalance()
	}
}

// atMostOnce commits the batch, then processes it. A batch whose commit
// failed is not processed: it was not committed, so another consumer may get
// it, and processing it here could make a second delivery.
func (c *Consumer) atMostOnce(hardCtx context.Context, fetches kgo.Fetches, h Handler) error {
	recs := fetches.Records()
	if len(recs) == 0 {
		return nil
	}
	if err := c.cl.CommitRecords(hardCtx, recs...); err != nil {
		c.log.Warn("commit before processing failed: dropping the batch unprocessed (at-most-once loses, never repeats)", "records", len(recs), "err", err)
		return nil
	}
	// The offsets are committed: a rebalance can move the partitions now
	// without a second delivery.
	c.cl.AllowRebalance()
	for _, rec := range recs {
		if hardCtx.Err() != nil {
			return nil
		}
		// The batch is committed, so it is processed even after runCtx is
		// cancelled: stopping here would lose it on a clean shutdown.
		err := c.call(hardCtx, h, rec, 1)
		switch {
		case err == nil:
		case errors.Is(err, crash.ErrCrash):
			c.crashed.Store(true)
			return &HandlerError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Attempts: 1, Err: err}
		default:
			c.log.Warn("handler failed: record skipped (at-most-once)", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		}
	}
	return nil
}

// atLeastOnce processes the batch partition by partition in offset order,
// then commits what succeeded.
func (c *Consumer) atLeastOnce(runCtx, hardCtx context.Context, fetches kgo.Fetches, h Handler) error {
	var stopErr error
	stopped, progressed := false, false
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		for _, rec := range p.Records {
			if stopped {
				return
			}
			if runCtx.Err() != nil {
				stopped = true
				return
			}
			done, err := c.retry(runCtx, hardCtx, h, rec)
			if err != nil {
				stopped, stopErr = true, err
				return
			}
			if !done {
				stopped = true // cancelled while waiting to retry
				return
			}
			c.markDone(rec)
			progressed = true
		}
	})
	if c.crashed.Load() || !progressed {
		// A commit that failed earlier is retried with the next batch,
		// on revoke or on shutdown.
		return stopErr
	}
	if err := c.commitPending(hardCtx); err != nil {
		c.log.Warn("commit after processing failed: will retry with the next commit; a crash now repeats these records", "err", err)
	}
	return stopErr
}

// retry runs h on rec until it succeeds, is skipped, or runs out of attempts.
// done is false if runCtx ended while waiting for a retry.
func (c *Consumer) retry(runCtx, hardCtx context.Context, h Handler, rec *kgo.Record) (done bool, err error) {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(c.cfg.backoffInitial),
		backoff.WithMaxInterval(c.cfg.backoffMax),
		backoff.WithMaxElapsedTime(0),
	)
	for attempt := 1; ; attempt++ {
		herr := c.call(hardCtx, h, rec, attempt)
		switch {
		case herr == nil:
			return true, nil
		case errors.Is(herr, crash.ErrCrash):
			c.crashed.Store(true)
			return false, &HandlerError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Attempts: attempt, Err: herr}
		case isSkip(herr):
			c.log.Warn("handler skipped the record: committing past it", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", herr)
			return true, nil
		case c.cfg.maxAttempts > 0 && attempt >= c.cfg.maxAttempts:
			return false, &HandlerError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Attempts: attempt, Err: herr}
		}
		wait := bo.NextBackOff()
		c.log.Warn("handler failed: retrying", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "attempt", attempt, "wait", wait, "err", herr)
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
func (c *Consumer) call(ctx context.Context, h Handler, rec *kgo.Record, attempt int) (err error) {
	_, span := c.tracer.WithProcessSpan(rec)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("handler panicked", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrPanic, r)
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

func (c *Consumer) markDone(rec *kgo.Record) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	tp := c.pending[rec.Topic]
	if tp == nil {
		tp = make(map[int32]kgo.EpochOffset)
		c.pending[rec.Topic] = tp
	}
	tp[rec.Partition] = kgo.EpochOffset{Epoch: rec.LeaderEpoch, Offset: rec.Offset + 1}
}

// commitPending commits the offsets of processed records and forgets those
// that were committed.
func (c *Consumer) commitPending(ctx context.Context) error {
	c.pmu.Lock()
	offsets := make(map[string]map[int32]kgo.EpochOffset, len(c.pending))
	for t, ps := range c.pending {
		m := make(map[int32]kgo.EpochOffset, len(ps))
		for p, o := range ps {
			m[p] = o
		}
		offsets[t] = m
	}
	c.pmu.Unlock()
	if len(offsets) == 0 {
		return nil
	}
	err := commit(ctx, c.cl, offsets)
	c.commitsTried.Add(1)
	if err != nil {
		return err
	}
	c.pmu.Lock()
	for t, ps := range offsets {
		for p, o := range ps {
			if c.pending[t][p] == o {
				delete(c.pending[t], p)
			}
		}
		if len(c.pending[t]) == 0 {
			delete(c.pending, t)
		}
	}
	c.pmu.Unlock()
	return nil
}

// commit commits offsets synchronously and returns the first error,
// including per-partition errors.
func commit(ctx context.Context, cl *kgo.Client, offsets map[string]map[int32]kgo.EpochOffset) error {
	var rerr error
	cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			rerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil && rerr == nil {
					rerr = fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, err)
				}
			}
		}
	})
	return rerr
}

// onRevoked commits what was processed before partitions move to another
// member. It runs on kgo's group goroutine, only while Run allows
// rebalancing (between batches) or while leaving the group.
func (c *Consumer) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	if c.probing.Load() {
		c.probed.Store(true)
		return
	}
	if c.crashed.Load() {
		return
	}
	c.pmu.Lock()
	n := 0
	for _, ps := range c.pending {
		n += len(ps)
	}
	c.pmu.Unlock()
	if n > 0 {
		if err := c.commitPending(ctx); err != nil {
			c.log.Warn("commit on revoke failed: the new owner repeats records after the last commit", "err", err)
		} else {
			c.revokeCommits.Add(1)
			c.log.Info("committed on revoke", "partitions", n)
		}
	}
	c.forget(revoked)
}

// onLost forgets offsets of partitions lost without a clean revoke: the
// group may have given them to another member, whose progress a late
// commit from here would overwrite.
func (c *Consumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	if c.probing.Load() {
		c.probed.Store(true)
		return
	}
	c.log.Warn("partitions lost: their uncommitted progress will be repeated", "partitions", lost)
	c.forget(lost)
}

func (c *Consumer) forget(parts map[string][]int32) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	for t, ps := range parts {
		for _, p := range ps {
			delete(c.pending[t], p)
		}
		if len(c.pending[t]) == 0 {
			delete(c.pending, t)
		}
	}
}
