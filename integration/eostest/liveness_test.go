package eostest

import (
	"context"
	"encoding/json"
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
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/integration"
)

// Liveness tests of issue 14 on real Kafka: a session that is told to stop
// while it joins its group stops within a bound (bug 7), and a session that
// replaces one killed in the middle of a commit commits again within a bound
// (bug 8). Both bounds are liveness bounds far below the timeouts the bugs
// waited out.

// Environment of a liveness copier helper process, besides the copier's.
const (
	envSessTimeout = "EOSTEST_SESSION_TIMEOUT"
	envStallAfter  = "EOSTEST_STALL_AFTER" // stall on the TxnOffsetCommit response after this many
	envInstanceID  = "EOSTEST_INSTANCE_ID" // static group membership (kgo.InstanceID)

	// Lines of the liveness copier that the tests wait for.
	lineRunning     = "liveness: running"
	lineStalled     = "stalled after TxnOffsetCommit"
	lineFirstCommit = "liveness: first commit"
	linePrefix      = "liveness: "

	// Request keys (kmsg.OffsetFetch and kmsg.TxnOffsetCommit; this module
	// does not depend on kmsg directly).
	keyOffsetFetch     int16 = 9
	keyTxnOffsetCommit int16 = 28
)

// stallHook, once after TxnOffsetCommit responses have been read (after
// > 0), blocks the client's read of the next one, so that transaction stays
// open with its offsets added (pending in the group coordinator) and no
// EndTxn is ever sent: the process is stuck between TxnOffsetCommit and
// EndTxn until it is killed. It also counts OffsetFetch responses, which
// the group retries once a second while a pending transactional commit
// makes the offsets unstable.
type stallHook struct {
	after         int64
	commits       atomic.Int64
	offsetFetches atomic.Int64
}

func (h *stallHook) OnBrokerRead(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if err != nil {
		return
	}
	switch key {
	case keyOffsetFetch:
		h.offsetFetches.Add(1)
	case keyTxnOffsetCommit:
		if h.after > 0 && h.commits.Add(1) > h.after {
			fmt.Printf("liveness: %s #%d (after %d commits); blocking until killed\n", lineStalled, h.commits.Load(), h.after)
			select {}
		}
	}
}

// TestHelperLiveness is a copier process like TestHelperCopier that also
// stops on SIGTERM (Run with a signal.NotifyContext, then Close with an 8s
// ctx) and prints when each step happened, and that can stall in the middle
// of a commit (envStallAfter) or use static group membership
// (envInstanceID). Its Kafka client logs at info level to stdout, so the
// output says what the group join and the offset fetch waited for.
func TestHelperLiveness(t *testing.T) {
	if !integration.InHelper("TestHelperLiveness") {
		t.Skip("runs only as a helper process")
	}
	began := time.Now()
	at := func() string { return fmt.Sprintf("+%.2fs", time.Since(began).Seconds()) }
	brokers := strings.Split(os.Getenv(integration.EnvBrokers), ",")
	sessTimeout, txnTimeout := 45*time.Second, 10*time.Second
	if d, err := time.ParseDuration(os.Getenv(envSessTimeout)); err == nil {
		sessTimeout = d
	}
	if d, err := time.ParseDuration(os.Getenv(envTxnTimeout)); err == nil {
		txnTimeout = d
	}
	delay, _ := time.ParseDuration(os.Getenv(envDelay))
	hook := &stallHook{}
	hook.after, _ = strconv.ParseInt(os.Getenv(envStallAfter), 10, 64)
	kopts := []kgo.Opt{kgo.MetadataMinAge(time.Second), kgo.WithHooks(hook)}
	if id := os.Getenv(envInstanceID); id != "" {
		kopts = append(kopts, kgo.InstanceID(id))
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := eos.New(brokers, os.Getenv(envGroup), []string{os.Getenv(envIn)}, os.Getenv(envTxnID),
		eos.WithOutputTopic(os.Getenv(envOut)),
		eos.WithCommitEvery(250, 500*time.Millisecond),
		eos.WithTransactionTimeout(txnTimeout),
		eos.WithSessionTimeout(sessTimeout),
		eos.WithKgoOpts(kopts...),
		kdeliver.WithLogger(log),
		kdeliver.WithClientID(os.Getenv(envTxnID)),
	)
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
		fmt.Printf("liveness: SIGTERM at %s\n", at())
		close(sigNoted)
	}()
	go func() {
		for range time.Tick(20 * time.Millisecond) {
			if s.Stats().Committed > 0 {
				fmt.Printf("%s at %s, after %d OffsetFetch responses\n", lineFirstCommit, at(), hook.offsetFetches.Load())
				return
			}
		}
	}()
	go func() {
		for range time.Tick(time.Second) {
			b, _ := json.Marshal(s.Stats())
			fmt.Printf("%s%s\n", statsPrefix, b)
		}
	}()
	fmt.Printf("%s at %s (session timeout %v, transaction timeout %v, instance ID %q)\n", lineRunning, at(), sessTimeout, txnTimeout, os.Getenv(envInstanceID))
	err = s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if delay > 0 {
			time.Sleep(delay)
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	})
	afterSig := func() string {
		if ctx.Err() == nil {
			return "without SIGTERM"
		}
		<-sigNoted
		return fmt.Sprintf("%.2fs after SIGTERM", time.Since(sigAt).Seconds())
	}
	fmt.Printf("liveness: Run returned %v at %s, %s\n", err, at(), afterSig())
	cctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	closeBegan := time.Now()
	cerr := s.Close(cctx)
	b, _ := json.Marshal(s.Stats())
	fmt.Printf("liveness: Close(8s ctx) returned %v after %.2fs, at %s, %s\n%s%s\n", cerr, time.Since(closeBegan).Seconds(), at(), afterSig(), statsPrefix, b)
	if err != nil {
		t.Fatal(err)
	}
}

// liveness starts a liveness copier process in s's group.
func (s *scenario) liveness(txnID string, env ...string) *integration.Process {
	s.t.Helper()
	env = append(env, cluster.Env()...)
	env = append(env, envGroup+"="+s.group, envIn+"="+s.in, envOut+"="+s.out, envTxnID+"="+txnID)
	p := integration.StartHelper(s.t, "TestHelperLiveness", env...)
	s.copiers = append(s.copiers, p)
	return p
}

// waitLine waits until p printed a line containing line, at most d; it
// fails at once if p exits.
func waitLine(t *testing.T, p *integration.Process, line string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.Output(), line) {
		select {
		case <-p.Done():
			t.Fatalf("the copier exited before printing %q: %v\n%s", line, p.Wait(context.Background()), lastLines(p.Output(), 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q from the copier within %v\n%s", line, d, lastLines(p.Output(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// helperLines returns p's own "liveness: " lines and its warnings and
// errors (not the client's info log).
func helperLines(p *integration.Process) string {
	var b strings.Builder
	for _, l := range strings.Split(p.Output(), "\n") {
		if strings.HasPrefix(l, linePrefix) || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			b.WriteString("\n\t" + l)
		}
	}
	return b.String()
}

// groupState returns the classic group's state and member count.
func groupState(ctx context.Context, group string) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	gs, err := cluster.Admin().DescribeGroups(ctx, group)
	if err != nil {
		return "", 0, err
	}
	g, ok := gs[group]
	if !ok {
		return "", 0, fmt.Errorf("group %s not described", group)
	}
	if g.Err != nil {
		return "", 0, g.Err
	}
	return g.State, len(g.Members), nil
}

// waitJoining waits until p said it is running and the group is in a
// rebalance (PreparingRebalance: the coordinator waits for every member it
// knows, including a dead one, to rejoin), at most d.
func waitJoining(t *testing.T, ctx context.Context, group string, p *integration.Process, d time.Duration) {
	t.Helper()
	waitLine(t, p, lineRunning, d)
	deadline := time.Now().Add(d)
	var last string
	for {
		state, members, err := groupState(ctx, group)
		if err == nil && state == "PreparingRebalance" {
			t.Logf("group %s is %s with %d members (the SIGKILLed one among them)", group, state, members)
			return
		}
		last = fmt.Sprintf("state %q, %d members, err %v", state, members, err)
		if exited(p) {
			t.Fatalf("the second member exited while joining: %v\n%s", p.Wait(ctx), lastLines(p.Output(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group never showed the second member joining within %v (last: %s)", d, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Bug 7 of issue 14, eos: SIGTERM to a session that is still joining its
// group (a restart after a SIGKILL, so the coordinator waits up to the dead
// member's 45s session timeout) makes the process exit within
// shutdownBound. On b671d00 the process exits only once the join completes,
// about 40s later: Run returns, but Close with its 8s ctx waits for the
// client's group leave, which waits for the join.
func TestShutdownWhileJoining(t *testing.T) {
	const shutdownBound = 10 * time.Second
	s := newScenario(t, 5*time.Minute, 20000, 2, 2)
	txnID := s.in + "-copier"
	env := []string{envDelay + "=1ms", envSessTimeout + "=45s", envTxnTimeout + "=10s"}
	first := s.liveness(txnID, env...)
	s.wait(0.02, first)
	if err := first.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL the first member at %.1f%%; its session timeout is 45s", 100*s.progress())
	second := s.liveness(txnID, env...)
	waitJoining(t, s.ctx, s.group, second, 30*time.Second)
	if err := second.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-second.Done():
	case <-time.After(2 * time.Minute):
	}
	took := time.Since(sent)
	t.Logf("second member (pid %d) after SIGTERM:%s", second.Pid(), helperLines(second))
	switch {
	case !exited(second):
		t.Errorf("the second member was still running %.1fs after SIGTERM, bound %v (session timeout 45s)", took.Seconds(), shutdownBound)
	case took > shutdownBound:
		t.Errorf("the second member exited %.1fs after SIGTERM while joining, bound %v (session timeout 45s, Close ctx 8s)", took.Seconds(), shutdownBound)
	default:
		t.Logf("the second member exited %.2fs after SIGTERM while joining (bound %v)", took.Seconds(), shutdownBound)
	}
	if err := second.Wait(s.ctx); err != nil {
		t.Errorf("the second member did not exit cleanly: %v", err)
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

// committedSum returns the sum of group's committed offsets on topic (the
// stable ones: a pending transactional commit does not count) and whether
// every partition answered.
func committedSum(ctx context.Context, group, topic string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	offs, err := cluster.Admin().FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		return 0, err
	}
	var sum int64
	var ferr error
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Err != nil && ferr == nil {
			ferr = o.Err
		}
		if o.At > 0 {
			sum += o.At
		}
	})
	return sum, ferr
}

// Bug 8 of issue 14: a copier killed between TxnOffsetCommit and EndTxn is
// replaced by one with the same transactional ID, which must commit again
// within resumeBound, well below the 60s transaction timeout. The
// replacement uses the same static group member (kgo.InstanceID), so its
// join completes at once and does not wait for the dead member's session
// timeout: what is measured is the wait between the join and the first
// commit. On b671d00 the replacement fetches its offsets (require_stable)
// before its producer fences the old transaction, so the fetch retries
// UNSTABLE_OFFSET_COMMIT once a second until the broker times the old
// transaction out (60s plus up to the 10s abort scan interval). The output
// must still be exact.
func TestRestartAfterKillMidCommit(t *testing.T) {
	const resumeBound = 15 * time.Second
	s := newScenario(t, 10*time.Minute, 6000, 2, 2)
	txnID := s.in + "-copier"
	env := []string{envDelay + "=1ms", envTxnTimeout + "=60s", envSessTimeout + "=75s", envInstanceID + "=" + txnID}
	first := s.liveness(txnID, append(env, envStallAfter+"=3")...)
	waitLine(t, first, lineStalled, 2*time.Minute)
	before, err := committedSum(s.ctx, s.group, s.in)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("SIGKILL the copier stalled between TxnOffsetCommit and EndTxn; %d of %d input records committed%s", before, s.n, helperLines(first))
	second := s.liveness(txnID, env...)
	var after int64
	for {
		after, _ = committedSum(s.ctx, s.group, s.in)
		if after > before || exited(second) || time.Since(killed) > 2*time.Minute {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(killed)
	unstable := strings.Count(second.Output(), "UNSTABLE_OFFSET_COMMIT")
	t.Logf("replacement (pid %d):%s\n\t%d client log lines name UNSTABLE_OFFSET_COMMIT", second.Pid(), helperLines(second), unstable)
	switch {
	case after <= before:
		t.Fatalf("the replacement committed nothing within %.0fs of the SIGKILL (committed offsets %d, as before)\n%s", took.Seconds(), after, lastLines(second.Output(), 30))
	case took > resumeBound:
		t.Errorf("the replacement committed again %.1fs after the SIGKILL, bound %v (transaction timeout 60s; %d OffsetFetch retries on UNSTABLE_OFFSET_COMMIT logged): it waited for the dead instance's transaction to time out", took.Seconds(), resumeBound, unstable)
	default:
		t.Logf("the replacement committed again %.2fs after the SIGKILL (bound %v, transaction timeout 60s)", took.Seconds(), resumeBound)
	}
	s.wait(1, second)
	s.finish(second)
}
