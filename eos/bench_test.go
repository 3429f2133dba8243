package eos

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// benchChunk is the records one side copies per chunk: 20 transactions.
const benchChunk = 20000

// BenchmarkCopy compares the eos loop with a hand-written GroupTransactSession
// loop with the same batching (1000 records or 100ms a transaction), both
// copying 100-byte records from 3 to 3 partitions on one kfake broker. The
// sides copy chunks of 20,000 records in turn, alternating which goes first;
// each chunk pair gives one ratio (raw time / eos time, so 1.0 means as fast),
// and throughput-ratio is their median, which a burst of load from another
// process moves little.
//
//   - raw-same-opts: the raw loop gets the session's own client options
//     (presets and kotel hooks), so the ratio is the cost of the loop itself;
//
//   - raw-bare: the raw loop has no hooks, so the ratio also includes
//     kotel's per-record hooks;
//
//   - concurrent-by-key: raw-same-opts with the session's handler on
//     kdeliver.WithConcurrency(8, kdeliver.ByKey) (each record its own
//     key), so the ratio is the cost of the concurrent loop with a no-op
//     handler.
//
//     go test -run '^$' -bench Copy -benchtime 20x -count 5 ./eos/
func BenchmarkCopy(b *testing.B) {
	b.Run("raw-same-opts", func(b *testing.B) { benchCopy(b, true) })
	b.Run("raw-bare", func(b *testing.B) { benchCopy(b, false) })
	b.Run("concurrent-by-key", func(b *testing.B) { benchCopy(b, true, kdeliver.WithConcurrency(8, kdeliver.ByKey)) })
}

func benchCopy(b *testing.B, sameOpts bool, extra ...Option) {
	c := kdelivertest.Start(b, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("eos-in", 3), kdelivertest.WithTopic("eos-out", 3),
		kdelivertest.WithTopic("raw-in", 3), kdelivertest.WithTopic("raw-out", 3))
	addrs := c.Brokers()
	seeder, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics())
	if err != nil {
		b.Fatal(err)
	}
	defer seeder.Close()
	val := make([]byte, 100)
	chunk := func(topic string) {
		rs := make([]*kgo.Record, benchChunk)
		for i := range rs {
			rs[i] = &kgo.Record{Topic: topic, Value: val}
		}
		if err := seeder.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}

	s, err := New(addrs, "eos-g", []string{"eos-in"}, "eos-bench", append([]Option{WithOutputTopic("eos-out"), WithCommitEvery(1000, 100*time.Millisecond),
		WithKgoOpts(kgo.DisableClientMetrics(), kgo.MetadataMinAge(100*time.Millisecond))}, extra...)...)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	commits := make(chan struct{}, 1)
	s.committed = func() {
		select {
		case commits <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	eosSide := func() time.Duration {
		want := s.Stats().Records + benchChunk
		chunk("eos-in")
		start := time.Now()
		for s.Stats().Records < want {
			<-commits
		}
		return time.Since(start)
	}

	rawOpts := []kgo.Opt{kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics(), kgo.MetadataMinAge(100 * time.Millisecond)}
	if sameOpts {
		ref, err := New(addrs, "unused", []string{"unused"}, "unused", WithKgoOpts(kgo.DisableClientMetrics(), kgo.MetadataMinAge(100*time.Millisecond)))
		if err != nil {
			b.Fatal(err)
		}
		rawOpts = ref.opts
		ref.Close(context.Background())
	}
	rawOpts = append(rawOpts, kgo.ConsumerGroup("raw-g"), kgo.ConsumeTopics("raw-in"), kgo.TransactionalID("raw-bench"),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	sess, err := kgo.NewGroupTransactSession(rawOpts...)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	rawSide := func() time.Duration {
		chunk("raw-in")
		start := time.Now()
		rawCopy(b, sess, benchChunk)
		return time.Since(start)
	}

	// Warm up: both groups joined, both producers initialized.
	eosSide()
	rawSide()
	ratio, eosTotal, rawTotal := pairedTurns(b, eosSide, rawSide)
	b.ReportMetric(ratio, "throughput-ratio")
	b.ReportMetric(float64(eosTotal.Nanoseconds())/float64(b.N*benchChunk), "eos-ns/rec")
	b.ReportMetric(float64(rawTotal.Nanoseconds())/float64(b.N*benchChunk), "raw-ns/rec")
	b.ReportMetric(0, "ns/op")
}

// rawCopy is the GroupTransactSession loop kgo's documentation shows, with
// the eos loop's batching, run until n records are committed.
func rawCopy(b *testing.B, sess *kgo.GroupTransactSession, n int) {
	ctx := context.Background()
	for committed := 0; committed < n; {
		fs := sess.PollRecords(ctx, 1000)
		if fs.Empty() {
			continue
		}
		if err := sess.Begin(); err != nil {
			b.Fatal(err)
		}
		var failed atomic.Bool
		copied := 0
		produce := func(fs kgo.Fetches) {
			fs.EachRecord(func(r *kgo.Record) {
				copied++
				sess.Produce(ctx, &kgo.Record{Topic: "raw-out", Key: r.Key, Value: r.Value}, func(_ *kgo.Record, err error) {
					if err != nil {
						failed.Store(true)
					}
				})
			})
		}
		produce(fs)
		deadline := time.Now().Add(100 * time.Millisecond)
		for copied < 1000 && time.Now().Before(deadline) {
			pctx, cancel := context.WithDeadline(ctx, deadline)
			produce(sess.PollRecords(pctx, 1000-copied))
			cancel()
		}
		ok, err := sess.End(ctx, kgo.TransactionEndTry(!failed.Load()))
		if err != nil {
			b.Fatal(err)
		}
		if ok {
			committed += copied
		}
	}
}

// benchSleepChunk is the records one side of BenchmarkConcurrent copies per
// chunk: 300 a partition.
const benchSleepChunk = 3600

// BenchmarkConcurrent compares a session with kdeliver.WithConcurrency(12,
// kdeliver.ByPartition) with a sequential one, both copying 12 partitions
// to 12 with a handler that sleeps 1 ms a record, with the default batching
// (1000 records or 100 ms a transaction), on one kfake broker. The sides
// copy chunks of 3,600 records in turn, alternating which goes first; each
// chunk pair gives one ratio (sequential time / concurrent time), and
// speedup is their median. A chunk's time includes its last transaction's
// wait for more input until the commit interval ends (up to 100 ms, which
// only the concurrent side, done early, pays), so the speedup is a little
// below that of a steady stream.
//
//	go test -run '^$' -bench Concurrent -benchtime 3x -count 3 ./eos/
func BenchmarkConcurrent(b *testing.B) {
	const parts = 12
	c := kdelivertest.Start(b, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("seq-in", parts), kdelivertest.WithTopic("seq-out", parts),
		kdelivertest.WithTopic("conc-in", parts), kdelivertest.WithTopic("conc-out", parts))
	addrs := c.Brokers()
	seeder, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics(), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		b.Fatal(err)
	}
	defer seeder.Close()
	val := make([]byte, 100)
	h := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		time.Sleep(time.Millisecond)
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	}
	side := func(name string, opts ...Option) func() time.Duration {
		s, err := New(addrs, name+"-g", []string{name + "-in"}, name+"-bench", append([]Option{WithOutputTopic(name + "-out"),
			WithKgoOpts(kgo.DisableClientMetrics(), kgo.MetadataMinAge(100*time.Millisecond))}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		commits := make(chan struct{}, 1)
		s.committed = func() {
			select {
			case commits <- struct{}{}:
			default:
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx, h) }()
		b.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				b.Error(err)
			}
			s.Close(context.Background())
		})
		return func() time.Duration {
			want := s.Stats().Records + benchSleepChunk
			rs := make([]*kgo.Record, benchSleepChunk)
			for i := range rs {
				rs[i] = &kgo.Record{Topic: name + "-in", Value: val}
			}
			if err := seeder.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for s.Stats().Records < want {
				<-commits
			}
			return time.Since(start)
		}
	}
	seq := side("seq")
	conc := side("conc", kdeliver.WithConcurrency(parts, kdeliver.ByPartition))

	// Warm up: both groups joined, both producers initialized.
	seq()
	conc()
	speedup, concTotal, seqTotal := pairedTurns(b, conc, seq)
	b.ReportMetric(speedup, "speedup")
	b.ReportMetric(float64(b.N*benchSleepChunk)/concTotal.Seconds(), "conc-records/s")
	b.ReportMetric(float64(b.N*benchSleepChunk)/seqTotal.Seconds(), "seq-records/s")
	b.ReportMetric(0, "ns/op")
}

// pairedTurns times b.N pairs of turns of a and c with the timer running,
// alternating which goes first, and returns the median over pairs of c's
// time / a's time (above 1: a is faster) and each side's total.
func pairedTurns(b *testing.B, a, c func() time.Duration) (median float64, aTotal, cTotal time.Duration) {
	b.ResetTimer()
	ratios := make([]float64, 0, b.N)
	for i := range b.N {
		var at, ct time.Duration
		if i%2 == 0 {
			at, ct = a(), c()
		} else {
			ct, at = c(), a()
		}
		aTotal += at
		cTotal += ct
		ratios = append(ratios, float64(ct)/float64(at))
	}
	b.StopTimer()
	slices.Sort(ratios)
	return ratios[len(ratios)/2], aTotal, cTotal
}

// fetchCount counts the records the client fetched (kgo's buffered hook).
type fetchCount struct{ n atomic.Int64 }

func (f *fetchCount) OnFetchRecordBuffered(*kgo.Record) { f.n.Add(1) }

// BenchmarkSlowHandlerFetches copies with a handler that takes 1 ms a
// record (a database call), in transactions of up to 1000 records or
// 100 ms, from 3 partitions on one kfake broker, and reports how many
// records the client fetched for each one it handled: a poll that returns
// more than the interval's handling reaches is cut, and what follows the
// cut is fetched again. Each op copies 500 records; "concurrent" runs the
// handler on 3 goroutines, one a partition.
//
//	go test -run '^$' -bench SlowHandlerFetches -benchtime 4x -count 3 ./eos/
func BenchmarkSlowHandlerFetches(b *testing.B) {
	b.Run("sequential", func(b *testing.B) { slowHandlerFetches(b, 500) })
	b.Run("concurrent", func(b *testing.B) {
		slowHandlerFetches(b, 1500, kdeliver.WithConcurrency(3, kdeliver.ByPartition))
	})
}

func slowHandlerFetches(b *testing.B, perOp int, opts ...Option) {
	n := b.N * perOp
	c := kdelivertest.Start(b, kdelivertest.WithBrokers(1), kdelivertest.WithTopic("in", 3), kdelivertest.WithTopic("out", 3))
	kdelivertest.Seed(b, c.Brokers(), "in", n)
	var fetched fetchCount
	opts = append([]Option{WithOutputTopic("out"), WithCommitEvery(1000, 100*time.Millisecond),
		WithKgoOpts(kgo.DisableClientMetrics(), kgo.WithHooks(&fetched))}, opts...)
	s, err := New(c.Brokers(), "g", []string{"in"}, "slow-fetches", opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		done <- s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			time.Sleep(time.Millisecond)
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}()
	for deadline := time.Now().Add(time.Minute); s.Stats().Records < int64(n); {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d records committed after a minute", s.Stats().Records, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	handled := s.Stats().Records
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fetched.n.Load())/float64(handled), "fetched/record")
	b.ReportMetric(float64(handled)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(0, "ns/op")
}
