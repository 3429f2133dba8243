package eos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/dlq"
)

// handle handles r and returns the time its handler call ended (or the
// time it was given, prev, when r was not handled).
func (l *loop) handle(ctx context.Context, t *txn, r *kgo.Record, prev time.Time) time.Time {
	s := l.s
	if l.checkRewind(r) {
		s.log.Error("eos: polled a record below the committed offset after an abort; replacing the client", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset)
		s.stats.rewind.Add(1)
		t.abort(reasonRewind)
		t.replace = true
		return prev
	}
	pctx, span := l.processSpan(t, r)
	defer span.End()
	began := time.Now()
	out, err := l.seq.call(pctx, r)
	took := time.Since(began) // a monotonic read only: half a time.Now
	ended := began.Add(took)  // now, wall and monotonic
	l.settle(ctx, t, r, pctx, span, took, ended, out, err)
	return ended
}

// processSpan returns the handler's ctx for r and its process span (a no-op
// span when tracing is off). It is safe for concurrent use.
func (l *loop) processSpan(t *txn, r *kgo.Record) (context.Context, trace.Span) {
	pctx, span := l.hctx, trace.SpanFromContext(context.Background()) // a no-op span
	if t.span.IsRecording() {                                         // tracing is on: skip the per-record work otherwise
		if sc := trace.SpanContextFromContext(r.Context); sc.IsValid() {
			t.span.AddLink(trace.Link{SpanContext: sc})
		}
		_, span = l.s.kotel.WithProcessSpan(r)
		pctx = trace.ContextWithSpan(l.hctx, span)
	}
	return pctx, span
}

// settle acts on the outcome of r's handler call, which took took: it
// produces r's outputs, the first with now (a clock read just taken) as its
// hand-over, or counts the failure and aborts, dead-letters or stops. It
// reports whether r is done (its outputs, or its dead letter, are in t).
// Concurrent handlers call it one at a time.
func (l *loop) settle(ctx context.Context, t *txn, r *kgo.Record, pctx context.Context, span trace.Span, took time.Duration, now time.Time, out []*kgo.Record, err error) bool {
	s := l.s
	if took > t.slowestTook {
		t.slowest, t.slowestTook = recordKey{r.Topic, r.Partition, r.Offset}, took
	}
	if err == nil {
		t.records++
		if l.solo == (recordKey{r.Topic, r.Partition, r.Offset}) {
			l.solo = recordKey{}
		}
		octx := l.outputContext(t, pctx, r)
		for i, o := range out {
			if o.Context == nil {
				o.Context = octx
			}
			if i == 0 {
				l.produceAt(t, o, now)
			} else {
				// The previous Produce may have blocked on a full
				// buffer: now is no longer now.
				l.produce(t, o)
			}
		}
		return true
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, "handler failed")
	if errors.Is(err, crash.ErrCrash) {
		// A simulated crash is a crash even while Run stops: taken for
		// the stop, the crash a test planned would not happen.
		t.crashed = err
		return false
	}
	if ctx.Err() != nil {
		// Run is stopping: no attempt counted; the record is handled
		// again by whoever reads the partition next.
		t.cutAt(r)
		return false
	}
	k := recordKey{r.Topic, r.Partition, r.Offset}
	a := l.attempts[k]
	if a.n == 0 {
		a.first = time.Now()
	}
	if s.hd.MaxAttempts == 0 || a.n < s.hd.MaxAttempts {
		// A record already dead-lettered in a transaction that another
		// record's failure aborted keeps its count (see below): it is
		// not retried again.
		a.n++
	}
	l.attempts[k] = a
	n := a.n
	switch {
	case s.hd.MaxAttempts == 0 || n < s.hd.MaxAttempts:
		s.log.Info("eos: handler failed; aborting and retrying", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", n, "err", err)
		t.abort(reasonHandler)
	case s.cfg.deadLetter != "":
		s.log.Warn("eos: handler failed for the last time; dead-lettering the record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempts", n, "err", err)
		// The count stays until the transaction commits (end clears
		// it): another record's failure may abort this transaction, and
		// a record that forgot its count would be retried its attempts
		// again each time (concurrently, two records forgetting theirs
		// in turn would abort every transaction for ever). Kept, it is
		// dead-lettered again at once.
		t.records++
		t.dlq++
		dl := dlq.Record(s.cfg.deadLetter, r, a.n, a.first, err)
		dl.Context = context.WithoutCancel(pctx)
		l.produce(t, dl)
		return true
	default:
		t.abort(reasonStop)
		if t.fatal == nil {
			t.fatal = &kdeliver.HandlerError{Record: r, Attempts: n, Err: err}
		}
	}
	return false
}

// caller calls the handler on one goroutine, collecting what it emits:
// the sequential loop has one, each concurrent handler goroutine its own.
type caller struct {
	l        *loop
	mu       sync.Mutex // emit may be called from goroutines the handler starts
	out      []*kgo.Record
	emit     func(*kgo.Record)
	handling atomic.Bool // set before the handler runs; cleared under mu once it returned
}

func newCaller(l *loop) *caller {
	c := &caller{l: l}
	c.emit = func(o *kgo.Record) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.handling.Load() {
			panic("eos: emit called after the handler returned")
		}
		c.out = append(c.out, o)
	}
	return c
}

// call runs the handler, turning a panic into an error and checking the
// emitted records. The records returned are valid until the next call.
func (c *caller) call(ctx context.Context, r *kgo.Record) (out []*kgo.Record, err error) {
	l := c.l
	// Between calls no emit touches out: it finds handling cleared and
	// panics. So out is reset without mu, and the emits of this call see
	// the reset (they load handling after the store below).
	clear(c.out)
	c.out = c.out[:0]
	c.handling.Store(true)
	returned := false
	defer func() {
		if returned {
			return
		}
		c.mu.Lock()
		c.handling.Store(false)
		c.mu.Unlock()
		if v := recover(); v != nil {
			out, err = nil, fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
		}
	}()
	err = l.h(ctx, r, c.emit)
	returned = true
	c.mu.Lock() // once for both: the end of handling and the check
	defer c.mu.Unlock()
	c.handling.Store(false)
	if err != nil {
		return nil, err
	}
	for _, o := range c.out {
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
	return c.out, nil
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
func (l *loop) produce(t *txn, r *kgo.Record) { l.produceAt(t, r, time.Now()) }

// produceAt is produce with now, a clock read just taken.
func (l *loop) produceAt(t *txn, r *kgo.Record, now time.Time) {
	if t.promise == nil {
		t.makePromise()
	}
	if t.firstOut.IsZero() {
		t.firstOut = now
	}
	l.s.timeouts.AttachAt(context.Background(), r, now)
	t.sess.Produce(context.Background(), r, t.promise)
}

// makePromise makes t's promise: the first failure of an output is kept.
func (t *txn) makePromise() {
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
