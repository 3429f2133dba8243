package producer

import (
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// Option configures a [Producer]. The root package's options
// ([kdeliver.WithLogger], [kdeliver.WithClientID],
// [kdeliver.WithTracerProvider], [kdeliver.WithMeterProvider]) are Options
// too. An Option of another package (a consumer option, say) is refused by
// [New] with an error wrapping [kdeliver.ErrInvalidConfig].
type Option interface {
	Apply(shared.Config)
}

type option func(*config)

// Apply applies the option to a producer configuration and rejects any other.
// It is called by [New]; applications pass options to New instead.
func (o option) Apply(c shared.Config) {
	if pc, ok := c.(*config); ok {
		o(pc)
		return
	}
	c.Reject("a producer option was passed to another package's constructor: pass it to producer.New only")
}

type config struct {
	shared   shared.Settings
	problems []string

	txnID           string
	txnIDSet        bool
	leaderAck       bool
	deliveryTimeout time.Duration
	timeoutSet      bool
	kgoOpts         []kgo.Opt
	messageIDs      bool
}

func (c *config) Shared() *shared.Settings { return &c.shared }
func (c *config) Reject(p string)          { c.problems = append(c.problems, p) }

// WithTransactionalID sets the Kafka transactional ID, which
// [kdeliver.ExactlyOnce] requires and the other semantics refuse. It must be
// unique per running producer instance and stable across its restarts (for
// example the pod name plus a shard number): a second producer started with
// the same ID fences the first, whose calls then fail with [ErrFenced].
func WithTransactionalID(id string) Option {
	return option(func(c *config) {
		c.txnID, c.txnIDSet = id, true
		if id == "" {
			c.Reject("WithTransactionalID got an empty ID: pass an ID unique per producer instance")
		}
	})
}

// WithLeaderAck makes an [kdeliver.AtMostOnce] producer wait for the
// partition leader's acknowledgement (acks=1), overriding the default of
// acks=0 (a record counts as sent once written to the connection). Produce
// then reports records the leader refused, but a record acknowledged by a
// leader that fails before replicating it is still lost. Refused by the other
// semantics, which need acks=all.
func WithLeaderAck() Option {
	return option(func(c *config) { c.leaderAck = true })
}

// WithDeliveryTimeout bounds how long an [kdeliver.AtLeastOnce] or
// [kdeliver.ExactlyOnce] record is retried before [Producer.Produce] fails
// it, overriding [kdeliver.DefaultDeliveryTimeout]. The minimum is one
// second. Refused under [kdeliver.AtMostOnce], which never retries.
func WithDeliveryTimeout(d time.Duration) Option {
	return option(func(c *config) {
		c.deliveryTimeout, c.timeoutSet = d, true
		if d == 0 {
			c.Reject("WithDeliveryTimeout(0): pass at least 1s, or leave the option out for the default")
		}
	})
}

// WithKgoOpts passes raw franz-go options to the underlying client. They are
// applied after the semantics' preset, so they can tune anything (linger,
// batch size, compression, SASL, TLS, request timeouts), but after the client
// is built its effective settings are checked against the preset: an option
// that would weaken the guarantee (acks, idempotence, retries, transactional
// ID) or that kgo itself refuses makes [New] fail with an error wrapping
// [kdeliver.ErrInvalidConfig]. Consumer options (topics, groups) are refused
// too (use package consumer), and so is kgo.ManualFlushing, with which Produce
// would never return.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) { c.kgoOpts = append(c.kgoOpts, opts...) })
}

// WithMessageIDs stamps every produced record with a [MessageIDHeader]
// header, overriding the default of adding no header. The ID is unique per
// record and the same on every retry kgo makes, so a consumer can drop
// redelivered copies (package dedup does). A record that already carries the
// header keeps it, so an application that re-sends a failed record re-sends
// it with the same ID. See [MessageIDHeader] for the format.
func WithMessageIDs() Option {
	return option(func(c *config) { c.messageIDs = true })
}
