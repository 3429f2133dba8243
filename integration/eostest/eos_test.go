package eostest

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver/integration"
)

// t1 is Kafka's transactions_test (copier) scaled to two cores: n seeded
// records, input inParts → output outParts partitions, 250 records a
// transaction, a third of the transactions aborted at random by the
// handler. fault is "copier" (SIGKILL the copier process and start a new one
// with the same transactional ID) or "brokers" (SIGKILL node 1, 2, 3 in turn
// and restart it), once at each progress fraction in at.
type t1 struct {
	n                 int
	inParts, outParts int
	ordered           bool
	fault             string
	at                []float64
	delay             string
}

func (sc t1) run(t *testing.T) {
	cluster.RequireReal(t)
	ctx := timeout(t, 15*time.Minute)
	in, out := topics(t, ctx, sc.inParts, sc.outParts)
	want := seed(t, ctx, in, sc.n)
	tl := startTail(t, out)
	group, txnID := in+"-g", in+"-copier"
	env := []string{envAbortEvery + "=750", envDelay + "=" + sc.delay}
	p := copier(t, group, in, out, txnID, env...)
	began := time.Now()
	for i, f := range sc.at {
		waitAlive(t, ctx, group, in, sc.n, f, p)
		switch sc.fault {
		case "copier":
			if err := p.Kill(); err != nil {
				t.Fatal(err)
			}
			t.Logf("SIGKILL copier at %.1f%%", 100*progress(ctx, group, in, sc.n))
			p = copier(t, group, in, out, txnID, env...)
		case "brokers":
			node := i%cluster.Nodes() + 1
			t.Logf("SIGKILL node %d at %.1f%%", node, 100*progress(ctx, group, in, sc.n))
			if err := cluster.Kill(node); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second)
			if err := cluster.Restart(ctx, node); err != nil {
				t.Fatal(err)
			}
			if err := cluster.WaitInSync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitAlive(t, ctx, group, in, sc.n, 1, p)
	t.Logf("copied %d records in %s with %d %s faults", sc.n, time.Since(began).Round(time.Second), len(sc.at), sc.fault)
	p.Kill()
	recs := finalAudit(t, ctx, out, want)
	checkTail(t, tl, sc.n)
	if sc.ordered {
		for i, r := range recs {
			if string(r.Value) != want[i] {
				t.Fatalf("output[%d] = %s, want %s: order broken", i, r.Value, want[i])
			}
		}
	}
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
	t1{n: 30000, inParts: 2, outParts: 3, fault: "copier", at: []float64{0.2, 0.45, 0.7}, delay: "100us"}.run(t)
}

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
func TestT2GroupZombie(t *testing.T) {
	cluster.RequireReal(t)
	const n = 30000
	ctx := timeout(t, 15*time.Minute)
	in, out := topics(t, ctx, 6, 6)
	want := seed(t, ctx, in, n)
	tl := startTail(t, out)
	group := in + "-g"
	env := []string{envAbortEvery + "=750", envDelay + "=1ms", envKeyByPart + "=1"}
	var ps []*integration.Process
	for i := range 3 {
		ps = append(ps, copier(t, group, in, out, in+"-copier-"+strconv.Itoa(i), env...))
	}
	waitAlive(t, ctx, group, in, n, 0.2, ps...)
	zombie := ps[0]
	if err := zombie.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGSTOP copier 0 at %.1f%% for 15s (session timeout 10s, transaction timeout 8s)", 100*progress(ctx, group, in, n))
	time.Sleep(15 * time.Second)
	if err := zombie.Resume(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGCONT copier 0 at %.1f%%", 100*progress(ctx, group, in, n))
	waitAlive(t, ctx, group, in, n, 1, ps[1:]...)
	for _, p := range ps {
		p.Kill()
	}
	t.Logf("zombie output:\n%s", lastLines(zombie.Output(), 15))
	recs := finalAudit(t, ctx, out, want)
	checkTail(t, tl, n)
	// Each input partition's records went to one output key, in order.
	last := map[string]int{}
	for _, r := range recs {
		v, _ := strconv.Atoi(strings.TrimPrefix(string(r.Value), "v:"))
		if p, ok := last[string(r.Key)]; ok && v <= p {
			t.Fatalf("input partition %s: %d after %d, order broken", r.Key, v, p)
		}
		last[string(r.Key)] = v
	}
}

// T3, D1: a second instance with the same transactional ID joins while the
// first is copying: one of them (normally the older) exits with ErrFenced,
// the other finishes; what the fenced one had open never becomes visible.
func TestT3SameTransactionalID(t *testing.T) {
	cluster.RequireReal(t)
	const n = 10000
	ctx := timeout(t, 10*time.Minute)
	in, out := topics(t, ctx, 3, 3)
	want := seed(t, ctx, in, n)
	tl := startTail(t, out)
	group, txnID := in+"-g", in+"-copier"
	env := []string{envDelay + "=1ms"}
	older := copier(t, group, in, out, txnID, env...)
	waitAlive(t, ctx, group, in, n, 0.2, older)
	newer := copier(t, group, in, out, txnID, env...)
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
	if err := fenced.Wait(ctx); !errors.As(err, &ee) || ee.ExitCode() != exitFenced {
		t.Fatalf("the first instance to exit ended with %v, want exit status %d (ErrFenced)\n%s", err, exitFenced, lastLines(fenced.Output(), 20))
	}
	t.Logf("fenced: older=%t; output: %s", fenced == older, lastLines(fenced.Output(), 3))
	waitAlive(t, ctx, group, in, n, 1, survivor)
	survivor.Kill()
	finalAudit(t, ctx, out, want)
	checkTail(t, tl, n)
}

// T3, D2: a transaction held open (handler stuck) past its 3s timeout. The
// broker aborts it; the session notices, replaces its client and goes on;
// nothing is lost or duplicated.
func TestT3TransactionTimeout(t *testing.T) {
	cluster.RequireReal(t)
	const n = 5000
	ctx := timeout(t, 10*time.Minute)
	in, out := topics(t, ctx, 2, 2)
	want := seed(t, ctx, in, n)
	tl := startTail(t, out)
	group := in + "-g"
	p := copier(t, group, in, out, in+"-copier", envDelay+"=1ms", envTxnTimeout+"=3s",
		envSlowValue+"=v:2500", envSlowFor+"=15s")
	waitAlive(t, ctx, group, in, n, 1, p)
	p.Kill()
	t.Logf("copier output:\n%s", lastLines(p.Output(), 10))
	finalAudit(t, ctx, out, want)
	checkTail(t, tl, n)
}

// T3, D3: SIGKILL the node that coordinates the copier's transactions in
// the middle of the copy, restart it later: the loop recovers.
func TestT3CoordinatorKilled(t *testing.T) {
	cluster.RequireReal(t)
	const n = 10000
	ctx := timeout(t, 10*time.Minute)
	in, out := topics(t, ctx, 3, 3)
	want := seed(t, ctx, in, n)
	tl := startTail(t, out)
	group, txnID := in+"-g", in+"-copier"
	p := copier(t, group, in, out, txnID, envDelay+"=1ms", envAbortEvery+"=750")
	waitAlive(t, ctx, group, in, n, 0.3, p)
	co := cluster.Admin().FindTxnCoordinators(ctx, txnID)[txnID]
	if co.Err != nil {
		t.Fatal(co.Err)
	}
	node := int(co.NodeID)
	t.Logf("SIGKILL transaction coordinator node %d at %.1f%%", node, 100*progress(ctx, group, in, n))
	if err := cluster.Kill(node); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if err := cluster.Restart(ctx, node); err != nil {
		t.Fatal(err)
	}
	waitAlive(t, ctx, group, in, n, 1, p)
	p.Kill()
	if err := cluster.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	finalAudit(t, ctx, out, want)
	checkTail(t, tl, n)
}
