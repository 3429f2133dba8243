package eostest

import (
	"context"
	"crypto/rand"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/shared"
	"github.com/kdeliver/kdeliver/producer"
)

// Shape of BenchmarkEOSvsAtLeastOnce.
const (
	benchRecordSize = 1024                   // bytes of each record's value
	benchChunk      = 300000                 // records one side copies per turn
	benchCommit     = 100 * time.Millisecond // commit interval of both sides
	benchParts      = 3                      // partitions of every topic
	benchTurnLimit  = 3 * time.Minute        // a turn that takes longer fails
)

// BenchmarkEOSvsAtLeastOnce compares the eos loop with the AtLeastOnce
// consume-produce loop on one real single-node Kafka: both copy 1 KiB records
// (random, so incompressible) from a 3-partition topic to a 3-partition topic
// and commit every 100 ms.
//
//   - eos: an eos.Session whose handler emits a copy of each record, with
//     WithCommitEvery(1<<20, 100ms), so time ends every transaction.
//   - alo: a consumer client with kdeliver's AtLeastOnce consumer preset
//     (group, no auto-commit, start at the earliest offset) and the same
//     tracing hooks as every kdeliver client, and a producer.New(AtLeastOnce)
//     producer (acks=all, idempotent). It polls, produces a copy of each
//     record asynchronously, and 100 ms after the first record of a window
//     flushes the producer, stops if any copy failed, and only then commits
//     the polled offsets: a crash repeats output but never loses any.
//
// The sides copy chunks of 300,000 records in turns, alternating which goes
// first; a turn runs from the moment its chunk is in the input topic until
// the chunk's last offsets are committed. Each pair of turns gives one ratio
// (alo time / eos time, so 1.0 means as fast); throughput-ratio is their
// median, total-ratio the ratio of the summed times (which slow outliers
// move). It needs real Kafka (see the package doc), and runs only with
// -bench:
//
//	KDELIVER_KAFKA_HOME=$(.ci/kafka/fetch) go test -run '^$' \
//		-bench EOSvsAtLeastOnce -benchtime 8x -count 5 -timeout 30m ./integration/eostest/
func BenchmarkEOSvsAtLeastOnce(b *testing.B) {
	ctx := context.Background()
	// A cluster of its own: the package's shared cluster has three nodes.
	// Old segments are deleted soon (see the topic configs below), or
	// a run would fill gigabytes of the log directory. The retention
	// check runs every second: every 10 s it found some 200 segments
	// (3 GB) to delete, and their unlinking stalled the broker's appends
	// for 0.5-1 s in whichever turn was running, a ratio of 0.35-0.6 for
	// that pair. Deleting a second's worth at a time spreads the cost.
	c, err := integration.New(ctx, integration.WithNodes(1), integration.WithLogf(b.Logf),
		integration.WithBrokerConfig("log.retention.check.interval.ms", "1000"))
	if err != nil {
		b.Fatal(err) // also when KDELIVER_REQUIRE_KAFKA is set and only kfake is available
	}
	b.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.Close(cctx)
	})
	if c.Kind() == integration.BackendKfake {
		b.Skip("needs real Kafka: set KDELIVER_KAFKA_HOME=$(.ci/kafka/fetch) (or KDELIVER_KAFKA_BROKERS); KDELIVER_REQUIRE_KAFKA=1 makes this a failure")
	}
	b.Logf("Kafka %s on %s backend, %d node(s)", c.Version(), c.Kind(), c.Nodes())
	run := strconv.FormatInt(time.Now().UnixNano(), 36) // fresh names on an external cluster
	eosIn, eosOut, aloIn, aloOut := "bench-eos-in-"+run, "bench-eos-out-"+run, "bench-alo-in-"+run, "bench-alo-out-"+run
	for _, t := range []string{eosIn, eosOut, aloIn, aloOut} {
		// A partition keeps about two chunks (a turn reads only the
		// chunk just written), and deleted segments go at once, not
		// after a minute: a minute of this benchmark is over 20 GB.
		cfg := map[string]string{
			"retention.bytes":      strconv.Itoa(2 * benchChunk / benchParts * benchRecordSize),
			"segment.bytes":        strconv.Itoa(16 << 20),
			"file.delete.delay.ms": "1000",
		}
		if err := c.CreateTopicWithConfigs(ctx, t, benchParts, cfg); err != nil {
			b.Fatal(err)
		}
	}

	seeder, err := c.NewClient()
	if err != nil {
		b.Fatal(err)
	}
	defer seeder.Close()
	vals := make([]byte, benchChunk*benchRecordSize)
	_, _ = rand.Read(vals) // never fails (crypto/rand)
	seed := func(b *testing.B, topic string) {
		rs := make([]*kgo.Record, benchChunk)
		for i := range rs {
			rs[i] = &kgo.Record{Topic: topic, Value: vals[i*benchRecordSize : (i+1)*benchRecordSize]}
		}
		sctx, cancel := context.WithTimeout(ctx, benchTurnLimit)
		defer cancel()
		if err := seeder.ProduceSync(sctx, rs...).FirstErr(); err != nil {
			b.Fatalf("seed %s: %v", topic, err)
		}
	}

	e := newEOSSide(b, c.Brokers(), eosIn, eosOut, run)
	a := newALOSide(b, c.Brokers(), aloIn, aloOut, run)
	// The turns take the b of the benchmark they run in: FailNow must be
	// called from its goroutine.
	eosTurn := func(b *testing.B) time.Duration {
		from := e.s.Stats().Records
		seed(b, eosIn)
		return e.copy(b, from, benchChunk)
	}
	aloTurn := func(b *testing.B) time.Duration {
		seed(b, aloIn)
		start := time.Now()
		a.copy(b, benchChunk)
		return time.Since(start)
	}
	// Warm up: both groups joined, both producers initialized, the JIT
	// of the broker warm.
	for range 3 {
		eosTurn(b)
		aloTurn(b)
	}

	b.Run("1KiB-3to3-100ms", func(b *testing.B) {
		eosBefore, aloBefore := e.s.Stats(), a.commits
		var ratios []float64
		var eosTotal, aloTotal time.Duration
		for i := range b.N {
			var et, at time.Duration
			if i%2 == 0 {
				et, at = eosTurn(b), aloTurn(b)
			} else {
				at, et = aloTurn(b), eosTurn(b)
			}
			eosTotal += et
			aloTotal += at
			ratios = append(ratios, float64(at)/float64(et))
		}
		b.StopTimer()
		eosAfter := e.s.Stats()
		txns := eosAfter.Committed - eosBefore.Committed
		b.Logf("N=%d ratios %s; eos: %d transactions committed, %d aborted, %d clients replaced; alo: %d commits",
			b.N, fmtRatios(ratios), txns, eosAfter.Aborted-eosBefore.Aborted, eosAfter.Recreated-eosBefore.Recreated, a.commits-aloBefore)
		slices.Sort(ratios)
		median := ratios[len(ratios)/2]
		if len(ratios)%2 == 0 {
			median = (ratios[len(ratios)/2-1] + median) / 2
		}
		recs := float64(b.N * benchChunk)
		b.ReportMetric(median, "throughput-ratio")
		b.ReportMetric(aloTotal.Seconds()/eosTotal.Seconds(), "total-ratio")
		b.ReportMetric(ratios[0], "ratio-min")
		b.ReportMetric(ratios[len(ratios)-1], "ratio-max")
		b.ReportMetric(recs/eosTotal.Seconds(), "eos-rec/s")
		b.ReportMetric(recs/aloTotal.Seconds(), "alo-rec/s")
		b.ReportMetric(0, "ns/op")
	})
}

func fmtRatios(rs []float64) string {
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += " "
		}
		s += strconv.FormatFloat(r, 'f', 2, 64)
	}
	return s
}

// eosSide is an eos.Session copying in to out. Its Run runs only during its
// turns, as the AtLeastOnce loop does: between them the client stays in the
// group and may prefetch, but copies nothing, so neither side gets a head
// start while its chunk is being written.
type eosSide struct {
	s *eos.Session
}

func newEOSSide(b *testing.B, brokers []string, in, out, run string) *eosSide {
	s, err := eos.New(brokers, "bench-eos-g-"+run, []string{in}, "bench-eos-"+run,
		eos.WithOutputTopic(out), eos.WithCommitEvery(1<<20, benchCommit))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(context.Background()) })
	return &eosSide{s: s}
}

// copy runs the session until n more input records than from are
// committed, and returns when they are; stopping Run afterwards is not part
// of the turn. Stats is read every millisecond, which adds at most that to a
// turn of a second or more.
func (e *eosSide) copy(b *testing.B, from int64, n int) time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- e.s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Fatalf("eos Run: %v", err)
		}
	}()
	want := from + int64(n)
	deadline := start.Add(benchTurnLimit)
	for e.s.Stats().Records < want {
		select {
		case err := <-done:
			b.Fatalf("eos Run returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("eos: %d of %d records committed after %v; stats %+v", e.s.Stats().Records-from, n, benchTurnLimit, e.s.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// aloSide is the AtLeastOnce consume-produce loop. consumer.Consumer is not
// used: it commits after every poll, once the handler has returned, so a
// handler that produced asynchronously would let offsets be committed before
// the copies are acknowledged, and one that produced synchronously would wait
// a round trip per record. The loop uses the consumer preset and the producer
// package instead.
type aloSide struct {
	cl      *kgo.Client
	p       *producer.Producer
	out     string
	failed  atomic.Pointer[error]
	promise func(*kgo.Record, error)
	commits int
}

func newALOSide(b *testing.B, brokers []string, in, out, run string) *aloSide {
	group := "bench-alo-g-" + run
	base, _ := preset.Base(&shared.Settings{}, group)
	opts := append(base, kgo.SeedBrokers(brokers...))
	opts = append(opts, preset.Consumer{Semantics: kdeliver.AtLeastOnce, Group: group, Topics: []string{in}}.Opts()...)
	// A rebalance waits until the polled records are copied and committed.
	opts = append(opts, kgo.BlockRebalanceOnPoll())
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		b.Fatal(err)
	}
	p, err := producer.New(brokers, kdeliver.AtLeastOnce)
	if err != nil {
		cl.Close()
		b.Fatal(err)
	}
	a := &aloSide{cl: cl, p: p, out: out}
	a.promise = func(_ *kgo.Record, err error) {
		if err != nil {
			a.failed.CompareAndSwap(nil, &err)
		}
	}
	b.Cleanup(func() {
		p.Close(context.Background())
		cl.AllowRebalance()
		cl.Close()
	})
	return a
}

// copy runs the loop until n input records are copied and committed.
func (a *aloSide) copy(b *testing.B, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), benchTurnLimit)
	defer cancel()
	// produce copies what one poll with pctx returned; the error of a poll
	// that pctx ended is not a fetch error.
	produce := func(pctx context.Context, fs kgo.Fetches) int {
		fs.EachError(func(t string, p int32, err error) {
			if pctx.Err() == nil {
				b.Fatalf("alo: fetch %s[%d]: %v", t, p, err)
			}
		})
		copied := 0
		fs.EachRecord(func(r *kgo.Record) {
			copied++
			a.p.ProduceAsync(ctx, &kgo.Record{Topic: a.out, Key: r.Key, Value: r.Value}, a.promise)
		})
		return copied
	}
	for committed := 0; committed < n; {
		copied := produce(ctx, a.cl.PollFetches(ctx))
		if ctx.Err() != nil {
			b.Fatalf("alo: %d of %d records committed after %v", committed, n, benchTurnLimit)
		}
		if copied == 0 {
			continue
		}
		// Keep polling and producing for the rest of the window.
		wctx, wcancel := context.WithTimeout(ctx, benchCommit)
		for wctx.Err() == nil {
			copied += produce(wctx, a.cl.PollFetches(wctx))
		}
		wcancel()
		if err := a.p.Flush(ctx); err != nil {
			b.Fatalf("alo: flush: %v", err)
		}
		if err := a.failed.Load(); err != nil {
			b.Fatalf("alo: a copy failed, so the offsets are not committed: %v", *err)
		}
		// Everything polled is acknowledged: commit it.
		if err := a.cl.CommitUncommittedOffsets(ctx); err != nil {
			b.Fatalf("alo: commit: %v", err)
		}
		a.cl.AllowRebalance()
		a.commits++
		committed += copied
	}
}
