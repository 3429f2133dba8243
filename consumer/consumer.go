package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/attribute"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/fatal"
	"github.com/kdeliver/kdeliver/internal/metrics"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/ready"
	"github.com/kdeliver/kdeliver/internal/shared"
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
//     retried with exponential backoff ([kdeliver.WithBackoff]) and its
//     offset is never committed while it fails; under AtMostOnce (already
//     committed) it is logged and skipped.
//   - [Skip](err): give up on the record; it is logged and committed past.
//
// A panic is recovered and treated as an error matching [kdeliver.ErrPanic].
// For a consumer built with [NewWithGuard] the handler runs inside the
// guard, which skips records already done.
//
// Without [kdeliver.WithConcurrency] the handler runs on Run's goroutine,
// one record at a time, in offset order within a partition; with it, up to
// n calls run at once, in the order's lanes (see Concurrency in the package
// doc), so the handler must be safe for concurrent use. ctx carries the record's "process" span (joined to the
// producer's trace) and Run's values; it is not cancelled when Run's ctx is,
// so the record in hand can finish, but it is cancelled when
// [Consumer.Close] gives up waiting. The record and its slices must not be
// kept after the handler returns.
type Handler func(ctx context.Context, rec *kgo.Record) error

// Consumer reads records of a consumer group and hands them to a [Handler],
// committing offsets in the order its [kdeliver.Semantics] requires. Build
// it with [New] (at most once, at least once) or [NewWithGuard] (exactly
// once for any side effect, through a dedup guard). See the package doc for
// the lifecycle; its methods are safe for concurrent use.
type Consumer struct {
	sem     kdeliver.Semantics
	group   string
	brokers []string
	topics  []string
	cfg     *config
	hd      shared.Handling
	kopts   []kgo.Opt // the client's options, but for the per-Run callbacks and root context
	tracer  *kotel.Tracer
	spans   *preset.SpanGate // whether a record's process span can be seen
	log     *slog.Logger
	scope   fatal.Scope  // for the errors no retry fixes
	guard   *dedup.Guard // NewWithGuard
	sink    Sink         // NewWithSink

	mu      sync.Mutex
	running bool
	closed  bool
	stop    context.CancelFunc
	hard    context.CancelFunc
	kill    context.CancelFunc // the running client's root context
	done    chan struct{}

	revokeCommits  atomic.Int64 // commits made in OnPartitionsRevoked (tests)
	deadLettered   atomic.Int64 // records written to the dead-letter topic (tests)
	inFlightPeak   atomic.Int64 // most records in flight at once, concurrent engine (tests)
	pauses         atomic.Int64 // partitions paused, concurrent engine (tests)
	revokeInFlight atomic.Int64 // records in flight that revokes waited for (tests)
	commitsTried   atomic.Int64 // commits of pending offsets sent (tests)
	hanging        atomic.Int64 // hanging transactions reported

	stats     counters            // Stats
	lag       metrics.Lag         // Stats.Lag, of the Run in progress
	cur       atomic.Pointer[run] // the Run in progress
	commitDur *metrics.Durations  // kdeliver.consumer.commit.duration
}

// New builds a consumer of topics for group with the preset of sem,
// [kdeliver.AtMostOnce] or [kdeliver.AtLeastOnce]. For the effect of each
// record to happen exactly once, use [NewWithGuard] (any side effect) or
// [NewWithSink] (a sink that stores the offsets with its writes), or
// package eos for Kafka-to-Kafka; New refuses [kdeliver.ExactlyOnce] and
// says which to use.
//
// New does not connect; nothing is read until [Consumer.Run]. It returns an
// error wrapping [kdeliver.ErrInvalidConfig] that lists every problem:
// brokers, group or topics missing or empty; sem invalid; an option invalid,
// nil or contradicting sem (an at-most-once consumer never retries, so it
// refuses [kdeliver.WithBackoff] and [kdeliver.WithMaxAttempts]); a raw kgo
// option that weakens the preset.
func New(brokers []string, group string, topics []string, sem kdeliver.Semantics, opts ...Option) (*Consumer, error) {
	var refusal string
	if sem == kdeliver.ExactlyOnce {
		refusal = "ExactlyOnce needs the side effect tied to the offsets: use consumer.NewWithGuard(brokers, group, topics, guard) (a dedup.Guard skips redelivered records), consumer.NewWithSink(brokers, group, topics, sink) (the offsets commit in the sink's own transaction, e.g. pgstore.Sink), or, Kafka to Kafka, eos.New (the offsets commit in the output transaction)"
	}
	return newConsumer("consumer", brokers, group, topics, sem, nil, nil, opts, refusal)
}

// NewWithGuard builds an [kdeliver.ExactlyOnce] consumer of topics for group
// whose handler runs inside guard ([dedup.Guard.Handler]): the guard
// reserves each record's key in its store, runs the handler, and marks the
// key done only when the handler returned nil; offsets are committed after
// processing, as under AtLeastOnce, and the records a crash or rebalance
// delivers again are skipped by the guard. It works for any side effect (an
// HTTP call, an email, a row); see "Choosing semantics" in the package doc
// for its limits. Everything else is as for [New].
func NewWithGuard(brokers []string, group string, topics []string, guard *dedup.Guard, opts ...Option) (*Consumer, error) {
	var refusal string
	if guard == nil {
		refusal = "the guard is nil: pass one from dedup.NewGuard"
	}
	return newConsumer("consumer", brokers, group, topics, kdeliver.ExactlyOnce, guard, nil, opts, refusal)
}

// newConsumer checks the configuration and builds the consumer. refusal,
// if not empty, is a problem the constructor found in its own arguments: it
// is listed with every other problem, and nothing is built.
func newConsumer(what string, brokers []string, group string, topics []string, sem kdeliver.Semantics, guard *dedup.Guard, sink Sink, opts []Option, refusal string) (*Consumer, error) {
	cfg := apply(opts)
	var ps preset.Problems
	ps.Add(len(brokers) == 0, "no brokers: pass at least one host:port to bootstrap from")
	for _, b := range brokers {
		ps.Add(b == "", "a broker address is empty")
	}
	pc := preset.Consumer{Semantics: sem, Group: group, Topics: topics, ReadCommitted: cfg.readCommitted, StartLatest: cfg.startLatest,
		ConsumerProtocol: cfg.t.Handling.ConsumerProtocol()}
	pc.Validate(&ps)
	ps.Add(refusal != "", refusal)
	hd := cfg.t.Handling
	ps.Add(sem == kdeliver.AtMostOnce && hd.RetrySet, "AtMostOnce never retries a handler (a retry can repeat a partial effect): remove kdeliver.WithBackoff and kdeliver.WithMaxAttempts, or choose AtLeastOnce")
	if dlq := cfg.deadLetter; dlq != "" {
		switch {
		case sem == kdeliver.AtMostOnce:
			ps.Add(true, "AtMostOnce never retries a handler, so no record reaches a last attempt to dead-letter (its failures are skipped, already committed): remove WithDeadLetterTopic, or choose AtLeastOnce")
		case sink != nil:
			ps.Add(true, "a sink consumer has no handler whose record could be dead-lettered (a failing sink write is retried, never skipped): remove WithDeadLetterTopic")
		case hd.MaxAttempts == 0:
			ps.Add(true, "WithDeadLetterTopic needs kdeliver.WithMaxAttempts(n): after how many attempts a record goes to the dead-letter topic")
		}
		for _, t := range topics {
			ps.Add(t == dlq, fmt.Sprintf("the dead-letter topic %q is also an input topic: a failing record would loop", t))
		}
	}
	ps.Add(hd.HangBound > 0 && sem != kdeliver.ExactlyOnce && !cfg.readCommitted, "kdeliver.WithHangingTransactionWatch watches what holds read_committed consumers back, but this consumer reads uncommitted records, which no transaction holds back: add consumer.WithReadCommitted, or remove the watch")
	ps.Add(sink == nil && hd.MaxInFlight > 0 && hd.Concurrency == 0, "kdeliver.WithMaxInFlight bounds concurrent handlers' records: add kdeliver.WithConcurrency(n, order), or remove it")
	ps.Add(sink != nil && (hd.Concurrency > 0 || hd.MaxInFlight > 0), "a sink consumer stays sequential (its offsets live in the sink, one sink transaction per partition batch, in order): remove kdeliver.WithConcurrency and kdeliver.WithMaxInFlight")
	for _, p := range cfg.t.Problems {
		ps.Add(true, p)
	}
	if err := ps.Err(what, sem); err != nil {
		return nil, err
	}
	c := &Consumer{
		sem:     sem,
		group:   group,
		brokers: brokers,
		topics:  topics,
		cfg:     cfg,
		hd:      hd,
		guard:   guard,
		sink:    sink,
		log:     cfg.t.Shared.Log().With("group", group, "semantics", sem.String()),
		scope:   fatal.Scope{Role: fatal.Consumer, Group: group, Reads: topics, Brokers: brokers},
	}
	if cfg.deadLetter != "" {
		c.scope.Writes = []string{cfg.deadLetter}
	}
	c.commitDur = metrics.NewDurations(metrics.Meter(cfg.t.Shared.MeterProvider), c.log, "kdeliver.consumer.commit.duration",
		"How long an offset commit took, by outcome (ok, error)",
		[]attribute.KeyValue{metrics.KeySystem.String("kafka"), metrics.KeyGroup.String(group), metrics.KeySemantics.String(sem.String())}, "ok", "error")
	base, tr := preset.Base(&cfg.t.Shared, group)
	c.tracer, c.spans = tr.Tracer, tr.Spans
	c.kopts = append(base, kgo.SeedBrokers(brokers...))
	c.kopts = append(c.kopts, pc.Opts()...)
	// Rebalances wait until a polled batch is committed (AtMostOnce) or
	// processed and committed (AtLeastOnce): no partition changes owner
	// with records in hand.
	c.kopts = append(c.kopts, kgo.BlockRebalanceOnPoll())
	if cfg.deadLetter != "" {
		// Dead letters are produced by the consumer's client: acks=all
		// and idempotent (kgo's defaults, set again), and cancellable so
		// that their delivery timeout (counted from the hand-over, not
		// from the record's old timestamp) holds.
		c.kopts = append(c.kopts, kgo.RequiredAcks(kgo.AllISRAcks()), kgo.AllowIdempotentProduceCancellation())
	}

	// Check the options on a client that connects to nothing, with the
	// callbacks of a run that never starts.
	probe := &run{c: c}
	root, kill := context.WithCancel(context.Background())
	kill()
	cl := preset.Build(append(c.runOpts(probe), kgo.WithContext(root)), cfg.kgoOpts, pc.Check, &ps)
	if cl == nil {
		return nil, ps.Err(what, sem)
	}
	defer cl.Close()
	revokedOK, lostOK, adjustOK := probeCallbacks(cl)
	ps.Add(!revokedOK, "a raw option set OnPartitionsRevoked, which kdeliver uses to commit processed offsets on revoke: remove it")
	ps.Add(!lostOK, "a raw option set OnPartitionsLost, which kdeliver uses to forget offsets it may no longer commit: remove it")
	ps.Add(sink != nil && !adjustOK, "a raw option set AdjustFetchOffsetsFn, which a sink consumer uses to start each partition at the sink's offset: remove it")
	if cfg.deadLetter != "" {
		f := preset.FactsOf(cl)
		ps.Add(f.Acks != kgo.AllISRAcks(), "a raw option changed acks, but dead letters must be acknowledged by all in-sync replicas before the offset moves past the record: remove the kgo.RequiredAcks option")
		ps.Add(f.NoIdempotence, "a raw option disabled idempotence, which dead letters need against duplicates on retry: remove kgo.DisableIdempotentWrite")
		ps.Add(f.DeliveryTimeout != 0, "a raw option set kgo.RecordDeliveryTimeout, which franz-go counts from each record's Timestamp, so a dead letter of an old record fails at once: remove it")
	}
	ps.Add(cl.OptValue(kgo.WithContext) != context.Context(root),
		"a raw option set kgo.WithContext, which Close needs to stop the client within its ctx: remove it (cancel Run's ctx, or call Close, to stop)")
	if err := ps.Err(what, sem); err != nil {
		return nil, err
	}
	return c, nil
}

// runOpts returns the client options of r: the checked ones, r's callbacks
// and the raw ones.
func (c *Consumer) runOpts(r *run) []kgo.Opt {
	opts := append(c.kopts[:len(c.kopts):len(c.kopts)],
		kgo.OnPartitionsRevoked(r.onRevoked),
		kgo.OnPartitionsLost(r.onLost),
		// kgo retries connections whose credentials the brokers refused
		// without a word to a consumer: Run stops on the first.
		kgo.WithHooks(fatal.ConnWatch(func(err error) { r.fail(c.scope.Err(err)) })),
	)
	if c.hd.HangBound > 0 {
		opts = append(opts, kgo.OnPartitionsAssigned(r.assigned.Assigned))
	}
	if c.sink != nil {
		// Each newly assigned partition is claimed in the sink and
		// starts at the offset the sink stored.
		adjust := AdjustFetchOffsets(c.sink, c.group, r.groupMetadata)
		opts = append(opts, kgo.AdjustFetchOffsetsFn(func(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
			if probed(ctx) {
				return offsets, nil
			}
			adjusted, err := adjust(ctx, offsets)
			if err != nil && ctx.Err() == nil {
				r.c.log.Warn("sink assign failed: rejoining the group (nothing is read from the partitions meanwhile)", "err", err)
			}
			return adjusted, err
		}))
	}
	return opts
}

// Semantics returns the semantics the consumer was built with.
func (c *Consumer) Semantics() kdeliver.Semantics { return c.sem }

// Run joins the group and hands each record to h until ctx is cancelled,
// [Consumer.Close] is called, or a record's handler keeps failing. It
// blocks. Run may be called again after it returned, never concurrently;
// after Close it returns [kdeliver.ErrClosed].
//
// Before reading, Run waits up to the start timeout
// ([kdeliver.WithStartTimeout]) for a broker to answer and every topic to
// exist, and returns an error matching [kdeliver.ErrUnreachable] or
// [kdeliver.ErrTopicNotFound] that names what is missing.
//
// When ctx is cancelled Run finishes the record in hand (with
// [kdeliver.WithConcurrency]: the records in hand; AtMostOnce: the rest of
// the batch too, since its offsets are committed already), commits what
// the semantics allows, leaves the group, closes its client and returns
// nil. It returns a [*kdeliver.HandlerError] when a record failed
// [kdeliver.WithMaxAttempts] times (and no dead-letter topic was set).
// With a dead-letter topic ([WithDeadLetterTopic]) Run also waits for that
// topic to exist before reading.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: consumer: Run needs a handler", kdeliver.ErrInvalidConfig)
	}
	if c.guard != nil {
		h = c.guard.Handler(h)
	}
	return c.run(ctx, h, nil)
}

func (c *Consumer) run(ctx context.Context, h Handler, bh BatchHandler) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return kdeliver.ErrClosed
	case c.running:
		c.mu.Unlock()
		return errors.New("consumer: Run is already running")
	}
	runCtx, stop := context.WithCancel(ctx)
	hardCtx, hard := context.WithCancel(context.WithoutCancel(ctx))
	root, kill := context.WithCancel(context.Background())
	c.running, c.stop, c.hard, c.kill, c.done = true, stop, hard, kill, make(chan struct{})
	c.mu.Unlock()
	defer func() {
		stop()
		hard()
		kill()
		c.mu.Lock()
		c.running = false
		close(c.done)
		c.mu.Unlock()
	}()

	r := &run{c: c, h: h, kill: kill, pending: map[string]map[int32]kgo.EpochOffset{}, lastCommit: time.Now()}
	if bh != nil || c.concurrent() {
		r.eng = newEngine(r, h, bh)
	}
	c.cur.Store(r)
	defer func() {
		c.cur.Store(nil)
		c.lag.Forget(nil)
	}()
	defer c.observe()()
	cl, err := kgo.NewClient(append(append(c.runOpts(r), c.cfg.kgoOpts...), kgo.WithContext(root))...)
	if err != nil { // New built the same options
		return fmt.Errorf("consumer: building the client: %w", err)
	}
	r.cl = cl
	r.clp.Store(cl)
	c.log.Info("consumer running")
	topics := c.topics
	if c.cfg.deadLetter != "" {
		// A dead letter to a missing topic would hold its partition's
		// commit back for ever: fail at the start instead.
		topics = append(topics[:len(topics):len(topics)], c.cfg.deadLetter)
	}
	err = ready.Wait(runCtx, cl, c.scope, topics, c.hd.Start(), c.log)
	if err == nil && c.hd.ConsumerProtocol() {
		// kgo falls back to the classic protocol unseen on brokers
		// without KIP-848: fail instead.
		err = ready.ConsumerProtocol(runCtx, cl, c.scope)
	}
	if err != nil {
		kill()
		cl.Close()
		if runCtx.Err() != nil {
			return nil
		}
		return fmt.Errorf("consumer: %w", err)
	}
	// A failure no retry fixes stops the loop as a cancellation would
	// (the records in hand finish, what is done is committed), then Run
	// returns it.
	loopCtx, stopLoop := context.WithCancel(runCtx)
	defer stopLoop()
	r.fmu.Lock()
	r.stopLoop = stopLoop
	if r.fatal != nil {
		stopLoop()
	}
	r.fmu.Unlock()
	watchCtx, stopWatch := context.WithCancel(loopCtx)
	waitWatch := r.watchHanging(watchCtx)
	waitTopics := r.watchTopics(watchCtx, topics)
	if r.eng != nil {
		err = r.eng.loop(loopCtx, hardCtx)
	} else {
		err = r.loop(loopCtx, hardCtx)
	}
	stopWatch()
	waitWatch()
	waitTopics()
	if ferr := r.fatalErr(); ferr != nil && err == nil {
		err = ferr
	}
	if r.crashed.Load() {
		// A simulated SIGKILL: no commit, no graceful shutdown.
		c.log.Warn("simulated crash: closing without committing", "err", err)
		lctx, lcancel := context.WithTimeout(hardCtx, leaveTimeout)
		defer lcancel()
		r.closeClient(lctx) // leaves, so that a restart need not wait out the session
		return err
	}
	sctx, cancel := context.WithTimeout(hardCtx, shutdownTimeout)
	defer cancel()
	commitFinal := r.commitPending
	if r.eng != nil {
		commitFinal = r.eng.commit
	}
	if cerr := commitFinal(sctx); cerr != nil {
		c.log.Warn("final commit failed: records after the last commit will be delivered again", "err", cerr)
	}
	lctx, lcancel := context.WithTimeout(hardCtx, leaveTimeout)
	defer lcancel()
	r.closeClient(lctx)
	c.log.Info("consumer stopped")
	return err
}

// Ping checks once, bounded by ctx, that a broker answers and that every
// topic the consumer reads exists. It does not join the group, so a health
// check may call it while Run runs. It returns nil or an error matching
// [kdeliver.ErrUnreachable] or [kdeliver.ErrTopicNotFound] that names what
// is missing. Run makes the same check, repeated for up to the start timeout
// ([kdeliver.WithStartTimeout]), before reading.
func (c *Consumer) Ping(ctx context.Context) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return kdeliver.ErrClosed
	}
	// The client consumes no topic, so it does not join the group: a
	// join and leave would rebalance the group's running members.
	opts := append(c.kopts[:len(c.kopts):len(c.kopts)], c.cfg.kgoOpts...)
	cl, err := kgo.NewClient(append(opts, kgo.ConsumeTopics())...)
	if err != nil {
		return err
	}
	defer cl.Close()
	return ready.Check(ctx, cl, c.scope, c.topics)
}

// Close stops a running [Consumer.Run] gracefully and waits for it to
// return, within ctx: if ctx ends first, the handler's ctx is cancelled, the
// client is closed at once (no final commit beyond what was committed, no
// leave) and Close returns ctx's error without waiting for Run, which
// returns once the handler in hand returns. Close is final (Run returns
// [kdeliver.ErrClosed] afterwards), safe to call twice and concurrently;
// later calls return nil once Run has returned.
func (c *Consumer) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	if !c.running {
		c.mu.Unlock()
		return nil
	}
	c.stop()
	done, hard, kill := c.done, c.hard, c.kill
	c.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Run returns once the handler in hand does.
		hard()
		kill()
		return ctx.Err()
	}
}
