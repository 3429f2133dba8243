package eos

import (
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// Defaults of the options. They override kgo's defaults only where noted.
const (
	// DefaultCommitRecords is the most input records one transaction holds.
	DefaultCommitRecords = 1000
	// DefaultCommitInterval is the longest a transaction stays open to
	// collect more input once it holds one record.
	DefaultCommitInterval = 100 * time.Millisecond
	// DefaultTransactionTimeout is kgo's and Kafka's default
	// transaction.timeout.ms.
	DefaultTransactionTimeout = 40 * time.Second
	// DefaultSessionTimeout is kgo's default group session timeout.
	DefaultSessionTimeout = 45 * time.Second
	// DefaultMaxAttempts is how often a failing record is handled before
	// the failure policy applies.
	DefaultMaxAttempts = 3
	// DefaultBackoffInitial and DefaultBackoffMax bound the exponential
	// wait between attempts of a failing record, and between session
	// recreations after errors.
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
)

// Option configures a [Session]. kdeliver.Option values (logger, client ID,
// tracer and meter providers) are Options too.
type Option interface{ Apply(shared.Config) }

type option func(*config)

func (o option) Apply(c shared.Config) {
	if ec, ok := c.(*config); ok {
		o(ec)
		return
	}
	c.Reject("an eos option was passed to another package's constructor")
}

type config struct {
	shared   shared.Settings
	problems []string

	commitRecords  int
	commitInterval time.Duration
	txnTimeout     time.Duration
	sessionTimeout time.Duration
	backoffInitial time.Duration
	backoffMax     time.Duration
	maxAttempts    int
	outputTopic    string
	deadLetter     string
	kgoOpts        []kgo.Opt
}

func (c *config) Shared() *shared.Settings { return &c.shared }
func (c *config) Reject(p string)          { c.problems = append(c.problems, p) }

func defaultConfig() config {
	return config{
		commitRecords:  DefaultCommitRecords,
		commitInterval: DefaultCommitInterval,
		txnTimeout:     DefaultTransactionTimeout,
		sessionTimeout: DefaultSessionTimeout,
		backoffInitial: DefaultBackoffInitial,
		backoffMax:     DefaultBackoffMax,
		maxAttempts:    DefaultMaxAttempts,
	}
}

// WithCommitEvery ends a transaction once it holds records input records or
// has been open for interval, whichever comes first, overriding the defaults
// [DefaultCommitRecords] and [DefaultCommitInterval]. Larger transactions cost
// less per record, but more work is redone after an abort, and readers with
// read_committed see output later. interval must stay well below the
// transaction timeout.
func WithCommitEvery(records int, interval time.Duration) Option {
	return option(func(c *config) { c.commitRecords, c.commitInterval = records, interval })
}

// WithTransactionTimeout sets transaction.timeout.ms, overriding
// [DefaultTransactionTimeout]. The broker aborts a transaction open longer
// than this; it must be below the session timeout ([WithSessionTimeout]) so a
// member the group dropped cannot still commit, and at most the broker's
// transaction.max.timeout.ms (15 minutes by default).
func WithTransactionTimeout(d time.Duration) Option {
	return option(func(c *config) { c.txnTimeout = d })
}

// WithSessionTimeout sets the consumer group session timeout, overriding
// [DefaultSessionTimeout]. It must be above the transaction timeout and within
// the broker's group.min/max.session.timeout.ms.
func WithSessionTimeout(d time.Duration) Option {
	return option(func(c *config) { c.sessionTimeout = d })
}

// WithBackoff sets the exponential wait between attempts of a failing record
// and between session recreations, from initial up to max, overriding
// [DefaultBackoffInitial] and [DefaultBackoffMax].
func WithBackoff(initial, max time.Duration) Option {
	return option(func(c *config) { c.backoffInitial, c.backoffMax = initial, max })
}

// WithMaxAttempts sets how many times a record whose handler fails is
// handled before the failure policy applies, overriding [DefaultMaxAttempts].
// The policy is to stop ([Session.Run] returns a [*HandlerError]) unless
// [WithDeadLetterTopic] is set.
func WithMaxAttempts(n int) Option {
	return option(func(c *config) { c.maxAttempts = n })
}

// WithDeadLetterTopic changes the failure policy from stop to dead-letter:
// after the last attempt, the input record is copied to topic inside the
// current transaction, with headers saying where it came from and why it
// failed, and the session goes on. Its offset commits with the transaction,
// so the record lands in the dead-letter topic exactly once. topic must not
// be one of the input topics.
func WithDeadLetterTopic(topic string) Option {
	return option(func(c *config) { c.deadLetter = topic })
}

// WithOutputTopic sets the topic of emitted records whose Topic is empty. By
// default there is none, and emitting a record without a topic is a handler
// error.
func WithOutputTopic(topic string) Option {
	return option(func(c *config) { c.outputTopic = topic })
}

// WithKgoOpts passes raw franz-go options to the session's client, applied
// after the ExactlyOnce preset. The built client is checked: an option that
// weakens the guarantee (read_uncommitted, auto-commit, acks below all,
// disabled idempotence, capped retries, another transactional ID or group,
// BlockRebalanceOnPoll, a transaction timeout not below the session timeout)
// makes [New] fail.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) { c.kgoOpts = append(c.kgoOpts, opts...) })
}

func (c *config) validate(ps interface{ Add(bool, string) }) {
	for _, p := range c.problems {
		ps.Add(true, p)
	}
	ps.Add(c.commitRecords < 1, fmt.Sprintf("commit every %d records: the count must be at least 1", c.commitRecords))
	ps.Add(c.commitInterval <= 0, fmt.Sprintf("commit interval %v: it must be positive", c.commitInterval))
	ps.Add(c.txnTimeout < time.Second, fmt.Sprintf("transaction timeout %v is below Kafka's 1s minimum", c.txnTimeout))
	ps.Add(c.txnTimeout >= c.sessionTimeout, fmt.Sprintf("transaction timeout %v must be below the session timeout %v, or a member the group dropped could still commit: lower WithTransactionTimeout or raise WithSessionTimeout", c.txnTimeout, c.sessionTimeout))
	ps.Add(c.commitInterval > 0 && c.txnTimeout > 0 && c.commitInterval*2 > c.txnTimeout, fmt.Sprintf("commit interval %v leaves no margin below the transaction timeout %v: keep it under half", c.commitInterval, c.txnTimeout))
	ps.Add(c.backoffInitial <= 0 || c.backoffMax < c.backoffInitial, fmt.Sprintf("backoff from %v to %v: initial must be positive and max at least initial", c.backoffInitial, c.backoffMax))
	ps.Add(c.maxAttempts < 1, fmt.Sprintf("max attempts %d: it must be at least 1", c.maxAttempts))
}
