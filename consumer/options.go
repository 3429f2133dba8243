package consumer

import (
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// Defaults that the options override.
const (
	// DefaultBackoffInitial is the first wait before a failed handler is
	// retried under AtLeastOnce.
	DefaultBackoffInitial = 100 * time.Millisecond
	// DefaultBackoffMax caps the wait between retries of a failed handler.
	DefaultBackoffMax = 10 * time.Second
	// DefaultMaxPollRecords is how many records one poll hands to the
	// handler loop at most.
	DefaultMaxPollRecords = 500
)

// Option configures a Consumer. kdeliver.Option values (logger, client ID,
// tracing) are Options too.
type Option interface{ Apply(shared.Config) }

type option func(*config)

// Apply applies the option to a consumer configuration; any other
// configuration records it as a problem.
func (o option) Apply(c shared.Config) {
	if cc, ok := c.(*config); ok {
		o(cc)
		return
	}
	c.Reject("a consumer option was passed to another package's constructor")
}

type config struct {
	shared   shared.Settings
	problems []string

	backoffInitial time.Duration
	backoffMax     time.Duration
	retrySet       bool // WithBackoff or WithMaxAttempts was given
	maxAttempts    int  // 0: retry for ever
	maxPoll        int
	kgoOpts        []kgo.Opt
	guard          *dedup.Guard // WithDedup
	sink           dedup.Sink   // WithSink
	dedupSet       bool         // WithDedup or WithSink was given (maybe nil)
	readCommitted  bool         // WithReadCommitted
}

func (c *config) Shared() *shared.Settings { return &c.shared }
func (c *config) Reject(p string)          { c.problems = append(c.problems, p) }

func defaultConfig() config {
	return config{
		backoffInitial: DefaultBackoffInitial,
		backoffMax:     DefaultBackoffMax,
		maxPoll:        DefaultMaxPollRecords,
	}
}

// WithBackoff sets the exponential backoff between retries of a failing
// handler (or sink write) under AtLeastOnce and ExactlyOnce: the first wait
// is initial, each next one about doubles (with jitter), up to max. It
// overrides the default of [DefaultBackoffInitial] to [DefaultBackoffMax].
// AtMostOnce never retries a handler, so it refuses this option.
func WithBackoff(initial, max time.Duration) Option {
	return option(func(c *config) {
		c.retrySet = true
		if initial <= 0 || max < initial {
			c.Reject(fmt.Sprintf("backoff %v..%v is not valid: the initial wait must be positive and not above the maximum", initial, max))
			return
		}
		c.backoffInitial, c.backoffMax = initial, max
	})
}

// WithMaxAttempts makes Run give up on a record whose handler failed (or
// panicked) n times in a row under AtLeastOnce or ExactlyOnce (with
// [WithSink]: a sink Write that failed n times): Run then commits what
// succeeded before it, leaves the group and returns a [*HandlerError]; the
// failed record's offset is not committed, so the next consumer of the
// partition gets it again. It overrides the default of retrying for ever.
// AtMostOnce never retries a handler, so it refuses this option.
func WithMaxAttempts(n int) Option {
	return option(func(c *config) {
		c.retrySet = true
		if n < 1 {
			c.Reject(fmt.Sprintf("max attempts %d is not valid: use at least 1", n))
			return
		}
		c.maxAttempts = n
	})
}

// WithMaxPollRecords caps the records of one poll, overriding the default of
// [DefaultMaxPollRecords]. Under AtMostOnce a poll's records are committed
// before the handler sees them, so this also bounds how many records a crash
// can lose. Under AtLeastOnce it bounds how many a crash can repeat. With
// [WithSink] it bounds the records of one sink transaction (a poll's records
// of one partition).
func WithMaxPollRecords(n int) Option {
	return option(func(c *config) {
		if n < 1 {
			c.Reject(fmt.Sprintf("max poll records %d is not valid: use at least 1", n))
			return
		}
		c.maxPoll = n
	})
}

// WithReadCommitted makes an AtMostOnce or AtLeastOnce consumer read with
// read_committed isolation: it sees only records of committed transactions,
// never those of aborted ones. Use it to read a topic written by eos.Session
// or a transactional producer: without it an aborted transaction's records
// (which the writer redoes in a later transaction) are read too, i.e.
// duplicates. ExactlyOnce always reads committed records.
func WithReadCommitted() Option {
	return option(func(c *config) { c.readCommitted = true })
}

// WithKgoOpts passes raw franz-go options to the client, after the preset of
// the semantics. It is an escape hatch for settings kdeliver does not cover
// (TLS, SASL, timeouts, balancers). The effective values are checked after
// the client is built: an option that weakens the semantics (auto-commit,
// read_uncommitted under ExactlyOnce, another group, its own revoke or lost
// callback) makes New fail.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) { c.kgoOpts = append(c.kgoOpts, opts...) })
}

// WithDedup makes the consumer exactly-once for the handler's side effect
// through a dedup guard (package dedup, over a memory, Redis or PostgreSQL
// store): each record's handler runs inside [dedup.Guard.Handler], which
// skips records whose side effect is done and marks a record done only
// after its handler returned nil. Offsets are committed to Kafka after
// processing, as under AtLeastOnce, and the redeliveries that this repeats
// after a crash or rebalance are absorbed by the guard. See "Choosing
// semantics" in the package doc for what it guarantees and its limits.
//
// It requires kdeliver.ExactlyOnce and conflicts with [WithSink]. There is
// no default: ExactlyOnce without WithDedup or WithSink is refused.
func WithDedup(g *dedup.Guard) Option {
	return option(func(c *config) {
		c.dedupSet = true
		if g == nil {
			c.Reject("WithDedup(nil): pass a guard from dedup.NewGuard")
			return
		}
		c.guard = g
	})
}

// WithSink makes the consumer exactly-once into a [dedup.Sink] (such as
// pgstore.Sink for PostgreSQL), which writes each batch's side effects and
// the consumed offsets in one transaction of its own. The sink's Write is
// the side effect, so [Consumer.Run] takes a nil handler. Offsets are never
// committed to Kafka: on assignment each partition starts at the offset the
// sink stored ([dedup.AdjustFetchOffsets]). See "Choosing semantics" in the
// package doc for what it guarantees.
//
// It requires kdeliver.ExactlyOnce and conflicts with [WithDedup]. A Sink
// serves one consumer: use a new one for each. There is no default:
// ExactlyOnce without WithDedup or WithSink is refused.
func WithSink(s dedup.Sink) Option {
	return option(func(c *config) {
		c.dedupSet = true
		if s == nil {
			c.Reject("WithSink(nil): pass a dedup.Sink such as pgstore.NewSink")
			return
		}
		c.sink = s
	})
}
