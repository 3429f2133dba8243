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
//   - AtMostOnce ([New]): after each poll the batch's offsets are committed,
//     then the handler sees the records. A crash loses the rest of the batch,
//     never repeats a record. A handler error is logged and the record
//     skipped (it is already committed). If the commit itself fails, the
//     batch is dropped unprocessed: it was not committed, so another consumer
//     may receive it, and processing it here could make a second delivery.
//     At-most-once means never twice: only committed records are processed.
//
//   - AtLeastOnce ([New]): the handler runs first; the offsets of records
//     whose handler returned nil are committed every commit interval
//     ([WithCommitInterval], 1 s; an idle consumer too), on
//     revoke and on shutdown. A failing handler is retried with exponential backoff
//     ([kdeliver.WithBackoff], [kdeliver.WithMaxAttempts]) and its offset is
//     never committed while it fails, nor any later offset of its partition.
//     A crash repeats the records processed since the last commit (up to
//     an interval's worth and the poll in hand), never loses one. Return [Skip](err) to give up on a record that can never
//     succeed: it is logged and committed past.
//
//   - ExactlyOnce: the effect of each record happens once. What ties the
//     effect to the offsets is a required argument of the constructor ([New]
//     refuses ExactlyOnce and names these). Input is read with
//     read_committed, so records of aborted Kafka transactions are never
//     seen. For Kafka-to-Kafka use eos.Session instead, which commits the
//     offsets in the output transaction.
//
//     [NewWithSink](brokers, group, topics, sink): a [Sink] (pgstore.Sink for
//     PostgreSQL) writes each partition's batch and the offset after it in
//     one transaction of its own database, and [SinkConsumer.Run] takes no
//     handler. On assignment each partition starts at the offset stored in
//     the sink (where the sink has none: at the group's Kafka commit, else
//     the earliest record); nothing is committed to Kafka. A record is in
//     the sink once whatever crashes, with no window, no TTL and no dedup
//     table: a crash before the sink's commit writes nothing, after it the
//     partition resumes past the batch. Each assignment claims the partition
//     with a new epoch, so a member that lost a partition without noticing
//     is refused by the sink (an error matching [kdeliver.ErrFenced]) and
//     its records are dropped (logged), not written twice; the owner reads
//     them from the sink's offset. A failing Write is retried with backoff
//     like a handler; there is no [Skip], since skipping a batch would lose
//     it. Holds only if every write to the sink's database that belongs to a
//     record happens in Write's transaction. It is once per record of the
//     log: a message that a producer sent twice is two records (the guard
//     below, keyed by message ID, catches that). Package consumer/sinktest
//     checks a Sink of your own.
//
//     [NewWithGuard](brokers, group, topics, guard): each record's handler
//     runs inside a [dedup.Guard] ([dedup.Guard.Handler]), which reserves the
//     record's key in a store (memory, Redis, PostgreSQL), runs the handler
//     and marks the key done only when it returned nil; offsets are
//     committed to Kafka after processing, as under AtLeastOnce, and the
//     records that a crash or rebalance delivers again are skipped by the
//     guard, as are copies of a message with the same message ID
//     ([dedup.DefaultKey]). It works for any side effect (an HTTP call, an
//     email, a row). It is exactly once within these limits: (1) a process
//     that dies after the side effect and before the guard's mark runs the
//     side effect again, once the key's lease expires; the handler closes
//     that window when the side effect is a transaction in the store's own
//     database: [dedup.ConfirmInTx] gives the key to mark in that
//     transaction (pgstore.Store.ConfirmTx, redisstore.Store.ConfirmTx). (2)
//     A side effect that outlives the lease ([dedup.WithLease]) can run
//     twice. (3) A key is remembered for the TTL ([dedup.WithTTL]), and by
//     the memory store only within one process and while not evicted. (4)
//     If the mark cannot be written after the side effect (the store is down
//     longer than the lease), the record is retried and runs again. A record
//     whose key is held by a crashed consumer waits for the lease, and holds
//     up rebalances meanwhile: keep the lease well below the group's
//     rebalance timeout. A record without a key (a [dedup.WithKey] function
//     returned "") stops Run with a [*kdeliver.HandlerError] wrapping
//     [dedup.ErrNoKey].
//
// The sequential consumer commits only between polls (no auto-commit), and
// its rebalances wait until the records in hand are committed (AtMostOnce),
// processed and committed (AtLeastOnce, a guard) or written to the sink, so
// no partition changes owner with records in hand. Long retries therefore
// delay its rebalances: keep the backoff maximum well below the group's
// rebalance timeout, or use [kdeliver.WithMaxAttempts]. A concurrent
// consumer commits on an interval and bounds the wait of a rebalance (see
// Concurrency).
//
// # Lifecycle
//
// The lifecycle is the one every kdeliver reader shares (the root package's
// doc says it once): the constructors connect to nothing; [Consumer.Run]
// waits up to the start timeout for the brokers and topics, joins, and
// blocks until its ctx is cancelled, [Consumer.Close] is called or a record
// keeps failing; it then finishes the record in hand (AtMostOnce: the rest
// of the batch, whose offsets are already committed), commits what the
// semantics allows (up to 30 s), leaves the group (up to 5 s: a leave waits
// for a group join in flight, and past the bound the client closes without
// it), closes its client and returns nil. Run may be called again; each
// Run builds its client. [Consumer.Close] is final and keeps to its ctx.
//
// # Errors
//
// The constructors return a [*kdeliver.ConfigError] (wrapping
// [kdeliver.ErrInvalidConfig]) that lists every problem at once, including
// raw kgo options ([WithKgoOpts]) that would weaken the semantics:
// auto-commit, another group, another revoke or lost callback, a start or
// reset offset. Run returns nil after a clean stop; an error matching
// [kdeliver.ErrUnreachable] or [kdeliver.ErrTopicNotFound] when the brokers
// or a topic are not there within the start timeout; a
// [*kdeliver.HandlerError] when a record (or a sink write) failed
// [kdeliver.WithMaxAttempts] times (its offset is not committed); and
// [kdeliver.ErrClosed] after Close. A handler panic is recovered and
// becomes an error matching [kdeliver.ErrPanic]; it never crashes the
// process. Commit failures are logged, not returned: under AtLeastOnce the
// next commit retries them, under AtMostOnce the batch is dropped. A sink's
// fence is logged and the partition's records dropped; its other errors
// (dedup.ErrStore when its database is down) are retried like a failing
// handler.
//
// # Concurrency
//
// Without [kdeliver.WithConcurrency] (and without a dead-letter topic or
// [Consumer.RunBatch]) the handler runs on Run's goroutine, one record at a
// time: records of a partition in offset order, partitions of a batch one
// after another, and the offsets are committed between polls, or while it
// waits for records, once a commit interval has passed. A slow or retried
// record holds up the whole batch.
//
// kdeliver.WithConcurrency(n, order) runs up to n handlers at once in the
// order's lanes; each lane runs one record at a time, in offset order:
//
//	| order                | lane                      | kept in order                        |
//	|----------------------|---------------------------|--------------------------------------|
//	| kdeliver.ByPartition | a partition               | each partition's records             |
//	| kdeliver.ByKey       | a key of a partition      | each key's records (a nil key: none) |
//	| kdeliver.Unordered   | none                      | nothing                              |
//
// Whatever the order, a partition's committed offset never passes a record
// whose handler has not succeeded (or been skipped or dead-lettered),
// however many records after it finished: commits are gap-free. They are
// made every commit interval ([WithCommitInterval], 1 s), when partitions
// are revoked and when Run stops, not after each poll. After a crash the
// group therefore delivers again the records finished since the last
// commit (up to an interval's worth) plus those that were in flight; under
// ByKey and Unordered that includes records that finished after a slow one
// and before the crash. Under AtMostOnce each poll's records are committed
// before they are handed over, as without concurrency: a crash loses the
// records polled and not yet handled (in flight or waiting in a backlog,
// see below) and repeats none.
//
// The records in the lanes (running or queued behind a running one) are
// bounded ([kdeliver.WithMaxInFlight], by default max(64, 8n)); under
// ByPartition (and for batches) each partition gets at most its share of
// the bound, bound/n, so one slow partition cannot hold the bound from the
// others. A poll's records of a partition wait in that partition's backlog
// until the lanes have room, and a partition with a backlog is paused
// (kgo.Client.PauseFetchPartitions) until its backlog is below its share:
// what is held in memory is at most, per partition, its share plus one
// poll ([WithMaxPollRecords]), never an unbounded buffer.
//
// Rebalances use kgo's cooperative-sticky balancer: only the partitions
// that move are revoked. Their records waiting in a backlog or queued
// behind a running record of their lane are dropped (and, under
// ByPartition, the rest of a partition's run once its record in hand
// finishes); their records running or ready to run get up to the revoke
// timeout ([WithRevokeTimeout], 10 s) to finish, and their finished prefix is committed before the rebalance goes
// on; the rest is delivered to the new owner. The other
// partitions' handlers keep running, though no new records are polled
// until the rebalance is done. The revoke timeout is the longest a stuck
// handler holds the group's rebalance; a handler still running after it is
// not waited for, and its record's offset is never committed by this
// consumer (the new owner handles it again).
//
// A failing record is retried with the backoff in its own lane (its
// handler's worker waits; the other lanes go on), and the later records of
// its lane wait behind it. After [kdeliver.WithMaxAttempts] attempts, with
// [WithDeadLetterTopic], it is produced to the dead-letter topic with the
// headers eos uses ([kdeliver.HeaderDLQTopic], partition, offset, attempts,
// error, first failure) and its own key, value, headers and timestamp,
// acknowledged by all in-sync replicas before the record counts as done: its
// offset never commits before the dead letter is durable. A dead-letter
// write that fails is retried with the backoff and holds back the commit of
// that partition only. Without a dead-letter topic Run stops with a
// [*kdeliver.HandlerError] once the records in flight finished, committing
// the finished prefix, which ends before the failing record.
//
// [Consumer.RunBatch] hands a [BatchHandler] consecutive records of one
// partition, in offset order, up to the partition's share of the in-flight
// bound; batches of one partition run one at a
// time, batches of different partitions concurrently, up to n. A batch is
// done (and its offsets committable) when the handler returns nil, or
// [Skip]; an error retries the whole batch with the backoff.
//
// A [SinkConsumer] stays sequential: its offsets live in the sink, written
// in one sink transaction per partition batch, in offset order, so it
// refuses WithConcurrency. It calls the sink's Write once per partition of a
// batch, one after another, and its Assign (from kgo's group goroutine) and
// Revoke between batches.
//
// The methods of [Consumer] and [SinkConsumer] are safe for concurrent use.
// A handler given to a concurrent consumer must be safe for concurrent use
// (a guard's is); it must not call Close and wait for it (Close waits for
// Run, which waits for the handler).
//
// # Tracing
//
// Each handler call runs in a "<topic> process" span whose parent is the
// record's "receive" span, itself joined to the producer's "publish" span
// through the traceparent header, so produce, receive and process share one
// trace. The span is in the handler's ctx. A [SinkConsumer] has no handler
// and no "process" span; the "receive" spans remain.
package consumer
