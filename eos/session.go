package eos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/fatal"
	"github.com/kdeliver/kdeliver/internal/metrics"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/ready"
	"github.com/kdeliver/kdeliver/internal/shared"
	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

// Handler processes one input record and emits zero or more output records
// with emit. Emitted records are produced in the current transaction only
// after the handler returns nil; if it returns an error or panics, they are
// dropped and the transaction is aborted (see [Session.Run]). A record whose
// Topic is empty goes to the [WithOutputTopic] topic.
//
// ctx carries Run's ctx's values and the record's trace (its process span).
// It is not cancelled when Run's ctx is (Run then stops at the next record,
// after the handler returns); it is cancelled when the ctx given to
// [Session.Close] ends before Run has stopped.
//
// Without kdeliver.WithConcurrency the handler is called from one
// goroutine, one record at a time, in offset order per partition. With
// kdeliver.WithConcurrency(n, order) it is called from up to n goroutines
// at once, on records of the same transaction: the records of one
// partition (kdeliver.ByPartition), or of one key of a partition
// (kdeliver.ByKey; each record without a key on its own), still one at a
// time in offset order, and any records at once with kdeliver.Unordered;
// whatever the handler shares across calls must then be safe for
// concurrent use. The outputs of each call are produced when it returns,
// before the next record of its partition or key starts, so they keep
// input order per partition or key (see "Concurrency" in the package doc).
// emit may be called from goroutines the handler starts, but not after the
// handler returns. The handler must not call the [Session]'s methods. The
// same input record may be handled several times (after an abort), but its
// output becomes visible once: keep side effects outside Kafka idempotent.
type Handler func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error

// closeTimeout bounds closing a client that Run replaces or drops (a
// graceful leave can wait for a group join in flight until the rebalance
// timeout).
const closeTimeout = 10 * time.Second

// Session is an exactly-once consume-process-produce loop: it reads the
// input topics as a member of a consumer group, and writes the handler's
// output and the input offsets in one Kafka transaction, so each input
// record's output is visible to read_committed readers exactly once.
//
// A Session's methods are safe to call from several goroutines, but only one
// [Session.Run] runs at a time.
type Session struct {
	cfg      *config
	hd       shared.Handling
	opts     []kgo.Opt
	brokers  []string
	topics   []string
	txnID    string
	group    string
	kotel    *kotel.Tracer
	tracer   trace.Tracer
	log      *slog.Logger
	scope    fatal.Scope // for the errors no retry fixes
	stats    counters
	txnDur   *metrics.Durations  // kdeliver.eos.transaction.duration
	assigned txnwatch.Assignment // for the hanging-transaction watch
	hanging  atomic.Int64        // hanging transactions reported
	timeouts *deadline.Timeouts
	newSess  func(...kgo.Opt) (*kgo.GroupTransactSession, error)
	// committed, when set (tests), is called after each commit.
	committed func()

	mu      sync.Mutex
	cl      *client // nil after an abandon, until recreated
	running bool
	closed  bool
	fatal   error // what stopped the Run in progress, a failure no retry fixes ([Session.fail])
	stop    context.CancelFunc
	hard    context.CancelFunc // cancels the handler's ctx
	done    chan struct{}
}

// client is one GroupTransactSession with the root context it was built
// with: cancelling it aborts whatever the client waits for (a group join in
// flight included), which Close uses to stay within its ctx.
type client struct {
	gts    *kgo.GroupTransactSession
	cancel context.CancelFunc
	// prepared is set once the client fenced earlier producers of the
	// transactional ID and started consuming.
	prepared atomic.Bool
	// closeOnce starts the one kgo Close of gts (kgo's Close is not safe
	// to run twice at once: Run's leave and Session.Close may both close
	// the client); closed is closed when it returned.
	closeOnce sync.Once
	closed    chan struct{}
}

// New builds a Session that consumes topics as a member of group and
// produces transactionally with transactionalID. transactionalID must be
// unique among running instances and stable across restarts of the same
// instance (e.g. "orders-copier-0"): a new instance with the same ID fences
// the old one. All configuration problems are reported at once in an error
// wrapping kdeliver.ErrInvalidConfig.
//
// New does not connect; [Session.Run] checks the brokers and topics, fences
// what an earlier instance with the same transactional ID left open, and
// joins the group. Call [Session.Close] when done.
func New(brokers []string, group string, topics []string, transactionalID string, opts ...Option) (*Session, error) {
	cfg := apply(opts)
	prod := preset.Producer{Semantics: kdeliver.ExactlyOnce, TransactionalID: transactionalID, TxnIDHint: "a non-empty transactionalID to eos.New"}
	cons := preset.Consumer{Semantics: kdeliver.ExactlyOnce, Group: group, Topics: topics, ConsumerProtocol: cfg.t.Handling.ConsumerProtocol()}
	var ps preset.Problems
	ps.Add(len(brokers) == 0, "no seed brokers: pass at least one host:port")
	prod.Validate(&ps)
	cons.Validate(&ps)
	cfg.validate(&ps)
	for _, t := range topics {
		ps.Add(cfg.deadLetter != "" && t == cfg.deadLetter, fmt.Sprintf("the dead-letter topic %q is also an input topic: a failing record would loop", t))
	}
	if err := ps.Err("eos session", kdeliver.ExactlyOnce); err != nil {
		return nil, err
	}

	base, tr := preset.Base(&cfg.t.Shared, group)
	kopts := append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, base...)
	kopts = append(kopts, prod.Opts()...)
	// The input topics are added once the session's producer has fenced
	// earlier instances (see fence): a client that joined first would
	// fetch the group's offsets while the old transaction still holds them
	// (UNSTABLE_OFFSET_COMMIT, retried until it times out).
	noTopics := cons
	noTopics.Topics = nil
	kopts = append(kopts, noTopics.Opts()...)
	kopts = append(kopts, kgo.TransactionTimeout(cfg.txnTimeout))
	if !cons.ConsumerProtocol {
		// Under KIP-848 the broker owns the session timeout.
		kopts = append(kopts, kgo.SessionTimeout(cfg.sessionTimeout))
	}

	tp := cfg.t.Shared.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	s := &Session{
		cfg:     cfg,
		opts:    kopts,
		brokers: brokers,
		topics:  topics,
		txnID:   transactionalID,
		group:   group,
		kotel:   tr.Tracer,
		tracer:  tp.Tracer("github.com/kdeliver/kdeliver/eos"),
		log:     cfg.t.Shared.Log().With("transactional_id", transactionalID, "group", group),
		hd:      cfg.t.Handling,
		newSess: kgo.NewGroupTransactSession,
		scope:   fatal.Scope{Role: fatal.Session, Group: group, TxnID: transactionalID, Reads: topics, Brokers: brokers},
	}
	for _, t := range []string{cfg.outputTopic, cfg.deadLetter} {
		if t != "" {
			s.scope.Writes = append(s.scope.Writes, t)
		}
	}
	s.txnDur = metrics.NewDurations(metrics.Meter(cfg.t.Shared.MeterProvider), s.log, "kdeliver.eos.transaction.duration",
		"How long a transaction took from begin to commit or abort, by outcome (committed, aborted)", s.attrs(), "committed", "aborted")
	// Build the client once, connecting to nothing, to check the
	// effective options.
	pctx := canceled()
	probe := preset.Build(append(kopts[:len(kopts):len(kopts)], kgo.WithContext(pctx)), cfg.kgoOpts, func(f preset.Facts, ps *preset.Problems) {
		prod.Check(f, ps)
		cons.Check(f, ps)
		ps.Add(!cons.ConsumerProtocol && f.TxnTimeout >= f.SessionTimeout, fmt.Sprintf("a raw option left the transaction timeout %v not below the session timeout %v: use WithTransactionTimeout and WithSessionTimeout", f.TxnTimeout, f.SessionTimeout))
		ps.Add(f.BlockRebalance, "a raw option set BlockRebalanceOnPoll, which the session does not release: remove it (a rebalance aborts the open transaction anyway)")
		ps.Add(f.Consumes, "a raw option set the topics to consume: pass them to eos.New only (the session adds them once it has fenced earlier instances)")
	}, &ps)
	if probe == nil {
		return nil, ps.Err("eos session", kdeliver.ExactlyOnce)
	}
	defer probe.Close()
	ps.Add(probe.OptValue(kgo.WithContext) != context.Context(pctx),
		"a raw option set kgo.WithContext, which Close needs to stop a client within its ctx: remove it (cancel Run's ctx, or call Close, to stop)")
	if err := ps.Err("eos session", kdeliver.ExactlyOnce); err != nil {
		return nil, err
	}
	txnTimeout := probe.OptValue(kgo.TransactionTimeout).(time.Duration)
	s.opts = append(append(kopts, s.watchOpts()...),
		// kgo retries connections whose credentials the brokers refused
		// without a word to a consumer: Run stops on the first.
		kgo.WithHooks(fatal.ConnWatch(func(err error) { s.fail(s.scope.Err(err)) })))
	s.opts = append(s.opts, cfg.kgoOpts...)
	s.cfg.txnTimeout = txnTimeout
	// An output not acknowledged within the transaction timeout is no use:
	// the broker aborts the transaction by then.
	s.timeouts = deadline.New(txnTimeout)
	return s, nil
}

// canceled returns a cancelled context: a client built with it does not
// connect or join anything.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// Stats counts what a Session did since New. Counters only grow.
type Stats struct {
	Committed        int64 // transactions committed
	Aborted          int64 // transactions aborted, for any reason (fencing included)
	AbortedRebalance int64 // aborted by a rebalance or an abortable commit error (End returned false, nil)
	AbortedHandler   int64 // aborted because the handler failed on a record
	AbortedTimeout   int64 // aborted because handling outlived the transaction timeout
	AbortedProduce   int64 // aborted because an output record failed (the client is replaced)
	AbortedOther     int64 // aborted for another cause: End failed, the rewind guard, a stop before any record
	// HangingTransactions counts partitions reported held by a hanging
	// transaction (kdeliver.WithHangingTransactionWatch).
	HangingTransactions int64
	Fenced              int64 // transactions ended because another instance took over the transactional ID
	Records             int64 // input records whose transaction committed
	DeadLettered        int64 // input records sent to the dead-letter topic and committed
	Recreated           int64 // times the client was closed and built again after an error
	RewindViolations    int64 // records polled below the committed offset after an abort (see "# Errors")
}

type counters struct {
	committed, aborted, abortedRebalance, abortedHandler, abortedTimeout, abortedProduce, abortedOther, fenced,
	records, deadLettered, recreated, rewind atomic.Int64
	// For tests: records polled while a transaction flushed, and rewinds
	// of their partitions after an abort (see flushPolling, rewindAhead).
	held, rewoundAhead atomic.Int64
}

// Stats returns the counters.
func (s *Session) Stats() Stats {
	c := &s.stats
	return Stats{
		Committed: c.committed.Load(), Aborted: c.aborted.Load(), AbortedRebalance: c.abortedRebalance.Load(),
		AbortedHandler: c.abortedHandler.Load(), AbortedTimeout: c.abortedTimeout.Load(),
		AbortedProduce: c.abortedProduce.Load(), AbortedOther: c.abortedOther.Load(), Fenced: c.fenced.Load(),
		Records: c.records.Load(), DeadLettered: c.deadLettered.Load(),
		Recreated: c.recreated.Load(), RewindViolations: c.rewind.Load(), HangingTransactions: s.hanging.Load(),
	}
}

// Ping checks once, bounded by ctx, that a broker answers and that the input
// topics and the output and dead-letter topics set by options exist. It
// returns nil or an error matching kdeliver.ErrUnreachable or
// kdeliver.ErrTopicNotFound that names what is missing. Run makes the same
// check, repeated for up to the start timeout (kdeliver.WithStartTimeout),
// before reading.
func (s *Session) Ping(ctx context.Context) error {
	c, err := s.current()
	if err != nil {
		return err
	}
	return ready.Check(ctx, c.gts.Client(), s.scope, s.needed())
}

// needed lists the topics the session reads and the fixed ones it writes.
func (s *Session) needed() []string {
	ts := append([]string(nil), s.topics...)
	for _, t := range []string{s.cfg.outputTopic, s.cfg.deadLetter} {
		if t != "" {
			ts = append(ts, t)
		}
	}
	return ts
}

// Run polls the input, calls h for each record and commits the outputs with
// the input offsets in transactions of up to [WithCommitEvery] records or
// interval, whichever comes first, even in the middle of what one poll
// returned: the records after the cut are fetched and handled again in the
// next transaction. Without kdeliver.WithConcurrency, each poll asks for
// about what the handler gets through before the interval ends, at the
// transaction's pace so far, so cuts are rare; a transaction runs up to a
// tenth of the interval past it to handle the rest of the client's buffer
// when its pace gets through it by then, and while its outputs are flushed
// it polls the next transaction's first records (see the package doc,
// Transactions).
//
// Before reading, Run waits up to the start timeout
// (kdeliver.WithStartTimeout) for a broker to answer and for the input,
// output and dead-letter topics to exist, and returns an error matching
// kdeliver.ErrUnreachable or kdeliver.ErrTopicNotFound if they do not. Then
// it fences earlier producers of the transactional ID (a crashed instance's
// open transaction is aborted at once, not when it times out) and joins the
// group.
//
// When ctx is cancelled or Close is called, Run stops at the next record:
// the handler call in progress (with kdeliver.WithConcurrency, every call
// in progress, see "Concurrency" in the package doc) finishes (its ctx is
// not cancelled, unless Close's ctx ends first), the records handled so far
// are committed, the
// session leaves the group (whenever Run returns, so that its partitions
// move at once), and Run returns nil; what was polled but not handled is
// read again by whoever owns the partitions next.
//
// Faults are handled, not returned:
//   - a rebalance or an abortable commit error aborts the transaction and
//     rewinds to the committed offsets; the records are handled again;
//   - a failed produce, an unconfirmed or failed End (request timeouts,
//     unknown server errors, lost connections), or a transaction that
//     outlived its timeout aborts and replaces the client, whose new producer
//     epoch fences whatever the old one left in flight;
//   - a transaction whose handling took longer than the transaction timeout
//     is aborted and handled again, its slowest record in a transaction of
//     its own (a handler that takes longer than the transaction timeout on
//     one record still makes progress: the broker's timer starts at the
//     first output);
//   - a handler error or panic aborts, waits ([kdeliver.WithBackoff]) and
//     handles the record again, for ever by default, or up to
//     [kdeliver.WithMaxAttempts]; then it either goes to the dead-letter
//     topic ([WithDeadLetterTopic]) or Run returns a [*kdeliver.HandlerError].
//
// Run returns an error matching [kdeliver.ErrFenced] (class
// [kdeliver.Fatal]) when another instance took over the transactional ID, an
// error matching kdeliver.ErrTopicNotFound when an output topic stays
// unknown for the start timeout, and an error for failures no retry can fix
// (authorization). A Run that returned can be called again.
func (s *Session) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: eos: Run needs a handler", kdeliver.ErrInvalidConfig)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return kdeliver.ErrClosed
	}
	if s.running {
		s.mu.Unlock()
		return errors.New("eos: Run is already running on this session")
	}
	hctx, hard := context.WithCancel(context.WithoutCancel(ctx))
	ctx, cancel := context.WithCancel(ctx)
	s.running, s.stop, s.hard, s.done, s.fatal = true, cancel, hard, make(chan struct{}), nil
	s.mu.Unlock()
	defer func() {
		cancel()
		s.leave(hctx)
		hard()
		s.mu.Lock()
		s.running = false
		close(s.done)
		s.mu.Unlock()
	}()
	defer s.observe()()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer s.watchHanging(watchCtx)()
	defer stopWatch()
	l := &loop{s: s, h: h, hctx: hctx, attempts: map[recordKey]attempts{}, bo: s.newBackoff(), recreateBo: s.newBackoff(),
		missing: map[string]time.Time{}}
	if s.hd.Concurrency <= 1 {
		l.seq = newCaller(l)
	}
	topicsDone := make(chan struct{})
	go func() {
		defer close(topicsDone)
		ready.Watch(watchCtx, s.watchedClient, s.scope, s.needed(), s.hd.Start(), s.fail)
	}()
	err := l.run(ctx)
	stopWatch()
	<-topicsDone
	if ferr := s.fatalErr(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

// fail records err, a failure no retry fixes (nil: nothing), as what the
// running Run returns, and stops it as a cancellation would (the records
// handled so far are committed). Safe for concurrent use, kgo hooks
// included; without a Run in progress it does nothing.
func (s *Session) fail(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running || s.fatal != nil {
		return
	}
	s.fatal = err
	s.log.Error("eos: session stopping: a failure no retry fixes", "err", err)
	s.stop()
}

func (s *Session) fatalErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fatal
}

// watchedClient returns the current client's kgo client, nil if none.
func (s *Session) watchedClient() *kgo.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cl == nil || !s.cl.prepared.Load() {
		return nil
	}
	return s.cl.gts.Client()
}

// Close stops a running [Session.Run] (it stops at the next record and
// commits what was handled), leaves the group so its partitions move to
// other members at once, and closes the client, all within ctx: when ctx
// ends first, the client is closed at once (a transaction left open is
// aborted by the broker when it times out, or by the next instance with the
// same transactional ID as it starts) and Close returns ctx's error. A
// client still joining the group is closed at once: it has nothing to leave.
// Close is safe to call twice; later calls return nil.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	running, done, stop, hard := s.running, s.done, s.stop, s.hard
	s.mu.Unlock()
	var err error
	if running {
		stop()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
			hard()
			s.mu.Lock()
			if s.cl != nil {
				s.cl.cancel() // unblocks Run
			}
			s.mu.Unlock()
		}
	}
	if cerr := s.closeClient(ctx); err == nil {
		err = cerr
	}
	return err
}

// closeClient drops the session's client and closes it within ctx.
func (s *Session) closeClient(ctx context.Context) error {
	s.mu.Lock()
	c := s.cl
	s.cl = nil
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.close(ctx)
}

// close leaves the group and closes the client, cancelling the client's
// root context when ctx ends first or when the client never joined (its
// join may wait on the broker until the rebalance timeout, and kgo's Close
// waits for it). Callers at once share the one Close.
func (c *client) close(ctx context.Context) error {
	if _, gen := c.gts.Client().GroupMetadata(); gen < 0 {
		c.cancel()
	}
	c.closeOnce.Do(func() {
		c.closed = make(chan struct{})
		go func() {
			c.gts.Close()
			close(c.closed)
		}()
	})
	done := c.closed
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		c.cancel()
		<-done
	}
	c.cancel()
	return err
}

// leave closes the session's client when Run returns, so that its
// partitions move to the other members at once rather than when the session
// times out: within closeTimeout, or at once when ctx (the handler's ctx,
// cancelled when Close's ctx ends) is done. The next Run builds a new client
// and joins again.
func (s *Session) leave(ctx context.Context) {
	s.mu.Lock()
	c := s.cl
	s.mu.Unlock()
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, closeTimeout)
	defer cancel()
	_ = c.close(ctx)
	s.mu.Lock()
	if s.cl == c {
		s.cl = nil
	}
	s.mu.Unlock()
}

// dropClient closes c (if it is still the session's client) within
// closeTimeout.
func (s *Session) dropClient(c *client) {
	s.mu.Lock()
	if s.cl == c {
		s.cl = nil
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = c.close(ctx)
}

func (s *Session) newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = s.hd.Backoff()
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// current returns the session's client, building a new one if an error or a
// crash discarded the last.
func (s *Session) current() (*client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, kdeliver.ErrClosed
	}
	if s.cl == nil {
		root, cancel := context.WithCancel(context.Background())
		gts, err := s.newSess(append(s.opts, kgo.WithContext(root))...)
		if err != nil {
			cancel()
			return nil, err
		}
		s.cl = &client{gts: gts, cancel: cancel}
	}
	return s.cl, nil
}
