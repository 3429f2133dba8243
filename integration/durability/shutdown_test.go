package durability

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/integration"
)

// Lines of the joining consumer helper.
const (
	joinLinePrefix  = "joining consumer: "
	joinLineRunning = "joining consumer: running"
)

// TestHelperJoiningConsumer is an AtLeastOnce consumer with the default
// options (so the default 45s session timeout) that stops on SIGTERM
// (Run with a signal.NotifyContext) and prints when each step happened; its
// warnings go to stdout too.
func TestHelperJoiningConsumer(t *testing.T) {
	if !integration.InHelper("TestHelperJoiningConsumer") {
		t.Skip("runs only as a helper process of the shutdown tests")
	}
	began := time.Now()
	at := func() string { return fmt.Sprintf("+%.2fs", time.Since(began).Seconds()) }
	brokers := strings.Split(os.Getenv(integration.EnvBrokers), ",")
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := consumer.New(brokers, os.Getenv(envGroup), []string{os.Getenv(envTopic)}, kdeliver.AtLeastOnce,
		kdeliver.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var sigAt time.Time
	sigNoted := make(chan struct{})
	go func() {
		<-ctx.Done()
		sigAt = time.Now()
		fmt.Printf("%sSIGTERM at %s\n", joinLinePrefix, at())
		close(sigNoted)
	}()
	var handled atomic.Int64
	fmt.Printf("%s at %s (pid %d)\n", joinLineRunning, at(), os.Getpid())
	err = c.Run(ctx, func(context.Context, *kgo.Record) error {
		if handled.Add(1) == 1 {
			fmt.Printf("%sfirst record at %s\n", joinLinePrefix, at())
		}
		return nil
	})
	since := "without SIGTERM"
	if ctx.Err() != nil {
		<-sigNoted
		since = fmt.Sprintf("%.2fs after SIGTERM", time.Since(sigAt).Seconds())
	}
	fmt.Printf("%sRun returned %v at %s, %s, %d records handled\n", joinLinePrefix, err, at(), since, handled.Load())
	if err != nil {
		t.Fatal(err)
	}
}

// Bug 7 of issue 14, consumer: SIGTERM to a consumer that is still joining
// its group (a restart after a SIGKILL: the coordinator waits for the dead
// member, up to its 45s session timeout) makes the process exit within
// shutdownBound. On b671d00 Run leaves the group with a 30s ctx, and the
// leave waits for the join: the process exits about 40s after SIGTERM.
func TestShutdownWhileJoining(t *testing.T) {
	const shutdownBound = 10 * time.Second
	c := integration.Start(t, integration.WithNodes(1))
	requireReal(t, c, "kfake's group coordinator has other timings than Kafka's")
	ctx := timeout(t, 5*time.Minute)
	topic := topicName(t)
	group := topic + "-group"
	if err := c.CreateTopic(ctx, topic, 3); err != nil {
		t.Fatal(err)
	}
	recs := make([]*kgo.Record, 1000)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(strconv.Itoa(i)), Value: []byte("j:" + strconv.Itoa(i))}
	}
	if err := c.Client(t).ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("fill %s: %v", topic, err)
	}
	env := append(c.Env(), envGroup+"="+group, envTopic+"="+topic)
	start := func() *integration.Process { return integration.StartHelper(t, "TestHelperJoiningConsumer", env...) }

	first := start()
	err := waitFor(ctx, "the first member to commit", 100*time.Millisecond, func() (bool, string, error) {
		if exited(first) {
			return false, "", fmt.Errorf("the first member exited early: %v\n%s", first.Wait(ctx), first.Output())
		}
		offs, err := c.Admin().FetchOffsetsForTopics(ctx, group, topic)
		if err != nil {
			return false, err.Error(), nil
		}
		var sum int64
		offs.Each(func(o kadm.OffsetResponse) { sum += max(0, o.At) })
		return sum > 0, fmt.Sprintf("%d committed", sum), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Log("SIGKILL the first member after it committed; its session timeout is 45s")

	second := start()
	err = waitFor(ctx, "the second member to be joining", 50*time.Millisecond, func() (bool, string, error) {
		if exited(second) {
			return false, "", fmt.Errorf("the second member exited early: %v\n%s", second.Wait(ctx), second.Output())
		}
		if !strings.Contains(second.Output(), joinLineRunning) {
			return false, "not running yet", nil
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		gs, err := c.Admin().DescribeGroups(dctx, group)
		if err != nil {
			return false, err.Error(), nil
		}
		g := gs[group]
		return g.Err == nil && g.State == "PreparingRebalance", fmt.Sprintf("state %q, %d members, err %v", g.State, len(g.Members), g.Err), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("group is PreparingRebalance: the second member is joining, the coordinator waits for the dead one")
	if err := second.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-second.Done():
	case <-time.After(2 * time.Minute):
	}
	took := time.Since(sent)
	var lines strings.Builder
	for _, l := range strings.Split(second.Output(), "\n") {
		if strings.HasPrefix(l, joinLinePrefix) || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			lines.WriteString("\n\t" + l)
		}
	}
	t.Logf("second member (pid %d) after SIGTERM:%s", second.Pid(), lines.String())
	switch {
	case !exited(second):
		t.Errorf("the second member was still running %.1fs after SIGTERM, bound %v (session timeout 45s)", took.Seconds(), shutdownBound)
	case took > shutdownBound:
		t.Errorf("the second member exited %.1fs after SIGTERM while joining, bound %v (session timeout 45s)", took.Seconds(), shutdownBound)
	default:
		t.Logf("the second member exited %.2fs after SIGTERM while joining (bound %v)", took.Seconds(), shutdownBound)
	}
	if err := second.Wait(ctx); err != nil {
		t.Errorf("the second member did not exit cleanly: %v", err)
	}
}
