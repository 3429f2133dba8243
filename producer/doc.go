// Package producer writes Kafka records with the guarantee of one
// [kdeliver.Semantics].
//
//	p, err := producer.New([]string{"127.0.0.1:9092"}, kdeliver.AtLeastOnce)
//	if err != nil {
//		return err // wraps kdeliver.ErrInvalidConfig, lists every problem
//	}
//	defer p.Close(ctx)
//	err = p.Produce(ctx, &kgo.Record{Topic: "orders", Value: order})
//
// Exactly-once writes go through a [Transactional], which has no method that
// writes outside a transaction:
//
//	tp, err := producer.NewTransactional(brokers, "orders-writer-0")
//	err = tp.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
//		return tx.Send(ctx, a, b) // visible together, or not at all
//	})
//
// Records are franz-go's [*kgo.Record]; the client underneath is a
// [*kgo.Client] configured by the semantics' preset.
//
// # Choosing semantics
//
//   - [kdeliver.AtMostOnce]: acks=0 (or acks=1 with [WithLeaderAck]), no
//     idempotence, no retries. [Producer.Produce] returns once the record is
//     written to the connection. A failure loses records, never duplicates.
//   - [kdeliver.AtLeastOnce]: acks=all, idempotent, retried until the
//     delivery timeout ([WithDeliveryTimeout], default
//     [kdeliver.DefaultDeliveryTimeout]). Produce returns once all in-sync
//     replicas have the record. Retries inside the client never duplicate
//     (the broker drops repeated batches); a record that fails with a
//     [*DeliveryError] may still have been written, so re-sending it may
//     duplicate. [WithMessageIDs] lets consumers drop such copies.
//   - [kdeliver.ExactlyOnce]: [NewTransactional], as AtLeastOnce plus a
//     transactional ID (a required argument). Records are written only
//     inside [Transactional.Transact], which commits them atomically across
//     partitions; readers must use read_committed to see only committed
//     ones. [Transactional.Send] is one transaction.
//
// Code that picks the semantics at run time writes through [Sender], which
// both kinds implement.
//
// # Configuration
//
// [New] and [NewTransactional] apply kgo's defaults, then the preset, then the options, and
// refuses every contradiction in one error listing all problems. Raw kgo
// options ([WithKgoOpts]) are applied last and the built client's effective
// settings are checked, so no option can quietly weaken the guarantee.
//
// # Lifecycle
//
// The constructors do not connect; Ping checks the brokers answer.
// Unreachable brokers otherwise show up as Produce failing after the delivery
// timeout. [Producer.Flush] waits for every buffered record. Close waits for
// a running transaction, flushes (bounded by its ctx) and stops every
// goroutine of the producer; it is safe to call twice, and other methods
// return [kdeliver.ErrClosed] afterwards.
//
// # Tracing and metrics
//
// Every record gets a "<topic> publish" span (franz-go's kotel plugin), and
// its trace context travels in the record's headers (W3C traceparent), so a
// consumer built by kdeliver continues the same trace. The global OpenTelemetry
// providers are used unless [kdeliver.WithTracerProvider] or
// [kdeliver.WithMeterProvider] is passed.
//
// Tracing costs nothing when it cannot trace: with no SDK set up (the global
// or a no-op provider) spans are skipped, yet a span context in the ctx given
// to Produce is still written to the headers, so traces pass through. A global
// tracer provider set after New is picked up; a global meter provider must be
// set before New, or client metrics stay off for this producer.
//
// # Errors
//
// The errors are the root package's (see its "# Errors"):
//
//   - [kdeliver.ErrInvalidConfig] (a [*kdeliver.ConfigError]): from the
//     constructors.
//   - [*kdeliver.DeliveryError]: a record was not delivered; it names the
//     topic, partition and cause, and errors.Is sees the cause (kerr codes,
//     kgo.ErrRecordTimeout, context errors). A delivery timeout counts from
//     the hand-over, never from the record's timestamp.
//   - [kdeliver.ErrAborted]: a transaction was aborted; run it again.
//   - [kdeliver.ErrUnconfirmed]: a commit's outcome is unknown.
//   - [kdeliver.ErrFenced]: another producer took over the transactional
//     ID; close this one.
//   - [ErrNotInTransaction]: a [Tx] used after its function returned.
//
// # Concurrency
//
// A Producer is safe for concurrent use. Records to one partition keep the
// order they were produced in. ProduceAsync callbacks run one at a time on a
// client goroutine and must not block or call Flush, Close, Produce or
// Transact. Transact calls run one at a time.
package producer
