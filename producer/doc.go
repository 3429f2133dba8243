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
//   - [kdeliver.ExactlyOnce]: as AtLeastOnce, plus a transactional ID
//     ([WithTransactionalID], required). Records are written only inside
//     [Producer.Transact], which commits them atomically across partitions;
//     readers must use read_committed to see only committed ones.
//
// # Configuration
//
// [New] applies kgo's defaults, then the preset, then the options, and
// refuses every contradiction in one error listing all problems. Raw kgo
// options ([WithKgoOpts]) are applied last and the built client's effective
// settings are checked, so no option can quietly weaken the guarantee.
//
// # Lifecycle
//
// New does not connect; [Producer.Ping] checks the brokers answer. Unreachable
// brokers otherwise show up as Produce failing after the delivery timeout.
// [Producer.Flush] waits for every buffered record. [Producer.Close] waits
// for a running transaction, flushes (bounded by its ctx) and stops every
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
//   - [kdeliver.ErrInvalidConfig] (a [*kdeliver.ConfigError]): from New.
//   - [*DeliveryError]: a record was not delivered; it names the topic,
//     partition and cause, and errors.Is sees the cause (kerr codes,
//     kgo.ErrRecordTimeout, context errors).
//   - [ErrAborted]: a transaction was aborted; retry it.
//   - [ErrUnconfirmed]: a commit's outcome is unknown.
//   - [ErrFenced]: another producer took over the transactional ID; close
//     this one.
//   - [ErrNotInTransaction], [ErrNotTransactional]: the wrong call for the
//     semantics.
//
// # Concurrency
//
// A Producer is safe for concurrent use. Records to one partition keep the
// order they were produced in. ProduceAsync callbacks run one at a time on a
// client goroutine and must not block or call Flush, Close, Produce or
// Transact. Transact calls run one at a time.
package producer
