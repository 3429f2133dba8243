package txnwatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
)

// OpenTransaction is a transaction open on one partition, as the
// partition's leader sees it (DescribeProducers), with what the
// transaction coordinator knows of its producer.
type OpenTransaction struct {
	Topic     string
	Partition int32
	Leader    int32 // the partition's leader, which answered

	ProducerID       int64
	ProducerEpoch    int16
	CoordinatorEpoch int32
	// StartOffset is the transaction's first offset on the partition:
	// read_committed consumers stop there until it ends.
	StartOffset int64
	// LastProduce is when the producer last wrote to the partition.
	LastProduce time.Time

	// TransactionalID and State are the coordinator's (ListTransactions,
	// DescribeTransactions): "" when no coordinator knows the producer
	// ID, which makes the transaction hanging for good (only an abort
	// ends it). TimeoutMillis is the transaction timeout the producer
	// asked for, 0 when unknown.
	TransactionalID string
	State           string
	TimeoutMillis   int32
}

// String describes t in one line.
func (t OpenTransaction) String() string {
	id := "no coordinator knows it"
	if t.TransactionalID != "" {
		id = fmt.Sprintf("transactional ID %q, %s", t.TransactionalID, t.State)
	}
	return fmt.Sprintf("%s[%d] from offset %d: producer ID %d epoch %d (%s), last produced %s",
		t.Topic, t.Partition, t.StartOffset, t.ProducerID, t.ProducerEpoch, id, t.LastProduce.UTC().Format(time.RFC3339))
}

// OpenTransactions returns the transactions open on the partitions of
// topics (every partition of every topic when topics is empty), ordered by
// topic, partition and start offset. With a non-nil error the list may
// still hold what the brokers that answered said.
func OpenTransactions(ctx context.Context, adm *kadm.Client, topics kadm.TopicsSet) ([]OpenTransaction, error) {
	described, err := adm.DescribeProducers(ctx, topics)
	var errs []error
	if err != nil {
		if len(described) == 0 {
			return nil, fmt.Errorf("describe producers: %w", err)
		}
		errs = append(errs, fmt.Errorf("describe producers: %w", err))
	}
	var open []OpenTransaction
	pids := map[int64]bool{}
	for _, dp := range described.SortedPartitions() {
		if dp.Err != nil {
			errs = append(errs, fmt.Errorf("describe producers of %s[%d]: %w", dp.Topic, dp.Partition, dp.Err))
			continue
		}
		for _, p := range dp.ActiveProducers.Sorted() {
			if p.CurrentTxnStartOffset < 0 {
				continue // idempotent, or between transactions
			}
			open = append(open, OpenTransaction{
				Topic: p.Topic, Partition: p.Partition, Leader: p.Leader,
				ProducerID: p.ProducerID, ProducerEpoch: p.ProducerEpoch, CoordinatorEpoch: p.CoordinatorEpoch,
				StartOffset: p.CurrentTxnStartOffset, LastProduce: time.UnixMilli(p.LastTimestamp),
			})
			pids[p.ProducerID] = true
		}
	}
	if len(pids) > 0 {
		ids := make([]int64, 0, len(pids))
		for id := range pids {
			ids = append(ids, id)
		}
		listed, err := adm.ListTransactions(ctx, ids, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("list the transactions of the open transactions' producers: %w", err))
		}
		byPID := map[int64]kadm.ListedTransaction{}
		for _, l := range listed {
			if pids[l.ProducerID] { // brokers before 3.0 ignore the filter
				byPID[l.ProducerID] = l
			}
		}
		var described kadm.DescribedTransactions
		if len(byPID) > 0 {
			txnIDs := make([]string, 0, len(byPID))
			for _, l := range byPID {
				txnIDs = append(txnIDs, l.TxnID)
			}
			if described, err = adm.DescribeTransactions(ctx, txnIDs...); err != nil {
				errs = append(errs, fmt.Errorf("describe the transactions of the open transactions' producers: %w", err))
			}
		}
		for i := range open {
			l, ok := byPID[open[i].ProducerID]
			if !ok {
				continue
			}
			open[i].TransactionalID, open[i].State = l.TxnID, l.State
			if d, ok := described[l.TxnID]; ok && d.Err == nil {
				open[i].State, open[i].TimeoutMillis = d.State, d.TimeoutMillis
			}
		}
	}
	return open, errors.Join(errs...)
}

// FindOpen returns the transaction open on partition of topic: the one of
// producerID, or with producerID -1 the only one. It is an error when there
// is none, or several and producerID is -1.
func FindOpen(ctx context.Context, adm *kadm.Client, topic string, partition int32, producerID int64) (OpenTransaction, error) {
	open, err := OpenTransactions(ctx, adm, kadm.TopicsSet{topic: {partition: {}}})
	var on []OpenTransaction
	for _, t := range open {
		if t.Topic == topic && t.Partition == partition && (producerID < 0 || t.ProducerID == producerID) {
			on = append(on, t)
		}
	}
	switch {
	case len(on) == 0 && err != nil:
		return OpenTransaction{}, fmt.Errorf("txnwatch: find the open transaction on %s[%d]: %w", topic, partition, err)
	case len(on) == 0 && producerID >= 0:
		return OpenTransaction{}, fmt.Errorf("txnwatch: producer ID %d has no open transaction on %s[%d]: nothing to abort (check the ID with kdeliver txns list --hanging)",
			producerID, topic, partition)
	case len(on) == 0:
		return OpenTransaction{}, fmt.Errorf("txnwatch: no open transaction on %s[%d]: nothing to abort", topic, partition)
	case len(on) > 1:
		var ids []string
		for _, t := range on {
			ids = append(ids, fmt.Sprintf("%d (from offset %d)", t.ProducerID, t.StartOffset))
		}
		return OpenTransaction{}, fmt.Errorf("txnwatch: %d transactions are open on %s[%d], of producer IDs %s: choose one with --producer-id (the oldest holds the last stable offset)",
			len(on), topic, partition, strings.Join(ids, ", "))
	}
	return on[0], nil
}

// Abort aborts the transaction open on partition of topic, the way Kafka's
// kafka-transactions.sh abort does (KIP-664): it writes an abort marker
// with the producer ID, epoch and coordinator epoch the partition's leader
// reports, which discards the transaction's records on that partition and
// frees its last stable offset. producerID chooses the transaction when
// several are open on the partition; -1 takes the only one. It returns
// the transaction aborted ([FindOpen] chooses it).
//
// Abort only the transaction of a producer that will not resume: the
// coordinator does not learn of the abort (it aborts its own view of the
// transaction when the transaction times out), and a producer that resumes
// could still commit the rest of its transaction without the records
// discarded here.
func Abort(ctx context.Context, adm *kadm.Client, topic string, partition int32, producerID int64) (OpenTransaction, error) {
	t, err := FindOpen(ctx, adm, topic, partition, producerID)
	if err != nil {
		return t, err
	}
	resp, err := adm.WriteTxnMarkers(ctx, kadm.TxnMarkers{
		ProducerID:       t.ProducerID,
		ProducerEpoch:    t.ProducerEpoch,
		Commit:           false,
		CoordinatorEpoch: t.CoordinatorEpoch,
		Topics:           kadm.TopicsSet{topic: {partition: {}}},
	})
	if err != nil {
		return t, fmt.Errorf("txnwatch: write the abort marker of producer ID %d on %s[%d]: %w", t.ProducerID, topic, partition, err)
	}
	pr, ok := resp[t.ProducerID].Topics[topic].Partitions[partition]
	switch {
	case !ok:
		return t, fmt.Errorf("txnwatch: write the abort marker of producer ID %d on %s[%d]: the leader's answer does not name the partition; check with kdeliver txns list --hanging",
			t.ProducerID, topic, partition)
	case pr.Err != nil:
		return t, fmt.Errorf("txnwatch: write the abort marker of producer ID %d on %s[%d]: %w (a retriable error such as NOT_LEADER: run the abort again)",
			t.ProducerID, topic, partition, pr.Err)
	}
	return t, nil
}
