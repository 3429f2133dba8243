package kdeliver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Every error kdeliver returns is one of the types and sentinels of this
// file, whichever package returned it, and wraps the Kafka error behind it
// with %w, so that errors.Is(err, kerr.ProducerFenced) works through it.
// [ClassOf] says what the caller should do with any of them.

// ErrInvalidConfig is wrapped by every error that rejects a configuration: an
// invalid [Semantics], an option that contradicts the chosen semantics, a
// missing broker list, topic or group. Construction fails with it; nothing is
// started. Fix the configuration the message names. Class: [Fatal].
var ErrInvalidConfig = errors.New("kdeliver: invalid configuration")

// ErrClosed is returned by calls on a producer, consumer or session after its
// Close. Create a new one. Class: [Fatal].
var ErrClosed = errors.New("kdeliver: closed")

// ErrUnreachable is matched (errors.Is) by the error a consumer's or an
// exactly-once session's Run (and their Ping) returns when no seed broker
// answered within the start timeout ([WithStartTimeout]). The message names
// the brokers and the last connection error. Check the addresses, that the
// brokers run, and the network and TLS/SASL settings. Class: [Retriable].
var ErrUnreachable = errors.New("kdeliver: brokers unreachable")

// ErrTopicNotFound is matched (errors.Is) by the error Run (and Ping) of a
// consumer or an exactly-once session returns when a topic it reads or
// writes does not exist within the start timeout ([WithStartTimeout]), or
// when an exactly-once session's output topic stays unknown that long. The
// message names the topics; the error also matches
// kerr.UnknownTopicOrPartition. Create the topic or fix its name. Class:
// [Fatal].
var ErrTopicNotFound = errors.New("kdeliver: topic not found")

// ErrNotAuthorized is matched (errors.Is) by the error of a call the
// brokers refused because the client's principal lacks an ACL: reading or
// describing a topic (the error also matches kerr.TopicAuthorizationFailed),
// using the consumer group (kerr.GroupAuthorizationFailed), using the
// transactional ID (kerr.TransactionalIDAuthorizationFailed), or a cluster
// operation such as an idempotent write on brokers older than Kafka 3.0
// (kerr.ClusterAuthorizationFailed). The message names the resource, the
// operation refused and the kafka-acls.sh command that grants it. Kafka does
// not grant an ACL because a request is repeated, so it is fatal at first
// sight: Run of a consumer or session returns it (after committing what
// the semantics allows) and a producer's Produce, Send or Transact fail
// with it instead of retrying until a timeout. Grant the ACL, or fix the
// principal, then start again. Class: [Fatal].
var ErrNotAuthorized = errors.New("kdeliver: not authorized")

// ErrAuthentication is matched by the error returned when the brokers refused
// the client's credentials or the connection's security: a failed SASL
// authentication (kerr.SaslAuthenticationFailed, also matched), a SASL
// mechanism the brokers do not enable (kerr.UnsupportedSaslMechanism), or a
// TLS handshake that failed (the broker's certificate is not trusted or not
// for its host name, the broker refused the client's certificate, or the
// broker does not speak TLS; the error also matches the crypto/tls or
// crypto/x509 error). It is fatal at the first failed connection: Run of a
// consumer or session returns it, Ping returns it, and Produce, Send and
// Transact fail with it rather than when their delivery timeout passes (a
// record produced after the first refusal fails at the client's next
// connection attempt: kgo makes them at most once per metadata refresh,
// kgo.MetadataMinAge, 5 s by default). A
// connection the broker closed at once without saying why
// (*kgo.ErrFirstReadEOF: often TLS or SASL missing on one side) is only
// taken for it when it persists for the start timeout. The message says
// what to check; it never includes the credentials. Class: [Fatal].
var ErrAuthentication = errors.New("kdeliver: authentication failed")

// ErrUnsupported is matched by the error returned when the brokers cannot do
// what the semantics needs: they answered kerr.UnsupportedVersion (also
// matched), or kgo found them too old for a request (transactions need
// Kafka 0.11, exactly-once sessions 2.5), or a consumer or session built
// with WithGroupProtocol(ConsumerProtocol) found no KIP-848 consumer group
// protocol on them (Kafka 4.0+ with the group.version feature at 1 or
// more). It is fatal at first sight.
// Upgrade the brokers, or choose a semantics they support. Class: [Fatal].
var ErrUnsupported = errors.New("kdeliver: not supported by the brokers")

// ErrFenced is matched (errors.Is) by the error of a transactional producer,
// an exactly-once session or a sink whose claim another instance took over:
// a producer or session with the same transactional ID started elsewhere
// (Kafka fenced this one: errors.Is(err, kerr.ProducerFenced) is true too),
// or a consumer was assigned the sink partition after this one. Nothing this
// instance left open becomes visible. Stop this instance, and do not retry
// with the same transactional ID while the other runs: that would fence it
// in turn. Class: [Fatal].
var ErrFenced = errors.New("kdeliver: fenced: another instance took over")

// ErrAborted is matched by the error of a transaction that could not commit
// and was aborted instead: none of its records are visible to read_committed
// readers. The error also wraps the cause (a failed produce, the function's
// error, the broker's reason such as kerr.TransactionAbortable). The
// producer is still usable: run the transaction again. Class: [Abortable].
var ErrAborted = errors.New("kdeliver: transaction aborted, none of its records are visible; it is safe to retry")

// ErrUnconfirmed is matched by the error of a transaction whose commit
// request's outcome is unknown (the connection failed, or the broker answered
// UNKNOWN_SERVER_ERROR). kdeliver aborted what it could, but the commit may
// already have taken effect: the records may or may not be visible. Running
// it again may duplicate them; do so only if readers tolerate that (message
// IDs and package dedup). Class: [Abortable].
var ErrUnconfirmed = errors.New("kdeliver: transaction outcome unknown: the commit may or may not have taken effect")

// ErrPanic is matched by the error a panicking handler (or sink write)
// turns into. A panic never crashes the process: it is a failure of the
// record like any other, retried or skipped as the semantics says; when Run
// stops on it, it is inside a [*HandlerError]. Class: [Fatal].
var ErrPanic = errors.New("kdeliver: handler panicked")

// Class says what a caller should do with an error, after the categories
// of KIP-1050. See [ClassOf].
type Class uint8

const (
	// Retriable: the call may succeed if made again (brokers unreachable, a
	// record not acknowledged in time). A retry can duplicate what may
	// already have been written.
	Retriable Class = iota + 1
	// Abortable: the transaction was aborted (or its outcome is unknown):
	// run it again.
	Abortable
	// Fatal: making the call again will not help. The instance must stop
	// (fenced, closed, not authorized, a handler that kept failing) or the
	// cause be fixed first (configuration, a missing topic, a record the
	// broker refuses).
	Fatal
)

func (c Class) String() string {
	switch c {
	case Retriable:
		return "retriable"
	case Abortable:
		return "abortable"
	case Fatal:
		return "fatal"
	}
	return fmt.Sprintf("Class(%d)", uint8(c))
}

// ClassOf returns the class of err: the class its kdeliver error says (each
// sentinel's and type's doc gives it), else the class of the Kafka or
// network error in it. An error it knows nothing of is [Fatal]: retrying
// what is not understood risks a loop. ClassOf(nil) is 0.
func ClassOf(err error) Class {
	if err == nil {
		return 0
	}
	var c interface{ Class() Class }
	if errors.As(err, &c) {
		return c.Class()
	}
	return classOfCause(err)
}

func classOfCause(err error) Class {
	var ne net.Error
	switch {
	case errors.Is(err, ErrAborted), errors.Is(err, ErrUnconfirmed), errors.Is(err, kerr.TransactionAbortable):
		return Abortable
	case errors.Is(err, ErrFenced), errors.Is(err, ErrClosed), errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrPanic),
		errors.Is(err, ErrTopicNotFound), errors.Is(err, kgo.ErrClientClosed),
		errors.Is(err, ErrNotAuthorized), errors.Is(err, ErrAuthentication), errors.Is(err, ErrUnsupported),
		errors.Is(err, kerr.ProducerFenced), errors.Is(err, kerr.InvalidProducerEpoch):
		return Fatal
	case errors.Is(err, ErrUnreachable), errors.Is(err, kgo.ErrRecordTimeout), errors.Is(err, kgo.ErrRecordRetries),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.As(err, &ne):
		return Retriable
	}
	var ke *kerr.Error
	if errors.As(err, &ke) && ke.Retriable {
		return Retriable
	}
	return Fatal
}

// ConfigError lists every problem found in one configuration. It wraps
// [ErrInvalidConfig]. Class: [Fatal].
type ConfigError struct {
	// What names the thing being configured, e.g. "producer".
	What string
	// Semantics is the semantics the configuration was checked against, or
	// 0 when it was itself the problem.
	Semantics Semantics
	// Problems says what is wrong and how to fix it, one entry a problem.
	Problems []string
}

// Error lists the problems on one line each.
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("kdeliver: invalid ")
	if e.Semantics.Valid() {
		b.WriteString(e.Semantics.String())
		b.WriteByte(' ')
	}
	b.WriteString(e.What)
	b.WriteString(" configuration")
	if len(e.Problems) == 1 {
		b.WriteString(": ")
		b.WriteString(e.Problems[0])
		return b.String()
	}
	b.WriteString(":")
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p)
	}
	return b.String()
}

// Unwrap returns [ErrInvalidConfig].
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// Class returns [Fatal].
func (e *ConfigError) Class() Class { return Fatal }

// HandlerError is returned by Run of a consumer or an exactly-once session
// when it stops because a record's handler (or a sink's write) kept
// failing: it failed the attempts allowed ([WithMaxAttempts]) and no
// dead-letter topic was set, or it failed in a way no retry fixes (a record
// without a dedup key). The record's offset is not committed, so the group
// delivers it again to the next reader of its partition. Err says what the
// handler returned (errors.Is(err, [ErrPanic]) for a panic). Fix the cause
// and start again. Class: [Fatal].
type HandlerError struct {
	// Record is the record the handler failed on (with a sink, the first
	// record of the batch). Its key and value are never printed.
	Record *kgo.Record
	// Attempts is how many times the handler ran on the record.
	Attempts int
	// Err is the handler's last error.
	Err error
}

func (e *HandlerError) Error() string {
	topic, part, off := "", int32(-1), int64(-1)
	if e.Record != nil {
		topic, part, off = e.Record.Topic, e.Record.Partition, e.Record.Offset
	}
	return fmt.Sprintf("kdeliver: handler failed on %s[%d]@%d after %d attempt(s): %v", topic, part, off, e.Attempts, e.Err)
}

// Unwrap returns the handler's error.
func (e *HandlerError) Unwrap() error { return e.Err }

// Class returns [Fatal]: Run stopped.
func (e *HandlerError) Class() Class { return Fatal }

// DeliveryError is the error of a record that was not delivered: returned
// by a producer's Produce and a transaction's Produce, and passed to
// asynchronous callbacks. Err is the cause; errors.Is sees through it, so
// errors.Is(err, kerr.NotEnoughReplicas) or errors.Is(err,
// kgo.ErrRecordTimeout) work on the DeliveryError. The message names the
// topic and partition and what to do; it never includes the record's key or
// value. Class: [Retriable] when the cause is transient (a timeout, a
// retriable broker error, a cancelled context), else [Fatal] (fix the record
// or the topic).
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
		return fmt.Sprintf("kdeliver: record to topic %q not delivered: %v: %s", topic, e.Err, deliveryAdvice(e.Err))
	}
	return fmt.Sprintf("kdeliver: record to topic %q partition %d not delivered: %v: %s", topic, part, e.Err, deliveryAdvice(e.Err))
}

// Unwrap returns Err.
func (e *DeliveryError) Unwrap() error { return e.Err }

// Class returns the class of the cause: [Fatal] for a topic that does not
// exist (create it first) and for [ErrNotAuthorized], [ErrAuthentication]
// and [ErrUnsupported] (fix them first), [Retriable] for a cancelled context
// (the record may be re-sent), else the cause's.
func (e *DeliveryError) Class() Class {
	switch {
	case errors.Is(e.Err, kerr.UnknownTopicOrPartition),
		errors.Is(e.Err, ErrNotAuthorized), errors.Is(e.Err, ErrAuthentication), errors.Is(e.Err, ErrUnsupported):
		return Fatal
	case errors.Is(e.Err, context.Canceled):
		return Retriable
	}
	return classOfCause(e.Err)
}

func deliveryAdvice(err error) string {
	switch {
	case errors.Is(err, ErrClosed):
		return "the producer was closed: create a new one"
	case errors.Is(err, ErrNotAuthorized), errors.Is(err, ErrAuthentication), errors.Is(err, ErrUnsupported):
		return "it was not written, and re-sending it will not help until that is fixed"
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return "the topic does not exist, or this client may not see it: create it (most clusters do not create topics on first write) or fix the topic name; if it exists, check the client's Describe ACL on it"
	case errors.Is(err, kgo.ErrRecordTimeout):
		return "the brokers did not acknowledge it within the delivery timeout (check broker health and min.insync.replicas, or raise producer.WithDeliveryTimeout); it may still have been written: re-send it if it must arrive (a re-send may duplicate)"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "the context ended first; the record may still have been written: re-send it if it must arrive (a re-send may duplicate)"
	case errors.Is(err, kgo.ErrRecordRetries):
		return "it was not retried (AtMostOnce never retries) or ran out of retries; it may still have been written: re-send it only if a duplicate is acceptable"
	case errors.Is(err, kerr.InvalidProducerEpoch), errors.Is(err, kerr.ProducerFenced):
		return "another producer with this transactional ID took over: close this one"
	case kerr.IsRetriable(err):
		return "the brokers kept refusing it with a retriable error until the delivery timeout (check broker health and min.insync.replicas); it may still have been written: re-send it if it must arrive (a re-send may duplicate)"
	}
	return "it may not have been written: fix the cause named above (unreachable brokers, authorization, record too large), then re-send it if it must arrive"
}
