// Package kdeliver makes Kafka's delivery guarantees a single, checked choice.
//
// Application code picks a [Semantics] ([AtMostOnce], [AtLeastOnce] or
// [ExactlyOnce]) and the SDK sets everything that choice implies on both ends,
// refusing anything that would break it:
//
//   - package producer: acks, retries, idempotence, in-flight limits;
//     exactly-once writes go through producer.NewTransactional, which has no
//     way to write outside a transaction;
//   - package consumer: commit order (before or after processing), isolation,
//     retries of a failing handler; exactly once through a dedup guard
//     (consumer.NewWithGuard) or a sink that stores the offsets with its
//     writes (consumer.NewWithSink), each a required argument;
//   - package eos: the transactional read-process-write loop (consume,
//     process, produce and commit offsets in one transaction);
//   - package share: a share group (KIP-932, a queue: more consumers than
//     partitions, each record acknowledged on its own) with the at-most-once
//     and at-least-once presets, and each side effect once through a guard;
//   - package dedup: the store and guard that make a side effect outside
//     Kafka happen once;
//   - package kdelivertest: an embedded cluster, seeding, an exact
//     read_committed reader and an audit, for tests of code that uses
//     kdeliver.
//
// # Choosing semantics
//
// [AtMostOnce] never duplicates and may lose records on failure: metrics,
// telemetry, anything where a gap is cheaper than a repeat. [AtLeastOnce]
// never loses an acknowledged record and may duplicate on failure: the default
// choice for idempotent handlers. [ExactlyOnce] neither loses nor duplicates,
// within Kafka (package eos) or into a sink that takes part in the guarantee
// (package dedup, consumer.NewWithSink). Where the guarantee ends is part of
// its documentation: see [Semantics.Preset] and `kdeliver explain`.
//
// A Semantics read from configuration (a flag with flag.TextVar, an
// environment variable, YAML) builds both ends: producer.New and consumer.New
// take it for the first two, and code that may get [ExactlyOnce] builds the
// transactional producer and the guarded consumer instead (examples/fromflag
// does); producer.Sender covers both kinds of producer.
//
// # Options
//
// Each package has an Option type of its own, and an option of one package
// passed to another's constructor does not compile. The options of this
// package work in every package where they apply: an [Option] (logger,
// client ID, tracing and metrics) everywhere, a [HandlerOption] (retries of a
// failing handler, the start timeout) in packages consumer, eos and share.
// Presets apply in order: kgo defaults, then the preset of the semantics,
// then the caller's options, then one validation pass. Every problem is
// reported at once in a [*ConfigError] wrapping [ErrInvalidConfig], and
// nothing is started. Raw kgo options are accepted as an escape hatch, and
// the built client's effective values are checked against the preset, so
// they cannot weaken it.
//
// # Lifecycle
//
// A producer is ready when its constructor returns (it connects lazily:
// Ping checks the brokers), and Close(ctx) flushes within ctx and ends it.
//
// A consumer (consumer.Consumer, consumer.SinkConsumer, share.Consumer) and
// an exactly-once session (eos.Session) follow the same rules:
//
//   - The constructor checks everything and connects to nothing.
//   - Run(ctx, ...) blocks. It waits up to the start timeout
//     ([WithStartTimeout]) for a broker to answer and for its topics to
//     exist (failing with [ErrUnreachable] or [ErrTopicNotFound] naming what
//     is missing), joins the group and handles records until ctx is
//     cancelled, Close is called, or a record keeps failing.
//   - Cancelling Run's ctx stops Run at the next record: the record in hand
//     finishes (its handler's ctx is not cancelled), what the semantics
//     allows is committed, the group is left, and Run returns nil. Records
//     read but not handled are read again by the next owner of their
//     partitions.
//   - Run may be called again once it has returned, never concurrently.
//   - Close(ctx) stops a running Run and waits for it within ctx; when ctx
//     ends first, the handler's ctx is cancelled, the client is closed at
//     once (nothing more is committed; a session's open transaction is
//     aborted by the broker or the next instance) and Close returns ctx's
//     error. A client still in its first group join is closed at once.
//     Close is final: Run afterwards returns [ErrClosed]. It is safe to call
//     twice.
//   - A failing record is retried with the same backoff in both
//     ([WithBackoff], 100 ms doubling to 10 s), for ever unless
//     [WithMaxAttempts] bounds it; then Run stops with a [*HandlerError],
//     or a session with a dead-letter topic sends the record there.
//
// # Errors
//
// Every error is one family, whichever package returns it: [*ConfigError]
// from constructors, [*DeliveryError] for a record not delivered,
// [*HandlerError] when Run stops on a record, and the sentinels
// [ErrFenced], [ErrAborted], [ErrUnconfirmed], [ErrPanic], [ErrClosed],
// [ErrUnreachable], [ErrTopicNotFound], [ErrNotAuthorized],
// [ErrAuthentication], [ErrUnsupported]. Each doc says when it appears and
// what to do; [ClassOf] sorts any error into [Retriable], [Abortable] or
// [Fatal]. Errors from Kafka are wrapped with %w, so errors.Is(err,
// kerr.ProducerFenced) works through kdeliver's. No error or log line holds
// a record's key or value.
//
// A failure no retry fixes ends the call instead of being retried for
// ever: a missing ACL ([ErrNotAuthorized]), refused credentials or a failed
// TLS handshake ([ErrAuthentication]), brokers too old for the semantics
// ([ErrUnsupported]), a topic that stays missing ([ErrTopicNotFound]). Run
// of a consumer or session returns them, and Produce, Send and Transact
// fail with them. A misconfigured service stops with an error that says
// what to grant or fix, rather than looking healthy while it reads nothing.
package kdeliver
