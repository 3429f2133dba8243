package kdeliver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

// TestClassOf: every sentinel and type has the class its doc gives, through
// wrapping too; a Kafka or network error has the class of what it says; an
// error kdeliver knows nothing of is fatal; nil has none.
func TestClassOf(t *testing.T) {
	rec := &kgo.Record{Topic: "orders", Partition: 1, Offset: 7}
	for _, tc := range []struct {
		name string
		err  error
		want kdeliver.Class
	}{
		{"nil", nil, 0},

		{"ErrInvalidConfig", kdeliver.ErrInvalidConfig, kdeliver.Fatal},
		{"ErrClosed", kdeliver.ErrClosed, kdeliver.Fatal},
		{"ErrUnreachable", kdeliver.ErrUnreachable, kdeliver.Retriable},
		{"ErrTopicNotFound", kdeliver.ErrTopicNotFound, kdeliver.Fatal},
		{"ErrFenced", kdeliver.ErrFenced, kdeliver.Fatal},
		{"ErrAborted", kdeliver.ErrAborted, kdeliver.Abortable},
		{"ErrUnconfirmed", kdeliver.ErrUnconfirmed, kdeliver.Abortable},
		{"producer.ErrNotInTransaction", producer.ErrNotInTransaction, kdeliver.Fatal},
		{"ErrNotAuthorized", kdeliver.ErrNotAuthorized, kdeliver.Fatal},
		{"ErrAuthentication", kdeliver.ErrAuthentication, kdeliver.Fatal},
		{"ErrUnsupported", kdeliver.ErrUnsupported, kdeliver.Fatal},
		// Refused credentials are not a broker that did not answer.
		{"ErrAuthentication wrapping ErrUnreachable", fmt.Errorf("%w: %w", kdeliver.ErrAuthentication, kdeliver.ErrUnreachable), kdeliver.Fatal},
		{"DeliveryError of ErrNotAuthorized", &kdeliver.DeliveryError{Record: rec, Err: fmt.Errorf("%w: %w", kdeliver.ErrNotAuthorized, kerr.TopicAuthorizationFailed)}, kdeliver.Fatal},
		{"DeliveryError of ErrAuthentication over a cancellation", &kdeliver.DeliveryError{Record: rec, Err: fmt.Errorf("%w: %w", kdeliver.ErrAuthentication, context.Canceled)}, kdeliver.Fatal},
		{"kerr.SaslAuthenticationFailed", kerr.SaslAuthenticationFailed, kdeliver.Fatal},

		{"wrapped ErrUnreachable", fmt.Errorf("kdeliver: brokers a:1 unreachable: %w", kdeliver.ErrUnreachable), kdeliver.Retriable},
		{"wrapped ErrAborted", fmt.Errorf("%w: %w", kdeliver.ErrAborted, errors.New("fn failed")), kdeliver.Abortable},
		{"fenced, wrapping the broker's error", fmt.Errorf("%w: %w", kdeliver.ErrFenced, kerr.ProducerFenced), kdeliver.Fatal},
		// ErrAborted wins over what caused the abort.
		{"aborted by a fence-like cause", fmt.Errorf("%w: %w", kdeliver.ErrAborted, kerr.InvalidProducerEpoch), kdeliver.Abortable},

		{"ConfigError", &kdeliver.ConfigError{What: "producer", Problems: []string{"p"}}, kdeliver.Fatal},
		{"wrapped ConfigError", fmt.Errorf("building: %w", &kdeliver.ConfigError{What: "producer", Problems: []string{"p"}}), kdeliver.Fatal},
		{"HandlerError", &kdeliver.HandlerError{Record: rec, Attempts: 3, Err: errors.New("db down")}, kdeliver.Fatal},
		// Run stopped: a retriable cause does not make it retriable.
		{"HandlerError of a retriable cause", &kdeliver.HandlerError{Record: rec, Attempts: 3, Err: kerr.RequestTimedOut}, kdeliver.Fatal},
		{"HandlerError of a panic", &kdeliver.HandlerError{Record: rec, Attempts: 1, Err: fmt.Errorf("%w: boom", kdeliver.ErrPanic)}, kdeliver.Fatal},
		{"DeliveryError of kgo.ErrRecordTimeout", &kdeliver.DeliveryError{Record: rec, Err: kgo.ErrRecordTimeout}, kdeliver.Retriable},
		{"wrapped DeliveryError of kgo.ErrRecordTimeout", fmt.Errorf("sending: %w", &kdeliver.DeliveryError{Record: rec, Err: kgo.ErrRecordTimeout}), kdeliver.Retriable},
		{"DeliveryError of kgo.ErrRecordRetries", &kdeliver.DeliveryError{Record: rec, Err: kgo.ErrRecordRetries}, kdeliver.Retriable},
		{"DeliveryError of NOT_ENOUGH_REPLICAS", &kdeliver.DeliveryError{Record: rec, Err: kerr.NotEnoughReplicas}, kdeliver.Retriable},
		{"DeliveryError of a refused record", &kdeliver.DeliveryError{Record: rec, Err: kerr.InvalidRecord}, kdeliver.Fatal},
		{"DeliveryError of a record too large", &kdeliver.DeliveryError{Record: rec, Err: kerr.MessageTooLarge}, kdeliver.Fatal},
		{"DeliveryError after Close", &kdeliver.DeliveryError{Record: rec, Err: fmt.Errorf("%w (%w)", kdeliver.ErrClosed, kgo.ErrClientClosed)}, kdeliver.Fatal},
		{"DeliveryError of a fenced producer", &kdeliver.DeliveryError{Record: rec, Err: kerr.ProducerFenced}, kdeliver.Fatal},

		{"kerr.TransactionAbortable", kerr.TransactionAbortable, kdeliver.Abortable},
		{"wrapped kerr.TransactionAbortable", fmt.Errorf("ending the transaction: %w", kerr.TransactionAbortable), kdeliver.Abortable},
		{"retriable kerr error", kerr.NotLeaderForPartition, kdeliver.Retriable},
		{"wrapped retriable kerr error", fmt.Errorf("fetching: %w", kerr.CoordinatorNotAvailable), kdeliver.Retriable},
		{"kerr.ProducerFenced", kerr.ProducerFenced, kdeliver.Fatal},
		{"kerr.InvalidProducerEpoch", kerr.InvalidProducerEpoch, kdeliver.Fatal},
		{"kerr.TopicAuthorizationFailed", kerr.TopicAuthorizationFailed, kdeliver.Fatal},
		{"wrapped kerr.TopicAuthorizationFailed", fmt.Errorf("producing: %w", kerr.TopicAuthorizationFailed), kdeliver.Fatal},
		{"kgo.ErrClientClosed", kgo.ErrClientClosed, kdeliver.Fatal},

		{"a network error", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, kdeliver.Retriable},
		{"io.EOF", fmt.Errorf("reading: %w", io.EOF), kdeliver.Retriable},
		{"context.DeadlineExceeded", context.DeadlineExceeded, kdeliver.Retriable},
		{"an unknown error", errors.New("something else"), kdeliver.Fatal},
	} {
		if got := kdeliver.ClassOf(tc.err); got != tc.want {
			t.Errorf("ClassOf(%s) = %v, want %v (error: %v)", tc.name, got, tc.want, tc.err)
		}
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[kdeliver.Class]string{
		kdeliver.Retriable: "retriable",
		kdeliver.Abortable: "abortable",
		kdeliver.Fatal:     "fatal",
		0:                  "Class(0)",
	} {
		if got := c.String(); got != want {
			t.Errorf("Class(%d).String() = %q, want %q", uint8(c), got, want)
		}
	}
}

// TestDeliveryErrorMessage: the message names the topic and partition and
// what to do, never the record's contents, and errors.Is sees the cause.
func TestDeliveryErrorMessage(t *testing.T) {
	e := &kdeliver.DeliveryError{Record: &kgo.Record{Topic: "orders", Partition: 2, Key: []byte("key-secret"), Value: []byte("secret")}, Err: kgo.ErrRecordTimeout}
	msg := e.Error()
	for _, want := range []string{`"orders"`, "partition 2", "re-send"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "secret") {
		t.Errorf("message %q leaks the record", msg)
	}
	if !errors.Is(e, kgo.ErrRecordTimeout) {
		t.Error("errors.Is does not see the cause")
	}
	// No partition was chosen for a topic that does not exist.
	missing := (&kdeliver.DeliveryError{Record: &kgo.Record{Topic: "nope", Partition: -1}, Err: kerr.UnknownTopicOrPartition}).Error()
	if strings.Contains(missing, "partition -1") || !strings.Contains(missing, "does not exist") {
		t.Errorf("message %q names a partition or does not say the topic is missing", missing)
	}
	if got := (&kdeliver.DeliveryError{Err: kgo.ErrRecordTimeout}).Error(); !strings.Contains(got, "not delivered") {
		t.Errorf("message without a record = %q", got)
	}
}

// TestHandlerErrorMessage: the message names where the record is and how
// often it failed, never its contents; errors.Is and errors.As see the
// handler's error.
func TestHandlerErrorMessage(t *testing.T) {
	cause := fmt.Errorf("%w: boom", kdeliver.ErrPanic)
	e := &kdeliver.HandlerError{Record: &kgo.Record{Topic: "orders", Partition: 1, Offset: 42, Key: []byte("key-secret"), Value: []byte("secret")}, Attempts: 3, Err: cause}
	msg := e.Error()
	for _, want := range []string{"orders[1]@42", "3 attempt(s)", "boom"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "secret") {
		t.Errorf("message %q leaks the record", msg)
	}
	var err error = fmt.Errorf("run: %w", e)
	var he *kdeliver.HandlerError
	if !errors.Is(err, kdeliver.ErrPanic) || !errors.As(err, &he) || he.Attempts != 3 {
		t.Errorf("errors.Is/As do not see through %v", err)
	}
	if got := (&kdeliver.HandlerError{Err: cause}).Error(); !strings.Contains(got, "boom") {
		t.Errorf("message without a record = %q", got)
	}
}
