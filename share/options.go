package share

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// Defaults of the share consumer's options.
const (
	// DefaultMaxRecords is how many records one poll hands over at most
	// ([WithMaxRecords]).
	DefaultMaxRecords = 500
	// DefaultMaxDeliveries is the delivery count at which an at-least-once
	// share consumer stops releasing a failing record
	// ([kdeliver.WithMaxAttempts] overrides it): one below Kafka's default
	// share.delivery.count.limit (5), so that a crash during the last
	// delivery still leaves the broker one more delivery to give.
	DefaultMaxDeliveries = 4
)

// Option configures a [Consumer]. The root package's options are Options
// too: [kdeliver.Option] (logger, client ID, tracing, metrics, TLS and SASL)
// and those [kdeliver.HandlerOption]s that mean something for a share group
// ([kdeliver.WithMaxAttempts], [kdeliver.WithBackoff],
// [kdeliver.WithStartTimeout], [kdeliver.WithConcurrency] with
// [kdeliver.Unordered]); the others are refused by [New] with the reason.
type Option interface {
	ApplyShare(*shared.Target)
}

type option func(*config)

// ApplyShare applies the option; [New] and [NewWithGuard] call it.
func (o option) ApplyShare(t *shared.Target) { o(t.Pkg.(*config)) }

type config struct {
	t *shared.Target

	maxRecords    int
	deadLetter    string
	startEarliest bool
	kgoOpts       []kgo.Opt
}

func (c *config) reject(p string) { c.t.Reject(p) }

func apply(opts []Option) *config {
	t := &shared.Target{}
	c := &config{t: t, maxRecords: DefaultMaxRecords}
	t.Pkg = c
	for i, o := range opts {
		if o == nil {
			c.reject(fmt.Sprintf("option %d of %d is nil: remove it", i+1, len(opts)))
			continue
		}
		o.ApplyShare(t)
	}
	t.Finish()
	return c
}

// WithMaxRecords caps the records of one poll (and of one ShareFetch:
// the broker splits batches to keep to it), overriding
// [DefaultMaxRecords]. A consumer holds the poll in hand and at most one
// poll more, fetched ahead. Under AtMostOnce a poll's records are accepted
// before its handlers run, so a crash loses at most the poll in hand.
// Under AtLeastOnce a crash delivers again what the consumer held (at most
// two polls, their delivery counts raised) and the records handled in
// about the last second, whose accepts franz-go had not sent yet (it sends
// them with the next fetch, or on their own after 1 s).
func WithMaxRecords(n int) Option {
	return option(func(c *config) {
		if n < 1 {
			c.reject(fmt.Sprintf("share.WithMaxRecords(%d): use at least 1", n))
			return
		}
		c.maxRecords = n
	})
}

// WithDeadLetterTopic makes an at-least-once share consumer write a record
// that failed its last delivery ([kdeliver.WithMaxAttempts], default
// [DefaultMaxDeliveries]) to topic, with the failed record's key, value,
// headers and timestamp plus [kdeliver.HeaderDLQTopic] and the other
// dead-letter headers (the attempts header is the record's delivery count),
// and then reject it (AckReject: the broker archives it). The dead letter is
// acknowledged by all in-sync replicas before the reject is sent, so a crash
// between the two delivers the record again (and may write a second dead
// letter), never loses it. A failing dead-letter write is retried with the
// backoff and the record is not rejected meanwhile; if Run stops first the
// record is released. Without it, the last failure ends Run with a
// [*kdeliver.HandlerError]. AtMostOnce refuses it; topic must not be an
// input topic.
func WithDeadLetterTopic(topic string) Option {
	return option(func(c *config) {
		if topic == "" {
			c.reject("share.WithDeadLetterTopic(\"\"): name the topic")
			return
		}
		c.deadLetter = topic
	})
}

// WithStartAtEarliest makes Run set the group's share.auto.offset.reset to
// earliest before it joins (an IncrementalAlterConfigs of the GROUP
// resource, which needs the AlterConfigs ACL on the group), overriding
// Kafka's default for a new share group of delivering only records produced
// after the group started. It changes nothing for partitions the group
// already started.
func WithStartAtEarliest() Option {
	return option(func(c *config) { c.startEarliest = true })
}

// WithKgoOpts passes raw franz-go options to the client, after the preset.
// An option that joins another group (kgo.ConsumerGroup, kgo.ShareGroup),
// consumes partitions directly, or sets its own ack callback or root
// context makes [New] fail, naming it.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) { c.kgoOpts = append(c.kgoOpts, opts...) })
}
