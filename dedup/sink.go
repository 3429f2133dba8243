package dedup

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrFenced is returned by [Sink.Write] when this consumer no longer holds
// the partition's claim: another consumer was assigned the partition after
// this one (a rebalance this member missed, e.g. after a long pause), or the
// partition was revoked. Nothing was written. Stop processing the
// partition; its records are the new owner's.
var ErrFenced = errors.New("dedup: partition claimed by another consumer")

// Assignment is what a consumer was given in one rebalance.
type Assignment struct {
	Group      string
	MemberID   string // the group member ID, for diagnostics
	Generation int32  // the group generation, for diagnostics
	// Partitions lists the newly assigned partitions by topic.
	Partitions map[string][]int32
}

// Sink is a destination that stores the consumer's offsets in its own
// transactions, next to the side effects: exactly-once without a dedup
// table. A record's side effect and the offset after it commit together, so
// after a crash the consumer resumes exactly where the sink's state ends.
//
// The consumer calls the sink in this order; consumer.New with
// kdeliver.ExactlyOnce and consumer.WithSink does it (a poll loop of your
// own can use [AdjustFetchOffsets] for step 1):
//
//  1. Assign, when partitions are assigned and before they are fetched; the
//     consumer starts each partition at the returned offset, and where none
//     is returned at its usual start (the group's offset committed in
//     Kafka, else the earliest record).
//  2. Write, for each batch of one partition's records, in offset order.
//     The consumer does not commit offsets to Kafka: the sink holds them.
//     On an error other than [ErrFenced] it writes the same batch again
//     (records the sink already has are skipped, so a retry after an
//     ambiguous commit is safe); on ErrFenced it drops the partition's
//     records.
//  3. Revoke, when partitions are revoked or lost, after the last Write for
//     them returned.
//
// Assign claims each partition with a fencing token (an epoch that the sink
// increments on every assignment, stored with the offset): a Write from a
// consumer whose claim was superseded fails with ErrFenced and writes
// nothing.
//
// Assign, Write and Revoke for different partitions may be called
// concurrently: kgo claims newly assigned partitions while the poll loop
// writes others.
type Sink interface {
	// Assign claims the partitions of a for this consumer and returns the
	// offset to resume at (the offset after the last written record) for
	// each partition the sink has written before.
	Assign(ctx context.Context, a Assignment) (map[string]map[int32]int64, error)
	// Write applies the side effects of recs, all from one partition in
	// ascending offset order, and stores the offset after the last one, in
	// one transaction, provided this consumer's claim on the partition
	// still holds. Records below the stored offset are skipped.
	Write(ctx context.Context, recs []*kgo.Record) error
	// Revoke drops this consumer's claims on partitions; later Writes for
	// them fail with ErrFenced.
	Revoke(partitions map[string][]int32)
}

// AdjustFetchOffsets returns the function for [kgo.AdjustFetchOffsetsFn]
// that claims newly assigned partitions with [Sink.Assign] and starts each
// at the sink's stored offset (others keep the offset kgo chose). meta
// returns the member ID and generation for the [Assignment]
// ([kgo.Client.GroupMetadata]). kgo calls it after OnPartitionsAssigned and
// before fetching; an error makes the member rejoin, so nothing is fetched
// from a position the sink did not give.
func AdjustFetchOffsets(s Sink, group string, meta func() (member string, generation int32)) func(context.Context, map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	return func(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		member, gen := meta()
		a := Assignment{Group: group, MemberID: member, Generation: gen, Partitions: make(map[string][]int32, len(offsets))}
		for t, ps := range offsets {
			for p := range ps {
				a.Partitions[t] = append(a.Partitions[t], p)
			}
		}
		stored, err := s.Assign(ctx, a)
		if err != nil {
			return nil, fmt.Errorf("dedup: sink assign: %w", err)
		}
		for t, ps := range stored {
			for p, off := range ps {
				if _, ok := offsets[t][p]; ok {
					offsets[t][p] = kgo.NewOffset().At(off).WithEpoch(-1)
				}
			}
		}
		return offsets, nil
	}
}
