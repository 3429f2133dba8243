package producer

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

const (
	admin, adminPass = "admin", "admin-s3cret-7f2a"
	userPass         = "user-s3cret-c41d"
	// fatalBound is how long a failure no retry fixes may take to fail a
	// call in these tests, with a delivery timeout far beyond it.
	fatalBound = 15 * time.Second
)

func quietLog() Option { return kdeliver.WithLogger(slog.New(slog.DiscardHandler)) }

// longTimeout adds a delivery timeout of an hour where sem retries.
func longTimeout(sem kdeliver.Semantics, opts ...Option) []Option {
	if sem == kdeliver.AtMostOnce {
		return opts
	}
	return append(opts, WithDeliveryTimeout(time.Hour))
}

func aclFor(res kmsg.ACLResourceType, name string, op kmsg.ACLOperation) kfake.ACL {
	return kfake.ACL{Resource: res, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true}
}

func scramAs(user, pass string) Option {
	return WithKgoOpts(kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
}

// aclCluster starts a cluster with SASL and ACLs, topic "t", a super user
// and these users, each with their ACLs.
func aclCluster(t *testing.T, users map[string][]kfake.ACL) *kdelivertest.Cluster {
	t.Helper()
	opts := []kfake.Opt{kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser("SCRAM-SHA-512", admin, adminPass)}
	for u, acls := range users {
		opts = append(opts, kfake.User("SCRAM-SHA-512", u, userPass, acls...))
	}
	return kdelivertest.Start(t, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("t", 2), kdelivertest.WithKfakeOpts(opts...))
}

// failsWithin runs fn and checks that it fails within fatalBound with an
// error matching kind and cause, of the fatal class, holding no password.
func failsWithin(t *testing.T, what string, kind, cause error, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fatalBound)
	defer cancel()
	began := time.Now()
	err := fn(ctx)
	t.Logf("%s failed after %v", what, time.Since(began).Round(time.Millisecond))
	switch {
	case err == nil:
		t.Fatalf("%s succeeded", what)
	case ctx.Err() != nil:
		t.Fatalf("%s did not fail by itself within %v of a failure no retry fixes: %v", what, fatalBound, err)
	case !errors.Is(err, kind) || !errors.Is(err, cause):
		t.Fatalf("%s = %v, want an error matching %v and %v", what, err, kind, cause)
	case kdeliver.ClassOf(err) != kdeliver.Fatal:
		t.Errorf("ClassOf(%s's error) = %v, want fatal", what, kdeliver.ClassOf(err))
	}
	for _, secret := range []string{adminPass, userPass} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("%s's error holds a password: %v", what, err)
		}
	}
}

// TestProduceNotAuthorized: a principal without Describe and Write on
// topic t gets ErrNotAuthorized with TOPIC_AUTHORIZATION_FAILED from
// Produce, Send and ProduceAsync under every semantics, naming the ACL to
// grant; one that may describe t but not write it gets the same from an
// at-most-once producer with leader acks (with acks=0 the broker answers
// nothing) and CLUSTER_AUTHORIZATION_FAILED from an idempotent one, which
// may not get a producer ID; a transactional producer without Write on its
// transactional ID gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED from
// Transact, which then stays failed.
func TestProduceNotAuthorized(t *testing.T) {
	describe := aclFor(kmsg.ACLResourceTypeTopic, "t", kmsg.ACLOperationDescribe)
	write := aclFor(kmsg.ACLResourceTypeTopic, "t", kmsg.ACLOperationWrite)
	cl := aclCluster(t, map[string][]kfake.ACL{
		"nothing":       {aclFor(kmsg.ACLResourceTypeGroup, "g", kmsg.ACLOperationRead)},
		"describe-only": {describe},
		"no-txn":        {describe, write},
	})
	for _, tc := range []struct {
		name  string
		user  string
		sem   kdeliver.Semantics
		opts  []Option
		cause error
		grant string
	}{
		{"at-most-once", "nothing", kdeliver.AtMostOnce, nil, kerr.TopicAuthorizationFailed, "--operation Write --topic t"},
		{"at-least-once", "nothing", kdeliver.AtLeastOnce, nil, kerr.TopicAuthorizationFailed, "--operation Write --topic t"},
		{"at-most-once leader acks, describe only", "describe-only", kdeliver.AtMostOnce, []Option{WithLeaderAck()}, kerr.TopicAuthorizationFailed, "--operation Write --topic t"},
		{"at-least-once, describe only", "describe-only", kdeliver.AtLeastOnce, nil, kerr.ClusterAuthorizationFailed, "--operation IdempotentWrite --cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(cl.Brokers(), tc.sem, longTimeout(tc.sem, append(tc.opts, quietLog(), scramAs(tc.user, userPass))...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(context.Background())
			failsWithin(t, "Produce", kdeliver.ErrNotAuthorized, tc.cause, func(ctx context.Context) error {
				err := p.Produce(ctx, &kgo.Record{Topic: "t", Value: []byte("x")})
				if err != nil && !strings.Contains(err.Error(), tc.grant) {
					t.Errorf("the error does not name the ACL to grant (%s): %v", tc.grant, err)
				}
				return err
			})
			failsWithin(t, "Send", kdeliver.ErrNotAuthorized, tc.cause, func(ctx context.Context) error {
				return p.Send(ctx, &kgo.Record{Topic: "t", Value: []byte("a")}, &kgo.Record{Topic: "t", Value: []byte("b")})
			})
			failsWithin(t, "ProduceAsync", kdeliver.ErrNotAuthorized, tc.cause, func(ctx context.Context) error {
				done := make(chan error, 1)
				p.ProduceAsync(ctx, &kgo.Record{Topic: "t", Value: []byte("c")}, func(_ *kgo.Record, err error) { done <- err })
				return <-done
			})
		})
	}
	t.Run("transactional ID", func(t *testing.T) {
		p, err := NewTransactional(cl.Brokers(), "txn", quietLog(), scramAs("no-txn", userPass), WithDeliveryTimeout(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(context.Background())
		for i := range 2 { // the second call returns the failure kept
			failsWithin(t, "Transact", kdeliver.ErrNotAuthorized, kerr.TransactionalIDAuthorizationFailed, func(ctx context.Context) error {
				return p.Transact(ctx, func(ctx context.Context, tx *Tx) error {
					return tx.Produce(ctx, &kgo.Record{Topic: "t", Value: []byte{byte(i)}})
				})
			})
		}
	})
}

// TestProduceAuthenticationFailed: the brokers refuse the producer's SASL
// credentials as Kafka does (SASL_AUTHENTICATION_FAILED); with a delivery
// timeout of an hour, Ping, Produce and Send of every producer kind fail
// with ErrAuthentication at the first refusals instead of retrying until
// the timeout, and nothing is written.
func TestProduceAuthenticationFailed(t *testing.T) {
	cl := aclCluster(t, nil)
	f := cl.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.SASLAuthenticate}, Err: kerr.SaslAuthenticationFailed, Count: -1})
	wrong := WithKgoOpts(kgo.SASL(scram.Auth{User: admin, Pass: "wrong-" + adminPass}.AsSha512Mechanism()), kgo.MetadataMinAge(time.Second))
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
		t.Run(sem.String(), func(t *testing.T) {
			p, err := New(cl.Brokers(), sem, longTimeout(sem, quietLog(), wrong)...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(context.Background())
			failsWithin(t, "Ping", kdeliver.ErrAuthentication, kerr.SaslAuthenticationFailed, p.Ping)
			for range 2 {
				failsWithin(t, "Produce", kdeliver.ErrAuthentication, kerr.SaslAuthenticationFailed, func(ctx context.Context) error {
					return p.Produce(ctx, &kgo.Record{Topic: "t", Value: []byte("x")})
				})
			}
			failsWithin(t, "Send", kdeliver.ErrAuthentication, kerr.SaslAuthenticationFailed, func(ctx context.Context) error {
				return p.Send(ctx, &kgo.Record{Topic: "t", Value: []byte("a")}, &kgo.Record{Topic: "t", Value: []byte("b")})
			})
		})
	}
	t.Run("transactional", func(t *testing.T) {
		p, err := NewTransactional(cl.Brokers(), "txn", quietLog(), wrong, WithDeliveryTimeout(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(context.Background())
		for range 2 {
			failsWithin(t, "Transact", kdeliver.ErrAuthentication, kerr.SaslAuthenticationFailed, func(ctx context.Context) error {
				return p.Transact(ctx, func(ctx context.Context, tx *Tx) error {
					return tx.Produce(ctx, &kgo.Record{Topic: "t", Value: []byte("x")})
				})
			})
		}
	})
	f.Remove()
	adm, err := kgo.NewClient(kgo.SeedBrokers(cl.Brokers()...), kgo.SASL(scram.Auth{User: admin, Pass: adminPass}.AsSha512Mechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), fatalBound)
	defer cancel()
	ends, err := kadm.NewClient(adm).ListEndOffsets(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil || o.Offset != 0 {
			t.Errorf("partition %d: end offset %d (%v): something was written with refused credentials", o.Partition, o.Offset, o.Err)
		}
	})
}
