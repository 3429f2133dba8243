// Package eostest runs the exactly-once fault suite (T1–T3 of
// research/reliability_anchors.md, scaled from Kafka's own EOS system tests)
// against real Kafka: eos.Session copiers run as separate processes (helper
// runs of this test binary) that are SIGKILLed and SIGSTOPped, brokers are
// SIGKILLed and restarted, and read_committed readers audit the output.
//
//	KDELIVER_KAFKA_HOME=~/.cache/kdeliver/kafka-4.4.0 KDELIVER_REQUIRE_KAFKA=1 \
//		go test -v -timeout 30m ./integration/eostest/
//
// Longer variants (more records, repetitions) are behind the soak build tag.
package eostest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// The cluster is shared by the tests of this binary: real Kafka takes
// seconds to start.
var cluster *integration.Cluster

func TestMain(m *testing.M) {
	if os.Getenv(integration.EnvHelper) != "" {
		os.Exit(m.Run())
	}
	ctx := context.Background()
	began := time.Now()
	var err error
	cluster, err = integration.New(ctx, append([]integration.Option{integration.WithNodes(3)}, consumerProtocolBrokers...)...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("3-node %s cluster (Kafka %s) started in %s\n", cluster.Kind(), cluster.Version(), time.Since(began).Round(time.Millisecond))
	code := m.Run()
	if code != 0 {
		cluster.LogTails(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }, 30)
	}
	cluster.Close(ctx)
	os.Exit(code)
}

// Environment of a copier helper process.
const (
	envGroup      = "EOSTEST_GROUP"
	envIn         = "EOSTEST_IN"
	envOut        = "EOSTEST_OUT"
	envTxnID      = "EOSTEST_TXN_ID"
	envAbortEvery = "EOSTEST_ABORT_EVERY" // fail a record with probability 1/N (a third of 250-record transactions: 750)
	envDelay      = "EOSTEST_DELAY"       // sleep per record, to spread the copy over the faults
	envSlowValue  = "EOSTEST_SLOW_VALUE"  // sleep envSlowFor on this input value, once
	envSlowFor    = "EOSTEST_SLOW_FOR"
	envTxnTimeout = "EOSTEST_TXN_TIMEOUT"
	envKeyByPart  = "EOSTEST_KEY_BY_PARTITION" // output key = input partition (order checks of T1 ordered, T2)
	envProtocol   = "EOSTEST_PROTOCOL"         // group protocol: classic (unset) or consumer (KIP-848)

	// statsPrefix starts the copier's periodic line of eos.Stats (JSON).
	statsPrefix = "copier stats: "

	// exitFenced is the copier's exit status when Run returned ErrFenced.
	exitFenced = 3
)

// TestHelperCopier is the copier process: an eos.Session copying envIn to
// envOut until it is killed, with random handler failures.
func TestHelperCopier(t *testing.T) {
	if !integration.InHelper("TestHelperCopier") {
		t.Skip("runs only as a helper process")
	}
	brokers := strings.Split(os.Getenv(integration.EnvBrokers), ",")
	txnTimeout := 8 * time.Second
	if d, err := time.ParseDuration(os.Getenv(envTxnTimeout)); err == nil {
		txnTimeout = d
	}
	opts := []eos.Option{
		eos.WithOutputTopic(os.Getenv(envOut)),
		eos.WithCommitEvery(250, 500*time.Millisecond),
		eos.WithTransactionTimeout(txnTimeout),
		kdeliver.WithMaxAttempts(20),
		eos.WithKgoOpts(kgo.MetadataMinAge(time.Second)),
		kdeliver.WithClientID(os.Getenv(envTxnID)),
	}
	var proto kdeliver.GroupProtocol
	if v := os.Getenv(envProtocol); v != "" {
		if err := proto.UnmarshalText([]byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if proto == kdeliver.ConsumerProtocol {
		// The brokers set the session timeout: consumerProtocolBrokers.
		opts = append(opts, kdeliver.WithGroupProtocol(proto))
	} else {
		opts = append(opts, eos.WithSessionTimeout(copierSession))
	}
	s, err := eos.New(brokers, os.Getenv(envGroup), []string{os.Getenv(envIn)}, os.Getenv(envTxnID), opts...)
	if err != nil {
		t.Fatal(err)
	}
	abortEvery, _ := strconv.Atoi(os.Getenv(envAbortEvery))
	delay, _ := time.ParseDuration(os.Getenv(envDelay))
	slowFor, _ := time.ParseDuration(os.Getenv(envSlowFor))
	slowValue := os.Getenv(envSlowValue)
	keyByPart := os.Getenv(envKeyByPart) != ""
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	// The copier dies by SIGKILL: report the counters as it goes.
	go func() {
		for range time.Tick(time.Second) {
			b, _ := json.Marshal(s.Stats())
			fmt.Printf("%s%s\n", statsPrefix, b)
		}
	}()
	fmt.Printf("copier %d: %s protocol, group %s, transactional ID %s\n", os.Getpid(), proto, os.Getenv(envGroup), os.Getenv(envTxnID))
	var aborts int
	err = s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if delay > 0 {
			time.Sleep(delay)
		}
		if slowValue != "" && string(in.Value) == slowValue {
			slowValue = ""
			fmt.Printf("copier: holding the transaction open for %v on %s\n", slowFor, in.Value)
			time.Sleep(slowFor)
		}
		if abortEvery > 0 && rng.IntN(abortEvery) == 0 {
			aborts++
			return fmt.Errorf("random abort #%d", aborts)
		}
		key := in.Key
		if keyByPart {
			key = []byte("p" + strconv.Itoa(int(in.Partition)))
		}
		emit(&kgo.Record{Key: key, Value: in.Value})
		return nil
	})
	b, _ := json.Marshal(s.Stats())
	fmt.Printf("copier: Run returned %v\n%s%s\n", err, statsPrefix, b)
	s.Close(context.Background())
	if errors.Is(err, kdeliver.ErrFenced) {
		os.Exit(exitFenced)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// copier starts a copier process.
func copier(t *testing.T, group, in, out, txnID string, env ...string) *integration.Process {
	t.Helper()
	env = append(env, cluster.Env()...)
	env = append(env, envGroup+"="+group, envIn+"="+in, envOut+"="+out, envTxnID+"="+txnID)
	return integration.StartHelper(t, "TestHelperCopier", env...)
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runs counts the runs of each test in this process: with -count=N the
// cluster outlives a test, and a rerun needs topics of its own.
var runs = struct {
	sync.Mutex
	n map[string]int
}{n: map[string]int{}}

// topics creates input and output topics with fresh names for one test:
// the test's name, and from its second run on (-count) the run's number.
func topics(t *testing.T, ctx context.Context, inParts, outParts int) (in, out string) {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	runs.Lock()
	runs.n[name]++
	if n := runs.n[name]; n > 1 {
		name += "-run" + strconv.Itoa(n)
	}
	runs.Unlock()
	in, out = name+"-in", name+"-out"
	if err := cluster.CreateTopic(ctx, in, inParts); err != nil {
		t.Fatal(err)
	}
	if err := cluster.CreateTopic(ctx, out, outParts); err != nil {
		t.Fatal(err)
	}
	return in, out
}

// seed writes n records "v:0".."v:n-1" to topic, keyed by value (so one
// input partition holds an increasing sequence), and returns the values.
func seed(t *testing.T, ctx context.Context, topic string, n int) []string {
	t.Helper()
	cl := cluster.Client(t, kgo.DefaultProduceTopic(topic))
	vals := make([]string, n)
	recs := make([]*kgo.Record, n)
	for i := range n {
		vals[i] = "v:" + strconv.Itoa(i)
		recs[i] = &kgo.Record{Key: []byte(vals[i]), Value: []byte(vals[i])}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("seed: %v", err)
	}
	return vals
}

// progress returns the fraction of topic's records that group has
// committed.
func progress(ctx context.Context, group, topic string, total int) float64 {
	offs, err := cluster.Admin().FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		return 0
	}
	var done int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Err == nil && o.At > 0 {
			done += o.At
		}
	})
	return float64(done) / float64(total)
}

// tail reads topic with read_committed during a test and counts each value.
type tail struct {
	mu     sync.Mutex
	seen   map[string]int
	cancel context.CancelFunc
	done   chan struct{}
}

func startTail(t *testing.T, topic string) *tail {
	t.Helper()
	cl := cluster.Client(t, kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	r := &tail{seen: map[string]int{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) {
				r.mu.Lock()
				r.seen[string(rec.Value)]++
				r.mu.Unlock()
			})
		}
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *tail) stop() {
	r.cancel()
	<-r.done
}

// audit returns (distinct, duplicates) of what the tail saw.
func (r *tail) audit() (distinct, dups int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.seen {
		distinct++
		dups += n - 1
	}
	return distinct, dups
}

// finalAudit reads out fully with read_committed and checks that it holds
// want, each value once and nothing else. Order is checked per record key:
// the report's Reordered lists values whose first copy came after a later
// value of the same key; the tests that promise an order check it.
func finalAudit(t *testing.T, ctx context.Context, out string, want []string) kdelivertest.Report {
	t.Helper()
	a, _ := readAudit(t, ctx, out, want)
	t.Logf("final read_committed reader: %s", a)
	if len(a.Lost) > 0 || len(a.Duplicated) > 0 || len(a.Unexpected) > 0 {
		t.Errorf("output is not exactly the input: %s", a)
	}
	return a
}

// checkTail waits for the concurrent reader to have seen everything and
// checks it saw nothing twice.
func checkTail(t *testing.T, r *tail, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, dups := r.audit()
		if d >= n || time.Now().After(deadline) {
			t.Logf("concurrent read_committed reader: %d distinct, %d duplicates", d, dups)
			if dups != 0 || d != n {
				t.Errorf("concurrent reader saw %d distinct of %d, %d duplicates", d, n, dups)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastStats returns the last counters a copier process reported.
func lastStats(out string) eos.Stats {
	var st eos.Stats
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, statsPrefix); ok {
			_ = json.Unmarshal([]byte(rest), &st)
		}
	}
	return st
}

// readAudit reads topic with read_committed (cluster.ReadCommitted, which
// waits for the markers of a transaction committed just before: they are
// written after EndTxn returns) and audits it against want.
func readAudit(t *testing.T, ctx context.Context, topic string, want []string) (kdelivertest.Report, []*kgo.Record) {
	t.Helper()
	recs, err := cluster.ReadCommitted(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return kdelivertest.Audit(want, recs), recs
}
