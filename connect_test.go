package kdeliver_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/internal/testcert"
	"github.com/kdeliver/kdeliver/producer"
)

// The credentials of the secured test clusters: distinctive, so that a
// leak is found by searching for them.
const (
	scramUser, scramPass = "alice", "alice-Scr4m-p4ssw0rd-7d1e"
	plainUser, plainPass = "bob", "bob-Pl41n-p4ssw0rd-93c0"
)

var quietLog = kdeliver.WithLogger(slog.New(slog.DiscardHandler))

// secureCluster starts a one-broker kfake cluster listening with TLS
// (certificates of certs) on 127.0.0.1, with SASL users alice (SCRAM-SHA-512)
// and bob (PLAIN) when withSASL, and topics "in" and "out".
func secureCluster(t *testing.T, certs *testcert.Set, withSASL, clientCerts bool) []string {
	return secureKfake(t, certs, withSASL, clientCerts).ListenAddrs()
}

func secureKfake(t *testing.T, certs *testcert.Set, withSASL, clientCerts bool) *kfake.Cluster {
	t.Helper()
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(2, "in", "out"), kfake.TLS(certs.Broker(clientCerts))}
	if withSASL {
		opts = append(opts, kfake.EnableSASL(),
			kfake.Superuser("SCRAM-SHA-512", scramUser, scramPass),
			kfake.Superuser("PLAIN", plainUser, plainPass))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// refuseSASL makes c answer every SASLAuthenticate request as Kafka answers
// wrong credentials: SASL_AUTHENTICATION_FAILED with a message, then a
// closed connection. (kfake itself only closes the connection, which kgo
// takes for a network error and retries.)
func refuseSASL(c *kfake.Cluster) {
	c.ControlKey(kmsg.SASLAuthenticate.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		resp.ErrorMessage = kmsg.StringPtr("Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512")
		return resp, nil, true
	})
}

// TestSecuredClusterEveryClient: a producer of each kind, a consumer and an
// exactly-once session all connect over TLS, over mutual TLS from files,
// and with SASL SCRAM-SHA-512 and PLAIN over TLS.
func TestSecuredClusterEveryClient(t *testing.T) {
	certs := testcert.New(t)
	for _, tc := range []struct {
		name              string
		sasl, clientCerts bool
		conn              []kdeliver.Option
	}{
		{"tls", false, false, []kdeliver.Option{kdeliver.WithTLS(certs.Client())}},
		{"mtls-files", false, true, []kdeliver.Option{kdeliver.WithTLSFiles(certs.CAFile, certs.CertFile, certs.KeyFile)}},
		{"scram-sha-512-tls", true, false, []kdeliver.Option{kdeliver.WithTLSFiles(certs.CAFile, "", ""), kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, scramPass))}},
		{"plain-tls", true, false, []kdeliver.Option{kdeliver.WithSASL(kdeliver.SASLPlain(plainUser, plainPass)), kdeliver.WithTLS(certs.Client())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			brokers := secureCluster(t, certs, tc.sasl, tc.clientCerts)
			exerciseClients(t, brokers, tc.conn)
		})
	}
}

// exerciseClients writes 4 records with an at-least-once producer and 4 in
// a transaction, reads the 8 with a consumer and copies them with a
// session, all with the connection options conn.
func exerciseClients(t *testing.T, brokers []string, conn []kdeliver.Option) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p, err := producer.New(brokers, kdeliver.AtLeastOnce, opts[producer.Option](conn, quietLog)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("producer Ping: %v", err)
	}
	for i := range 4 {
		if err := p.Produce(ctx, &kgo.Record{Topic: "in", Value: fmt.Appendf(nil, "alo-%d", i)}); err != nil {
			t.Fatalf("Produce: %v", err)
		}
	}
	_ = p.Close(ctx)

	tp, err := producer.NewTransactional(brokers, "secured-txn", opts[producer.Option](conn, quietLog)...)
	if err != nil {
		t.Fatal(err)
	}
	err = tp.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
		for i := range 4 {
			if err := tx.Produce(ctx, &kgo.Record{Topic: "in", Value: fmt.Appendf(nil, "txn-%d", i)}); err != nil {
				return err
			}
		}
		return nil
	})
	_ = tp.Close(ctx)
	if err != nil {
		t.Fatalf("Transact: %v", err)
	}

	c, err := consumer.New(brokers, "secured-group", []string{"in"}, kdeliver.AtLeastOnce,
		opts[consumer.Option](conn, quietLog, consumer.WithReadCommitted())...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("consumer Ping: %v", err)
	}
	if n := runUntil(ctx, t, 8, func(ctx context.Context, count func()) error {
		return c.Run(ctx, func(context.Context, *kgo.Record) error { count(); return nil })
	}); n < 8 {
		t.Fatalf("the consumer read %d of 8 records", n)
	}
	_ = c.Close(ctx)

	s, err := eos.New(brokers, "secured-copier", []string{"in"}, "secured-copier-0",
		opts[eos.Option](conn, quietLog, eos.WithOutputTopic("out"), eos.WithCommitEvery(100, 100*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	if n := runUntil(ctx, t, 8, func(ctx context.Context, count func()) error {
		return s.Run(ctx, func(_ context.Context, r *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Value: r.Value})
			count()
			return nil
		})
	}); n < 8 {
		t.Fatalf("the session copied %d of 8 records", n)
	}
	_ = s.Close(ctx)
}

// runUntil runs run until its handler counted n records (and half a second
// more, for the last commit) or ctx ends, and returns the count.
func runUntil(ctx context.Context, t *testing.T, n int64, run func(context.Context, func()) error) int64 {
	t.Helper()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var got atomic.Int64
	var once sync.Once
	err := run(rctx, func() {
		if got.Add(1) >= n {
			once.Do(func() { time.AfterFunc(500*time.Millisecond, stop) })
		}
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return got.Load()
}

// opts returns conn and more as options of one package.
func opts[O any](conn []kdeliver.Option, more ...O) []O {
	out := make([]O, 0, len(conn)+len(more))
	for _, o := range conn {
		out = append(out, any(o).(O))
	}
	return append(out, more...)
}

// TestWrongCredentialsFailFast: wrong credentials (as Kafka refuses them)
// and a CA that did not sign the broker's certificate make the first call
// that connects fail within a bound, naming SASL or the certificate,
// instead of hanging until the caller's ctx ends; so does a wrong password
// on kfake, which only closes the connection.
func TestWrongCredentialsFailFast(t *testing.T) {
	certs := testcert.New(t)
	kafkaLike := secureKfake(t, certs, true, false)
	refuseSASL(kafkaLike)
	plainKfake := secureCluster(t, certs, true, false)
	other := testcert.New(t) // another CA
	tlsOK := kdeliver.WithTLS(certs.Client())
	for _, tc := range []struct {
		name    string
		brokers []string
		conn    []kdeliver.Option
		want    string // in every error, which matches ErrAuthentication; "" for any error
	}{
		{"wrong-scram-password", kafkaLike.ListenAddrs(), []kdeliver.Option{tlsOK, kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, "wrong-"+scramPass))}, "SASL"},
		{"wrong-plain-password", kafkaLike.ListenAddrs(), []kdeliver.Option{tlsOK, kdeliver.WithSASL(kdeliver.SASLPlain(plainUser, "wrong-"+plainPass))}, "SASL"},
		{"wrong-password-kfake", plainKfake, []kdeliver.Option{tlsOK, kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, "wrong-"+scramPass))}, ""},
		{"wrong-ca", plainKfake, []kdeliver.Option{kdeliver.WithTLSFiles(other.CAFile, "", ""), kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, scramPass))}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const bound = 10 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			check := func(what string, began time.Time, err error) {
				t.Helper()
				switch took := time.Since(began); {
				case err == nil:
					t.Fatalf("%s succeeded", what)
				case took > bound:
					t.Errorf("%s took %v to fail, more than %v: %v", what, took.Round(time.Millisecond), bound, err)
				case tc.want != "" && !errors.Is(err, kdeliver.ErrAuthentication):
					t.Errorf("%s: error %q does not match kdeliver.ErrAuthentication", what, err)
				case !strings.Contains(err.Error(), tc.want):
					t.Errorf("%s: error %q does not name %s", what, err, tc.want)
				}
				leaked(t, what+"'s error", err.Error(), scramPass, plainPass)
			}

			p, err := producer.New(tc.brokers, kdeliver.AtLeastOnce, opts[producer.Option](tc.conn, quietLog, producer.WithDeliveryTimeout(5*time.Second))...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(ctx)
			began := time.Now()
			check("producer Ping", began, p.Ping(ctx))
			began = time.Now()
			check("Produce", began, p.Produce(ctx, &kgo.Record{Topic: "in", Value: []byte("x")}))

			c, err := consumer.New(tc.brokers, "g", []string{"in"}, kdeliver.AtLeastOnce,
				opts[consumer.Option](tc.conn, quietLog, kdeliver.WithStartTimeout(5*time.Second))...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			began = time.Now()
			check("consumer Run", began, c.Run(ctx, func(context.Context, *kgo.Record) error { return nil }))

			s, err := eos.New(tc.brokers, "g2", []string{"in"}, "txn-wrong", opts[eos.Option](tc.conn, quietLog,
				eos.WithOutputTopic("out"), kdeliver.WithStartTimeout(5*time.Second))...)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(ctx)
			began = time.Now()
			check("session Run", began, s.Run(ctx, func(context.Context, *kgo.Record, func(*kgo.Record)) error { return nil }))
		})
	}
}

// TestHangingTransactionWatchOverSASL: the hanging-transaction watchers of
// a consumer (on the consumer's client) and of a session (on a client of
// its own) connect with the configuration's TLS and SASL, and report a
// transaction left open.
func TestHangingTransactionWatchOverSASL(t *testing.T) {
	certs := testcert.New(t)
	brokers := secureCluster(t, certs, true, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := []kdeliver.Option{kdeliver.WithTLS(certs.Client()), kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, scramPass))}

	// A raw transactional producer leaves a transaction open on in[0],
	// with plain records behind it.
	auth := kgo.SASL(scram.Auth{User: scramUser, Pass: scramPass}.AsSha512Mechanism())
	seeds := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DialTLSConfig(certs.Client()), auth,
		kgo.DefaultProduceTopic("in"), kgo.RecordPartitioner(kgo.ManualPartitioner())}
	txn, err := kgo.NewClient(append(seeds, kgo.TransactionalID("stuck"), kgo.TransactionTimeout(10*time.Minute))...)
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	plainCl, err := kgo.NewClient(seeds...)
	if err != nil {
		t.Fatal(err)
	}
	defer plainCl.Close()
	if err := txn.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := txn.ProduceSync(ctx, &kgo.Record{Value: []byte("open")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := plainCl.ProduceSync(ctx, &kgo.Record{Value: []byte("behind")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	watch := func(name string, run func(ctx context.Context, o kdeliver.HandlerOption) error) {
		t.Run(name, func(t *testing.T) {
			rctx, stop := context.WithCancel(ctx)
			defer stop()
			var reported atomic.Value
			o := kdeliver.WithHangingTransactionWatch(300*time.Millisecond, func(h kdeliver.HangingTransaction) {
				reported.Store(h)
				stop()
			})
			if err := run(rctx, o); err != nil {
				t.Fatal(err)
			}
			h, ok := reported.Load().(kdeliver.HangingTransaction)
			if !ok {
				t.Fatal("no hanging transaction reported before the test's timeout")
			}
			if h.TransactionalID != "stuck" {
				t.Errorf("reported %+v, want transactional ID stuck", h)
			}
		})
	}
	watch("consumer", func(ctx context.Context, o kdeliver.HandlerOption) error {
		c, err := consumer.New(brokers, "watching", []string{"in"}, kdeliver.AtLeastOnce,
			opts[consumer.Option](conn, quietLog, consumer.WithReadCommitted(), o)...)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		return c.Run(ctx, func(context.Context, *kgo.Record) error { return nil })
	})
	watch("session", func(ctx context.Context, o kdeliver.HandlerOption) error {
		s, err := eos.New(brokers, "watching-copier", []string{"in"}, "watching-copier-0",
			opts[eos.Option](conn, quietLog, eos.WithOutputTopic("out"), o)...)
		if err != nil {
			return err
		}
		defer s.Close(context.Background())
		return s.Run(ctx, func(context.Context, *kgo.Record, func(*kgo.Record)) error { return nil })
	})
}

// TestConnectionOptionsRefused: bad connection options fail the
// constructor of every kind of client, naming what is wrong and never
// a file's contents or a password.
func TestConnectionOptionsRefused(t *testing.T) {
	certs := testcert.New(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPEM, err := os.ReadFile(certs.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	other := testcert.New(t)
	notPEM := write("ca.der", "not a certificate at all")
	missing := filepath.Join(dir, "missing.pem")
	sasl := kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, scramPass))
	for _, tc := range []struct {
		name string
		conn []kdeliver.Option
		want []string // in the error
	}{
		{"tls-nil", []kdeliver.Option{kdeliver.WithTLS(nil)}, []string{"kdeliver.WithTLS(nil)"}},
		{"ca-missing", []kdeliver.Option{kdeliver.WithTLSFiles(missing, "", "")}, []string{"CA file", missing, "no such file"}},
		{"ca-not-pem", []kdeliver.Option{kdeliver.WithTLSFiles(notPEM, "", "")}, []string{"CA file", notPEM, "no PEM data"}},
		{"ca-is-a-key", []kdeliver.Option{kdeliver.WithTLSFiles(certs.KeyFile, "", "")}, []string{"CA file", certs.KeyFile, "PRIVATE KEY"}},
		{"bad-certificate", []kdeliver.Option{kdeliver.WithTLSFiles(write("bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "", "")}, []string{"bad.pem", "not a valid certificate"}},
		{"cert-without-key", []kdeliver.Option{kdeliver.WithTLSFiles("", certs.CertFile, "")}, []string{"both files", certs.CertFile}},
		{"key-without-cert", []kdeliver.Option{kdeliver.WithTLSFiles("", "", certs.KeyFile)}, []string{"both files", certs.KeyFile}},
		{"key-of-another-cert", []kdeliver.Option{kdeliver.WithTLSFiles(certs.CAFile, certs.CertFile, other.KeyFile)}, []string{certs.CertFile, other.KeyFile, "does not match"}},
		{"cert-and-key-swapped", []kdeliver.Option{kdeliver.WithTLSFiles(certs.CAFile, certs.KeyFile, certs.CertFile)}, []string{"certificate file", certs.KeyFile}},
		{"sasl-over-plaintext", []kdeliver.Option{sasl}, []string{"SASL over a plaintext connection", "kdeliver.WithTLS", "kdeliver.WithPlaintextSASL()"}},
		{"plaintext-sasl-with-tls", []kdeliver.Option{sasl, kdeliver.WithPlaintextSASL(), kdeliver.WithTLS(certs.Client())}, []string{"remove WithPlaintextSASL"}},
		{"plaintext-sasl-alone", []kdeliver.Option{kdeliver.WithPlaintextSASL()}, []string{"no kdeliver.WithSASL"}},
		{"empty-user", []kdeliver.Option{kdeliver.WithTLS(certs.Client()), kdeliver.WithSASL(kdeliver.SASLScramSHA256("", scramPass))}, []string{`SASL(SCRAM-SHA-256, user "", password redacted)`, "the user is empty"}},
		{"empty-password", []kdeliver.Option{kdeliver.WithTLS(certs.Client()), kdeliver.WithSASL(kdeliver.SASLPlain(plainUser, ""))}, []string{"the password is empty"}},
		{"zero-sasl", []kdeliver.Option{kdeliver.WithTLS(certs.Client()), kdeliver.WithSASL(kdeliver.SASL{})}, []string{"kdeliver.SASLPlain"}},
		{"nil-token", []kdeliver.Option{kdeliver.WithTLS(certs.Client()), kdeliver.WithSASL(kdeliver.SASLOAuthBearer(nil))}, []string{"the token function is nil"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			brokers := []string{"127.0.0.1:9092"}
			errs := map[string]error{}
			_, errs["producer"] = producer.New(brokers, kdeliver.AtLeastOnce, opts[producer.Option](tc.conn)...)
			_, errs["transactional producer"] = producer.NewTransactional(brokers, "t", opts[producer.Option](tc.conn)...)
			_, errs["consumer"] = consumer.New(brokers, "g", []string{"in"}, kdeliver.AtLeastOnce, opts[consumer.Option](tc.conn)...)
			_, errs["session"] = eos.New(brokers, "g", []string{"in"}, "t", opts[eos.Option](tc.conn)...)
			_, errs["guard"] = dedup.NewGuard(dedup.NewMemory(1000), "ns", opts[dedup.Option](tc.conn)...)
			for what, err := range errs {
				if !errors.Is(err, kdeliver.ErrInvalidConfig) {
					t.Errorf("%s: got %v, want an error wrapping ErrInvalidConfig", what, err)
					continue
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error %q does not say %q", what, err, w)
					}
				}
				leaked(t, what, err.Error(), string(keyPEM[40:80]), scramPass, plainPass)
			}
		})
	}
}

// TestConnectionOptionsAccepted: the options that fit together build every
// client; SASL without TLS builds with WithPlaintextSASL.
func TestConnectionOptionsAccepted(t *testing.T) {
	certs := testcert.New(t)
	token := func(context.Context) (string, error) { return "tok", nil }
	for name, conn := range map[string][]kdeliver.Option{
		"plaintext-sasl":     {kdeliver.WithSASL(kdeliver.SASLPlain(plainUser, plainPass)), kdeliver.WithPlaintextSASL()},
		"system-roots-files": {kdeliver.WithTLSFiles("", "", "")},
		"oauth-over-tls":     {kdeliver.WithTLS(&tls.Config{}), kdeliver.WithSASL(kdeliver.SASLOAuthBearer(token))},
		"mtls":               {kdeliver.WithTLSFiles(certs.CAFile, certs.CertFile, certs.KeyFile), kdeliver.WithSASL(kdeliver.SASLScramSHA256(scramUser, scramPass))},
	} {
		p, err := producer.New([]string{"127.0.0.1:9092"}, kdeliver.AtMostOnce, opts[producer.Option](conn)...)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		_ = p.Close(context.Background())
	}
}

// TestWithTLSClones: a config changed after WithTLS was called and before
// the client was built is not what the client uses.
func TestWithTLSClones(t *testing.T) {
	certs := testcert.New(t)
	brokers := secureCluster(t, certs, false, false)
	cfg := certs.Client()
	o := kdeliver.WithTLS(cfg)
	p, err := producer.New(brokers, kdeliver.AtLeastOnce, o, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	cfg.RootCAs = nil // would fail verification: the system does not trust the test CA
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v (the producer used the config as changed after WithTLS)", err)
	}
}

// TestSecretsNeverShown: the password is in no printed form of a SASL or
// of the options, in no error, and in no log line or span attribute of
// clients that authenticate (rightly and wrongly) with it.
func TestSecretsNeverShown(t *testing.T) {
	m := kdeliver.SASLScramSHA512(scramUser, scramPass)
	if got, want := m.String(), `SASL(SCRAM-SHA-512, user "alice", password redacted)`; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := fmt.Sprint(kdeliver.SASLOAuthBearer(func(context.Context) (string, error) { return scramPass, nil })), "SASL(OAUTHBEARER, token from a function)"; got != want {
		t.Errorf("an OAUTHBEARER SASL prints %q, want %q", got, want)
	}
	type holder struct {
		Exported kdeliver.SASL
		hidden   kdeliver.SASL
		Option   kdeliver.Option
	}
	h := holder{m, kdeliver.SASLPlain(plainUser, plainPass), kdeliver.WithSASL(m)}
	var printed strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
		for _, v := range []any{m, &m, h, &h, []kdeliver.SASL{m}, map[string]kdeliver.SASL{"m": m}, kdeliver.WithSASL(m)} {
			fmt.Fprintf(&printed, verb+"\n", v)
		}
	}
	j, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	printed.Write(j)
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("sasl", "m", m, "h", h)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("sasl", "m", m, "h", h, "p", &m)
	printed.Write(logged.Bytes())
	_, err = producer.New([]string{"127.0.0.1:9092"}, kdeliver.AtLeastOnce, kdeliver.WithSASL(kdeliver.SASLPlain(plainUser, plainPass)))
	printed.WriteString(fmt.Sprintf("%v %+v %#v", err, err, err))
	leaked(t, "printing", printed.String(), scramPass, plainPass)
	if !strings.Contains(printed.String(), `SASL(SCRAM-SHA-512, user \"alice\", password redacted)`) {
		t.Errorf("the printed forms do not show the SASL's String:\n%s", printed.String())
	}

	// Clients that authenticate, with debug logs and spans recorded.
	certs := testcert.New(t)
	brokers := secureCluster(t, certs, true, false)
	// The handler serializes its writes; the buffer is read once every
	// client is closed.
	var logs bytes.Buffer
	var errs strings.Builder
	logger := kdeliver.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pass := range []string{scramPass, "wrong-" + scramPass} {
		conn := []kdeliver.Option{kdeliver.WithTLS(certs.Client()), kdeliver.WithSASL(kdeliver.SASLScramSHA512(scramUser, pass)),
			logger, kdeliver.WithTracerProvider(tp)}
		p, err := producer.New(brokers, kdeliver.AtLeastOnce, opts[producer.Option](conn, producer.WithDeliveryTimeout(5*time.Second))...)
		if err != nil {
			t.Fatal(err)
		}
		perr := p.Produce(ctx, &kgo.Record{Topic: "in", Value: []byte("v")})
		_ = p.Close(ctx)
		fmt.Fprintf(&errs, "produce error: %v %+v %#v\n", perr, perr, perr)
		if pass == scramPass && perr != nil {
			t.Fatalf("Produce with the right password: %v", perr)
		}
		c, err := consumer.New(brokers, "secrets", []string{"in"}, kdeliver.AtLeastOnce,
			opts[consumer.Option](conn, kdeliver.WithStartTimeout(3*time.Second))...)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		rctx, stop := context.WithCancel(ctx)
		rerr := c.Run(rctx, func(context.Context, *kgo.Record) error {
			if n++; n == 1 {
				time.AfterFunc(300*time.Millisecond, stop)
			}
			return nil
		})
		stop()
		_ = c.Close(ctx)
		fmt.Fprintf(&errs, "run error: %v %+v %#v\n", rerr, rerr, rerr)
	}
	if !strings.Contains(logs.String(), "SASL") && !strings.Contains(logs.String(), "sasl") {
		t.Errorf("the debug logs do not mention SASL at all: did the clients authenticate?\n%s", logs.String())
	}
	leaked(t, "logs", logs.String(), scramPass)
	leaked(t, "errors", errs.String(), scramPass)
	var attrs strings.Builder
	for _, s := range spans.Ended() {
		for _, a := range s.Attributes() {
			fmt.Fprintf(&attrs, "%s=%s\n", a.Key, a.Value.String())
		}
		for _, e := range s.Events() {
			for _, a := range e.Attributes {
				fmt.Fprintf(&attrs, "%s=%s\n", a.Key, a.Value.String())
			}
		}
		fmt.Fprintf(&attrs, "%s %s\n", s.Name(), s.Status().Description)
	}
	if len(spans.Ended()) == 0 {
		t.Error("no span was recorded")
	}
	leaked(t, "span attributes", attrs.String(), scramPass)
}

// leaked fails the test if s holds a secret, plain, base64 or hex encoded.
func leaked(t *testing.T, where, s string, secrets ...string) {
	t.Helper()
	for _, secret := range secrets {
		for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), hex.EncodeToString([]byte(secret))} {
			if strings.Contains(s, form) {
				t.Errorf("%s holds a secret (%d characters):\n%s", where, len(secret), s)
				return
			}
		}
	}
}
