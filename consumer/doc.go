// Package consumer reads a Kafka consumer group and hands each record to a
// [Handler], committing offsets in the order a [kdeliver.Semantics] requires.
//
//	c, err := consumer.New(brokers, "billing", []string{"orders"}, kdeliver.AtLeastOnce)
//	if err != nil {
//		return err // lists every configuration problem
//	}
//	return c.Run(ctx, func(ctx context.Context, rec *kgo.Record) error {
//		return charge(ctx, rec.Value) // nil: done; error: retried
//	})
//
// # Choosing semantics
//
// The handler's return value drives the commit:
//
//   - AtMostOnce: after each poll the batch's offsets are committed, then the
//     handler sees the records. A crash loses the rest of the batch, never
//     repeats a record. A handler error is logged and the record skipped (it
//     is already committed). If the commit itself fails, the batch is dropped
//     unprocessed: it was not committed, so another consumer may receive it,
//     and processing it here could make a second delivery. At-most-once means
//     never twice: only committed records are processed.
//   - AtLeastOnce: the handler runs first; the offsets of records whose
//     handler returned nil are committed after each batch, on revoke and on
//     shutdown. A failing handler is retried with exponential backoff
//     ([WithBackoff], [WithMaxAttempts]) and its offset is never committed
//     while it fails, nor any later offset of its partition. A crash repeats
//     the records processed since the last commit, never loses one. Return
//     [Skip](err) to give up on a record that can never succeed: it is logged
//     and committed past.
//   - ExactlyOnce: refused by [New]. Kafka-to-Kafka exactly-once goes through
//     package eos (eos.Session commits the input offsets in the output
//     transaction); other sinks need package dedup. Until then, use
//     AtLeastOnce with an idempotent handler.
//
// Offsets are never committed on a timer (no auto-commit), and rebalances wait
// until the records in hand are committed (AtMostOnce) or processed and
// committed (AtLeastOnce), so no partition changes owner with records in
// hand. Long retries therefore delay rebalances: keep the backoff maximum well
// below the group's rebalance timeout, or use [WithMaxAttempts].
//
// # Lifecycle
//
// [New] validates everything and builds the client; [Consumer.Run] joins the
// group and blocks. A Consumer runs once. Run stops when its ctx is cancelled
// or [Consumer.Close] is called: it finishes the record in hand (AtMostOnce:
// the rest of the batch, whose offsets are already committed), commits what
// the semantics allows, leaves the group, closes the client and returns nil.
// The handler's ctx is not cancelled by Run's ctx, so the record in hand can
// finish; it is cancelled when Close's ctx ends before Run has returned.
//
// # Errors
//
// [New] returns a [*kdeliver.ConfigError] (wrapping [kdeliver.ErrInvalidConfig])
// that lists every problem at once, including raw kgo options
// ([WithKgoOpts]) that would weaken the semantics: auto-commit, another group,
// another revoke or lost callback, a reset offset that skips records.
// [Consumer.Run] returns nil after a clean stop, a [*HandlerError] when a
// record failed [WithMaxAttempts] times (its offset is not committed), and
// [kdeliver.ErrClosed] when called after Close. A handler panic is recovered
// and becomes an error wrapping [ErrPanic]; it never crashes the process.
// Commit failures are logged, not returned: under AtLeastOnce the next commit
// retries them, under AtMostOnce the batch is dropped.
//
// # Concurrency
//
// The handler runs on Run's goroutine, one record at a time: records of a
// partition in offset order, partitions of a batch one after another. A slow
// or retried record holds up the whole batch. The methods of [Consumer] are
// safe for concurrent use; the handler must not call [Consumer.Close] and
// wait for it (Close waits for Run, which waits for the handler).
//
// # Tracing
//
// Each handler call runs in a "<topic> process" span whose parent is the
// record's "receive" span, itself joined to the producer's "publish" span
// through the traceparent header, so produce, receive and process share one
// trace. The span is in the handler's ctx.
package consumer
