package consumer

import (
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// Defaults of the consumer's options.
const (
	// DefaultMaxPollRecords is how many records one poll hands over at
	// most.
	DefaultMaxPollRecords = 500
	// DefaultCommitInterval is how often an AtLeastOnce consumer commits
	// the offsets its handlers finished ([WithCommitInterval]).
	DefaultCommitInterval = time.Second
	// DefaultRevokeTimeout is how long a concurrent consumer lets the
	// records in flight of a revoked partition finish ([WithRevokeTimeout]).
	DefaultRevokeTimeout = 10 * time.Second
)

// Option configures a [Consumer] or a [SinkConsumer]. The root package's
// options are Options too: [kdeliver.Option] (logger, client ID, tracing)
// and [kdeliver.HandlerOption] (retries of a failing handler, the start
// timeout); an option of another package is not, and does not compile here.
type Option interface {
	ApplyConsumer(*shared.Target)
}

type option func(*config)

// ApplyConsumer applies the option; the constructors call it.
func (o option) ApplyConsumer(t *shared.Target) { o(t.Pkg.(*config)) }

type config struct {
	t *shared.Target

	maxPoll       int
	kgoOpts       []kgo.Opt
	readCommitted bool // WithReadCommitted
	startLatest   bool // WithStartAtLatest

	commitInterval time.Duration // WithCommitInterval
	revokeTimeout  time.Duration // WithRevokeTimeout
	deadLetter     string        // WithDeadLetterTopic
}

func (c *config) reject(p string) { c.t.Reject(p) }

// apply applies opts to a new configuration.
func apply(opts []Option) *config {
	t := &shared.Target{}
	c := &config{t: t, maxPoll: DefaultMaxPollRecords, commitInterval: DefaultCommitInterval, revokeTimeout: DefaultRevokeTimeout}
	t.Pkg = c
	for i, o := range opts {
		if o == nil {
			c.reject(fmt.Sprintf("option %d of %d is nil: remove it", i+1, len(opts)))
			continue
		}
		o.ApplyConsumer(t)
	}
	t.Finish()
	return c
}

// WithMaxPollRecords caps the records of one poll, overriding the default of
// [DefaultMaxPollRecords]. Under AtMostOnce a poll's records are committed
// before the handler sees them, so this also bounds how many records a crash
// can lose. Under AtLeastOnce it bounds how many a crash can repeat. With a
// sink it bounds the records of one sink transaction (a poll's records of
// one partition).
func WithMaxPollRecords(n int) Option {
	return option(func(c *config) {
		if n < 1 {
			c.reject(fmt.Sprintf("WithMaxPollRecords(%d): use at least 1", n))
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
// duplicates. Exactly-once consumers always read committed records.
func WithReadCommitted() Option {
	return option(func(c *config) { c.readCommitted = true })
}

// WithStartAtLatest makes a group that has no committed offset for a
// partition start at the partition's end (records produced from now on),
// overriding the default of starting at its earliest record. It changes
// nothing else: an offset that is out of range (deleted by retention) still
// resets to the earliest record kept, so nothing is skipped then.
func WithStartAtLatest() Option {
	return option(func(c *config) { c.startLatest = true })
}

// WithKgoOpts passes raw franz-go options to the client, after the preset of
// the semantics. It is an escape hatch for settings kdeliver does not cover
// (TLS, SASL, timeouts, balancers). The effective values are checked after
// the client is built: an option that weakens the semantics (auto-commit,
// read_uncommitted where committed reads are needed, another group, its own
// revoke or lost callback, a reset or start offset, its own root context)
// makes the constructor fail, naming it.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) { c.kgoOpts = append(c.kgoOpts, opts...) })
}

// WithCommitInterval sets how often an AtLeastOnce consumer (or one with a
// guard) commits the offsets its handlers finished, overriding
// [DefaultCommitInterval]. It also commits on revoke and on shutdown. A
// crash repeats up to an interval's worth of finished records, plus those in
// flight (the sequential consumer: the poll in hand). The sequential
// consumer commits after a poll once the interval has passed since its last
// commit, or while it waits for records once the interval has passed, so an
// idle consumer's offsets are never left behind for longer than that.
// AtMostOnce commits each poll before handling it and ignores it.
func WithCommitInterval(d time.Duration) Option {
	return option(func(c *config) {
		if d <= 0 {
			c.reject(fmt.Sprintf("WithCommitInterval(%v): pass a positive duration", d))
			return
		}
		c.commitInterval = d
	})
}

// WithRevokeTimeout sets how long a concurrent consumer lets the handlers
// in flight on a revoked partition finish before it commits the partition's
// finished prefix and lets the rebalance go on, overriding
// [DefaultRevokeTimeout]. It is the bound a stuck handler can hold the
// group's rebalance; keep it below the rebalance timeout
// (kgo.RebalanceTimeout, 60 s by default). A handler still running after it
// keeps running, but its offset is never committed by this consumer: the
// partition's new owner handles the record again.
func WithRevokeTimeout(d time.Duration) Option {
	return option(func(c *config) {
		if d <= 0 {
			c.reject(fmt.Sprintf("WithRevokeTimeout(%v): pass a positive duration", d))
			return
		}
		c.revokeTimeout = d
	})
}

// WithDeadLetterTopic changes what happens to a record whose handler failed
// its last attempt ([kdeliver.WithMaxAttempts], which it requires) from
// stopping Run to producing a copy of it to topic (key, value, headers and
// timestamp kept, plus [kdeliver.HeaderDLQTopic] and the other dead-letter
// headers) and going on. The copy is acknowledged by all in-sync replicas
// (acks=all, idempotent) before the record counts as done, so its offset
// never commits before the dead letter is durable; a failing dead-letter
// write is retried with the backoff and holds back the commit of the
// record's partition, not of the others. It runs the concurrent engine
// (with a concurrency of one unless [kdeliver.WithConcurrency] says more).
// An at-most-once consumer (which never retries) and a sink consumer (which
// has no handler) refuse it; topic must not be an input topic.
func WithDeadLetterTopic(topic string) Option {
	return option(func(c *config) {
		if topic == "" {
			c.reject("WithDeadLetterTopic(\"\"): name the topic")
			return
		}
		c.deadLetter = topic
	})
}
