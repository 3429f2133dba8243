package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// Tx produces records inside one transaction of [Producer.Transact]. Its
// methods are safe for concurrent use by goroutines that fn waits for; after
// fn returns they fail with [ErrNotInTransaction].
type Tx struct {
	p     *Producer
	ended atomic.Bool
	mu    sync.Mutex
	err   error // first failed produce

	promise func(*kgo.Record, error) // for ProduceAsync without a callback
}

// Produce writes rec in the transaction and returns once the brokers
// acknowledged it (it becomes visible to read_committed readers only when the
// transaction commits). A failure is a [*DeliveryError], and the transaction
// will abort even if fn returns nil.
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

// ProduceAsync buffers rec in the transaction; done (may be nil) is called
// as for [Producer.ProduceAsync]. [Producer.Transact] waits for every record
// before committing, and aborts if any failed.
func (tx *Tx) ProduceAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) {
	if tx.ended.Load() {
		if done != nil {
			done(rec, ErrNotInTransaction)
		} else {
			tx.p.logFailure(rec, ErrNotInTransaction)
		}
		return
	}
	tx.p.produceAsync(ctx, rec, done, tx)
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
// and topics, or not at all. It needs an [kdeliver.ExactlyOnce] producer
// ([ErrNotTransactional] otherwise).
//
// The transaction commits when fn returns nil and every record produced
// through tx was acknowledged (Transact flushes before committing). It aborts
// when fn returns an error (Transact returns an error wrapping [ErrAborted]
// and fn's error), when a produce failed (wrapping [ErrAborted] and the
// [*DeliveryError]), or when fn panics (Transact aborts and re-panics). When
// the broker refuses the commit as abortable, Transact aborts and returns an
// error wrapping [ErrAborted]: run the transaction again. When the commit's
// outcome is unknown, it aborts what it can and returns [ErrUnconfirmed].
//
// When another producer with the same transactional ID has taken over,
// Transact returns an error wrapping [ErrFenced], and so does every later
// call: close the producer.
//
// ctx bounds fn and the flush. The commit or abort itself is not cancelled by
// ctx, since an interrupted commit leaves the outcome unknown; it is bounded
// by the delivery timeout.
//
// Transact calls run one at a time: a concurrent call waits. fn must not call
// Transact, Flush or Close, and must wait for any goroutine using tx.
func (p *Producer) Transact(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	if p.sem != kdeliver.ExactlyOnce {
		return ErrNotTransactional
	}
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
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.pre.Timeout())
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
		if err := p.abort(endCtx); err != nil {
			return err
		}
		return fmt.Errorf("%w: %w", ErrAborted, ferr)
	}
	return p.commit(endCtx)
}

func (p *Producer) commit(ctx context.Context) error {
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
		return fmt.Errorf("%w: the broker refused the commit: %w", ErrAborted, err)
	case unconfirmed(err):
		if aerr := p.abort(ctx); aerr != nil {
			return fmt.Errorf("%w: %w (abort also failed: %w)", ErrUnconfirmed, err, aerr)
		}
		return fmt.Errorf("%w: %w", ErrUnconfirmed, err)
	}
	return p.setFatal(err)
}

// abort drops buffered records and aborts the open transaction, retrying
// while the outcome is unknown. A non-nil error means the producer is
// unusable (it is recorded as fatal).
func (p *Producer) abort(ctx context.Context) error {
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
// and returns the error every later Transact returns.
func (p *Producer) setFatal(err error) error {
	if isFenced(err) {
		p.fatal = fmt.Errorf("%w (%w)", ErrFenced, err)
	} else {
		p.fatal = fmt.Errorf("kdeliver: transactional producer unusable, close it and create a new one: %w", err)
	}
	return p.fatal
}

func isFenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		strings.Contains(err.Error(), "fatal, unrecoverable")
}

// unconfirmed reports whether an EndTxn error leaves the outcome unknown: the
// request may or may not have reached the coordinator.
func unconfirmed(err error) bool {
	var ne net.Error
	return errors.Is(err, kerr.UnknownServerError) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}
