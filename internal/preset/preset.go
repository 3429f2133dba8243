// Package preset turns a kdeliver.Semantics into kgo options and checks a
// built client's effective options against it. It is shared by the producer,
// consumer and eos packages so that a semantics means the same everywhere.
package preset

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// DefaultClientID is the Kafka client ID when none is set.
const DefaultClientID = "kdeliver"

// Tracing is what a client's handler loop needs of its tracing: kotel's
// tracer, to start process spans joined to the record traces, and the gate
// that says when such a span can be seen (the one the client's produce
// hooks use).
type Tracing struct {
	*kotel.Tracer
	Spans *SpanGate
}

// Base returns the options every kdeliver client gets from the shared
// settings: client ID, logger and OpenTelemetry hooks, and the client's
// tracing.
func Base(s *shared.Settings, group string) ([]kgo.Opt, Tracing) {
	id := s.ClientID
	if id == "" {
		id = DefaultClientID
	}
	tp := s.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	mp := s.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	prop := otel.GetTextMapPropagator()
	if len(prop.Fields()) == 0 {
		// The global propagator is a no-op until the application sets one;
		// W3C trace context is what joins produce and consume in one trace.
		prop = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
	topts := []kotel.TracerOpt{kotel.TracerProvider(tp), kotel.TracerPropagator(prop), kotel.ClientID(id)}
	if group != "" {
		topts = append(topts, kotel.ConsumerGroup(group))
	}
	tracer := kotel.NewTracer(topts...)
	rt := newRecordTracer(tracer, tp, s.TracerProvider == nil, prop)
	hooks := []kgo.Hook{rt, rt.fetchHook()}
	if !noopMeter(mp) {
		hooks = append(hooks, kotel.NewMeter(kotel.MeterProvider(mp)))
	}
	opts := []kgo.Opt{kgo.ClientID(id), kgo.WithHooks(hooks...), kgo.WithLogger(slogLogger{s.Log()})}
	return append(opts, Dial(s.Conn)...), Tracing{Tracer: tracer, Spans: rt.gate}
}

// Dial returns the kgo options that connect as c says: TLS, SASL.
func Dial(c shared.Conn) []kgo.Opt {
	var opts []kgo.Opt
	if c.TLS != nil {
		// kgo clones the config at each dial and sets its ServerName
		// to the broker's host when empty.
		opts = append(opts, kgo.DialTLSConfig(c.TLS))
	}
	if c.SASL != nil {
		opts = append(opts, kgo.SASL(c.SASL))
	}
	return opts
}

// Connection returns the kgo options that connect as the root package's
// connection options (kdeliver.WithTLS, WithTLSFiles, WithSASL,
// WithPlaintextSASL) among opts say, for the clients kdeliver's commands
// build with kgo directly; the other options are ignored. It returns a
// [*kdeliver.ConfigError] listing what is wrong with them.
func Connection(opts ...kdeliver.Option) ([]kgo.Opt, error) {
	t := &shared.Target{}
	for _, o := range opts {
		o.ApplyProducer(t)
	}
	t.Finish()
	var ps Problems
	for _, p := range t.Problems {
		ps.Add(true, p)
	}
	if err := ps.Err("connection", 0); err != nil {
		return nil, err
	}
	return Dial(t.Shared.Conn), nil
}

// SpanGate says whether a record's span can be seen by anyone: the tracer
// provider makes valid spans (an OpenTelemetry SDK is set up), a global
// provider was set after the client was built, or the record's context
// carries a span to pass on. Otherwise kotel's per-record spans (produce,
// receive, process) are no-op spans that cost several allocations a record.
// It is safe for concurrent use.
type SpanGate struct {
	recording bool                 // the provider makes valid spans
	global    trace.TracerProvider // the unset global provider, nil if not global
}

func newSpanGate(tp trace.TracerProvider, global bool) *SpanGate {
	// An SDK's span is valid even when not sampled. The probe span is not
	// ended, so it is never exported.
	_, probe := tp.Tracer("github.com/kdeliver/kdeliver").Start(context.Background(), "kdeliver probe")
	g := &SpanGate{recording: probe.SpanContext().IsValid()}
	if global && !g.recording {
		g.global = tp
	}
	return g
}

// Needed reports whether r's span can be seen.
func (g *SpanGate) Needed(r *kgo.Record) bool {
	if g.recording || (g.global != nil && otel.GetTracerProvider() != g.global) {
		return true
	}
	if r.Context == nil {
		return false
	}
	if carries, known := deadline.CarriesSpan(r); known {
		return carries
	}
	return trace.SpanContextFromContext(r.Context).IsValid()
}

// recordTracer runs kotel's produce hooks, except when they could not trace
// anything ([SpanGate]): kotel would then spend about eight allocations a
// produced record (more than the rest of the produce path) making no-op
// spans. Context a caller passes in is still propagated into the headers.
//
// Fetched records get kotel's receive spans ([fetchTracer]) only when the
// provider makes valid spans when the client is built: kgo walks every polled
// record again for a hook that ends them, which costs a no-op consumer about
// 5 % more CPU a record. Otherwise [fetchCarrier] only puts a trace a
// record's headers carry into its context, so that the handler's span (and
// what it produces) joins the producer's trace.
type recordTracer struct {
	t      *kotel.Tracer
	gate   *SpanGate
	prop   propagation.TextMapPropagator
	fields []string // the header keys prop reads
}

func newRecordTracer(t *kotel.Tracer, tp trace.TracerProvider, global bool, prop propagation.TextMapPropagator) *recordTracer {
	return &recordTracer{t: t, gate: newSpanGate(tp, global), prop: prop, fields: prop.Fields()}
}

func (rt *recordTracer) active(r *kgo.Record) bool { return rt.gate.Needed(r) }

func (rt *recordTracer) OnProduceRecordBuffered(r *kgo.Record) {
	if rt.active(r) {
		rt.t.OnProduceRecordBuffered(r)
	}
}

func (rt *recordTracer) OnProduceRecordUnbuffered(r *kgo.Record, err error) {
	if rt.active(r) {
		rt.t.OnProduceRecordUnbuffered(r, err)
	}
}

// fetchHook returns the hook for fetched records: kotel's receive spans when
// the provider makes valid spans, else only the header's trace.
func (rt *recordTracer) fetchHook() kgo.Hook {
	if rt.gate.recording {
		return fetchTracer{rt}
	}
	return fetchCarrier{rt}
}

// fetchTracer is kotel's fetch hooks: a receive span for each fetched
// record, ended when the record is polled.
type fetchTracer struct{ rt *recordTracer }

func (f fetchTracer) OnFetchRecordBuffered(r *kgo.Record) { f.rt.t.OnFetchRecordBuffered(r) }

func (f fetchTracer) OnFetchRecordUnbuffered(r *kgo.Record, polled bool) {
	f.rt.t.OnFetchRecordUnbuffered(r, polled)
}

// fetchCarrier puts the trace a fetched record's headers carry into its
// context, without a receive span (the provider makes none).
type fetchCarrier struct{ rt *recordTracer }

func (f fetchCarrier) OnFetchRecordBuffered(r *kgo.Record) {
	if !f.rt.carriesTrace(r) {
		return
	}
	base := r.Context
	if base == nil {
		base = context.Background()
	}
	r.Context = f.rt.prop.Extract(base, kotel.NewRecordCarrier(r))
}

// carriesTrace reports whether r has a header the propagator reads.
func (rt *recordTracer) carriesTrace(r *kgo.Record) bool {
	for _, h := range r.Headers {
		if slices.Contains(rt.fields, h.Key) {
			return true
		}
	}
	return false
}

// noopMeter reports whether mp records nothing: metric/noop's provider, or the
// global one while the application has not set it. kotel's meter hooks then
// cost several allocations per produce request for nothing, and merely
// installing a batch hook costs kgo two more, so they are left out: set the
// global meter provider before building clients, or pass WithMeterProvider.
func noopMeter(mp metric.MeterProvider) bool {
	switch mp.(type) {
	case noopmetric.MeterProvider, *noopmetric.MeterProvider:
		return true
	}
	t := reflect.TypeOf(mp)
	return t.Kind() == reflect.Pointer && t.Elem().PkgPath() == "go.opentelemetry.io/otel/internal/global"
}

// Producer describes a producer to build.
type Producer struct {
	Semantics       kdeliver.Semantics
	TransactionalID string        // ExactlyOnce only
	LeaderAck       bool          // AtMostOnce only: acks=1 instead of acks=0
	DeliveryTimeout time.Duration // AtLeastOnce and ExactlyOnce; 0 means the default
	// TxnIDHint says where the transactional ID comes from, for errors.
	TxnIDHint string
}

func (p Producer) txnIDHint() string {
	if p.TxnIDHint != "" {
		return p.TxnIDHint
	}
	return "a transactional ID"
}

// Timeout is the effective delivery timeout.
func (p Producer) Timeout() time.Duration {
	if p.DeliveryTimeout > 0 {
		return p.DeliveryTimeout
	}
	return kdeliver.DefaultDeliveryTimeout
}

// Validate lists what is wrong with p itself.
func (p Producer) Validate(ps *Problems) {
	ps.Add(!p.Semantics.Valid(), fmt.Sprintf("semantics %s is not valid: choose kdeliver.AtMostOnce, AtLeastOnce or ExactlyOnce", p.Semantics))
	ps.Add(p.Semantics == kdeliver.ExactlyOnce && p.TransactionalID == "", "ExactlyOnce needs a transactional ID, unique and stable per producer instance: pass "+p.txnIDHint())
	ps.Add(p.Semantics != kdeliver.AtMostOnce && p.LeaderAck, fmt.Sprintf("leader-only acks (acks=1) can lose acknowledged records, which %s forbids: remove WithLeaderAck", p.Semantics))
	ps.Add(p.Semantics == kdeliver.AtMostOnce && p.DeliveryTimeout > 0, "AtMostOnce does not retry, so a delivery timeout has no effect: remove WithDeliveryTimeout")
	ps.Add(p.DeliveryTimeout < 0 || (p.DeliveryTimeout > 0 && p.DeliveryTimeout < time.Second), fmt.Sprintf("delivery timeout %v is below the 1s minimum: pass at least 1s to WithDeliveryTimeout, or leave it out for the default", p.DeliveryTimeout))
}

// AtMostOnceMetadataMaxAge is how often an AtMostOnce producer refreshes its
// metadata: it never retries, so a leader change is noticed only then. It
// stays above kgo's default metadata min age (5s), which it may not be below.
const AtMostOnceMetadataMaxAge = 10 * time.Second

// Opts returns the kgo options of p's preset.
func (p Producer) Opts() []kgo.Opt {
	switch p.Semantics {
	case kdeliver.AtMostOnce:
		acks := kgo.NoAck()
		if p.LeaderAck {
			acks = kgo.LeaderAck()
		}
		return []kgo.Opt{
			kgo.DisableIdempotentWrite(),
			kgo.RequiredAcks(acks),
			kgo.RecordRetries(0),
			kgo.MaxProduceRequestsInflightPerBroker(1),
			// A record failed for lack of retries does not make kgo
			// refresh its metadata, and with acks=0 no error is even
			// seen: after a leader change the client keeps writing to
			// the old leader until the metadata max age (5 minutes by
			// default) passes, and every record is lost once the old
			// leader is back as a follower. Refresh often instead:
			// integration/durability (3 leader kills, acks=0) measured
			// 15,719 of 89,480 records lost with the default, 344 of
			// 78,770 with 10s.
			kgo.MetadataMaxAge(AtMostOnceMetadataMaxAge),
		}
	case kdeliver.AtLeastOnce:
		// The delivery timeout is not kgo.RecordDeliveryTimeout, which
		// counts from each record's Timestamp and so fails at once a
		// record that keeps an old event time: the producer gives each
		// record a Context that ends the timeout after the hand-over
		// (package internal/deadline).
		return []kgo.Opt{
			kgo.RequiredAcks(kgo.AllISRAcks()),
			// Without this an idempotent producer ignores the delivery
			// timeout and ctx for requests whose response was lost, and
			// Produce can block for ever. Failing such a record may mean
			// it was written after all: a re-send may duplicate, which
			// at-least-once allows.
			kgo.AllowIdempotentProduceCancellation(),
		}
	case kdeliver.ExactlyOnce:
		return []kgo.Opt{
			kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.TransactionalID(p.TransactionalID),
		}
	}
	return nil
}

// Check compares a client's effective producer settings with p's preset,
// so a raw kgo.Opt cannot weaken it.
func (p Producer) Check(f Facts, ps *Problems) {
	fix := "remove it and use producer.WithDeliveryTimeout (counted from the hand-over)"
	if p.Semantics == kdeliver.AtMostOnce {
		fix = "remove it (AtMostOnce never retries, so it needs no timeout)"
	}
	ps.Add(f.DeliveryTimeout != 0,
		"a raw option set kgo.RecordDeliveryTimeout, which franz-go counts from each record's Timestamp, so records that keep an old event time fail at once: "+fix)
	switch p.Semantics {
	case kdeliver.AtMostOnce:
		want := kgo.NoAck()
		if p.LeaderAck {
			want = kgo.LeaderAck()
		}
		ps.Add(f.Acks != want, fmt.Sprintf("a raw option set acks=%s, but AtMostOnce uses acks=%s: remove the kgo.RequiredAcks option (use producer.WithLeaderAck for acks=1)", acksName(f.Acks), acksName(want)))
		ps.Add(!f.NoIdempotence, "a raw option enabled idempotence, which retries and so is not AtMostOnce: remove it or choose AtLeastOnce")
		ps.Add(f.HasTxn, "a raw option set a transactional ID, which AtMostOnce does not use: remove kgo.TransactionalID or choose ExactlyOnce")
		ps.Add(f.Retries > 0, "a raw option enabled record retries, which can duplicate under AtMostOnce: remove kgo.RecordRetries")
		ps.Add(f.Inflight != 1, fmt.Sprintf("a raw option set %d produce requests in flight per broker, but AtMostOnce keeps one (more reorders records on a failed request): remove kgo.MaxProduceRequestsInflightPerBroker", f.Inflight))
	case kdeliver.AtLeastOnce, kdeliver.ExactlyOnce:
		ps.Add(f.Acks != kgo.AllISRAcks(), fmt.Sprintf("a raw option set acks=%s, but %s needs acks=all: remove the kgo.RequiredAcks option", acksName(f.Acks), p.Semantics))
		ps.Add(f.NoIdempotence, fmt.Sprintf("a raw option disabled idempotence, which %s needs against duplicates and reordering on retry: remove kgo.DisableIdempotentWrite", p.Semantics))
		ps.Add(f.Retries < 1<<62, fmt.Sprintf("a raw option capped record retries, but %s retries until the delivery timeout: remove kgo.RecordRetries and use producer.WithDeliveryTimeout", p.Semantics))
		ps.Add(f.Inflight != 1, fmt.Sprintf("a raw option set kgo.MaxProduceRequestsInflightPerBroker(%d), which an idempotent producer does not take (it keeps up to 5 requests in flight, in order): remove it", f.Inflight))
		if p.Semantics == kdeliver.AtLeastOnce {
			ps.Add(f.HasTxn, "a raw option set a transactional ID under AtLeastOnce: choose ExactlyOnce instead")
		} else {
			ps.Add(f.TxnID != p.TransactionalID, fmt.Sprintf("a raw option changed the transactional ID to %q: pass it as the transactional ID argument only", f.TxnID))
		}
	}
}

// CheckProducerOnly adds the checks of a client that only produces.
func (p Producer) CheckProducerOnly(f Facts, ps *Problems) {
	p.Check(f, ps)
	ps.Add(f.Consumes || f.Group != "",
		"a raw consumer option (kgo.ConsumeTopics, kgo.ConsumerGroup) was passed to a producer: use package consumer to consume")
	ps.Add(f.ManualFlushing,
		"a raw option set kgo.ManualFlushing, with which Produce waits for a Flush that nothing calls: remove it (ProduceAsync plus Flush batches the same way)")
}

// Consumer describes a consumer to build.
type Consumer struct {
	Semantics kdeliver.Semantics
	Group     string
	Topics    []string
	// ReadCommitted reads with read_committed under any semantics
	// (ExactlyOnce always does).
	ReadCommitted bool
	// StartLatest starts a group without committed offsets at the end.
	StartLatest bool
	// ConsumerProtocol joins the group with KIP-848's consumer protocol
	// (kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol)).
	ConsumerProtocol bool
}

// kgo's defaults of the classic protocol's member-side timers, which the
// broker owns under KIP-848 (kgo does not send them there).
const (
	kgoSessionTimeout = 45 * time.Second
	kgoHeartbeat      = 3 * time.Second
)

// serverSideBalancers are the Go types of the balancers with which kgo
// runs KIP-848 under kgo.ServerSideBalancer (sticky and cooperative-sticky
// ask the broker for its uniform assignor, range for range); with any
// other first balancer kgo falls back to the classic protocol.
var serverSideBalancers = map[string]bool{"*kgo.stickyBalancer": true, "*kgo.rangeBalancer": true}

func (c Consumer) start() kgo.Offset {
	if c.StartLatest {
		return kgo.NewOffset().AtEnd()
	}
	return kgo.NewOffset().AtStart()
}

// committedOnly reports whether c reads with read_committed.
func (c Consumer) committedOnly() bool {
	return c.Semantics == kdeliver.ExactlyOnce || c.ReadCommitted
}

// Validate lists what is wrong with c itself.
func (c Consumer) Validate(ps *Problems) {
	ps.Add(!c.Semantics.Valid(), fmt.Sprintf("semantics %s is not valid: choose kdeliver.AtMostOnce, AtLeastOnce or ExactlyOnce", c.Semantics))
	ps.Add(c.Group == "", "the consumer group is empty: name the group whose offsets record progress")
	ps.Add(len(c.Topics) == 0, "no topics to consume: name at least one")
	for _, t := range c.Topics {
		ps.Add(t == "", "a topic name is empty")
	}
}

// Opts returns the kgo options of c's preset. Offsets are always committed
// by kdeliver, never on a timer.
func (c Consumer) Opts() []kgo.Opt {
	opts := []kgo.Opt{
		kgo.ConsumerGroup(c.Group),
		kgo.ConsumeTopics(c.Topics...),
		kgo.DisableAutoCommit(),
		// A group with no committed offset starts at the beginning, and an
		// out-of-range offset resets to the earliest record still kept:
		// nothing is skipped. (kgo's default rewinds a minute.)
		kgo.ConsumeStartOffset(c.start()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}
	if c.committedOnly() {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	if c.ConsumerProtocol {
		// kgo's default balancer (cooperative-sticky) makes it ask the
		// broker for the uniform assignor.
		opts = append(opts, kgo.ServerSideBalancer())
	}
	return opts
}

// Check compares a client's effective consumer settings with c's preset.
func (c Consumer) Check(f Facts, ps *Problems) {
	ps.Add(!f.AutoCommitOff || f.GreedyCommit || f.CommitMarks,
		fmt.Sprintf("a raw option enabled auto-commit, which commits %s on a timer regardless of processing: remove it", c.Semantics))
	if c.committedOnly() {
		ps.Add(f.Isolation != 1, "a raw option set read_uncommitted, but this consumer reads committed records only (ExactlyOnce, or consumer.WithReadCommitted): remove kgo.FetchIsolationLevel")
	}
	ps.Add(f.Group != c.Group, "a raw option changed the consumer group: pass it as the group argument only")
	ps.Add(f.ResetOffset != kgo.NewOffset().AtStart(),
		"a raw option changed the reset offset, which would skip records whose offset is out of range: remove kgo.ConsumeResetOffset")
	ps.Add(f.StartOffset != c.start(),
		"a raw option changed where a group without committed offsets starts: remove kgo.ConsumeStartOffset (consumer.WithStartAtLatest starts at the end without changing the reset)")
	if !c.ConsumerProtocol {
		ps.Add(f.ServerSide, "a raw option set kgo.ServerSideBalancer (KIP-848): use kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) instead, which also checks the options that conflict with it and that the brokers serve it")
		return
	}
	ps.Add(!f.ServerSide, "a raw option turned kgo.ServerSideBalancer off, but kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) needs it: remove that option")
	ps.Add(f.Balancer != "" && !serverSideBalancers[f.Balancer],
		fmt.Sprintf("a raw kgo.Balancers option puts a %s first, with which kgo silently runs the classic protocol instead of kdeliver.ConsumerProtocol: "+
			"remove it (under the consumer protocol the broker assigns partitions: kgo's default asks for its uniform assignor, kgo.Balancers(kgo.RangeBalancer()) for range), or use kdeliver.ClassicProtocol", f.Balancer))
	ps.Add(f.SessionTimeout != kgoSessionTimeout,
		fmt.Sprintf("a raw kgo.SessionTimeout(%v) does nothing under kdeliver.ConsumerProtocol, where the broker owns the session timeout: remove it, and set group.consumer.session.timeout.ms on the brokers (default 45 s) or consumer.session.timeout.ms on the group (kafka-configs.sh --entity-type groups)", f.SessionTimeout))
	ps.Add(f.Heartbeat != kgoHeartbeat,
		fmt.Sprintf("a raw kgo.HeartbeatInterval(%v) does nothing under kdeliver.ConsumerProtocol, where the broker tells each member when to heartbeat: remove it, and set group.consumer.heartbeat.interval.ms on the brokers (default 5 s) or consumer.heartbeat.interval.ms on the group (kafka-configs.sh --entity-type groups)", f.Heartbeat))
}

func acksName(a kgo.Acks) string {
	switch a {
	case kgo.NoAck():
		return "0"
	case kgo.LeaderAck():
		return "1"
	case kgo.AllISRAcks():
		return "all"
	}
	return "?"
}

type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Level() kgo.LogLevel {
	ctx := context.Background()
	switch {
	case s.l.Enabled(ctx, slog.LevelDebug):
		return kgo.LogLevelDebug
	case s.l.Enabled(ctx, slog.LevelInfo):
		return kgo.LogLevelInfo
	case s.l.Enabled(ctx, slog.LevelWarn):
		return kgo.LogLevelWarn
	case s.l.Enabled(ctx, slog.LevelError):
		return kgo.LogLevelError
	}
	return kgo.LogLevelNone
}

func (s slogLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelDebug
	switch level {
	case kgo.LogLevelError:
		lvl = slog.LevelError
	case kgo.LogLevelWarn:
		lvl = slog.LevelWarn
	case kgo.LogLevelInfo:
		lvl = slog.LevelInfo
	}
	s.l.Log(context.Background(), lvl, msg, keyvals...)
}
