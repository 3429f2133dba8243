// Package fatal recognizes, in what franz-go reports, the failures that no
// retry fixes (a missing ACL, refused credentials, a failed TLS handshake,
// brokers too old for the request) and turns them into errors matching
// [kdeliver.ErrNotAuthorized], [kdeliver.ErrAuthentication] or
// [kdeliver.ErrUnsupported], whose messages name the resource, the operation
// refused and what to grant or fix. The errors also wrap the cause, so that
// errors.Is(err, kerr.TopicAuthorizationFailed) holds. This package never
// sees credentials, so no message can hold one.
package fatal

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// Role is what a client does, which decides the ACLs it needs.
type Role uint8

// The roles.
const (
	Consumer      Role = iota + 1 // reads topics as a member of a group (and may write dead letters)
	Producer                      // writes records, idempotently unless at most once
	Transactional                 // writes records in transactions
	Session                       // reads in a group and writes in transactions (package eos)
)

// Scope describes a client, for the messages of its errors.
type Scope struct {
	Role    Role
	Group   string
	TxnID   string
	Reads   []string // the topics it reads
	Writes  []string // the topics it writes, when fixed (an output or dead-letter topic)
	Brokers []string // for the kafka-acls.sh command; the first one is named
}

// Error is a failure no retry fixes. It matches (errors.Is) its kind, one
// of kdeliver's sentinels, and unwraps to its cause.
type Error struct {
	kind error
	msg  string
	err  error
}

func (e *Error) Error() string { return e.msg }

// Is reports whether target is e's kind.
func (e *Error) Is(target error) bool { return target == e.kind }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.err }

// Class returns [kdeliver.Fatal].
func (e *Error) Class() kdeliver.Class { return kdeliver.Fatal }

// Kind returns the sentinel err stands for, or nil when a retry may fix it.
// An error already made by this package is of its own kind.
func Kind(err error) error {
	if err == nil {
		return nil
	}
	var fe *Error
	switch {
	case errors.As(err, &fe):
		return fe.kind
	case authorization(err) != nil:
		return kdeliver.ErrNotAuthorized
	case authentication(err) != "":
		return kdeliver.ErrAuthentication
	case unsupported(err):
		return kdeliver.ErrUnsupported
	}
	return nil
}

// Suspect reports whether err is a connection the broker closed at once
// without saying why (kgo's ErrFirstReadEOF), which is most often TLS or
// SASL missing on one side, but can be a broker going down: it is taken for
// an authentication failure only once it persisted for a bound
// ([Scope.Persisting]).
func Suspect(err error) bool {
	var eof *kgo.ErrFirstReadEOF
	return errors.As(err, &eof)
}

// Err returns the error err stands for when no retry fixes it, naming the
// topics it came with (none: the scope's), or nil when err is not such a
// failure. An error already made by this package is returned as it is.
func (s Scope) Err(err error, topics ...string) error {
	if err == nil {
		return nil
	}
	var fe *Error
	if errors.As(err, &fe) {
		return err
	}
	if code := authorization(err); code != nil {
		return &Error{kind: kdeliver.ErrNotAuthorized, msg: s.notAuthorized(code, err, topics), err: err}
	}
	if what := authentication(err); what != "" {
		return &Error{kind: kdeliver.ErrAuthentication, msg: "kdeliver: authentication failed: " + s.authAdvice(what, err), err: err}
	}
	if unsupported(err) {
		return &Error{kind: kdeliver.ErrUnsupported, msg: s.unsupported(err), err: err}
	}
	return nil
}

// Fetches returns the first failure no retry fixes among the errors of a
// poll (a missing ACL on a topic or the group, an unsupported version),
// naming every topic that failed with the same Kafka error, or nil. The
// other errors, which kgo retries, go to warn; cancellations are dropped.
// kgo retries the failures too, one error a poll for ever, so a loop that
// polls must end on them.
func (s Scope) Fetches(fs kgo.Fetches, warn func(topic string, partition int32, err error)) error {
	var first error
	var topics []string
	fs.EachError(func(t string, p int32, err error) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return
		}
		switch {
		case Kind(err) == nil:
			warn(t, p, err)
		case first == nil:
			first, topics = err, append(topics, t)
		case sameCode(err, first):
			topics = append(topics, t)
		}
	})
	if first == nil {
		return nil
	}
	return s.Err(first, topics...)
}

// sameCode reports whether a and b carry the same Kafka error code.
func sameCode(a, b error) bool {
	var ka, kb *kerr.Error
	return errors.As(a, &ka) && errors.As(b, &kb) && ka.Code == kb.Code
}

// Persisting returns the error of a suspect failure ([Suspect]) that lasted
// for bound.
func (s Scope) Persisting(err error, bound time.Duration) error {
	return &Error{kind: kdeliver.ErrAuthentication, err: err, msg: fmt.Sprintf(
		"kdeliver: authentication failed: the brokers %s closed every connection at once for %v (%v): check that the client uses TLS (kdeliver.WithTLS) and SASL (kdeliver.WithSASL) exactly when the listener at that address expects them",
		strings.Join(s.Brokers, ","), bound, err)}
}

var authCodes = []*kerr.Error{kerr.TopicAuthorizationFailed, kerr.GroupAuthorizationFailed,
	kerr.TransactionalIDAuthorizationFailed, kerr.ClusterAuthorizationFailed}

// authorization returns the authorization error code in err, if any.
func authorization(err error) *kerr.Error {
	for _, c := range authCodes {
		if errors.Is(err, c) {
			return c
		}
	}
	return nil
}

// authentication says which kind of authentication failure err is: "sasl",
// "mechanism", "cert" (the broker's certificate), "alert" (the broker
// refused the handshake), "not-tls"; "" for none.
func authentication(err error) string {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		host     x509.HostnameError
		invalid  x509.CertificateInvalidError
		alert    tls.AlertError
		header   tls.RecordHeaderError
		opRemote *net.OpError
	)
	switch {
	case errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.IllegalSaslState):
		return "sasl"
	case errors.Is(err, kerr.UnsupportedSaslMechanism):
		return "mechanism"
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid):
		return "cert"
	case errors.As(err, &alert), errors.As(err, &opRemote) && opRemote.Op == "remote error":
		return "alert"
	case errors.As(err, &header):
		return "not-tls"
	}
	return ""
}

// unsupported reports whether err says the brokers cannot handle a request:
// UNSUPPORTED_VERSION, or kgo's (unexported) error for a broker whose
// ApiVersions lack the request, which only its text identifies.
func unsupported(err error) bool {
	return errors.Is(err, kerr.UnsupportedVersion) || strings.Contains(err.Error(), "broker is too old")
}

// who names the client in a message.
func (s Scope) who() string {
	switch s.Role {
	case Consumer:
		return fmt.Sprintf("the consumer of group %q", s.Group)
	case Producer:
		return "the producer"
	case Transactional:
		return fmt.Sprintf("the transactional producer %q", s.TxnID)
	case Session:
		return fmt.Sprintf("the exactly-once session %q of group %q", s.TxnID, s.Group)
	}
	return "the client"
}

// acls starts a kafka-acls.sh command for the client's principal.
func (s Scope) acls() string {
	b := "<broker>"
	if len(s.Brokers) > 0 && s.Brokers[0] != "" {
		b = s.Brokers[0]
	}
	return "kafka-acls.sh --bootstrap-server " + b + " --add --allow-principal User:<the client's principal>"
}

func (s Scope) notAuthorized(code *kerr.Error, err error, topics []string) string {
	var deny, grant string
	switch code {
	case kerr.TopicAuthorizationFailed:
		deny, grant = s.topicAdvice(topics)
	case kerr.GroupAuthorizationFailed:
		deny = fmt.Sprintf("may not use group %s", s.Group)
		grant = fmt.Sprintf("Read on group %s: %s --operation Read --group %s", s.Group, s.acls(), s.Group)
	case kerr.TransactionalIDAuthorizationFailed:
		deny = fmt.Sprintf("may not use transactional ID %s", s.TxnID)
		grant = fmt.Sprintf("Write on transactional ID %s: %s --operation Write --transactional-id %s", s.TxnID, s.acls(), s.TxnID)
	default: // kerr.ClusterAuthorizationFailed
		if s.Role == Consumer && len(s.Writes) == 0 {
			deny = "may not perform an operation on the cluster"
			grant = fmt.Sprintf("the operation the brokers' authorizer log names, on the cluster: %s --operation <operation> --cluster", s.acls())
		} else {
			deny = "may not write idempotently"
			grant = fmt.Sprintf("Write on the topics it writes (from Kafka 3.0 that also allows idempotent writes), or IdempotentWrite on the cluster on older brokers: %s --operation IdempotentWrite --cluster", s.acls())
		}
	}
	return fmt.Sprintf("kdeliver: not authorized: %s %s (%v): grant the client's principal %s", s.who(), deny, err, grant)
}

// topicAdvice says which topics the client may not read or write, and the
// ACLs to grant.
func (s Scope) topicAdvice(topics []string) (deny, grant string) {
	topics = slices.DeleteFunc(slices.Clone(topics), func(t string) bool { return t == "" })
	if len(topics) == 0 {
		topics = append(append([]string(nil), s.Reads...), s.Writes...)
	}
	var reads, writes []string
	for _, t := range topics {
		if t == "" {
			continue
		}
		read := slices.Contains(s.Reads, t)
		write := slices.Contains(s.Writes, t) || !read && (s.Role == Producer || s.Role == Transactional)
		if read || !write {
			reads = append(reads, t)
		}
		if write {
			writes = append(writes, t)
		}
	}
	slices.Sort(reads)
	reads = slices.Compact(reads)
	slices.Sort(writes)
	writes = slices.Compact(writes)
	var denies, grants []string
	for _, g := range []struct {
		op, verb string
		ts       []string
	}{{"Read", "read", reads}, {"Write", "write to", writes}} {
		if len(g.ts) == 0 {
			continue
		}
		noun := "topic "
		if len(g.ts) > 1 {
			noun = "topics "
		}
		names := strings.Join(g.ts, ", ")
		denies = append(denies, fmt.Sprintf("may not %s %s%s", g.verb, noun, names))
		grants = append(grants, fmt.Sprintf("%s on %s%s: %s --operation %s --topic %s", g.op, noun, names, s.acls(), g.op, strings.Join(g.ts, " --topic ")))
	}
	if len(denies) == 0 {
		return "may not use its topics", "Read on the topics it reads and Write on those it writes (kafka-acls.sh --operation Read --topic ...)"
	}
	return strings.Join(denies, " and "), strings.Join(grants, "; and ")
}

func (s Scope) authAdvice(what string, err error) string {
	switch what {
	case "sasl":
		return fmt.Sprintf("the brokers refused the client's SASL credentials (%v): check the mechanism, user name and password given to kdeliver.WithSASL, and that the user exists on the cluster with that mechanism (kafka-configs.sh --describe --entity-type users)", err)
	case "mechanism":
		return fmt.Sprintf("the brokers do not enable the client's SASL mechanism (%v): use one listed in the listener's sasl.enabled.mechanisms", err)
	case "cert":
		return fmt.Sprintf("the TLS handshake failed: the broker's certificate is not trusted, or not issued for the address connected to (%v): give the CA that signed it (kdeliver.WithTLS, kdeliver.WithTLSFiles) and connect with a host name the certificate names", err)
	case "alert":
		return fmt.Sprintf("the broker refused the TLS handshake (%v): check the client certificate and key (kdeliver.WithTLSFiles), that the broker trusts their CA, and that both sides share a TLS version", err)
	default: // "not-tls"
		return fmt.Sprintf("the TLS handshake failed: the broker does not speak TLS at that address (%v): connect to its TLS listener, or remove kdeliver.WithTLS", err)
	}
}

func (s Scope) unsupported(err error) string {
	need := "the requests it makes"
	switch s.Role {
	case Session:
		need = "exactly-once sessions (transactional offset commits of KIP-447 need Kafka 2.5 or later)"
	case Transactional:
		need = "transactions (Kafka 0.11 or later)"
	case Producer:
		need = "idempotent writes (Kafka 0.11 or later)"
	}
	return fmt.Sprintf("kdeliver: not supported by the brokers: %s needs %s (%v): upgrade the brokers, or choose a semantics they support", s.who(), need, err)
}

// ConnWatch is a kgo hook (kgo.HookBrokerConnect) that calls itself with
// each failed connection whose cause no retry fixes: refused SASL
// credentials or mechanism, a failed TLS handshake. kgo calls it on its
// connection path, so it must be quick and must not block. kgo itself
// retries such connections, silently for a consumer's group and fetches
// and until the delivery timeout for an idempotent producer's records.
type ConnWatch func(err error)

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (w ConnWatch) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil && authentication(err) != "" {
		w(err)
	}
}

var _ kgo.HookBrokerConnect = ConnWatch(nil)
