package consumer

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func quiet() Option { return kdeliver.WithLogger(slog.New(slog.DiscardHandler)) }

// fatalBound is how long a failure no retry fixes may take to end Run in
// these tests: the first poll that carries it, plus the shutdown.
const fatalBound = 15 * time.Second

// waitFatal waits for Run to return by itself within fatalBound, and
// checks that its error matches kind and cause and names every want.
func waitFatal(t *testing.T, r *runner, kind, cause error, want ...string) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- <-r.ch }()
	var err error
	select {
	case err = <-ch:
		r.got, r.err = true, err
	case <-time.After(fatalBound):
		r.cancel()
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

// assertPrefixCommitted checks that every offset below the group's
// committed offset of each partition was handled: nothing unhandled was
// committed past.
func assertPrefixCommitted(t *testing.T, cl *kdelivertest.Cluster, group string, l *ledger) {
	t.Helper()
	handled := map[pos]bool{}
	l.mu.Lock()
	for _, p := range l.pos {
		handled[p] = true
	}
	l.mu.Unlock()
	for part, c := range committed(cl, group) {
		for off := range c {
			if !handled[pos{part, off}] {
				t.Fatalf("partition %d committed at %d past offset %d, which was never handled", part, c, off)
			}
		}
	}
}

// TestFetchNotAuthorizedEndsRun: the brokers refuse the fetches of a
// running consumer on one partition (TOPIC_AUTHORIZATION_FAILED, as when
// its Read ACL is revoked) while more records arrive on the others; Run
// returns an error matching ErrNotAuthorized and the Kafka error, naming
// the topic and the ACL, instead of a warning a poll for ever. The
// at-least-once paths committed nothing past a record they did not handle:
// neither the records of the poll that carried the error nor, with
// concurrent handlers, a record still failing while later ones of its
// partition were done.
func TestFetchNotAuthorizedEndsRun(t *testing.T) {
	const stuck = 7 // fails until Run stops, concurrent cases
	for _, tc := range []struct {
		name  string
		sem   kdeliver.Semantics
		stuck bool
		opts  []Option
	}{
		{"sequential at-least-once", kdeliver.AtLeastOnce, false, nil},
		{"concurrent at-least-once", kdeliver.AtLeastOnce, true, []Option{kdeliver.WithConcurrency(4, kdeliver.ByKey)}},
		{"sequential at-most-once", kdeliver.AtMostOnce, false, nil},
		{"concurrent at-most-once", kdeliver.AtMostOnce, false, []Option{kdeliver.WithConcurrency(4, kdeliver.Unordered)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, 3)
			const n = 300
			produce(t, cl, 0, n)
			l := newLedger()
			c := mustNew(t, cl, "g", tc.sem, append([]Option{WithMaxPollRecords(20), quiet()}, tc.opts...)...)
			h := slowRecorder(l, nil)
			if tc.stuck {
				h = func(ctx context.Context, rec *kgo.Record) error {
					if string(rec.Value) == strconv.Itoa(stuck) {
						return errors.New("not yet")
					}
					return slowRecorder(l, nil)(ctx, rec)
				}
			}
			r := start(c, h)
			waitFor(t, "50 records handled", func() bool { return l.distinct() >= 50 })
			f := cl.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: "t", Partitions: []int32{0}, Err: kerr.TopicAuthorizationFailed, Count: -1})
			defer f.Remove()
			produce(t, cl, n, 2*n)
			waitFatal(t, r, kdeliver.ErrNotAuthorized, kerr.TopicAuthorizationFailed,
				`consumer of group "g"`, "may not read topic t", "--operation Read --topic t")
			if f.Hits() == 0 {
				t.Fatal("no fetch was refused")
			}
			if tc.sem == kdeliver.AtLeastOnce {
				assertPrefixCommitted(t, cl, "g", l)
			}
			t.Logf("handled %d of %d before the fetches were refused %d times; committed %v", l.distinct(), 2*n, f.Hits(), committed(cl, "g"))
		})
	}
}

// TestGroupNotAuthorizedEndsRun: the group coordinator refuses the join
// or the offset fetch (GROUP_AUTHORIZATION_FAILED: no Read on the group);
// kgo injects it into every poll as an ErrGroupSession and retries the
// join for ever. Run returns ErrNotAuthorized naming the group; a guard
// and a sink consumer too.
func TestGroupNotAuthorizedEndsRun(t *testing.T) {
	for _, key := range []kmsg.Key{kmsg.JoinGroup, kmsg.OffsetFetch} {
		for _, kind := range []string{"plain", "concurrent", "guard", "sink"} {
			t.Run(key.Name()+"/"+kind, func(t *testing.T) {
				cl := newCluster(t, 2)
				produce(t, cl, 0, 10)
				f := cl.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{key}, Group: "g", Err: kerr.GroupAuthorizationFailed, Count: -1})
				defer f.Remove()
				l := newLedger()
				var r *runner
				switch kind {
				case "plain":
					r = start(mustNew(t, cl, "g", kdeliver.AtLeastOnce, quiet()), recordAll(l))
				case "concurrent":
					r = start(mustNew(t, cl, "g", kdeliver.AtLeastOnce, quiet(), kdeliver.WithConcurrency(2, kdeliver.ByPartition)), recordAll(l))
				case "guard":
					r = start(mustNewWithGuard(t, cl, "g", newGuard(t, dedup.NewMemory(100)), quiet()), recordAll(l))
				case "sink":
					r = startSink(mustNewWithSink(t, cl, "g", newMemSink(newMemDB(), "s"), quiet()))
				}
				waitFatal(t, r, kdeliver.ErrNotAuthorized, kerr.GroupAuthorizationFailed, "may not use group g", "--operation Read --group g")
				if d := l.distinct(); d != 0 {
					t.Fatalf("handled %d records without a group", d)
				}
			})
		}
	}
}

// TestFetchUnsupportedEndsRun: brokers that answer UNSUPPORTED_VERSION end
// Run with ErrUnsupported.
func TestFetchUnsupportedEndsRun(t *testing.T) {
	cl := newCluster(t, 1)
	produce(t, cl, 0, 10)
	f := cl.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Err: kerr.UnsupportedVersion, Count: -1})
	defer f.Remove()
	r := start(mustNew(t, cl, "g", kdeliver.AtLeastOnce, quiet()), recordAll(newLedger()))
	waitFatal(t, r, kdeliver.ErrUnsupported, kerr.UnsupportedVersion, "not supported by the brokers")
}

// TestDeadLetterNotAuthorizedEndsRun: the dead-letter topic refuses the
// consumer's writes; Run returns ErrNotAuthorized naming it, and the
// record that could not be dead-lettered is not committed past.
func TestDeadLetterNotAuthorizedEndsRun(t *testing.T) {
	cl := kdelivertest.Start(t, kdelivertest.WithTopic("t", 1), kdelivertest.WithTopic("dlq", 1))
	produce(t, cl, 0, 5)
	f := cl.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "dlq", Err: kerr.TopicAuthorizationFailed, Count: -1})
	defer f.Remove()
	l := newLedger()
	c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, quiet(), kdeliver.WithMaxAttempts(1), WithDeadLetterTopic("dlq"))
	r := start(c, func(_ context.Context, rec *kgo.Record) error {
		if l.add(rec) == 2 {
			return errors.New("poison")
		}
		return nil
	})
	waitFatal(t, r, kdeliver.ErrNotAuthorized, kerr.TopicAuthorizationFailed, "may not write to topic dlq", "--operation Write --topic dlq")
	if got := committed(cl, "g")[0]; got > 2 {
		t.Fatalf("committed offset %d, past the record that was not dead-lettered (offset 2)", got)
	}
}

// TestTopicDeletedEndsRun: the topic is deleted while the consumer runs,
// which kgo reports nowhere (its polls just come back empty); the watch
// finds it missing at two checks a start timeout apart, and Run returns
// ErrTopicNotFound.
func TestTopicDeletedEndsRun(t *testing.T) {
	for _, conc := range []bool{false, true} {
		t.Run(map[bool]string{false: "sequential", true: "concurrent"}[conc], func(t *testing.T) {
			cl := newCluster(t, 2)
			produce(t, cl, 0, 10)
			l := newLedger()
			opts := []Option{quiet(), kdeliver.WithStartTimeout(500 * time.Millisecond)}
			if conc {
				opts = append(opts, kdeliver.WithConcurrency(2, kdeliver.ByPartition))
			}
			r := start(mustNew(t, cl, "g", kdeliver.AtLeastOnce, opts...), recordAll(l))
			waitFor(t, "all records", func() bool { return l.distinct() == 10 })
			deleteTopic(t, cl, "t")
			waitFatal(t, r, kdeliver.ErrTopicNotFound, kerr.UnknownTopicOrPartition, "topic t does not exist any more")
		})
	}
}

func deleteTopic(t *testing.T, cl *kdelivertest.Cluster, topic string) {
	t.Helper()
	adm, err := kgo.NewClient(kgo.SeedBrokers(cl.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	req := kmsg.NewPtrDeleteTopicsRequest()
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	req.TopicNames = []string{topic}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := req.RequestWith(ctx, adm)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("deleting topic %s: %v", topic, err)
	}
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

// aclCluster starts a cluster with SASL and ACLs, topic "t" holding n
// records, a super user and these users, each with their ACLs.
func aclCluster(t *testing.T, n int, users map[string][]kfake.ACL) *kdelivertest.Cluster {
	t.Helper()
	opts := []kfake.Opt{kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser("SCRAM-SHA-512", admin, adminPass)}
	for u, acls := range users {
		opts = append(opts, kfake.User("SCRAM-SHA-512", u, userPass, acls...))
	}
	cl := kdelivertest.Start(t, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("t", 2), kdelivertest.WithKfakeOpts(opts...))
	p, err := kgo.NewClient(kgo.SeedBrokers(cl.Brokers()...), scramAs(admin, adminPass), kgo.DefaultProduceTopic("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.ProduceSync(ctx, kdelivertest.Records("t", n)...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	return cl
}

// TestACLs: on a cluster that enforces ACLs, a consumer whose principal may
// describe the topic but not read it, or may read it but not use the
// group, stops with ErrNotAuthorized naming what to grant; Ping of one
// that may not describe the topic says so too.
func TestACLs(t *testing.T) {
	topicRead := acl(kmsg.ACLResourceTypeTopic, "t", kmsg.ACLOperationRead)
	topicDescribe := acl(kmsg.ACLResourceTypeTopic, "t", kmsg.ACLOperationDescribe)
	groupRead := acl(kmsg.ACLResourceTypeGroup, "g", kmsg.ACLOperationRead)
	cl := aclCluster(t, 20, map[string][]kfake.ACL{
		"describe-only": {topicDescribe, groupRead},
		"no-group":      {topicRead},
		"nothing":       {groupRead},
		"reader":        {topicRead, groupRead},
	})
	newAs := func(user string, opts ...Option) *Consumer {
		c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce,
			append([]Option{fastOpts(), quiet(), WithKgoOpts(scramAs(user, userPass))}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		user  string
		cause error
		want  []string
	}{
		{"describe-only", kerr.TopicAuthorizationFailed, []string{"may not read topic t", "--operation Read --topic t"}},
		{"no-group", kerr.GroupAuthorizationFailed, []string{"may not use group g", "--operation Read --group g"}},
		{"nothing", kerr.TopicAuthorizationFailed, []string{"may not read topic t"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			for _, conc := range []bool{false, true} {
				var opts []Option
				if conc {
					opts = append(opts, kdeliver.WithConcurrency(2, kdeliver.ByPartition))
				}
				l := newLedger()
				err := waitFatal(t, start(newAs(tc.user, opts...), recordAll(l)), kdeliver.ErrNotAuthorized, tc.cause, tc.want...)
				if strings.Contains(err.Error(), userPass) {
					t.Fatalf("the error holds the password: %v", err)
				}
				if d := l.distinct(); d != 0 {
					t.Fatalf("handled %d records", d)
				}
			}
		})
	}
	pctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := newAs("nothing").Ping(pctx); !errors.Is(err, kdeliver.ErrNotAuthorized) || !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("Ping without Describe = %v, want ErrNotAuthorized", err)
	}
	// The same cluster lets the principal with the ACLs read.
	l := newLedger()
	r := start(newAs("reader"), recordAll(l))
	waitFor(t, "all records", func() bool { return l.distinct() == 20 })
	if err := r.stop(t); err != nil {
		t.Fatalf("Run with the ACLs = %v", err)
	}
}

// TestAuthenticationFailedEndsRun: the brokers refuse the client's SASL
// credentials as Kafka does (SASL_AUTHENTICATION_FAILED; kfake itself only
// closes the connection); Ping and Run return ErrAuthentication at the
// first refusal rather than waiting the start timeout as for unreachable
// brokers, and the message holds no credential.
func TestAuthenticationFailedEndsRun(t *testing.T) {
	cl := aclCluster(t, 5, nil)
	f := cl.Kfake().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.SASLAuthenticate}, Err: kerr.SaslAuthenticationFailed, Count: -1})
	defer f.Remove()
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce,
		fastOpts(), quiet(), kdeliver.WithStartTimeout(time.Minute), WithKgoOpts(scramAs(admin, "wrong-"+adminPass)))
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Ping(pctx); !errors.Is(err, kdeliver.ErrAuthentication) || !errors.Is(err, kerr.SaslAuthenticationFailed) {
		t.Fatalf("Ping = %v, want ErrAuthentication", err)
	}
	err = waitFatal(t, start(c, recordAll(newLedger())), kdeliver.ErrAuthentication, kerr.SaslAuthenticationFailed, "SASL credentials")
	if strings.Contains(err.Error(), adminPass) {
		t.Fatalf("the error holds the password: %v", err)
	}
}
