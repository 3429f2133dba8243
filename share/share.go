// Package share reads a Kafka share group (KIP-932, Kafka 4.2 and later)
// with the delivery presets: the broker hands each record to one of the
// group's consumers, however many there are (more consumers than
// partitions is fine), and each record is acknowledged on its own.
//
//   - [kdeliver.AtMostOnce]: the consumer accepts a poll's records and waits
//     for the broker to confirm the accepts before any handler runs. A
//     crash, or a failing handler, loses the record; nothing is delivered
//     twice.
//   - [kdeliver.AtLeastOnce]: a record is accepted after its handler
//     succeeded and released when it failed, so the broker delivers it
//     again (to any consumer) with a higher delivery count
//     ([kgo.Record.DeliveryCount]). At its last delivery
//     ([kdeliver.WithMaxAttempts], default [DefaultMaxDeliveries]) it is
//     written to the dead-letter topic ([WithDeadLetterTopic]), which all
//     in-sync replicas acknowledge before the record is rejected. A crash
//     delivers the records it held again (at most two polls, see
//     [WithMaxRecords]) when its connections close, or at the latest once
//     their acquisition lock (group.share.record.lock.duration.ms)
//     expires. Deliveries are counted by the broker, not handler calls:
//     each crash raises the count of the records the consumer held, so a
//     record may meet its last delivery at its first handler call, and a
//     record held by group.share.delivery.count.limit (5) crashed
//     consumers is archived by the broker unhandled. Consumers that crash
//     in a loop should have that limit raised.
//   - [kdeliver.ExactlyOnce] is refused: share acknowledgements are not
//     part of Kafka transactions (Kafka 4.4), so no write can commit with
//     them. [NewWithGuard] gives the effect of each record once: an
//     at-least-once share consumer whose [dedup.Guard] skips redeliveries.
//
// A share group keeps no order: the records of one partition go to several
// consumers, and a released record comes back after later ones. Use a
// consumer group (package consumer) when order by partition or key
// matters, or when the output must be exactly once inside Kafka (package
// eos).
package share

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/dlq"
	"github.com/kdeliver/kdeliver/internal/fatal"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/ready"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// Bounds of Run's shutdown when no Close deadline applies: flushing the
// acknowledgements, then leaving the group.
const (
	shutdownTimeout = 30 * time.Second
	leaveTimeout    = 5 * time.Second
	// dlqAttemptTimeout bounds one dead-letter write, so that a write
	// stuck on an unreachable leader is retried and a stop is noticed.
	dlqAttemptTimeout = 10 * time.Second
)

// Handler processes one record. Its return value drives the
// acknowledgement:
//
//   - nil: the record is done. AtLeastOnce accepts it (AckAccept).
//   - an error: the record failed. AtLeastOnce releases it (AckRelease) and
//     the broker delivers it again, to this or another consumer, with a
//     higher [kgo.Record.DeliveryCount]; at its last delivery
//     ([kdeliver.WithMaxAttempts]) it goes to the dead-letter topic
//     ([WithDeadLetterTopic]) and is rejected, or Run stops with a
//     [*kdeliver.HandlerError]. AtMostOnce (accepted already) logs it.
//
// A panic is recovered and treated as an error matching [kdeliver.ErrPanic].
// Without [kdeliver.WithConcurrency] the handler runs on Run's goroutine,
// one record at a time; with it, up to n calls run at once and the handler
// must be safe for concurrent use. ctx carries the record's "process" span
// and Run's values; it is not cancelled when Run's ctx is, so the record in
// hand can finish, but it is cancelled when [Consumer.Close] gives up
// waiting. The record must not be kept after the handler returns.
type Handler func(ctx context.Context, rec *kgo.Record) error

// Consumer reads the records of a share group (KIP-932) and hands them to a
// [Handler], acknowledging each as its [kdeliver.Semantics] requires. Build
// it with [New] (at most once, at least once) or [NewWithGuard] (the effect
// of each record once, through a dedup guard). Its methods are safe for
// concurrent use.
type Consumer struct {
	sem           kdeliver.Semantics
	group         string
	brokers       []string
	topics        []string
	cfg           *config
	hd            shared.Handling
	maxDeliveries int
	kopts         []kgo.Opt
	tracer        *kotel.Tracer
	spans         *preset.SpanGate // whether a record's process span can be seen
	log           *slog.Logger
	scope         fatal.Scope
	guard         *dedup.Guard

	mu      sync.Mutex
	running bool
	closed  bool
	stop    context.CancelFunc
	hard    context.CancelFunc
	kill    context.CancelFunc
	done    chan struct{}

	stats counters
}

// New builds a share-group consumer of topics for group with the preset of
// sem, [kdeliver.AtMostOnce] or [kdeliver.AtLeastOnce] (see the package doc
// for what each does and guarantees). It refuses [kdeliver.ExactlyOnce]:
// a share group's acknowledgements are not part of Kafka transactions (in
// Kafka 4.4), so no write can be tied to them; [NewWithGuard] gives the
// effect of each record once over an at-least-once share consumer.
//
// New does not connect; nothing is read until [Consumer.Run]. It returns an
// error wrapping [kdeliver.ErrInvalidConfig] that lists every problem:
// brokers, group or topics missing; sem invalid; an option invalid, nil,
// meaningless for a share group, or contradicting sem; a raw kgo option that
// changes the group.
func New(brokers []string, group string, topics []string, sem kdeliver.Semantics, opts ...Option) (*Consumer, error) {
	var refusal string
	if sem == kdeliver.ExactlyOnce {
		refusal = "ExactlyOnce is refused for a share group: share acknowledgements are not transactional in Kafka 4.4 (no transaction can carry an accept), so neither a Kafka output nor a database write can commit with it; " +
			"use share.NewWithGuard(brokers, group, topics, guard) (an at-least-once share consumer whose dedup.Guard skips redelivered records: each side effect once), or consumer.NewWithGuard / eos.New on a consumer group"
	}
	return newConsumer(brokers, group, topics, sem, nil, opts, refusal)
}

// NewWithGuard builds a share-group consumer of topics for group whose
// handler runs inside guard ([dedup.Guard.Handler]): the records are
// acknowledged as under [kdeliver.AtLeastOnce] (accepted after the handler
// succeeded, released when it failed), and the guard skips the deliveries
// of a record whose side effect is done already, so each side effect happens
// once. The guard's key must be the same for every delivery of a record:
// [dedup.DefaultKey] is (the message ID header, else topic, partition and
// offset, which a share group keeps). Its limits are the guard's: a
// process that dies after the side effect and before the guard's confirm
// leaves the key reserved, and the record runs again once the lease
// expires, unless the side effect and the confirm share a transaction
// ([dedup.ConfirmInTx]). [Consumer.Semantics] is [kdeliver.ExactlyOnce].
func NewWithGuard(brokers []string, group string, topics []string, guard *dedup.Guard, opts ...Option) (*Consumer, error) {
	var refusal string
	if guard == nil {
		refusal = "the guard is nil: pass one from dedup.NewGuard"
	}
	return newConsumer(brokers, group, topics, kdeliver.ExactlyOnce, guard, opts, refusal)
}

func newConsumer(brokers []string, group string, topics []string, sem kdeliver.Semantics, guard *dedup.Guard, opts []Option, refusal string) (*Consumer, error) {
	cfg := apply(opts)
	var ps preset.Problems
	ps.Add(len(brokers) == 0, "no brokers: pass at least one host:port to bootstrap from")
	for _, b := range brokers {
		ps.Add(b == "", "a broker address is empty")
	}
	ps.Add(group == "", "no share group: name the group the consumers share")
	ps.Add(len(topics) == 0, "no topics: pass at least one topic to read")
	for _, t := range topics {
		ps.Add(t == "", "a topic name is empty")
	}
	ps.Add(!sem.Valid(), fmt.Sprintf("invalid semantics %v: choose kdeliver.AtMostOnce or kdeliver.AtLeastOnce (or share.NewWithGuard)", sem))
	ps.Add(refusal != "", refusal)
	hd := cfg.t.Handling
	amo := sem == kdeliver.AtMostOnce
	ps.Add(amo && hd.RetrySet, "AtMostOnce accepts each record before its handler runs, so a failure is never delivered again: remove kdeliver.WithBackoff and kdeliver.WithMaxAttempts, or choose AtLeastOnce")
	if d := cfg.deadLetter; d != "" {
		ps.Add(amo, "AtMostOnce never delivers a failed record again, so none reaches a last delivery to dead-letter: remove share.WithDeadLetterTopic, or choose AtLeastOnce")
		for _, t := range topics {
			ps.Add(t == d, fmt.Sprintf("the dead-letter topic %q is also an input topic: a failing record would loop", t))
		}
	}
	ps.Add(hd.HangBound > 0, "kdeliver.WithHangingTransactionWatch watches what holds a read_committed consumer group's partitions back; a share group reads no partition of its own (the broker hands records out): remove it")
	ps.Add(hd.Concurrency > 0 && hd.Order != int(kdeliver.Unordered),
		fmt.Sprintf("kdeliver.WithConcurrency(%d, %v): a share group keeps no order: the broker hands the records of one partition to several consumers, and a released record comes back after later ones; only the records of one poll are delivered in offset order per partition. Use kdeliver.WithConcurrency(n, kdeliver.Unordered), or a consumer group (package consumer) for order by partition or key",
			hd.Concurrency, kdeliver.Ordering(hd.Order)))
	ps.Add(hd.MaxInFlight > 0, "kdeliver.WithMaxInFlight: a share consumer's records in flight are one poll's: use share.WithMaxRecords(n)")
	ps.Add(hd.DeadLetterTopic != "", "a dead-letter topic of the root options: use share.WithDeadLetterTopic(topic)")
	ps.Add(hd.GroupProtocolSet, "kdeliver.WithGroupProtocol chooses a consumer group's protocol (classic or KIP-848's consumer); a share group always runs its own (KIP-932): remove it")
	maxDeliveries := DefaultMaxDeliveries
	if hd.MaxAttempts > 0 {
		maxDeliveries = hd.MaxAttempts
	}
	for _, p := range cfg.t.Problems {
		ps.Add(true, p)
	}
	if err := ps.Err("share consumer", sem); err != nil {
		return nil, err
	}
	c := &Consumer{
		sem: sem, group: group, brokers: brokers, topics: topics, cfg: cfg, hd: hd, guard: guard,
		maxDeliveries: maxDeliveries,
		log:           cfg.t.Shared.Log().With("share_group", group, "semantics", sem.String()),
		scope:         fatal.Scope{Role: fatal.Consumer, Group: group, Reads: topics, Brokers: brokers},
	}
	c.stats.deliveries = map[int]int64{}
	if cfg.deadLetter != "" {
		c.scope.Writes = []string{cfg.deadLetter}
	}
	base, tr := preset.Base(&cfg.t.Shared, group)
	c.tracer, c.spans = tr.Tracer, tr.Spans
	c.kopts = append(base, kgo.SeedBrokers(brokers...),
		kgo.ShareGroup(group), kgo.ConsumeTopics(topics...),
		kgo.ShareMaxRecords(int32(min(cfg.maxRecords, 1<<30))),
		// What a consumer holds acquired is bounded: a fetch returns at
		// most a poll's records (KIP-1206's record-limit mode, the broker
		// splits batches), and one fetch at a time is in flight or
		// buffered, so a consumer holds the poll in hand and at most one
		// more. Unbounded, kgo buffered thousands; a crash releases them
		// all with their delivery count raised, and a record held by
		// group.share.delivery.count.limit crashed consumers is archived
		// by the broker without reaching a handler.
		kgo.ShareMaxRecordsStrict(), kgo.MaxConcurrentFetches(1))
	if cfg.deadLetter != "" {
		// Dead letters: acks=all and idempotent (kgo's defaults, set
		// again), cancellable so that a stop is not held by a write.
		c.kopts = append(c.kopts, kgo.RequiredAcks(kgo.AllISRAcks()), kgo.AllowIdempotentProduceCancellation())
	}

	// Check the raw options on a client that connects to nothing.
	root, kill := context.WithCancel(context.Background())
	kill()
	probe := &run{c: c}
	cl, err := kgo.NewClient(append(append(c.runOpts(probe), cfg.kgoOpts...), kgo.WithContext(root))...)
	if err != nil {
		ps.Add(true, fmt.Sprintf("franz-go refused the options (%v): remove or fix the raw kgo option it names", err))
		return nil, ps.Err("share consumer", sem)
	}
	defer cl.Close()
	ps.Add(cl.OptValue(kgo.ShareGroup) != group, "a raw option set kgo.ShareGroup to another group: remove it (the group is New's argument)")
	ps.Add(cl.OptValue(kgo.ConsumerGroup) != "", "a raw option set kgo.ConsumerGroup: a client is in a share group or a consumer group, not both: remove it (use package consumer for a consumer group)")
	ps.Add(cl.OptValue(kgo.ShareMaxRecords) != int32(min(cfg.maxRecords, 1<<30)), "a raw option set kgo.ShareMaxRecords: use share.WithMaxRecords")
	if rawcl, err := kgo.NewClient(append(append([]kgo.Opt{kgo.ShareGroup(group), kgo.ConsumeTopics(topics...)}, cfg.kgoOpts...), kgo.WithContext(root))...); err == nil {
		cb, _ := rawcl.OptValue(kgo.ShareAckCallback).(func(*kgo.Client, kgo.ShareAckResults))
		ps.Add(cb != nil, "a raw option set kgo.ShareAckCallback, which kdeliver uses to learn which acknowledgements failed: remove it")
		rawcl.Close()
	}
	if cfg.deadLetter != "" {
		f := preset.FactsOf(cl)
		ps.Add(f.Acks != kgo.AllISRAcks(), "a raw option changed acks, but dead letters must be acknowledged by all in-sync replicas before the record is rejected: remove the kgo.RequiredAcks option")
		ps.Add(f.NoIdempotence, "a raw option disabled idempotence, which dead letters need against duplicates on retry: remove kgo.DisableIdempotentWrite")
		ps.Add(f.DeliveryTimeout != 0, "a raw option set kgo.RecordDeliveryTimeout, which franz-go counts from each record's Timestamp, so a dead letter of an old record fails at once: remove it")
	}
	ps.Add(cl.OptValue(kgo.WithContext) != context.Context(root),
		"a raw option set kgo.WithContext, which Close needs to stop the client within its ctx: remove it (cancel Run's ctx, or call Close, to stop)")
	if err := ps.Err("share consumer", sem); err != nil {
		return nil, err
	}
	return c, nil
}

// runOpts returns the client options of r.
func (c *Consumer) runOpts(r *run) []kgo.Opt {
	return append(c.kopts[:len(c.kopts):len(c.kopts)],
		kgo.ShareAckCallback(r.onAcks),
		kgo.WithHooks(fatal.ConnWatch(func(err error) { r.fail(c.scope.Err(err)) })),
	)
}

// Semantics returns the semantics the consumer was built with
// ([kdeliver.ExactlyOnce] for [NewWithGuard]).
func (c *Consumer) Semantics() kdeliver.Semantics { return c.sem }

// run is one Run.
type run struct {
	c    *Consumer
	h    Handler
	cl   *kgo.Client
	kill context.CancelFunc

	fmu      sync.Mutex
	fatal    error
	stopLoop context.CancelFunc

	amu     sync.Mutex
	ackErrs map[string]map[int32]error // partitions whose acks failed since the last reset (AtMostOnce)

	crashed  atomic.Bool
	crashErr atomic.Value // error: the handler's, wrapping crash.ErrCrash
	halt     atomic.Pointer[kdeliver.HandlerError]
}

// fail records a failure no retry fixes and stops the loop.
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
	r.c.log.Error("share consumer stopping: a failure no retry fixes", "err", err)
	if r.stopLoop != nil {
		r.stopLoop()
	}
}

func (r *run) fatalErr() error {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	return r.fatal
}

func (r *run) stopNow() {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	if r.stopLoop != nil {
		r.stopLoop()
	}
}

// crash makes the run end as if the process was killed (crash.ErrCrash).
func (r *run) crash(err error) {
	r.crashErr.CompareAndSwap(nil, err)
	r.crashed.Store(true)
	r.stopNow()
}

// onAcks is the ShareAckCallback: it counts the acknowledgements the broker
// refused and remembers their partitions.
func (r *run) onAcks(_ *kgo.Client, rs kgo.ShareAckResults) {
	for _, res := range rs {
		if res.Err == nil {
			continue
		}
		r.c.stats.ackErrors.Add(1)
		r.c.log.Warn("share acknowledgement failed: the broker delivers the records again once their acquisition lock expires", "topic", res.Topic, "partition", res.Partition, "err", res.Err)
		r.amu.Lock()
		if r.ackErrs == nil {
			r.ackErrs = map[string]map[int32]error{}
		}
		if r.ackErrs[res.Topic] == nil {
			r.ackErrs[res.Topic] = map[int32]error{}
		}
		r.ackErrs[res.Topic][res.Partition] = res.Err
		r.amu.Unlock()
	}
}

// Run joins the share group and hands each record to h until ctx is
// cancelled, [Consumer.Close] is called, a failure no retry fixes happens
// (a missing ACL, refused credentials: an error matching
// [kdeliver.ErrNotAuthorized] or [kdeliver.ErrAuthentication]), or, without
// a dead-letter topic, a record fails its last delivery (a
// [*kdeliver.HandlerError]). It blocks. Run may be called again after it
// returned, never concurrently; after Close it returns [kdeliver.ErrClosed].
//
// Before reading, Run waits up to the start timeout
// ([kdeliver.WithStartTimeout]) for a broker to answer and every topic (and
// the dead-letter topic) to exist, and returns an error matching
// [kdeliver.ErrUnreachable] or [kdeliver.ErrTopicNotFound] otherwise.
//
// When ctx is cancelled Run finishes the records in hand (AtMostOnce: the
// rest of the poll too, since it is accepted already), releases the records
// of the poll that no handler started (AtLeastOnce: the broker delivers them
// again, to another consumer), flushes the acknowledgements, leaves the
// group, closes its client and returns nil.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: share consumer: Run needs a handler", kdeliver.ErrInvalidConfig)
	}
	if c.guard != nil {
		h = Handler(c.guard.Handler(h))
	}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return kdeliver.ErrClosed
	case c.running:
		c.mu.Unlock()
		return errors.New("share consumer: Run is already running")
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

	if c.cfg.startEarliest {
		// Before the share client exists: its first ShareFetch would
		// start the group's partitions at the latest offset.
		if err := c.setEarliest(runCtx); err != nil {
			if runCtx.Err() != nil {
				return nil
			}
			return err
		}
	}
	r := &run{c: c, h: h, kill: kill}
	defer c.observe()()
	cl, err := kgo.NewClient(append(append(c.runOpts(r), c.cfg.kgoOpts...), kgo.WithContext(root))...)
	if err != nil { // New built the same options
		return fmt.Errorf("share consumer: building the client: %w", err)
	}
	r.cl = cl
	topics := c.topics
	if c.cfg.deadLetter != "" {
		topics = append(topics[:len(topics):len(topics)], c.cfg.deadLetter)
	}
	if err := ready.Wait(runCtx, cl, c.scope, topics, c.hd.Start(), c.log); err != nil {
		kill()
		cl.Close()
		if runCtx.Err() != nil {
			return nil
		}
		return fmt.Errorf("share consumer: %w", err)
	}
	loopCtx, stopLoop := context.WithCancel(runCtx)
	defer stopLoop()
	r.fmu.Lock()
	r.stopLoop = stopLoop
	if r.fatal != nil {
		stopLoop()
	}
	r.fmu.Unlock()
	c.log.Info("share consumer running")
	err = r.loop(loopCtx, hardCtx)
	if ferr := r.fatalErr(); ferr != nil && err == nil {
		err = ferr
	}
	if herr := r.halt.Load(); herr != nil && err == nil {
		err = herr
	}
	if r.crashed.Load() {
		err, _ = r.crashErr.Load().(error)
		// A simulated SIGKILL: no flush of what is acknowledged, no
		// leave; the broker releases what the client held when its
		// connections close.
		c.log.Warn("simulated crash: closing without flushing acknowledgements", "err", err)
		kill()
		cl.Close()
		return err
	}
	sctx, cancel := context.WithTimeout(hardCtx, shutdownTimeout)
	defer cancel()
	if ferr := cl.FlushAcks(sctx); ferr != nil {
		c.log.Warn("flushing acknowledgements did not finish: the broker delivers the records again once their acquisition lock expires", "err", ferr)
	}
	lctx, lcancel := context.WithTimeout(hardCtx, leaveTimeout)
	defer lcancel()
	if lerr := cl.LeaveGroupContext(lctx); lerr != nil {
		c.log.Warn("leaving the share group did not finish: closing without it", "err", lerr)
		kill()
	}
	cl.Close()
	c.log.Info("share consumer stopped")
	return err
}

// setEarliest sets the group's share.auto.offset.reset to earliest, on a
// client of its own that joins no group, retrying until ctx ends or the
// start timeout passes.
func (c *Consumer) setEarliest(ctx context.Context) error {
	base, _ := preset.Base(&c.cfg.t.Shared, "")
	cl, err := kgo.NewClient(append(base, kgo.SeedBrokers(c.brokers...))...)
	if err != nil {
		return fmt.Errorf("share consumer: building the admin client: %w", err)
	}
	defer cl.Close()
	start := c.hd.Start()
	sctx, cancel := context.WithTimeout(ctx, start)
	defer cancel()
	for {
		err = alterEarliest(sctx, cl, c.group)
		switch {
		case err == nil:
			return nil
		case fatal.Kind(err) != nil:
			return fmt.Errorf("share consumer: setting share.auto.offset.reset=earliest on group %q: %w", c.group, c.scope.Err(err))
		case sctx.Err() != nil:
			return fmt.Errorf("share consumer: setting share.auto.offset.reset=earliest on group %q (share.WithStartAtEarliest) within the start timeout %v: %w", c.group, start, err)
		}
		c.log.Warn("setting share.auto.offset.reset=earliest failed: retrying", "err", err)
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-t.C:
		case <-sctx.Done():
			t.Stop()
		}
	}
}

// alterEarliest sets the group's share.auto.offset.reset to earliest.
func alterEarliest(ctx context.Context, cl *kgo.Client, group string) error {
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	res := kmsg.NewIncrementalAlterConfigsRequestResource()
	res.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	res.ResourceName = group
	cfg := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	cfg.Name = "share.auto.offset.reset"
	v := "earliest"
	cfg.Value = &v
	cfg.Op = kmsg.IncrementalAlterConfigOpSet
	res.Configs = append(res.Configs, cfg)
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	for _, rr := range resp.Resources {
		if err := kerr.ErrorForCode(rr.ErrorCode); err != nil {
			if rr.ErrorMessage != nil {
				return fmt.Errorf("%w: %s", err, *rr.ErrorMessage)
			}
			return err
		}
	}
	return nil
}

// loop polls and handles until loopCtx ends or a record stops it.
func (r *run) loop(loopCtx, hardCtx context.Context) error {
	for {
		if loopCtx.Err() != nil || r.crashed.Load() || r.halt.Load() != nil {
			return nil
		}
		fetches := r.cl.PollRecords(loopCtx, r.c.cfg.maxRecords)
		if fetches.IsClientClosed() {
			return nil
		}
		recs := fetches.Records()
		if ferr := r.fetchErrors(fetches); ferr != nil {
			r.release(recs)
			return ferr
		}
		if len(recs) == 0 {
			continue
		}
		for _, rec := range recs {
			r.c.stats.received(int(rec.DeliveryCount()))
		}
		if r.c.sem == kdeliver.AtMostOnce {
			r.atMostOnce(loopCtx, hardCtx, recs)
		} else {
			r.atLeastOnce(loopCtx, hardCtx, recs)
		}
	}
}

// fetchErrors logs the errors of a poll and returns the first failure no
// retry fixes among them ([fatal.Scope.Fetches]), or nil.
func (r *run) fetchErrors(fetches kgo.Fetches) error {
	return r.c.scope.Fetches(fetches, func(t string, p int32, err error) {
		r.c.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
	})
}

// release releases recs: the broker delivers them again.
func (r *run) release(recs []*kgo.Record) {
	for _, rec := range recs {
		rec.Ack(kgo.AckRelease)
		r.c.stats.released.Add(1)
	}
}

// atMostOnce accepts the poll, waits until the broker confirmed the
// accepts, and hands the records whose accept it confirmed to the handler.
func (r *run) atMostOnce(loopCtx, hardCtx context.Context, recs []*kgo.Record) {
	r.amu.Lock()
	r.ackErrs = nil
	r.amu.Unlock()
	for _, rec := range recs {
		rec.Ack(kgo.AckAccept)
	}
	r.c.stats.accepted.Add(int64(len(recs)))
	fctx, cancel := context.WithTimeout(hardCtx, shutdownTimeout)
	err := r.cl.FlushAcks(fctx)
	cancel()
	if err != nil {
		// Not known to be accepted: handling them could repeat them.
		r.c.log.Warn("accepting a poll was not confirmed: its records are skipped (at most once)", "records", len(recs), "err", err)
		r.c.stats.unconfirmed.Add(int64(len(recs)))
		return
	}
	r.amu.Lock()
	failed := r.ackErrs
	r.ackErrs = nil
	r.amu.Unlock()
	ok := recs[:0:0]
	for _, rec := range recs {
		if failed[rec.Topic][rec.Partition] != nil {
			r.c.stats.unconfirmed.Add(1)
			continue
		}
		ok = append(ok, rec)
	}
	// The poll is accepted: every record is handled, even after ctx was
	// cancelled, since a record not handled now is never delivered again.
	r.each(context.WithoutCancel(loopCtx), ok, func(rec *kgo.Record) {
		err := r.call(hardCtx, rec)
		switch {
		case err == nil:
			r.c.stats.handled.Add(1)
		case errors.Is(err, crash.ErrCrash):
			r.crash(err)
		default:
			r.c.stats.skipped.Add(1)
			r.c.log.Warn("handler failed: the record is skipped (at most once: it was accepted before the handler ran)", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		}
	})
}

// atLeastOnce hands each record to the handler and acknowledges it after:
// accept on success, release on failure, dead letter and reject at its last
// delivery. The records no handler started when loopCtx ends are released.
func (r *run) atLeastOnce(loopCtx, hardCtx context.Context, recs []*kgo.Record) {
	r.each(loopCtx, recs, func(rec *kgo.Record) {
		if r.crashed.Load() {
			return // the process is "dead": nothing more is acknowledged
		}
		if r.halt.Load() != nil {
			r.release([]*kgo.Record{rec})
			return
		}
		err := r.call(hardCtx, rec)
		dc := int(rec.DeliveryCount())
		switch {
		case err == nil:
			if !r.crashed.Load() {
				rec.Ack(kgo.AckAccept)
				r.c.stats.accepted.Add(1)
				r.c.stats.handled.Add(1)
			}
		case errors.Is(err, crash.ErrCrash):
			r.crash(err)
		case dc < r.c.maxDeliveries:
			r.c.log.Warn("handler failed: releasing the record for another delivery", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "delivery", dc, "err", err)
			r.wait(loopCtx, hardCtx, rec, dc)
			rec.Ack(kgo.AckRelease)
			r.c.stats.released.Add(1)
		case r.c.cfg.deadLetter != "":
			if r.deadLetter(loopCtx, rec, dc, err) {
				rec.Ack(kgo.AckReject)
				r.c.stats.rejected.Add(1)
				r.c.stats.deadLettered.Add(1)
				r.c.stats.handled.Add(1)
			} else {
				rec.Ack(kgo.AckRelease)
				r.c.stats.released.Add(1)
			}
		default:
			rec.Ack(kgo.AckRelease)
			r.c.stats.released.Add(1)
			herr := &kdeliver.HandlerError{Record: rec, Attempts: dc, Err: err}
			if r.halt.CompareAndSwap(nil, herr) {
				r.c.log.Error("handler failed its last delivery and no dead-letter topic is set: Run stops", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "delivery", dc, "err", err)
				r.stopNow()
			}
		}
	})
}

// each runs fn on every record of recs, on up to the concurrency's
// goroutines, and returns when all are done. Records not started when ctx
// ends are released (they were not handled).
func (r *run) each(ctx context.Context, recs []*kgo.Record, fn func(*kgo.Record)) {
	n := max(1, r.c.hd.Concurrency)
	if n == 1 {
		for i, rec := range recs {
			if ctx.Err() != nil || r.crashed.Load() {
				if !r.crashed.Load() {
					r.release(recs[i:])
				}
				return
			}
			fn(rec)
		}
		return
	}
	work := make(chan *kgo.Record)
	var wg sync.WaitGroup
	for range min(n, len(recs)) {
		wg.Go(func() {
			for rec := range work {
				fn(rec)
			}
		})
	}
	for i, rec := range recs {
		if ctx.Err() == nil && !r.crashed.Load() {
			select {
			case work <- rec:
				continue
			case <-ctx.Done():
			}
		}
		if !r.crashed.Load() {
			r.release(recs[i:])
		}
		break
	}
	close(work)
	wg.Wait()
}

// wait waits the backoff of a record's failed delivery dc before it is
// released ([kdeliver.WithBackoff]; none without it), within the record's
// acquisition lock.
func (r *run) wait(loopCtx, hardCtx context.Context, rec *kgo.Record, dc int) {
	if !r.c.hd.RetrySet || r.c.hd.BackoffInitial == 0 {
		return
	}
	initial, limit := r.c.hd.Backoff()
	d := initial
	for i := 1; i < dc && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	if dl := rec.AcquisitionDeadline(); !dl.IsZero() {
		d = min(d, time.Until(dl)-time.Second)
	}
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-loopCtx.Done():
	case <-hardCtx.Done():
	}
}

// deadLetter writes rec to the dead-letter topic until all in-sync
// replicas acknowledged it (true), retrying with the backoff, or until the
// loop stops or the write fails for good (false).
func (r *run) deadLetter(loopCtx context.Context, rec *kgo.Record, dc int, herr error) bool {
	initial, limit := r.c.hd.Backoff()
	wait := initial
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(loopCtx, dlqAttemptTimeout)
		err := r.cl.ProduceSync(ctx, dlq.Record(r.c.cfg.deadLetter, rec, dc, time.Now(), herr)).FirstErr()
		cancel()
		if err == nil {
			r.c.log.Warn("record dead-lettered after its last delivery", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "delivery", dc, "dead_letter_topic", r.c.cfg.deadLetter, "err", herr)
			return true
		}
		r.c.stats.deadLetterErrors.Add(1)
		if fatal.Kind(err) != nil {
			r.fail(r.c.scope.Err(err, r.c.cfg.deadLetter))
			return false
		}
		if loopCtx.Err() != nil {
			return false
		}
		r.c.log.Warn("dead-letter write failed: retrying (the record is not rejected meanwhile)", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-loopCtx.Done():
			t.Stop()
			return false
		}
		wait = min(2*wait, limit)
	}
}

// call runs the handler once in a process span, turning a panic into an
// error.
func (r *run) call(ctx context.Context, rec *kgo.Record) (err error) {
	if rec.DeliveryCount() > 1 {
		r.c.stats.retried.Add(1)
	}
	// kotel's process span costs several allocations a record: only when
	// someone can see it.
	span := trace.SpanFromContext(context.Background()) // a no-op span
	if r.c.spans.Needed(rec) {
		_, span = r.c.tracer.WithProcessSpan(rec)
		ctx = trace.ContextWithSpan(ctx, span)
	}
	defer func() {
		if v := recover(); v != nil {
			r.c.log.Error("handler panicked", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
		}
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "handler failed")
			if !errors.Is(err, crash.ErrCrash) {
				r.c.stats.failed.Add(1)
			}
		}
		span.End()
	}()
	return r.h(ctx, rec)
}

// Ping checks once, bounded by ctx, that a broker answers and that every
// topic the consumer reads exists, without joining the group. It returns
// nil or an error matching [kdeliver.ErrUnreachable] or
// [kdeliver.ErrTopicNotFound].
func (c *Consumer) Ping(ctx context.Context) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return kdeliver.ErrClosed
	}
	base, _ := preset.Base(&c.cfg.t.Shared, "")
	cl, err := kgo.NewClient(append(base, kgo.SeedBrokers(c.brokers...))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	return ready.Check(ctx, cl, c.scope, c.topics)
}

// Close stops a running [Consumer.Run] gracefully and waits for it to
// return, within ctx: if ctx ends first, the handler's ctx is cancelled,
// the client is closed at once and Close returns ctx's error (the broker
// releases what the client held). Close is final (Run returns
// [kdeliver.ErrClosed] afterwards), safe to call twice and concurrently.
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
		hard()
		kill()
		return ctx.Err()
	}
}
