package kdeliver

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver/internal/dlq"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// Option is a setting every kdeliver client takes: it is a producer.Option,
// a consumer.Option, an eos.Option, a share.Option and a dedup.Option at
// once. Each package
// has an Option type of its own, and an option of one package passed to
// another's constructor does not compile.
type Option struct {
	apply func(*shared.Target)
}

// ApplyProducer applies the option; producer's constructors call it.
func (o Option) ApplyProducer(t *shared.Target) { apply(o.apply, t) }

// ApplyConsumer applies the option; consumer's constructors call it.
func (o Option) ApplyConsumer(t *shared.Target) { apply(o.apply, t) }

// ApplySession applies the option; eos.New calls it.
func (o Option) ApplySession(t *shared.Target) { apply(o.apply, t) }

// ApplyGuard applies the option; dedup.NewGuard calls it.
func (o Option) ApplyGuard(t *shared.Target) { apply(o.apply, t) }

// ApplyShare applies the option; share.New calls it.
func (o Option) ApplyShare(t *shared.Target) { apply(o.apply, t) }

// apply applies an option, refusing the zero value (made without a With
// function).
func apply(f func(*shared.Target), t *shared.Target) {
	if f == nil {
		t.Reject("an empty option (a zero kdeliver.Option or HandlerOption) was passed: make options with the With functions")
		return
	}
	f(t)
}

// WithLogger logs the client's lifecycle events (commits, rebalances,
// retries, fencing) to l, overriding the default of passing warnings and
// errors (a record retried, a client replaced, a commit that failed) to
// slog.Default(). Pass slog.New(slog.DiscardHandler) for silence. kdeliver
// never logs record contents or credentials.
func WithLogger(l *slog.Logger) Option {
	return Option{func(t *shared.Target) {
		if l == nil {
			t.Reject("kdeliver.WithLogger(nil): pass a logger, or slog.New(slog.DiscardHandler) for none")
			return
		}
		t.Shared.Logger = l
	}}
}

// WithClientID sets the Kafka client ID, overriding the default "kdeliver".
func WithClientID(id string) Option {
	return Option{func(t *shared.Target) {
		if id == "" {
			t.Reject("kdeliver.WithClientID(\"\"): pass a non-empty ID, or leave the option out for \"kdeliver\"")
			return
		}
		t.Shared.ClientID = id
	}}
}

// WithTracerProvider makes record and transaction spans with tp, overriding
// the global provider (otel.GetTracerProvider). A consumer makes "receive"
// spans only when its provider makes valid spans when it is built.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return Option{func(t *shared.Target) {
		if tp == nil {
			t.Reject("kdeliver.WithTracerProvider(nil): pass a provider, or leave the option out for the global one")
			return
		}
		t.Shared.TracerProvider = tp
	}}
}

// WithMeterProvider records client metrics with mp, overriding the global
// provider (otel.GetMeterProvider).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return Option{func(t *shared.Target) {
		if mp == nil {
			t.Reject("kdeliver.WithMeterProvider(nil): pass a provider, or leave the option out for the global one")
			return
		}
		t.Shared.MeterProvider = mp
	}}
}

// HandlerOption is a setting of what runs a handler: it is a
// consumer.Option, an eos.Option and a share.Option at once (and not a
// producer.Option).
type HandlerOption struct {
	apply func(*shared.Target)
}

// ApplyConsumer applies the option; consumer's constructors call it.
func (o HandlerOption) ApplyConsumer(t *shared.Target) { apply(o.apply, t) }

// ApplySession applies the option; eos.New calls it.
func (o HandlerOption) ApplySession(t *shared.Target) { apply(o.apply, t) }

// ApplyShare applies the option; share.New calls it.
func (o HandlerOption) ApplyShare(t *shared.Target) { apply(o.apply, t) }

// Defaults of the handler options.
const (
	// DefaultBackoffInitial is the first wait before a failed record is
	// handled again.
	DefaultBackoffInitial = shared.DefaultBackoffInitial
	// DefaultBackoffMax caps the wait between attempts of a failing record.
	DefaultBackoffMax = shared.DefaultBackoffMax
	// DefaultStartTimeout is how long Run waits for the brokers to answer
	// and its topics to exist.
	DefaultStartTimeout = shared.DefaultStartTimeout
)

// WithBackoff sets the exponential wait between attempts of a failing
// record: the first wait is initial, each next one about doubles (with
// jitter), up to max, overriding [DefaultBackoffInitial] to
// [DefaultBackoffMax]. An at-most-once consumer never retries and refuses
// it.
func WithBackoff(initial, max time.Duration) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		t.Handling.RetrySet = true
		if initial <= 0 || max < initial {
			t.Reject(fmt.Sprintf("kdeliver.WithBackoff(%v, %v): the initial wait must be positive and not above the maximum", initial, max))
			return
		}
		t.Handling.BackoffInitial, t.Handling.BackoffMax = initial, max
	}}
}

// WithMaxAttempts makes a record whose handler failed (or panicked) n times
// in a row stop being retried, overriding the default of retrying it for
// ever: an exactly-once session then sends it to its dead-letter topic
// (eos.WithDeadLetterTopic), if it has one; otherwise Run stops with a
// [*HandlerError] without committing past it. An
// at-most-once consumer never retries and refuses it.
func WithMaxAttempts(n int) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		t.Handling.RetrySet = true
		if n < 1 {
			t.Reject(fmt.Sprintf("kdeliver.WithMaxAttempts(%d): use at least 1", n))
			return
		}
		t.Handling.MaxAttempts = n
	}}
}

// WithStartTimeout sets how long Run waits, before reading, for a broker to
// answer and for every topic it reads (and, for a session, writes) to exist,
// overriding [DefaultStartTimeout]; Run then fails with an error matching
// [ErrUnreachable] or [ErrTopicNotFound] that names what is missing. For a
// session it is also how long an output topic may stay unknown to its
// produces before Run fails.
func WithStartTimeout(d time.Duration) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		if d <= 0 {
			t.Reject(fmt.Sprintf("kdeliver.WithStartTimeout(%v): pass a positive duration", d))
			return
		}
		t.Handling.StartTimeout = d
	}}
}

// Ordering is the order that concurrent handlers keep ([WithConcurrency]).
// Whatever the ordering, a partition's committed offset never passes a
// record whose handler has not succeeded.
type Ordering int

const (
	// ByPartition handles each partition's records in offset order, one at
	// a time, and partitions concurrently: the default.
	ByPartition Ordering = iota
	// ByKey handles the records of one key of a partition in offset order,
	// one at a time, and different keys concurrently, even within one
	// partition. Records without a key are each a key of their own.
	ByKey
	// Unordered handles any records concurrently.
	Unordered
)

// String returns the ordering's name: by-partition, by-key or unordered.
func (o Ordering) String() string {
	switch o {
	case ByPartition:
		return "by-partition"
	case ByKey:
		return "by-key"
	case Unordered:
		return "unordered"
	}
	return fmt.Sprintf("Ordering(%d)", int(o))
}

// WithConcurrency runs up to n handlers at once, keeping order: the records
// of each partition (ByPartition), or of each key of a partition (ByKey),
// are handled one at a time in offset order; Unordered keeps none. Without
// it (or with n = 1 and ByPartition) one goroutine handles one record at a
// time. The records in flight are bounded ([WithMaxInFlight]): a partition
// whose records fill the bound is paused, not buffered.
func WithConcurrency(n int, order Ordering) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		if n < 1 {
			t.Reject(fmt.Sprintf("kdeliver.WithConcurrency(%d, %v): use at least 1", n, order))
			return
		}
		if order < ByPartition || order > Unordered {
			t.Reject(fmt.Sprintf("kdeliver.WithConcurrency(%d, %v): use ByPartition, ByKey or Unordered", n, order))
			return
		}
		t.Handling.Concurrency, t.Handling.Order = n, int(order)
	}}
}

// WithMaxInFlight bounds the records handed to concurrent handlers and not
// yet done (handled, skipped or dead-lettered) under [WithConcurrency],
// overriding the default of max(64, 8 × concurrency); without
// WithConcurrency it is refused. Under ByPartition each partition gets at
// most its share of the bound (bound/n). A consumer keeps a poll's records
// of a partition in a backlog until its lanes have room, and pauses the
// partition while the backlog is deep: what it holds is at most, per
// partition, its share plus one poll. An exactly-once session takes at most
// one transaction's records from a poll (eos.WithCommitEvery) into its
// lanes; what it does not take is fetched again after the commit.
func WithMaxInFlight(n int) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		if n < 1 {
			t.Reject(fmt.Sprintf("kdeliver.WithMaxInFlight(%d): use at least 1", n))
			return
		}
		t.Handling.MaxInFlight = n
	}}
}

// Headers of kdeliver's records.
const (
	// HeaderMessageID carries a message ID: a value unique per logical
	// message and kept by every retry and re-send of it, which a dedup
	// guard keys on. producer.WithMessageIDs stamps it: 16 lowercase hex
	// digits naming the producer instance, a hyphen, and 16 hex digits
	// counting its records ("9f1c2b3a4d5e6f70-000000000000002a"). Any
	// producer may set it; treat it as an opaque string.
	HeaderMessageID = "kdeliver-message-id"

	// The headers of a dead letter, besides the failed record's own: where
	// it came from, how often and why it failed, and when it first did
	// (RFC 3339, UTC).
	HeaderDLQTopic        = dlq.HeaderTopic
	HeaderDLQPartition    = dlq.HeaderPartition
	HeaderDLQOffset       = dlq.HeaderOffset
	HeaderDLQAttempts     = dlq.HeaderAttempts
	HeaderDLQError        = dlq.HeaderError
	HeaderDLQFirstFailure = dlq.HeaderFirstFailure
)

// GroupProtocol is the consumer group protocol a consumer or an
// exactly-once session joins its group with ([WithGroupProtocol]). The
// names are those of Java's group.protocol setting, classic and consumer.
type GroupProtocol int

const (
	// ClassicProtocol is the classic, client-driven group protocol
	// (JoinGroup/SyncGroup, the members' heartbeats): the default. The
	// group's leader assigns partitions with kgo's cooperative-sticky
	// balancer; the client sets the session timeout and heartbeat
	// interval (kgo's 45 s and 3 s unless a raw option changes them).
	ClassicProtocol GroupProtocol = iota
	// ConsumerProtocol is KIP-848's consumer group protocol (Kafka 4.0+,
	// 4.3+ recommended): the broker's group coordinator assigns
	// partitions and reconciles them member by member through
	// ConsumerGroupHeartbeat, with no group-wide stop-the-world
	// rebalance. It turns into kgo.ServerSideBalancer() with kgo's
	// default balancer (the broker's "uniform" assignor; a raw
	// kgo.Balancers(kgo.RangeBalancer()) picks "range"). The broker owns
	// the session timeout and the heartbeat interval
	// (group.consumer.session.timeout.ms, default 45 s, and
	// group.consumer.heartbeat.interval.ms, default 5 s): raw
	// kgo.SessionTimeout and kgo.HeartbeatInterval options and
	// eos.WithSessionTimeout are refused. franz-go v1.22 still makes it
	// opt-in; before Kafka 4.3 a commit racing a member-epoch bump can
	// fail with STALE_MEMBER_EPOCH, which kdeliver treats as a failed
	// commit (records redelivered, never lost). A cluster without the
	// protocol (before Kafka 4.0, or the group.version feature below 1)
	// makes Run fail with an error matching [ErrUnsupported], where kgo
	// alone would fall back to the classic protocol unseen.
	ConsumerProtocol
)

// String returns the protocol's name as Java's group.protocol spells it:
// classic or consumer.
func (p GroupProtocol) String() string {
	switch p {
	case ClassicProtocol:
		return "classic"
	case ConsumerProtocol:
		return "consumer"
	}
	return fmt.Sprintf("GroupProtocol(%d)", int(p))
}

// MarshalText implements [encoding.TextMarshaler]: classic or consumer.
func (p GroupProtocol) MarshalText() ([]byte, error) {
	if p != ClassicProtocol && p != ConsumerProtocol {
		return nil, fmt.Errorf("%w: %v is not a group protocol: use kdeliver.ClassicProtocol or kdeliver.ConsumerProtocol", ErrInvalidConfig, p)
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler]: it accepts classic
// and consumer (case-insensitive), Java's group.protocol values.
func (p *GroupProtocol) UnmarshalText(text []byte) error {
	switch strings.ToLower(strings.TrimSpace(string(text))) {
	case "classic":
		*p = ClassicProtocol
	case "consumer":
		*p = ConsumerProtocol
	default:
		return fmt.Errorf("%w: group protocol %q: use classic or consumer (Java's group.protocol values)", ErrInvalidConfig, text)
	}
	return nil
}

// WithGroupProtocol sets the group protocol of a consumer (consumer.New,
// NewWithGuard, NewWithSink) or an exactly-once session (eos.New),
// overriding the default [ClassicProtocol]. The guarantees are the same
// under both: see "Group protocols" in the consumer and eos package docs
// for what changes for revoke, commit and fencing. A share group
// (share.New) has a protocol of its own and refuses this option.
func WithGroupProtocol(p GroupProtocol) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		t.Handling.GroupProtocolSet = true
		switch p {
		case ClassicProtocol:
			t.Handling.GroupProtocol = shared.ClassicProtocol
		case ConsumerProtocol:
			t.Handling.GroupProtocol = shared.ConsumerProtocol
		default:
			t.Reject(fmt.Sprintf("kdeliver.WithGroupProtocol(%v): use kdeliver.ClassicProtocol or kdeliver.ConsumerProtocol", p))
		}
	}}
}
