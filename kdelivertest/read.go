package kdelivertest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// ReadCommittedRecords reads every record of topic that is committed when it
// is called (below each partition's last stable offset), with read_committed
// isolation, and returns them in partition order, then offset order. It
// waits for records already acknowledged but not yet replicated, bounded by
// ctx; opts are added to the options of the clients that look up the
// partitions' offsets and read (kgo.DialTLSConfig and kgo.SASL reach a
// secured cluster).
//
// It knows exactly when a partition is done, because it also reads the
// transaction markers (and drops them from the result): the last offset
// below the last stable offset is always a committed record or a marker. It
// works on any cluster, embedded or real.
//
// Kafka writes a transaction's markers after EndTxn has returned to the
// producer, so right after a commit a partition's last stable offset can
// still be below the committed records. While a partition's last stable
// offset is below its high watermark, ReadCommittedRecords waits for it to
// catch up, up to [SettleTimeout] (bounded by ctx too), and then reads to
// where it has come: a transaction committed before the call is read, and
// one still open (a hanging transaction) costs the read that wait.
func ReadCommittedRecords(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) ([]*kgo.Record, error) {
	adm, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DisableClientMetrics()}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kdelivertest: read %s: %w", topic, err)
	}
	defer adm.Close()
	starts, ends, err := bounds(ctx, adm, topic)
	if err != nil {
		return nil, err
	}
	if ends, err = settle(ctx, adm, topic, ends); err != nil {
		return nil, err
	}
	want := map[int32]int64{} // partition -> last stable offset
	from := map[int32]kgo.Offset{}
	for p, end := range ends {
		if s := starts[p]; end > s {
			want[p] = end
			from[p] = kgo.NewOffset().At(s)
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.DisableClientMetrics(),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kdelivertest: read %s: %w", topic, err)
	}
	defer cl.Close()
	byPart := map[int32][]*kgo.Record{}
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return flatten(byPart), fmt.Errorf("kdelivertest: read %s: %w (partitions not read to the end: %v)",
				topic, ctx.Err(), slices.Sorted(maps.Keys(want)))
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if ferr == nil && !kerr.IsRetriable(err) {
				ferr = fmt.Errorf("kdelivertest: read %s/%d: %w", t, p, err)
			}
		})
		if ferr != nil {
			return flatten(byPart), ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := want[r.Partition]
			if !ok || r.Offset >= end {
				return // past what was committed when we started
			}
			if !r.Attrs.IsControl() {
				byPart[r.Partition] = append(byPart[r.Partition], r)
			}
			if r.Offset >= end-1 {
				delete(want, r.Partition)
			}
		})
	}
	return flatten(byPart), nil
}

// ReadCommitted is [ReadCommittedRecords] in a test: bounded by 30 seconds,
// it fails the test on an error.
func ReadCommitted(tb testing.TB, brokers []string, topic string, opts ...kgo.Opt) []*kgo.Record {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs, err := ReadCommittedRecords(ctx, brokers, topic, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return recs
}

// bounds returns each partition's log start and last stable offset,
// retrying while the cluster is settling (leaders moving, a topic just
// created).
func bounds(ctx context.Context, cl *kgo.Client, topic string) (starts, ends map[int32]int64, err error) {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		starts, err = listOffsets(ctx, cl, topic, -2, 0)
		if err == nil {
			ends, err = listOffsets(ctx, cl, topic, -1, 1)
		}
		if err == nil || !kerr.IsRetriable(err) && !errors.Is(err, errNoPartitions) {
			if err != nil {
				err = fmt.Errorf("kdelivertest: read %s: %w", topic, err)
			}
			return starts, ends, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, fmt.Errorf("kdelivertest: read %s: listing offsets: %w (last error: %v)", topic, ctx.Err(), err)
		case <-t.C:
		}
	}
}

var errNoPartitions = errors.New("no partitions listed yet")

// SettleTimeout bounds how long [ReadCommittedRecords] waits for the last
// stable offsets of a topic to reach its high watermarks: for the markers
// of transactions committed just before the read.
const SettleTimeout = 2 * time.Second

// settle waits, up to [SettleTimeout], while a partition's last stable
// offset (lso) is below the high watermark the partition had when settle
// began, and returns the last stable offsets as they are then. A listing
// that fails while it waits ends the wait with what it had.
func settle(ctx context.Context, cl *kgo.Client, topic string, lso map[int32]int64) (map[int32]int64, error) {
	hwm, err := listOffsets(ctx, cl, topic, -1, 0)
	if err != nil {
		return lso, nil // the read goes on to the offsets it has
	}
	behind := func(lso map[int32]int64) bool {
		for p, h := range hwm {
			if lso[p] < h {
				return true
			}
		}
		return false
	}
	end := time.NewTimer(SettleTimeout)
	defer end.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for behind(lso) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kdelivertest: read %s: waiting for the last stable offsets to reach the high watermarks: %w", topic, ctx.Err())
		case <-end.C:
			return lso, nil // an open transaction: read what is committed
		case <-tick.C:
		}
		now, err := listOffsets(ctx, cl, topic, -1, 1)
		if err != nil {
			return lso, nil
		}
		lso = now
	}
	return lso, nil
}

// listOffsets lists the offsets of every partition of topic at timestamp
// (-2 the start, -1 the end) with the isolation level (1 read_committed:
// the end is the last stable offset).
func listOffsets(ctx context.Context, cl *kgo.Client, topic string, timestamp int64, isolation int8) (map[int32]int64, error) {
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	mresp, err := meta.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	if len(mresp.Topics) != 1 {
		return nil, errNoPartitions
	}
	if err := kerr.ErrorForCode(mresp.Topics[0].ErrorCode); err != nil {
		return nil, err
	}
	req := kmsg.NewPtrListOffsetsRequest()
	req.IsolationLevel = isolation
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for _, p := range mresp.Topics[0].Partitions {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition, rp.Timestamp, rp.CurrentLeaderEpoch = p.Partition, timestamp, -1
		rt.Partitions = append(rt.Partitions, rp)
	}
	if len(rt.Partitions) == 0 {
		return nil, errNoPartitions
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	out := map[int32]int64{}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return nil, err
			}
			out[p.Partition] = p.Offset
		}
	}
	if len(out) != len(rt.Partitions) {
		return nil, errNoPartitions
	}
	return out, nil
}

func flatten(byPart map[int32][]*kgo.Record) []*kgo.Record {
	var out []*kgo.Record
	for _, p := range slices.Sorted(maps.Keys(byPart)) {
		out = append(out, byPart[p]...)
	}
	return out
}
