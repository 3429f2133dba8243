package perf

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/share"
)

// Shape of BenchmarkShareVsConsumerGroup.
const (
	shareBenchRecords   = 12000 // records each turn reads
	shareBenchParts     = 3     // partitions: fewer than the consumers
	shareBenchConsumers = 6
	shareBenchWork      = time.Millisecond // the handler's sleep per record
	shareBenchTurnLimit = 2 * time.Minute
	shareBenchBatch     = 4 << 10 // producer batch bytes: about 100 records
	shareBenchPoll      = 100     // share.WithMaxRecords
)

// BenchmarkShareVsConsumerGroup reads 12,000 records of a 3-partition
// topic on one real Kafka node with six at-least-once consumers in one
// process (a client each) whose handler sleeps 1 ms, as a share group
// (share.New) and as a classic consumer group (consumer.New):
//
//   - share: the broker hands the records of every partition to every
//     member, so all six work;
//   - consumer-group: a partition has one owner, so three of the six are
//     idle and the rate is at most 3 partitions × 1/1 ms.
//
// The records are produced in batches of about 100 and the share
// consumers poll 100 at a time (share.WithMaxRecords): the broker acquires
// whole producer batches for a member, so a few big batches would all go to
// the first members to fetch (with 12,000 records in one ProduceSync and
// the default 500, three of the six got records).
//
// Each turn (b.N of them) is a new topic and group: the six consumers
// start on the empty topic, and once the group is stable with all six
// members the records are produced; the turn is timed from the produce to
// the handling of the last record (joins left out). records/s is the
// records of all turns over their time; consumers-used is the fewest
// consumers that got records in a turn. Needs real Kafka:
//
//	cd integration && KDELIVER_KAFKA_HOME=$HOME/.cache/kdeliver/kafka-4.4.0 \
//		KDELIVER_KAFKA_BACKEND=process KDELIVER_REQUIRE_KAFKA=1 \
//		go test -run '^$' -bench ShareVsConsumerGroup -benchtime 3x ./perf/
func BenchmarkShareVsConsumerGroup(b *testing.B) {
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
	var turns atomic.Int64
	for _, kind := range []string{"share", "consumer-group"} {
		b.Run(kind, func(b *testing.B) {
			var total time.Duration
			used := shareBenchConsumers
			for b.Loop() {
				name := fmt.Sprintf("bench-%s-%s-%d", kind, run, turns.Add(1))
				d, n, err := shareTurn(c, kind, name)
				if err != nil {
					b.Fatal(err)
				}
				total += d
				used = min(used, n)
			}
			b.ReportMetric(float64(b.N*shareBenchRecords)/total.Seconds(), "records/s")
			b.ReportMetric(float64(used), "consumers-used")
		})
	}
}

// shareTurn runs one turn of kind on a new topic and group called name and
// returns the time from the produce to the last record handled and how
// many consumers got records.
func shareTurn(c *integration.Cluster, kind, name string) (time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), shareBenchTurnLimit)
	defer cancel()
	if err := c.CreateTopic(ctx, name, shareBenchParts); err != nil {
		return 0, 0, err
	}
	quiet := kdeliver.WithLogger(slog.New(slog.DiscardHandler))
	var handled atomic.Int64
	all := make(chan struct{})
	perConsumer := make([]atomic.Int64, shareBenchConsumers)
	handler := func(i int) func(context.Context, *kgo.Record) error {
		return func(context.Context, *kgo.Record) error {
			time.Sleep(shareBenchWork)
			perConsumer[i].Add(1)
			if handled.Add(1) == shareBenchRecords {
				close(all)
			}
			return nil
		}
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make([]error, shareBenchConsumers)
	for i := range shareBenchConsumers {
		switch kind {
		case "share":
			sc, err := share.New(c.Brokers(), name, []string{name}, kdeliver.AtLeastOnce, quiet, share.WithStartAtEarliest(), share.WithMaxRecords(shareBenchPoll))
			if err != nil {
				stop()
				return 0, 0, err
			}
			wg.Go(func() { errs[i] = sc.Run(rctx, handler(i)) })
		default:
			cc, err := consumer.New(c.Brokers(), name, []string{name}, kdeliver.AtLeastOnce, quiet)
			if err != nil {
				stop()
				return 0, 0, err
			}
			wg.Go(func() { errs[i] = cc.Run(rctx, handler(i)) })
		}
	}
	defer func() { stop(); wg.Wait() }()
	if err := waitMembers(ctx, c, kind, name); err != nil {
		return 0, 0, err
	}
	// Small batches: the broker acquires whole batches for a share
	// member, so 12,000 records in a few big batches would go to the
	// first members to fetch.
	cl, err := c.NewClient(kgo.DefaultProduceTopic(name), kgo.ProducerBatchMaxBytes(shareBenchBatch))
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	recs := make([]*kgo.Record, shareBenchRecords)
	for i := range recs {
		recs[i] = &kgo.Record{Key: []byte(strconv.Itoa(i)), Value: []byte("v" + strconv.Itoa(i))}
	}
	began := time.Now()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return 0, 0, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("%s: %d of %d records handled: %w", kind, handled.Load(), shareBenchRecords, ctx.Err())
	}
	d := time.Since(began)
	stop()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return 0, 0, fmt.Errorf("%s consumer %d: %w", kind, i, err)
		}
	}
	n := 0
	for i := range perConsumer {
		if perConsumer[i].Load() > 0 {
			n++
		}
	}
	return d, n, nil
}

// waitMembers waits until group of kind has all its consumers as members
// with an assignment (share) or is stable with all of them (classic).
func waitMembers(ctx context.Context, c *integration.Cluster, kind, group string) error {
	var last string
	for ctx.Err() == nil {
		switch kind {
		case "share":
			gs, err := c.Admin().DescribeShareGroups(ctx, group)
			if err == nil {
				err = gs.Error()
			}
			if err != nil {
				last = err.Error()
				break
			}
			g := gs[group]
			assigned := 0
			for _, m := range g.Members {
				if len(m.Assignment) > 0 {
					assigned++
				}
			}
			if assigned == shareBenchConsumers {
				return nil
			}
			last = fmt.Sprintf("%s, %d members, %d assigned", g.GroupState, len(g.Members), assigned)
		default:
			gs, err := c.Admin().DescribeGroups(ctx, group)
			if err == nil {
				err = gs.Error()
			}
			if err != nil {
				last = err.Error()
				break
			}
			g := gs[group]
			if g.State == "Stable" && len(g.Members) == shareBenchConsumers {
				return nil
			}
			last = fmt.Sprintf("%s, %d members", g.State, len(g.Members))
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("waiting for %d members of %s group %s: %w (last: %s)", shareBenchConsumers, kind, group, ctx.Err(), last)
}
