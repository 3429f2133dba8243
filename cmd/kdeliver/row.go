package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/cmd/kdeliver/internal/copier"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/producer"
)

// Tuning of the demo's clients. Produce goes in chunks so that the brokers
// see many requests (and the fault plan has requests to pick from).
// quiet keeps the library's warnings off the demo's stderr, which carries
// only the progress line: the crashes and faults the demo causes on purpose
// would otherwise be logged as they happen. What they did is in the table.
var quiet = kdeliver.WithLogger(slog.New(slog.DiscardHandler))

const (
	chunks        = 20
	maxPoll       = 200
	metadataAge   = 100 * time.Millisecond
	maxTxnRetries = 5
)

// tally counts, per sequence number, what was acknowledged and handled.
type tally struct {
	n            int
	acked        []atomic.Bool
	handled      []atomic.Int32
	sent         atomic.Int64
	ackedN       atomic.Int64
	calls        atomic.Int64 // handler calls, including the one that crashed
	distinct     atomic.Int64 // numbers handled at least once
	crashes      atomic.Int64
	aborted      atomic.Int64
	lastProgress atomic.Int64 // unix nanos of the last delivery
	produceDone  atomic.Int64 // unix nanos when producing ended, 0 before
	crashAt      map[int64]bool
}

func newTally(n int) *tally {
	return &tally{n: n, acked: make([]atomic.Bool, n), handled: make([]atomic.Int32, n)}
}

func (t *tally) ack(seq int) {
	if !t.acked[seq].Swap(true) {
		t.ackedN.Add(1)
	}
}

// deliver records one effect of seq.
func (t *tally) deliver(seq int) {
	if t.handled[seq].Add(1) == 1 {
		t.distinct.Add(1)
	}
	t.lastProgress.Store(time.Now().UnixNano())
}

// call counts a handler call and reports whether the consumer must crash now.
func (t *tally) call() (crashNow bool) {
	return t.crashAt[t.calls.Add(1)]
}

// complete reports whether every acknowledged number was delivered.
func (t *tally) complete() bool {
	for i := range t.acked {
		if t.acked[i].Load() && t.handled[i].Load() == 0 {
			return false
		}
	}
	return true
}

func parseSeq(rec *kgo.Record, n int) (int, error) {
	seq, err := strconv.Atoi(string(rec.Value))
	if err != nil || seq < 0 || seq >= n {
		return 0, fmt.Errorf("record %s/%d@%d is not a demo record (value %q)", rec.Topic, rec.Partition, rec.Offset, rec.Value)
	}
	return seq, nil
}

// runRow runs one semantics within --timeout. If the timeout ends it, the
// error is a *timeoutError saying what was in progress.
func (e *demoEnv) runRow(ctx context.Context, sem kdeliver.Semantics, rng *rand.Rand, prog *progress) (Row, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.timeout)
	defer cancel()
	var st rowState
	row, err := e.row(ctx, sem, rng, prog, &st)
	if err != nil && ctx.Err() != nil {
		// Whatever failed, it failed because the time was up: the
		// error's chain of "context deadline exceeded" says no more.
		return Row{}, &timeoutError{doing: st.doing(err), timeout: e.cfg.timeout}
	}
	return row, err
}

// rowState is how far a row got, for the error when it times out.
type rowState struct {
	phase string // what the row is doing
	t     *tally // nil until producing
}

// doing says what was in progress when err ended the row.
func (s *rowState) doing(err error) string {
	var nw *notWritableError
	switch {
	case errors.As(err, &nw):
		return fmt.Sprintf("waiting for topic %s to take writes (%s)", nw.topic, nw.detail())
	case s.t != nil:
		return fmt.Sprintf("%s (%d of %d records sent, %d acknowledged, %d delivered)", s.phase, s.t.sent.Load(), s.t.n, s.t.ackedN.Load(), s.t.distinct.Load())
	}
	return s.phase
}

// timeoutError is a row that --timeout ended.
type timeoutError struct {
	doing   string
	timeout time.Duration
}

func (e *timeoutError) Error() string {
	return fmt.Sprintf("timed out while %s; raise --timeout (now %v)", e.doing, e.timeout)
}

func (e *timeoutError) Unwrap() error { return context.DeadlineExceeded }

func (e *demoEnv) row(ctx context.Context, sem kdeliver.Semantics, rng *rand.Rand, prog *progress, st *rowState) (Row, error) {
	n := e.cfg.records
	topic := fmt.Sprintf("kdeliver-demo-%s-%s", sem, e.runID)
	topics := []string{topic}
	if sem == kdeliver.ExactlyOnce {
		topics = append(topics, topic+"-out") // the pipeline's output
	}
	for _, tp := range topics {
		st.phase = "creating topic " + tp
		if err := e.createTopic(ctx, tp); err != nil {
			return Row{}, err
		}
		defer e.deleteTopic(context.WithoutCancel(ctx), tp)
	}

	t := newTally(n)
	st.phase, st.t = "producing", t
	t.crashAt = crashPlan(rng, n, e.cfg.crashes)
	faults := e.injectFaults(sem, topic, rng)
	defer faults.remove()

	prog.start(sem, t, faults)
	defer prog.stop()

	start := time.Now()
	t.lastProgress.Store(start.UnixNano())
	consumeCtx, stopConsume := context.WithCancel(ctx)
	defer stopConsume()
	consumed := make(chan error, 1)
	go func() {
		if sem == kdeliver.ExactlyOnce {
			consumed <- e.pipeline(consumeCtx, topic, t)
		} else {
			consumed <- e.consume(consumeCtx, sem, topic, t)
		}
	}()

	var err error
	if sem == kdeliver.ExactlyOnce {
		err = e.produceTransactional(ctx, topic, t, rng)
	} else {
		err = e.produce(ctx, sem, topic, t)
	}
	t.produceDone.Store(time.Now().UnixNano())
	if err != nil {
		stopConsume()
		<-consumed
		return Row{}, err
	}

	// Wait until everything acknowledged was delivered, or nothing more
	// arrives (what is missing then is lost).
	st.phase = "waiting for delivery"
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-consumed:
			if err != nil {
				return Row{}, err
			}
			return Row{}, errors.New("the consumer stopped before delivery ended")
		case <-ctx.Done():
			stopConsume()
			<-consumed
			return Row{}, ctx.Err()
		case <-tick.C:
			last := max(t.lastProgress.Load(), t.produceDone.Load())
			if t.complete() || time.Since(time.Unix(0, last)) > e.idle {
				break wait
			}
		}
	}
	stopConsume()
	if err := <-consumed; err != nil {
		return Row{}, err
	}
	// Delivery is over, so the brokers have long read what was sent.
	var inLog *int
	if sem != kdeliver.ExactlyOnce {
		st.phase, st.t = "counting the records in topic "+topic, nil
		n, err := recordsInLog(ctx, e.admin, topic, e.cfg.partitions)
		if err != nil {
			return Row{}, err
		}
		inLog = new(int(n))
	}

	row := Row{InLog: inLog, RefusedByFaults: faults.refusedRecords(), Semantics: sem, Produced: n, Acknowledged: int(t.ackedN.Load()), Handled: t.calls.Load(),
		FaultsInjected: faults.count(), ConsumerCrashes: int(t.crashes.Load()), AbortedTxns: int(t.aborted.Load())}
	for i := range t.handled {
		switch h := t.handled[i].Load(); {
		case h == 1:
			row.DeliveredOnce++
		case h > 1:
			row.Duplicated++
		case t.acked[i].Load():
			row.Lost++
		}
	}
	elapsed := time.Unix(0, t.lastProgress.Load()).Sub(start)
	row.Seconds = time.Since(start).Seconds()
	if elapsed > 0 {
		row.RecordsPerSec = float64(t.distinct.Load()) / elapsed.Seconds()
	}
	if inLog != nil {
		missing := max(row.Acknowledged-*inLog, 0)
		row.LostByBroker = max(missing-row.RefusedByFaults, 0)
		row.LostByConsumer = max(row.Lost-missing, 0)
	}
	row.Guarantee, row.GuaranteeHeld, row.ShowedExpectedRisk = guarantee(sem, row)
	row.Note = note(row, e.kfake != nil)
	return row, nil
}

func note(r Row, faults bool) string {
	var parts []string
	add := func(format string, args ...any) { parts = append(parts, fmt.Sprintf(format, args...)) }
	switch r.Semantics {
	case kdeliver.AtMostOnce:
		if faults {
			add("%d produce requests refused unwritten on purpose (%d records; nothing tells an acks=0 producer)", r.FaultsInjected, r.RefusedByFaults)
		}
		if r.LostByBroker > 0 {
			add("%d acknowledged records never reached the log (acks=0: the broker answers an error, e.g. NOT_LEADER_OR_FOLLOWER, by closing the connection, and nothing tells the producer)", r.LostByBroker)
		} else if r.InLog != nil && !faults {
			add("every acknowledged record reached the log")
		}
		if r.ConsumerCrashes > 0 {
			add("%d consumer crashes lost %d records from the log (each loses the rest of its committed batch)", r.ConsumerCrashes, r.LostByConsumer)
		} else if r.LostByConsumer > 0 {
			add("%d records in the log were never delivered", r.LostByConsumer)
		}
		if !r.ShowedExpectedRisk {
			add("no loss this time")
		}
	case kdeliver.AtLeastOnce:
		if faults {
			add("%d acknowledgements lost (idempotent retries: no duplicate written)", r.FaultsInjected)
		}
		if r.InLog != nil && *r.InLog != r.Produced {
			add("the log holds %d records for %d produced", *r.InLog, r.Produced)
		}
		if r.LostByBroker > 0 {
			add("%d acknowledged records are not in the log", r.LostByBroker)
		}
		if r.ConsumerCrashes > 0 {
			add("%d consumer crashes (each repeats the records handled since the last commit)", r.ConsumerCrashes)
		}
		if !r.ShowedExpectedRisk {
			add("no duplicate this time")
		}
	default:
		if faults {
			add("%d acknowledgements lost", r.FaultsInjected)
		}
		add("%d producer transactions aborted on purpose and retried (their records are in the log, unseen by read_committed)", r.AbortedTxns)
		if r.ConsumerCrashes > 0 {
			add("%d eos.Session crashes mid-transaction (the restarted instance fences and aborts the open transaction)", r.ConsumerCrashes)
		}
	}
	if !faults {
		add("no faults injected (a real cluster)")
	}
	return strings.Join(parts, "; ")
}

// crashPlan picks the handler calls at which the consumer crashes: spread
// over the run, each at a random point of a batch.
func crashPlan(rng *rand.Rand, n, crashes int) map[int64]bool {
	plan := make(map[int64]bool, crashes)
	for k := 1; k <= crashes; k++ {
		at := int64(n*k/(crashes+1)) + rng.Int64N(int64(n/(4*(crashes+1))+1))
		plan[at] = true
	}
	return plan
}

func record(topic string, seq int) *kgo.Record {
	v := strconv.Itoa(seq)
	return &kgo.Record{Topic: topic, Key: []byte(v), Value: []byte(v)}
}

// produce sends the numbered records through an AtMostOnce or AtLeastOnce
// producer, chunk by chunk.
func (e *demoEnv) produce(ctx context.Context, sem kdeliver.Semantics, topic string, t *tally) error {
	p, err := producer.New(e.brokers, sem, copier.With[producer.Option](e.cfg.conn.opts, quiet, producer.WithKgoOpts(kgo.MetadataMinAge(metadataAge)))...)
	if err != nil {
		return err
	}
	defer p.Close(context.WithoutCancel(ctx))
	var failed atomic.Int64
	var firstErr atomic.Value
	per := (t.n + chunks - 1) / chunks
	for lo := 0; lo < t.n; lo += per {
		for seq := lo; seq < min(lo+per, t.n); seq++ {
			p.ProduceAsync(ctx, record(topic, seq), func(_ *kgo.Record, err error) {
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				t.ack(seq)
			})
			t.sent.Add(1)
		}
		if err := p.Flush(ctx); err != nil {
			return err
		}
	}
	if f := failed.Load(); f == int64(t.n) {
		return fmt.Errorf("every produce failed: %v", firstErr.Load())
	}
	return nil
}

var errPlannedAbort = errors.New("transaction aborted on purpose by the demo")

// produceTransactional sends the numbered records in one transaction per
// chunk through an ExactlyOnce producer, aborting a few transactions on
// purpose after their records were written, and retrying them.
func (e *demoEnv) produceTransactional(ctx context.Context, topic string, t *tally, rng *rand.Rand) error {
	p, err := producer.NewTransactional(e.brokers, "kdeliver-demo-"+e.runID, copier.With[producer.Option](e.cfg.conn.opts, quiet,
		producer.WithKgoOpts(kgo.MetadataMinAge(metadataAge)))...)
	if err != nil {
		return err
	}
	defer p.Close(context.WithoutCancel(ctx))
	per := (t.n + chunks - 1) / chunks
	aborts := map[int]bool{rng.IntN(chunks / 2): true, chunks/2 + rng.IntN(chunks/2): true}
	for c, lo := 0, 0; lo < t.n; c, lo = c+1, lo+per {
		hi := min(lo+per, t.n)
		for attempt := 0; ; attempt++ {
			abort := aborts[c] && attempt == 0
			err := p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
				var wg sync.WaitGroup
				for seq := lo; seq < hi; seq++ {
					wg.Add(1)
					tx.ProduceAsync(ctx, record(topic, seq), func(*kgo.Record, error) { wg.Done() })
				}
				wg.Wait() // the records are written: an abort must hide them
				if attempt == 0 {
					t.sent.Add(int64(hi - lo))
				}
				if abort {
					return errPlannedAbort
				}
				return nil
			})
			if err == nil {
				for seq := lo; seq < hi; seq++ {
					t.ack(seq)
				}
				break
			}
			if !errors.Is(err, kdeliver.ErrAborted) || attempt == maxTxnRetries {
				return err
			}
			t.aborted.Add(1)
		}
	}
	return nil
}

// consume reads the topic through a kdeliver consumer, crashing it where the
// plan says and starting a new one, until ctx ends.
func (e *demoEnv) consume(ctx context.Context, sem kdeliver.Semantics, topic string, t *tally) error {
	group := fmt.Sprintf("kdeliver-demo-%s-%s", sem, e.runID)
	handler := func(_ context.Context, rec *kgo.Record) error {
		seq, err := parseSeq(rec, t.n)
		if err != nil {
			return err
		}
		crashNow := t.call()
		t.deliver(seq)
		if crashNow {
			// The process dies right after the record's effect.
			return crash.ErrCrash
		}
		return nil
	}
	for {
		c, err := consumer.New(e.brokers, group, []string{topic}, sem, copier.With[consumer.Option](e.cfg.conn.opts, quiet,
			consumer.WithMaxPollRecords(maxPoll),
			consumer.WithKgoOpts(kgo.MetadataMinAge(metadataAge)))...)
		if err != nil {
			return err
		}
		err = c.Run(ctx, handler)
		_ = c.Close(context.WithoutCancel(ctx))
		switch {
		case errors.Is(err, crash.ErrCrash):
			t.crashes.Add(1)
			continue
		case err != nil:
			return err
		}
		return nil
	}
}

// pipeline copies the input topic to topic+"-out" through an eos.Session
// (input offsets committed in the output's transaction), crashing the
// session where the plan says (no End, no commit: the transaction is left
// open) and starting a new one with the same transactional ID, which fences
// and aborts what the crashed one left. A read_committed reader of the
// output delivers what the pipeline committed.
func (e *demoEnv) pipeline(ctx context.Context, topic string, t *tally) error {
	out := topic + "-out" // created by row
	reader, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(out),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.MetadataMinAge(metadataAge)}, e.cfg.conn.kgo...)...)
	if err != nil {
		return err
	}
	defer reader.Close()
	read := make(chan error, 1)
	go func() { read <- readOutput(ctx, reader, t) }()

	group := "kdeliver-demo-exactly-once-" + e.runID
	handler := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if _, err := parseSeq(in, t.n); err != nil {
			return err
		}
		crashNow := t.call()
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		if crashNow {
			return crash.ErrCrash
		}
		return nil
	}
	var runErr error
	for ctx.Err() == nil {
		s, err := eos.New(e.brokers, group, []string{topic}, "kdeliver-demo-pipeline-"+e.runID, copier.With[eos.Option](e.cfg.conn.opts, quiet,
			eos.WithOutputTopic(out),
			eos.WithCommitEvery(maxPoll, 250*time.Millisecond),
			eos.WithTransactionTimeout(time.Second),
			eos.WithSessionTimeout(e.sessionTimeout()),
			kdeliver.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
			eos.WithKgoOpts(kgo.MetadataMinAge(metadataAge), kgo.HeartbeatInterval(100*time.Millisecond)))...)
		if err != nil {
			runErr = err
			break
		}
		err = s.Run(ctx, handler)
		_ = s.Close(context.WithoutCancel(ctx))
		if !errors.Is(err, crash.ErrCrash) {
			runErr = err
			break
		}
		t.crashes.Add(1)
	}
	if rerr := <-read; runErr == nil {
		runErr = rerr
	}
	return runErr
}

// sessionTimeout is the eos session timeout: a crashed member holds its
// partitions this long. kfake accepts a short one.
func (e *demoEnv) sessionTimeout() time.Duration {
	if e.kfake != nil {
		return 2 * time.Second
	}
	return 10 * time.Second
}

// readOutput delivers what read_committed readers of the output see.
func readOutput(ctx context.Context, cl *kgo.Client, t *tally) error {
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		for _, rec := range fs.Records() {
			seq, err := parseSeq(rec, t.n)
			if err != nil {
				return err
			}
			t.deliver(seq)
		}
	}
}

// faultPlan loses produce acknowledgements (or, for acks=0, whole produce
// requests) of one topic now and then, at request numbers drawn from a
// seeded generator. It runs on the kfake cluster goroutine.
type faultPlan struct {
	topic   string
	topicID [16]byte // produce requests from v13 name the topic by ID
	handle  *kfake.FaultHandle
	mu      sync.Mutex
	last    kmsg.Request
	n       int // produce requests to the topic seen
	next    int // the next one to fail
	cur     bool
	hits    int
	refused int // records in the requests faulted: refused unwritten under acks=0
	max     int
	gap     func() int
}

func (f *faultPlan) when(req kmsg.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req != f.last { // When runs once per partition of a request
		f.last = req
		f.n++
		f.cur = f.n == f.next && f.hits < f.max
		if f.n >= f.next {
			f.next = f.n + f.gap()
		}
		if f.cur {
			f.hits++
			f.refused += recordsOf(req, f.topic, f.topicID)
		}
	}
	return f.cur
}

func (f *faultPlan) count() int {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// refusedRecords is how many records the faulted requests carried.
func (f *faultPlan) refusedRecords() int {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refused
}

// recordsOf counts the records for the topic in a produce request.
func recordsOf(req kmsg.Request, topic string, id [16]byte) int {
	pr, ok := req.(*kmsg.ProduceRequest)
	if !ok {
		return 0
	}
	n := 0
	for _, rt := range pr.Topics {
		if rt.Topic != topic && rt.TopicID != id {
			continue
		}
		for _, rp := range rt.Partitions {
			for b := rp.Records; len(b) > 0; {
				var batch kmsg.RecordBatch
				if batch.ReadFrom(b) != nil {
					break
				}
				n += int(batch.NumRecords)
				b = b[min(12+int(batch.Length), len(b)):]
			}
		}
	}
	return n
}

func (f *faultPlan) remove() {
	if f != nil && f.handle != nil {
		f.handle.Remove()
	}
}

// injectFaults installs the fault plan for topic; nil on a real cluster.
//
// AtLeastOnce and ExactlyOnce get REQUEST_TIMED_OUT, which kfake answers
// after writing the batch: a lost acknowledgement, which the idempotent
// producer retries and the broker deduplicates. AtMostOnce (acks=0) gets no
// answer to lose, so its requests are refused unwritten
// (NOT_LEADER_FOR_PARTITION) and, with nobody told, the records are lost.
func (e *demoEnv) injectFaults(sem kdeliver.Semantics, topic string, rng *rand.Rand) *faultPlan {
	if e.kfake == nil {
		return nil
	}
	var mu sync.Mutex
	// A refused acks=0 request loses all its records, so at-most-once
	// gets fewer faults than the lost acknowledgements the others ride out.
	maxFaults := 8
	if sem == kdeliver.AtMostOnce {
		maxFaults = 3
	}
	f := &faultPlan{topic: topic, max: maxFaults, gap: func() int {
		mu.Lock()
		defer mu.Unlock()
		return 4 + rng.IntN(7)
	}}
	f.next = f.gap()
	if ti := e.kfake.TopicInfo(topic); ti != nil {
		f.topicID = ti.TopicID
	}
	code := kerr.RequestTimedOut
	if sem == kdeliver.AtMostOnce {
		code = kerr.NotLeaderForPartition
	}
	f.handle = e.kfake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: code, Count: -1, When: f.when})
	return f
}
