package producer_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

// BenchmarkProduce compares kdeliver's producer with a raw kgo client that
// has the same delivery settings (the semantics' preset options, no tracing
// hooks), both against the same in-process kfake cluster. Each op is one
// record. The two sides run interleaved in chunks, so load from other
// processes hits both alike, and the benchmark reports:
//
//   - kdeliver-ns/rec, raw-ns/rec: time per record of each side;
//   - throughput-ratio: raw time / kdeliver time, the median over chunk
//     pairs (1 = as fast; target ≥ 0.95);
//   - kdeliver-allocs/rec, raw-allocs/rec: allocations per record, counting
//     the in-process broker's too (the same on both sides);
//   - extra-allocs/rec: the difference (target ≤ 1).
//
// Modes: async is ProduceAsync with a Flush per chunk of 500 records (one
// transaction per chunk under ExactlyOnce); sync is Produce per record, in
// chunks of 20 (a transaction per chunk under ExactlyOnce).
func BenchmarkProduce(b *testing.B) {
	for _, sem := range kdeliver.All {
		for _, mode := range []string{"async", "sync"} {
			b.Run(fmt.Sprintf("%s/%s", sem, mode), func(b *testing.B) { benchProduce(b, sem, mode == "sync") })
		}
	}
}

type side struct {
	run    func(ctx context.Context, recs []*kgo.Record) error
	dur    time.Duration
	allocs uint64
}

func benchProduce(b *testing.B, sem kdeliver.Semantics, sync bool) {
	c := kdelivertest.Start(b, kdelivertest.WithTopic(topic, 3))
	ctx := context.Background()

	pre := preset.Producer{Semantics: sem}
	raw := producer.WithKgoOpts(kgo.DisableClientMetrics())
	var run func(context.Context, []*kgo.Record) error
	if sem == kdeliver.ExactlyOnce {
		pre.TransactionalID = "bench-raw"
		p, err := producer.NewTransactional(c.Brokers(), "bench-kdeliver", raw)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close(ctx)
		run = transactionalRun(p, sync)
	} else {
		p, err := producer.New(c.Brokers(), sem, raw)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close(ctx)
		run = kdeliverRun(p, sync)
	}
	rawCl, err := kgo.NewClient(append(pre.Opts(), kgo.SeedBrokers(c.Brokers()...), kgo.DisableClientMetrics())...)
	if err != nil {
		b.Fatal(err)
	}
	defer rawCl.Close()

	kd, rw := &side{run: run}, &side{run: rawRun(rawCl, sem, sync)}
	chunk := 500
	if sync {
		chunk = 20
	}
	value := make([]byte, 100)
	mk := func(n int) []*kgo.Record {
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: topic, Value: value}
		}
		return recs
	}
	// Warm up both (metadata, producer IDs, connections).
	for _, s := range []*side{kd, rw} {
		if err := s.run(ctx, mk(10)); err != nil {
			b.Fatal(err)
		}
	}

	var ms runtime.MemStats
	var ratios []float64 // per chunk pair: raw time / kdeliver time
	b.ResetTimer()
	for done, i := 0, 0; done < b.N; i++ {
		n := min(chunk, b.N-done)
		order := []*side{kd, rw}
		if i%2 == 1 {
			order = []*side{rw, kd}
		}
		var took [2]time.Duration
		for _, s := range order {
			recs := mk(n)
			runtime.ReadMemStats(&ms)
			allocs := ms.Mallocs
			start := time.Now()
			if err := s.run(ctx, recs); err != nil {
				b.Fatal(err)
			}
			d := time.Since(start)
			s.dur += d
			runtime.ReadMemStats(&ms)
			s.allocs += ms.Mallocs - allocs
			if s == kd {
				took[0] = d
			} else {
				took[1] = d
			}
		}
		ratios = append(ratios, float64(took[1])/float64(took[0]))
		done += n
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(kd.dur.Nanoseconds())/n, "kdeliver-ns/rec")
	b.ReportMetric(float64(rw.dur.Nanoseconds())/n, "raw-ns/rec")
	// The median over chunk pairs: a burst of load from another process
	// slows one chunk, not the whole run.
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "throughput-ratio")
	b.ReportMetric(float64(kd.allocs)/n, "kdeliver-allocs/rec")
	b.ReportMetric(float64(rw.allocs)/n, "raw-allocs/rec")
	b.ReportMetric((float64(kd.allocs)-float64(rw.allocs))/n, "extra-allocs/rec")
}

// produce produces recs one by one with syncFn, or all with asyncFn.
func produce(ctx context.Context, recs []*kgo.Record, sync bool, syncFn func(context.Context, *kgo.Record) error,
	asyncFn func(context.Context, *kgo.Record, func(*kgo.Record, error))) error {
	if sync {
		for _, r := range recs {
			if err := syncFn(ctx, r); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range recs {
		asyncFn(ctx, r, nil)
	}
	return nil
}

func kdeliverRun(p *producer.Producer, sync bool) func(context.Context, []*kgo.Record) error {
	return func(ctx context.Context, recs []*kgo.Record) error {
		if err := produce(ctx, recs, sync, p.Produce, p.ProduceAsync); err != nil {
			return err
		}
		if !sync {
			return p.Flush(ctx)
		}
		return nil
	}
}

func transactionalRun(p *producer.Transactional, sync bool) func(context.Context, []*kgo.Record) error {
	return func(ctx context.Context, recs []*kgo.Record) error {
		return p.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
			return produce(ctx, recs, sync, tx.Produce, tx.ProduceAsync)
		})
	}
}

// rawRun is what an application would write with kgo alone: the same loop,
// a shared promise that records the first error, and under ExactlyOnce
// Begin, Flush and End with TryCommit only when every record succeeded.
func rawRun(cl *kgo.Client, sem kdeliver.Semantics, sync bool) func(context.Context, []*kgo.Record) error {
	return func(ctx context.Context, recs []*kgo.Record) error {
		if sem == kdeliver.ExactlyOnce {
			if err := cl.BeginTransaction(); err != nil {
				return err
			}
		}
		var perr error
		if sync {
			for _, r := range recs {
				if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
					perr = err
					break
				}
			}
		} else {
			var e kgo.FirstErrPromise
			for _, r := range recs {
				cl.Produce(ctx, r, e.Promise())
			}
			if err := cl.Flush(ctx); err != nil {
				return err
			}
			perr = e.Err()
		}
		if sem == kdeliver.ExactlyOnce {
			if sync {
				if err := cl.Flush(ctx); err != nil {
					return err
				}
			}
			if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(perr == nil)); err != nil {
				return err
			}
		}
		return perr
	}
}
