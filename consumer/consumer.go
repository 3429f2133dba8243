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
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/ready"
)

// Bounds of Run's shutdown after its ctx was cancelled, when no Close
// deadline applies: the final commit, then leaving the group (which kgo
// makes wait for a group join in flight, up to the rebalance timeout; past
// the bound the client is closed without a leave, and the group notices after
// its session timeout).
const (
	shutdownTimeout = 30 * time.Second
	leaveTimeout    = 5 * time.Second
)

// Handler processes one record. Its return value drives the commit:
//
//   - nil: the record is done; its offset may be committed.
//   - an error: the record failed. Under AtLeastOnce and ExactlyOnce it is
//     retried with exponential backoff ([WithBackoff]) and its offset is
//     never committed while it fails; under AtMostOnce (already committed)
//     it is logged and skipped.
//   - [Skip](err): give up on the record; it is logged and committed past.
//
// A panic is recovered and treated as an error wrapping [ErrPanic]. Under
// ExactlyOnce with [WithDedup] the handler runs inside the guard, which
// skips records already done; with [WithSink] there is no handler (the
// sink's Write is the side effect).
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
	cl  *kgo.Client
	clp atomic.Pointer[kgo.Client] // cl, for kgo callbacks that may run during New
	// kill cancels the client's root context: every request in flight
	// (a group join included) ends, so closing cannot outlive a bound.
	kill    context.CancelFunc
	brokers []string
	topics  []string
	start   time.Duration // the start timeout
	sem     kdeliver.Semantics
	cfg     config
	tracer  *kotel.Tracer
	log     *slog.Logger

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
// contradicts sem; a raw kgo option weakens the preset. ExactlyOnce needs
// [WithSink] or [WithDedup] (one of them, and only with ExactlyOnce);
// Kafka-to-Kafka exactly-once goes through package eos instead.
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
	pc := preset.Consumer{Semantics: sem, Group: group, Topics: topics, ReadCommitted: cfg.readCommitted}
	pc.Validate(&ps)
	ps.Add(sem == kdeliver.ExactlyOnce && !cfg.dedupSet, "ExactlyOnce needs the side effect tied to the offsets: pass consumer.WithSink(sink) (the offsets commit in the sink's own transaction, e.g. pgstore.Sink) or consumer.WithDedup(guard) (a dedup.Guard skips redelivered records); for Kafka-to-Kafka use eos.Session (the offsets commit in the output transaction)")
	ps.Add(cfg.guard != nil && cfg.sink != nil, "WithDedup and WithSink were both given: choose one (WithSink when the side effect is a write to the sink's database, WithDedup otherwise)")
	ps.Add(sem.Valid() && sem != kdeliver.ExactlyOnce && (cfg.guard != nil || cfg.sink != nil), "WithDedup and WithSink make the consumer exactly-once: choose kdeliver.ExactlyOnce")
	ps.Add(sem == kdeliver.AtMostOnce && cfg.retrySet, "AtMostOnce never retries a handler (a retry can repeat a partial effect): remove WithBackoff and WithMaxAttempts, or choose AtLeastOnce")
	start, problem := cfg.shared.Start()
	ps.Add(problem != "", problem)
	for _, p := range cfg.problems {
		ps.Add(true, p)
	}
	if err := ps.Err("consumer", sem); err != nil {
		return nil, err
	}

	c := &Consumer{
		sem:     sem,
		cfg:     cfg,
		log:     cfg.shared.Log(),
		pending: make(map[string]map[int32]kgo.EpochOffset),
		brokers: brokers,
		topics:  topics,
		start:   start,
	}
	root, kill := context.WithCancel(context.Background())
	c.kill = kill
	c.log = c.log.With("group", group, "semantics", sem.String())
	base, tracer := preset.Base(&cfg.shared, group)
	c.tracer = tracer
	kopts := append(base, kgo.SeedBrokers(brokers...), kgo.WithContext(root))
	kopts = append(kopts, pc.Opts()...)
	// Rebalances wait until a polled batch is committed (AtMostOnce) or
	// processed and committed (AtLeastOnce): no partition changes owner
	// with records in hand.
	kopts = append(kopts,
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	if cfg.sink != nil {
		// Each newly assigned partition is claimed in the sink and
		// starts at the offset the sink stored.
		adjust := dedup.AdjustFetchOffsets(cfg.sink, group, c.groupMetadata)
		kopts = append(kopts, kgo.AdjustFetchOffsetsFn(func(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
			if probed(ctx) {
				return offsets, nil
			}
			return adjust(ctx, offsets)
		}))
	}
	cl := preset.Build(kopts, cfg.kgoOpts, pc.Check, &ps)
	if cl == nil {
		kill()
		return nil, ps.Err("consumer", sem)
	}
	c.clp.Store(cl)
	revokedOK, lostOK, adjustOK := probeCallbacks(cl)
	ps.Add(!revokedOK, "a raw option set OnPartitionsRevoked, which kdeliver uses to commit processed offsets on revoke: remove it")
	ps.Add(!lostOK, "a raw option set OnPartitionsLost, which kdeliver uses to forget offsets it may no longer commit: remove it")
	ps.Add(cfg.sink != nil && !adjustOK, "a raw option set AdjustFetchOffsetsFn, which WithSink uses to start each partition at the sink's offset: remove it")
	ps.Add(cl.OptValue(kgo.WithContext) != context.Context(root),
		"a raw option set kgo.WithContext, which Close needs to stop the client within its ctx: remove it (cancel Run's ctx, or call Close, to stop)")
	if err := ps.Err("consumer", sem); err != nil {
		kill()
		cl.Close()
		return nil, err
	}
	c.cl = cl
	return c, nil
}

// probeKey marks the ctx of New's calls to the client's callbacks.
type probeKey struct{}

// probed reports whether ctx is a probe from [probeCallbacks], and notes
// that one of kdeliver's callbacks received it.
func probed(ctx context.Context) bool {
	hit, _ := ctx.Value(probeKey{}).(*atomic.Bool)
	if hit == nil {
		return false
	}
	hit.Store(true)
	return true
}

// probeCallbacks reports whether the built client's revoke, lost and
// adjust-offsets callbacks are still kdeliver's. kgo wraps callbacks, so
// they cannot be compared; instead each is called with no partitions and a
// cancelled ctx marked as a probe, which kdeliver's callbacks only note. A
// raw callback that replaced ours gets an empty call, which kgo makes too (a
// cooperative rebalance revoking nothing). The mark is in the ctx, so a real
// callback that kgo runs meanwhile (the group may be joined during New) is
// not mistaken for the probe.
func probeCallbacks(cl *kgo.Client) (revoked, lost, adjust bool) {
	probe := func(call func(ctx context.Context)) bool {
		var hit atomic.Bool
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), probeKey{}, &hit))
		cancel()
		call(ctx)
		return hit.Load()
	}
	callback := func(opt any) bool {
		fn, ok := cl.OptValue(opt).(func(context.Context, *kgo.Client, map[string][]int32))
		return ok && fn != nil && probe(func(ctx context.Context) { fn(ctx, cl, map[string][]int32{}) })
	}
	fn, ok := cl.OptValue(kgo.AdjustFetchOffsetsFn).(func(context.Context, map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error))
	adjust = ok && fn != nil && probe(func(ctx context.Context) { _, _ = fn(ctx, map[string]map[int32]kgo.Offset{}) })
	return callback(kgo.OnPartitionsRevoked), callback(kgo.OnPartitionsLost), adjust
}

// groupMetadata returns the member ID and generation for the sink's
// assignments; kgo may assign partitions before New has returned.
func (c *Consumer) groupMetadata() (string, int32) {
	if cl := c.clp.Load(); cl != nil {
		return cl.GroupMetadata()
	}
	return "", -1
}

// Semantics returns the semantics the consumer was built with.
func (c *Consumer) Semantics() kdeliver.Semantics { return c.sem }

// Run joins the group and hands each record to h until ctx is cancelled,
// [Consumer.Close] is called, or a handler keeps failing. It blocks, and a
// Consumer runs once: a second call returns an error, a call after Close
// returns [kdeliver.ErrClosed].
//
// With [WithSink], h must be nil: Run writes each partition's records to
// the sink instead. Otherwise h must not be nil.
//
// When ctx is cancelled Run finishes the record in hand (AtMostOnce: the rest
// of the batch too, since its offsets are committed already; WithSink: the
// sink write in hand), commits what the semantics allows, leaves the group,
// closes the client and returns nil. It returns a [*HandlerError] when a
// record (or a sink write) failed [WithMaxAttempts] times.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	switch {
	case c.cfg.sink != nil && h != nil:
		return fmt.Errorf("%w: consumer: a handler was passed with WithSink: the sink writes the records, pass a nil handler", kdeliver.ErrInvalidConfig)
	case c.cfg.sink == nil && h == nil:
		return fmt.Errorf("%w: consumer: nil handler", kdeliver.ErrInvalidConfig)
	case c.cfg.guard != nil:
		h = c.cfg.guard.Handler(h)
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
	if err := ready.Wait(runCtx, c.cl, c.brokers, c.topics, c.start, c.log); err != nil {
		c.kill()
		c.cl.Close()
		if runCtx.Err() != nil {
			return nil
		}
		return fmt.Errorf("consumer: %w", err)
	}
	err := c.loop(runCtx, hardCtx, h)
	if c.crashed.Load() {
		// A simulated SIGKILL: no commit, no graceful leave.
		c.log.Warn("simulated crash: closing without committing", "err", err)
		lctx, lcancel := context.WithTimeout(hardCtx, leaveTimeout)
		defer lcancel()
		c.closeClient(lctx) // leaves, so that a restart need not wait out the session
		return err
	}
	sctx, cancel := context.WithTimeout(hardCtx, shutdownTimeout)
	defer cancel()
	if cerr := c.commitPending(sctx); cerr != nil {
		c.log.Warn("final commit failed: records after the last commit will be delivered again", "err", cerr)
	}
	lctx, lcancel := context.WithTimeout(hardCtx, leaveTimeout)
	defer lcancel()
	c.closeClient(lctx)
	c.log.Info("consumer stopped")
	return err
}

// closeClient leaves the group within ctx and closes the client. A client
// that never joined (its first join may wait on the broker until the
// rebalance timeout, and kgo's leave waits for it) or whose leave does not
// finish within ctx is closed at once without a leave: the group notices
// after its session timeout.
func (c *Consumer) closeClient(ctx context.Context) {
	if _, gen := c.cl.GroupMetadata(); gen < 0 {
		c.kill()
	} else {
		c.cl.AllowRebalance()
		if err := c.cl.LeaveGroupContext(ctx); err != nil {
			c.log.Warn("leaving the group did not finish: closing without it (the group reassigns the partitions after its session timeout)", "err", err)
			c.kill()
		}
	}
	c.cl.CloseAllowingRebalance()
	c.kill()
}

// Ping checks once, bounded by ctx, that a broker answers and that every
// topic the consumer reads exists. It returns nil or an error matching
// [kdeliver.ErrUnreachable] or [kdeliver.ErrTopicNotFound] that names what
// is missing. Run makes the same check, repeated for up to the start timeout
// (kdeliver.WithStartTimeout), before reading.
func (c *Consumer) Ping(ctx context.Context) error {
	c.mu.Lock()
	closed := c.state == stateClosed
	c.mu.Unlock()
	if closed {
		return kdeliver.ErrClosed
	}
	return ready.Check(ctx, c.cl, c.brokers, c.topics)
}

// Close stops a running [Consumer.Run] gracefully and waits for it to return,
// or closes a consumer that never ran, within ctx. If ctx ends first, the
// handler's ctx is cancelled, the client is closed at once (no final commit
// beyond what was committed, no leave) and Close returns ctx's error without
// waiting for Run, which returns once the handler in hand returns. Close
// is safe to call twice and concurrently; later calls return nil once Run has
// returned.
func (c *Consumer) Close(ctx context.Context) error {
	c.mu.Lock()
	switch c.state {
	case stateNew:
		c.state = stateClosed
		c.mu.Unlock()
		done := make(chan struct{})
		go func() {
			c.closeClient(ctx)
			close(done)
		}()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			c.kill()
			<-done
			return ctx.Err()
		}
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
		// Run returns once the handler in hand does.
		hard()
		c.kill()
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
		switch {
		case c.sem == kdeliver.AtMostOnce:
			err = c.atMostOnce(hardCtx, fetches, h)
		case c.cfg.sink != nil:
			err = c.writeSink(runCtx, hardCtx, fetches)
		default: // AtLeastOnce, ExactlyOnce with a guard
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
			done, err := c.retry(runCtx, hardCtx, rec, whatHandler, func(attempt int) error { return c.call(hardCtx, h, rec, attempt) })
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

const whatHandler = "handler"

// retry runs try (the handler on rec, or a sink write of the batch starting
// at rec; what names it in logs) until it succeeds, is skipped, or runs out
// of attempts. done is false if runCtx ended while waiting for a retry.
func (c *Consumer) retry(runCtx, hardCtx context.Context, rec *kgo.Record, what string, try func(attempt int) error) (done bool, err error) {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(c.cfg.backoffInitial),
		backoff.WithMaxInterval(c.cfg.backoffMax),
		backoff.WithMaxElapsedTime(0),
	)
	for attempt := 1; ; attempt++ {
		herr := try(attempt)
		switch {
		case herr == nil:
			return true, nil
		case errors.Is(herr, crash.ErrCrash):
			c.crashed.Store(true)
			return false, &HandlerError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Attempts: attempt, Err: herr}
		case what == whatHandler && isSkip(herr):
			// Only a handler may skip: a sink that skipped a batch
			// would store a later offset past it, losing it.
			c.log.Warn(what+" skipped the record: committing past it", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", herr)
			return true, nil
		case c.cfg.guard != nil && errors.Is(herr, dedup.ErrNoKey),
			c.cfg.maxAttempts > 0 && attempt >= c.cfg.maxAttempts:
			// A record without a dedup key fails every retry the same way.
			return false, &HandlerError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Attempts: attempt, Err: herr}
		}
		wait := bo.NextBackOff()
		c.log.Warn(what+" failed: retrying", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "attempt", attempt, "wait", wait, "err", herr)
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

// writeSink writes each partition's records of the batch to the sink, one
// Write per partition, retrying failures. Nothing is committed to Kafka: the
// sink stores the offsets in the same transaction as the records.
func (c *Consumer) writeSink(runCtx, hardCtx context.Context, fetches kgo.Fetches) error {
	var stopErr error
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if stopErr != nil || len(p.Records) == 0 || runCtx.Err() != nil {
			// Unwritten records are read again from the sink's offset
			// by the partition's next owner.
			return
		}
		first := p.Records[0]
		_, stopErr = c.retry(runCtx, hardCtx, first, "sink write", func(int) error {
			err := c.write(hardCtx, p.Records)
			if errors.Is(err, dedup.ErrFenced) {
				last := p.Records[len(p.Records)-1]
				c.log.Warn("sink fenced this consumer off the partition: dropping its records (the owner writes them)",
					"topic", p.Topic, "partition", p.Partition, "from", first.Offset, "to", last.Offset, "err", err)
				return nil
			}
			return err
		})
	})
	return stopErr
}

// write calls the sink's Write, turning a panic into an error.
func (c *Consumer) write(ctx context.Context, recs []*kgo.Record) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("sink write panicked", "topic", recs[0].Topic, "partition", recs[0].Partition, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrPanic, r)
		}
	}()
	return c.cfg.sink.Write(ctx, recs)
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
// member (with a sink: drops the sink's claims, the offsets are stored
// already). It runs on kgo's group goroutine, only while Run allows
// rebalancing (between batches) or while leaving the group.
func (c *Consumer) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	if probed(ctx) || c.crashed.Load() {
		return
	}
	if c.cfg.sink != nil {
		c.cfg.sink.Revoke(revoked)
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
func (c *Consumer) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	if probed(ctx) {
		return
	}
	if c.cfg.sink != nil {
		c.log.Warn("partitions lost: the sink's claims on them are dropped", "partitions", lost)
		c.cfg.sink.Revoke(lost)
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
