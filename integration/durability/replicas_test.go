package durability

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/integration"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/producer"
)

const (
	outageTimeout  = 10 * time.Second // the producer's delivery timeout in the outage test
	outageRecords  = 300              // acknowledged before and again after the outage
	outagePatience = 2 * time.Minute  // how long the test lets a Produce block
)

// brokersDown SIGKILLs down nodes (2 of 3: partitions keep at most one
// replica and the KRaft quorum is lost; 1 of 1: no broker at all), checks
// that an AtLeastOnce Produce to each partition fails with a
// *kdeliver.DeliveryError after its delivery timeout instead of blocking or
// succeeding, restarts the nodes, and checks that the same producer writes
// again and that every acknowledged record is there once.
func brokersDown(t *testing.T, c *integration.Cluster, down int) {
	ctx := timeout(t, 6*time.Minute)
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	topic := topicName(t)
	const partitions = 3
	if err := c.CreateTopic(ctx, topic, partitions); err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(c.Brokers(), kdeliver.AtLeastOnce,
		producer.WithDeliveryTimeout(outageTimeout),
		producer.WithKgoOpts(kgo.RecordPartitioner(kgo.ManualPartitioner())))
	if err != nil {
		t.Fatal(err)
	}
	defer closeProducer(t, p)

	var mu sync.Mutex
	var acked, failed []string
	// record is a record for partition part; its key names the partition,
	// so that the audit checks the order within each partition (kept by
	// idempotence).
	record := func(part int, v string) *kgo.Record {
		return &kgo.Record{Topic: topic, Partition: int32(part), Key: []byte("p" + strconv.Itoa(part)), Value: []byte(v)}
	}
	// produce writes n records spread over the partitions and returns how
	// many failed.
	produce := func(prefix string, n int) int {
		var errs int
		for i := range n {
			v := prefix + ":" + strconv.Itoa(i)
			rec := record(i%partitions, v)
			p.ProduceAsync(ctx, rec, func(_ *kgo.Record, err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed = append(failed, v)
					errs++
					return
				}
				acked = append(acked, v)
			})
		}
		if err := p.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		return errs
	}
	if n := produce("before", outageRecords); n > 0 {
		t.Fatalf("%d of %d records failed before any fault", n, outageRecords)
	}

	// Kill the highest-numbered nodes: with 3 nodes, node 1 stays up alone.
	var killed []int
	for node := c.Nodes(); node > c.Nodes()-down; node-- {
		if err := c.Kill(node); err != nil {
			t.Fatal(err)
		}
		killed = append(killed, node)
	}
	t.Logf("SIGKILL nodes %v of %d", killed, c.Nodes())

	// One Produce per partition, each bounded by the test's patience, which
	// is much longer than the delivery timeout.
	errs := make([]error, partitions)
	took := make([]time.Duration, partitions)
	var wg sync.WaitGroup
	for part := range partitions {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, outagePatience)
			defer cancel()
			v := "outage:" + strconv.Itoa(part)
			began := time.Now()
			errs[part] = p.Produce(pctx, record(part, v))
			took[part] = time.Since(began)
			mu.Lock()
			if errs[part] == nil {
				acked = append(acked, v)
			} else {
				failed = append(failed, v)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	var maxTook time.Duration
	for part, err := range errs {
		maxTook = max(maxTook, took[part])
		var de *kdeliver.DeliveryError
		switch {
		case err == nil:
			t.Errorf("partition %d: Produce succeeded with %d of %d nodes down: acks=all with min.insync.replicas %d cannot be met",
				part, down, c.Nodes(), min(2, c.Nodes()))
		case errors.Is(err, context.DeadlineExceeded) && took[part] >= outagePatience:
			t.Errorf("partition %d: Produce blocked until the test gave up after %s, not failing at its %s delivery timeout: %v",
				part, took[part].Round(time.Second), outageTimeout, err)
		case !errors.As(err, &de):
			t.Errorf("partition %d: error %T is not a *kdeliver.DeliveryError: %v", part, err, err)
		default:
			t.Logf("partition %d: Produce failed after %s: %v", part, took[part].Round(100*time.Millisecond), err)
		}
	}

	began := time.Now()
	for _, node := range killed {
		if err := c.Restart(ctx, node); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitInSync(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("nodes %v restarted, all replicas in sync after %s", killed, time.Since(began).Round(100*time.Millisecond))

	if n := produce("after", outageRecords); n > 0 {
		t.Errorf("%d of %d records failed after the nodes came back: producing did not resume", n, outageRecords)
	}

	recs, err := c.ReadCommitted(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	a := kdelivertest.Audit(acked, recs)
	failedRead := 0
	readSet := map[string]bool{}
	for _, r := range recs {
		readSet[string(r.Value)] = true
	}
	for _, v := range failed {
		if readSet[v] {
			failedRead++
		}
	}
	scenario := "not-enough-replicas"
	if c.Nodes() == 1 {
		scenario = "broker-down"
	}
	r := newResult(c, scenario, kdeliver.AtLeastOnce)
	r.set("records", len(acked)+len(failed))
	r.set("acked", len(acked))
	r.set("failed", len(failed))
	r.set("lost", len(a.Lost))
	r.set("duplicated", a.DuplicateCount())
	r.set("reordered", len(a.Reordered))
	r.set("failed_but_read", failedRead)
	r.set("faults", down)
	r.set("delivery_timeout", outageTimeout)
	r.set("failed_after", maxTook)
	t.Log(r)
	t.Logf("audit of acknowledged records: %s", a)
	if len(a.Lost) > 0 || a.DuplicateCount() > 0 {
		t.Errorf("acknowledged records lost or duplicated: %s", a)
	}
	if len(a.Reordered) > 0 {
		t.Errorf("acknowledged records out of order within a partition (AtLeastOnce keeps it by idempotence): %s", a)
	}
	if len(a.Unexpected) > failedRead {
		t.Errorf("records read that were never produced: %s", a)
	}
}
