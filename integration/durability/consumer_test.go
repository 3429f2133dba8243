package durability

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/integration"
)

const (
	consumerRecords = 10000
	consumerDelay   = time.Millisecond               // handler work per record
	sessionTimeout  = 6 * time.Second                // the broker's minimum: a dead member leaves the group soon
	maxPoll         = consumer.DefaultMaxPollRecords // records a crash may repeat (AtLeastOnce) or lose (AtMostOnce)
)

// killAt are the fractions of the topic handled when a consumer process is
// SIGKILLed, as Kafka's transactions_test bounces its copier at ≥ 20 %. A
// random number of records below one poll is added to each, so that the
// kill does not land on a batch boundary every time.
var killAt = []float64{0.2, 0.45, 0.7}

// Environment of a consumer helper process.
const (
	envSemantics = "DURABILITY_SEMANTICS"
	envGroup     = "DURABILITY_GROUP"
	envTopic     = "DURABILITY_TOPIC"
	envOut       = "DURABILITY_OUT"
	envDelay     = "DURABILITY_DELAY"
)

// TestHelperConsumer is the consumer process of the commit-order test: a
// kdeliver consumer whose handler appends "partition offset value" to the
// file envOut, one write(2) per record. A write that returned is in the
// kernel's page cache, so a SIGKILL of this process cannot undo it: the file
// lists exactly the records the handler finished (it returns right after
// the write). SIGTERM stops it cleanly.
func TestHelperConsumer(t *testing.T) {
	if !integration.InHelper("TestHelperConsumer") {
		t.Skip("runs only as a helper process of the consumer tests")
	}
	sem, err := kdeliver.ParseSemantics(os.Getenv(envSemantics))
	if err != nil {
		t.Fatal(err)
	}
	delay, err := time.ParseDuration(os.Getenv(envDelay))
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(os.Getenv(envOut), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	opts, proto, err := helperGroupOpts()
	if err != nil {
		t.Fatal(err)
	}
	brokers := strings.Split(os.Getenv(integration.EnvBrokers), ",")
	c, err := consumer.New(brokers, os.Getenv(envGroup), []string{os.Getenv(envTopic)}, sem, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	fmt.Printf("consumer %d: %s, %s protocol, group %s\n", os.Getpid(), sem, proto, os.Getenv(envGroup))
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		time.Sleep(delay)
		_, err := fmt.Fprintf(out, "%d %d %s\n", rec.Partition, rec.Offset, rec.Value)
		return err
	})
	fmt.Printf("consumer %d: Run returned %v\n", os.Getpid(), err)
	if err != nil {
		t.Fatal(err)
	}
}

// consumerKills runs the commit-order test for AtLeastOnce and AtMostOnce
// side by side, each with its own topic and group, the consumers joining
// with group protocol proto (the consumer protocol needs the cluster's
// [consumerProtocolBrokers]).
func consumerKills(t *testing.T, c *integration.Cluster, proto kdeliver.GroupProtocol) {
	for _, sem := range []kdeliver.Semantics{kdeliver.AtLeastOnce, kdeliver.AtMostOnce} {
		t.Run(sem.String(), func(t *testing.T) {
			t.Parallel()
			consumerKill(t, c, sem, proto)
		})
	}
}

// consumerKill fills a topic of 3 partitions, consumes it with a consumer
// process that is SIGKILLed at each of killAt and replaced, stops the last
// one with SIGTERM once everything is committed, and counts how often the
// handlers saw each record.
func consumerKill(t *testing.T, c *integration.Cluster, sem kdeliver.Semantics, proto kdeliver.GroupProtocol) {
	ctx := timeout(t, 5*time.Minute)
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	topic := topicName(t)
	group := topic + "-group"
	if err := c.CreateTopic(ctx, topic, 3); err != nil {
		t.Fatal(err)
	}
	cl := c.Client(t, kgo.DefaultProduceTopic(topic))
	recs := make([]*kgo.Record, consumerRecords)
	for i := range recs {
		recs[i] = &kgo.Record{Key: []byte(strconv.Itoa(i)), Value: []byte("c:" + strconv.Itoa(i))}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("fill %s: %v", topic, err)
	}

	out := filepath.Join(t.TempDir(), "handled")
	env := append(c.Env(),
		envSemantics+"="+sem.String(), envGroup+"="+group, envTopic+"="+topic,
		envOut+"="+out, envDelay+"="+consumerDelay.String(), envProtocol+"="+proto.String())
	start := func() *integration.Process { return integration.StartHelper(t, "TestHelperConsumer", env...) }
	began := time.Now()
	p := start()
	for i, frac := range killAt {
		want := int(frac*consumerRecords) + rand.IntN(maxPoll)
		err := waitFor(ctx, fmt.Sprintf("%d records handled", want), 20*time.Millisecond, func() (bool, string, error) {
			n := countLines(out)
			if exited(p) {
				return false, "", fmt.Errorf("consumer exited early: %v\n%s", p.Wait(ctx), p.Output())
			}
			return n >= want, fmt.Sprintf("%d handled", n), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		t.Logf("kill %d: SIGKILL consumer pid %d with %d records handled", i+1, p.Pid(), countLines(out))
		p = start()
	}
	if err := waitCommitted(ctx, c, group, topic, p); err != nil {
		t.Fatal(err)
	}
	if err := checkGroupProtocol(ctx, c, group, proto); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("the last consumer did not stop cleanly on SIGTERM: %v\n%s", err, p.Output())
	}
	elapsed := time.Since(began)

	seen := make([]int, consumerRecords)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		var seq int
		if len(f) == 3 && strings.HasPrefix(f[2], "c:") {
			seq, err = strconv.Atoi(strings.TrimPrefix(f[2], "c:"))
		}
		if len(f) != 3 || !strings.HasPrefix(f[2], "c:") || err != nil || seq < 0 || seq >= consumerRecords {
			bad = append(bad, line)
			continue
		}
		seen[seq]++
	}
	var lost, dup int
	for _, n := range seen {
		if n == 0 {
			lost++
		}
		dup += max(0, n-1)
	}
	r := newResult(c, "consumer-kills", sem)
	r.set("protocol", proto)
	r.set("records", consumerRecords)
	r.set("handled", len(seen)-lost+dup)
	r.set("lost", lost)
	r.set("duplicated", dup)
	r.set("faults", len(killAt))
	r.set("max_poll", maxPoll)
	r.set("commit_interval", consumer.DefaultCommitInterval)
	r.set("seconds", elapsed)
	t.Log(r)

	if len(bad) > 0 {
		t.Errorf("%d lines the handler did not write, e.g. %q", len(bad), bad[:min(3, len(bad))])
	}
	// A crash loses (AtMostOnce) at most the batch in hand, since each
	// batch is committed before it is handled; it repeats (AtLeastOnce) at
	// most what was handled since the last commit, which is made once a
	// commit interval has passed: an interval's worth of records (at the
	// handler's delay, at most) and the poll in hand.
	bound := len(killAt) * maxPoll
	switch sem {
	case kdeliver.AtLeastOnce:
		if lost > 0 {
			t.Errorf("%d records never handled: AtLeastOnce must not lose any", lost)
		}
		perKill := maxPoll + int(consumer.DefaultCommitInterval/consumerDelay)
		if dup > len(killAt)*perKill {
			t.Errorf("%d duplicates, more than a commit interval's worth and a poll (%d) per kill: commits lag behind processing", dup, perKill)
		}
	case kdeliver.AtMostOnce:
		if dup > 0 {
			t.Errorf("%d records handled twice: AtMostOnce must not repeat any", dup)
		}
		if lost > bound {
			t.Errorf("%d records lost, more than one poll (%d) per kill", lost, maxPoll)
		}
	}
}

func exited(p *integration.Process) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// countLines returns the number of complete lines in the file at path.
func countLines(path string) int {
	data, _ := os.ReadFile(path)
	return bytes.Count(data, []byte{'\n'})
}

// waitCommitted waits until group has committed the end of every partition
// of topic, failing early if the consumer process p exits.
func waitCommitted(ctx context.Context, c *integration.Cluster, group, topic string, p *integration.Process) error {
	return waitFor(ctx, group+" to commit all of "+topic, 100*time.Millisecond, func() (bool, string, error) {
		if exited(p) {
			return false, "", fmt.Errorf("consumer exited early: %v\n%s", p.Wait(ctx), p.Output())
		}
		done, state := reachedEnd(ctx, c, topic, "committed", func(ctx context.Context) (map[int32]int64, error) {
			offs, err := c.Admin().FetchOffsetsForTopics(ctx, group, topic)
			if err == nil {
				err = offs.Error()
			}
			got := map[int32]int64{}
			offs.Each(func(o kadm.OffsetResponse) { got[o.Partition] = o.At })
			return got, err
		})
		return done, state, nil
	})
}
