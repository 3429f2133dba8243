package consumer

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// DefaultMaxPollRecords is how many records one poll hands over at most.
const DefaultMaxPollRecords = 500

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
}

func (c *config) reject(p string) { c.t.Reject(p) }

// apply applies opts to a new configuration.
func apply(opts []Option) *config {
	t := &shared.Target{}
	c := &config{t: t, maxPoll: DefaultMaxPollRecords}
	t.Pkg = c
	for i, o := range opts {
		if o == nil {
			c.reject(fmt.Sprintf("option %d of %d is nil: remove it", i+1, len(opts)))
			continue
		}
		o.ApplyConsumer(t)
	}
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
