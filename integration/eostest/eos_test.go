package eostest

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// t1 is Kafka's transactions_test (copier) scaled to two cores: n seeded
// records, input inParts → output outParts partitions, 250 records a
// transaction, a third of the transactions aborted at random by the
// handler. fault is "copier" (SIGKILL the copier process and start a new one
// with the same transactional ID) or "brokers" (SIGKILL node 1, 2, 3 in turn
// and restart it), once at each progress fraction in at. The copiers join
// their group with protocol (classic unless set).
type t1 struct {
	n                 int
	inParts, outParts int
	ordered           bool
	fault             string
	at                []float64
	delay             string
	protocol          kdeliver.GroupProtocol
}

func (sc t1) run(t *testing.T) {
	s := newScenario(t, 15*time.Minute, sc.n, sc.inParts, sc.outParts)
	txnID := s.in + "-copier"
	env := []string{envAbortEvery + "=750", envDelay + "=" + sc.delay, protocolEnv(sc.protocol)}
	if sc.ordered {
		// One input partition, so one output key: the audit checks the
		// order of the whole output.
		env = append(env, envKeyByPart+"=1")
	}
	p := s.copier(txnID, env...)
	began := time.Now()
	for i, f := range sc.at {
		s.wait(f, p)
		switch sc.fault {
		case "copier":
			if err := p.Kill(); err != nil {
				t.Fatal(err)
			}
			t.Logf("SIGKILL copier at %.1f%%", 100*s.progress())
			p = s.copier(txnID, env...)
		case "brokers":
			node := i%cluster.Nodes() + 1
			t.Logf("SIGKILL node %d at %.1f%%", node, 100*s.progress())
			s.bounce(node, 2*time.Second)
		}
	}
	s.wait(1, p)
	t.Logf("copied %d records in %s with %d %s faults (%s protocol)", sc.n, time.Since(began).Round(time.Second), len(sc.at), sc.fault, sc.protocol)
	if sc.protocol == kdeliver.ConsumerProtocol {
		checkConsumerGroup(t, s.ctx, s.group)
	}
	a, _ := s.finish(p)
	if sc.ordered && len(a.Reordered) > 0 {
		t.Fatalf("output order broken: %d records came after a later one, e.g. %q", len(a.Reordered), a.Reordered[:min(5, len(a.Reordered))])
	}
}

// scenario is the frame every test shares: fresh topics, n seeded records,
// a concurrent read_committed reader of the output.
type scenario struct {
	t              *testing.T
	copiers        []*integration.Process
	ctx            context.Context
	n              int
	in, out, group string
	want           []string
	tail           *tail
}

func newScenario(t *testing.T, d time.Duration, n, inParts, outParts int) *scenario {
	t.Helper()
	cluster.RequireReal(t)
	ctx := timeout(t, d)
	in, out := topics(t, ctx, inParts, outParts)
	s := &scenario{t: t, ctx: ctx, n: n, in: in, out: out, group: in + "-g"}
	s.want = seed(t, ctx, in, n)
	s.tail = startTail(t, out)
	return s
}

func (s *scenario) copier(txnID string, env ...string) *integration.Process {
	s.t.Helper()
	p := copier(s.t, s.group, s.in, s.out, txnID, env...)
	s.copiers = append(s.copiers, p)
	return p
}

func (s *scenario) progress() float64 { return progress(s.ctx, s.group, s.in, s.n) }

// wait waits until the group committed frac of the input; the copiers ps
// must stay alive meanwhile.
func (s *scenario) wait(frac float64, ps ...*integration.Process) {
	s.t.Helper()
	waitAlive(s.t, s.ctx, s.group, s.in, s.n, frac, ps...)
}

// bounce SIGKILLs node, restarts it after down, and waits for all replicas
// to be in sync again.
func (s *scenario) bounce(node int, down time.Duration) {
	s.t.Helper()
	if err := cluster.Kill(node); err != nil {
		s.t.Fatal(err)
	}
	time.Sleep(down)
	if err := cluster.Restart(s.ctx, node); err != nil {
		s.t.Fatal(err)
	}
	if err := cluster.WaitInSync(s.ctx); err != nil {
		s.t.Fatal(err)
	}
}

// finish kills the copiers ps and audits the output with a final and the
// concurrent read_committed reader.
func (s *scenario) finish(ps ...*integration.Process) (kdelivertest.Report, eos.Stats) {
	s.t.Helper()
	for _, p := range ps {
		p.Kill()
	}
	var sum eos.Stats
	for _, p := range s.copiers {
		st := lastStats(p.Output())
		sum.Committed += st.Committed
		sum.Aborted += st.Aborted
		sum.AbortedHandler += st.AbortedHandler
		sum.AbortedRebalance += st.AbortedRebalance
		sum.Recreated += st.Recreated
		sum.RewindViolations += st.RewindViolations
	}
	s.t.Logf("copier processes: %d; transactions (last reports, up to 1s stale): committed %d, aborted %d (handler %d, rebalance %d), clients replaced %d, rewind violations %d",
		len(s.copiers), sum.Committed, sum.Aborted, sum.AbortedHandler, sum.AbortedRebalance, sum.Recreated, sum.RewindViolations)
	if sum.RewindViolations != 0 {
		s.t.Errorf("rewind guard tripped %d times", sum.RewindViolations)
	}
	a := finalAudit(s.t, s.ctx, s.out, s.want)
	checkTail(s.t, s.tail, s.n)
	return a, sum
}

// waitAlive waits for progress like waitProgress and fails at once if a
// copier process exits.
func waitAlive(t *testing.T, ctx context.Context, group, topic string, total int, frac float64, ps ...*integration.Process) {
	t.Helper()
	for progress(ctx, group, topic, total) < frac {
		for _, p := range ps {
			select {
			case <-p.Done():
				t.Fatalf("a copier exited early: %v\n%s", p.Wait(ctx), lastLines(p.Output(), 30))
			default:
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("waiting for %.0f%% of %s: %v (at %.1f%%)", frac*100, topic, ctx.Err(), 100*progress(context.Background(), group, topic, total))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// T1, clients: the copier process is SIGKILLed 3 times at ≥ 20 % progress.
func TestT1CopierKilled(t *testing.T) {
	t1copierKilled.run(t)
}

// T1, clients, under KIP-848's consumer group protocol.
// Half the records, to keep the rerun short: the faults are the same.
func TestT1CopierKilled848(t *testing.T) {
	sc := t1copierKilled
	sc.n /= 2
	sc.protocol = kdeliver.ConsumerProtocol
	sc.run(t)
}

var t1copierKilled = t1{n: 30000, inParts: 2, outParts: 3, fault: "copier", at: []float64{0.2, 0.45, 0.7}, delay: "100us"}

// T1, ordered: 1 → 1 partition, 10,000 records; output equals input in order.
func TestT1CopierKilledOrdered(t *testing.T) {
	t1{n: 10000, inParts: 1, outParts: 1, ordered: true, fault: "copier", at: []float64{0.2, 0.45, 0.7}, delay: "300us"}.run(t)
}

// T1, brokers: all 3 brokers SIGKILLed and restarted one by one while the
// copier runs.
func TestT1BrokersKilled(t *testing.T) {
	t1{n: 30000, inParts: 2, outParts: 3, fault: "brokers", at: []float64{0.2, 0.45, 0.7}, delay: "1ms"}.run(t)
}

// T2: three copier processes in one group, 6 → 6 partitions. One is frozen
// (SIGSTOP) past its session timeout and its transaction timeout, then
// resumed: the group has moved on, its late commit must fail, and nothing it
// wrote may become visible. 0 duplicates, 0 lost, per-partition order kept.
func TestT2GroupZombie(t *testing.T) { t2GroupZombie(t, kdeliver.ClassicProtocol) }

// T2 under KIP-848's consumer group protocol: the broker removes the frozen
// member after group.consumer.session.timeout.ms and fences its member
// epoch; its late offset commit fails on that epoch or on its producer
// epoch, bumped when the broker aborted its transaction.
func TestT2GroupZombie848(t *testing.T) { t2GroupZombie(t, kdeliver.ConsumerProtocol) }

func t2GroupZombie(t *testing.T, proto kdeliver.GroupProtocol) {
	s := newScenario(t, 15*time.Minute, 30000, 6, 6)
	env := []string{envAbortEvery + "=750", envDelay + "=1ms", envKeyByPart + "=1", protocolEnv(proto)}
	var ps []*integration.Process
	for i := range 3 {
		ps = append(ps, s.copier(s.in+"-copier-"+strconv.Itoa(i), env...))
	}
	s.wait(0.2, ps...)
	zombie := ps[0]
	if err := zombie.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGSTOP copier 0 at %.1f%% for 15s (%s protocol, session timeout 10s, transaction timeout 8s)", 100*s.progress(), proto)
	time.Sleep(15 * time.Second)
	if err := zombie.Resume(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGCONT copier 0 at %.1f%%", 100*s.progress())
	s.wait(1, ps[1:]...)
	if proto == kdeliver.ConsumerProtocol {
		checkConsumerGroup(t, s.ctx, s.group)
	}
	a, _ := s.finish(ps...)
	t.Logf("zombie output (without its stats lines):\n%s", lastLines(withoutStats(zombie.Output()), 15))
	// Each input partition's records went to one output key, in order.
	if len(a.Reordered) > 0 {
		t.Fatalf("per input partition order broken: %d records came after a later one of their partition, e.g. %q", len(a.Reordered), a.Reordered[:min(5, len(a.Reordered))])
	}
}

// T3, D1: a second instance with the same transactional ID joins while the
// first is copying: one of them (normally the older) exits with ErrFenced,
// the other finishes; what the fenced one had open never becomes visible.
func TestT3SameTransactionalID(t *testing.T) {
	s := newScenario(t, 10*time.Minute, 10000, 3, 3)
	txnID := s.in + "-copier"
	older := s.copier(txnID, envDelay+"=1ms")
	s.wait(0.2, older)
	newer := s.copier(txnID, envDelay+"=1ms")
	var fenced, survivor *integration.Process
	select {
	case <-older.Done():
		fenced, survivor = older, newer
	case <-newer.Done():
		fenced, survivor = newer, older
	case <-time.After(2 * time.Minute):
		t.Fatal("neither instance was fenced within 2 minutes")
	}
	var ee *exec.ExitError
	if err := fenced.Wait(s.ctx); !errors.As(err, &ee) || ee.ExitCode() != exitFenced {
		t.Fatalf("the first instance to exit ended with %v, want exit status %d (ErrFenced)\n%s", err, exitFenced, lastLines(fenced.Output(), 20))
	}
	t.Logf("fenced: older=%t; output: %s", fenced == older, lastLines(fenced.Output(), 3))
	s.wait(1, survivor)
	s.finish(survivor)
}

// T3, D2: a transaction held open (handler stuck) past its 3s timeout. The
// broker aborts it; the session notices, replaces its client and goes on;
// nothing is lost or duplicated.
func TestT3TransactionTimeout(t *testing.T) {
	s := newScenario(t, 10*time.Minute, 5000, 2, 2)
	p := s.copier(s.in+"-copier", envDelay+"=1ms", envTxnTimeout+"=3s", envSlowValue+"=v:2500", envSlowFor+"=15s")
	s.wait(1, p)
	_, st := s.finish(p)
	t.Logf("copier output:\n%s", lastLines(p.Output(), 10))
	if st.Aborted == 0 {
		t.Error("the transaction held past its timeout was not aborted")
	}
}

// T3, D3: SIGKILL the node that coordinates the copier's transactions in
// the middle of the copy, restart it 5s later: the loop recovers.
func TestT3CoordinatorKilled(t *testing.T) {
	s := newScenario(t, 10*time.Minute, 10000, 3, 3)
	txnID := s.in + "-copier"
	p := s.copier(txnID, envDelay+"=1ms", envAbortEvery+"=750")
	s.wait(0.3, p)
	co := cluster.Admin().FindTxnCoordinators(s.ctx, txnID)[txnID]
	if co.Err != nil {
		t.Fatal(co.Err)
	}
	t.Logf("SIGKILL transaction coordinator node %d at %.1f%%", co.NodeID, 100*s.progress())
	s.bounce(int(co.NodeID), 5*time.Second)
	s.wait(1, p)
	s.finish(p)
}
