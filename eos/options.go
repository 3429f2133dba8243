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
)

// Option configures a [Session]. The root package's options are Options
// too: [kdeliver.Option] (logger, client ID, tracing) and
// [kdeliver.HandlerOption] (retries of a failing handler, the start
// timeout); an option of another package is not, and does not compile here.
type Option interface {
	ApplySession(*shared.Target)
}

type option func(*config)

// ApplySession applies the option; [New] calls it.
func (o option) ApplySession(t *shared.Target) { o(t.Pkg.(*config)) }

type config struct {
	t *shared.Target

	commitRecords  int
	commitInterval time.Duration
	txnTimeout     time.Duration
	sessionTimeout time.Duration
	sessionSet     bool // WithSessionTimeout was given
	outputTopic    string
	deadLetter     string
	kgoOpts        []kgo.Opt
}

func apply(opts []Option) *config {
	t := &shared.Target{}
	c := &config{
		t:              t,
		commitRecords:  DefaultCommitRecords,
		commitInterval: DefaultCommitInterval,
		txnTimeout:     DefaultTransactionTimeout,
		sessionTimeout: DefaultSessionTimeout,
	}
	t.Pkg = c
	for i, o := range opts {
		if o == nil {
			t.Reject(fmt.Sprintf("option %d of %d is nil: remove it", i+1, len(opts)))
			continue
		}
		o.ApplySession(t)
	}
	t.Finish()
	return c
}

// WithCommitEvery ends a transaction once it holds records input records or
// has been open for interval, whichever comes first, overriding the defaults
// [DefaultCommitRecords] and [DefaultCommitInterval]. Without
// kdeliver.WithConcurrency a transaction may run up to a tenth of interval
// longer, to handle the rest of what the client has buffered (see the
// package doc, Transactions). Larger transactions cost
// less per record, but more work is redone after an abort, and readers with
// read_committed see output later. interval must stay below half the
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

// WithSessionTimeout sets the consumer group session timeout of the classic
// protocol, overriding [DefaultSessionTimeout]. It must be above the
// transaction timeout and within the broker's
// group.min/max.session.timeout.ms. Under
// kdeliver.WithGroupProtocol(kdeliver.ConsumerProtocol) the broker owns the
// session timeout (group.consumer.session.timeout.ms) and this option is
// refused.
func WithSessionTimeout(d time.Duration) Option {
	return option(func(c *config) { c.sessionTimeout, c.sessionSet = d, true })
}

// WithDeadLetterTopic changes what happens to a record whose handler failed
// its last attempt ([kdeliver.WithMaxAttempts], which it requires) from
// stopping Run to copying the record to topic inside the current
// transaction, with headers saying where it came from and why it failed
// ([kdeliver.HeaderDLQTopic] and the others), and going on. Its offset
// commits with the transaction, so the record lands in the dead-letter topic
// exactly once. topic must not be one of the input topics.
func WithDeadLetterTopic(topic string) Option {
	return option(func(c *config) {
		if topic == "" {
			c.t.Reject("WithDeadLetterTopic(\"\"): name the topic")
			return
		}
		c.deadLetter = topic
	})
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
// a reset or start offset, BlockRebalanceOnPoll, topics to consume, a
// transaction timeout not below the session timeout, its own root context)
// makes [New] fail, naming it.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) {
		for i, o := range opts {
			if o == nil {
				// kgo.NewClient panics on a nil option.
				c.t.Reject(fmt.Sprintf("WithKgoOpts: raw option %d of %d is nil: remove it", i+1, len(opts)))
				continue
			}
			c.kgoOpts = append(c.kgoOpts, o)
		}
	})
}

func (c *config) validate(ps interface{ Add(bool, string) }) {
	for _, p := range c.t.Problems {
		ps.Add(true, p)
	}
	ps.Add(c.commitRecords < 1, fmt.Sprintf("commit every %d records: the count must be at least 1", c.commitRecords))
	ps.Add(c.commitInterval <= 0, fmt.Sprintf("commit interval %v: it must be positive", c.commitInterval))
	ps.Add(c.txnTimeout < time.Second, fmt.Sprintf("transaction timeout %v is below Kafka's 1s minimum", c.txnTimeout))
	if c.t.Handling.ConsumerProtocol() {
		// KIP-848 needs Kafka 4.0+, so KIP-447 holds: a new owner's
		// offset fetch waits for the old member's open transaction
		// (RequireStable), and the coordinator refuses TxnOffsetCommit of
		// a member whose epoch is gone. The classic rule below only adds
		// a margin on brokers before 2.5.
		ps.Add(c.sessionSet, fmt.Sprintf("eos.WithSessionTimeout(%v) does nothing under kdeliver.ConsumerProtocol, where the broker owns the session timeout: remove it, and set group.consumer.session.timeout.ms on the brokers (default 45 s) or consumer.session.timeout.ms on the group (kafka-configs.sh --entity-type groups)", c.sessionTimeout))
	}
	ps.Add(!c.t.Handling.ConsumerProtocol() && c.txnTimeout >= c.sessionTimeout, fmt.Sprintf("transaction timeout %v must be below the session timeout %v, or a member the group dropped could still commit: lower WithTransactionTimeout or raise WithSessionTimeout", c.txnTimeout, c.sessionTimeout))
	ps.Add(c.commitInterval > 0 && c.txnTimeout > 0 && c.commitInterval*2 > c.txnTimeout, fmt.Sprintf("commit interval %v leaves no margin below the transaction timeout %v: keep it under half", c.commitInterval, c.txnTimeout))
	ps.Add(c.t.Handling.MaxInFlight > 0 && c.t.Handling.Concurrency <= 1, "kdeliver.WithMaxInFlight bounds the records of concurrent handlers, and this session handles one record at a time: add kdeliver.WithConcurrency(n > 1, order) or remove it")
	ps.Add(c.deadLetter != "" && c.t.Handling.MaxAttempts == 0, "WithDeadLetterTopic needs kdeliver.WithMaxAttempts(n): after how many attempts a record goes to the dead-letter topic")
}
