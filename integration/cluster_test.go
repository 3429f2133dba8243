package integration_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// One cluster of each size per test binary: real Kafka takes seconds to
// start on two cores.
var single, triple *integration.Cluster

func TestMain(m *testing.M) {
	if integration.InHelper("TestHelperProducer") {
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx := context.Background()
	var err error
	began := time.Now()
	single, err = integration.New(ctx, integration.WithNodes(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer single.Close(ctx)
	fmt.Printf("1-node %s cluster (Kafka %s) started in %s\n", single.Kind(), single.Version(), time.Since(began).Round(time.Millisecond))
	began = time.Now()
	triple, err = integration.New(ctx, integration.WithNodes(3))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer triple.Close(ctx)
	fmt.Printf("3-node %s cluster (Kafka %s) started in %s\n", triple.Kind(), triple.Version(), time.Since(began).Round(time.Millisecond))
	code := m.Run()
	if code != 0 {
		single.LogTails(logf, 30)
		triple.LogTails(logf, 30)
	}
	return code
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// produce writes n records with values prefix:0 … prefix:n-1 to the
// partitions 0 … partitions-1 of topic in turn, with acks=all and
// idempotence, and returns the values. Each record's key names its
// partition ("p0", "p1", …), so that [kdelivertest.Audit] checks the order
// within each partition, which an idempotent producer keeps through leader
// changes.
func produce(t *testing.T, ctx context.Context, c *integration.Cluster, topic string, partitions int, prefix string, n int) []string {
	t.Helper()
	cl := c.Client(t, kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	vals := make([]string, n)
	recs := make([]*kgo.Record, n)
	for i := range n {
		p := i % partitions
		vals[i] = prefix + ":" + strconv.Itoa(i)
		recs[i] = &kgo.Record{Partition: int32(p), Key: []byte("p" + strconv.Itoa(p)), Value: []byte(vals[i])}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	return vals
}

// checkExact reads topic with read_committed and checks that it holds want,
// each value once, nothing else, in order per key.
func checkExact(t *testing.T, ctx context.Context, c *integration.Cluster, topic string, want []string) {
	t.Helper()
	recs, err := c.ReadCommitted(ctx, topic)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if a := kdelivertest.Audit(want, recs); !a.Exact() {
		t.Fatalf("audit of %s: %s", topic, a)
	}
}

func TestSingleNodeProduceConsume(t *testing.T) {
	ctx := timeout(t, time.Minute)
	c := single
	if c.Nodes() != 1 || c.ReplicationFactor() != 1 || len(c.Brokers()) != 1 {
		t.Fatalf("nodes %d rf %d brokers %v", c.Nodes(), c.ReplicationFactor(), c.Brokers())
	}
	if err := c.CreateTopic(ctx, "single-basic", 2); err != nil {
		t.Fatal(err)
	}
	want := produce(t, ctx, c, "single-basic", 2, "v", 100)
	checkExact(t, ctx, c, "single-basic", want)
	if n, err := c.Leader(ctx, "single-basic", 0); err != nil || n != 1 {
		t.Fatalf("leader: %d, %v", n, err)
	}
}

// TestReadCommittedSkipsAborted checks that the reader drops aborted
// transactions and knows where a partition ends when a marker is last.
func TestReadCommittedSkipsAborted(t *testing.T) {
	ctx := timeout(t, time.Minute)
	c := single
	const topic = "single-txn"
	if err := c.CreateTopic(ctx, topic, 1); err != nil {
		t.Fatal(err)
	}
	cl := c.Client(t, kgo.DefaultProduceTopic(topic), kgo.TransactionalID("selftest-txn"))
	txn := func(commit bool, vals ...string) {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(v)}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	txn(true, "a", "b")
	txn(false, "x", "y")
	txn(true, "c")
	txn(false, "z")
	checkExact(t, ctx, c, topic, []string{"a", "b", "c"})
}

func TestAuditCounts(t *testing.T) {
	recs := []*kgo.Record{{Value: []byte("1")}, {Value: []byte("2")}, {Value: []byte("2")}, {Value: []byte("9")}}
	a := kdelivertest.Audit([]string{"1", "2", "3"}, recs)
	if len(a.Lost) != 1 || a.Lost[0] != "3" || a.DuplicateCount() != 1 || len(a.Unexpected) != 1 || a.Exact() {
		t.Fatalf("audit: %s", a)
	}
}

func TestThreeNodeKillLeader(t *testing.T) {
	ctx := timeout(t, 4*time.Minute)
	c := triple
	c.RequireReal(t)
	if c.Nodes() != 3 || c.ReplicationFactor() != 3 {
		t.Fatalf("nodes %d rf %d", c.Nodes(), c.ReplicationFactor())
	}
	const topic = "triple-kill"
	if err := c.CreateTopic(ctx, topic, 3); err != nil {
		t.Fatal(err)
	}
	want := produce(t, ctx, c, topic, 3, "before", 300)
	leader, err := c.Leader(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	next, err := c.WaitNewLeader(ctx, topic, 0, leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed node %d; node %d leads %s/0 after %s", leader, next, topic, time.Since(began).Round(time.Millisecond))
	// Two of three replicas are min.insync.replicas: acks=all still works.
	want = append(want, produce(t, ctx, c, topic, 3, "during", 300)...)
	began = time.Now()
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d restarted in %s", leader, time.Since(began).Round(time.Millisecond))
	began = time.Now()
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("in sync after %s", time.Since(began).Round(time.Millisecond))
	want = append(want, produce(t, ctx, c, topic, 3, "after", 300)...)
	checkExact(t, ctx, c, topic, want)
}

func TestThreeNodeStopRestart(t *testing.T) {
	ctx := timeout(t, 4*time.Minute)
	c := triple
	c.RequireReal(t)
	const topic = "triple-stop"
	if err := c.CreateTopic(ctx, topic, 1); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	began := time.Now()
	if err := c.Stop(sctx, leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("clean stop of node %d took %s", leader, time.Since(began).Round(time.Millisecond))
	// A controlled shutdown moves leadership before the node exits.
	if _, err := c.WaitNewLeader(ctx, topic, 0, leader); err != nil {
		t.Fatal(err)
	}
	want := produce(t, ctx, c, topic, 1, "v", 50)
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, ctx, c, topic, want)
}

func TestThreeNodePauseResume(t *testing.T) {
	ctx := timeout(t, 4*time.Minute)
	c := triple
	c.RequireReal(t)
	const topic = "triple-pause"
	if err := c.CreateTopic(ctx, topic, 1); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(leader); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = c.Resume(leader)
		}
	}()
	// A frozen leader stops heartbeating to the controller, which fences
	// it and elects another leader.
	next, err := c.WaitNewLeader(ctx, topic, 0, leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("paused node %d; node %d took over", leader, next)
	want := produce(t, ctx, c, topic, 1, "v", 50)
	if err := c.Resume(leader); err != nil {
		t.Fatal(err)
	}
	resumed = true
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, ctx, c, topic, want)
}

// TestHelperProcessKill runs a producer in a helper process, SIGKILLs it
// and checks that what it acknowledged before dying is in the topic.
func TestHelperProcessKill(t *testing.T) {
	ctx := timeout(t, 2*time.Minute)
	c := single
	const topic = "single-helper"
	if err := c.CreateTopic(ctx, topic, 1); err != nil {
		t.Fatal(err)
	}
	p := integration.StartHelper(t, "TestHelperProducer", append(c.Env(), "HELPER_TOPIC="+topic)...)
	// Wait until the helper says it acknowledged a batch, then kill it.
	deadline := time.Now().Add(time.Minute)
	for !containsLine(p.Output(), "acked 100") {
		if time.Now().After(deadline) {
			t.Fatalf("helper never acked; output:\n%s", p.Output())
		}
		select {
		case <-p.Done():
			t.Fatalf("helper exited early: %v\n%s", p.Wait(ctx), p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	recs, err := c.ReadCommitted(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]string, 100)
	for i := range want {
		want[i] = "h:" + strconv.Itoa(i)
	}
	a := kdelivertest.Audit(want, recs)
	if len(a.Lost) != 0 || a.DuplicateCount() != 0 {
		t.Fatalf("acked records lost or duplicated: %s", a)
	}
}

func containsLine(out, line string) bool {
	for _, l := range splitLines(out) {
		if l == line {
			return true
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// TestHelperProducer is the helper process of TestHelperProcessKill: it
// produces 100 records, prints "acked 100", then keeps producing until
// killed.
func TestHelperProducer(t *testing.T) {
	if !integration.InHelper("TestHelperProducer") {
		t.Skip("runs only as a helper process")
	}
	ctx := context.Background()
	c, err := integration.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.NewClient(kgo.DefaultProduceTopic(os.Getenv("HELPER_TOPIC")))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("h:" + strconv.Itoa(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if i == 99 {
			fmt.Println("acked 100")
		}
		if i >= 99 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestKfakeRefusedWhenRequired(t *testing.T) {
	t.Setenv(integration.EnvRequire, "1")
	_, err := integration.New(context.Background(), integration.WithBackend(integration.BackendKfake))
	if !errors.Is(err, integration.ErrKafkaRequired) {
		t.Fatalf("New(kfake) with %s=1: %v, want ErrKafkaRequired", integration.EnvRequire, err)
	}
}

func TestKfakeBackendNodeControl(t *testing.T) {
	t.Setenv(integration.EnvRequire, "")
	ctx := timeout(t, time.Minute)
	c := integration.Start(t, integration.WithBackend(integration.BackendKfake), integration.WithNodes(3))
	if c.Kind() != integration.BackendKfake || c.Version() != "kfake" || c.Nodes() != 3 {
		t.Fatalf("kind %s version %s nodes %d", c.Kind(), c.Version(), c.Nodes())
	}
	if err := c.CreateTopic(ctx, "fake", 3); err != nil {
		t.Fatal(err)
	}
	want := produce(t, ctx, c, "fake", 3, "v", 30)
	leader, err := c.Leader(ctx, "fake", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(leader); !errors.Is(err, integration.ErrUnsupported) {
		t.Fatalf("Pause on kfake: %v, want ErrUnsupported", err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitNewLeader(ctx, "fake", 0, leader); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, ctx, c, "fake", want)
}
