// Package deadline bounds how long a produced record may wait for its
// acknowledgement, counted from when it was handed to the client.
//
// franz-go's own kgo.RecordDeliveryTimeout counts from the record's
// Timestamp (time.Since(records[0].Timestamp) in its sink), so a record that
// keeps an event time older than the timeout (a backlog, a dead letter of an
// old input) fails at once with "records have timed out before they were
// able to be produced". kgo also fails a batch whose first record's Context
// is done, and evaluates that at the same points (before a request is
// written, after a response), so kdeliver gives each record a Context that
// ends a delivery timeout after the hand-over instead.
//
// Records produced within the same short window share one context, so the
// hot path allocates nothing for a record whose Context is nil: the timeout
// of a record is between d and d plus the window (1% of d, at least 10ms).
package deadline

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"
)

// Timeouts hands out record contexts that end d after the hand-over. The
// zero value is not usable; see [New].
type Timeouts struct {
	d     time.Duration
	grain time.Duration
	now   func() time.Time
	cur   atomic.Pointer[window]
	// shared is the last recordCtx made for a record without a Context
	// of its own: immutable, so records with the same ctx and window
	// share it.
	shared atomic.Pointer[recordCtx]
	mu     sync.Mutex // serializes making a new window
	live   []*window  // the windows handed out and not expired, for Fail; guarded by mu
}

// New returns Timeouts for a delivery timeout of d (positive).
func New(d time.Duration) *Timeouts {
	if d <= 0 {
		panic("deadline: non-positive delivery timeout")
	}
	return &Timeouts{d: d, grain: max(d/100, 10*time.Millisecond), now: time.Now}
}

// Timeout returns d.
func (t *Timeouts) Timeout() time.Duration { return t.d }

// Attach gives r a Context that ends the delivery timeout from now, keeping
// the values (the trace) of the Context r had, or, when r had none, of ctx,
// the context r is produced with (kgo would make that r's Context). Call it
// just before handing r to the client. A Context r had that can itself be
// cancelled keeps its cancellation too; ctx's cancellation kgo watches
// anyway.
//
// A record without a Timestamp gets the time of the hand-over, read once
// for both (kgo would read the clock again to set it).
func (t *Timeouts) Attach(ctx context.Context, r *kgo.Record) { t.AttachAt(ctx, r, t.now()) }

// AttachAt is [Timeouts.Attach] for a caller that read the clock itself
// just before: now must be no earlier than a moment ago, or r gets less
// than the delivery timeout (it is counted from now, not from the
// hand-over). Do not pass one reading for records produced one after the
// other: kgo's Produce can block while its buffer is full.
func (t *Timeouts) AttachAt(ctx context.Context, r *kgo.Record, now time.Time) {
	if r.Timestamp.IsZero() {
		r.Timestamp = now
	}
	w := t.window(now)
	switch {
	case r.Context == nil && (ctx == nil || ctx == context.Background()):
		r.Context = w
	case r.Context == nil:
		// ctx's values, for tracing hooks: no timer, and one small
		// allocation for all the records handed over with the same ctx
		// in the same window (the common case: a loop producing under
		// one ctx), which share it.
		if c := t.shared.Load(); c != nil && c.w == w && same(c.orig, ctx) {
			r.Context = c
			return
		}
		c := &recordCtx{orig: ctx, end: w, w: w}
		t.shared.Store(c)
		r.Context = c
	case r.Context.Done() == nil:
		r.Context = &recordCtx{orig: r.Context, end: w, w: w, restore: r.Context}
	default:
		end, cancel := context.WithDeadline(r.Context, w.deadline)
		r.Context = &recordCtx{orig: r.Context, end: end, w: w, restore: r.Context, cancel: cancel}
	}
}

// Shared hands out record contexts for a producer without a delivery
// timeout (at-most-once): a record without a Context of its own gets one
// that keeps the produce ctx's values and cancellation (kgo would make ctx
// itself the record's Context), shared by every record produced with the
// same ctx in a row, so that [CarriesSpan] answers once for all of them.
// The zero value is ready to use.
type Shared struct {
	last atomic.Pointer[recordCtx]
}

// Attach gives r, if it has no Context, one for ctx; [Detach] takes it off
// again. A record produced under context.Background (or nil) is left alone:
// looking for a span there costs nothing.
func (s *Shared) Attach(ctx context.Context, r *kgo.Record) {
	if r.Context != nil || ctx == nil || ctx == context.Background() {
		return
	}
	if c := s.last.Load(); c != nil && same(c.orig, ctx) {
		r.Context = c
		return
	}
	c := &recordCtx{orig: ctx, end: ctx}
	s.last.Store(c)
	r.Context = c
}

// Detach restores the Context r had before [Timeouts.Attach], if r's
// Context is still the one Attach set (a tracing hook may have wrapped it,
// which is then kept). Call it once r's outcome is known.
func Detach(r *kgo.Record) {
	switch c := r.Context.(type) {
	case *window:
		r.Context = nil
	case *recordCtx:
		if c.cancel != nil {
			c.cancel()
		}
		r.Context = c.restore
	}
}

// Fail ends at once, with cause, the contexts of every record attached so
// far whose Context ends with its window (all but those that had a
// cancellable Context of their own, which end at their deadline): kgo then
// fails those it has not sent (and, for an idempotent producer, only those),
// and [Err] returns cause for them. Records attached afterwards get new
// windows. Use it when the client can no longer deliver anything (the
// brokers refused its credentials) and waiting out the timeout would only
// delay the failure.
func (t *Timeouts) Fail(cause error) {
	t.mu.Lock()
	live := t.live
	t.live = nil
	t.cur.Store(nil)
	t.mu.Unlock()
	for _, w := range live {
		w.end(cause)
	}
}

// ErrTimeout is matched (errors.Is) by the error [Err] returns for a
// record whose delivery timeout passed, in place of the context error kgo
// reports. That error also matches kgo.ErrRecordTimeout.
var ErrTimeout = errors.New("delivery timeout passed")

type timeoutError struct{ d time.Duration }

func (e timeoutError) Error() string {
	return fmt.Sprintf("not acknowledged within the delivery timeout of %v, counted from when the record was handed to the client", e.d)
}
func (e timeoutError) Is(target error) bool { return target == ErrTimeout }
func (e timeoutError) Unwrap() error        { return kgo.ErrRecordTimeout }

// Err returns the error to report for r failing with err: one matching
// [ErrTimeout] and kgo.ErrRecordTimeout when the delivery timeout that
// [Timeouts.Attach] gave r passed, else err. Call it before [Detach].
//
// For a record whose window [Timeouts.Fail] ended, it returns the cause
// given to Fail in place of the cancellation kgo reports.
func Err(r *kgo.Record, err error) error {
	if r.Context == nil {
		return err
	}
	w, _ := r.Context.Value(windowKey{}).(*window)
	if w == nil {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		if c := w.cause.Load(); c != nil {
			return *c
		}
	case errors.Is(err, context.DeadlineExceeded):
		if w.expired.Load() {
			return timeoutError{w.d}
		}
	}
	return err
}

func (t *Timeouts) window(now time.Time) *window {
	if w := t.cur.Load(); w != nil && now.Before(w.until) {
		return w
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if w := t.cur.Load(); w != nil && now.Before(w.until) {
		return w
	}
	until := now.Add(t.grain)
	w := &window{until: until, deadline: until.Add(t.d), d: t.d, done: make(chan struct{})}
	time.AfterFunc(w.deadline.Sub(now), w.expire)
	t.cur.Store(w)
	// At most d/grain+1 windows are live: drop the expired ones.
	t.live = slices.DeleteFunc(t.live, func(w *window) bool { return !now.Before(w.deadline) })
	t.live = append(t.live, w)
	return w
}

type windowKey struct{}

// window is the context of the records handed over before until. It is a
// context.Context of its own (not derived from another) so that it costs
// one timer for all of them.
type window struct {
	until, deadline time.Time
	d               time.Duration
	done            chan struct{}
	expired         atomic.Bool
	cause           atomic.Pointer[error] // set by Timeouts.Fail
	once            sync.Once             // closes done
}

func (w *window) expire() {
	w.once.Do(func() {
		w.expired.Store(true)
		close(w.done)
	})
}

func (w *window) end(cause error) {
	w.once.Do(func() {
		w.cause.Store(&cause)
		close(w.done)
	})
}

func (w *window) Deadline() (time.Time, bool) { return w.deadline, true }
func (w *window) Done() <-chan struct{}       { return w.done }
func (w *window) Err() error {
	switch {
	case w.expired.Load():
		return context.DeadlineExceeded
	case w.cause.Load() != nil:
		return context.Canceled
	}
	return nil
}
func (w *window) Value(key any) any {
	if key == (windowKey{}) {
		return w
	}
	return nil
}

// recordCtx is a record's Context with the window's deadline: values from
// orig (the record's own Context, or the produce ctx), the end from end (the window, or a context derived from orig
// that ends at the window's deadline when orig can be cancelled itself).
type recordCtx struct {
	orig    context.Context
	end     context.Context
	w       *window         // nil for a Shared context
	restore context.Context // r's Context before Attach
	cancel  context.CancelFunc
	// last caches the last value looked up in orig: kotel's hooks look
	// up the span of every record they trace, and a shared recordCtx
	// answers from here instead of walking orig's chain each time.
	last atomic.Pointer[lookup]
	// span caches whether orig carries a valid span (see [CarriesSpan]):
	// 0 not known yet, 1 no, 2 yes.
	span atomic.Int32
}

// CarriesSpan reports whether the Context [Timeouts.Attach] or
// [Shared.Attach] gave r carries a valid trace span, from a cache kept with
// the context (shared by every record handed over with it): known is false
// when r's Context is not one they gave it (a tracing hook wrapped it, or it
// was never attached), and
// the caller must look for itself. The tracing hooks' gate asks this twice
// a record, before and after its delivery.
func CarriesSpan(r *kgo.Record) (carries, known bool) {
	switch c := r.Context.(type) {
	case *window:
		return false, true // no values but the window's own
	case *recordCtx:
		switch c.span.Load() {
		case 1:
			return false, true
		case 2:
			return true, true
		}
		carries = trace.SpanContextFromContext(c.orig).IsValid()
		if carries {
			c.span.Store(2)
		} else {
			c.span.Store(1)
		}
		return carries, true
	}
	return false, false
}

type lookup struct{ key, val any }

// same reports whether a and b are the same context. Comparing two
// interfaces whose dynamic type cannot be compared (a Context implemented
// by a struct value holding a map or slice) panics, so such contexts are
// never the same.
func same(a, b context.Context) bool {
	ta := reflect.TypeOf(a)
	return ta == reflect.TypeOf(b) && ta.Comparable() && a == b
}

func (c *recordCtx) Deadline() (time.Time, bool) { return c.end.Deadline() }
func (c *recordCtx) Done() <-chan struct{}       { return c.end.Done() }
func (c *recordCtx) Err() error                  { return c.end.Err() }
func (c *recordCtx) Value(key any) any {
	if key == (windowKey{}) {
		if c.w == nil {
			return nil // a Shared context: no window
		}
		return c.w
	}
	if l := c.last.Load(); l != nil && l.key == key {
		return l.val
	}
	v := c.orig.Value(key)
	c.last.Store(&lookup{key, v})
	return v
}
