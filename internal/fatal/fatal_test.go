package fatal

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// TestErr: each failure no retry fixes becomes an error matching its
// kdeliver sentinel and its cause, whose message names the resource, the
// operation and the ACL to add; transient errors are not fatal.
func TestErr(t *testing.T) {
	consumer := Scope{Role: Consumer, Group: "g", Reads: []string{"orders"}, Writes: []string{"orders-dlq"}, Brokers: []string{"k1:9092", "k2:9092"}}
	session := Scope{Role: Session, Group: "copier", TxnID: "copier-0", Reads: []string{"in"}, Writes: []string{"out"}, Brokers: []string{"k1:9092"}}
	producer := Scope{Role: Producer, Brokers: []string{"k1:9092"}}
	txn := Scope{Role: Transactional, TxnID: "tx-1", Brokers: []string{"k1:9092"}}
	wrap := func(err error) error { return fmt.Errorf("kgo said: %w", err) }
	for _, tc := range []struct {
		name   string
		scope  Scope
		err    error
		topics []string
		kind   error
		want   []string // in the message
	}{
		{"consumer fetch", consumer, kerr.TopicAuthorizationFailed, []string{"orders"}, kdeliver.ErrNotAuthorized,
			[]string{`consumer of group "g"`, "may not read topic orders", "TOPIC_AUTHORIZATION_FAILED", "Read on topic orders",
				"kafka-acls.sh --bootstrap-server k1:9092 --add --allow-principal User:", "--operation Read --topic orders"}},
		{"consumer without topic: its own", consumer, wrap(kerr.TopicAuthorizationFailed), nil, kdeliver.ErrNotAuthorized,
			[]string{"may not read topic orders and may not write to topic orders-dlq", "--operation Read --topic orders", "--operation Write --topic orders-dlq"}},
		{"consumer group", consumer, &kgo.ErrGroupSession{Err: kerr.GroupAuthorizationFailed}, nil, kdeliver.ErrNotAuthorized,
			[]string{"may not use group g", "GROUP_AUTHORIZATION_FAILED", "--operation Read --group g"}},
		{"consumer cluster", Scope{Role: Consumer, Group: "g"}, kerr.ClusterAuthorizationFailed, nil, kdeliver.ErrNotAuthorized,
			[]string{"operation on the cluster", "--cluster"}},
		{"session input and output", session, kerr.TopicAuthorizationFailed, []string{"in", "out"}, kdeliver.ErrNotAuthorized,
			[]string{`session "copier-0" of group "copier"`, "may not read topic in and may not write to topic out", "--operation Write --topic out"}},
		{"session transactional ID", session, wrap(kerr.TransactionalIDAuthorizationFailed), nil, kdeliver.ErrNotAuthorized,
			[]string{"may not use transactional ID copier-0", "--operation Write --transactional-id copier-0"}},
		{"producer topics", producer, kerr.TopicAuthorizationFailed, []string{"b", "a", "b"}, kdeliver.ErrNotAuthorized,
			[]string{"the producer may not write to topics a, b", "--operation Write --topic a --topic b"}},
		{"idempotent producer", producer, kerr.ClusterAuthorizationFailed, []string{"a"}, kdeliver.ErrNotAuthorized,
			[]string{"may not write idempotently", "Write on the topics it writes", "--operation IdempotentWrite --cluster"}},
		{"transactional ID", txn, wrap(kerr.TransactionalIDAuthorizationFailed), nil, kdeliver.ErrNotAuthorized,
			[]string{`transactional producer "tx-1" may not use transactional ID tx-1`, "--transactional-id tx-1"}},
		{"SASL", consumer, wrap(kerr.SaslAuthenticationFailed), nil, kdeliver.ErrAuthentication,
			[]string{"authentication failed", "SASL credentials", "kdeliver.WithSASL"}},
		{"SASL mechanism", producer, kerr.UnsupportedSaslMechanism, nil, kdeliver.ErrAuthentication,
			[]string{"SASL mechanism", "sasl.enabled.mechanisms"}},
		{"unknown CA", producer, fmt.Errorf("unable to dial: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), nil, kdeliver.ErrAuthentication,
			[]string{"TLS handshake", "certificate", "CA"}},
		{"host name", producer, x509.HostnameError{Certificate: &x509.Certificate{}, Host: "k1"}, nil, kdeliver.ErrAuthentication,
			[]string{"certificate", "host name"}},
		{"client certificate refused", producer, &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, nil, kdeliver.ErrAuthentication,
			[]string{"refused the TLS handshake", "client certificate"}},
		{"plaintext broker", producer, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, nil, kdeliver.ErrAuthentication,
			[]string{"does not speak TLS"}},
		{"unsupported version", session, kerr.UnsupportedVersion, nil, kdeliver.ErrUnsupported,
			[]string{"not supported by the brokers", "KIP-447", "Kafka 2.5"}},
		{"broker too old", txn, errors.New("broker is too old; the broker has already indicated it will not know how to handle the request"), nil, kdeliver.ErrUnsupported,
			[]string{"transactions"}},

		{"retriable", consumer, kerr.NotLeaderForPartition, nil, nil, nil},
		{"network", consumer, io.EOF, nil, nil, nil},
		{"first read EOF is only suspect", consumer, &kgo.ErrFirstReadEOF{}, nil, nil, nil},
		{"group session lost", consumer, &kgo.ErrGroupSession{Err: kerr.IllegalGeneration}, nil, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.scope.Err(tc.err, tc.topics...)
			if tc.kind == nil {
				if err != nil || Kind(tc.err) != nil {
					t.Fatalf("Err(%v) = %v, Kind %v; want nil", tc.err, err, Kind(tc.err))
				}
				return
			}
			if !errors.Is(err, tc.kind) || !errors.Is(err, tc.err) || Kind(tc.err) != tc.kind || Kind(err) != tc.kind {
				t.Fatalf("Err(%v) = %v: want an error matching %v and the cause (Kind %v)", tc.err, err, tc.kind, Kind(tc.err))
			}
			if c := kdeliver.ClassOf(err); c != kdeliver.Fatal {
				t.Errorf("ClassOf = %v, want fatal", c)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q lacks %q", err, w)
				}
			}
			if again := tc.scope.Err(fmt.Errorf("again: %w", err)); !errors.Is(again, err) || strings.Count(again.Error(), "kdeliver:") != 1 {
				t.Errorf("an error of this package is wrapped again: %v", again)
			}
		})
	}
}

// TestPersisting: a connection closed at once for the bound is an
// authentication failure that says to check TLS and SASL.
func TestPersisting(t *testing.T) {
	cause := &kgo.ErrFirstReadEOF{}
	if !Suspect(fmt.Errorf("ping: %w", cause)) || Suspect(io.EOF) {
		t.Fatal("Suspect does not tell kgo's first-read EOF from a plain EOF")
	}
	err := Scope{Role: Consumer, Group: "g", Brokers: []string{"k1:9092"}}.Persisting(cause, 30e9)
	if !errors.Is(err, kdeliver.ErrAuthentication) || !errors.As(err, &cause) {
		t.Fatalf("Persisting = %v", err)
	}
	for _, w := range []string{"k1:9092", "30s", "kdeliver.WithTLS", "kdeliver.WithSASL"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("message %q lacks %q", err, w)
		}
	}
}

// TestConnWatch: the hook passes on the connection failures no retry fixes,
// and nothing else.
func TestConnWatch(t *testing.T) {
	var got []error
	w := ConnWatch(func(err error) { got = append(got, err) })
	sasl := fmt.Errorf("sasl: %w", kerr.SaslAuthenticationFailed)
	for _, err := range []error{nil, io.EOF, &net.OpError{Op: "dial", Err: errors.New("connection refused")}, &kgo.ErrFirstReadEOF{}, sasl} {
		w.OnBrokerConnect(kgo.BrokerMetadata{}, 0, nil, err)
	}
	if len(got) != 1 || got[0] != sasl {
		t.Fatalf("the hook passed on %v, want only %v", got, sasl)
	}
}
