package txnwatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// fakeAdmin answers the watcher's requests from fields the test sets.
type fakeAdmin struct {
	mu        sync.Mutex
	lso, hwm  map[tp]int64
	producers map[tp][]kadm.DescribedProducer
	txnIDs    map[int64]string
	offErr    error // returned by both offset listings, with no offsets
	descErr   error // returned by DescribeProducers, with no producers
	listErr   error
	polls     int
}

func newFakeAdmin() *fakeAdmin {
	return &fakeAdmin{lso: map[tp]int64{}, hwm: map[tp]int64{}, producers: map[tp][]kadm.DescribedProducer{}, txnIDs: map[int64]string{}}
}

func (f *fakeAdmin) set(t string, p int32, lso, hwm int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lso[tp{t, p}], f.hwm[tp{t, p}] = lso, hwm
}

func (f *fakeAdmin) listed(m map[tp]int64, topics []string) (kadm.ListedOffsets, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.offErr != nil {
		return nil, f.offErr
	}
	out := kadm.ListedOffsets{}
	for k, o := range m {
		for _, t := range topics {
			if t == k.topic {
				if out[t] == nil {
					out[t] = map[int32]kadm.ListedOffset{}
				}
				out[t][k.partition] = kadm.ListedOffset{Topic: t, Partition: k.partition, Offset: o}
			}
		}
	}
	return out, nil
}

func (f *fakeAdmin) ListCommittedOffsets(_ context.Context, topics ...string) (kadm.ListedOffsets, error) {
	f.mu.Lock()
	f.polls++
	f.mu.Unlock()
	return f.listed(f.lso, topics)
}

func (f *fakeAdmin) ListEndOffsets(_ context.Context, topics ...string) (kadm.ListedOffsets, error) {
	return f.listed(f.hwm, topics)
}

func (f *fakeAdmin) DescribeProducers(_ context.Context, s kadm.TopicsSet) (kadm.DescribedProducersTopics, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.descErr != nil {
		return nil, f.descErr
	}
	out := kadm.DescribedProducersTopics{}
	for t, ps := range s {
		dt := kadm.DescribedProducersTopic{Topic: t, Partitions: kadm.DescribedProducersPartitions{}}
		for p := range ps {
			dp := kadm.DescribedProducersPartition{Topic: t, Partition: p, ActiveProducers: kadm.DescribedProducers{}}
			for _, pr := range f.producers[tp{t, p}] {
				dp.ActiveProducers[pr.ProducerID] = pr
			}
			dt.Partitions[p] = dp
		}
		out[t] = dt
	}
	return out, nil
}

func (f *fakeAdmin) ListTransactions(_ context.Context, pids []int64, _ []string) (kadm.ListedTransactions, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	out := kadm.ListedTransactions{}
	for _, pid := range pids {
		if id, ok := f.txnIDs[pid]; ok {
			out[id] = kadm.ListedTransaction{TxnID: id, ProducerID: pid, State: "Ongoing"}
		}
	}
	return out, nil
}

// rig is a watcher on a fake admin, polled by hand at fake times.
type rig struct {
	t       *testing.T
	adm     *fakeAdmin
	w       *Watcher
	now     time.Time
	reports []Report
	logs    []string
	args    [][]any
	parts   map[string][]int32
}

func newRig(t *testing.T, bound time.Duration) *rig {
	r := &rig{t: t, adm: newFakeAdmin(), now: time.Unix(1_000_000, 0), parts: map[string][]int32{"t": {0, 1}}}
	w, err := newWatcher(r.adm, []string{"127.0.0.1:9092"}, bound,
		func() map[string][]int32 { return r.parts },
		func(rep Report) { r.reports = append(r.reports, rep) },
		func(f string, a ...any) { r.logs, r.args = append(r.logs, f), append(r.args, a) })
	if err != nil {
		t.Fatal(err)
	}
	r.w = w
	return r
}

// poll advances the fake clock by d and polls once.
func (r *rig) poll(d time.Duration) {
	r.now = r.now.Add(d)
	r.w.poll(context.Background(), r.now)
}

func (r *rig) wantReports(n int) {
	r.t.Helper()
	if len(r.reports) != n {
		r.t.Fatalf("%d reports, want %d: %v", len(r.reports), n, r.reports)
	}
}

func TestStallReportedOnceAfterBound(t *testing.T) {
	r := newRig(t, time.Minute)
	r.adm.set("t", 0, 10, 25)
	r.adm.set("t", 1, 5, 5) // caught up: never stalled
	r.adm.producers[tp{"t", 0}] = []kadm.DescribedProducer{
		{Topic: "t", Partition: 0, ProducerID: 7, ProducerEpoch: 2, CurrentTxnStartOffset: -1}, // idempotent only
		{Topic: "t", Partition: 0, ProducerID: 9, ProducerEpoch: 3, CurrentTxnStartOffset: 10},
	}
	r.adm.txnIDs[9] = "copier-1"

	r.poll(0) // first sight: the stall starts now
	for range 4 {
		r.poll(15 * time.Second) // 60s: not longer than the bound yet
	}
	r.wantReports(0)
	r.adm.set("t", 0, 10, 40) // the HWM moves on, the LSO does not
	r.poll(15 * time.Second)
	r.wantReports(1)
	got := r.reports[0]
	want := Report{Topic: "t", Partition: 0, LastStableOffset: 10, HighWatermark: 40, StalledFor: 75 * time.Second,
		ProducerID: 9, ProducerEpoch: 3, TransactionalID: "copier-1", TxnStartOffset: 10}
	got.Brokers = nil
	if got.String() != want.String() || got.StalledFor != want.StalledFor || got.ProducerID != 9 || got.TransactionalID != "copier-1" {
		t.Fatalf("report\n %+v\nwant\n %+v", got, want)
	}
	s := r.reports[0].String()
	for _, part := range []string{"t[0]", "last stable offset 10", "producer ID 9 epoch 3", `"copier-1"`,
		"kdeliver txns abort --brokers 127.0.0.1:9092 --topic t --partition 0 --producer-id 9",
		"kafka-transactions.sh --bootstrap-server 127.0.0.1:9092 abort --topic t --partition 0 --start-offset 10"} {
		if !strings.Contains(s, part) {
			t.Errorf("String() lacks %q:\n%s", part, s)
		}
	}

	for range 10 {
		r.poll(15 * time.Second) // still stalled: not again
	}
	r.wantReports(1)

	r.adm.set("t", 0, 41, 50) // the transaction ended, another holds the LSO
	r.adm.producers[tp{"t", 0}] = []kadm.DescribedProducer{{Topic: "t", Partition: 0, ProducerID: 11, CurrentTxnStartOffset: 41}}
	r.poll(15 * time.Second)
	r.wantReports(1)
	for range 5 {
		r.poll(15 * time.Second)
	}
	r.wantReports(2) // a new stall, reported again
	if r.reports[1].ProducerID != 11 || r.reports[1].TransactionalID != "" || r.reports[1].LastStableOffset != 41 {
		t.Errorf("second report %+v; want producer 11 at LSO 41 with no transactional ID", r.reports[1])
	}
	if !strings.Contains(r.reports[1].String(), "no coordinator knows") {
		t.Errorf("String() of a producer no coordinator knows: %s", r.reports[1])
	}
}

func TestCaughtUpEndsTheStall(t *testing.T) {
	r := newRig(t, time.Minute)
	r.adm.producers[tp{"t", 0}] = []kadm.DescribedProducer{{Topic: "t", Partition: 0, ProducerID: 1, CurrentTxnStartOffset: 3}}
	r.adm.set("t", 0, 3, 8)
	r.poll(0)
	r.poll(50 * time.Second)
	r.adm.set("t", 0, 3, 3) // e.g. the records were deleted: nothing waits
	r.poll(5 * time.Second)
	r.adm.set("t", 0, 3, 9) // a new stall at the same LSO starts its clock afresh
	r.poll(5 * time.Second)
	r.poll(59 * time.Second)
	r.wantReports(0)
	r.poll(2 * time.Second)
	r.wantReports(1)
	if r.reports[0].StalledFor != 61*time.Second {
		t.Errorf("stalled for %v, want 61s (since the HWM passed the LSO again)", r.reports[0].StalledFor)
	}
}

func TestAdminErrorsDoNotStopTheWatcher(t *testing.T) {
	r := newRig(t, time.Minute)
	r.parts = map[string][]int32{"t": {0}, "gone": {0}}
	r.adm.set("t", 0, 10, 20)
	r.poll(0)
	if len(r.logs) != 1 || !strings.Contains(fmt.Sprintf(r.logs[0], r.args[0]...), "no offsets for gone[0] (not listed") {
		t.Fatalf("logs %q; want one naming the partition without offsets", r.logs)
	}
	r.logs, r.args = nil, nil
	r.parts = map[string][]int32{"t": {0}}
	r.adm.producers[tp{"t", 0}] = []kadm.DescribedProducer{{Topic: "t", Partition: 0, ProducerID: 4, CurrentTxnStartOffset: 10}}
	r.poll(0)
	r.adm.offErr = kerr.NotLeaderForPartition
	r.poll(30 * time.Second)
	r.poll(31 * time.Second) // the offsets are unknown: nothing known moved
	r.wantReports(0)
	if len(r.logs) != 2 {
		t.Errorf("%d log lines, want 2 (one per failed poll): %v", len(r.logs), r.logs)
	}
	r.adm.offErr = nil
	r.adm.descErr = errors.New("broker down")
	for range lookupTries - 1 {
		r.poll(time.Second) // the producer lookup fails: retried next poll
	}
	r.wantReports(0)
	r.adm.descErr = nil
	r.adm.listErr = errors.New("coordinator down")
	r.poll(time.Second)
	r.wantReports(1)
	if r.reports[0].ProducerID != 4 || r.reports[0].TransactionalID != "" {
		t.Errorf("report %+v; want producer 4, no transactional ID (ListTransactions failed)", r.reports[0])
	}
}

func TestStallReportedWithoutProducerAfterTries(t *testing.T) {
	r := newRig(t, time.Minute)
	r.adm.set("t", 0, 10, 20) // no producer with an open transaction
	r.poll(0)
	r.poll(61 * time.Second)
	for range lookupTries - 2 {
		r.poll(time.Second)
	}
	r.wantReports(0)
	r.poll(time.Second)
	r.wantReports(1)
	if r.reports[0].ProducerID != -1 || !strings.Contains(r.reports[0].String(), "no producer with an open transaction") {
		t.Errorf("report %v; want one without a producer", r.reports[0])
	}
}

func TestUnassignedPartitionForgotten(t *testing.T) {
	r := newRig(t, time.Minute)
	r.adm.set("t", 0, 10, 20)
	r.adm.producers[tp{"t", 0}] = []kadm.DescribedProducer{{Topic: "t", Partition: 0, ProducerID: 4, CurrentTxnStartOffset: 10}}
	r.poll(0)
	r.poll(50 * time.Second)
	r.parts = map[string][]int32{"t": {1}} // revoked
	r.poll(20 * time.Second)
	r.parts = map[string][]int32{"t": {0, 1}} // assigned again: its clock starts afresh
	r.poll(20 * time.Second)
	r.poll(50 * time.Second)
	r.wantReports(0)
	r.poll(11 * time.Second)
	r.wantReports(1)
}

func TestNewValidates(t *testing.T) {
	_, err := newWatcher(newFakeAdmin(), nil, 0, nil, nil, nil)
	if err == nil {
		t.Fatal("no error for a zero bound and nil functions")
	}
	for _, part := range []string{"bound 0s", "nil partitions", "nil report"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q lacks %q", err, part)
		}
	}
	if _, err := New(nil, time.Second, func() map[string][]int32 { return nil }, func(Report) {}, nil); err == nil {
		t.Error("New(nil client) did not fail")
	}
	w, err := newWatcher(newFakeAdmin(), nil, time.Hour, func() map[string][]int32 { return nil }, func(Report) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Interval() != maxInterval {
		t.Errorf("interval %v for a 1h bound, want %v", w.Interval(), maxInterval)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	adm := newFakeAdmin()
	adm.offErr = errors.New("unreachable")
	polled := make(chan struct{}, 1)
	w, err := newWatcher(adm, nil, time.Second, func() map[string][]int32 {
		select {
		case polled <- struct{}{}:
		default:
		}
		return map[string][]int32{"t": {0}}
	}, func(Report) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	<-polled
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v after cancel, want nil", err)
	}
}
