package main

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// rawTwoClientCopy is the exactly-once copy as Java's and librdkafka's
// clients do it: a read_committed consumer client of its own, and a
// transactional producer that puts the consumer's offsets into its
// transaction (TxnOffsetCommit with the consumer's member ID and
// generation, which the broker checks: KIP-447). Rebalances wait for the
// transaction's end (BlockRebalanceOnPoll).
func rawTwoClientCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	return rawManualCopy(ctx, e, in, out, group, n, false)
}

// rawOneClientCopy is rawTwoClientCopy with one client that is both the
// group member and the transactional producer, as a GroupTransactSession's
// is, but ending each transaction without GroupTransactSession.End (which
// adds a forced heartbeat between the offsets and EndTxn).
func rawOneClientCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	return rawManualCopy(ctx, e, in, out, group, n, true)
}

// rawManualCopy is a benchmark loop, not a safe one: any error, a
// rebalance's included, ends the turn.
func rawManualCopy(ctx context.Context, e *env, in, out, group string, n int, one bool) (result, error) {
	consOpts, prodOpts, txnID := manualOpts(e, in, out, group)
	var cons, prod *kgo.Client
	var err error
	if one {
		cons, err = kgo.NewClient(append(consOpts, prodOpts[1:]...)...)
		prod = cons
	} else {
		cons, err = kgo.NewClient(consOpts...)
		if err == nil {
			defer cons.Close()
			prod, err = kgo.NewClient(prodOpts...)
		}
	}
	if err != nil {
		return result{}, err
	}
	defer prod.Close()
	ids, err := topicIDs(ctx, cons, in)
	if err != nil {
		return result{}, err
	}
	return rawTxnCopy(ctx, n, rawTxn{begin: prod.BeginTransaction, poll: cons.PollRecords, produce: prod.Produce, flush: prod.Flush,
		end: func(ctx context.Context, _ map[string]map[int32]kgo.EpochOffset) (bool, error) {
			if err := txnCommitOffsets(ctx, prod, cons, txnID, group, ids, cons.UncommittedOffsets()); err != nil {
				return false, err
			}
			if err := prod.EndTransaction(ctx, kgo.TryCommit); err != nil {
				return false, err
			}
			cons.AllowRebalance()
			return true, nil
		}})
}

// manualOpts are the manual loops' consumer and producer options (the
// producer's first is its seed brokers) and transactional ID.
func manualOpts(e *env, in, out, group string) (cons, prod []kgo.Opt, txnID string) {
	consOpts := []kgo.Opt{kgo.SeedBrokers(e.brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.BlockRebalanceOnPoll(), kgo.DisableAutoCommit()} // kgo always requires stable offsets
	txnID = e.name("bench-raw2-txn")
	prodOpts := []kgo.Opt{kgo.SeedBrokers(e.brokers...), kgo.TransactionalID(txnID),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.DefaultProduceTopic(out), kgo.RecordPartitioner(kgo.ManualPartitioner())}
	return consOpts, prodOpts, txnID
}

// topicIDs returns the IDs of the topics.
func topicIDs(ctx context.Context, cl *kgo.Client, topics ...string) (map[string][16]byte, error) {
	ds, err := kadm.NewClient(cl).ListTopics(ctx, topics...)
	if err == nil {
		err = ds.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("topic IDs of %v: %w", topics, err)
	}
	ids := make(map[string][16]byte)
	for t, d := range ds {
		ids[t] = d.ID
	}
	return ids, nil
}

// txnCommitOffsets puts offs, the consumer's polled offsets, into prod's open
// transaction. Only for a transaction that produced: kgo's EndTransaction
// sends no EndTxn for one that did not, and the offsets would hang until
// the transaction timeout. The request carries topic IDs as well as names,
// for TxnOffsetCommit v6 (KIP-1319), which commits by ID.
func txnCommitOffsets(ctx context.Context, prod, cons *kgo.Client, txnID, group string, ids map[string][16]byte, offs map[string]map[int32]kgo.EpochOffset) error {
	id, epoch, err := prod.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("producer id: %w", err)
	}
	member, gen := cons.GroupMetadata()
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID = txnID
	req.Group = group
	req.ProducerID, req.ProducerEpoch = id, epoch
	req.MemberID, req.Generation = member, gen
	for topic, parts := range offs {
		rt := kmsg.NewTxnOffsetCommitRequestTopic()
		rt.Topic, rt.TopicID = topic, ids[topic]
		for p, eo := range parts {
			rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
			rp.Partition, rp.Offset, rp.LeaderEpoch = p, eo.Offset, eo.Epoch
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, prod)
	if err != nil {
		return fmt.Errorf("txn offset commit: %w", err)
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return fmt.Errorf("txn offset commit %s[%d] (v%d): %w", t.Topic, p.Partition, resp.Version, err)
			}
		}
	}
	return nil
}

// rawOverlapCopy is rawOneClientCopy with the end of each transaction
// overlapped by the next one's polls: after the flush it takes the polled
// offsets, sends TxnOffsetCommit and EndTransaction on a goroutine, and
// polls on meanwhile. A benchmark loop, not a safe one, as rawManualCopy.
func rawOverlapCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	consOpts, prodOpts, txnID := manualOpts(e, in, out, group)
	cl, err := kgo.NewClient(append(consOpts, prodOpts[1:]...)...)
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	ids, err := topicIDs(ctx, cl, in)
	if err != nil {
		return result{}, err
	}
	return rawTxnCopy(ctx, n, rawTxn{begin: cl.BeginTransaction, poll: cl.PollRecords, produce: cl.Produce,
		flush: cl.Flush, offsets: cl.UncommittedOffsets,
		during: func(ctx context.Context, offs map[string]map[int32]kgo.EpochOffset) error {
			if err := txnCommitOffsets(ctx, cl, cl, txnID, group, ids, offs); err != nil {
				return err
			}
			return cl.EndTransaction(ctx, kgo.TryCommit)
		},
		end: func(context.Context, map[string]map[int32]kgo.EpochOffset) (bool, error) {
			cl.AllowRebalance()
			return true, nil
		}})
}

// rawGTSOverlapCopy is the raw GroupTransactSession loop with each
// transaction's flush overlapped by the next one's polls: it takes the
// polled offsets, flushes on a goroutine and polls on meanwhile; End's
// TxnOffsetCommit is rewritten to the offsets taken (PreTxnCommitFnContext).
// A benchmark loop, not a safe one: an End that does not commit ends the
// turn (kgo would rewind to offsets past the held records).
func rawGTSOverlapCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	s, err := rawSession(e, "bench-rawov-txn", in, out, group)
	if err != nil {
		return result{}, err
	}
	defer s.Close()
	cl := s.Client()
	return rawTxnCopy(ctx, n, rawTxn{begin: s.Begin, poll: s.PollRecords, produce: s.Produce, offsets: cl.UncommittedOffsets,
		during: func(ctx context.Context, _ map[string]map[int32]kgo.EpochOffset) error { return cl.Flush(ctx) },
		end: func(ctx context.Context, offs map[string]map[int32]kgo.EpochOffset) (bool, error) {
			return s.End(kgo.PreTxnCommitFnContext(ctx, func(req *kmsg.TxnOffsetCommitRequest) error {
				topics := req.Topics[:0]
				for _, rt := range req.Topics {
					parts := rt.Partitions[:0]
					for _, rp := range rt.Partitions {
						if eo, ok := offs[rt.Topic][rp.Partition]; ok {
							rp.Offset, rp.LeaderEpoch = eo.Offset, eo.Epoch
							parts = append(parts, rp)
						}
					}
					if rt.Partitions = parts; len(parts) > 0 {
						topics = append(topics, rt)
					}
				}
				req.Topics = topics
				return nil
			}), kgo.TryCommit)
		}})
}
