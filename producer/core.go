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
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/fatal"
	"github.com/kdeliver/kdeliver/internal/preset"
)

// core is what a Producer and a Transactional share: the checked client and
// the per-record work around it.
type core struct {
	cl       *kgo.Client
	log      *slog.Logger
	closed   atomic.Bool
	timeouts *deadline.Timeouts // nil under AtMostOnce, which never retries
	shared   deadline.Shared    // record contexts under AtMostOnce
	dropped  func(*kgo.Record, error)
	stats    *deliveries
	unreg    func()      // unregisters the metrics
	scope    fatal.Scope // for the errors no retry fixes

	msgIDs   bool
	idPrefix [16]byte
	idSeq    atomic.Uint64

	// async is the promise made for the last done callback
	// ProduceAsync got ([core.promiseFor]).
	async atomic.Pointer[asyncPromise]
}

// asyncPromise is the promise kgo calls for a record produced with done: it
// settles the record, then calls done.
type asyncPromise struct {
	done    func(*kgo.Record, error)
	promise func(*kgo.Record, error)
}

// promiseFor returns the promise that settles a record and then calls done:
// the same one as long as callers pass the same done (a loop producing with
// one callback), not a new closure a record.
func (p *core) promiseFor(done func(*kgo.Record, error)) func(*kgo.Record, error) {
	if a := p.async.Load(); a != nil && funcID(a.done) == funcID(done) {
		return a.promise
	}
	a := &asyncPromise{done: done}
	a.promise = func(r *kgo.Record, err error) { done(r, p.settle(r, err)) }
	p.async.Store(a)
	return a.promise
}

// funcID identifies a func value. Go cannot compare funcs, but a func value
// is a pointer to its closure (its code and captured variables): two func
// values are the same closure exactly when their IDs are equal, as long as
// both are alive (the cached one is kept alive by the cache).
func funcID(f func(*kgo.Record, error)) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&f))
}

// build validates pre and c and builds the client. Every contradiction is
// listed in one *kdeliver.ConfigError.
func build(what string, brokers []string, pre preset.Producer, c *config, ps *preset.Problems) (*core, error) {
	sem := pre.Semantics
	pre.Validate(ps)
	ps.Add(len(brokers) == 0, `no brokers: pass at least one seed broker address, e.g. "127.0.0.1:9092"`)
	seeds := make([]string, 0, len(brokers))
	for i, b := range brokers {
		if strings.TrimSpace(b) == "" {
			ps.Add(true, fmt.Sprintf("broker %d of %d is blank: remove it or give a host:port", i+1, len(brokers)))
			continue
		}
		seeds = append(seeds, b)
	}
	for _, p := range c.t.Problems {
		ps.Add(true, p)
	}
	if !sem.Valid() {
		return nil, ps.Err(what, sem)
	}

	// Build the client even when problems were found, so that problems
	// with raw options are listed with the others. Whatever is already
	// reported is patched with a stand-in so that kgo does not report it
	// again.
	probe := pre
	if sem == kdeliver.ExactlyOnce && probe.TransactionalID == "" {
		probe.TransactionalID = "kdeliver-probe"
	}
	probe.LeaderAck = probe.LeaderAck && sem == kdeliver.AtMostOnce
	if probe.DeliveryTimeout < time.Second || sem == kdeliver.AtMostOnce {
		probe.DeliveryTimeout = 0
	}
	if len(seeds) == 0 {
		seeds = []string{"127.0.0.1:9092"}
	}
	base, _ := preset.Base(&c.t.Shared, "")
	kopts := append(base, kgo.SeedBrokers(seeds...))
	kopts = append(kopts, probe.Opts()...)
	stats := &deliveries{}
	scope := fatal.Scope{Role: fatal.Producer, Brokers: seeds}
	if sem == kdeliver.ExactlyOnce {
		scope.Role, scope.TxnID = fatal.Transactional, pre.TransactionalID
	}
	var timeouts atomic.Pointer[deadline.Timeouts]
	refused := fatal.ConnWatch(func(err error) {
		// kgo retries a connection whose credentials were refused until
		// the delivery timeout (an idempotent producer: "unable to load
		// producer ID"); fail what it has not sent at once instead.
		if ts := timeouts.Load(); ts != nil {
			ts.Fail(scope.Err(err))
		}
	})
	kopts = append(kopts, kgo.WithHooks(stats, refused))
	cl := preset.Build(kopts, c.kgoOpts, probe.CheckProducerOnly, ps)
	if err := ps.Err(what, sem); err != nil {
		if cl != nil {
			cl.Close()
		}
		return nil, err
	}
	p := &core{cl: cl, log: c.t.Shared.Log(), msgIDs: c.messageIDs, stats: stats, scope: scope}
	p.unreg = stats.observe(c.t.Shared.MeterProvider, p.log, sem)
	if sem != kdeliver.AtMostOnce {
		p.timeouts = deadline.New(pre.Timeout())
		timeouts.Store(p.timeouts)
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

func (p *core) ping(ctx context.Context) error {
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	err := p.cl.Ping(ctx)
	if ferr := p.scope.Err(err); ferr != nil {
		return ferr
	}
	return err
}

func (p *core) produceSync(ctx context.Context, rec *kgo.Record) error {
	p.prepare(ctx, rec)
	return p.settle(rec, p.cl.ProduceSync(ctx, rec).FirstErr())
}

// sendAll produces recs and waits for all of them; the first failure is
// returned (the others are attempted anyway).
func (p *core) sendAll(ctx context.Context, recs []*kgo.Record, fail func(error)) error {
	for _, r := range recs {
		p.prepare(ctx, r)
	}
	var first error
	for i, res := range p.cl.ProduceSync(ctx, recs...) {
		if err := p.settle(recs[i], res.Err); err != nil {
			if fail != nil {
				fail(err)
			}
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// produceAsync produces rec; fail, if not nil, sees each failure before
// done.
func (p *core) produceAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error), fail func(error), promise func(*kgo.Record, error)) {
	p.prepare(ctx, rec)
	switch {
	case done == nil && promise != nil:
		p.cl.Produce(ctx, rec, promise) // allocated once per transaction
	case done == nil:
		p.cl.Produce(ctx, rec, p.dropped)
	case fail == nil:
		p.cl.Produce(ctx, rec, p.promiseFor(done))
	default:
		p.cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
			err = p.settle(r, err)
			if err != nil {
				fail(err)
			}
			done(r, err)
		})
	}
}

// prepare stamps rec's message ID and starts its delivery timeout (under
// AtMostOnce: gives it the shared context that caches its span lookup).
func (p *core) prepare(ctx context.Context, rec *kgo.Record) {
	p.stamp(rec)
	if p.timeouts != nil {
		p.timeouts.Attach(ctx, rec)
	} else {
		p.shared.Attach(ctx, rec)
	}
}

// settle takes every record's outcome from the client: it restores the
// record's Context and turns a failure into a *kdeliver.DeliveryError.
func (p *core) settle(rec *kgo.Record, err error) error {
	if p.timeouts != nil && err != nil {
		err = deadline.Err(rec, err)
	}
	deadline.Detach(rec)
	if err == nil {
		return nil
	}
	if ferr := p.scope.Err(err, rec.Topic); ferr != nil {
		// A missing ACL, refused credentials: kgo does not retry them,
		// and the message says what to grant or fix.
		err = ferr
	}
	return deliveryError(rec, err)
}

func deliveryError(rec *kgo.Record, err error) error {
	if errors.Is(err, kgo.ErrClientClosed) {
		err = fmt.Errorf("%w (%w)", kdeliver.ErrClosed, err)
	}
	return &kdeliver.DeliveryError{Record: rec, Err: err}
}

func (p *core) logFailure(rec *kgo.Record, err error) {
	if err == nil {
		return
	}
	var de *kdeliver.DeliveryError
	if !errors.As(err, &de) {
		err = deliveryError(rec, err)
	}
	p.log.Error("kdeliver: record not delivered", "topic", rec.Topic, "partition", rec.Partition, "err", err)
}

// stamp adds the message ID header unless disabled or already present.
func (p *core) stamp(rec *kgo.Record) {
	if !p.msgIDs {
		return
	}
	for _, h := range rec.Headers {
		if h.Key == kdeliver.HeaderMessageID {
			return
		}
	}
	id := make([]byte, 33)
	copy(id, p.idPrefix[:])
	id[16] = '-'
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], p.idSeq.Add(1))
	hex.Encode(id[17:], seq[:])
	rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: kdeliver.HeaderMessageID, Value: id})
}
