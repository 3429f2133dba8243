package deadline

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"
)

func TestAttachDetach(t *testing.T) {
	ts := New(time.Hour)
	type key struct{}
	values := context.WithValue(context.Background(), key{}, "v")
	cancellable, cancel := context.WithCancel(values)
	defer cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{{"nil", nil}, {"values", values}, {"cancellable", cancellable}} {
		r := &kgo.Record{Context: tc.ctx}
		ts.Attach(context.Background(), r)
		if r.Context == nil || r.Context.Done() == nil {
			t.Fatalf("%s: no deadline attached", tc.name)
		}
		if d, ok := r.Context.Deadline(); !ok || time.Until(d) < 59*time.Minute {
			t.Errorf("%s: deadline %v, want about an hour from now", tc.name, d)
		}
		if tc.ctx != nil && r.Context.Value(key{}) != "v" {
			t.Errorf("%s: the record's values were lost", tc.name)
		}
		Detach(r)
		if r.Context != tc.ctx {
			t.Errorf("%s: Detach gave %v, want the original", tc.name, r.Context)
		}
	}
	// With no Context of its own, the record gets the produce ctx's values,
	// and none afterwards.
	r := &kgo.Record{}
	ts.Attach(values, r)
	if r.Context.Value(key{}) != "v" {
		t.Error("the produce ctx's values are not in the record's Context")
	}
	Detach(r)
	if r.Context != nil {
		t.Errorf("Detach gave %v, want nil", r.Context)
	}
	// The record's own cancellation still counts.
	r = &kgo.Record{Context: cancellable}
	ts.Attach(context.Background(), r)
	cancel()
	<-r.Context.Done()
	if err := Err(r, r.Context.Err()); !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Errorf("cancelled record: Err = %v, want context.Canceled only", err)
	}
}

func TestWindowsShared(t *testing.T) {
	ts := New(time.Hour)
	now := time.Now()
	ts.now = func() time.Time { return now }
	a, b := &kgo.Record{}, &kgo.Record{}
	ts.Attach(context.Background(), a)
	ts.Attach(context.Background(), b)
	if a.Context != b.Context {
		t.Error("two records handed over at the same time got different windows")
	}
	now = now.Add(ts.grain)
	c := &kgo.Record{}
	ts.Attach(context.Background(), c)
	if c.Context == a.Context {
		t.Error("a record handed over a window later shares the old window")
	}
}

func TestExpired(t *testing.T) {
	ts := New(time.Millisecond) // grain 10ms: expires within about 11ms
	r := &kgo.Record{}
	ts.Attach(context.Background(), r)
	select {
	case <-r.Context.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the window never expired")
	}
	err := Err(r, r.Context.Err())
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want ErrTimeout and kgo.ErrRecordTimeout, not a context error", err)
	}
	if other := errors.New("x"); Err(r, other) != other {
		t.Error("Err changed an error that is not the timeout")
	}
}

// TestFail: Fail ends at once the contexts of the records attached so far,
// and Err gives its cause for them; records attached afterwards, and
// records with a cancellable Context of their own, keep their deadline.
func TestFail(t *testing.T) {
	ts := New(time.Hour)
	cause := errors.New("credentials refused")
	own, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := []*kgo.Record{{}, {Context: context.WithValue(context.Background(), testKey{}, 1)}}
	for _, r := range before {
		ts.Attach(context.Background(), r)
	}
	mine := &kgo.Record{Context: own}
	ts.Attach(context.Background(), mine)
	ts.Fail(cause)
	for i, r := range before {
		select {
		case <-r.Context.Done():
		default:
			t.Fatalf("record %d: its Context did not end", i)
		}
		if err := Err(r, r.Context.Err()); err != cause {
			t.Errorf("record %d: Err = %v, want the cause", i, err)
		}
	}
	if mine.Context.Err() != nil {
		t.Error("a record with a Context of its own was ended")
	}
	after := &kgo.Record{}
	ts.Attach(context.Background(), after)
	if after.Context.Err() != nil {
		t.Fatal("a record attached after Fail was ended")
	}
	if err := Err(after, context.Canceled); err != context.Canceled {
		t.Errorf("Err of a record not failed = %v, want its own error", err)
	}
	ts.Fail(cause) // again: the new window too
	if after.Context.Err() == nil {
		t.Fatal("a second Fail did not end the record attached after the first")
	}
}

type testKey struct{}

// TestSharedRecordCtx: records handed over with the same ctx in the same
// window share one Context, which still carries ctx's values (cached after
// the first lookup) and nothing of another ctx's.
func TestSharedRecordCtx(t *testing.T) {
	ts := New(time.Hour)
	now := time.Now()
	ts.now = func() time.Time { return now }
	type key struct{}
	ctxA := context.WithValue(context.Background(), key{}, "a")
	ctxB := context.WithValue(context.Background(), key{}, "b")
	a1, a2, b := &kgo.Record{}, &kgo.Record{}, &kgo.Record{}
	ts.Attach(ctxA, a1)
	ts.Attach(ctxA, a2)
	ts.Attach(ctxB, b)
	if a1.Context != a2.Context {
		t.Error("two records with the same ctx in the same window got different Contexts")
	}
	if a1.Context == b.Context {
		t.Error("records with different ctxs share a Context")
	}
	for range 2 { // the second lookup is answered from the cache
		if got := a2.Context.Value(key{}); got != "a" {
			t.Errorf("value %v, want a", got)
		}
		if got := b.Context.Value(key{}); got != "b" {
			t.Errorf("value %v, want b", got)
		}
		if got := a1.Context.Value("other"); got != nil {
			t.Errorf("value of an absent key: %v", got)
		}
	}
	now = now.Add(ts.grain)
	a3 := &kgo.Record{}
	ts.Attach(ctxA, a3)
	if a3.Context == a1.Context {
		t.Error("a record a window later shares the old window's Context")
	}
	Detach(a1)
	if a1.Context != nil || a2.Context.Value(key{}) != "a" {
		t.Error("Detach of one record changed another's Context")
	}
}

// TestAttachTimestamp: a record without a Timestamp gets the hand-over
// time; one with a Timestamp (an event time, a dead letter's) keeps it.
func TestAttachTimestamp(t *testing.T) {
	ts := New(time.Hour)
	now := time.Now()
	ts.now = func() time.Time { return now }
	fresh := &kgo.Record{}
	ts.Attach(context.Background(), fresh)
	if !fresh.Timestamp.Equal(now) {
		t.Errorf("timestamp %v, want the hand-over time %v", fresh.Timestamp, now)
	}
	old := now.Add(-time.Hour)
	kept := &kgo.Record{Timestamp: old}
	ts.Attach(context.Background(), kept)
	if !kept.Timestamp.Equal(old) {
		t.Errorf("timestamp %v, want the record's own %v", kept.Timestamp, old)
	}
}

// valueCtx is a Context implemented by a struct value that cannot be
// compared (it holds a map): Attach must not compare two of them.
type valueCtx struct {
	context.Context
	m map[string]string
}

func (c valueCtx) Value(key any) any {
	if k, ok := key.(string); ok {
		if v, ok := c.m[k]; ok {
			return v
		}
	}
	return c.Context.Value(key)
}

// TestUncomparableCtx: records produced under a Context whose type cannot
// be compared get their own record contexts, with its values, instead of
// a panic.
func TestUncomparableCtx(t *testing.T) {
	ts := New(time.Hour)
	ctx := valueCtx{context.Background(), map[string]string{"k": "v"}}
	a, b := &kgo.Record{}, &kgo.Record{}
	ts.Attach(ctx, a)
	ts.Attach(ctx, b)
	if a.Context.Value("k") != "v" || b.Context.Value("k") != "v" {
		t.Error("the ctx's values are not in the records' Contexts")
	}
}

func TestCarriesSpan(t *testing.T) {
	ts := New(time.Hour)
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	traced := trace.ContextWithSpanContext(context.Background(), sc)
	type key struct{}
	untraced := context.WithValue(context.Background(), key{}, "v")
	for _, tc := range []struct {
		name     string
		own, ctx context.Context // the record's Context, the produce ctx
		want     bool
	}{
		{"no Context, Background", nil, context.Background(), false},
		{"no Context, produced under a span", nil, traced, true},
		{"no Context, produced under values", nil, untraced, false},
		{"own Context with a span", traced, context.Background(), true},
		{"own Context without", untraced, traced, false},
	} {
		// Twice: the second answer comes from the cache, and records
		// sharing the context get the same.
		for i := range 2 {
			r := &kgo.Record{Context: tc.own}
			ts.Attach(tc.ctx, r)
			carries, known := CarriesSpan(r)
			if !known || carries != tc.want {
				t.Errorf("%s (%d): CarriesSpan = %v, %v; want %v, true", tc.name, i, carries, known, tc.want)
			}
		}
	}
	// A Context wrapped after Attach (a tracing hook's span), or never
	// attached, is for the caller to look at.
	r := &kgo.Record{}
	ts.Attach(untraced, r)
	r.Context = trace.ContextWithSpanContext(r.Context, sc)
	if _, known := CarriesSpan(r); known {
		t.Error("CarriesSpan answered for a Context wrapped after Attach")
	}
	if _, known := CarriesSpan(&kgo.Record{Context: traced}); known {
		t.Error("CarriesSpan answered for a record never attached")
	}
	if _, known := CarriesSpan(&kgo.Record{}); known {
		t.Error("CarriesSpan answered for a record without a Context")
	}
}

func TestShared(t *testing.T) {
	var s Shared
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}})
	type key struct{}
	ctx, cancel := context.WithCancel(context.WithValue(trace.ContextWithSpanContext(context.Background(), sc), key{}, "v"))
	a, b := &kgo.Record{}, &kgo.Record{}
	s.Attach(ctx, a)
	s.Attach(ctx, b)
	if a.Context == nil || a.Context != b.Context {
		t.Fatalf("records produced with the same ctx got contexts %v and %v, want one shared", a.Context, b.Context)
	}
	if a.Context.Value(key{}) != "v" {
		t.Error("the produce ctx's values were lost")
	}
	if carries, known := CarriesSpan(a); !carries || !known {
		t.Errorf("CarriesSpan = %v, %v; want true, true", carries, known)
	}
	if _, ok := a.Context.Deadline(); ok {
		t.Error("a Shared context has a deadline")
	}
	if err := Err(a, context.Canceled); err != context.Canceled {
		t.Errorf("Err = %v, want the error unchanged (no window)", err)
	}
	// The produce ctx's cancellation is the record's (kgo fails a
	// buffered record whose Context ends).
	cancel()
	select {
	case <-a.Context.Done():
	default:
		t.Error("the record's Context did not end with the produce ctx")
	}
	if a.Context.Err() == nil {
		t.Error("the record's Context has no error after the produce ctx was cancelled")
	}
	Detach(a)
	if a.Context != nil {
		t.Errorf("Detach left %v, want nil", a.Context)
	}
	// Own Contexts and Background are left as they are.
	own := context.WithValue(context.Background(), key{}, "own")
	c, d := &kgo.Record{Context: own}, &kgo.Record{}
	s.Attach(ctx, c)
	s.Attach(context.Background(), d)
	if c.Context != own || d.Context != nil {
		t.Errorf("Attach changed an own Context (%v) or attached for Background (%v)", c.Context, d.Context)
	}
	// Another ctx gets a context of its own.
	e := &kgo.Record{}
	s.Attach(own, e)
	if e.Context == b.Context || e.Context.Value(key{}) != "own" {
		t.Errorf("a record produced with another ctx got %v", e.Context)
	}
}
