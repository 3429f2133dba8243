package eos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/deadline"
)

func (l *loop) handle(ctx context.Context, t *txn, r *kgo.Record) {
	s := l.s
	if l.checkRewind(r) {
		s.log.Error("eos: polled a record below the committed offset after an abort; replacing the client", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset)
		s.stats.rewind.Add(1)
		t.abort(reasonRewind)
		t.replace = true
		return
	}
	pctx, span := l.hctx, trace.SpanFromContext(context.Background()) // a no-op span
	if t.span.IsRecording() {                                         // tracing is on: skip the per-record work otherwise
		if sc := trace.SpanContextFromContext(r.Context); sc.IsValid() {
			t.span.AddLink(trace.Link{SpanContext: sc})
		}
		_, span = s.kotel.WithProcessSpan(r)
		defer span.End()
		pctx = trace.ContextWithSpan(l.hctx, span)
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
	span.RecordError(err)
	span.SetStatus(codes.Error, "handler failed")
	if errors.Is(err, crash.ErrCrash) {
		// A simulated crash is a crash even while Run stops: taken for
		// the stop, the crash a test planned would not happen.
		t.crashed = err
		return
	}
	if ctx.Err() != nil {
		// Run is stopping: no attempt counted; the record is handled
		// again by whoever reads the partition next.
		t.cutAt(r)
		return
	}
	k := recordKey{r.Topic, r.Partition, r.Offset}
	a := l.attempts[k]
	if a.n == 0 {
		a.first = time.Now()
	}
	a.n++
	l.attempts[k] = a
	n := a.n
	switch {
	case s.hd.MaxAttempts == 0 || n < s.hd.MaxAttempts:
		s.log.Info("eos: handler failed; aborting and retrying", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", n, "err", err)
		t.abort(reasonHandler)
	case s.cfg.deadLetter != "":
		s.log.Warn("eos: handler failed for the last time; dead-lettering the record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempts", n, "err", err)
		delete(l.attempts, k)
		t.records++
		t.dlq++
		l.produce(t, deadLetter(pctx, s.cfg.deadLetter, r, a, err))
	default:
		t.abort(reasonStop)
		t.fatal = &kdeliver.HandlerError{Record: r, Attempts: n, Err: err}
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
			out, err = nil, fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
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
	l.s.timeouts.Attach(context.Background(), r)
	t.sess.Produce(context.Background(), r, t.promise)
}

// deadLetter is the copy of r for the dead-letter topic, with where it came
// from, how often and why it failed, and when it first did.
func deadLetter(ctx context.Context, topic string, r *kgo.Record, a attempts, err error) *kgo.Record {
	hs := append([]kgo.RecordHeader(nil), r.Headers...)
	hs = append(hs,
		kgo.RecordHeader{Key: kdeliver.HeaderDLQTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: kdeliver.HeaderDLQPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: kdeliver.HeaderDLQOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
		kgo.RecordHeader{Key: kdeliver.HeaderDLQAttempts, Value: []byte(strconv.Itoa(a.n))},
		kgo.RecordHeader{Key: kdeliver.HeaderDLQError, Value: []byte(err.Error())},
		kgo.RecordHeader{Key: kdeliver.HeaderDLQFirstFailure, Value: []byte(a.first.UTC().Format(time.RFC3339Nano))},
	)
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp, Context: context.WithoutCancel(ctx)}
}
