package eos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/preset"
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

// Session is an exactly-once consume-process-produce loop: it reads the
// input topics as a member of a consumer group, and writes the handler's
// output and the input offsets in one Kafka transaction, so each input
// record's output is visible to read_committed readers exactly once.
//
// A Session's methods are safe to call from several goroutines, but only one
// [Session.Run] runs at a time.
type Session struct {
	cfg     config
	opts    []kgo.Opt
	txnID   string
	kotel   *kotel.Tracer
	tracer  trace.Tracer
	log     *slog.Logger
	stats   counters
	newSess func(...kgo.Opt) (*kgo.GroupTransactSession, error)
	// committed, when set (tests), is called after each commit.
	committed func()

	mu      sync.Mutex
	sess    *kgo.GroupTransactSession // nil after an abandon, until recreated
	running bool
	closed  bool
	stop    context.CancelFunc
	done    chan struct{}
}

// New builds a Session that consumes topics as a member of group and
// produces transactionally with transactionalID. transactionalID must be
// unique among running instances and stable across restarts of the same
// instance (e.g. "orders-copier-0"): a new instance with the same ID fences
// the old one. All configuration problems are reported at once in an error
// wrapping kdeliver.ErrInvalidConfig.
//
// The client starts and joins the group in the background; call
// [Session.Run] promptly and [Session.Close] when done.
func New(brokers []string, group string, topics []string, transactionalID string, opts ...Option) (*Session, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o.Apply(&cfg)
	}
	prod := preset.Producer{Semantics: kdeliver.ExactlyOnce, TransactionalID: transactionalID, TxnIDHint: "a non-empty transactionalID to eos.New"}
	cons := preset.Consumer{Semantics: kdeliver.ExactlyOnce, Group: group, Topics: topics}
	var ps kdeliver.Problems
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

	base, kt := preset.Base(&cfg.shared, group)
	kopts := append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, base...)
	kopts = append(kopts, prod.Opts()...)
	kopts = append(kopts, cons.Opts()...)
	kopts = append(kopts,
		kgo.TransactionTimeout(cfg.txnTimeout),
		kgo.SessionTimeout(cfg.sessionTimeout),
	)
	kopts = append(kopts, cfg.kgoOpts...)

	tp := cfg.shared.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	lg := cfg.shared.Logger
	if lg == nil {
		lg = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Session{
		cfg:     cfg,
		opts:    kopts,
		txnID:   transactionalID,
		kotel:   kt,
		tracer:  tp.Tracer("github.com/kdeliver/kdeliver/eos"),
		log:     lg.With("transactional_id", transactionalID, "group", group),
		newSess: kgo.NewGroupTransactSession,
	}
	sess, err := s.newSess(kopts...)
	if err != nil {
		return nil, &kdeliver.ConfigError{What: "eos session", Semantics: kdeliver.ExactlyOnce, Problems: []string{"franz-go rejected the options: " + err.Error()}}
	}
	cl := sess.Client()
	prod.Check(cl, &ps)
	cons.Check(cl, &ps)
	txnTimeout := cl.OptValue(kgo.TransactionTimeout).(time.Duration)
	sessTimeout := cl.OptValue(kgo.SessionTimeout).(time.Duration)
	ps.Add(txnTimeout >= sessTimeout, fmt.Sprintf("a raw option left the transaction timeout %v not below the session timeout %v: use WithTransactionTimeout and WithSessionTimeout", txnTimeout, sessTimeout))
	ps.Add(cl.OptValue(kgo.BlockRebalanceOnPoll).(bool), "a raw option set BlockRebalanceOnPoll, which the session does not release: remove it (a rebalance aborts the open transaction anyway)")
	if err := ps.Err("eos session", kdeliver.ExactlyOnce); err != nil {
		sess.Close()
		return nil, err
	}
	s.cfg.txnTimeout = txnTimeout
	s.sess = sess
	return s, nil
}

// Stats counts what a Session did since New. Counters only grow.
type Stats struct {
	Committed        int64 // transactions committed
	Aborted          int64 // transactions aborted, for any reason
	AbortedRebalance int64 // aborted by a rebalance or an abortable commit error (End returned false, nil)
	AbortedHandler   int64 // aborted because the handler failed on a record
	Records          int64 // input records whose transaction committed
	DeadLettered     int64 // input records sent to the dead-letter topic and committed
	Recreated        int64 // times the client was closed and built again after an error
	RewindViolations int64 // records polled below the committed offset after an abort (see "# Errors")
}

type counters struct {
	committed, aborted, abortedRebalance, abortedHandler, records, deadLettered, recreated, rewind atomic.Int64
}

// Stats returns the counters.
func (s *Session) Stats() Stats {
	c := &s.stats
	return Stats{
		Committed: c.committed.Load(), Aborted: c.aborted.Load(), AbortedRebalance: c.abortedRebalance.Load(),
		AbortedHandler: c.abortedHandler.Load(), Records: c.records.Load(), DeadLettered: c.deadLettered.Load(),
		Recreated: c.recreated.Load(), RewindViolations: c.rewind.Load(),
	}
}

// Run polls the input, calls h for each record and commits the outputs with
// the input offsets in transactions of up to [WithCommitEvery] records or
// interval. It returns nil when ctx is cancelled or Close is called, after
// aborting the open transaction (its input is handled again by whoever owns
// the partitions next).
//
// Faults are handled, not returned:
//   - a rebalance or an abortable commit error aborts the transaction and
//     rewinds to the committed offsets; the records are handled again;
//   - a failed produce, an unconfirmed or failed End (request timeouts,
//     unknown server errors, lost connections), or a transaction that
//     outlived its timeout aborts and replaces the client, whose new producer
//     epoch fences whatever the old one left in flight;
//   - a handler error or panic aborts, waits ([WithBackoff]) and handles the
//     record again, up to [WithMaxAttempts]; then it either goes to the
//     dead-letter topic or Run returns a [*HandlerError].
//
// Run returns an error matching [ErrFenced] when another instance took over
// the transactional ID, and an error for failures no retry can fix
// (authorization). A Run that returned can be called again.
func (s *Session) Run(ctx context.Context, h Handler) error {
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
	l := &loop{s: s, h: h, attempts: map[recordKey]int{}, bo: s.newBackoff(), recreateBo: s.newBackoff()}
	return l.run(ctx)
}

// Close stops a running [Session.Run] (its open transaction is aborted),
// leaves the group so its partitions move to other members at once, and
// closes the client. If ctx ends first, the client is closed without waiting
// for Run's abort; the broker then aborts the transaction when its timeout
// expires or the next instance with the same transactional ID starts. Close
// is safe to call twice; later calls return nil.
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
			s.closeClient() // unblocks Run
			<-done
		}
	}
	s.closeClient()
	return err
}

func (s *Session) closeClient() {
	s.mu.Lock()
	sess := s.sess
	s.sess = nil
	s.mu.Unlock()
	if sess != nil {
		sess.Close()
	}
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
func (s *Session) current() (*kgo.GroupTransactSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, kdeliver.ErrClosed
	}
	if s.sess == nil {
		sess, err := s.newSess(s.opts...)
		if err != nil {
			return nil, err
		}
		s.sess = sess
		s.stats.recreated.Add(1)
	}
	return s.sess, nil
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
	reasonShutdown  = "shutdown"       // ctx cancelled or Close
	reasonEnd       = "end_error"      // End failed; client replaced
	reasonTimeout   = "txn_timeout"    // open longer than the transaction timeout
	reasonRewind    = "rewind_guard"   // polled below the committed offset; client replaced
	reasonStop      = "handler_failed" // the handler failed for the last time; Run returns
)

// loop is the state of one Run.
type loop struct {
	s          *Session
	h          Handler
	attempts   map[recordKey]int
	bo         *backoff.ExponentialBackOff // between handler attempts
	recreateBo *backoff.ExponentialBackOff // between client recreations
	// expect holds, after an abort, the committed offset each partition
	// must resume at; the first record polled per partition is checked.
	expect map[string]map[int32]int64
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
	sess    *kgo.GroupTransactSession
	span    trace.Span
	begun   time.Time
	records int
	dlq     int
	reason  string // abort reason, "" while the transaction can commit
	replace bool   // close the client after End
	fatal   error  // Run returns it after End
	crashed error  // abandon without End and return it

	prodMu  sync.Mutex
	prodErr error
	promise func(*kgo.Record, error) // one for all the transaction's records
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
		sess, err := l.s.current()
		if err != nil {
			if errors.Is(err, kdeliver.ErrClosed) {
				return nil
			}
			return fmt.Errorf("eos: rebuilding the client: %w", err)
		}
		if err := l.transaction(ctx, sess); err != nil {
			return err
		}
	}
}

// transaction polls, begins, handles records until the batch is full or its
// time is up, and ends the transaction. It returns an error only to stop Run.
func (l *loop) transaction(ctx context.Context, sess *kgo.GroupTransactSession) error {
	s := l.s
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
			s.closeClient()
		}
		return nil
	}
	l.pollErrors(fs)
	if fs.Empty() {
		return nil
	}
	t := &txn{sess: sess, begun: time.Now()}
	if err := sess.Begin(); err != nil {
		// The previous End left the producer unusable.
		if f := l.fenced(err, t); f != nil {
			return f
		}
		s.log.Warn("eos: begin failed; replacing the client", "err", err)
		l.replace(ctx, sess)
		return nil
	}
	_, t.span = s.tracer.Start(context.Background(), "eos transaction", trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("eos.transactional_id", s.txnID)))

	deadline := t.begun.Add(s.cfg.commitInterval)
	for {
		l.handleAll(ctx, t, fs)
		if t.reason != "" || t.crashed != nil || t.records >= s.cfg.commitRecords || !time.Now().Before(deadline) {
			break
		}
		pctx, cancel := context.WithDeadline(ctx, deadline)
		fs = sess.PollRecords(pctx, s.cfg.commitRecords-t.records)
		cancel()
		if ctx.Err() != nil || fs.IsClientClosed() {
			t.abort(reasonShutdown) // the abort rewinds what was polled
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
		s.closeClient()
		return t.crashed
	}
	return l.end(ctx, t)
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
	t.prodMu.Unlock()
	if prodErr != nil {
		// Every produce error aborts, and the client is replaced: a
		// request timeout or lost connection leaves unknown what the
		// broker applied, and only a new producer epoch fences it.
		t.abort(reasonProduce)
		t.replace = true
	}
	if t.reason == "" && time.Since(t.begun) >= s.cfg.txnTimeout {
		t.abort(reasonTimeout)
		t.replace = true
	}
	// End must not be cancelled except to shut down: it leaves the
	// transaction in an unknown state. Close unblocks it by closing the
	// client.
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.txnTimeout+s.cfg.sessionTimeout)
	committed, err := t.sess.End(ectx, kgo.TransactionEndTry(t.reason == ""))
	cancel()

	switch {
	case committed:
		s.stats.committed.Add(1)
		s.stats.records.Add(int64(t.records))
		s.stats.deadLettered.Add(int64(t.dlq))
		clear(l.attempts)
		l.bo.Reset()
		l.recreateBo.Reset()
		l.expect = nil
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
			l.endAbortSpan(t, reasonEnd, err)
			return f
		}
		if fatal(err) {
			l.endAbortSpan(t, reasonEnd, err)
			return fmt.Errorf("eos: ending the transaction: %w", err)
		}
		if ctx.Err() == nil {
			s.log.Warn("eos: end failed; replacing the client", "err", err, "reason", t.reason)
		}
		t.abort(reasonEnd)
		t.replace = true
	}
	s.stats.aborted.Add(1)
	if t.reason == reasonHandler || t.reason == reasonStop {
		s.stats.abortedHandler.Add(1)
	}
	l.endAbortSpan(t, t.reason, err)
	if t.fatal != nil {
		return t.fatal
	}
	if t.replace {
		if ctx.Err() == nil {
			l.replace(ctx, t.sess)
		}
		return nil
	}
	l.expect = committedOffsets(t.sess.Client())
	if t.reason == reasonHandler {
		wait(ctx, l.bo.NextBackOff())
	}
	return nil
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
func (l *loop) replace(ctx context.Context, sess *kgo.GroupTransactSession) {
	s := l.s
	s.mu.Lock()
	if s.sess == sess {
		s.sess = nil
	}
	s.mu.Unlock()
	sess.Close()
	wait(ctx, l.recreateBo.NextBackOff())
}

// fenced returns a fencedError when err says another producer owns the
// transactional ID. A fence that follows a transaction open longer than its
// timeout is the broker's timeout abort, not another owner: the client is
// replaced instead.
func (l *loop) fenced(err error, t *txn) error {
	if !errors.Is(err, kerr.ProducerFenced) && !errors.Is(err, kerr.InvalidProducerEpoch) {
		return nil
	}
	if time.Since(t.begun) >= l.s.cfg.txnTimeout {
		t.abort(reasonTimeout)
		t.replace = true
		return nil
	}
	l.s.log.Error("eos: producer fenced: another instance owns the transactional ID", "err", err)
	l.s.closeClient()
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

// handleAll handles the polled records in order; after an abort reason is
// set the rest are left for the rewind.
func (l *loop) handleAll(ctx context.Context, t *txn, fs kgo.Fetches) {
	fs.EachRecord(func(r *kgo.Record) {
		if t.reason != "" || t.crashed != nil {
			return
		}
		l.handle(ctx, t, r)
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
	out, err := l.call(pctx, r)
	if err == nil {
		t.records++
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
		t.abort(reasonShutdown) // not the handler's fault: no attempt counted
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

func (l *loop) produce(t *txn, r *kgo.Record) {
	if t.promise == nil {
		t.promise = func(_ *kgo.Record, err error) {
			if err != nil {
				t.prodMu.Lock()
				if t.prodErr == nil {
					t.prodErr = err
				}
				t.prodMu.Unlock()
			}
		}
	}
	t.sess.Produce(context.Background(), r, t.promise)
}

// checkRewind reports whether r is below the committed offset its partition
// was rewound to by the last abort (kgo #1222 guard).
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
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp, Context: ctx}
}

func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
