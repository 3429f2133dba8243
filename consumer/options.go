package consumer

import (
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

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
	// A later issue adds the dedup store that ExactlyOnce needs for
	// non-Kafka sinks here.
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
// handler under AtLeastOnce: the first wait is initial, each next one about
// doubles (with jitter), up to max. It overrides the default of
// [DefaultBackoffInitial] to [DefaultBackoffMax]. AtMostOnce never retries a
// handler, so it refuses this option.
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
// panicked) n times in a row under AtLeastOnce: Run then commits what
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
// can lose. Under AtLeastOnce it bounds how many a crash can repeat.
func WithMaxPollRecords(n int) Option {
	return option(func(c *config) {
		if n < 1 {
			c.Reject(fmt.Sprintf("max poll records %d is not valid: use at least 1", n))
			return
		}
		c.maxPoll = n
	})
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
