// Package kdeliver makes Kafka's delivery guarantees a single, checked choice.
//
// Application code picks a [Semantics] ([AtMostOnce], [AtLeastOnce] or
// [ExactlyOnce]) and the SDK sets everything that choice implies on both ends,
// refusing anything that would break it:
//
//   - package producer: acks, retries, idempotence, in-flight limits,
//     transactions;
//   - package consumer: commit order (before or after processing), isolation,
//     retries of a failing handler;
//   - package eos: the transactional read-process-write loop (consume,
//     process, produce and commit offsets in one transaction);
//   - package dedup: deduplication for sinks outside Kafka.
//
// # Choosing semantics
//
// [AtMostOnce] never duplicates and may lose records on failure: metrics,
// telemetry, anything where a gap is cheaper than a repeat. [AtLeastOnce]
// never loses an acknowledged record and may duplicate on failure: the default
// choice for idempotent handlers. [ExactlyOnce] neither loses nor duplicates,
// within Kafka (package eos) or into a sink that takes part in the guarantee
// (package dedup). Where the guarantee ends is part of its documentation: see
// [Semantics.Preset] and `kdeliver explain`.
//
// # Configuration
//
// Presets apply in order: kgo defaults, then the preset of the semantics, then
// the caller's options, then one validation pass. Every problem is reported at
// once in a [*ConfigError] wrapping [ErrInvalidConfig], and nothing is started.
// Raw kgo options are accepted as an escape hatch, and the built client's
// effective values are checked against the preset, so they cannot weaken it.
//
// # Errors
//
// [ErrInvalidConfig] means construction was refused; [ErrClosed] means a call
// came after Close. Errors from Kafka are wrapped with %w, so
// errors.Is(err, kerr.ProducerFenced) works through kdeliver's wrappers.
package kdeliver
