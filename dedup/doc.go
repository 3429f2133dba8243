// Package dedup makes the effect of each Kafka record happen once in a sink
// outside Kafka, in one of two ways.
//
// # Choosing a way
//
// A dedup [Store] with a [Guard], given to consumer.NewWithGuard: the
// consumer commits after processing and
// redelivers after a crash or rebalance, and the guard skips the records
// whose side effect is done. It works for any side effect (an HTTP
// call, an email, a row), and keeps at-least-once: a side effect that fails
// is never marked, so its record runs again. Stores: [NewMemory] (one
// process), redisstore (Redis), pgstore (PostgreSQL). Keys expire after a
// TTL.
//
// A consumer.Sink (the protocol is package consumer's; pgstore.Sink is one
// for PostgreSQL): the side effects and the consumer's offsets commit in one
// transaction of the sink's database. No dedup
// table grows, no window is left between side effect and mark, and a member
// that lost its partition is fenced. Use it when the side effect is a write
// to that database; consumer.NewWithSink drives it.
//
// # Keys
//
// A record's key is its message ID, the kdeliver.HeaderMessageID header
// ("kdeliver-message-id") that producer.WithMessageIDs() stamps, which also
// catches a message the producer sent twice; or, without one, its
// topic/partition/offset ([Position]), which catches redelivery only. See
// [DefaultKey] and [WithKey].
//
// # Guarantee and its limits
//
// [Guard.Do] reserves the key with a lease, runs the side effect, then
// confirms; a failure releases the key. Two limits remain, both documented
// on Guard: a side effect that outlives its lease may run twice, and a crash
// between the side effect and Confirm runs it again after the lease. Where
// the side effect lives in the store's own database, [Guard.DoTx] with the
// store's ConfirmTx removes the second ([ConfirmInTx] in a handler run by
// [Guard.Handler] or consumer.NewWithGuard). The memory store forgets on restart
// and on eviction.
//
// # Errors
//
// [ErrStore] wraps failures of the store's server: nothing was marked and
// the side effect did not run; retry later. A sink's fencing error matches
// kdeliver.ErrFenced (see consumer.Sink). [ErrNoKey] means a record has no
// key. Configuration errors wrap kdeliver.ErrInvalidConfig.
//
// # Concurrency
//
// Stores, guards and sinks are safe for concurrent use. A Guard never runs
// two side effects for one key at once: the second caller waits while the
// first holds the lease. The package dedup/storetest checks any Store for
// these rules.
package dedup
