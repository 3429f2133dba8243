package producer

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/preset"
)

// Sender is what a [Producer] and a [Transactional] both do, for code that
// picks the semantics at run time (from a flag, an environment variable,
// YAML) and writes either way: Send returns once every record is as safe
// as the semantics promises, and a Transactional's Send writes the records
// in one transaction.
type Sender interface {
	Send(ctx context.Context, recs ...*kgo.Record) error
	Close(ctx context.Context) error
}

var (
	_ Sender = (*Producer)(nil)
	_ Sender = (*Transactional)(nil)
)

// Producer writes records with the guarantee of [kdeliver.AtMostOnce] or
// [kdeliver.AtLeastOnce]. Exactly-once writes go through a
// [Transactional], which has no way to write outside a transaction. Its
// methods are safe for concurrent use.
type Producer struct {
	*core
	sem kdeliver.Semantics
}

// New builds a producer for sem, [kdeliver.AtMostOnce] or
// [kdeliver.AtLeastOnce], that talks to the seed brokers. (For
// [kdeliver.ExactlyOnce] use [NewTransactional], which needs a
// transactional ID; New refuses it and says so.)
//
// Settings apply in order: kgo's defaults, then sem's preset (see
// [kdeliver.Semantics.Preset]), then opts. Every contradiction is reported at
// once in one [*kdeliver.ConfigError] wrapping [kdeliver.ErrInvalidConfig]:
// an invalid semantics, no or blank brokers, options the semantics refuses,
// a nil option, raw [WithKgoOpts] options that kgo refuses or that would
// weaken the preset (checked on the built client's effective values).
//
// New does not connect: unreachable brokers show up as Produce failing after
// the delivery timeout. Call [Producer.Ping] for a fast check.
func New(brokers []string, sem kdeliver.Semantics, opts ...Option) (*Producer, error) {
	c := apply(opts)
	var ps preset.Problems
	if sem == kdeliver.ExactlyOnce {
		ps.Add(true, "ExactlyOnce writes only inside transactions: use producer.NewTransactional(brokers, transactionalID) instead of producer.New")
		for _, p := range c.t.Problems {
			ps.Add(true, p)
		}
		return nil, ps.Err("producer", sem)
	}
	pre := preset.Producer{Semantics: sem, LeaderAck: c.leaderAck, DeliveryTimeout: c.deliveryTimeout}
	core, err := build("producer", brokers, pre, c, &ps)
	if err != nil {
		return nil, err
	}
	return &Producer{core: core, sem: sem}, nil
}

// Semantics returns the semantics the producer was built with.
func (p *Producer) Semantics() kdeliver.Semantics { return p.sem }

// Client returns the underlying franz-go client, for what kdeliver does not
// wrap (metadata, admin requests, ...). Records produced through it bypass
// kdeliver entirely: no message IDs, no delivery timeout. The client still
// carries the checked preset, so acks and idempotence hold, but do not close
// it: call [Producer.Close].
func (p *Producer) Client() *kgo.Client { return p.cl }

// Ping checks that at least one broker answers, so a misconfigured address
// fails fast instead of after the delivery timeout.
func (p *Producer) Ping(ctx context.Context) error { return p.ping(ctx) }

// Produce writes rec and returns once it is as safe as the semantics
// promises: under [kdeliver.AtMostOnce], once written to the connection
// (acks=0) or acknowledged by the partition leader ([WithLeaderAck]); under
// [kdeliver.AtLeastOnce], once acknowledged by all in-sync replicas. A failure
// is a [*kdeliver.DeliveryError].
//
// ctx cancels a record still waiting in the client's buffer; once sent, a
// record waits for its response (bounded by the delivery timeout, counted
// from this call), because failing it earlier could not tell whether it was
// written.
func (p *Producer) Produce(ctx context.Context, rec *kgo.Record) error {
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	return p.produceSync(ctx, rec)
}

// Send writes recs and returns once all of them are as safe as the
// semantics promises (see [Producer.Produce]), or with the first failure, a
// [*kdeliver.DeliveryError], once all have their outcome.
func (p *Producer) Send(ctx context.Context, recs ...*kgo.Record) error {
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	return p.sendAll(ctx, recs, nil)
}

// ProduceAsync buffers rec and returns; done is called with rec and nil once
// rec is as safe as the semantics promises (see [Producer.Produce]), or with
// a [*kdeliver.DeliveryError] ([kdeliver.ErrClosed] after Close: then done
// runs before ProduceAsync returns). done may be nil: failures are then
// logged (see [kdeliver.WithLogger]) and otherwise lost, so pass a callback
// when they matter.
//
// Callbacks run one at a time on a goroutine of the client, in produce order
// per partition. They must be quick and must not block or call
// [Producer.Flush], [Producer.Close] or [Producer.Produce]: that deadlocks
// the client. Start a goroutine instead.
func (p *Producer) ProduceAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) {
	if p.closed.Load() {
		err := deliveryError(rec, kdeliver.ErrClosed)
		if done != nil {
			done(rec, err)
		} else {
			p.logFailure(rec, err)
		}
		return
	}
	p.produceAsync(ctx, rec, done, nil, nil)
}

// Flush waits until every record produced so far has its outcome, or ctx ends.
func (p *Producer) Flush(ctx context.Context) error {
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	return p.cl.Flush(ctx)
}

// Stats returns the producer's figures. It is safe to call at any time.
func (p *Producer) Stats() Stats { return p.stats.load() }

// Close flushes buffered records (bounded by ctx) and closes the client.
// Records still unacknowledged when ctx ends fail with [kdeliver.ErrClosed]
// and Close returns ctx's error. Close is safe to call twice (the second
// call returns nil at once); every other method returns [kdeliver.ErrClosed]
// afterwards.
func (p *Producer) Close(ctx context.Context) error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := p.cl.Flush(ctx)
	p.cl.Close()
	p.unreg()
	if err != nil {
		return fmt.Errorf("kdeliver: closing producer: flush interrupted, unacknowledged records failed: %w", err)
	}
	return nil
}
