// Package killtest runs a consumer in child processes that it kills with
// SIGKILL while they work, against an in-process Kafka (kfake) that lives in
// the parent, and checks what the side effects add up to.
//
// The child is the test binary itself, re-run with -test.run naming a test
// that calls [Child].
package killtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// Plan says what to run and how often to kill.
type Plan struct {
	Records    int
	Partitions int32
	Kills      int    // SIGKILLs of the single consumer, each followed by a restart
	ChildTest  string // the test function that calls Child
	Env        []string
	// Progress returns how many distinct records have their side effect.
	Progress func(ctx context.Context) (int, error)
	// Slow is passed to children (see [Child]), which pause that long every
	// few records so that kills land mid-stream.
	Slow time.Duration
}

// Report is what happened.
type Report struct {
	Kills      int
	Rebalances int // times a second instance joined or left
	Elapsed    time.Duration
}

const (
	envChild   = "KDELIVER_KILLTEST_CHILD"
	envBrokers = "KDELIVER_KILLTEST_BROKERS"
	envSlow    = "KDELIVER_KILLTEST_SLOW"
	Topic      = "killtest-in"
	Group      = "killtest"
)

// ID returns the message ID of record i, stamped in [kdeliver.HeaderMessageID]
// and used as the record value.
func ID(i int) string { return fmt.Sprintf("m-%06d", i) }

// Run starts the cluster, produces the records, and runs the plan: one
// child killed Kills times at evenly spaced progress, then two children (a
// rebalance), then one of them killed (another rebalance), and the survivor
// finishing. It returns when Progress reaches Records.
func Run(t *testing.T, p Plan) Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	brokers, stop := Kafka(ctx, t, p.Partitions, p.Records)
	defer stop()
	t.Logf("%6.2fs: %d records produced", time.Since(start).Seconds(), p.Records)

	env := append(os.Environ(), p.Env...)
	env = append(env, envChild+"=1", envBrokers+"="+strings.Join(brokers, ","), envSlow+"="+p.Slow.String())
	var children []*child
	defer func() {
		for _, c := range children {
			c.kill()
		}
		if t.Failed() {
			for i, c := range children {
				t.Logf("child %d output (tail):\n%s", i, c.tail())
			}
		}
	}()
	spawn := func() *child {
		c := startChild(t, p.ChildTest, env)
		children = append(children, c)
		return c
	}
	steps := p.Kills + 3
	// Each wait also asks for fresh progress since the last one, so that
	// every kill lands on a child that is writing.
	last, delta := 0, p.Records/(3*steps)
	waitFor := func(n int) {
		t.Helper()
		if n < p.Records {
			n = min(max(n, last+delta), p.Records)
		}
		for {
			got, err := p.Progress(ctx)
			if err == nil && got >= n {
				last = got
				t.Logf("%6.2fs: progress %d", time.Since(start).Seconds(), got)
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("progress stuck at %d of %d (want %d): %v", got, p.Records, n, err)
			}
			for _, c := range children {
				if c.exitedEarly() {
					t.Fatalf("a child exited on its own: %s", c.tail())
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	var rep Report
	a := spawn()
	for i := 1; i <= p.Kills; i++ {
		waitFor(i * p.Records / steps)
		a.kill()
		rep.Kills++
		a = spawn()
	}
	b := spawn() // rebalance: two members share the partitions
	rep.Rebalances++
	waitFor((p.Kills + 1) * p.Records / steps)
	waitFor(0) // more progress with both
	b.kill()   // rebalance: the survivor takes b's partitions after b's session expires
	rep.Kills++
	rep.Rebalances++
	waitFor(p.Records)
	// Let anything still in flight land before the caller counts.
	time.Sleep(500 * time.Millisecond)
	a.kill()
	rep.Elapsed = time.Since(start)
	return rep
}

// Kafka starts an in-process cluster with [Topic] holding n records, IDs
// [ID](0) to ID(n-1), and returns its brokers and a function that stops it.
func Kafka(ctx context.Context, t *testing.T, partitions int32, n int) ([]string, func()) {
	t.Helper()
	cl, err := kdelivertest.NewCluster(kdelivertest.WithBrokers(1), kdelivertest.WithTopic(Topic, partitions))
	if err != nil {
		t.Fatal(err)
	}
	produce(ctx, t, cl.Brokers(), n)
	return cl.Brokers(), cl.Close
}

func produce(ctx context.Context, t *testing.T, brokers []string, n int) {
	t.Helper()
	pr, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(Topic))
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for i := range n {
		id := ID(i)
		wg.Add(1)
		pr.Produce(ctx, &kgo.Record{
			Key:     []byte(id),
			Value:   []byte(id),
			Headers: []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: []byte(id)}},
		}, func(_ *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("producing the input: %v", firstErr)
	}
}

type child struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
	dead bool
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startChild(t *testing.T, test string, env []string) *child {
	t.Helper()
	c := &child{out: new(bytes.Buffer), mu: new(sync.Mutex), done: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	c.cmd.Env = env
	c.cmd.Stdout = lockedWriter{c.mu, c.out}
	c.cmd.Stderr = lockedWriter{c.mu, c.out}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.done)
	}()
	return c
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *child) kill() {
	if c.dead {
		return
	}
	c.dead = true
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

func (c *child) exitedEarly() bool {
	if c.dead {
		return false
	}
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *child) tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.out.String()
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return s
}

// Child reports whether this process is a child started by [Run], and if
// so the brokers to consume from and the per-record pause.
func Child() (brokers []string, slow time.Duration, ok bool) {
	if os.Getenv(envChild) != "1" {
		return nil, 0, false
	}
	slow, _ = time.ParseDuration(os.Getenv(envSlow))
	return strings.Split(os.Getenv(envBrokers), ","), slow, true
}

// ClientOpts are kgo options for children: fast group membership, so that a
// killed member's partitions move within about a second.
func ClientOpts(brokers []string) []kgo.Opt {
	return []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.SessionTimeout(1500 * time.Millisecond),
		kgo.HeartbeatInterval(150 * time.Millisecond),
		kgo.RebalanceTimeout(3 * time.Second),
	}
}
