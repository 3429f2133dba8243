package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A topic that was just created is not ready for writes everywhere at once:
// on real Kafka the metadata can name a leader before that broker hosts the
// partition, and an acks=0 produce sent then is answered by closing the
// connection (NOT_LEADER_OR_FOLLOWER), losing every request in flight on it
// with nobody told. The demo lost 1,958 of 2,000 at-most-once records that
// way. waitWritable is what the demo does about it.

// notWritableError is waitWritable's error when ctx ends first.
type notWritableError struct {
	topic        string
	ready, total int    // partitions whose leader answered, partitions expected
	why          string // the last reason one was not ready; "" if none was seen
	err          error  // ctx.Err()
}

func (e *notWritableError) Error() string {
	return fmt.Sprintf("topic %s is not ready to take writes (%s): %v", e.topic, e.detail(), e.err)
}

func (e *notWritableError) Unwrap() error { return e.err }

// detail says how far the topic got.
func (e *notWritableError) detail() string {
	s := fmt.Sprintf("%d of %d partitions ready", e.ready, e.total)
	if e.why != "" {
		s += "; " + e.why
	}
	return s
}

// waitWritable waits until every one of the topic's partitions has a leader
// in the metadata and that leader answers a ListOffsets request for the
// partition, at the leader epoch the metadata gave, without error: the
// leader hosts the partition and takes writes. It retries with a backoff
// of up to half a second until ctx ends, and then returns a
// *notWritableError naming the topic, how many partitions were ready and
// the last reason one was not.
func waitWritable(ctx context.Context, cl *kgo.Client, topic string, partitions int) error {
	backoff := 10 * time.Millisecond
	last := &notWritableError{topic: topic, total: partitions}
	for {
		ready, why, err := writable(ctx, cl, topic, partitions)
		if err == nil && why == "" {
			return nil
		}
		if ctx.Err() != nil { // this answer may be the deadline's: keep the one before
			last.err = ctx.Err()
			return last
		}
		if err != nil {
			why = err.Error()
		}
		last.ready, last.why = ready, why
		select {
		case <-ctx.Done():
			last.err = ctx.Err()
			return last
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// writable asks once: it returns how many partitions are ready and, if not
// all are, why one is not. err is a request that failed.
func writable(ctx context.Context, cl *kgo.Client, topic string, partitions int) (ready int, why string, err error) {
	leaders, why, err := partitionLeaders(ctx, cl, topic, partitions)
	if err != nil || why != "" {
		return 0, why, err
	}
	for _, leader := range slices.Sorted(maps.Keys(leaders)) {
		_, errs, err := listOffsets(ctx, cl, topic, leader, leaders[leader], -1)
		if err != nil {
			return ready, "", err
		}
		for _, p := range leaders[leader] {
			if perr := errs[p.partition]; perr != nil {
				if why == "" {
					why = fmt.Sprintf("partition %d: its leader %d answers %s", p.partition, leader, errName(perr))
				}
				continue
			}
			ready++
		}
	}
	return ready, why, nil
}

// leaderPartition is a partition and the leader epoch the metadata gave.
type leaderPartition struct {
	partition int32
	epoch     int32
}

// partitionLeaders returns the topic's partitions by leader from a
// metadata request, or why the metadata does not yet list every partition
// with a leader.
func partitionLeaders(ctx context.Context, cl *kgo.Client, topic string, partitions int) (map[int32][]leaderPartition, string, error) {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return nil, "", err
	}
	leaders, why := leadersOf(resp, topic, partitions)
	return leaders, why, nil
}

// leadersOf reads the topic's partitions by leader from a metadata
// response, or says why it does not list every one of the partitions
// 0..partitions-1 with a leader.
func leadersOf(resp *kmsg.MetadataResponse, topic string, partitions int) (map[int32][]leaderPartition, string) {
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != topic {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return nil, "the metadata says " + errName(err)
		}
		seen := make([]bool, partitions)
		leaders := map[int32][]leaderPartition{}
		for _, p := range t.Partitions {
			if p.Partition < 0 || int(p.Partition) >= partitions {
				continue
			}
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return nil, fmt.Sprintf("partition %d: the metadata says %s", p.Partition, errName(err))
			}
			if p.Leader < 0 {
				return nil, fmt.Sprintf("partition %d: no leader in the metadata", p.Partition)
			}
			seen[p.Partition] = true
			leaders[p.Leader] = append(leaders[p.Leader], leaderPartition{p.Partition, p.LeaderEpoch})
		}
		for p, ok := range seen {
			if !ok {
				return nil, fmt.Sprintf("partition %d: not in the metadata yet", p)
			}
		}
		return leaders, ""
	}
	return nil, "the metadata does not list the topic yet"
}

// listOffsets asks leader for the offsets of its partitions of topic at
// timestamp (-1: the high watermark, -2: the log start). It returns the
// offsets and, separately, the partitions the leader answered with an error.
func listOffsets(ctx context.Context, cl *kgo.Client, topic string, leader int32, parts []leaderPartition, timestamp int64) (map[int32]int64, map[int32]error, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for _, p := range parts {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition, rp.CurrentLeaderEpoch, rp.Timestamp = p.partition, p.epoch, timestamp
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl.Broker(int(leader)))
	if err != nil {
		return nil, nil, err
	}
	offsets, errs := map[int32]int64{}, map[int32]error{}
	for _, t := range resp.Topics {
		if t.Topic != topic {
			continue
		}
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				errs[p.Partition] = err
				continue
			}
			offsets[p.Partition] = p.Offset
		}
	}
	for _, p := range parts {
		if _, ok := offsets[p.partition]; !ok && errs[p.partition] == nil {
			errs[p.partition] = errors.New("not in the ListOffsets response")
		}
	}
	return offsets, errs, nil
}

// recordsInLog counts the records in a non-transactional topic's log: the
// sum over its partitions of high watermark minus log start. (A
// transactional topic's log also holds aborted records and commit markers.)
func recordsInLog(ctx context.Context, cl *kgo.Client, topic string, partitions int) (int64, error) {
	leaders, why, err := partitionLeaders(ctx, cl, topic, partitions)
	if err != nil {
		return 0, err
	}
	if why != "" {
		return 0, fmt.Errorf("counting the records of topic %s: %s", topic, why)
	}
	var n int64
	for leader, parts := range leaders {
		var ends [2]map[int32]int64
		for i, ts := range []int64{-1, -2} {
			offsets, errs, err := listOffsets(ctx, cl, topic, leader, parts, ts)
			if err != nil {
				return 0, err
			}
			for p, err := range errs {
				return 0, fmt.Errorf("counting the records of topic %s: partition %d: %w", topic, p, err)
			}
			ends[i] = offsets
		}
		for _, p := range parts {
			n += ends[0][p.partition] - ends[1][p.partition]
		}
	}
	return n, nil
}

// errName is a Kafka error's name (NOT_LEADER_FOR_PARTITION), or err's text.
func errName(err error) string {
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return ke.Message
	}
	return err.Error()
}
