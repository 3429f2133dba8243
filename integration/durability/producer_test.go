package durability

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/producer"
)

const (
	minRecords = 30000 // each producer writes at least this many
	rate       = 1000  // records a second, per producer
	txnSize    = 500   // records per ExactlyOnce transaction (Kafka's transactions_test: 750)
	faultGap   = 2000  // records every producer gets acknowledged between faults
	txnRetries = 20    // attempts of an aborted transaction
)

// outcome is what a producer was told about a record.
type outcome uint8

const (
	pending     outcome = iota // no answer yet
	acked                      // acknowledged: must be readable
	failed                     // a *kdeliver.DeliveryError: may or may not be there
	unconfirmed                // its transaction's outcome is unknown
)

// writer is one producer under test and what it was told about each record.
// Values are "<prefix>:<seq>:<attempt>": the sequence number identifies the
// record, the attempt the transaction that carried it (always 0 outside
// ExactlyOnce, which re-sends the records of an aborted transaction).
type writer struct {
	sem    kdeliver.Semantics
	acks   string // "0", "1" or "all"
	opts   []producer.Option
	prefix string
	topic  string

	epoch time.Time // when the scenario began

	mu      sync.Mutex
	state   []outcome
	sentAt  []time.Duration // since epoch, by sequence number
	part    []int8          // partition by sequence number, -1 if not known
	txnTook []time.Duration // how long each Transact took
	nAcked  int
	aborted map[[2]int]bool // (seq, attempt) of aborted transactions: never visible
	errs    map[string]int  // failures by message

	txns, abortedTxns, unconfirmedTxns, replaced int
}

// newWriter returns a writer for sem; leaderAck adds producer.WithLeaderAck
// (AtMostOnce with acks=1 instead of acks=0).
func newWriter(sem kdeliver.Semantics, leaderAck bool, topic string, epoch time.Time) *writer {
	w := &writer{sem: sem, topic: topic, epoch: epoch, aborted: map[[2]int]bool{}, errs: map[string]int{}}
	switch sem {
	case kdeliver.AtMostOnce:
		w.prefix, w.acks = "amo0", "0"
		if leaderAck {
			w.prefix, w.acks = "amo1", "1"
			w.opts = append(w.opts, producer.WithLeaderAck())
		}
	case kdeliver.AtLeastOnce:
		w.prefix, w.acks = "alo", "all"
	case kdeliver.ExactlyOnce:
		w.prefix, w.acks = "eos", "all"
	}
	w.opts = append(w.opts, kdeliver.WithClientID(w.prefix))
	return w
}

// name names the writer's subtest.
func (w *writer) name() string {
	if w.acks == "1" {
		return w.sem.String() + "-leader-ack"
	}
	return w.sem.String()
}

// next reserves n sequence numbers.
func (w *writer) next(n int) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	seqs := make([]int, n)
	now := time.Since(w.epoch)
	for i := range seqs {
		seqs[i] = len(w.state)
		w.state = append(w.state, pending)
		w.sentAt = append(w.sentAt, now)
		w.part = append(w.part, -1)
	}
	return seqs
}

func (w *writer) record(seq, attempt int) *kgo.Record {
	return &kgo.Record{
		Topic: w.topic,
		Key:   []byte(strconv.Itoa(seq)),
		Value: fmt.Appendf(nil, "%s:%d:%d", w.prefix, seq, attempt),
	}
}

// done records the outcome of a record produced with ProduceAsync.
func (w *writer) done(seq int, r *kgo.Record, err error) {
	o := acked
	if err != nil {
		o = failed
	}
	w.set([]int{seq}, o, err)
	w.mu.Lock()
	w.part[seq] = int8(r.Partition)
	w.mu.Unlock()
}

func (w *writer) set(seqs []int, o outcome, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range seqs {
		if w.state[s] != acked && o == acked {
			w.nAcked++
		}
		w.state[s] = o
	}
	if err != nil {
		msg := err.Error()
		if len(msg) > 160 {
			msg = msg[:160] + "…"
		}
		w.errs[msg] += len(seqs)
	}
}

func (w *writer) counts() (sent, acked int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.state), w.nAcked
}

// pacer spaces work out to about rate items a second. After a stall it goes
// on at the rate instead of bursting to catch up.
type pacer struct {
	start time.Time
	n     int
}

func (p *pacer) wait(ctx context.Context, n int) error {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	due := p.start.Add(time.Duration(p.n) * time.Second / rate)
	p.n += n
	d := time.Until(due)
	if d < -time.Second {
		p.start, p.n = time.Now(), n
	}
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// runAsync writes batches of 10 records with ProduceAsync until stop says so.
func (w *writer) runAsync(ctx context.Context, p *producer.Producer, stop func(*writer) bool) {
	var pace pacer
	for !stop(w) && pace.wait(ctx, 10) == nil {
		for _, seq := range w.next(10) {
			p.ProduceAsync(ctx, w.record(seq, 0), func(r *kgo.Record, err error) { w.done(seq, r, err) })
		}
	}
}

// runTxn writes transactions of txnSize records until stop says so. An
// aborted transaction is run again with the same sequence numbers and the
// next attempt number; one whose outcome is unknown (ErrUnconfirmed, or the
// producer became unusable) is not re-sent, since that could duplicate, and
// the producer is replaced by a new one with the same transactional ID,
// which fences the old one and settles its transaction.
func (w *writer) runTxn(ctx context.Context, t *testing.T, newProducer func() (*producer.Transactional, error), stop func(*writer) bool) {
	p, err := newProducer()
	if err != nil {
		t.Error(err)
		return
	}
	defer func() { closeProducer(t, p) }()
	var pace pacer
	for !stop(w) && pace.wait(ctx, txnSize) == nil {
		seqs := w.next(txnSize)
		for attempt := 0; ; attempt++ {
			began := time.Now()
			err := p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
				for _, s := range seqs {
					tx.ProduceAsync(ctx, w.record(s, attempt), nil)
				}
				return nil
			})
			w.mu.Lock()
			w.txns++
			w.txnTook = append(w.txnTook, time.Since(began))
			w.mu.Unlock()
			if err == nil {
				w.set(seqs, acked, nil)
				break
			}
			if errors.Is(err, kdeliver.ErrAborted) {
				w.mu.Lock()
				w.abortedTxns++
				for _, s := range seqs {
					w.aborted[[2]int{s, attempt}] = true
				}
				w.mu.Unlock()
				w.set(seqs, failed, err)
				if attempt+1 < txnRetries && ctx.Err() == nil {
					continue
				}
				break
			}
			w.mu.Lock()
			w.unconfirmedTxns++
			w.replaced++
			w.mu.Unlock()
			w.set(seqs, unconfirmed, err)
			closeProducer(t, p)
			if p, err = newProducer(); err != nil {
				t.Error(err)
				return
			}
			break
		}
	}
}

func closeProducer(t *testing.T, p producer.Sender) {
	ctx, cancel := context.WithTimeout(context.Background(), kdeliver.DefaultDeliveryTimeout+30*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Errorf("close producer: %v", err)
	}
}

// tally is the audit of one writer against what was read back.
type tally struct {
	sent, acked, failed, unconfirmed, pending int

	lost        int // acknowledged, not read
	duplicated  int // extra copies of a sequence number
	failedSeen  int // failed or unconfirmed, yet read
	abortedRead int // read, though its transaction was aborted
	unexpected  int // read, never sent

	lostWindows []string      // when the lost records were sent
	longestLoss time.Duration // the longest window of them
}

// audit counts each sequence number of w among the values read.
func (w *writer) audit(read map[string][]int) tally {
	w.mu.Lock()
	defer w.mu.Unlock()
	var tl tally
	seen := make([]int, len(w.state))
	for _, v := range read[w.prefix] {
		seq, attempt := v>>8, v&0xff
		if seq >= len(w.state) {
			tl.unexpected++
			continue
		}
		seen[seq]++
		if w.aborted[[2]int{seq, attempt}] {
			tl.abortedRead++
		}
	}
	tl.sent = len(w.state)
	win := map[int8]*lossWindows{}
	for seq, o := range w.state {
		n := seen[seq]
		tl.duplicated += max(0, n-1)
		switch o {
		case acked:
			tl.acked++
			if n == 0 {
				tl.lost++
				p := w.part[seq]
				if win[p] == nil {
					win[p] = &lossWindows{}
				}
				win[p].add(w.sentAt[seq])
			}
		case failed, unconfirmed:
			if o == failed {
				tl.failed++
			} else {
				tl.unconfirmed++
			}
			if n > 0 {
				tl.failedSeen++
			}
		case pending:
			tl.pending++
		}
	}
	for _, p := range slices.Sorted(maps.Keys(win)) {
		tl.lostWindows = append(tl.lostWindows, fmt.Sprintf("partition %d: %s", p, strings.Join(win[p].list(), ", ")))
		for i := range win[p].n {
			tl.longestLoss = max(tl.longestLoss, win[p].to[i]-win[p].from[i])
		}
	}
	return tl
}

// lossWindows groups the send times of lost records into windows, for
// comparing them with the times of the faults.
type lossWindows struct {
	from, to []time.Duration
	n        []int
}

func (lw *lossWindows) add(at time.Duration) {
	if i := len(lw.to) - 1; i >= 0 && at-lw.to[i] < time.Second {
		lw.to[i] = max(lw.to[i], at)
		lw.n[i]++
		return
	}
	lw.from, lw.to, lw.n = append(lw.from, at), append(lw.to, at), append(lw.n, 1)
}

func (lw *lossWindows) list() []string {
	var out []string
	for i := range lw.n {
		out = append(out, fmt.Sprintf("%d sent %.1fs–%.1fs", lw.n[i], lw.from[i].Seconds(), lw.to[i].Seconds()))
	}
	return out
}

// readValues reads topic whole and groups the parsed values by writer
// prefix, each as seq<<8 | attempt. Values that do not parse are returned
// apart.
func readValues(ctx context.Context, c *integration.Cluster, topic string) (map[string][]int, []string, error) {
	if err := waitNoOpenTransaction(ctx, c, topic); err != nil {
		return nil, nil, err
	}
	recs, err := c.ReadCommitted(ctx, topic)
	if err != nil {
		return nil, nil, err
	}
	out := map[string][]int{}
	var bad []string
	for _, r := range recs {
		parts := strings.Split(string(r.Value), ":")
		var seq, attempt int
		if len(parts) == 3 {
			seq, err = strconv.Atoi(parts[1])
			if err == nil {
				attempt, err = strconv.Atoi(parts[2])
			}
		}
		if len(parts) != 3 || err != nil || attempt > 0xff {
			bad = append(bad, string(r.Value))
			continue
		}
		out[parts[0]] = append(out[parts[0]], seq<<8|attempt)
	}
	return out, bad, nil
}

// producerDurability runs an AtLeastOnce, an ExactlyOnce and two AtMostOnce
// producers (acks=0, the default, and acks=1 with producer.WithLeaderAck)
// side by side on one topic of 3 partitions while the leader of
// partition 0 is SIGKILLed and restarted kills times, then reads the topic
// back and audits each producer.
func producerDurability(t *testing.T, c *integration.Cluster, kills int) {
	ctx := timeout(t, 7*time.Minute)
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	topic := topicName(t)
	if err := c.CreateTopic(ctx, topic, 3); err != nil {
		t.Fatal(err)
	}
	warmUp(ctx, t, c, topic, 3)
	began := time.Now()
	writers := []*writer{
		newWriter(kdeliver.AtLeastOnce, false, topic, began),
		newWriter(kdeliver.ExactlyOnce, false, topic, began),
		newWriter(kdeliver.AtMostOnce, false, topic, began),
		newWriter(kdeliver.AtMostOnce, true, topic, began),
	}
	var faultsDone atomic.Bool
	faultsDone.Store(kills == 0)
	stop := func(w *writer) bool {
		sent, _ := w.counts()
		return sent >= minRecords && faultsDone.Load()
	}
	// minAcked is the progress that every producer has made.
	minAcked := func() int {
		m := -1
		for _, w := range writers {
			if _, a := w.counts(); m < 0 || a < m {
				m = a
			}
		}
		return m
	}

	var wg sync.WaitGroup
	for _, w := range writers {
		switch w.sem {
		case kdeliver.ExactlyOnce:
			id := topic + "-txn"
			wg.Go(func() {
				w.runTxn(ctx, t, func() (*producer.Transactional, error) {
					return producer.NewTransactional(c.Brokers(), id, w.opts...)
				}, stop)
			})
		default:
			p, err := producer.New(c.Brokers(), w.sem, w.opts...)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				w.runAsync(ctx, p, stop)
				fctx, cancel := context.WithTimeout(context.Background(), kdeliver.DefaultDeliveryTimeout+30*time.Second)
				defer cancel()
				if err := p.Flush(fctx); err != nil {
					t.Errorf("%s: flush: %v", w.sem, err)
				}
				closeProducer(t, p)
			})
		}
	}

	stopWatch := func() {}
	if kills > 0 {
		stopWatch = watchLeaders(ctx, t, c, topic, began)
	}
	var faultErr error
	for i := range kills {
		faultErr = leaderBounce(ctx, t, c, topic, i+1, began, minAcked)
		if faultErr != nil {
			break
		}
	}
	faultsDone.Store(true)
	wg.Wait()
	stopWatch()
	elapsed := time.Since(began)
	t.Logf("producers done after %.1fs; leaders %s", elapsed.Seconds(), leaders(ctx, c, topic))
	if faultErr != nil {
		t.Fatalf("fault injection: %v", faultErr)
	}
	if ctx.Err() != nil {
		t.Fatalf("the producers did not finish in time: %v", ctx.Err())
	}

	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	read, bad, err := readValues(ctx, c, topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("%d values that no writer wrote, e.g. %q", len(bad), bad[:min(5, len(bad))])
	}
	scenario := "producer-leader-kills"
	if kills == 0 {
		scenario = "producer-no-faults"
	}
	for _, w := range writers {
		t.Run(w.name(), func(t *testing.T) {
			tl := w.audit(read)
			r := newResult(c, scenario, w.sem)
			r.set("acks", w.acks)
			r.set("records", tl.sent)
			r.set("acked", tl.acked)
			r.set("failed", tl.failed)
			r.set("unconfirmed", tl.unconfirmed)
			r.set("lost", tl.lost)
			r.set("duplicated", tl.duplicated)
			r.set("failed_but_read", tl.failedSeen)
			if w.sem == kdeliver.ExactlyOnce {
				w.mu.Lock()
				r.set("txns", w.txns)
				r.set("aborted_txns", w.abortedTxns)
				r.set("replaced_producers", w.replaced)
				if len(w.txnTook) > 0 {
					took := slices.Sorted(slices.Values(w.txnTook))
					r.set("txn_p50", took[len(took)/2].Round(time.Millisecond).String())
					r.set("txn_max", took[len(took)-1].Round(time.Millisecond).String())
				}
				w.mu.Unlock()
				r.set("aborted_read", tl.abortedRead)
			}
			r.set("faults", kills)
			r.set("seconds", elapsed)
			r.set("rate", fmt.Sprintf("%.0f/s", float64(tl.sent)/elapsed.Seconds()))
			t.Log(r)
			w.mu.Lock()
			for _, msg := range slices.Sorted(maps.Keys(w.errs)) {
				t.Logf("%d records: %s", w.errs[msg], msg)
			}
			w.mu.Unlock()
			if len(tl.lostWindows) > 0 {
				t.Logf("lost records by partition and send time: %s", strings.Join(tl.lostWindows, "; "))
			}

			if tl.sent < minRecords {
				t.Errorf("wrote %d records, want at least %d", tl.sent, minRecords)
			}
			if tl.pending > 0 {
				t.Errorf("%d records never got an outcome", tl.pending)
			}
			if tl.unexpected > 0 {
				t.Errorf("%d records read that were never written", tl.unexpected)
			}
			if tl.duplicated > 0 {
				t.Errorf("%d duplicates: %s must never write a record twice", tl.duplicated, w.sem)
			}
			if w.sem == kdeliver.AtMostOnce {
				// Losses are counted, not failures, but they must stay
				// around the faults: losses for longer than two of the
				// preset's metadata refreshes (one may be answered by
				// the node that just came back, its metadata lagging)
				// mean the producer kept writing to a node that no
				// longer leads.
				if limit := 2*preset.AtMostOnceMetadataMaxAge + 2*time.Second; tl.longestLoss > limit {
					t.Errorf("records were lost for %s in a row, longer than two metadata refreshes (%s each): stale leader",
						tl.longestLoss.Round(100*time.Millisecond), preset.AtMostOnceMetadataMaxAge)
				}
				return
			}
			if tl.lost > 0 {
				t.Errorf("%d acknowledged records lost: %s must keep every acknowledged record", tl.lost, w.sem)
			}
			if tl.abortedRead > 0 {
				t.Errorf("%d records of aborted transactions were read with read_committed", tl.abortedRead)
			}
		})
	}
}

// leaderBounce is one hard bounce of Kafka's replication_test: once every
// producer has had faultGap more records acknowledged, it SIGKILLs the
// leader of partition 0, waits for the controller to elect another, restarts
// the killed node and waits until every replica is back in sync.
func leaderBounce(ctx context.Context, t *testing.T, c *integration.Cluster, topic string, n int, epoch time.Time, progress func() int) error {
	base := progress()
	err := waitFor(ctx, "producers to make progress", 50*time.Millisecond, func() (bool, string, error) {
		p := progress()
		return p >= base+faultGap, fmt.Sprintf("%d of %d acknowledged", p-base, faultGap), nil
	})
	if err != nil {
		return err
	}
	leader, err := c.Leader(ctx, topic, 0)
	if err != nil {
		return err
	}
	began := time.Now()
	if err := c.Kill(leader); err != nil {
		return err
	}
	next, err := c.WaitNewLeader(ctx, topic, 0, leader)
	if err != nil {
		return err
	}
	elected := time.Since(began)
	if err := c.Restart(ctx, leader); err != nil {
		return err
	}
	restarted := time.Since(began)
	if err := c.WaitInSync(ctx); err != nil {
		return err
	}
	t.Logf("fault %d at %.1fs: SIGKILL node %d (leader of %s/0); node %d leads after %s; restarted after %s; in sync after %s; leaders %s",
		n, began.Sub(epoch).Seconds(), leader, topic, next, elected.Round(100*time.Millisecond), restarted.Round(100*time.Millisecond),
		time.Since(began).Round(100*time.Millisecond), leaders(ctx, c, topic))
	return nil
}

// warmUp writes one record with acks=all to each partition, so that the
// measurement starts once every leader accepts writes. Without it an
// AtMostOnce producer (acks=0, which hears of no error) loses the records
// it sends while a new topic's leaders are still loading it.
func warmUp(ctx context.Context, t *testing.T, c *integration.Cluster, topic string, partitions int) {
	t.Helper()
	cl := c.Client(t, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	for p := range partitions {
		rec := &kgo.Record{Topic: topic, Partition: int32(p), Value: fmt.Appendf(nil, "warm:%d:0", p)}
		if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
			t.Fatalf("warm up %s/%d: %v", topic, p, err)
		}
	}
}

// leaders describes which node leads each partition of topic, e.g.
// "p0=1 p1=2 p2=3".
func leaders(ctx context.Context, c *integration.Cluster, topic string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := c.Admin().Metadata(ctx, topic)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range m.Topics[topic].Partitions.Sorted() {
		out = append(out, fmt.Sprintf("p%d=%d", p.Partition, p.Leader))
	}
	return strings.Join(out, " ")
}

// watchLeaders logs every change of topic's partition leaders, with the
// time since epoch, until the returned function is called.
func watchLeaders(ctx context.Context, t *testing.T, c *integration.Cluster, topic string, epoch time.Time) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := ""
		for ctx.Err() == nil {
			if now := leaders(ctx, c, topic); now != last && ctx.Err() == nil {
				t.Logf("at %.1fs leaders %s", time.Since(epoch).Seconds(), now)
				last = now
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); <-done }
}
