package eos

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// fatalBound is how long a failure no retry fixes may take to end Run in
// these tests: the first poll or request that carries it, plus the
// shutdown.
const fatalBound = 15 * time.Second

var quiet = kdeliver.WithLogger(slog.New(slog.DiscardHandler))

// runFatal runs s with h until Run returns by itself, within fatalBound
// after started() reports true (nil: at once), and checks that its error
// matches kind and cause and names every want.
func runFatal(t *testing.T, s *Session, h Handler, started func() bool, fault func(), kind, cause error, want ...string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, h) }()
	if started != nil {
		kdelivertest.WaitFor(t, 20*time.Second, "the session to start", started)
	}
	if fault != nil {
		fault()
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(fatalBound):
		cancel()
		<-done
		t.Fatalf("Run did not return within %v of a failure no retry fixes", fatalBound)
	}
	if !errors.Is(err, kind) || (cause != nil && !errors.Is(err, cause)) {
		t.Fatalf("Run = %v, want an error matching %v and %v", err, kind, cause)
	}
	if c := kdeliver.ClassOf(err); c != kdeliver.Fatal {
		t.Errorf("ClassOf(Run's error) = %v, want fatal", c)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Run's error %q lacks %q", err, w)
		}
	}
	return err
}

func newSession(t *testing.T, brokers []string, opts ...Option) *Session {
	t.Helper()
	s, err := New(brokers, "g", []string{"in"}, "copier-0", fastOpts(append([]Option{quiet, WithOutputTopic("out")}, opts...)...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// TestFetchNotAuthorizedEndsRun: the brokers refuse a running session's
// fetches of one input partition; Run returns ErrNotAuthorized naming the
// input topic, the open transaction aborts, and what was committed is
// exactly once: each committed input offset has its output once, nothing
// else is visible.
func TestFetchNotAuthorizedEndsRun(t *testing.T) {
	for _, conc := range []bool{false, true} {
		t.Run(map[bool]string{false: "sequential", true: "concurrent"}[conc], func(t *testing.T) {
			c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 3), kdelivertest.WithTopic("out", 3))
			const n = 300
			kdelivertest.Seed(t, c.Brokers(), "in", n)
			opts := []Option{WithCommitEvery(20, 50*time.Millisecond)}
			if conc {
				opts = append(opts, kdeliver.WithConcurrency(4, kdeliver.ByKey))
			}
			s := newSession(t, c.Brokers(), opts...)
			var handled atomic.Int64
			h := func(ctx context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
				handled.Add(1)
				time.Sleep(time.Millisecond)
				return copyTo("out")(ctx, in, emit)
			}
			var f *kfake.FaultHandle
			runFatal(t, s, h, func() bool { return handled.Load() >= 40 }, func() {
				f = c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: "in", Partitions: []int32{0}, Err: kerr.TopicAuthorizationFailed, Count: -1})
				kdelivertest.Seed(t, c.Brokers(), "in", n, kdelivertest.From(n))
			}, kdeliver.ErrNotAuthorized, kerr.TopicAuthorizationFailed,
				`session "copier-0" of group "g"`, "may not read topic in", "--operation Read --topic in")
			f.Remove()
			var inCommitted int64
			for _, o := range c.Committed("g", "in") {
				inCommitted += o
			}
			out := kdelivertest.ReadCommitted(t, c.Brokers(), "out")
			seen := map[string]bool{}
			for _, r := range out {
				if seen[string(r.Value)] {
					t.Fatalf("output %s is visible twice", r.Value)
				}
				seen[string(r.Value)] = true
			}
			if int64(len(out)) != inCommitted {
				t.Fatalf("%d outputs visible for %d committed inputs", len(out), inCommitted)
			}
			t.Logf("handled %d, committed %d inputs with their outputs; stats %+v", handled.Load(), inCommitted, s.Stats())
		})
	}
}

// TestGroupNotAuthorizedEndsRun: no Read on the group (the join or the
// offset fetch refused): Run returns ErrNotAuthorized naming the group.
func TestGroupNotAuthorizedEndsRun(t *testing.T) {
	for _, key := range []kmsg.Key{kmsg.JoinGroup, kmsg.OffsetFetch} {
		t.Run(key.Name(), func(t *testing.T) {
			c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
			kdelivertest.Seed(t, c.Brokers(), "in", 10)
			f := c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{key}, Group: "g", Err: kerr.GroupAuthorizationFailed, Count: -1})
			defer f.Remove()
			runFatal(t, newSession(t, c.Brokers()), copyTo("out"), nil, nil, kdeliver.ErrNotAuthorized, kerr.GroupAuthorizationFailed,
				"may not use group g", "--operation Read --group g")
		})
	}
}

// TestTransactionalIDNotAuthorizedEndsRun: no Write on the transactional
// ID: the fence at the start is refused, and Run returns ErrNotAuthorized
// naming the ID, instead of reading anything.
func TestTransactionalIDNotAuthorizedEndsRun(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	f := c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, TxnID: "copier-0", Err: kerr.TransactionalIDAuthorizationFailed, Count: -1})
	defer f.Remove()
	runFatal(t, newSession(t, c.Brokers()), copyTo("out"), nil, nil, kdeliver.ErrNotAuthorized, kerr.TransactionalIDAuthorizationFailed,
		"may not use transactional ID copier-0", "--operation Write --transactional-id copier-0")
}

// The SASL users of the ACL tests (SCRAM-SHA-512).
const (
	admin, adminPass = "admin", "admin-secret"
	userPass         = "user-secret"
)

func acl(res kmsg.ACLResourceType, name string, op kmsg.ACLOperation) kfake.ACL {
	return kfake.ACL{Resource: res, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true}
}

func scramAs(user, pass string) kgo.Opt {
	return kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism())
}

// TestACLs: on a cluster that enforces ACLs, a session whose principal
// lacks Write on the output topic or on the transactional ID stops with
// ErrNotAuthorized naming what to grant, with nothing visible in the
// output and no input committed; with every ACL it copies.
func TestACLs(t *testing.T) {
	inRead := acl(kmsg.ACLResourceTypeTopic, "in", kmsg.ACLOperationRead)
	outWrite := acl(kmsg.ACLResourceTypeTopic, "out", kmsg.ACLOperationWrite)
	groupRead := acl(kmsg.ACLResourceTypeGroup, "g", kmsg.ACLOperationRead)
	txnWrite := acl(kmsg.ACLResourceTypeTransactionalId, "copier-0", kmsg.ACLOperationWrite)
	users := map[string][]kfake.ACL{
		"no-output": {inRead, groupRead, txnWrite, acl(kmsg.ACLResourceTypeTopic, "out", kmsg.ACLOperationDescribe)},
		"no-txn-id": {inRead, groupRead, outWrite},
		"copier":    {inRead, groupRead, outWrite, txnWrite},
	}
	kopts := []kfake.Opt{kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser("SCRAM-SHA-512", admin, adminPass)}
	for u, acls := range users {
		kopts = append(kopts, kfake.User("SCRAM-SHA-512", u, userPass, acls...))
	}
	c := kdelivertest.Start(t, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2), kdelivertest.WithKfakeOpts(kopts...))
	p, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), scramAs(admin, adminPass))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := kdelivertest.Records("in", 20)
	if err := p.ProduceSync(ctx, want...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	as := func(user string) *Session { return newSession(t, c.Brokers(), WithKgoOpts(scramAs(user, userPass))) }
	for _, tc := range []struct {
		user  string
		cause error
		want  []string
	}{
		{"no-output", kerr.TopicAuthorizationFailed, []string{"may not write to topic out", "--operation Write --topic out"}},
		{"no-txn-id", kerr.TransactionalIDAuthorizationFailed, []string{"may not use transactional ID copier-0", "--transactional-id copier-0"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			err := runFatal(t, as(tc.user), copyTo("out"), nil, nil, kdeliver.ErrNotAuthorized, tc.cause, tc.want...)
			if strings.Contains(err.Error(), userPass) {
				t.Fatalf("the error holds the password: %v", err)
			}
		})
	}
	if got := kdelivertest.ReadCommitted(t, c.Brokers(), "out", scramAs(admin, adminPass)); len(got) != 0 {
		t.Fatalf("%d outputs visible from the sessions that were not authorized", len(got))
	}
	s := as("copier")
	done := make(chan error, 1)
	rctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { done <- s.Run(rctx, copyTo("out")) }()
	kdelivertest.WaitFor(t, 20*time.Second, "the copier to commit its input", func() bool { return c.CommittedAll("g", "in") })
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run with every ACL = %v", err)
	}
	if a := kdelivertest.Audit(kdelivertest.Values(want), kdelivertest.ReadCommitted(t, c.Brokers(), "out", scramAs(admin, adminPass))); !a.Exact() {
		t.Fatalf("output with every ACL: %s", a)
	}
}

// TestAuthenticationFailedEndsRun: the brokers refuse the session's SASL
// credentials as Kafka does (kfake itself only closes the connection):
// Ping and Run return ErrAuthentication at once, not after the start
// timeout, and hold no credential.
func TestAuthenticationFailedEndsRun(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1),
		kdelivertest.WithKfakeOpts(kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", admin, adminPass)))
	f := c.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.SASLAuthenticate}, Err: kerr.SaslAuthenticationFailed, Count: -1})
	defer f.Remove()
	s := newSession(t, c.Brokers(), kdeliver.WithStartTimeout(time.Minute), WithKgoOpts(scramAs(admin, "wrong-"+adminPass)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Ping(ctx); !errors.Is(err, kdeliver.ErrAuthentication) || !errors.Is(err, kerr.SaslAuthenticationFailed) {
		t.Fatalf("Ping = %v, want ErrAuthentication", err)
	}
	err := runFatal(t, s, copyTo("out"), nil, nil, kdeliver.ErrAuthentication, kerr.SaslAuthenticationFailed, "SASL credentials")
	if strings.Contains(err.Error(), adminPass) {
		t.Fatalf("the error holds the password: %v", err)
	}
}

// TestInputDeletedEndsRun: the input topic is deleted while the session
// runs; kgo reports nothing, the watch finds it missing at two checks a
// start timeout apart, and Run returns ErrTopicNotFound.
func TestInputDeletedEndsRun(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 2))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	s := newSession(t, c.Brokers(), kdeliver.WithStartTimeout(500*time.Millisecond))
	runFatal(t, s, copyTo("out"), func() bool { return c.CommittedAll("g", "in") }, func() {
		adm, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...))
		if err != nil {
			t.Fatal(err)
		}
		defer adm.Close()
		req := kmsg.NewPtrDeleteTopicsRequest()
		rt := kmsg.NewDeleteTopicsRequestTopic()
		rt.Topic = kmsg.StringPtr("in")
		req.Topics = append(req.Topics, rt)
		req.TopicNames = []string{"in"}
		if _, err := req.RequestWith(context.Background(), adm); err != nil {
			t.Fatal(err)
		}
	}, kdeliver.ErrTopicNotFound, kerr.UnknownTopicOrPartition, "topic in does not exist any more")
}
