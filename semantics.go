package kdeliver

import (
	"fmt"
	"strings"
	"time"
)

// Semantics is a delivery guarantee. It is the one switch of kdeliver: a
// producer, consumer or exactly-once session built with a Semantics gets every
// Kafka setting that guarantee implies, and construction refuses any option
// that would weaken it.
//
// The zero value is invalid, so a forgotten choice is an error rather than a
// silent default. Semantics round-trips through text (flags, environment
// variables, YAML, JSON) with [Semantics.MarshalText] and
// [Semantics.UnmarshalText]; see [ParseSemantics] for the accepted spellings.
type Semantics uint8

const (
	// AtMostOnce delivers each record zero or one time: nothing is retried,
	// and a failure loses records rather than duplicating them.
	//
	// Producer: acks=0 (leader ack allowed by option), idempotence off,
	// no retries, one request in flight per broker.
	// Consumer: offsets are committed before the handler sees the records,
	// read_uncommitted, no auto-commit.
	AtMostOnce Semantics = iota + 1

	// AtLeastOnce delivers each record one or more times: nothing
	// acknowledged is lost, and a failure may duplicate.
	//
	// Producer: acks=all, idempotent, retried until the delivery timeout,
	// up to 5 requests in flight per broker (order kept by idempotence).
	// Consumer: the handler runs first and its offset is committed after it
	// succeeds; offsets are committed on revoke and on shutdown, never past a
	// record whose handler has not succeeded. read_uncommitted, no
	// auto-commit.
	AtLeastOnce

	// ExactlyOnce makes the effect of each record happen once.
	//
	// Producer: transactional (an ID unique per instance is required),
	// acks=all, idempotent, retried until the delivery timeout.
	// Consumer: read_committed; offsets are committed inside the sink's
	// transaction: a Kafka transaction (package eos), or the sink's own
	// database transaction (consumer.WithSink); or, with consumer.WithDedup,
	// after processing with a dedup guard skipping records whose effect is
	// done (package dedup). Downstream readers must use read_committed
	// (consumer.WithReadCommitted under the other semantics).
	ExactlyOnce
)

var semanticsNames = [...]string{
	AtMostOnce:  "at-most-once",
	AtLeastOnce: "at-least-once",
	ExactlyOnce: "exactly-once",
}

// All lists the valid semantics, weakest first.
var All = []Semantics{AtMostOnce, AtLeastOnce, ExactlyOnce}

// String returns the canonical spelling: "at-most-once", "at-least-once" or
// "exactly-once", or "Semantics(N)" for an invalid value.
func (s Semantics) String() string {
	if s.Valid() {
		return semanticsNames[s]
	}
	return fmt.Sprintf("Semantics(%d)", uint8(s))
}

// Valid reports whether s is one of [AtMostOnce], [AtLeastOnce] and
// [ExactlyOnce].
func (s Semantics) Valid() bool { return s >= AtMostOnce && s <= ExactlyOnce }

// ParseSemantics parses text case-insensitively. Each semantics accepts its
// canonical name with hyphens, underscores, spaces or nothing between the
// words, and a short form: "at-least-once", "at_least_once", "AtLeastOnce",
// "atleastonce" and "alo" are all [AtLeastOnce]; likewise "amo" and "eos"
// (or "exactly-once", "eo", "exactlyonce") for the others. Unknown text is an
// error wrapping [ErrInvalidConfig] that lists the accepted values.
func ParseSemantics(text string) (Semantics, error) {
	key := strings.Map(func(r rune) rune {
		switch r {
		case '-', '_', ' ', '.':
			return -1
		}
		return r
	}, strings.ToLower(strings.TrimSpace(text)))
	switch key {
	case "atmostonce", "amo":
		return AtMostOnce, nil
	case "atleastonce", "alo":
		return AtLeastOnce, nil
	case "exactlyonce", "eo", "eos":
		return ExactlyOnce, nil
	}
	return 0, fmt.Errorf("%w: unknown semantics %q: use one of at-most-once (amo), at-least-once (alo), exactly-once (eos)", ErrInvalidConfig, text)
}

// MarshalText implements [encoding.TextMarshaler]. An invalid value is an
// error wrapping [ErrInvalidConfig].
func (s Semantics) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("%w: cannot marshal %s: choose AtMostOnce, AtLeastOnce or ExactlyOnce", ErrInvalidConfig, s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler] with [ParseSemantics],
// so a Semantics works with flag.TextVar, encoding/json and YAML decoders.
func (s *Semantics) UnmarshalText(text []byte) error {
	v, err := ParseSemantics(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// CommitOrder says when a consumer commits a record's offset relative to the
// handler that processes it.
type CommitOrder uint8

const (
	// CommitBeforeProcessing commits the offsets of a batch before the
	// handler sees it: a crash loses the batch, never repeats it.
	CommitBeforeProcessing CommitOrder = iota + 1
	// CommitAfterProcessing commits a record's offset only after its handler
	// succeeded: a crash repeats records, never loses them.
	CommitAfterProcessing
	// CommitWithSink commits offsets in the same transaction as the
	// handler's output: a Kafka transaction (package eos) or the sink's own
	// database transaction (consumer.WithSink). With consumer.WithDedup the
	// Kafka commit follows processing and the dedup store marks what is done.
	CommitWithSink
)

// String describes the order in a few words.
func (o CommitOrder) String() string {
	switch o {
	case CommitBeforeProcessing:
		return "before processing"
	case CommitAfterProcessing:
		return "after processing"
	case CommitWithSink:
		return "in the sink's transaction"
	}
	return fmt.Sprintf("CommitOrder(%d)", uint8(o))
}

// ProducerPreset is what a semantics sets on a producer.
type ProducerPreset struct {
	// Acks is "0", "1" or "all": the replicas that must have a record
	// before the broker acknowledges it.
	Acks string
	// Idempotent is whether the broker deduplicates retried batches.
	Idempotent bool
	// Retries is "none" or "until the delivery timeout".
	Retries string
	// MaxInFlight is the produce requests in flight per broker.
	MaxInFlight int
	// DeliveryTimeout bounds how long a record may wait for its
	// acknowledgement, retries included; 0 means unbounded.
	DeliveryTimeout time.Duration
	// Transactional is whether writes go through Kafka transactions (a
	// transactional ID is then required).
	Transactional bool
}

// ConsumerPreset is what a semantics sets on a consumer.
type ConsumerPreset struct {
	// CommitOrder is when offsets are committed relative to processing.
	CommitOrder CommitOrder
	// Isolation is "read_uncommitted" or "read_committed".
	Isolation string
	// AutoCommit is whether the client commits on a timer. kdeliver never
	// does: every commit follows the commit order.
	AutoCommit bool
}

// Preset is everything a semantics turns into, on both ends.
type Preset struct {
	Semantics Semantics
	Producer  ProducerPreset
	Consumer  ConsumerPreset
}

// DefaultDeliveryTimeout bounds how long an AtLeastOnce or ExactlyOnce
// record is retried before its Produce returns an error.
const DefaultDeliveryTimeout = 2 * time.Minute

// Preset returns what s sets on a producer and a consumer. It panics if s is
// not valid.
func (s Semantics) Preset() Preset {
	switch s {
	case AtMostOnce:
		return Preset{
			Semantics: s,
			Producer:  ProducerPreset{Acks: "0", Retries: "none", MaxInFlight: 1},
			Consumer:  ConsumerPreset{CommitOrder: CommitBeforeProcessing, Isolation: "read_uncommitted"},
		}
	case AtLeastOnce:
		return Preset{
			Semantics: s,
			Producer:  ProducerPreset{Acks: "all", Idempotent: true, Retries: "until the delivery timeout", MaxInFlight: 5, DeliveryTimeout: DefaultDeliveryTimeout},
			Consumer:  ConsumerPreset{CommitOrder: CommitAfterProcessing, Isolation: "read_uncommitted"},
		}
	case ExactlyOnce:
		return Preset{
			Semantics: s,
			Producer:  ProducerPreset{Acks: "all", Idempotent: true, Retries: "until the delivery timeout", MaxInFlight: 5, DeliveryTimeout: DefaultDeliveryTimeout, Transactional: true},
			Consumer:  ConsumerPreset{CommitOrder: CommitWithSink, Isolation: "read_committed"},
		}
	}
	panic("kdeliver: Preset of invalid " + s.String())
}

// PresetTable renders the presets of all semantics as a Markdown table. The
// README's table is this output; a test keeps the two in step.
func PresetTable() string {
	var b strings.Builder
	b.WriteString("| semantics | acks | idempotent | retries | in flight | delivery timeout | transactional | commit | isolation | auto-commit |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range All {
		p := s.Preset()
		timeout := "none"
		if p.Producer.DeliveryTimeout > 0 {
			timeout = p.Producer.DeliveryTimeout.String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n",
			s, p.Producer.Acks, yesNo(p.Producer.Idempotent), p.Producer.Retries, p.Producer.MaxInFlight,
			timeout, yesNo(p.Producer.Transactional), p.Consumer.CommitOrder, p.Consumer.Isolation, yesNo(p.Consumer.AutoCommit))
	}
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
