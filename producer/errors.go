package producer

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// ErrFenced is returned by [Producer.Transact] (and by every call after it)
// when another producer with the same transactional ID took over: Kafka
// fenced this one, so it can never commit again. Close this producer and exit
// (or stop this shard); do not create a new producer with the same ID while
// the other one runs. errors.Is(err, kerr.ProducerFenced) is true for it too.
var ErrFenced = fmt.Errorf("kdeliver: producer fenced: another producer with this transactional ID took over; close this one and exit: %w", kerr.ProducerFenced)

// ErrAborted is returned by [Producer.Transact] when the transaction could
// not commit and was aborted instead: none of its records will be visible to
// read_committed readers. The producer is still usable; run the transaction
// again. The returned error also wraps the cause (a failed produce, or the
// broker's reason such as kerr.TransactionAbortable).
var ErrAborted = errors.New("kdeliver: transaction aborted, none of its records are visible; it is safe to retry")

// ErrUnconfirmed is returned by [Producer.Transact] when the commit request's
// outcome is unknown (the connection failed or the broker answered
// UNKNOWN_SERVER_ERROR). The producer aborted what it could, but the commit
// may already have taken effect: the records may or may not be visible.
// Retrying may duplicate them; only retry if readers tolerate that (for
// example with [WithMessageIDs] and package dedup).
var ErrUnconfirmed = errors.New("kdeliver: transaction outcome unknown: the commit may or may not have taken effect")

// ErrNotInTransaction is returned by [Producer.Produce] and
// [Producer.ProduceAsync] on an [kdeliver.ExactlyOnce] producer, and by a
// [Tx] used after its function returned: ExactlyOnce records are written only
// inside [Producer.Transact], through its [Tx].
var ErrNotInTransaction = errors.New("kdeliver: ExactlyOnce records must be produced inside Producer.Transact through its Tx")

// ErrNotTransactional is returned by [Producer.Transact] on a producer whose
// semantics is not [kdeliver.ExactlyOnce]. Use Produce, or build the producer
// with ExactlyOnce and [WithTransactionalID].
var ErrNotTransactional = errors.New("kdeliver: Transact needs an ExactlyOnce producer")

// DeliveryError is returned by [Producer.Produce] and [Tx.Produce], and passed
// to ProduceAsync callbacks, when a record was not delivered. Err is the
// cause; errors.Is sees through it, so errors.Is(err, kerr.NotEnoughReplicas)
// or errors.Is(err, kgo.ErrRecordTimeout) work on the DeliveryError. The
// message names the topic and partition and what to do; it never includes the
// record's key or value.
type DeliveryError struct {
	// Record is the record that was not delivered.
	Record *kgo.Record
	// Err is why.
	Err error
}

// Error says which topic and partition, why, and what to do.
func (e *DeliveryError) Error() string {
	topic, part := "", int32(-1)
	if e.Record != nil {
		topic, part = e.Record.Topic, e.Record.Partition
	}
	if errors.Is(e.Err, kerr.UnknownTopicOrPartition) {
		// No partition was chosen: the topic has none.
		return fmt.Sprintf("kdeliver: record to topic %q not delivered: %v: %s", topic, e.Err, advice(e.Err))
	}
	return fmt.Sprintf("kdeliver: record to topic %q partition %d not delivered: %v: %s", topic, part, e.Err, advice(e.Err))
}

// Unwrap returns Err.
func (e *DeliveryError) Unwrap() error { return e.Err }

func advice(err error) string {
	switch {
	case errors.Is(err, kdeliver.ErrClosed):
		return "the producer was closed: create a new one"
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return "the topic does not exist, or this client may not see it: create it (most clusters do not create topics on first write) or fix the topic name; if it exists, check the client's Describe ACL on it"
	case errors.Is(err, kgo.ErrRecordTimeout):
		return "the brokers did not acknowledge it within the delivery timeout (check broker health and min.insync.replicas, or raise producer.WithDeliveryTimeout); it may still have been written: re-send it if it must arrive (a re-send may duplicate)"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "the context ended first; the record may still have been written: re-send it if it must arrive (a re-send may duplicate)"
	case errors.Is(err, kgo.ErrRecordRetries):
		return "it was not retried (AtMostOnce never retries) or ran out of retries; it may still have been written: re-send it only if a duplicate is acceptable"
	case kerr.IsRetriable(err):
		return "the brokers kept refusing it with a retriable error until the delivery timeout (check broker health and min.insync.replicas); it may still have been written: re-send it if it must arrive (a re-send may duplicate)"
	case errors.Is(err, kerr.InvalidProducerEpoch), errors.Is(err, kerr.ProducerFenced):
		return "another producer with this transactional ID took over: close this one"
	}
	return "it may not have been written: fix the cause named above (unreachable brokers, authorization, record too large), then re-send it if it must arrive"
}
