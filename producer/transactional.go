package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/preset"
)

// ErrNotInTransaction is returned by a [Tx] used after the function of
// [Transactional.Transact] returned: its records would be outside any
// transaction. Class: [kdeliver.Fatal] (a bug in the caller).
var ErrNotInTransaction = errors.New("kdeliver: Tx used after its transaction ended: produce only inside the function passed to Transact")

// Transactional writes records with [kdeliver.ExactlyOnce]: only inside
// transactions ([Transactional.Transact]), whose records become visible to
// read_committed readers all together or not at all. It has no way to write
// outside a transaction. Its methods are safe for concurrent use; Transact
// calls run one at a time.
type Transactional struct {
	*core
	txnID string

	txMu  sync.Mutex // serializes Transact and Close
	fatal error      // guarded by txMu: set when the producer can no longer transact
}

// NewTransactional builds an [kdeliver.ExactlyOnce] producer with the Kafka
// transactional ID transactionalID, which must be unique per running
// producer instance and stable across its restarts (for example the pod name
// plus a shard number): a second producer started with the same ID fences
// the first, whose calls then fail with an error matching
// [kdeliver.ErrFenced].
//
// Settings apply as for [New], with the ExactlyOnce preset: acks=all,
// idempotent, retried until the delivery timeout. Every problem is reported
// at once in one [*kdeliver.ConfigError]; [WithLeaderAck] is refused.
func NewTransactional(brokers []string, transactionalID string, opts ...Option) (*Transactional, error) {
	c := apply(opts)
	var ps preset.Problems
	pre := preset.Producer{Semantics: kdeliver.ExactlyOnce, TransactionalID: transactionalID, LeaderAck: c.leaderAck,
		DeliveryTimeout: c.deliveryTimeout, TxnIDHint: "a non-empty transactionalID to producer.NewTransactional"}
	core, err := build("transactional producer", brokers, pre, c, &ps)
	if err != nil {
		return nil, err
	}
	return &Transactional{core: core, txnID: transactionalID}, nil
}

// Semantics returns [kdeliver.ExactlyOnce].
func (p *Transactional) Semantics() kdeliver.Semantics { return kdeliver.ExactlyOnce }

// Client returns the underlying franz-go client, for what kdeliver does not
// wrap. Records produced through it outside a transaction fail. Do not close
// it: call [Transactional.Close].
func (p *Transactional) Client() *kgo.Client { return p.cl }

// Ping checks that at least one broker answers.
func (p *Transactional) Ping(ctx context.Context) error { return p.ping(ctx) }

// Send writes recs in one transaction ([Transactional.Transact]).
func (p *Transactional) Send(ctx context.Context, recs ...*kgo.Record) error {
	return p.Transact(ctx, func(ctx context.Context, tx *Tx) error { return tx.Send(ctx, recs...) })
}

// Tx produces records inside one transaction of [Transactional.Transact].
// Its methods are safe for concurrent use by goroutines that the function
// waits for; after the function returns they fail with
// [ErrNotInTransaction].
type Tx struct {
	p     *Transactional
	ended atomic.Bool
	mu    sync.Mutex
	err   error // first failed produce

	promise func(*kgo.Record, error) // for ProduceAsync without a callback
}

// Produce writes rec in the transaction and returns once the brokers
// acknowledged it (it becomes visible to read_committed readers only when the
// transaction commits). A failure is a [*kdeliver.DeliveryError], and the
// transaction will abort even if the function returns nil.
func (tx *Tx) Produce(ctx context.Context, rec *kgo.Record) error {
	if tx.ended.Load() {
		return ErrNotInTransaction
	}
	err := tx.p.produceSync(ctx, rec)
	if err != nil {
		tx.fail(err)
	}
	return err
}

// Send writes recs in the transaction and returns once all were
// acknowledged, or with the first failure (the transaction will then abort).
func (tx *Tx) Send(ctx context.Context, recs ...*kgo.Record) error {
	if tx.ended.Load() {
		return ErrNotInTransaction
	}
	return tx.p.sendAll(ctx, recs, tx.fail)
}

// ProduceAsync buffers rec in the transaction; done (may be nil) is called
// as for [Producer.ProduceAsync]. [Transactional.Transact] waits for every
// record before committing, and aborts if any failed.
func (tx *Tx) ProduceAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) {
	if tx.ended.Load() {
		if done != nil {
			done(rec, ErrNotInTransaction)
		} else {
			tx.p.logFailure(rec, ErrNotInTransaction)
		}
		return
	}
	tx.p.produceAsync(ctx, rec, done, tx.fail, tx.promise)
}

func (tx *Tx) onDone(r *kgo.Record, err error) {
	if err := tx.p.settle(r, err); err != nil {
		tx.fail(err)
	}
}

func (tx *Tx) fail(err error) {
	tx.mu.Lock()
	if tx.err == nil {
		tx.err = err
	}
	tx.mu.Unlock()
}

func (tx *Tx) firstErr() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.err
}

// abortRetries bounds how often an abort whose outcome is unknown is retried.
const abortRetries = 10

// Transact runs fn in a Kafka transaction: the records fn produces through tx
// become visible to read_committed readers all together, across partitions
// and topics, or not at all.
//
// The transaction commits when fn returns nil and every record produced
// through tx was acknowledged (Transact flushes before committing). It aborts
// when fn returns an error (Transact returns an error matching
// [kdeliver.ErrAborted] that wraps fn's error), when a produce failed
// (matching ErrAborted and wrapping the [*kdeliver.DeliveryError]), or when
// fn panics (Transact aborts and re-panics). When the broker refuses the
// commit as abortable, Transact aborts and returns an error matching
// ErrAborted: run the transaction again. When the commit's outcome is
// unknown, it aborts what it can and returns an error matching
// [kdeliver.ErrUnconfirmed].
//
// When another producer with the same transactional ID has taken over,
// Transact returns an error matching [kdeliver.ErrFenced], and so does every
// later call: close the producer.
//
// ctx bounds fn and the flush. The commit or abort itself is not cancelled by
// ctx, since an interrupted commit leaves the outcome unknown; it is bounded
// by the delivery timeout.
//
// Transact calls run one at a time: a concurrent call waits. fn must not call
// Transact or Close, and must wait for any goroutine using tx.
func (p *Transactional) Transact(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return kdeliver.ErrClosed
	}
	if p.fatal != nil {
		return p.fatal
	}
	if err := p.cl.BeginTransaction(); err != nil {
		return p.setFatal(err)
	}
	tx := &Tx{p: p}
	tx.promise = tx.onDone
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.timeouts.Timeout())
	defer cancel()

	panicked := true
	defer func() {
		if panicked {
			// A panic in fn: abort and let the panic continue.
			tx.ended.Store(true)
			_ = p.abort(endCtx)
		}
	}()
	ferr := fn(ctx, tx)
	panicked = false
	tx.ended.Store(true)

	if ferr == nil {
		if err := p.cl.Flush(ctx); err != nil {
			ferr = fmt.Errorf("flushing the transaction: %w", err)
		}
	}
	if ferr == nil {
		ferr = tx.firstErr()
	}
	if ferr != nil {
		if errors.Is(ferr, kdeliver.ErrAuthentication) {
			// The brokers refuse the connections: an abort would wait
			// out the delivery timeout to fail the same way. The broker
			// aborts the transaction when it times out.
			return p.setFatal(ferr)
		}
		if err := p.abort(endCtx); err != nil {
			return err
		}
		// A cause no retry fixes (a topic without Write) keeps its
		// class: errors.As finds it before ErrAborted's.
		return fmt.Errorf("%w: %w", kdeliver.ErrAborted, ferr)
	}
	return p.commit(endCtx)
}

func (p *Transactional) commit(ctx context.Context) error {
	err := p.cl.EndTransaction(ctx, kgo.TryCommit)
	switch {
	case err == nil:
		return nil
	case isFenced(err):
		return p.setFatal(err)
	case errors.Is(err, kerr.OperationNotAttempted), errors.Is(err, kerr.TransactionAbortable):
		if aerr := p.abort(ctx); aerr != nil {
			return aerr
		}
		return fmt.Errorf("%w: the broker refused the commit: %w", kdeliver.ErrAborted, err)
	case unconfirmed(err):
		if aerr := p.abort(ctx); aerr != nil {
			return fmt.Errorf("%w: %w (abort also failed: %w)", kdeliver.ErrUnconfirmed, err, aerr)
		}
		return fmt.Errorf("%w: %w", kdeliver.ErrUnconfirmed, err)
	}
	return p.setFatal(err)
}

// abort drops buffered records and aborts the open transaction, retrying
// while the outcome is unknown. A non-nil error means the producer is
// unusable (it is recorded as fatal).
func (p *Transactional) abort(ctx context.Context) error {
	if err := p.cl.AbortBufferedRecords(ctx); err != nil {
		return p.setFatal(err)
	}
	var err error
	for range abortRetries {
		err = p.cl.EndTransaction(ctx, kgo.TryAbort)
		if err == nil || !unconfirmed(err) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return p.setFatal(err)
	}
	return nil
}

// setFatal records err as the reason the producer cannot transact any more
// and returns the error every later Transact returns. A failed
// BeginTransaction means the producer ID is in a fatal state (kgo wraps the
// cause, a fence among them), so every caller of setFatal has such an error.
func (p *Transactional) setFatal(err error) error {
	if ferr := p.scope.Err(err); ferr != nil {
		err = ferr // names the ACL to grant, the credentials to check
	}
	if isFenced(err) {
		p.fatal = fmt.Errorf("%w: another producer with transactional ID %q took over; close this one and exit: %w", kdeliver.ErrFenced, p.txnID, err)
	} else {
		p.fatal = &fatalError{fmt.Errorf("kdeliver: transactional producer unusable, close it and create a new one: %w", err)}
	}
	return p.fatal
}

// fatalError is an error after which the producer cannot transact.
type fatalError struct{ err error }

func (e *fatalError) Error() string         { return e.err.Error() }
func (e *fatalError) Unwrap() error         { return e.err }
func (e *fatalError) Class() kdeliver.Class { return kdeliver.Fatal }

func isFenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch)
}

// unconfirmed reports whether an EndTxn error leaves the outcome unknown: the
// request may or may not have reached the coordinator.
func unconfirmed(err error) bool {
	var ne net.Error
	return errors.Is(err, kerr.UnknownServerError) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// Stats returns the producer's figures (Delivered: written in a
// transaction, committed or not). It is safe to call at any time.
func (p *Transactional) Stats() Stats { return p.stats.load() }

// Close waits for a running [Transactional.Transact], flushes (bounded by
// ctx) and closes the client. Close is safe to call twice; every other method
// returns [kdeliver.ErrClosed] afterwards.
func (p *Transactional) Close(ctx context.Context) error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	p.txMu.Lock()
	defer p.txMu.Unlock()
	err := p.cl.Flush(ctx)
	p.cl.Close()
	p.unreg()
	if err != nil {
		return fmt.Errorf("kdeliver: closing producer: flush interrupted: %w", err)
	}
	return nil
}
