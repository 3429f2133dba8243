package durability

import (
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
	concurrentHandlers = 16
	concurrentKeys     = 200
	concurrentDelay    = 2 * time.Millisecond
	concurrentCommits  = 200 * time.Millisecond
)

// TestHelperConcurrentConsumer is the consumer process of the concurrent
// SIGKILL test: TestHelperConsumer's, with 16 handlers by key and a commit
// interval of 200 ms; each line also names the process.
func TestHelperConcurrentConsumer(t *testing.T) {
	if !integration.InHelper("TestHelperConcurrentConsumer") {
		t.Skip("runs only as a helper process of the concurrent consumer test")
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
	c, err := consumer.New(brokers, os.Getenv(envGroup), []string{os.Getenv(envTopic)}, kdeliver.AtLeastOnce,
		append(opts, kdeliver.WithConcurrency(concurrentHandlers, kdeliver.ByKey), consumer.WithCommitInterval(concurrentCommits))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pid := os.Getpid()
	fmt.Printf("consumer %d: concurrent by key, %s protocol, group %s\n", pid, proto, os.Getenv(envGroup))
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		time.Sleep(concurrentDelay)
		// One write(2) a line: lines of concurrent handlers do not mix.
		_, err := fmt.Fprintf(out, "%d %d %d %s %s\n", pid, rec.Partition, rec.Offset, rec.Key, rec.Value)
		return err
	})
	fmt.Printf("consumer %d: Run returned %v\n", pid, err)
	if err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentConsumerKills runs the consumer SIGKILL test with 16
// handlers by key on three nodes: a process is killed at each of killAt and
// replaced, the last one stops on SIGTERM once everything is committed.
// Nothing is lost; each process handles each key's records in offset
// order; and a record handled again after a kill is at or past the offset
// committed when its first handler was killed (commits are gap-free). It
// runs under each group protocol in turn, on one cluster: classic, then
// KIP-848's consumer protocol.
func TestConcurrentConsumerKills(t *testing.T) {
	c := integration.Start(t, append([]integration.Option{integration.WithNodes(3)}, consumerProtocolBrokers...)...)
	for _, proto := range []kdeliver.GroupProtocol{kdeliver.ClassicProtocol, kdeliver.ConsumerProtocol} {
		t.Run(proto.String(), func(t *testing.T) { concurrentConsumerKills(t, c, proto) })
	}
}

// concurrentConsumerKills is [TestConcurrentConsumerKills] with the
// consumers joining with group protocol proto.
func concurrentConsumerKills(t *testing.T, c *integration.Cluster, proto kdeliver.GroupProtocol) {
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
		recs[i] = &kgo.Record{Key: []byte("k" + strconv.Itoa(i%concurrentKeys)), Value: []byte("c:" + strconv.Itoa(i))}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("fill %s: %v", topic, err)
	}

	out := filepath.Join(t.TempDir(), "handled")
	env := append(c.Env(), envGroup+"="+group, envTopic+"="+topic, envOut+"="+out, envProtocol+"="+proto.String())
	start := func() *integration.Process {
		return integration.StartHelper(t, "TestHelperConcurrentConsumer", env...)
	}
	committedNow := func() map[int32]int64 {
		offs, err := c.Admin().FetchOffsetsForTopics(ctx, group, topic)
		if err == nil {
			err = offs.Error()
		}
		if err != nil {
			t.Fatal(err)
		}
		got := map[int32]int64{}
		offs.Each(func(o kadm.OffsetResponse) { got[o.Partition] = o.At })
		return got
	}
	began := time.Now()
	killedAt := map[int]map[int32]int64{} // pid: the commits when it was killed
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
		// A commit the process sent before dying may still land; one
		// read now can only be lower, which makes the check below
		// stricter, never wrong.
		killedAt[p.Pid()] = committedNow()
		t.Logf("kill %d: SIGKILL consumer pid %d with %d records handled, committed %v", i+1, p.Pid(), countLines(out), killedAt[p.Pid()])
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

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	type handling struct {
		pid    int
		part   int32
		offset int64
	}
	seen := make([][]handling, consumerRecords)
	lastOffset := map[string]int64{} // pid/partition/key: the last offset handled
	var bad, disorder, early []string
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) != 5 || !strings.HasPrefix(f[4], "c:") {
			bad = append(bad, line)
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		part, err2 := strconv.Atoi(f[1])
		offset, err3 := strconv.ParseInt(f[2], 10, 64)
		seq, err4 := strconv.Atoi(strings.TrimPrefix(f[4], "c:"))
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || seq < 0 || seq >= consumerRecords || f[3] != "k"+strconv.Itoa(seq%concurrentKeys) {
			bad = append(bad, line)
			continue
		}
		lane := f[0] + "/" + f[1] + "/" + f[3]
		if last, ok := lastOffset[lane]; ok && offset <= last {
			disorder = append(disorder, fmt.Sprintf("pid %d: key %s of partition %d at offset %d after %d", pid, f[3], part, offset, last))
		}
		lastOffset[lane] = offset
		seen[seq] = append(seen[seq], handling{pid, int32(part), offset})
	}
	var lost, dup int
	for seq, hs := range seen {
		if len(hs) == 0 {
			lost++
			continue
		}
		dup += len(hs) - 1
		for i, h := range hs[:len(hs)-1] {
			commits, killed := killedAt[h.pid]
			if !killed {
				early = append(early, fmt.Sprintf("record %d handled by pid %d, which was not killed, and again by pid %d", seq, h.pid, hs[i+1].pid))
				continue
			}
			if h.offset < commits[h.part] {
				early = append(early, fmt.Sprintf("record %d (partition %d offset %d) handled again after pid %d was killed with the partition committed to %d", seq, h.part, h.offset, h.pid, commits[h.part]))
			}
		}
	}
	r := newResult(c, "concurrent-consumer-kills", kdeliver.AtLeastOnce)
	r.set("protocol", proto)
	r.set("records", consumerRecords)
	r.set("handlers", concurrentHandlers)
	r.set("order", kdeliver.ByKey)
	r.set("keys", concurrentKeys)
	r.set("handled", consumerRecords-lost+dup)
	r.set("lost", lost)
	r.set("duplicated", dup)
	r.set("faults", len(killAt))
	r.set("commit_interval", concurrentCommits)
	r.set("seconds", elapsed)
	t.Log(r)

	if len(bad) > 0 {
		t.Errorf("%d lines the handler did not write, e.g. %q", len(bad), bad[:min(3, len(bad))])
	}
	if lost > 0 {
		t.Errorf("%d records never handled: AtLeastOnce must not lose any", lost)
	}
	if len(disorder) > 0 {
		t.Errorf("%d records out of key order within a process, e.g. %q", len(disorder), disorder[:min(3, len(disorder))])
	}
	if len(early) > 0 {
		t.Errorf("%d records handled again from before the committed offset, e.g. %q", len(early), early[:min(3, len(early))])
	}
}
