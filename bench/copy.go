package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/shared"
	"github.com/kdeliver/kdeliver/producer"
)

// txnInterval is how long each exactly-once copy transaction stays open.
const txnInterval = 100 * time.Millisecond

func copySection(ctx context.Context, e *env) (section, error) {
	in := e.name("bench-copy-in")
	if err := seed(ctx, e, in, e.cfg.copyRecords); err != nil {
		return section{}, err
	}
	var outs []string
	copyTo := func(run func(ctx context.Context, e *env, in, out, group string, n int) (result, error)) func(ctx context.Context, e *env, n int) (result, error) {
		return func(ctx context.Context, e *env, n int) (result, error) {
			out := e.name("bench-copy-out")
			if err := e.c.CreateTopic(ctx, out, partitions); err != nil {
				return result{}, fmt.Errorf("create topic %s: %w", out, err)
			}
			outs = append(outs, out)
			if err := waitTopic(ctx, e, out); err != nil { // else kgo backs off ~5 s on its first produce
				return result{}, err
			}
			return run(ctx, e, in, out, e.name("bench-copy-group"), n)
		}
	}
	var rawRate atomic.Int64 // records/s of the last raw turn, for Java's transaction size
	sides := []side{
		{name: "raw kgo GroupTransactSession", run: copyTo(func(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
			r, err := rawKgoCopy(ctx, e, in, out, group, n)
			if err == nil {
				rawRate.Store(int64(rate(r)))
			}
			return r, err
		}), note: "Begin, poll and produce until 100 ms passed, Flush, End(TryCommit); read_committed (kgo always requires stable offsets)"},
		{name: "kdeliver eos", base: "raw kgo GroupTransactSession", also: []string{"kdeliver at-least-once copy", "kdeliver at-least-once copy cut at 100 ms"}, run: copyTo(kdeliverCopy),
			note: "eos.New with WithCommitEvery(1,000,000 records, 100 ms); measured to the Stats().Records that reach n"},
		{name: "raw kgo two clients", base: "raw kgo GroupTransactSession", also: []string{"kdeliver at-least-once copy"}, run: copyTo(rawTwoClientCopy),
			note: "a read_committed consumer client (BlockRebalanceOnPoll) and a transactional producer client that sends the consumer's offsets, member ID and generation in a TxnOffsetCommit, as Java's and librdkafka's clients do; otherwise the raw GroupTransactSession loop"},
		{name: "raw kgo one client own End", base: "raw kgo GroupTransactSession", also: []string{"kdeliver at-least-once copy"}, run: copyTo(rawOneClientCopy),
			note: "the two-client loop with one client that is group member and transactional producer, as a GroupTransactSession's is, ending each transaction with its own TxnOffsetCommit and EndTransaction instead of GroupTransactSession.End (no forced heartbeat)"},
		{name: "raw kgo one client own End overlapped", base: "raw kgo one client own End", also: []string{"kdeliver at-least-once copy"}, run: copyTo(rawOverlapCopy),
			note: "the one-client loop with each transaction's end overlapped: after the flush, TxnOffsetCommit and EndTransaction run on a goroutine while the loop polls on, holding up to 20,000 records for the next transaction"},
		{name: "raw kgo GroupTransactSession flush overlapped", base: "raw kgo GroupTransactSession", also: []string{"kdeliver at-least-once copy"}, run: copyTo(rawGTSOverlapCopy),
			note: "the raw GroupTransactSession loop with each transaction's flush overlapped: it takes the polled offsets, flushes on a goroutine while it polls on, holding up to 20,000 records for the next transaction, and End commits the offsets taken (PreTxnCommitFnContext)"},
		{name: "kdeliver at-least-once copy", base: "raw kgo GroupTransactSession", run: copyTo(aloCopy),
			note: "not exactly-once: the at-least-once loop eos is compared with (issue 13: eos ≥ 0.95× it): a consumer client with kdeliver's AtLeastOnce consumer preset and producer.New(AtLeastOnce); poll and ProduceAsync until 100 ms passed since the window's first record, Flush, then commit what was polled (a crash repeats output, never loses it)"},
		{name: "kdeliver at-least-once copy cut at 100 ms", base: "raw kgo GroupTransactSession", run: copyTo(aloCutCopy),
			note: "the at-least-once copy with its windows cut at 100 ms, as eos cuts its transactions: each copy is timed, the records polled after the window's end are held for the next window, and a window commits the offsets it copied (CommitRecords); the plain copy checks the time between polls only, and its last poll's copies run on past 100 ms"},
		{name: "confluent-kafka-go", base: "raw kgo GroupTransactSession", run: copyTo(confluentCopy),
			note: "transactional producer + read_committed consumer: BeginTransaction, Poll and Produce until 100 ms passed, SendOffsetsToTransaction(Position, group metadata), CommitTransaction"},
		{name: "Java TransactionalMessageCopier", base: "raw kgo GroupTransactSession", run: copyTo(func(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
			return javaCopy(ctx, e, in, out, group, n, int(rawRate.Load()))
		}), note: "--group-mode --use-group-metadata, --transaction-size = the raw kgo turn's records/s × 0.1 s (it counts records, not time); timed from its RebalanceComplete to its ShutdownComplete status lines; CPU minus a run on an empty topic"},
	}
	if !confluentBuilt {
		sides = deleteSide(sides, "confluent-kafka-go")
	}
	if e.javaCP == "" {
		sides = deleteSide(sides, "Java TransactionalMessageCopier")
	}
	return section{name: "exactly-once copy", records: e.cfg.copyRecords, sides: keep(e, sides), cleanup: func(ctx context.Context) {
		deleteTopics(ctx, e, outs...)
		outs = outs[:0]
	}}, nil
}

// rawSession is the raw copies' GroupTransactSession, with transactional
// ID prefix txnID.
func rawSession(e *env, txnID, in, out, group string) (*kgo.GroupTransactSession, error) {
	return kgo.NewGroupTransactSession(kgo.SeedBrokers(e.brokers...), kgo.TransactionalID(e.name(txnID)),
		kgo.ConsumerGroup(group), kgo.ConsumeTopics(in), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.DefaultProduceTopic(out), kgo.RecordPartitioner(kgo.ManualPartitioner()))
}

func rawKgoCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	s, err := rawSession(e, "bench-raw-txn", in, out, group)
	if err != nil {
		return result{}, err
	}
	defer s.Close()
	return rawTxnCopy(ctx, n, rawTxn{begin: s.Begin, poll: s.PollRecords, produce: s.Produce, flush: s.Client().Flush,
		end: func(ctx context.Context, _ map[string]map[int32]kgo.EpochOffset) (bool, error) {
			return s.End(ctx, kgo.TryCommit)
		}})
}

// rawTxn is what a raw transactional copy loop calls.
type rawTxn struct {
	begin   func() error
	poll    func(ctx context.Context, max int) kgo.Fetches
	produce func(ctx context.Context, r *kgo.Record, promise func(*kgo.Record, error))
	flush   func(ctx context.Context) error // nil: none (during flushes)
	// end commits the flushed transaction and reports whether it did;
	// offs are the offsets taken for during, or nil.
	end func(ctx context.Context, offs map[string]map[int32]kgo.EpochOffset) (bool, error)
	// With during set, the loop takes offsets after the flush and runs
	// during with them on a goroutine, polling meanwhile up to overlapHeld
	// records, which it produces first in the next transaction.
	offsets func() map[string]map[int32]kgo.EpochOffset
	during  func(ctx context.Context, offs map[string]map[int32]kgo.EpochOffset) error
}

// overlapHeld bounds the records an overlapped copy polls while a
// transaction ends.
const overlapHeld = 20_000

// rawTxnCopy copies n records in transactions: begin, then poll and
// produce until txnInterval has passed since the transaction's first
// record, then flush and, if every output was written, end.
func rawTxnCopy(ctx context.Context, n int, t rawTxn) (result, error) {
	var m meter
	var failed atomic.Pointer[error]
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.CompareAndSwap(nil, &err)
		}
	}
	committed, pending, commits := 0, 0, 0
	var held []*kgo.Record
	var t0 time.Time
	copyRecord := func(r *kgo.Record) {
		if committed == 0 && pending == 0 {
			m = startMeter()
		}
		if t0.IsZero() {
			t0 = time.Now()
		}
		t.produce(ctx, &kgo.Record{Key: r.Key, Value: r.Value, Partition: r.Partition}, promise)
		pending++
	}
	for committed < n {
		if err := t.begin(); err != nil {
			return result{}, fmt.Errorf("begin: %w", err)
		}
		t0 = time.Time{}
		for _, r := range held {
			copyRecord(r)
		}
		held = held[:0]
		for pending+committed < n && (t0.IsZero() || time.Since(t0) < txnInterval) {
			fs := t.poll(ctx, n-committed-pending)
			if err := ctx.Err(); err != nil {
				return result{}, fmt.Errorf("after %d records committed: %w", committed, err)
			}
			if errs := fs.Errors(); len(errs) > 0 {
				return result{}, fmt.Errorf("fetch %s[%d]: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
			}
			fs.EachRecord(copyRecord)
		}
		if t.flush != nil {
			if err := t.flush(ctx); err != nil {
				return result{}, fmt.Errorf("flush: %w", err)
			}
			if p := failed.Load(); p != nil {
				return result{}, fmt.Errorf("produce: %w", *p)
			}
		}
		var offs map[string]map[int32]kgo.EpochOffset
		if t.during != nil {
			offs = t.offsets()
			var err error
			if held, err = pollDuring(ctx, t, offs, held, min(overlapHeld, n-committed-pending)); err != nil {
				return result{}, err
			}
			if p := failed.Load(); p != nil {
				return result{}, fmt.Errorf("produce: %w", *p)
			}
		}
		ok, err := t.end(ctx, offs)
		if err != nil {
			return result{}, fmt.Errorf("end transaction: %w", err)
		}
		if !ok {
			return result{}, fmt.Errorf("transaction of %d records aborted (rebalance?) after %d committed", pending, committed)
		}
		committed += pending
		pending = 0
		commits++
	}
	return m.stopCommits(n, commits), nil
}

// pollDuring runs t.during on a goroutine and, until it returns, polls up
// to limit records into held.
func pollDuring(ctx context.Context, t rawTxn, offs map[string]map[int32]kgo.EpochOffset, held []*kgo.Record, limit int) ([]*kgo.Record, error) {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer cancel()
		done <- t.during(ctx, offs)
	}()
	for pctx.Err() == nil && len(held) < limit {
		fs := t.poll(pctx, limit-len(held))
		for _, fe := range fs.Errors() {
			if !errors.Is(fe.Err, context.Canceled) {
				cancel()
				<-done
				return nil, fmt.Errorf("fetch %s[%d]: %w", fe.Topic, fe.Partition, fe.Err)
			}
		}
		fs.EachRecord(func(r *kgo.Record) { held = append(held, r) })
	}
	if err := <-done; err != nil {
		return nil, fmt.Errorf("end transaction: %w", err)
	}
	return held, nil
}

func kdeliverCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	s, err := eos.New(e.brokers, group, []string{in}, e.name("bench-eos-txn"), eos.WithOutputTopic(out),
		eos.WithCommitEvery(1_000_000, txnInterval), kdeliver.WithLogger(slog.New(slog.DiscardHandler)),
		eos.WithKgoOpts(kgo.RecordPartitioner(kgo.ManualPartitioner()))) // each copy to its input's partition, as the other clients
	if err != nil {
		return result{}, err
	}
	defer s.Close(context.Background())
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var m atomic.Pointer[meter]
	var res atomic.Pointer[result]
	go func() { // stop at the commit that reaches n records
		for rctx.Err() == nil {
			if st := s.Stats(); st.Records >= int64(n) {
				if mp := m.Load(); mp != nil {
					r := mp.stopCommits(n, int(st.Committed))
					res.Store(&r)
				}
				stop()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	err = s.Run(rctx, func(_ context.Context, r *kgo.Record, emit func(*kgo.Record)) error {
		if m.Load() == nil {
			mt := startMeter()
			m.CompareAndSwap(nil, &mt)
		}
		emit(&kgo.Record{Key: r.Key, Value: r.Value, Partition: r.Partition})
		return nil
	})
	if err != nil {
		return result{}, err
	}
	r := res.Load()
	if r == nil {
		return result{}, fmt.Errorf("kdeliver Run returned with %d of %d records committed: %v", s.Stats().Records, n, ctx.Err())
	}
	if st := s.Stats(); st.Aborted > 0 {
		return result{}, fmt.Errorf("%d transactions aborted (%+v)", st.Aborted, st)
	}
	return *r, nil
}

// aloCopy is the at-least-once copy loop of integration/eostest's
// BenchmarkEOSvsAtLeastOnce, with each copy to its input's partition: a
// consumer client with kdeliver's AtLeastOnce consumer preset and a
// kdeliver AtLeastOnce producer; it commits what it polled once the copies
// are acknowledged, every 100 ms.
func aloCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	a, err := newAloClients(e, in, group)
	if err != nil {
		return result{}, err
	}
	defer a.close()
	var m meter
	copied, committed, commits := 0, 0, 0
	produce := func(fs kgo.Fetches) error {
		if errs := fs.Errors(); len(errs) > 0 && ctx.Err() == nil && !errors.Is(errs[0].Err, context.DeadlineExceeded) {
			return fmt.Errorf("fetch %s[%d]: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if copied == 0 && committed == 0 {
				m = startMeter()
			}
			copied++
			a.p.ProduceAsync(ctx, &kgo.Record{Topic: out, Key: r.Key, Value: r.Value, Partition: r.Partition}, a.promise)
		})
		return nil
	}
	for committed < n {
		if err := produce(a.cl.PollRecords(ctx, n-committed-copied)); err != nil {
			return result{}, err
		}
		if err := ctx.Err(); err != nil {
			return result{}, fmt.Errorf("after %d records committed: %w", committed, err)
		}
		if copied == 0 {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, txnInterval) // the rest of the window
		for wctx.Err() == nil && committed+copied < n {
			if err := produce(a.cl.PollRecords(wctx, n-committed-copied)); err != nil {
				cancel()
				return result{}, err
			}
		}
		cancel()
		if err := a.p.Flush(ctx); err != nil {
			return result{}, fmt.Errorf("flush: %w", err)
		}
		if err := a.failed.Load(); err != nil {
			return result{}, fmt.Errorf("produce: %w", *err)
		}
		if err := a.cl.CommitUncommittedOffsets(ctx); err != nil {
			return result{}, fmt.Errorf("commit: %w", err)
		}
		a.cl.AllowRebalance()
		committed += copied
		copied = 0
		commits++
	}
	return m.stopCommits(n, commits), nil
}

// aloClients are the at-least-once copy's clients: a consumer client with
// kdeliver's AtLeastOnce consumer preset (BlockRebalanceOnPoll) and a
// kdeliver AtLeastOnce producer, whose promise keeps the first produce
// error in failed.
type aloClients struct {
	cl      *kgo.Client
	p       *producer.Producer
	promise func(*kgo.Record, error)
	failed  atomic.Pointer[error]
}

func newAloClients(e *env, in, group string) (*aloClients, error) {
	base, _ := preset.Base(&shared.Settings{Logger: slog.New(slog.DiscardHandler)}, group)
	opts := append(base, kgo.SeedBrokers(e.brokers...), kgo.BlockRebalanceOnPoll())
	opts = append(opts, preset.Consumer{Semantics: kdeliver.AtLeastOnce, Group: group, Topics: []string{in}}.Opts()...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	p, err := producer.New(e.brokers, kdeliver.AtLeastOnce, kdeliver.WithLogger(slog.New(slog.DiscardHandler)),
		producer.WithKgoOpts(kgo.RecordPartitioner(kgo.ManualPartitioner())))
	if err != nil {
		cl.Close()
		return nil, err
	}
	a := &aloClients{cl: cl, p: p}
	a.promise = func(_ *kgo.Record, err error) {
		if err != nil {
			a.failed.CompareAndSwap(nil, &err)
		}
	}
	return a, nil
}

func (a *aloClients) close() {
	a.p.Close(context.Background())
	a.cl.Close()
}

// aloCutCopy is aloCopy with its windows cut at 100 ms as eos cuts its
// transactions: each record's copy is timed, and the records polled after
// the window's end are held for the next window; a window commits the
// offsets of the records it copied (CommitRecords), not all it polled.
// aloCopy checks the time between polls only, so the copies of a window's
// last poll run on past it: this side is the control for that (it changed
// neither the throughput nor the records a commit: BENCHMARKS.md, run Y2).
func aloCutCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	a, err := newAloClients(e, in, group)
	if err != nil {
		return result{}, err
	}
	defer a.close()
	var m meter
	var held []*kgo.Record // polled after the last window's end
	last := map[int32]*kgo.Record{}
	committed, commits := 0, 0
	for committed < n {
		copied := 0
		var t0 time.Time
		// copyRecs copies rs until the window ends, and holds the rest.
		copyRecs := func(rs []*kgo.Record) {
			for i, r := range rs {
				now := time.Now()
				if t0.IsZero() {
					t0 = now
					if committed == 0 {
						m = startMeter()
					}
				} else if now.Sub(t0) >= txnInterval {
					held = rs[i:]
					return
				}
				a.p.ProduceAsync(ctx, &kgo.Record{Topic: out, Key: r.Key, Value: r.Value, Partition: r.Partition}, a.promise)
				last[r.Partition] = r
				copied++
			}
			held = nil
		}
		copyRecs(held)
		for len(held) == 0 && committed+copied < n && (t0.IsZero() || time.Since(t0) < txnInterval) {
			pctx, cancel := ctx, context.CancelFunc(func() {})
			if !t0.IsZero() {
				pctx, cancel = context.WithDeadline(ctx, t0.Add(txnInterval))
			}
			fs := a.cl.PollRecords(pctx, n-committed-copied)
			cancel()
			if err := ctx.Err(); err != nil {
				return result{}, fmt.Errorf("after %d records committed: %w", committed, err)
			}
			if errs := fs.Errors(); len(errs) > 0 && !errors.Is(errs[0].Err, context.DeadlineExceeded) {
				return result{}, fmt.Errorf("fetch %s[%d]: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
			}
			copyRecs(fs.Records())
		}
		if err := a.p.Flush(ctx); err != nil {
			return result{}, fmt.Errorf("flush: %w", err)
		}
		if err := a.failed.Load(); err != nil {
			return result{}, fmt.Errorf("produce: %w", *err)
		}
		rs := make([]*kgo.Record, 0, len(last))
		for _, r := range last {
			rs = append(rs, r)
		}
		clear(last)
		if err := a.cl.CommitRecords(ctx, rs...); err != nil {
			return result{}, fmt.Errorf("commit: %w", err)
		}
		if len(held) == 0 {
			a.cl.AllowRebalance() // none held of a partition a rebalance could take
		}
		committed += copied
		commits++
	}
	return m.stopCommits(n, commits), nil
}

func javaCopierArgs(e *env, in, out, group string, n, txnSize int) []string {
	return []string{"--broker-list", strings.Join(e.brokers, ","), "--input-topic", in, "--input-partition", "0",
		"--output-topic", out, "--consumer-group", group, "--transactional-id", e.name("bench-java-txn"),
		"--group-mode", "--use-group-metadata", "--max-messages", strconv.Itoa(n), "--transaction-size", strconv.Itoa(txnSize)}
}

// copierStatus is one of the copier's JSON status lines.
type copierStatus struct {
	Stage          string `json:"stage"`
	Time           string `json:"time"`
	TotalProcessed int    `json:"totalProcessed"`
}

// copierSpan returns the time from the copier's last RebalanceComplete
// (its group join done) to its ShutdownComplete, and the records it copied.
func copierSpan(out string) (time.Duration, int, error) {
	var t0, t1 time.Time
	processed := 0
	for l := range strings.Lines(out) {
		var st copierStatus
		if json.Unmarshal([]byte(l), &st) != nil {
			continue
		}
		// "2026/12/06 21:29:51:396": milliseconds after a colon.
		ts := st.Time
		if i := strings.LastIndexByte(ts, ':'); i > 0 {
			ts = ts[:i] + "." + ts[i+1:]
		}
		t, err := time.Parse("2006/01/02 15:04:05.000", ts)
		if err != nil {
			return 0, 0, fmt.Errorf("copier status time %q: %w", st.Time, err)
		}
		switch st.Stage {
		case "RebalanceComplete":
			t0 = t
		case "ShutdownComplete":
			t1, processed = t, st.TotalProcessed
		}
	}
	if t0.IsZero() || t1.IsZero() || !t1.After(t0) {
		return 0, 0, fmt.Errorf("no RebalanceComplete and later ShutdownComplete in the copier's output:\n%s", tail(out))
	}
	return t1.Sub(t0), processed, nil
}

func javaCopy(ctx context.Context, e *env, in, out, group string, n, rawRate int) (result, error) {
	txnSize := max(int(math.Round(float64(rawRate)*txnInterval.Seconds())), 100)
	if rawRate == 0 {
		txnSize = 1000
	}
	// The baseline copies an empty topic: JVM start, group join, shutdown.
	// (--max-messages does not bound the copier in group mode.)
	base, err := javaBaseline(ctx, e, "TransactionalMessageCopier", func() (time.Duration, error) {
		empty := e.name("bench-copy-empty")
		if err := e.c.CreateTopic(ctx, empty, partitions); err != nil {
			return 0, fmt.Errorf("create topic %s: %w", empty, err)
		}
		defer deleteTopics(ctx, e, empty)
		_, _, cpu, err := javaRun(ctx, e, "TransactionalMessageCopier", javaCopierArgs(e, empty, out, e.name("bench-copy-group"), 0, txnSize)...)
		return cpu, err
	})
	if err != nil {
		return result{}, err
	}
	outs, _, cpu, err := javaRun(ctx, e, "TransactionalMessageCopier", javaCopierArgs(e, in, out, group, n, txnSize)...)
	if err != nil {
		return result{}, err
	}
	span, got, err := copierSpan(outs)
	if err != nil {
		return result{}, err
	}
	if got < n {
		return result{}, fmt.Errorf("TransactionalMessageCopier copied %d of %d records:\n%s", got, n, tail(outs))
	}
	// In group mode the copier copies the whole input (warm-up turns
	// ask for a tenth).
	return result{records: got, wall: span, cpu: max(cpu-base, 0)}, nil
}
