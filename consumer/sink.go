package consumer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

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
// A consumer built with [NewWithSink] calls the sink in this order (a poll
// loop of your own can use [AdjustFetchOffsets] for step 1):
//
//  1. Assign, when partitions are assigned and before they are fetched; the
//     consumer starts each partition at the returned offset, and where none
//     is returned at its usual start (the group's offset committed in
//     Kafka, else the earliest record).
//  2. Write, for each batch of one partition's records, in offset order.
//     The consumer does not commit offsets to Kafka: the sink holds them.
//     On an error other than one matching [kdeliver.ErrFenced] it writes
//     the same batch again (records the sink already has are skipped, so a
//     retry after an ambiguous commit is safe); on a fence it drops the
//     partition's records: they are the new owner's.
//  3. Revoke, when partitions are revoked or lost, after the last Write for
//     them returned.
//
// Assign claims each partition with a fencing token (an epoch that the sink
// increments on every assignment, stored with the offset): a Write from a
// consumer whose claim was superseded fails with an error matching
// [kdeliver.ErrFenced] and writes nothing. Package consumer/sinktest checks
// these rules; every Sink should pass it.
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
	// still holds (else it fails with an error matching
	// kdeliver.ErrFenced). Records below the stored offset are skipped.
	Write(ctx context.Context, recs []*kgo.Record) error
	// Revoke drops this consumer's claims on partitions; later Writes for
	// them fail with an error matching kdeliver.ErrFenced.
	Revoke(partitions map[string][]int32)
}

// AdjustFetchOffsets returns the function for [kgo.AdjustFetchOffsetsFn]
// that claims newly assigned partitions with [Sink.Assign] and starts each
// at the sink's stored offset (others keep the offset kgo chose). meta
// returns the member ID and generation for the [Assignment]
// ([kgo.Client.GroupMetadata]). kgo calls it after OnPartitionsAssigned and
// before fetching; an error (a panic in Assign becomes one matching
// [kdeliver.ErrPanic]) makes the member rejoin, so nothing is fetched from
// a position the sink did not give.
func AdjustFetchOffsets(s Sink, group string, meta func() (member string, generation int32)) func(context.Context, map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	return func(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		member, gen := meta()
		a := Assignment{Group: group, MemberID: member, Generation: gen, Partitions: make(map[string][]int32, len(offsets))}
		for t, ps := range offsets {
			for p := range ps {
				a.Partitions[t] = append(a.Partitions[t], p)
			}
		}
		stored, err := assign(ctx, s, a)
		if err != nil {
			return nil, fmt.Errorf("kdeliver: sink assign: %w", err)
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

// assign calls s.Assign, turning a panic into an error: it runs on kgo's
// group goroutine, where a panic would end the process.
func assign(ctx context.Context, s Sink, a Assignment) (stored map[string]map[int32]int64, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
		}
	}()
	return s.Assign(ctx, a)
}

// revokeSink calls the sink's Revoke, logging a panic: it runs on kgo's
// group goroutine, where a panic would end the process. The sink's epochs
// still fence the partitions off once another member claims them.
func (r *run) revokeSink(parts map[string][]int32) {
	defer func() {
		if v := recover(); v != nil {
			r.c.log.Error("sink revoke panicked", "partitions", parts, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	r.c.sink.Revoke(parts)
}

// writeSink writes each partition's records of the batch to the sink, one
// Write per partition, retrying failures. Nothing is committed to Kafka: the
// sink stores the offsets in the same transaction as the records.
func (r *run) writeSink(runCtx, hardCtx context.Context, fetches kgo.Fetches) error {
	var stopErr error
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if stopErr != nil || len(p.Records) == 0 || runCtx.Err() != nil {
			// Unwritten records are read again from the sink's offset
			// by the partition's next owner.
			return
		}
		first := p.Records[0]
		_, stopErr = r.retry(runCtx, hardCtx, first, "sink write", func(int) error {
			err := r.write(hardCtx, p.Records)
			if errors.Is(err, kdeliver.ErrFenced) {
				last := p.Records[len(p.Records)-1]
				r.c.log.Warn("sink fenced this consumer off the partition: dropping its records (the owner writes them)",
					"topic", p.Topic, "partition", p.Partition, "from", first.Offset, "to", last.Offset, "err", err)
				return nil
			}
			return err
		})
		if stopErr == nil && runCtx.Err() == nil {
			r.c.stats.handled.Add(int64(len(p.Records)))
		}
	})
	return stopErr
}

// write calls the sink's Write, turning a panic into an error.
func (r *run) write(ctx context.Context, recs []*kgo.Record) (err error) {
	defer func() {
		if v := recover(); v != nil {
			r.c.log.Error("sink write panicked", "topic", recs[0].Topic, "partition", recs[0].Partition, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
		}
	}()
	return r.c.sink.Write(ctx, recs)
}

// SinkConsumer reads records of a consumer group into a [Sink], which
// stores each partition's records and the offset after them in one
// transaction of its own: exactly once into the sink, with no dedup table.
// Build it with [NewWithSink]. Its lifecycle is a [Consumer]'s; its methods
// are safe for concurrent use.
type SinkConsumer struct {
	c *Consumer
}

// NewWithSink builds an [kdeliver.ExactlyOnce] consumer of topics for group
// that writes into sink. Offsets are never committed to Kafka: on
// assignment each partition starts at the offset the sink stored
// ([AdjustFetchOffsets]), and each poll's records of a partition go to one
// [Sink.Write]. A Sink serves one consumer: use a new one for each. See
// "Choosing semantics" in the package doc for what it guarantees; the
// options and errors are those of [New].
func NewWithSink(brokers []string, group string, topics []string, sink Sink, opts ...Option) (*SinkConsumer, error) {
	var refusal string
	switch {
	case sink == nil:
		refusal = "the sink is nil: pass a consumer.Sink such as pgstore.NewSink"
	case nilPointer(sink):
		refusal = fmt.Sprintf("the sink is a nil %T: pass one made by its constructor (such as pgstore.NewSink)", sink)
	}
	c, err := newConsumer("sink consumer", brokers, group, topics, kdeliver.ExactlyOnce, nil, sink, opts, refusal)
	if err != nil {
		return nil, err
	}
	return &SinkConsumer{c: c}, nil
}

// nilPointer reports whether s holds a nil pointer, whose methods would
// panic on kgo's goroutines (where a panic cannot be recovered).
func nilPointer(s Sink) bool {
	v := reflect.ValueOf(s)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// Run reads the group into the sink until ctx is cancelled, Close is called
// or a Write keeps failing, as [Consumer.Run] (the sink write in hand
// finishes). A failing Write is retried with backoff like a handler
// ([kdeliver.WithBackoff], [kdeliver.WithMaxAttempts]); there is no [Skip],
// since skipping a batch would lose it.
func (s *SinkConsumer) Run(ctx context.Context) error { return s.c.run(ctx, nil, nil) }

// Ping is [Consumer.Ping].
func (s *SinkConsumer) Ping(ctx context.Context) error { return s.c.Ping(ctx) }

// Close is [Consumer.Close].
func (s *SinkConsumer) Close(ctx context.Context) error { return s.c.Close(ctx) }

// Semantics returns [kdeliver.ExactlyOnce].
func (s *SinkConsumer) Semantics() kdeliver.Semantics { return kdeliver.ExactlyOnce }
