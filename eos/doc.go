// Package eos runs exactly-once Kafka-to-Kafka pipelines: the transactional
// read-process-write loop of KIP-98 and KIP-447, on franz-go's
// GroupTransactSession, with its abort, fence and rebalance cases handled.
//
//	s, err := eos.New(brokers, "orders-enricher", []string{"orders"}, "orders-enricher-0",
//		eos.WithOutputTopic("orders-enriched"))
//	if err != nil { ... }
//	defer s.Close(context.Background())
//	err = s.Run(ctx, func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
//		emit(&kgo.Record{Key: in.Key, Value: enrich(in.Value)})
//		return nil
//	})
//
// # Choosing semantics
//
// A [Session] is always kdeliver.ExactlyOnce: each input record's output and
// its input offset are committed in one transaction, so after any crash,
// rebalance or retry the output of every input record is visible exactly
// once. This holds only for readers of the output that use read_committed
// isolation (consumer.WithReadCommitted, a consumer.Consumer built with
// kdeliver.ExactlyOnce, or kgo.FetchIsolationLevel(kgo.ReadCommitted())
// on a raw client): a read_uncommitted
// reader also sees the output of aborted transactions, i.e. duplicates.
// Effects outside Kafka (HTTP calls, database writes) are not part of the
// transaction: a handler may run several times for one record, so make them
// idempotent, or use consumer.NewWithGuard (a dedup store skips what was
// done).
//
// Input is read with read_committed, offsets are never committed on a timer,
// the producer is idempotent with acks=all; raw options that contradict this
// are rejected (see [WithKgoOpts]).
//
// # Transactions
//
// [Session.Run] begins a transaction when records arrive and ends it after
// [WithCommitEvery] records or interval, whichever comes first (1000 records
// or 100ms by default), checked before each record: a slow handler ends the
// transaction in the middle of what one poll returned, the handled records'
// offsets are committed and the rest fetched again, so a transaction stays
// well within its timeout whatever the handler's speed. Without
// kdeliver.WithConcurrency, each poll asks for about what the handler gets
// through before the interval ends, at the pace of the transaction so far
// (the first poll, of the last transaction; a Run's first poll asks for
// one record), so that such cuts, and what they fetch again, are rare; and
// when the pace gets through all the client has buffered by a tenth of the
// interval past its end, the poll takes it all and the transaction runs on
// to handle it: the client fetches again only once its buffer is empty, so
// it then fetches the next records while the transaction ends. And while a
// transaction's outputs are flushed, before it commits, the loop polls the
// next transaction's first records (up to what the pace handles in an
// interval), for the same reason: the transaction commits the offsets
// before them, and the next one handles them first. Their offsets are
// committed with the group generation of that poll, so that if the group
// rebalanced since, the broker refuses them and the transaction aborts, as
// after any rebalance; after an abort, their partitions resume at the
// offsets the group has committed. A transaction that still outlives its
// timeout (one record took longer than the timeout) is aborted, logged
// with its slowest record and what to set, and handled again with that
// record first in a transaction of its own,
// where the broker's timer starts only at its output. Outputs and dead
// letters are delivered whatever their timestamps: their delivery timeout
// (the transaction timeout) counts from when they are produced. Ending has
// three outcomes, all handled inside Run:
//
//   - committed: the output and offsets are visible together;
//   - aborted without error, after a rebalance revoked partitions or an
//     abortable commit error (stale generation, coordinator moved): the
//     session rewinds to the committed offsets and handles the records again;
//   - aborted with an error, or any indefinite failure (request timeouts,
//     unknown server errors, lost connections, a failed produce, a
//     transaction older than its timeout): the client is closed and a new one
//     built; its producer initialization bumps the epoch, which fences
//     anything the old producer left in flight (the client-side mitigation of
//     the lost and torn transactions Jepsen found).
//
// # Failures of the handler
//
// A handler error or panic aborts the transaction and, after a backoff
// (kdeliver.WithBackoff: 100 ms doubling to 10 s, as in package consumer),
// handles the same record again, for ever by default. After
// kdeliver.WithMaxAttempts attempts, Run stops with a
// [*kdeliver.HandlerError]; with [WithDeadLetterTopic] the record is copied
// to the dead-letter topic inside the transaction, with the
// kdeliver.HeaderDLQ* headers, and the loop goes on.
//
// # Lifecycle
//
// [New] validates the configuration, listing every problem in one error that
// wraps kdeliver.ErrInvalidConfig; it does not connect. [Session.Run] first
// waits up to the start timeout (kdeliver.WithStartTimeout, 30 s by default)
// for a broker to answer and for the input, output and dead-letter topics to
// exist, failing with an error matching kdeliver.ErrUnreachable or
// kdeliver.ErrTopicNotFound that names what is missing; then it fences
// earlier producers of the transactional ID (so a crashed instance's open
// transaction is aborted at once, not when it times out, and its pending
// offsets do not hold up this one) and joins the group. [Session.Ping] makes
// the same check once.
//
// The lifecycle is the one every kdeliver reader shares (the root package's
// doc says it once). When Run's ctx is cancelled or [Session.Close] is
// called, Run stops at the next record: the handler call in progress
// finishes (its ctx is not cancelled, so the stop waits for it; it is
// cancelled when Close's ctx ends first), the records handled so far are
// committed, and Run returns nil. Records polled but not handled are read
// again by the next owner of their partitions. A Run that returned can be
// called again on the same Session.
//
// [Session.Close] stops Run, leaves the group and closes the client, within
// its ctx: when the ctx ends first, the client is closed at once and Close
// returns the ctx's error (an open transaction is then aborted by the broker
// on its timeout, or by the next instance as it starts). A client still in
// its first group join (which the broker can hold until a dead member's
// session timeout) is closed at once: it has nothing to leave.
//
// # Errors
//
// Run returns only what no retry fixes: an error matching [kdeliver.ErrFenced]
// (another instance owns the transactional ID: exit), a [*kdeliver.HandlerError], an
// error matching kdeliver.ErrUnreachable or kdeliver.ErrTopicNotFound (at
// the start, or an output topic that produces find unknown for the start
// timeout), or an authorization error. Everything else is retried, logged
// (warnings go to slog.Default() unless kdeliver.WithLogger says otherwise),
// and counted ([Session.Stats]); a client replaced after an error is logged
// with the reason.
//
// After an abort, the first record polled from each partition must not be
// below the committed offset it was rewound to (a broker bug once broke this,
// franz-go #1222). If it is, the transaction is aborted, the client replaced,
// and Stats.RewindViolations counts it.
//
// # Tracing
//
// Each transaction is an "eos transaction" span with attributes eos.outcome
// (commit, abort, crash), eos.reason for aborts (rebalance, handler_error,
// produce_error, end_error, txn_timeout, rewind_guard, shutdown,
// handler_failed, fenced) and eos.records, linked to the trace of every input record
// it consumed. Each record is handled inside a kotel process span that is a
// child of the record's trace, and emitted records carry that context on.
//
// # Concurrency
//
// By default the handler is called from Run's goroutine, one record at a
// time, in offset order within each partition.
//
// With kdeliver.WithConcurrency(n, order), up to n handler calls run at
// once on the records of the open transaction, in the order kept by the
// consumer too:
//
//   - kdeliver.ByPartition (the default order): each partition's records
//     one at a time, in offset order; partitions concurrently.
//   - kdeliver.ByKey: the records of one key of a partition one at a time,
//     in offset order; different keys concurrently, even within one
//     partition. A record without a key is a key of its own.
//   - kdeliver.Unordered: any records at once.
//
// A record's outputs are produced, inside the transaction, when its
// handler returns and before the next record of its partition (or key)
// starts, so the outputs of one partition (or key) appear in input order in
// each output partition; records of different lanes interleave. Every rule
// of the sequential loop holds, with these precisions:
//
//   - The transaction still ends after [WithCommitEvery]'s records or
//     interval. At the cut no further record starts and the handlers in
//     flight finish; the offsets committed for each input partition are
//     those of the records handled, which are a prefix of what was polled:
//     with kdeliver.ByKey, a record queued behind its key while a later
//     record of its partition already ran is handled too before the
//     commit. Records not handled are fetched again by the next
//     transaction. Run's stop (ctx cancelled, Close) works the same way.
//   - A handler error, a panic, a crash or an abort stops every start; the
//     calls in flight finish, their outputs are dropped with the aborted
//     transaction, and the records are handled again after the backoff.
//     kdeliver.WithMaxAttempts counts per record, so a record that keeps
//     failing goes to the dead-letter topic (or stops Run) as without
//     concurrency, while the others are handled again, each once in the
//     output.
//   - The record that made a transaction outlive its timeout is handled
//     first in the next transaction, alone: nothing else starts before it
//     returns.
//   - kdeliver.WithMaxInFlight (default max(64, 8 × n)) bounds the records
//     handed to handlers and not finished (running or queued behind their
//     partition or key), each partition its share. A transaction's first
//     poll takes every buffered record, so that all partitions share its
//     record count; what the transaction does not take is fetched again
//     after it commits. WithMaxInFlight without WithConcurrency is refused.
//
// Throughput grows with n while handlers wait (I/O, a remote call): see
// BenchmarkConcurrent in BENCHMARKS.md. With a handler that does not wait
// it costs more than it gains (the records a transaction polled and did
// not take are fetched and decoded again): stay sequential. With kdeliver.ByPartition it is
// bounded by the partitions assigned; use kdeliver.ByKey when there are
// few partitions and many keys.
//
// Run one Session per process and transactional ID; scale out with more
// instances in the same group, each with its own stable transactional ID.
// The handler must not call the Session's methods. [Session.Close] and
// [Session.Stats] may be called from any goroutine.
package eos
