package producer

import (
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// Option configures a [Producer] or a [Transactional]. The root package's
// options ([kdeliver.WithLogger], [kdeliver.WithClientID],
// [kdeliver.WithTracerProvider], [kdeliver.WithMeterProvider]) are Options
// too; an option of another package is not, and does not compile here.
type Option interface {
	ApplyProducer(*shared.Target)
}

type option func(*config)

// ApplyProducer applies the option; [New] and [NewTransactional] call it.
func (o option) ApplyProducer(t *shared.Target) { o(t.Pkg.(*config)) }

type config struct {
	t *shared.Target

	leaderAck       bool
	deliveryTimeout time.Duration
	kgoOpts         []kgo.Opt
	messageIDs      bool
}

func (c *config) reject(p string) { c.t.Reject(p) }

// apply applies opts to a new configuration.
func apply(opts []Option) *config {
	t := &shared.Target{}
	c := &config{t: t}
	t.Pkg = c
	for i, o := range opts {
		if o == nil {
			c.reject(fmt.Sprintf("option %d of %d is nil: remove it", i+1, len(opts)))
			continue
		}
		o.ApplyProducer(t)
	}
	t.Finish()
	return c
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
// transactional record is retried before it fails, counted from when it was
// handed to the producer (not from its Timestamp), overriding
// [kdeliver.DefaultDeliveryTimeout]. The minimum is one second. Refused
// under [kdeliver.AtMostOnce], which never retries.
func WithDeliveryTimeout(d time.Duration) Option {
	return option(func(c *config) {
		if d == 0 {
			c.reject("WithDeliveryTimeout(0): pass at least 1s, or leave the option out for the default")
			return
		}
		c.deliveryTimeout = d
	})
}

// WithKgoOpts passes raw franz-go options to the underlying client. They are
// applied after the semantics' preset, so they can tune anything (linger,
// batch size, compression, SASL, TLS, request timeouts), but the built
// client's effective settings are checked against the preset: an option that
// would weaken the guarantee (acks, idempotence, retries, in-flight
// requests, transactional ID, kgo.RecordDeliveryTimeout) or that kgo itself
// refuses makes the constructor fail with an error wrapping
// [kdeliver.ErrInvalidConfig] that names it. Consumer options (topics,
// groups) are refused too, and so is kgo.ManualFlushing, with which Produce
// would never return.
func WithKgoOpts(opts ...kgo.Opt) Option {
	return option(func(c *config) { c.kgoOpts = append(c.kgoOpts, opts...) })
}

// WithMessageIDs stamps every produced record with a
// [kdeliver.HeaderMessageID] header, overriding the default of adding no
// header. The ID is unique per record and the same on every retry kgo makes,
// so a consumer can drop redelivered copies (package dedup does). A record
// that already carries the header keeps it, so an application that re-sends
// a failed record re-sends it with the same ID.
func WithMessageIDs() Option {
	return option(func(c *config) { c.messageIDs = true })
}
