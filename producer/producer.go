package producer

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/preset"
)

// MessageIDHeader is the record header [WithMessageIDs] adds. Its value is
// 33 ASCII bytes: 16 lowercase hex digits naming the producer instance
// (random, drawn when [New] runs), a hyphen, and 16 hex digits counting the
// records that instance stamped, e.g. "9f1c2b3a4d5e6f70-000000000000002a".
// Treat it as an opaque string that is unique per record.
const MessageIDHeader = "kdeliver-message-id"

// Producer writes records with the guarantee of one [kdeliver.Semantics].
// Its methods are safe for concurrent use, except that [Producer.Transact]
// calls run one at a time (a second one waits for the first).
type Producer struct {
	cl       *kgo.Client
	sem      kdeliver.Semantics
	pre      preset.Producer
	log      *slog.Logger
	closed   atomic.Bool
	dropped  func(*kgo.Record, error) // promise of ProduceAsync without a callback
	timeouts *deadline.Timeouts       // nil under AtMostOnce, which never retries

	msgIDs   bool
	idPrefix [16]byte
	idSeq    atomic.Uint64

	txMu  sync.Mutex // serializes Transact and Close
	fatal error      // guarded by txMu: set when the producer can no longer transact
}

// New builds a producer for sem that talks to the seed brokers.
//
// Settings apply in order: kgo's defaults, then sem's preset (see
// [kdeliver.Semantics.Preset]), then opts. Every contradiction is reported at
// once in one [*kdeliver.ConfigError] wrapping [kdeliver.ErrInvalidConfig]:
// an invalid semantics, no or blank brokers, [kdeliver.ExactlyOnce] without
// [WithTransactionalID], options the semantics refuses, raw [WithKgoOpts]
// options that kgo refuses or that would weaken the preset (checked on the
// built client's effective values), and options of other packages.
//
// New does not connect: unreachable brokers show up as Produce failing after
// the delivery timeout. Call [Producer.Ping] for a fast check.
func New(brokers []string, sem kdeliver.Semantics, opts ...Option) (*Producer, error) {
	var c config
	for _, o := range opts {
		if o == nil {
			c.Reject("a nil option was passed: remove it")
			continue
		}
		o.Apply(&c)
	}
	pre := preset.Producer{Semantics: sem, TransactionalID: c.txnID, LeaderAck: c.leaderAck, DeliveryTimeout: c.deliveryTimeout}

	var ps kdeliver.Problems
	pre.Validate(&ps)
	ps.Add(len(brokers) == 0, `no brokers: pass at least one seed broker address, e.g. "127.0.0.1:9092"`)
	seeds := make([]string, 0, len(brokers))
	for i, b := range brokers {
		if strings.TrimSpace(b) == "" {
			ps.Add(true, fmt.Sprintf("broker %d of %d is blank: remove it or give a host:port", i+1, len(brokers)))
			continue
		}
		seeds = append(seeds, b)
	}
	for _, p := range c.problems {
		ps.Add(true, p)
	}
	if !sem.Valid() {
		return nil, ps.Err("producer", sem)
	}

	// Build the client even when problems were found, so that problems
	// with raw options are listed with the others. Whatever is already
	// reported is patched with a stand-in so that kgo does not report it
	// again.
	probe := pre
	if sem == kdeliver.ExactlyOnce && probe.TransactionalID == "" {
		probe.TransactionalID = "kdeliver-probe"
	}
	if sem != kdeliver.ExactlyOnce {
		probe.TransactionalID = ""
	}
	probe.LeaderAck = probe.LeaderAck && sem == kdeliver.AtMostOnce
	if probe.DeliveryTimeout < time.Second || sem == kdeliver.AtMostOnce {
		probe.DeliveryTimeout = 0
	}
	if len(seeds) == 0 {
		seeds = []string{"127.0.0.1:9092"}
	}
	base, _ := preset.Base(&c.shared, "")
	kopts := append(base, kgo.SeedBrokers(seeds...))
	kopts = append(kopts, probe.Opts()...)
	cl := preset.Build(kopts, c.kgoOpts, probe.CheckProducerOnly, &ps)
	if err := ps.Err("producer", sem); err != nil {
		if cl != nil {
			cl.Close()
		}
		return nil, err
	}

	p := &Producer{cl: cl, sem: sem, pre: pre, log: c.shared.Log(), msgIDs: c.messageIDs}
	if sem != kdeliver.AtMostOnce {
		p.timeouts = deadline.New(pre.Timeout())
	}
	p.dropped = func(r *kgo.Record, err error) {
		if err := p.settle(r, err); err != nil {
			p.logFailure(r, err)
		}
	}
	if p.msgIDs {
		var b [8]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		hex.Encode(p.idPrefix[:], b[:])
	}
	return p, nil
}

// Semantics returns the semantics the producer was built with.
func (p *Producer) Semantics() kdeliver.Semantics { return p.sem }

// Client returns the underlying franz-go client, for what kdeliver does not
// wrap (metadata, admin requests, ...). Records produced through it bypass
// kdeliver entirely: no message IDs, no transaction bookkeeping, and under
// ExactlyOnce a record produced outside [Producer.Transact] fails. The client
// still carries the checked preset, so acks and idempotence hold, but do not
// close it: call [Producer.Close].
func (p *Producer) Client() *kgo.Client { return p.cl }

// Ping checks that at least one broker answers, so a misconfigured address
// fails fast instead of after the delivery timeout.
func (p *Producer) Ping(ctx context.Context) error {
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	return p.cl.Ping(ctx)
}

// Produce writes rec and returns once it is as safe as the semantics
// promises: under [kdeliver.AtMostOnce], once written to the connection
// (acks=0) or acknowledged by the partition leader ([WithLeaderAck]); under
// [kdeliver.AtLeastOnce], once acknowledged by all in-sync replicas. A failure
// is a [*DeliveryError]. Under [kdeliver.ExactlyOnce] it fails with
// [ErrNotInTransaction]: use [Tx.Produce] inside [Producer.Transact].
//
// ctx cancels a record still waiting in the client's buffer; once sent, a
// record waits for its response (bounded by the delivery timeout), because
// failing it earlier could not tell whether it was written.
func (p *Producer) Produce(ctx context.Context, rec *kgo.Record) error {
	if err := p.usable(); err != nil {
		return err
	}
	return p.produceSync(ctx, rec)
}

// ProduceAsync buffers rec and returns; done is called with rec and nil once
// rec is as safe as the semantics promises (see [Producer.Produce]), or with a
// [*DeliveryError] ([kdeliver.ErrClosed] after Close, [ErrNotInTransaction]
// under ExactlyOnce: then done runs before ProduceAsync returns). done may be
// nil: failures are then logged (see
// [kdeliver.WithLogger]) and otherwise lost, so pass a callback when they
// matter.
//
// Callbacks run one at a time on a goroutine of the client, in produce order
// per partition. They must be quick and must not block or call
// [Producer.Flush], [Producer.Close], [Producer.Produce] or
// [Producer.Transact]: that deadlocks the client. Start a goroutine instead.
func (p *Producer) ProduceAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) {
	if err := p.usable(); err != nil {
		if done != nil {
			done(rec, err)
		} else {
			p.logFailure(rec, err)
		}
		return
	}
	p.produceAsync(ctx, rec, done, nil)
}

// Flush waits until every record produced so far has its outcome, or ctx ends.
func (p *Producer) Flush(ctx context.Context) error {
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	return p.cl.Flush(ctx)
}

// Close waits for a running [Producer.Transact], flushes buffered records
// (bounded by ctx), and closes the client. Records still unacknowledged when
// ctx ends fail with [kdeliver.ErrClosed] and Close returns ctx's error. Close
// is safe to call twice (the second call returns nil at once); every other
// method returns [kdeliver.ErrClosed] afterwards.
func (p *Producer) Close(ctx context.Context) error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	p.txMu.Lock()
	defer p.txMu.Unlock()
	err := p.cl.Flush(ctx)
	p.cl.Close()
	if err != nil {
		return fmt.Errorf("kdeliver: closing producer: flush interrupted, unacknowledged records failed: %w", err)
	}
	return nil
}

func (p *Producer) usable() error {
	switch {
	case p.closed.Load():
		return kdeliver.ErrClosed
	case p.sem == kdeliver.ExactlyOnce:
		return ErrNotInTransaction
	}
	return nil
}

func (p *Producer) produceSync(ctx context.Context, rec *kgo.Record) error {
	p.prepare(ctx, rec)
	return p.settle(rec, p.cl.ProduceSync(ctx, rec).FirstErr())
}

// prepare stamps rec's message ID and starts its delivery timeout.
func (p *Producer) prepare(ctx context.Context, rec *kgo.Record) {
	p.stamp(rec)
	if p.timeouts != nil {
		p.timeouts.Attach(ctx, rec)
	}
}

// settle takes every record's outcome from the client: it restores the
// record's Context and turns a failure into a *DeliveryError.
func (p *Producer) settle(rec *kgo.Record, err error) error {
	if p.timeouts != nil {
		if err != nil {
			err = deadline.Err(rec, err)
		}
		deadline.Detach(rec)
	}
	if err == nil {
		return nil
	}
	return p.deliveryError(rec, err)
}

// produceAsync produces rec; tx, if not nil, sees each failure before done.
func (p *Producer) produceAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error), tx *Tx) {
	p.prepare(ctx, rec)
	switch {
	case done == nil && tx == nil:
		p.cl.Produce(ctx, rec, p.dropped)
	case done == nil:
		p.cl.Produce(ctx, rec, tx.promise) // allocated once per transaction
	default:
		p.cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
			err = p.settle(r, err)
			if err != nil && tx != nil {
				tx.fail(err)
			}
			done(r, err)
		})
	}
}

func (p *Producer) deliveryError(rec *kgo.Record, err error) error {
	if errors.Is(err, kgo.ErrClientClosed) {
		err = fmt.Errorf("%w (%w)", kdeliver.ErrClosed, err)
	}
	return &DeliveryError{Record: rec, Err: err}
}

func (p *Producer) logFailure(rec *kgo.Record, err error) {
	if err == nil {
		return
	}
	var de *DeliveryError
	if !errors.As(err, &de) {
		err = p.deliveryError(rec, err)
	}
	p.log.Error("kdeliver: record not delivered", "topic", rec.Topic, "partition", rec.Partition, "err", err)
}

// stamp adds the message ID header unless disabled or already present.
func (p *Producer) stamp(rec *kgo.Record) {
	if !p.msgIDs {
		return
	}
	for _, h := range rec.Headers {
		if h.Key == MessageIDHeader {
			return
		}
	}
	id := make([]byte, 33)
	copy(id, p.idPrefix[:])
	id[16] = '-'
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], p.idSeq.Add(1))
	hex.Encode(id[17:], seq[:])
	rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: MessageIDHeader, Value: id})
}
