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
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/integration"
)

// envConcurrency is the concurrent copier's kdeliver.WithConcurrency (by
// key).
const envConcurrency = "EOSTEST_CONCURRENCY"

// TestHelperConcurrentCopier is the copier process of the concurrent T1: an
// eos.Session with kdeliver.WithConcurrency(envConcurrency, ByKey) copying
// envIn to envOut, keyed as the input, until it is killed, with random
// handler failures and a random delay up to envDelay a record.
func TestHelperConcurrentCopier(t *testing.T) {
	if !integration.InHelper("TestHelperConcurrentCopier") {
		t.Skip("runs only as a helper process")
	}
	brokers := strings.Split(os.Getenv(integration.EnvBrokers), ",")
	n, _ := strconv.Atoi(os.Getenv(envConcurrency))
	s, err := eos.New(brokers, os.Getenv(envGroup), []string{os.Getenv(envIn)}, os.Getenv(envTxnID),
		eos.WithOutputTopic(os.Getenv(envOut)),
		eos.WithCommitEvery(250, 500*time.Millisecond),
		eos.WithTransactionTimeout(8*time.Second),
		eos.WithSessionTimeout(10*time.Second),
		kdeliver.WithMaxAttempts(20),
		kdeliver.WithConcurrency(n, kdeliver.ByKey),
		eos.WithKgoOpts(kgo.MetadataMinAge(time.Second)),
		kdeliver.WithClientID(os.Getenv(envTxnID)),
	)
	if err != nil {
		t.Fatal(err)
	}
	abortEvery, _ := strconv.Atoi(os.Getenv(envAbortEvery))
	delay, _ := time.ParseDuration(os.Getenv(envDelay))
	go func() {
		for range time.Tick(time.Second) {
			b, _ := json.Marshal(s.Stats())
			fmt.Printf("%s%s\n", statsPrefix, b)
		}
	}()
	var aborts atomic.Int64
	err = s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if delay > 0 {
			time.Sleep(rand.N(delay))
		}
		if abortEvery > 0 && rand.IntN(abortEvery) == 0 {
			return fmt.Errorf("random abort #%d", aborts.Add(1))
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
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

// T1 with concurrent handlers (issue 9): 20,000 records on 200 random keys,
// 3 → 3 partitions, kdeliver.WithConcurrency(8, kdeliver.ByKey), a third of
// the transactions aborted by the handler, the copier process SIGKILLed 3
// times: 0 lost, 0 duplicated, each key's records in input order in the
// read_committed output.
func TestT1ConcurrentCopierKilled(t *testing.T) {
	const n = 20000
	cluster.RequireReal(t)
	ctx := timeout(t, 15*time.Minute)
	in, out := topics(t, ctx, 3, 3)
	s := &scenario{t: t, ctx: ctx, n: n, in: in, out: out, group: in + "-g"}
	cl := cluster.Client(t, kgo.DefaultProduceTopic(in))
	s.want = make([]string, n)
	recs := make([]*kgo.Record, n)
	for i := range n {
		s.want[i] = "v:" + strconv.Itoa(i)
		recs[i] = &kgo.Record{Key: []byte("k" + strconv.Itoa(rand.IntN(200))), Value: []byte(s.want[i])}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("seed: %v", err)
	}
	s.tail = startTail(t, out)

	txnID := in + "-copier"
	env := append(cluster.Env(), envGroup+"="+s.group, envIn+"="+in, envOut+"="+out, envTxnID+"="+txnID,
		envAbortEvery+"=750", envDelay+"=2ms", envConcurrency+"=8")
	start := func() *integration.Process {
		p := integration.StartHelper(t, "TestHelperConcurrentCopier", env...)
		s.copiers = append(s.copiers, p)
		return p
	}
	p := start()
	began := time.Now()
	for _, f := range []float64{0.2, 0.45, 0.7} {
		s.wait(f, p)
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		t.Logf("SIGKILL copier at %.1f%%", 100*s.progress())
		p = start()
	}
	s.wait(1, p)
	t.Logf("copied %d records in %s with 3 copier kills", n, time.Since(began).Round(time.Second))
	a, st := s.finish(p)
	if len(a.Reordered) > 0 {
		t.Errorf("per-key order broken: %d records came after a later one of their key, e.g. %q", len(a.Reordered), a.Reordered[:min(5, len(a.Reordered))])
	}
	if st.AbortedHandler == 0 {
		t.Errorf("no handler aborts reported: the random failures did not happen")
	}
}
