// Package txnwatch finds hanging transactions: partitions whose last stable
// offset (LSO) stands still while records pile up behind it, which stops
// every read_committed consumer of the partition at the LSO until the
// transaction holding it ends. A producer frozen (SIGSTOP, a long GC, a
// partition from the coordinator) in the middle of a transaction with a long
// transaction timeout causes it, and so does a transaction the coordinator
// has lost track of (Kafka's "hanging transaction", KIP-664).
//
// [Watcher] polls the partitions a consumer owns and calls back with a
// [Report] naming the producer holding the partition; [OpenTransactions]
// and [Abort] are what `kdeliver txns list --hanging` and `kdeliver txns
// abort` do, from code.
package txnwatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Report is a partition stalled by an open transaction, as [Watcher]
// reports it.
type Report struct {
	Topic     string
	Partition int32

	// LastStableOffset is where read_committed consumers stop;
	// HighWatermark is the end of the partition. HighWatermark -
	// LastStableOffset offsets wait behind the open transaction.
	LastStableOffset int64
	HighWatermark    int64

	// StalledFor is how long the watcher has seen the last stable offset
	// stand still with the high watermark beyond it (the stall may have
	// begun before the watcher started).
	StalledFor time.Duration

	// The producer holding the transaction open, from DescribeProducers:
	// ProducerID is -1 when it could not be found. TransactionalID is ""
	// when no coordinator knows the producer ID (a transaction the
	// coordinator lost: Kafka's "hanging transaction") or the lookup
	// failed. TxnStartOffset is the transaction's first offset on this
	// partition, -1 when unknown.
	ProducerID      int64
	ProducerEpoch   int16
	TransactionalID string
	TxnStartOffset  int64

	// Brokers are the seed brokers of the watching client, for the
	// commands in String.
	Brokers []string
}

// String says what is wrong and how to fix it, in one paragraph.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hanging transaction on %s[%d]: its last stable offset %d has not moved for %v while its high watermark is %d, "+
		"so read_committed consumers stop at offset %d and %d offsets wait behind it",
		r.Topic, r.Partition, r.LastStableOffset, round(r.StalledFor), r.HighWatermark,
		r.LastStableOffset, r.HighWatermark-r.LastStableOffset)
	switch {
	case r.ProducerID < 0:
		b.WriteString("; no producer with an open transaction was found on it (DescribeProducers failed or the transaction has just ended)")
	default:
		fmt.Fprintf(&b, "; it is held open by producer ID %d epoch %d", r.ProducerID, r.ProducerEpoch)
		if r.TransactionalID != "" {
			fmt.Fprintf(&b, " (transactional ID %q)", r.TransactionalID)
		} else {
			b.WriteString(" (no coordinator knows its transactional ID)")
		}
		if r.TxnStartOffset >= 0 {
			fmt.Fprintf(&b, ", whose transaction began at offset %d", r.TxnStartOffset)
		}
	}
	brokers := strings.Join(r.Brokers, ",")
	if brokers == "" {
		brokers = "HOST:PORT"
	}
	fmt.Fprintf(&b, ". If that producer is frozen or gone, its transaction ends only when the transaction timeout expires; "+
		"to free the partition now, abort it, but only if that producer will not resume (the transaction's records on this partition are discarded; "+
		"a producer that resumes could still commit the rest of its transaction without them): "+
		"kdeliver txns abort --brokers %s --topic %s --partition %d", brokers, r.Topic, r.Partition)
	if r.ProducerID >= 0 {
		fmt.Fprintf(&b, " --producer-id %d", r.ProducerID)
	}
	fmt.Fprintf(&b, ", or Kafka's kafka-transactions.sh --bootstrap-server %s abort --topic %s --partition %d", brokers, r.Topic, r.Partition)
	if r.TxnStartOffset >= 0 {
		fmt.Fprintf(&b, " --start-offset %d", r.TxnStartOffset)
	}
	return b.String()
}

// admin is what the watcher asks the cluster: the methods of
// *kadm.Client it uses, so that tests can answer instead.
type admin interface {
	ListCommittedOffsets(ctx context.Context, topics ...string) (kadm.ListedOffsets, error)
	ListEndOffsets(ctx context.Context, topics ...string) (kadm.ListedOffsets, error)
	DescribeProducers(ctx context.Context, s kadm.TopicsSet) (kadm.DescribedProducersTopics, error)
	ListTransactions(ctx context.Context, producerIDs []int64, filterStates []string) (kadm.ListedTransactions, error)
}

// Polling interval bounds: a quarter of the bound, within these.
const (
	minInterval = 100 * time.Millisecond
	maxInterval = 30 * time.Second
)

// lookupTries is how many polls in a row may fail to find a stalled
// partition's producer before the stall is reported without it.
const lookupTries = 3

// Watcher polls the last stable offset and high watermark of the partitions
// it is given and reports each partition stalled longer than its bound.
// Create it with [New]; run it with [Watcher.Run].
type Watcher struct {
	adm        admin
	partitions func() map[string][]int32
	bound      time.Duration
	interval   time.Duration
	report     func(Report)
	logf       func(format string, args ...any)
	brokers    []string
	now        func() time.Time

	parts map[tp]*stall
}

type tp struct {
	topic     string
	partition int32
}

// stall is what the watcher knows of one partition.
type stall struct {
	lso      int64
	since    time.Time // zero: not stalled (HWM <= LSO at the last poll)
	reported bool      // this stall was reported
	misses   int       // polls in a row that did not find the producer
}

// New returns a watcher that asks the cluster through cl (a kadm client
// built on it; the watcher does not close cl). partitions returns the
// partitions to watch, the caller's current assignment; it is called once
// per poll, from Run's goroutine, and must not block. A partition is
// reported when its last stable offset has not moved, with the high
// watermark beyond it, for longer than bound; report is called once per
// stall, from Run's goroutine (again only after the last stable offset
// moved or caught up with the high watermark), and must not block for long:
// the watcher does not poll meanwhile. Polls are a quarter of bound apart
// (at least 100ms, at most 30s), so a stall is reported between bound and
// bound plus one interval after the watcher first saw it. logf receives the
// errors of admin requests, which do not stop the watcher (it retries at
// the next poll); nil discards them.
func New(cl *kgo.Client, bound time.Duration, partitions func() map[string][]int32, report func(Report), logf func(format string, args ...any)) (*Watcher, error) {
	if cl == nil {
		return nil, errors.New("txnwatch: nil client")
	}
	brokers, _ := cl.OptValue(kgo.SeedBrokers).([]string)
	return newWatcher(kadm.NewClient(cl), brokers, bound, partitions, report, logf)
}

func newWatcher(adm admin, brokers []string, bound time.Duration, partitions func() map[string][]int32, report func(Report), logf func(format string, args ...any)) (*Watcher, error) {
	var problems []string
	if bound <= 0 {
		problems = append(problems, fmt.Sprintf("bound %v: use a positive duration, longer than your transactions take", bound))
	}
	if partitions == nil {
		problems = append(problems, "nil partitions function: pass one returning the partitions to watch")
	}
	if report == nil {
		problems = append(problems, "nil report function: pass one that logs or counts the report")
	}
	if len(problems) > 0 {
		return nil, errors.New("txnwatch: " + strings.Join(problems, "; "))
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Watcher{
		adm:        adm,
		partitions: partitions,
		bound:      bound,
		interval:   min(max(bound/4, minInterval), maxInterval),
		report:     report,
		logf:       logf,
		brokers:    slices.Clone(brokers),
		now:        time.Now,
		parts:      map[tp]*stall{},
	}, nil
}

// Interval returns the time between two polls.
func (w *Watcher) Interval() time.Duration { return w.interval }

// Run polls until ctx is done, then returns nil. It must not be called
// twice at once.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.poll(ctx, w.now())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// poll is one round: the offsets of every watched partition, then the
// producers of the partitions stalled longer than the bound.
func (w *Watcher) poll(ctx context.Context, now time.Time) {
	want := w.partitions()
	watched := map[tp]bool{}
	topics := make([]string, 0, len(want))
	for t, ps := range want {
		if len(ps) == 0 {
			continue
		}
		topics = append(topics, t)
		for _, p := range ps {
			watched[tp{t, p}] = true
		}
	}
	for k := range w.parts {
		if !watched[k] {
			delete(w.parts, k) // no longer ours: a new owner starts afresh
		}
	}
	if len(topics) == 0 || ctx.Err() != nil {
		return
	}
	slices.Sort(topics)
	// The LSO first: the HWM read after it is at least as far.
	lso, err := w.adm.ListCommittedOffsets(ctx, topics...)
	if err != nil && ctx.Err() == nil {
		w.logf("txnwatch: list the last stable offsets of %s: %v (retrying in %v)", strings.Join(topics, ","), err, w.interval)
	}
	if len(lso) == 0 {
		return
	}
	hwm, err := w.adm.ListEndOffsets(ctx, topics...)
	if err != nil && ctx.Err() == nil {
		w.logf("txnwatch: list the high watermarks of %s: %v (retrying in %v)", strings.Join(topics, ","), err, w.interval)
	}
	var due []tp
	var unknown []string
	for k := range watched {
		l, ok := lso.Lookup(k.topic, k.partition)
		h, ok2 := hwm.Lookup(k.topic, k.partition)
		if !ok || !ok2 || l.Err != nil || h.Err != nil {
			// Unknown this round: keep what we knew.
			unknown = append(unknown, fmt.Sprintf("%s[%d] (%v)", k.topic, k.partition, cmp.Or(l.Err, h.Err, errNotListed)))
			continue
		}
		if w.observe(k, l.Offset, h.Offset, now) {
			due = append(due, k)
		}
	}
	if len(unknown) > 0 && err == nil && ctx.Err() == nil {
		slices.Sort(unknown)
		w.logf("txnwatch: no offsets for %s (retrying in %v)", strings.Join(unknown, ", "), w.interval)
	}
	if len(due) > 0 {
		w.reportStalls(ctx, due, lso, hwm, now)
	}
}

// errNotListed is the reason for a partition the brokers did not answer for.
var errNotListed = errors.New("not listed: does the partition exist?")

// observe records one poll's offsets of a partition and says whether the
// partition has been stalled longer than the bound and is not yet reported.
func (w *Watcher) observe(k tp, lso, hwm int64, now time.Time) bool {
	st := w.parts[k]
	if st == nil || st.lso != lso {
		st = &stall{lso: lso} // new, or the LSO moved: a new stall, if any
		w.parts[k] = st
	}
	if hwm <= lso {
		*st = stall{lso: lso} // caught up: nothing waits
		return false
	}
	if st.since.IsZero() {
		st.since = now
	}
	return !st.reported && now.Sub(st.since) > w.bound
}

// reportStalls finds the producers holding the due partitions and reports
// them. A partition whose producer is not found is retried at the next
// poll, up to lookupTries polls, then reported without it.
func (w *Watcher) reportStalls(ctx context.Context, due []tp, lso, hwm kadm.ListedOffsets, now time.Time) {
	slices.SortFunc(due, func(a, b tp) int {
		if c := strings.Compare(a.topic, b.topic); c != 0 {
			return c
		}
		return int(a.partition - b.partition)
	})
	set := kadm.TopicsSet{}
	for _, k := range due {
		set.Add(k.topic, k.partition)
	}
	described, err := w.adm.DescribeProducers(ctx, set)
	if err != nil && ctx.Err() == nil {
		w.logf("txnwatch: describe the producers of the stalled partitions: %v (retrying in %v)", err, w.interval)
	}
	reports := make([]Report, 0, len(due))
	var pids []int64
	for _, k := range due {
		st := w.parts[k]
		l, _ := lso.Lookup(k.topic, k.partition)
		h, _ := hwm.Lookup(k.topic, k.partition)
		r := Report{
			Topic: k.topic, Partition: k.partition,
			LastStableOffset: l.Offset, HighWatermark: h.Offset,
			StalledFor: now.Sub(st.since),
			ProducerID: -1, ProducerEpoch: -1, TxnStartOffset: -1,
			Brokers: w.brokers,
		}
		if p, ok := holder(described, k.topic, k.partition, l.Offset); ok {
			r.ProducerID, r.ProducerEpoch, r.TxnStartOffset = p.ProducerID, p.ProducerEpoch, p.CurrentTxnStartOffset
			pids = append(pids, p.ProducerID)
		} else if st.misses++; st.misses < lookupTries {
			continue
		}
		st.reported = true
		reports = append(reports, r)
	}
	if len(pids) > 0 {
		listed, err := w.adm.ListTransactions(ctx, pids, nil)
		if err != nil && ctx.Err() == nil {
			w.logf("txnwatch: list the transactions of producer IDs %v: %v (reporting without transactional IDs)", pids, err)
		}
		byPID := map[int64]string{}
		for _, t := range listed {
			byPID[t.ProducerID] = t.TxnID
		}
		for i := range reports {
			reports[i].TransactionalID = byPID[reports[i].ProducerID]
		}
	}
	for _, r := range reports {
		w.report(r)
	}
}

// holder returns the producer whose open transaction holds partition p of
// topic t at last stable offset lso: the one whose transaction began at
// lso, else the one with the oldest open transaction.
func holder(described kadm.DescribedProducersTopics, t string, p int32, lso int64) (kadm.DescribedProducer, bool) {
	dp, ok := described[t].Partitions[p]
	if !ok || dp.Err != nil {
		return kadm.DescribedProducer{}, false
	}
	var best kadm.DescribedProducer
	found := false
	for _, pr := range dp.ActiveProducers.Sorted() {
		switch {
		case pr.CurrentTxnStartOffset < 0:
		case pr.CurrentTxnStartOffset == lso:
			return pr, true
		case !found || pr.CurrentTxnStartOffset < best.CurrentTxnStartOffset:
			best, found = pr, true
		}
	}
	return best, found
}

// round rounds d for reading: to seconds, or milliseconds under a second.
func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}
