// Package perf holds benchmarks that need real Kafka and belong to no fault
// suite: the consumer against a raw kgo loop. They run only with -bench.
package perf

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/integration"
)

// Shape of BenchmarkConsumerVsRawLoop.
const (
	benchRecords    = 1000000 // records each turn reads: turns of a few seconds, long enough to settle
	benchRecordSize = 1024    // bytes of each record's value, random
	benchParts      = 6       // partitions of the input topic
	benchTurnLimit  = 3 * time.Minute
)

// BenchmarkConsumerVsRawLoop reads the same 1,000,000 random 1 KiB records of a
// 6-partition topic on one real Kafka node with a no-op handler, in turns:
//
//   - raw: a kgo client with kdeliver's at-least-once consumer settings
//     (group, no auto-commit) in the loop a franz-go user writes: poll,
//     handle each record, CommitUncommittedOffsets after each poll;
//   - kdeliver's consumer.New(AtLeastOnce): sequential, and with
//     kdeliver.WithConcurrency(6, ...) in each ordering mode.
//
// Each turn is a new group, reading the topic from the start; it is timed
// from its first record to the commit of the last (the group join is left
// out, it is the broker's), and its CPU is the process's user and system
// time over the same span (the broker is another process). The clients run
// in turns, rotating which goes first in each round. For each kdeliver
// variant, throughput-ratio is the median over rounds of raw time / its
// time (1.0: as fast as the raw loop, higher: faster), cpu-ratio the median
// of its CPU per record / the raw loop's (1.0: the same cost). Needs real
// Kafka:
//
//	cd integration && KDELIVER_KAFKA_HOME=$HOME/.cache/kdeliver/kafka-4.4.0 \
//		go test -run '^$' -bench ConsumerVsRawLoop -benchtime 9x -timeout 60m ./perf/
//
// KDELIVER_PERF_SIDES=kdeliver-sequential (a comma-separated list of side
// names) runs only those sides and raw, for profiling one of them.
func BenchmarkConsumerVsRawLoop(b *testing.B) {
	ctx := context.Background()
	c, err := integration.New(ctx, integration.WithNodes(1), integration.WithLogf(b.Logf))
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
	b.Logf("Kafka %s on %s backend", c.Version(), c.Kind())
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic := "bench-consume-" + run
	if err := c.CreateTopic(ctx, topic, benchParts); err != nil {
		b.Fatal(err)
	}
	seed(b, c, topic)

	sides := []side{
		{name: "raw", read: rawLoop},
		{name: "kdeliver-sequential", read: kdeliverLoop()},
		{name: "kdeliver-by-partition-6", read: kdeliverLoop(kdeliver.WithConcurrency(6, kdeliver.ByPartition))},
		{name: "kdeliver-by-key-6", read: kdeliverLoop(kdeliver.WithConcurrency(6, kdeliver.ByKey))},
		{name: "kdeliver-unordered-6", read: kdeliverLoop(kdeliver.WithConcurrency(6, kdeliver.Unordered))},
	}
	if only := os.Getenv("KDELIVER_PERF_SIDES"); only != "" {
		// For profiling one client: raw and the named kdeliver sides.
		keep := strings.Split(only, ",")
		sides = slices.DeleteFunc(sides, func(s side) bool { return s.name != "raw" && !slices.Contains(keep, s.name) })
	}
	var groups atomic.Int64
	turn := func(b *testing.B, s side) turnResult {
		group := fmt.Sprintf("bench-%s-%s-%d", s.name, run, groups.Add(1))
		tctx, cancel := context.WithTimeout(ctx, benchTurnLimit)
		defer cancel()
		// The turn's goroutines (its client's too) carry the side's
		// label: go tool pprof -tagfocus side=raw (or a kdeliver side)
		// shows one client's profile.
		var r turnResult
		var err error
		fetched.n.Store(0)
		pprof.Do(tctx, pprof.Labels("side", s.name), func(ctx context.Context) {
			r, err = s.read(ctx, c.Brokers(), group, topic)
		})
		if err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		r.fetched = fetched.n.Load()
		return r
	}
	// Warm up: the broker's page cache and JIT, each client once.
	for _, s := range sides {
		turn(b, s)
	}

	b.Run("1KiB-6p-noop", func(b *testing.B) {
		times := make([][]float64, len(sides))   // per side, per round: seconds
		cpus := make([][]float64, len(sides))    // per side, per round: CPU seconds
		fetches := make([][]float64, len(sides)) // per side, per round: records fetched / records
		for i := range b.N {
			for j := range sides {
				k := (i + j) % len(sides)
				r := turn(b, sides[k])
				times[k] = append(times[k], r.wall.Seconds())
				cpus[k] = append(cpus[k], r.cpu.Seconds())
				fetches[k] = append(fetches[k], float64(r.fetched)/benchRecords)
			}
		}
		b.StopTimer()
		for k := 1; k < len(sides); k++ {
			var tr, cr []float64
			for i := range b.N {
				tr = append(tr, times[0][i]/times[k][i])
				cr = append(cr, cpus[k][i]/cpus[0][i])
			}
			b.Logf("%s: throughput ratios %s, cpu ratios %s", sides[k].name, fmtFloats(tr), fmtFloats(cr))
			b.ReportMetric(median(tr), sides[k].name+"-throughput-ratio")
			b.ReportMetric(median(cr), sides[k].name+"-cpu-ratio")
		}
		for k, s := range sides {
			b.ReportMetric(benchRecords/median(times[k]), s.name+"-rec/s")
			b.ReportMetric(median(cpus[k])/benchRecords*1e9, s.name+"-cpu-ns/rec")
			// 1.0: each record fetched once; more: fetched again after pauses.
			b.ReportMetric(median(fetches[k]), s.name+"-fetched/rec")
		}
		b.ReportMetric(0, "ns/op")
	})
}

// fetchCount counts the records the clients decode from fetch responses:
// more than benchRecords in a turn means records fetched again (a paused
// partition's buffered fetch is dropped and fetched again on resume).
type fetchCount struct{ n atomic.Int64 }

func (f *fetchCount) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	f.n.Add(int64(m.NumRecords))
}

var fetched = &fetchCount{}

type side struct {
	name string
	read func(ctx context.Context, brokers []string, group, topic string) (turnResult, error)
}

type turnResult struct {
	wall, cpu time.Duration
	fetched   int64 // records decoded from fetch responses (set by turn)
}

// clock marks the start of a turn at its first record and measures to the
// end.
type clock struct {
	started  atomic.Bool
	t0       time.Time
	cpu0     time.Duration
	startRec chan struct{}
}

func newClock() *clock { return &clock{startRec: make(chan struct{})} }

// first is called with every record; the first call starts the clock.
func (c *clock) first() {
	if c.started.CompareAndSwap(false, true) {
		c.t0, c.cpu0 = time.Now(), cpuTime()
		close(c.startRec)
	}
}

func (c *clock) stop() turnResult {
	return turnResult{wall: time.Since(c.t0), cpu: cpuTime() - c.cpu0}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru) // cannot fail for RUSAGE_SELF
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawLoop is the loop a franz-go user writes for at-least-once: poll, handle,
// commit after each poll.
func rawLoop(ctx context.Context, brokers []string, group, topic string) (turnResult, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableClientMetrics(),
		kgo.WithHooks(fetched))
	if err != nil {
		return turnResult{}, err
	}
	defer cl.Close()
	clk := newClock()
	n := 0
	for n < benchRecords {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return turnResult{}, fmt.Errorf("after %d records: %w", n, err)
		}
		if errs := fs.Errors(); len(errs) > 0 {
			return turnResult{}, errs[0].Err
		}
		fs.EachRecord(func(r *kgo.Record) {
			clk.first()
			n++
		})
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			return turnResult{}, err
		}
	}
	return clk.stop(), nil
}

// kdeliverLoop reads with consumer.New(AtLeastOnce, opts...) until the
// handler has seen every record, then cancels Run, which commits and
// returns.
func kdeliverLoop(opts ...consumer.Option) func(ctx context.Context, brokers []string, group, topic string) (turnResult, error) {
	return func(ctx context.Context, brokers []string, group, topic string) (turnResult, error) {
		cs, err := consumer.New(brokers, group, []string{topic}, kdeliver.AtLeastOnce,
			append([]consumer.Option{kdeliver.WithLogger(slog.New(slog.DiscardHandler)), consumer.WithKgoOpts(kgo.WithHooks(fetched))}, opts...)...)
		if err != nil {
			return turnResult{}, err
		}
		defer cs.Close(context.Background())
		clk := newClock()
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		var n atomic.Int64
		err = cs.Run(rctx, func(context.Context, *kgo.Record) error {
			clk.first()
			if n.Add(1) == benchRecords {
				stop()
			}
			return nil
		})
		if err != nil {
			return turnResult{}, err
		}
		if got := n.Load(); got < benchRecords {
			return turnResult{}, fmt.Errorf("run ended after %d of %d records: %v", got, benchRecords, ctx.Err())
		}
		return clk.stop(), nil
	}
}

// seed writes benchRecords random 1 KiB records to topic, spread over its
// partitions, keyed so that the by-key mode has many keys.
func seed(b *testing.B, c *integration.Cluster, topic string) {
	cl, err := c.NewClient(kgo.DefaultProduceTopic(topic), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	vals := make([]byte, benchRecords*benchRecordSize)
	_, _ = rand.Read(vals) // never fails (crypto/rand)
	rs := make([]*kgo.Record, benchRecords)
	for i := range rs {
		rs[i] = &kgo.Record{Key: []byte("k" + strconv.Itoa(i%10000)), Value: vals[i*benchRecordSize : (i+1)*benchRecordSize]}
	}
	ctx, cancel := context.WithTimeout(context.Background(), benchTurnLimit)
	defer cancel()
	if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		b.Fatalf("seed %s: %v", topic, err)
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return m
}

func fmtFloats(xs []float64) string {
	out := ""
	for i, x := range xs {
		if i > 0 {
			out += " "
		}
		out += strconv.FormatFloat(x, 'f', 2, 64)
	}
	return out
}
