package securitytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
	"github.com/kdeliver/kdeliver/share"
)

const (
	records = 20 // each run writes, reads or copies this many
	// bound is how long a run may take before the test calls it a hang:
	// a missing ACL must fail the call, not make it retry for ever.
	bound = 60 * time.Second
)

// names are the resources of one run: its own topics, group and
// transactional ID, so that no run sees another's state.
type names struct {
	in, out, group, txnID string
}

func newNames(subject, run string) names {
	base := strings.NewReplacer(" ", "-", "/", "-", ":", "-").Replace(subject + "-" + run)
	return names{in: base + "-in", out: base + "-out", group: base + "-group", txnID: base + "-txn"}
}

// subject is one semantics of kdeliver and the least-privilege ACLs of its
// principal.
type subject struct {
	name string
	// acls are the ACLs its principal needs: each of them, and no more.
	acls func(n names) []integration.ACL
	// seed: the run reads n.in, which must hold the records first.
	seed bool
	// run builds the client with opts and does its work: it returns nil
	// once done (every record written, or read and committed, or copied
	// and committed), or the first error kdeliver returned.
	run func(ctx context.Context, n names, opts []kdeliver.Option) error
	// verify checks, after a run returned nil, that its work is there.
	verify func(t *testing.T, ctx context.Context, n names)
}

// The least-privilege ACLs of each semantics, as measured on Kafka 4.4.0
// by TestLeastPrivilege (each is needed, together they are enough).
func producerACLs(n names) []integration.ACL {
	return []integration.ACL{integration.TopicACL(n.out, kadm.OpWrite)}
}

func transactionalACLs(n names) []integration.ACL {
	return []integration.ACL{
		integration.TopicACL(n.out, kadm.OpWrite),
		integration.TxnIDACL(n.txnID, kadm.OpWrite),
	}
}

func consumerACLs(n names) []integration.ACL {
	return []integration.ACL{
		integration.TopicACL(n.in, kadm.OpRead),
		integration.GroupACL(n.group, kadm.OpRead),
	}
}

func sessionACLs(n names) []integration.ACL {
	return []integration.ACL{
		integration.TopicACL(n.in, kadm.OpRead),
		integration.TopicACL(n.out, kadm.OpWrite),
		integration.GroupACL(n.group, kadm.OpRead),
		integration.TxnIDACL(n.txnID, kadm.OpWrite),
	}
}

// capt is what every client of the suite logs, traces and returns.
var capt = newCapture()

func subjects(sec *integration.Security) []subject {
	return []subject{
		{name: "producer at-least-once", acls: producerACLs, run: produce(sec, kdeliver.AtLeastOnce), verify: verifyWritten},
		{name: "producer at-most-once", acls: producerACLs, run: produce(sec, kdeliver.AtMostOnce), verify: verifyWritten},
		{name: "producer exactly-once", acls: transactionalACLs, run: produceInTransactions(sec), verify: verifyWritten},
		{name: "consumer at-least-once", acls: consumerACLs, seed: true, run: consume(sec, kdeliver.AtLeastOnce), verify: verifyCommitted},
		{name: "consumer at-most-once", acls: consumerACLs, seed: true, run: consume(sec, kdeliver.AtMostOnce), verify: verifyCommitted},
		{name: "eos session", acls: sessionACLs, seed: true, run: copyEOS(sec), verify: verifyCopied},
		{name: "share consumer", acls: consumerACLs, seed: true, run: consumeShare(sec), verify: func(*testing.T, context.Context, names) {}},
	}
}

func values() []string {
	vs := make([]string, records)
	for i := range vs {
		vs[i] = "v:" + strconv.Itoa(i)
	}
	return vs
}

func produce(sec *integration.Security, sem kdeliver.Semantics) func(ctx context.Context, n names, opts []kdeliver.Option) error {
	return func(ctx context.Context, n names, opts []kdeliver.Option) error {
		var po []producer.Option
		for _, o := range opts {
			po = append(po, o)
		}
		p, err := producer.New(sec.Brokers(), sem, po...)
		if err != nil {
			return err
		}
		defer closeWithin(p.Close)
		for _, v := range values() {
			if err := p.Produce(ctx, &kgo.Record{Topic: n.out, Key: []byte("k"), Value: []byte(v)}); err != nil {
				return err
			}
		}
		return p.Close(ctx)
	}
}

// produceInTransactions writes the records with a transactional producer,
// in transactions of 5.
func produceInTransactions(sec *integration.Security) func(ctx context.Context, n names, opts []kdeliver.Option) error {
	return func(ctx context.Context, n names, opts []kdeliver.Option) error {
		var po []producer.Option
		for _, o := range opts {
			po = append(po, o)
		}
		p, err := producer.NewTransactional(sec.Brokers(), n.txnID, po...)
		if err != nil {
			return err
		}
		defer closeWithin(p.Close)
		vs := values()
		for len(vs) > 0 {
			batch := vs[:min(5, len(vs))]
			vs = vs[len(batch):]
			err := p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
				for _, v := range batch {
					if err := tx.Produce(ctx, &kgo.Record{Topic: n.out, Key: []byte("k"), Value: []byte(v)}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return p.Close(ctx)
	}
}

func consume(sec *integration.Security, sem kdeliver.Semantics) func(ctx context.Context, n names, opts []kdeliver.Option) error {
	return func(ctx context.Context, n names, opts []kdeliver.Option) error {
		var co []consumer.Option
		for _, o := range opts {
			co = append(co, o)
		}
		c, err := consumer.New(sec.Brokers(), n.group, []string{n.in}, sem, co...)
		if err != nil {
			return err
		}
		defer closeWithin(c.Close)
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		go stopWhenCommitted(rctx, stop, n.group, n.in)
		return c.Run(rctx, func(context.Context, *kgo.Record) error { return nil })
	}
}

// consumeShare reads n.in as a share group, at least once, and returns
// nil once every record was handled. The group starts at the earliest
// offset, set by the super user (share.WithStartAtEarliest would need
// AlterConfigs on the group too).
func consumeShare(sec *integration.Security) func(ctx context.Context, n names, opts []kdeliver.Option) error {
	return func(ctx context.Context, n names, opts []kdeliver.Option) error {
		if err := startEarliest(ctx, n.group); err != nil {
			return fmt.Errorf("setting share.auto.offset.reset on %s as the super user: %w", n.group, err)
		}
		var so []share.Option
		for _, o := range opts {
			so = append(so, o)
		}
		c, err := share.New(sec.Brokers(), n.group, []string{n.in}, kdeliver.AtLeastOnce, so...)
		if err != nil {
			return err
		}
		defer closeWithin(c.Close)
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		var mu sync.Mutex
		seen := map[string]bool{}
		err = c.Run(rctx, func(_ context.Context, r *kgo.Record) error {
			mu.Lock()
			defer mu.Unlock()
			seen[string(r.Value)] = true
			if len(seen) == records {
				stop()
			}
			return nil
		})
		if err == nil && len(seen) != records {
			return fmt.Errorf("the share consumer stopped with %d of %d records handled", len(seen), records)
		}
		return err
	}
}

// startEarliest sets group's share.auto.offset.reset to earliest through
// the PLAINTEXT listener.
func startEarliest(ctx context.Context, group string) error {
	cl, err := cluster.NewClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	res := kmsg.NewIncrementalAlterConfigsRequestResource()
	res.ResourceType, res.ResourceName = kmsg.ConfigResourceTypeGroupConfig, group
	c := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	v := "earliest"
	c.Name, c.Value, c.Op = "share.auto.offset.reset", &v, kmsg.IncrementalAlterConfigOpSet
	res.Configs = append(res.Configs, c)
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	for _, r := range resp.Resources {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			return err
		}
	}
	return nil
}

func copyEOS(sec *integration.Security) func(ctx context.Context, n names, opts []kdeliver.Option) error {
	return func(ctx context.Context, n names, opts []kdeliver.Option) error {
		eo := []eos.Option{eos.WithOutputTopic(n.out), eos.WithCommitEvery(records, 200*time.Millisecond)}
		for _, o := range opts {
			eo = append(eo, o)
		}
		s, err := eos.New(sec.Brokers(), n.group, []string{n.in}, n.txnID, eo...)
		if err != nil {
			return err
		}
		defer closeWithin(s.Close)
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		go stopWhenCommitted(rctx, stop, n.group, n.in)
		return s.Run(rctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}
}

func closeWithin(close func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = capt.err(close(ctx))
}

// stopWhenCommitted calls stop once group has committed every record of
// topic (read through the PLAINTEXT listener, as a super user).
func stopWhenCommitted(ctx context.Context, stop func(), group, topic string) {
	for ctx.Err() == nil {
		if committed(ctx, group, topic) >= records {
			stop()
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func committed(ctx context.Context, group, topic string) int64 {
	offs, err := cluster.Admin().FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		return 0
	}
	var n int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Err == nil && o.At > 0 {
			n += o.At
		}
	})
	return n
}

// verifyWritten checks that n.out holds every record once (read back
// through the PLAINTEXT listener). An at-most-once producer does not wait
// for acknowledgements: its last records may still be on their way.
func verifyWritten(t *testing.T, ctx context.Context, n names) {
	t.Helper()
	var a kdelivertest.Report
	for deadline := time.Now().Add(10 * time.Second); ; {
		recs, err := cluster.ReadCommitted(ctx, n.out)
		if err != nil {
			t.Fatal(err)
		}
		a = kdelivertest.Audit(values(), recs)
		if len(a.Lost) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(a.Lost) > 0 || len(a.Duplicated) > 0 || len(a.Unexpected) > 0 {
		t.Errorf("%s holds not exactly what was produced: %s", n.out, a)
	}
}

func verifyCommitted(t *testing.T, ctx context.Context, n names) {
	t.Helper()
	if got := committed(ctx, n.group, n.in); got != records {
		t.Errorf("group %s committed %d records of %s, want %d", n.group, got, n.in, records)
	}
}

func verifyCopied(t *testing.T, ctx context.Context, n names) {
	t.Helper()
	verifyCommitted(t, ctx, n)
	recs, err := cluster.ReadCommitted(ctx, n.out)
	if err != nil {
		t.Fatal(err)
	}
	if a := kdelivertest.Audit(values(), recs); len(a.Lost) > 0 || len(a.Duplicated) > 0 || len(a.Unexpected) > 0 {
		t.Errorf("%s is not exactly the input: %s", n.out, a)
	}
}

// prepare creates the topics of a run (with the PLAINTEXT admin), seeds
// its input if s reads one, and a user with acls.
func prepare(t *testing.T, ctx context.Context, sec *integration.Security, s subject, n names, acls []integration.ACL) integration.User {
	t.Helper()
	for _, topic := range []string{n.in, n.out} {
		if err := cluster.CreateTopic(ctx, topic, 2); err != nil {
			t.Fatal(err)
		}
	}
	if s.seed {
		cl := cluster.Client(t, kgo.DefaultProduceTopic(n.in))
		var rs []*kgo.Record
		for _, v := range values() {
			rs = append(rs, &kgo.Record{Key: []byte(v), Value: []byte(v)})
		}
		if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
			t.Fatalf("seed %s: %v", n.in, err)
		}
	}
	u, err := sec.CreateUser(ctx, strings.TrimSuffix(n.in, "-in"))
	if err != nil {
		t.Fatal(err)
	}
	for what, v := range u.Secrets() {
		capt.secret(u.Name+" "+what, v)
	}
	if len(acls) > 0 {
		if err := sec.Grant(ctx, u.Name, acls...); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// conn returns the options that connect as user with password, trusting
// the CAs of tlsCfg, plus the capture's.
func conn(tlsCfg *tls.Config, user, password string) []kdeliver.Option {
	return append([]kdeliver.Option{
		kdeliver.WithTLS(tlsCfg),
		kdeliver.WithSASL(kdeliver.SASLScramSHA512(user, password)),
	}, capt.opts()...)
}

// within runs fn and returns how long it took and its error; if fn has
// not returned within bound, the test fails: the call hangs.
func within(t *testing.T, what string, fn func(ctx context.Context) error) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	began := time.Now()
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return time.Since(began), capt.err(err)
	case <-time.After(bound):
		cancel()
		select {
		case err := <-done:
			t.Fatalf("%s had not returned after %s (it hangs; cancelled, it returned %v)", what, bound, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s had not returned after %s, nor 30 s after its ctx was cancelled", what, bound)
		}
		return 0, nil
	}
}

// deniedAs is the error Kafka answers a principal that lacks a.
func deniedAs(a integration.ACL) error {
	switch {
	case strings.HasPrefix(a.String(), "Topic:"):
		return kerr.TopicAuthorizationFailed
	case strings.HasPrefix(a.String(), "Group:"):
		return kerr.GroupAuthorizationFailed
	case strings.HasPrefix(a.String(), "TransactionalId:"):
		return kerr.TransactionalIDAuthorizationFailed
	}
	return kerr.ClusterAuthorizationFailed
}

// TestLeastPrivilege runs each semantics as a principal with exactly its
// least-privilege ACLs (it must work), then once without each of them (the
// first call must fail within bound with kdeliver.ErrNotAuthorized and the
// broker's error), then with a wrong password and with a CA that did not
// sign the brokers' certificate (kdeliver.ErrAuthentication), and finally
// looks for every password and SCRAM secret of those runs in what they
// logged, returned and traced.
func TestLeastPrivilege(t *testing.T) {
	sec := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	capt.secret("admin password", []byte(sec.AdminPassword()))
	for _, s := range subjects(sec) {
		t.Run(s.name, func(t *testing.T) {
			t.Run("least privilege", func(t *testing.T) {
				n := newNames(s.name, "all")
				acls := s.acls(n)
				u := prepare(t, ctx, sec, s, n, acls)
				took, err := within(t, s.name, func(ctx context.Context) error {
					return s.run(ctx, n, conn(sec.TLSConfig(), u.Name, u.Password))
				})
				if err != nil {
					t.Fatalf("with %v: %v", acls, err)
				}
				s.verify(t, ctx, n)
				t.Logf("with exactly %v: done in %s", acls, took.Round(time.Millisecond))
			})
			for i := range s.acls(names{}) {
				n := newNames(s.name, "no"+strconv.Itoa(i))
				all := s.acls(n)
				missing := all[i]
				t.Run("without "+strings.SplitN(missing.String(), ":", 2)[0]+" "+missing.Op.String(), func(t *testing.T) {
					acls := slices.Delete(slices.Clone(all), i, i+1)
					u := prepare(t, ctx, sec, s, n, acls)
					took, err := within(t, s.name+" without "+missing.String(), func(ctx context.Context) error {
						return s.run(ctx, n, conn(sec.TLSConfig(), u.Name, u.Password))
					})
					t.Logf("without %s: after %s: %v", missing, took.Round(time.Millisecond), err)
					if err == nil {
						t.Fatalf("with %v only (no %s) the run succeeded: %s is not needed", acls, missing, missing)
					}
					if !errors.Is(err, kdeliver.ErrNotAuthorized) {
						t.Errorf("without %s: error does not match kdeliver.ErrNotAuthorized: %v", missing, err)
					}
					if want := deniedAs(missing); !errors.Is(err, want) {
						t.Errorf("without %s: error does not match %v: %v", missing, want, err)
					}
				})
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		for _, s := range subjects(sec) {
			if s.name == "producer at-most-once" || s.name == "consumer at-most-once" {
				continue // same connection path as at-least-once
			}
			t.Run(s.name, func(t *testing.T) {
				n := newNames(s.name, "badpass")
				u := prepare(t, ctx, sec, s, n, s.acls(n))
				wrong := u.Password[:len(u.Password)-6] + "wrong!"
				capt.secret(u.Name+" wrong password", []byte(wrong))
				took, err := within(t, s.name+" with a wrong password", func(ctx context.Context) error {
					return s.run(ctx, n, conn(sec.TLSConfig(), u.Name, wrong))
				})
				t.Logf("wrong password: after %s: %v", took.Round(time.Millisecond), err)
				if err == nil {
					t.Fatal("a wrong password was accepted")
				}
				if !errors.Is(err, kdeliver.ErrAuthentication) {
					t.Errorf("error does not match kdeliver.ErrAuthentication: %v", err)
				}
				if !errors.Is(err, kerr.SaslAuthenticationFailed) {
					t.Errorf("error does not match kerr.SaslAuthenticationFailed: %v", err)
				}
			})
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		other := &tls.Config{RootCAs: otherCA(t), MinVersion: tls.VersionTLS12}
		for _, s := range subjects(sec) {
			if s.name == "producer at-most-once" || s.name == "consumer at-most-once" {
				continue
			}
			t.Run(s.name, func(t *testing.T) {
				n := newNames(s.name, "badca")
				u := prepare(t, ctx, sec, s, n, s.acls(n))
				took, err := within(t, s.name+" trusting another CA", func(ctx context.Context) error {
					return s.run(ctx, n, conn(other, u.Name, u.Password))
				})
				t.Logf("wrong CA: after %s: %v", took.Round(time.Millisecond), err)
				if err == nil {
					t.Fatal("a broker certificate from a CA the client does not trust was accepted")
				}
				if !errors.Is(err, kdeliver.ErrAuthentication) {
					t.Errorf("error does not match kdeliver.ErrAuthentication: %v", err)
				}
				var ua x509.UnknownAuthorityError
				if !errors.As(err, &ua) {
					t.Errorf("error does not say the certificate's authority is unknown (x509.UnknownAuthorityError): %v", err)
				}
			})
		}
	})
	t.Run("no secret in logs, errors or spans", func(t *testing.T) {
		found, sizes, n := capt.leaks()
		t.Logf("looked for %d secrets (with their hex and base64 forms) in %d bytes of log, %d of error strings, %d of spans",
			n, sizes["log"], sizes["errors"], sizes["spans"])
		if sizes["log"] == 0 || sizes["errors"] == 0 || sizes["spans"] == 0 {
			t.Errorf("nothing captured to look in (%v): the capture is not wired", sizes)
		}
		for _, f := range found {
			t.Error(f)
		}
	})
}

// otherCA returns a pool with a CA that signed nothing of the cluster's.
func otherCA(t *testing.T) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not the cluster's CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}
