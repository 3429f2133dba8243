package eos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/ready"
)

// Handler processes one input record and emits zero or more output records
// with emit. Emitted records are produced in the current transaction only
// after the handler returns nil; if it returns an error or panics, they are
// dropped and the transaction is aborted (see [Session.Run]). A record whose
// Topic is empty goes to the [WithOutputTopic] topic.
//
// ctx carries the record's trace (its process span) and is cancelled when Run
// stops. The handler is called from one goroutine, one record at a time, in
// offset order per partition; emit must not be called after the handler
// returns. The handler must not call the [Session]'s methods. The same input
// record may be handled several times (after an abort), but its output
// becomes visible once: keep side effects outside Kafka idempotent.
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
	cfg      config
	opts     []kgo.Opt
	brokers  []string
	topics   []string
	txnID    string
	kotel    *kotel.Tracer
	tracer   trace.Tracer
	log      *slog.Logger
	stats    counters
	start    time.Duration // the start timeout
	timeouts *deadline.Timeouts
	newSess  func(...kgo.Opt) (*kgo.GroupTransactSession, error)
	// committed, when set (tests), is called after each commit.
	committed func()

	mu      sync.Mutex
	cl      *client // nil after an abandon, until recreated
	running bool
	closed  bool
	stop    context.CancelFunc
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
	prepared bool
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
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			cfg.Reject("a nil option was passed: remove it")
			continue
		}
		o.Apply(&cfg)
	}
	prod := preset.Producer{Semantics: kdeliver.ExactlyOnce, TransactionalID: transactionalID, TxnIDHint: "a non-empty transactionalID to eos.New"}
	cons := preset.Consumer{Semantics: kdeliver.ExactlyOnce, Group: group, Topics: topics}
	var ps kdeliver.Problems
	ps.Add(len(brokers) == 0, "no seed brokers: pass at least one host:port")
	prod.Validate(&ps)
	cons.Validate(&ps)
	cfg.validate(&ps)
	start, problem := cfg.shared.Start()
	ps.Add(problem != "", problem)
	for _, t := range topics {
		ps.Add(cfg.deadLetter != "" && t == cfg.deadLetter, fmt.Sprintf("the dead-letter topic %q is also an input topic: a failing record would loop", t))
	}
	if err := ps.Err("eos session", kdeliver.ExactlyOnce); err != nil {
		return nil, err
	}

	base, kt := preset.Base(&cfg.shared, group)
	kopts := append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, base...)
	kopts = append(kopts, prod.Opts()...)
	// The input topics are added once the session's producer has fenced
	// earlier instances (see fence): a client that joined first would
	// fetch the group's offsets while the old transaction still holds them
	// (UNSTABLE_OFFSET_COMMIT, retried until it times out).
	noTopics := cons
	noTopics.Topics = nil
	kopts = append(kopts, noTopics.Opts()...)
	kopts = append(kopts,
		kgo.TransactionTimeout(cfg.txnTimeout),
		kgo.SessionTimeout(cfg.sessionTimeout),
	)

	tp := cfg.shared.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	s := &Session{
		cfg:     cfg,
		opts:    kopts,
		brokers: brokers,
		topics:  topics,
		txnID:   transactionalID,
		kotel:   kt,
		tracer:  tp.Tracer("github.com/kdeliver/kdeliver/eos"),
		log:     cfg.shared.Log().With("transactional_id", transactionalID, "group", group),
		start:   start,
		newSess: kgo.NewGroupTransactSession,
	}
	// Build the client once, connecting to nothing, to check the
	// effective options.
	pctx := canceled()
	probe := preset.Build(append(kopts[:len(kopts):len(kopts)], kgo.WithContext(pctx)), cfg.kgoOpts, func(f preset.Facts, ps *kdeliver.Problems) {
		prod.Check(f, ps)
		cons.Check(f, ps)
		ps.Add(f.TxnTimeout >= f.SessionTimeout, fmt.Sprintf("a raw option left the transaction timeout %v not below the session timeout %v: use WithTransactionTimeout and WithSessionTimeout", f.TxnTimeout, f.SessionTimeout))
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
	s.opts = append(kopts, cfg.kgoOpts...)
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
	Fenced           int64 // transactions ended because another instance took over the transactional ID
	Records          int64 // input records whose transaction committed
	DeadLettered     int64 // input records sent to the dead-letter topic and committed
	Recreated        int64 // times the client was closed and built again after an error
	RewindViolations int64 // records polled below the committed offset after an abort (see "# Errors")
}

type counters struct {
	committed, aborted, abortedRebalance, abortedHandler, abortedTimeout, fenced,
	records, deadLettered, recreated, rewind atomic.Int64
}

// Stats returns the counters.
func (s *Session) Stats() Stats {
	c := &s.stats
	return Stats{
		Committed: c.committed.Load(), Aborted: c.aborted.Load(), AbortedRebalance: c.abortedRebalance.Load(),
		AbortedHandler: c.abortedHandler.Load(), AbortedTimeout: c.abortedTimeout.Load(), Fenced: c.fenced.Load(),
		Records: c.records.Load(), DeadLettered: c.deadLettered.Load(),
		Recreated: c.recreated.Load(), RewindViolations: c.rewind.Load(),
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
	return ready.Check(ctx, c.gts.Client(), s.brokers, s.needed())
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
// next transaction.
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
// the handler call in progress finishes (its ctx is cancelled), the records
// handled so far are committed, and Run returns nil; what was polled but not
// handled is read again by whoever owns the partitions next.
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
//   - a handler error or panic aborts, waits ([WithBackoff]) and handles the
//     record again, up to [WithMaxAttempts]; then it either goes to the
//     dead-letter topic or Run returns a [*HandlerError].
//
// Run returns an error matching [ErrFenced] when another instance took over
// the transactional ID, an error matching kdeliver.ErrTopicNotFound when an
// output topic stays unknown for the start timeout, and an error for
// failures no retry can fix (authorization). A Run that returned can be
// called again.
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
	ctx, cancel := context.WithCancel(ctx)
	s.running, s.stop, s.done = true, cancel, make(chan struct{})
	s.mu.Unlock()
	defer func() {
		cancel()
		s.mu.Lock()
		s.running = false
		close(s.done)
		s.mu.Unlock()
	}()
	l := &loop{s: s, h: h, attempts: map[recordKey]int{}, bo: s.newBackoff(), recreateBo: s.newBackoff(),
		missing: map[string]time.Time{}}
	return l.run(ctx)
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
	running, done, stop := s.running, s.done, s.stop
	s.mu.Unlock()
	var err error
	if running {
		stop()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
			s.mu.Lock()
			if s.cl != nil {
				s.cl.cancel() // unblocks Run
			}
			s.mu.Unlock()
			<-done
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
// waits for it).
func (c *client) close(ctx context.Context) error {
	if _, gen := c.gts.Client().GroupMetadata(); gen < 0 {
		c.cancel()
	}
	done := make(chan struct{})
	go func() {
		c.gts.Close()
		close(done)
	}()
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
	b.InitialInterval = s.cfg.backoffInitial
	b.MaxInterval = s.cfg.backoffMax
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

// fenceAttempt bounds one InitProducerID request of [Session.fence].
const fenceAttempt = 10 * time.Second

// prepare fences earlier producers of the transactional ID, then starts
// consuming. The fence is an InitProducerID request of its own: the
// coordinator aborts the transaction a crashed instance left open (pending
// offsets included) before it answers, so the group's offsets are stable
// when this client fetches them; kgo's producer initializes (and bumps the
// epoch) again at its first produce.
func (s *Session) prepare(ctx context.Context, c *client) error {
	cl := c.gts.Client()
	req := kmsg.NewPtrInitProducerIDRequest()
	req.TransactionalID = kmsg.StringPtr(s.txnID)
	req.TransactionTimeoutMillis = int32(s.cfg.txnTimeout.Milliseconds())
	req.ProducerID, req.ProducerEpoch = -1, -1
	bo := s.newBackoff()
	limit := time.Now().Add(s.cfg.txnTimeout)
	for {
		actx, cancel := context.WithTimeout(ctx, fenceAttempt)
		resp, err := req.RequestWith(actx, cl)
		cancel()
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		switch {
		case err == nil:
			cl.AddConsumeTopics(s.topics...)
			c.prepared = true
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case fatal(err):
			return fmt.Errorf("eos: fencing earlier producers of transactional ID %q: %w", s.txnID, err)
		case !time.Now().Before(limit):
			// Not fenced: kgo's producer fences at its first produce,
			// which is correct, only slower to resume.
			s.log.Warn("eos: could not fence earlier producers of the transactional ID before reading; reading anyway (a crashed instance's transaction may delay the first poll until it times out)", "err", err)
			cl.AddConsumeTopics(s.topics...)
			c.prepared = true
			return nil
		}
		// CONCURRENT_TRANSACTIONS while the old transaction's markers
		// are written, a coordinator moving, a connection failing.
		wait(ctx, bo.NextBackOff())
	}
}

type recordKey struct {
	topic     string
	partition int32
	offset    int64
}

// Abort reasons, the "eos.reason" attribute of an aborted transaction span.
const (
	reasonRebalance = "rebalance"      // End returned (false, nil)
	reasonHandler   = "handler_error"  // the handler failed; retried
	reasonProduce   = "produce_error"  // an output record failed; client replaced
	reasonShutdown  = "shutdown"       // ctx cancelled or Close, nothing handled yet
	reasonEnd       = "end_error"      // End failed; client replaced
	reasonTimeout   = "txn_timeout"    // handling outlived the transaction timeout
	reasonRewind    = "rewind_guard"   // polled below the committed offset; client replaced
	reasonStop      = "handler_failed" // the handler failed for the last time; Run returns
	reasonFenced    = "fenced"         // another instance owns the transactional ID
)

// loop is the state of one Run.
type loop struct {
	s          *Session
	h          Handler
	attempts   map[recordKey]int
	bo         *backoff.ExponentialBackOff // between handler attempts
	recreateBo *backoff.ExponentialBackOff // between client recreations
	// expect holds, after an abort or a cut, the offset each partition
	// must resume at; the first record polled per partition is checked.
	expect map[string]map[int32]int64
	// solo is a record whose handling made a transaction outlive its
	// timeout: it is handled first in a transaction of its own.
	solo recordKey
	// missing holds output topics that produces found unknown, since when.
	missing map[string]time.Time
	checked bool // the brokers and topics were found ready in this Run
	// out collects what the handler emits; emit appends to it while
	// handling is set. Both are reused for every record.
	out      []*kgo.Record
	emit     func(*kgo.Record)
	handling bool
	// runTrace is Run's ctx without its cancellation when it carries a
	// span, else nil: the context of output records when tracing is off
	// and the input record carries no trace of its own.
	runTrace context.Context
}

// txn is the state of one transaction.
type txn struct {
	c        *client
	sess     *kgo.GroupTransactSession
	span     trace.Span
	begun    time.Time
	firstOut time.Time // when the first output was produced: the broker's timer starts then
	records  int
	dlq      int
	reason   string // abort reason, "" while the transaction can commit
	replace  bool   // close the client after End
	fatal    error  // Run returns it after End
	crashed  error  // abandon without End and return it
	// cut holds, for partitions whose polled records were not all
	// handled, the offset of the first one not handled: the transaction
	// commits that offset instead of the end of the poll.
	cut map[string]map[int32]kgo.EpochOffset
	// slowest is the record whose handler took longest, and how long.
	slowest     recordKey
	slowestTook time.Duration

	prodMu    sync.Mutex
	prodErr   error
	prodTopic string                   // topic of the output that failed first
	promise   func(*kgo.Record, error) // one for all the transaction's records
}

func (t *txn) abort(reason string) {
	if t.reason == "" {
		t.reason = reason
	}
}

func (l *loop) run(ctx context.Context) error {
	if trace.SpanContextFromContext(ctx).IsValid() {
		l.runTrace = context.WithoutCancel(ctx)
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		c, err := l.s.current()
		if err != nil {
			if errors.Is(err, kdeliver.ErrClosed) {
				return nil
			}
			return fmt.Errorf("eos: rebuilding the client: %w", err)
		}
		if !c.prepared {
			if err := l.prepare(ctx, c); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if err := l.transaction(ctx, c); err != nil {
			return err
		}
	}
}

// prepare checks, once per Run, that the brokers answer and the topics
// exist, then fences and starts consuming on c.
func (l *loop) prepare(ctx context.Context, c *client) error {
	s := l.s
	if !l.checked {
		if err := ready.Wait(ctx, c.gts.Client(), s.brokers, s.needed(), s.start, s.log); err != nil {
			return fmt.Errorf("eos: %w", err)
		}
		l.checked = true
	}
	return s.prepare(ctx, c)
}

// transaction polls, begins, handles records until the transaction is full,
// its time is up or Run stops, and ends the transaction. It returns an error
// only to stop Run.
func (l *loop) transaction(ctx context.Context, c *client) error {
	s := l.s
	sess := c.gts
	fs := sess.PollRecords(ctx, s.cfg.commitRecords)
	if fs.IsClientClosed() {
		return nil
	}
	if ctx.Err() != nil {
		if !fs.Empty() {
			// The poll raced the cancellation: the client has moved past
			// records nobody handled, and a later Run on this session
			// would commit their offsets with its first transaction.
			// Drop the client; the next one starts from the committed
			// offsets.
			s.dropClient(c)
		}
		return nil
	}
	l.pollErrors(fs)
	if fs.Empty() {
		return nil
	}
	t := &txn{c: c, sess: sess, begun: time.Now()}
	if err := sess.Begin(); err != nil {
		// The previous End left the producer unusable.
		if f := l.fenced(err, t); f != nil {
			return f
		}
		l.replace(ctx, c, "begin failed", err)
		return nil
	}
	_, t.span = s.tracer.Start(context.Background(), "eos transaction", trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("eos.transactional_id", s.txnID)))

	deadline := t.begun.Add(s.cfg.commitInterval)
	for {
		l.handleAll(ctx, t, fs, deadline)
		if t.reason != "" || t.crashed != nil || t.cut != nil || t.records >= s.cfg.commitRecords || !time.Now().Before(deadline) {
			break
		}
		pctx, cancel := context.WithDeadline(ctx, deadline)
		fs = sess.PollRecords(pctx, s.cfg.commitRecords-t.records)
		cancel()
		if fs.IsClientClosed() {
			t.abort(reasonShutdown)
			break
		}
		if ctx.Err() != nil {
			// Records this poll returned are not handled: cut before
			// them, so the transaction commits what was handled.
			l.cutRest(t, fs)
			break
		}
		l.pollErrors(fs)
	}
	if t.crashed != nil {
		// A simulated crash: no End, no commit, no leave; the broker
		// aborts the transaction on timeout or when the next instance
		// with this transactional ID initializes.
		t.span.SetAttributes(attribute.String("eos.outcome", "crash"))
		t.span.End()
		s.dropClient(c) // leaves, so that a restart need not wait out the session
		return t.crashed
	}
	if t.records == 0 && t.reason == "" {
		t.abort(reasonShutdown) // stopped before handling anything
	}
	return l.end(ctx, t)
}

// handleAll handles the polled records in order until the transaction is
// full, its interval is up or Run stops (then the rest are cut, see
// [txn.cut]); after an abort reason is set the rest are left for the rewind.
func (l *loop) handleAll(ctx context.Context, t *txn, fs kgo.Fetches, deadline time.Time) {
	s := l.s
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		for i, r := range p.Records {
			if t.reason != "" || t.crashed != nil {
				return
			}
			stop := t.cut != nil || ctx.Err() != nil ||
				t.records > 0 && (t.records >= s.cfg.commitRecords || !time.Now().Before(deadline) ||
					l.solo == recordKey{r.Topic, r.Partition, r.Offset})
			if stop {
				t.cutAt(p.Records[i])
				return
			}
			l.handle(ctx, t, r)
		}
	})
}

// cutAt notes that r and the records after it in its partition are not
// handled in this transaction.
func (t *txn) cutAt(r *kgo.Record) {
	if t.cut == nil {
		t.cut = map[string]map[int32]kgo.EpochOffset{}
	}
	ps := t.cut[r.Topic]
	if ps == nil {
		ps = map[int32]kgo.EpochOffset{}
		t.cut[r.Topic] = ps
	}
	if _, ok := ps[r.Partition]; !ok {
		ps[r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset}
	}
}

// cutRest cuts before every record of fs.
func (l *loop) cutRest(t *txn, fs kgo.Fetches) {
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) > 0 {
			t.cutAt(p.Records[0])
		}
	})
}

func (l *loop) handle(ctx context.Context, t *txn, r *kgo.Record) {
	s := l.s
	if l.checkRewind(r) {
		s.log.Error("eos: polled a record below the committed offset after an abort; replacing the client", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset)
		s.stats.rewind.Add(1)
		t.abort(reasonRewind)
		t.replace = true
		return
	}
	pctx, span := ctx, trace.SpanFromContext(context.Background()) // a no-op span
	if t.span.IsRecording() {                                      // tracing is on: skip the per-record work otherwise
		if sc := trace.SpanContextFromContext(r.Context); sc.IsValid() {
			t.span.AddLink(trace.Link{SpanContext: sc})
		}
		_, span = s.kotel.WithProcessSpan(r)
		defer span.End()
		// The handler's ctx ends with Run's and carries the record's trace.
		pctx = trace.ContextWithSpan(ctx, span)
	}
	began := time.Now()
	out, err := l.call(pctx, r)
	if took := time.Since(began); took > t.slowestTook {
		t.slowest, t.slowestTook = recordKey{r.Topic, r.Partition, r.Offset}, took
	}
	if err == nil {
		t.records++
		if l.solo == (recordKey{r.Topic, r.Partition, r.Offset}) {
			l.solo = recordKey{}
		}
		octx := l.outputContext(t, pctx, r)
		for _, o := range out {
			if o.Context == nil {
				o.Context = octx
			}
			l.produce(t, o)
		}
		return
	}
	if ctx.Err() != nil {
		// Not the handler's fault: no attempt counted; the record is
		// handled again after the stop.
		t.cutAt(r)
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, "handler failed")
	if errors.Is(err, crash.ErrCrash) {
		t.crashed = err
		return
	}
	k := recordKey{r.Topic, r.Partition, r.Offset}
	l.attempts[k]++
	n := l.attempts[k]
	switch {
	case n < s.cfg.maxAttempts:
		s.log.Info("eos: handler failed; aborting and retrying", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", n, "err", err)
		t.abort(reasonHandler)
	case s.cfg.deadLetter != "":
		s.log.Warn("eos: handler failed for the last time; dead-lettering the record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempts", n, "err", err)
		delete(l.attempts, k)
		t.records++
		t.dlq++
		l.produce(t, deadLetter(pctx, s.cfg.deadLetter, r, n, err))
	default:
		t.abort(reasonStop)
		t.fatal = &HandlerError{Record: r, Attempts: n, Err: err}
	}
}

// end ends t and acts on the outcome.
func (l *loop) end(ctx context.Context, t *txn) error {
	s := l.s
	// kgo commits whatever was written if asked to, even when some records
	// of the transaction failed: wait for every produce to finish before
	// deciding, or a failure that lands during End's own flush would commit
	// the offsets of output that was never written.
	var prodErr error
	if t.reason == "" {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.txnTimeout)
		prodErr = t.sess.Client().Flush(fctx)
		cancel()
	}
	t.prodMu.Lock()
	if t.prodErr != nil {
		prodErr = t.prodErr
	}
	prodTopic := t.prodTopic
	t.prodMu.Unlock()
	if prodErr != nil {
		// Every produce error aborts, and the client is replaced: a
		// request timeout or lost connection leaves unknown what the
		// broker applied, and only a new producer epoch fences it.
		t.abort(reasonProduce)
		t.replace = true
		if err := l.noteMissing(prodTopic, prodErr); err != nil {
			t.fatal = err
		}
	}
	if t.reason == "" && !t.firstOut.IsZero() && time.Since(t.firstOut) >= s.cfg.txnTimeout {
		l.timedOut(t)
	}
	// End must not be cancelled except to shut down: it leaves the
	// transaction in an unknown state. Close unblocks it by closing the
	// client.
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.txnTimeout+s.cfg.sessionTimeout)
	if t.reason == "" && t.cut != nil {
		ectx = kgo.PreTxnCommitFnContext(ectx, func(req *kmsg.TxnOffsetCommitRequest) error {
			for i := range req.Topics {
				rt := &req.Topics[i]
				for j := range rt.Partitions {
					rp := &rt.Partitions[j]
					if eo, ok := t.cut[rt.Topic][rp.Partition]; ok {
						rp.Offset, rp.LeaderEpoch = eo.Offset, eo.Epoch
					}
				}
			}
			return nil
		})
	}
	committed, err := t.sess.End(ectx, kgo.TransactionEndTry(t.reason == ""))
	cancel()

	switch {
	case committed:
		if t.cut != nil {
			// End moved the client to the end of the poll; resume at
			// the cut instead (the offset just committed).
			t.sess.Client().SetOffsets(t.cut)
			l.expect = map[string]map[int32]int64{}
			for topic, ps := range t.cut {
				l.expect[topic] = map[int32]int64{}
				for p, eo := range ps {
					l.expect[topic][p] = eo.Offset
				}
			}
		} else {
			l.expect = nil
		}
		s.stats.committed.Add(1)
		s.stats.records.Add(int64(t.records))
		s.stats.deadLettered.Add(int64(t.dlq))
		clear(l.attempts)
		clear(l.missing)
		l.bo.Reset()
		l.recreateBo.Reset()
		t.span.SetAttributes(attribute.String("eos.outcome", "commit"), attribute.Int("eos.records", t.records))
		t.span.End()
		if s.committed != nil {
			s.committed()
		}
		return nil
	case err == nil:
		if t.reason == "" {
			t.reason = reasonRebalance
			s.stats.abortedRebalance.Add(1)
		}
	default:
		if f := l.fenced(err, t); f != nil {
			l.endAbortSpan(t, reasonFenced, err)
			return f
		}
		if fatal(err) {
			l.endAbortSpan(t, reasonEnd, err)
			return fmt.Errorf("eos: ending the transaction: %w", err)
		}
		t.abort(reasonEnd)
		t.replace = true
	}
	s.stats.aborted.Add(1)
	switch t.reason {
	case reasonHandler, reasonStop:
		s.stats.abortedHandler.Add(1)
	case reasonTimeout:
		s.stats.abortedTimeout.Add(1)
	}
	l.endAbortSpan(t, t.reason, err)
	if t.fatal != nil {
		return t.fatal
	}
	if t.replace {
		if ctx.Err() == nil {
			why := t.reason
			if err == nil {
				err = prodErr
			}
			l.replace(ctx, t.c, why, err)
		}
		return nil
	}
	l.expect = committedOffsets(t.sess.Client())
	if t.reason == reasonHandler {
		wait(ctx, l.bo.NextBackOff())
	}
	return nil
}

// timedOut aborts t, which outlived the transaction timeout because
// handling was slow, and says what to change.
func (l *loop) timedOut(t *txn) {
	s := l.s
	t.abort(reasonTimeout)
	t.replace = true
	held := time.Since(t.firstOut).Round(time.Millisecond)
	slow := t.slowest
	s.log.Warn("eos: transaction outlived its timeout because handling was slow; aborting it and handling its records again, the slowest in a transaction of its own",
		"records", t.records, "held_open", held, "transaction_timeout", s.cfg.txnTimeout,
		"slowest_topic", slow.topic, "slowest_partition", slow.partition, "slowest_offset", slow.offset,
		"slowest_took", t.slowestTook.Round(time.Millisecond),
		"fix", "raise eos.WithTransactionTimeout above the slowest record's handling plus the commit interval, lower eos.WithCommitEvery, or speed up the handler")
	if t.records > 1 {
		l.solo = slow
	}
}

// noteMissing records that the output topic failed as unknown, and returns
// the error that stops Run once it stayed unknown for the start timeout.
func (l *loop) noteMissing(topic string, err error) error {
	if topic == "" || !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil
	}
	since, ok := l.missing[topic]
	if !ok {
		l.missing[topic] = time.Now()
		l.s.log.Warn("eos: output topic unknown to the brokers; retrying", "topic", topic, "up_to", l.s.start, "err", err)
		return nil
	}
	if time.Since(since) < l.s.start {
		return nil
	}
	return fmt.Errorf("eos: output %w", ready.Missing(time.Since(since).Round(time.Second), topic))
}

func (l *loop) endAbortSpan(t *txn, reason string, err error) {
	t.span.SetAttributes(attribute.String("eos.outcome", "abort"), attribute.String("eos.reason", reason), attribute.Int("eos.records", t.records))
	if err != nil {
		t.span.RecordError(err)
		t.span.SetStatus(codes.Error, reason)
	}
	t.span.End()
}

// replace closes the client after an error; the next transaction builds a
// new one, whose InitProducerID bumps the epoch and fences anything the old
// producer left in flight.
func (l *loop) replace(ctx context.Context, c *client, why string, err error) {
	s := l.s
	pause := l.recreateBo.NextBackOff()
	s.log.Warn("eos: replacing the client: a new producer epoch fences what the old one may have left in flight",
		"reason", why, "err", err, "retry_in", pause)
	s.dropClient(c)
	s.stats.recreated.Add(1)
	wait(ctx, pause)
}

// fenced returns a fencedError when err says another producer owns the
// transactional ID. A fence that follows a transaction open longer than its
// timeout is the broker's timeout abort, not another owner: the client is
// replaced instead.
func (l *loop) fenced(err error, t *txn) error {
	if !errors.Is(err, kerr.ProducerFenced) && !errors.Is(err, kerr.InvalidProducerEpoch) {
		return nil
	}
	if !t.firstOut.IsZero() && time.Since(t.firstOut) >= l.s.cfg.txnTimeout {
		l.timedOut(t)
		return nil
	}
	l.s.stats.aborted.Add(1)
	l.s.stats.fenced.Add(1)
	l.s.log.Error("eos: producer fenced: another instance owns the transactional ID", "err", err)
	l.s.dropClient(t.c)
	return &fencedError{err: err}
}

// fatal reports errors no new client fixes.
func fatal(err error) bool {
	for _, e := range []error{kerr.TransactionalIDAuthorizationFailed, kerr.GroupAuthorizationFailed,
		kerr.TopicAuthorizationFailed, kerr.ClusterAuthorizationFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (l *loop) pollErrors(fs kgo.Fetches) {
	fs.EachError(func(topic string, p int32, err error) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return
		}
		l.s.log.Warn("eos: fetch error; the client retries", "topic", topic, "partition", p, "err", err)
	})
}

// call runs the handler, turning a panic into an error and checking the
// emitted records.
func (l *loop) call(ctx context.Context, r *kgo.Record) (out []*kgo.Record, err error) {
	if l.emit == nil {
		l.emit = func(o *kgo.Record) {
			if !l.handling {
				panic("eos: emit called after the handler returned")
			}
			l.out = append(l.out, o)
		}
	}
	clear(l.out)
	l.out = l.out[:0]
	l.handling = true
	defer func() {
		l.handling = false
		if v := recover(); v != nil {
			out, err = nil, panicError{v}
		}
	}()
	if err = l.h(ctx, r, l.emit); err != nil {
		return nil, err
	}
	for _, o := range l.out {
		if o == nil {
			return nil, errors.New("emitted a nil record")
		}
		if o.Topic == "" {
			if l.s.cfg.outputTopic == "" {
				return nil, errors.New("emitted a record without a topic and no WithOutputTopic is set")
			}
			o.Topic = l.s.cfg.outputTopic
		}
	}
	return l.out, nil
}

// outputContext is the context of the records emitted for in: the trace,
// not the cancellation (kgo fails a record whose Context is done). With
// tracing on it is the process span's; with tracing off, in's upstream trace
// (from its headers) or else Run's ctx's trace, and nil when there is none,
// which spares the client's tracing hooks every per-record look-up.
func (l *loop) outputContext(t *txn, pctx context.Context, in *kgo.Record) context.Context {
	switch {
	case t.span.IsRecording():
		return context.WithoutCancel(pctx)
	case trace.SpanContextFromContext(in.Context).IsValid(): // nil-safe
		return context.WithoutCancel(in.Context)
	}
	return l.runTrace
}

// produce writes r in t. Its delivery timeout counts from now, not from its
// Timestamp (which an output or dead letter may copy from an old input).
func (l *loop) produce(t *txn, r *kgo.Record) {
	if t.promise == nil {
		t.promise = func(r *kgo.Record, err error) {
			if err != nil {
				err = deadline.Err(r, err)
				t.prodMu.Lock()
				if t.prodErr == nil {
					t.prodErr, t.prodTopic = err, r.Topic
				}
				t.prodMu.Unlock()
			}
			deadline.Detach(r)
		}
	}
	if t.firstOut.IsZero() {
		t.firstOut = time.Now()
	}
	l.s.timeouts.Attach(nil, r)
	t.sess.Produce(context.Background(), r, t.promise)
}

// checkRewind reports whether r is below the offset its partition was
// rewound (or cut) to by the last transaction (kgo #1222 guard).
func (l *loop) checkRewind(r *kgo.Record) bool {
	ps, ok := l.expect[r.Topic]
	if !ok {
		return false
	}
	want, ok := ps[r.Partition]
	if !ok {
		return false
	}
	delete(ps, r.Partition)
	// With read_committed, aborted records and markers take offsets, so
	// the first record may be above the committed offset; below is a
	// re-read of committed input.
	return r.Offset < want
}

func committedOffsets(cl *kgo.Client) map[string]map[int32]int64 {
	m := map[string]map[int32]int64{}
	for t, ps := range cl.CommittedOffsets() {
		m[t] = map[int32]int64{}
		for p, eo := range ps {
			m[t][p] = eo.Offset
		}
	}
	return m
}

// Headers of a dead-lettered record, besides the input's own headers.
const (
	HeaderDLQTopic     = "kdeliver-dlq-topic"
	HeaderDLQPartition = "kdeliver-dlq-partition"
	HeaderDLQOffset    = "kdeliver-dlq-offset"
	HeaderDLQAttempts  = "kdeliver-dlq-attempts"
	HeaderDLQError     = "kdeliver-dlq-error"
)

func deadLetter(ctx context.Context, topic string, r *kgo.Record, attempts int, err error) *kgo.Record {
	hs := append([]kgo.RecordHeader(nil), r.Headers...)
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderDLQTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: HeaderDLQPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: HeaderDLQOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
		kgo.RecordHeader{Key: HeaderDLQAttempts, Value: []byte(strconv.Itoa(attempts))},
		kgo.RecordHeader{Key: HeaderDLQError, Value: []byte(err.Error())},
	)
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp, Context: context.WithoutCancel(ctx)}
}

func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
