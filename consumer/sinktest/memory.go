package sinktest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
)

// Memory is an in-memory database for sinks: rows (the records written)
// and, per group and partition, the offset after the last written record
// and the epoch of the latest claim, changed under one lock as one database
// transaction would change them. Its sinks ([Memory.NewSink]) keep the
// rules of [consumer.Sink] and pass [Run]; read them as a model for a sink
// of your own, or use them to test code around a [consumer.SinkConsumer]
// without a database. Rows live as long as the Memory: it is for tests,
// not for production. It is safe for concurrent use.
type Memory struct {
	mu     sync.Mutex
	rows   map[partition][]*kgo.Record
	next   map[claimKey]int64 // offset after the last written record
	epochs map[claimKey]int64 // epoch of the latest claim
}

type partition struct {
	topic string
	part  int32
}

type claimKey struct {
	group string
	partition
}

// NewMemory returns an empty database.
func NewMemory() *Memory {
	return &Memory{rows: map[partition][]*kgo.Record{}, next: map[claimKey]int64{}, epochs: map[claimKey]int64{}}
}

// NewSink returns a sink into m for one consumer (one group member): it
// remembers the epochs of the partitions it claimed. Each record it writes
// becomes a row; apply, if not nil, runs first for each record, inside
// Write's transaction, and an error from it fails the Write: nothing of the
// batch is stored, offset included.
func (m *Memory) NewSink(apply func(*kgo.Record) error) *MemorySink {
	return &MemorySink{m: m, apply: apply, claims: map[partition]claim{}}
}

// Records returns copies of the rows of topic: partition by partition in
// ascending order, each in the order written, as [kdelivertest.Audit] takes
// them.
func (m *Memory) Records(topic string) []*kgo.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	var parts []int32
	for p := range m.rows {
		if p.topic == topic {
			parts = append(parts, p.part)
		}
	}
	slices.Sort(parts)
	var out []*kgo.Record
	for _, p := range parts {
		for _, r := range m.rows[partition{topic, p}] {
			c := *r
			out = append(out, &c)
		}
	}
	return out
}

// Offsets returns the offsets stored for group's partitions of topic: the
// offset after the last record written to each.
func (m *Memory) Offsets(group, topic string) map[int32]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[int32]int64{}
	for k, o := range m.next {
		if k.group == group && k.topic == topic {
			out[k.part] = o
		}
	}
	return out
}

// MemorySink is a [consumer.Sink] into a [Memory]. Build it with
// [Memory.NewSink]; use a new one for each consumer.
type MemorySink struct {
	m     *Memory
	apply func(*kgo.Record) error

	mu     sync.Mutex
	claims map[partition]claim
}

type claim struct {
	group string
	epoch int64
}

var _ consumer.Sink = (*MemorySink)(nil)

// Assign implements [consumer.Sink]: it claims each partition with a new
// epoch and returns the offsets stored for those written before.
func (s *MemorySink) Assign(ctx context.Context, a consumer.Assignment) (map[string]map[int32]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	claimed := map[partition]claim{}
	out := map[string]map[int32]int64{}
	s.m.mu.Lock()
	for t, ps := range a.Partitions {
		for _, p := range ps {
			k := claimKey{a.Group, partition{t, p}}
			s.m.epochs[k]++
			claimed[k.partition] = claim{a.Group, s.m.epochs[k]}
			if next, ok := s.m.next[k]; ok {
				if out[t] == nil {
					out[t] = map[int32]int64{}
				}
				out[t][p] = next
			}
		}
	}
	s.m.mu.Unlock()
	s.mu.Lock()
	maps.Copy(s.claims, claimed)
	s.mu.Unlock()
	return out, nil
}

// Revoke implements [consumer.Sink]: later Writes to the partitions fail
// fenced.
func (s *MemorySink) Revoke(partitions map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range partitions {
		for _, p := range ps {
			delete(s.claims, partition{t, p})
		}
	}
}

// Write implements [consumer.Sink]: in one transaction it checks this
// sink's claim on the partition, stores the records at or above the stored
// offset (after apply accepted each) and the offset after the last one.
func (s *MemorySink) Write(ctx context.Context, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	first := recs[0]
	p := partition{first.Topic, first.Partition}
	s.mu.Lock()
	c, ok := s.claims[p]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s/%d is not assigned to this sink", kdeliver.ErrFenced, p.topic, p.part)
	}
	k := claimKey{c.group, p}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if e := s.m.epochs[k]; e != c.epoch {
		return fmt.Errorf("%w: %s/%d was claimed again (epoch %d, this sink's %d)", kdeliver.ErrFenced, p.topic, p.part, e, c.epoch)
	}
	next, stored := s.m.next[k]
	if !stored {
		next = -1
	}
	var staged []*kgo.Record
	for _, r := range recs {
		if r.Offset < next {
			continue // written before: a redelivery
		}
		if s.apply != nil {
			if err := s.apply(r); err != nil {
				return fmt.Errorf("sinktest: apply %s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
			}
		}
		c := *r
		c.Headers = slices.Clone(r.Headers)
		c.Key, c.Value = slices.Clone(r.Key), slices.Clone(r.Value)
		staged = append(staged, &c)
		next = r.Offset + 1
	}
	if len(staged) == 0 {
		return nil
	}
	s.m.rows[p] = append(s.m.rows[p], staged...)
	s.m.next[k] = next
	return nil
}
