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
	failed                     // a *producer.DeliveryError: may or may not be there
	unconfirmed                // its transaction's outcome is unknown
)

// writer is one producer under test and what it was told about each record.
// Values are "<prefix>:<seq>:<attempt>": the sequence number identifies the
// record, the attempt the transaction that carried it (always 0 outside
// ExactlyOnce, which re-sends the records of an aborted transaction).
type writer struct {
	sem    kdeliver.Semantics
	prefix string
	topic  string

	epoch time.Time // when the scenario began

	mu      sync.Mutex
	state   []outcome
	sentAt  []time.Duration // since epoch, by sequence number
	txnTime time.Duration   // total time spent in Transact
	nAcked  int
	aborted map[[2]int]bool // (seq, attempt) of aborted transactions: never visible
	errs    map[string]int  // failures by message

	txns, abortedTxns, unconfirmedTxns, replaced int
}

func newWriter(sem kdeliver.Semantics, topic string, epoch time.Time) *writer {
	prefix := map[kdeliver.Semantics]string{kdeliver.AtMostOnce: "amo", kdeliver.AtLeastOnce: "alo", kdeliver.ExactlyOnce: "eos"}[sem]
	return &writer{sem: sem, prefix: prefix, topic: topic, epoch: epoch, aborted: map[[2]int]bool{}, errs: map[string]int{}}
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
			p.ProduceAsync(ctx, w.record(seq, 0), func(_ *kgo.Record, err error) {
				if err != nil {
					w.set([]int{seq}, failed, err)
				} else {
					w.set([]int{seq}, acked, nil)
				}
			})
		}
	}
}

// runTxn writes transactions of txnSize records until stop says so. An
// aborted transaction is run again with the same sequence numbers and the
// next attempt number; one whose outcome is unknown (ErrUnconfirmed, or the
// producer became unusable) is not re-sent, since that could duplicate, and
// the producer is replaced by a new one with the same transactional ID,
// which fences the old one and settles its transaction.
func (w *writer) runTxn(ctx context.Context, t *testing.T, newProducer func() (*producer.Producer, error), stop func(*writer) bool) {
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
			w.txnTime += time.Since(began)
			w.mu.Unlock()
			if err == nil {
				w.set(seqs, acked, nil)
				break
			}
			if errors.Is(err, producer.ErrAborted) {
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

func closeProducer(t *testing.T, p *producer.Producer) {
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

	lostWindows []string // when the lost records were sent
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
	var win lossWindows
	for seq, o := range w.state {
		n := seen[seq]
		tl.duplicated += max(0, n-1)
		switch o {
		case acked:
			tl.acked++
			if n == 0 {
				tl.lost++
				win.add(w.sentAt[seq])
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
	tl.lostWindows = win.list()
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

// producerDurability runs an AtLeastOnce, an ExactlyOnce and an AtMostOnce
// producer side by side on one topic of 3 partitions while the leader of
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
	began := time.Now()
	writers := []*writer{
		newWriter(kdeliver.AtLeastOnce, topic, began),
		newWriter(kdeliver.ExactlyOnce, topic, began),
		newWriter(kdeliver.AtMostOnce, topic, began),
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
				w.runTxn(ctx, t, func() (*producer.Producer, error) {
					return producer.New(c.Brokers(), w.sem, producer.WithTransactionalID(id), kdeliver.WithClientID(w.prefix))
				}, stop)
			})
		default:
			p, err := producer.New(c.Brokers(), w.sem, kdeliver.WithClientID(w.prefix))
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

	var faultErr error
	for i := range kills {
		faultErr = leaderBounce(ctx, t, c, topic, i+1, began, minAcked)
		if faultErr != nil {
			break
		}
	}
	faultsDone.Store(true)
	wg.Wait()
	elapsed := time.Since(began)
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
		t.Run(w.sem.String(), func(t *testing.T) {
			tl := w.audit(read)
			r := newResult(c, scenario, w.sem)
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
				if w.txns > 0 {
					r.set("mean_txn", (w.txnTime / time.Duration(w.txns)).Round(time.Millisecond))
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
				t.Logf("lost records by send time: %s", strings.Join(tl.lostWindows, "; "))
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
				return // losses are counted, not failures
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
	t.Logf("fault %d at %.1fs: SIGKILL node %d (leader of %s/0); node %d leads after %s; restarted after %s; in sync after %s",
		n, began.Sub(epoch).Seconds(), leader, topic, next, elected.Round(100*time.Millisecond), restarted.Round(100*time.Millisecond),
		time.Since(began).Round(100*time.Millisecond))
	return nil
}
