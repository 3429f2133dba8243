package pgstore

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
)

// ApplyFunc applies one record's side effect inside tx. It must do all its
// writes through tx and must not commit or roll it back. An error rolls back
// the whole batch: nothing of it is applied and its offset is not stored.
type ApplyFunc func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error

// Sink is a [consumer.Sink] into PostgreSQL: each [Sink.Write] runs the
// records' ApplyFunc and stores the offset after the last record in one
// transaction, so the side effects and the consumer's position cannot
// diverge. It is exactly-once with no dedup table: a redelivered record is
// below the stored offset and skipped.
//
// A Sink serves one consumer (one group member): it remembers the epochs of
// the partitions that member claimed. Each [Sink.Assign] increments the
// partitions' epochs in the offsets table; each Write locks the partition's
// row (SELECT ... FOR UPDATE) and fails with [kdeliver.ErrFenced] unless the
// epoch is still the one this Sink claimed. Two writers of one partition are
// thus serialized by the row lock, and the one that lost the partition
// writes nothing.
type Sink struct {
	pool  *pgxpool.Pool
	apply ApplyFunc
	sql   sinkSQL

	mu     sync.Mutex
	claims map[tp]claim
}

type tp struct {
	topic     string
	partition int32
}

type claim struct {
	group string
	epoch int64
}

type sinkSQL struct{ create, assign, lock, advance string }

var _ consumer.Sink = (*Sink)(nil)

// NewSink returns a sink that applies records with apply in pool's
// database; the caller keeps and closes pool. Call [Sink.CreateTable] once
// before use. Use a new Sink for each consumer.
func NewSink(pool *pgxpool.Pool, apply ApplyFunc, opts ...Option) *Sink {
	t := tableName(DefaultOffsetsTable, opts)
	return &Sink{
		pool:   pool,
		apply:  apply,
		claims: make(map[tp]claim),
		sql: sinkSQL{
			create: `CREATE TABLE IF NOT EXISTS ` + t + ` (
	group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
	next_offset bigint NOT NULL, epoch bigint NOT NULL,
	generation integer NOT NULL, member_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (group_id, topic, partition))`,
			assign: `INSERT INTO ` + t + ` AS o (group_id, topic, partition, next_offset, epoch, generation, member_id)
SELECT $1, tp.topic, tp.partition, -1, 1, $4, $5 FROM unnest($2::text[], $3::integer[]) AS tp(topic, partition)
ON CONFLICT (group_id, topic, partition) DO UPDATE
SET epoch = o.epoch + 1, generation = EXCLUDED.generation, member_id = EXCLUDED.member_id, updated_at = now()
RETURNING topic, partition, next_offset, epoch`,
			lock:    `SELECT next_offset, epoch FROM ` + t + ` WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE`,
			advance: `UPDATE ` + t + ` SET next_offset = $4, updated_at = now() WHERE group_id = $1 AND topic = $2 AND partition = $3`,
		},
	}
}

// CreateTable creates the offsets table if it does not exist.
func (s *Sink) CreateTable(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, s.sql.create)
	return wrap("create table", err)
}

// Assign implements [consumer.Sink]: it claims the partitions in one statement
// (incrementing each one's epoch) and returns the stored offsets.
func (s *Sink) Assign(ctx context.Context, a consumer.Assignment) (map[string]map[int32]int64, error) {
	var (
		topics []string
		parts  []int32
	)
	for t, ps := range a.Partitions {
		for _, p := range ps {
			topics = append(topics, t)
			parts = append(parts, p)
		}
	}
	if len(topics) == 0 {
		return nil, nil
	}
	// Lock rows in one order, so that two members claiming overlapping
	// partitions cannot deadlock.
	sort.Sort(byTP{topics, parts})
	rows, err := s.pool.Query(ctx, s.sql.assign, a.Group, topics, parts, a.Generation, a.MemberID)
	if err != nil {
		return nil, wrap("assign", err)
	}
	claimed := make(map[tp]claim, len(topics))
	out := make(map[string]map[int32]int64)
	var (
		topic     string
		partition int32
		next      int64
		epoch     int64
	)
	_, err = pgx.ForEachRow(rows, []any{&topic, &partition, &next, &epoch}, func() error {
		claimed[tp{topic, partition}] = claim{a.Group, epoch}
		if next >= 0 {
			if out[topic] == nil {
				out[topic] = make(map[int32]int64)
			}
			out[topic][partition] = next
		}
		return nil
	})
	if err != nil {
		return nil, wrap("assign", err)
	}
	s.mu.Lock()
	for k, c := range claimed {
		s.claims[k] = c
	}
	s.mu.Unlock()
	return out, nil
}

// Revoke implements [consumer.Sink].
func (s *Sink) Revoke(partitions map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range partitions {
		for _, p := range ps {
			delete(s.claims, tp{t, p})
		}
	}
}

// Write implements [consumer.Sink]. Records below the stored offset are
// skipped; if all are, nothing is written. ApplyFunc errors are returned as
// they are; database errors wrap [dedup.ErrStore]. A failed COMMIT may still
// have committed: writing the batch again is safe.
func (s *Sink) Write(ctx context.Context, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	first := recs[0]
	key := tp{first.Topic, first.Partition}
	s.mu.Lock()
	c, ok := s.claims[key]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s/%d is not assigned to this consumer", kdeliver.ErrFenced, first.Topic, first.Partition)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return wrap("begin", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	var next, stored int64
	if err := tx.QueryRow(ctx, s.sql.lock, c.group, key.topic, key.partition).Scan(&next, &stored); err != nil {
		return wrap("lock offsets", err)
	}
	if stored != c.epoch {
		return fmt.Errorf("%w: %s/%d was claimed again (epoch %d, this consumer's %d)", kdeliver.ErrFenced, key.topic, key.partition, stored, c.epoch)
	}
	last := int64(-1)
	for _, r := range recs {
		if r.Offset < next {
			continue
		}
		if err := s.apply(ctx, tx, r); err != nil {
			return fmt.Errorf("pgstore: apply %s: %w", dedup.Position(r), err)
		}
		last = r.Offset
	}
	if last < 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, s.sql.advance, c.group, key.topic, key.partition, last+1); err != nil {
		return wrap("store offset", err)
	}
	return wrap("commit", tx.Commit(ctx))
}

type byTP struct {
	topics []string
	parts  []int32
}

func (b byTP) Len() int { return len(b.topics) }
func (b byTP) Less(i, j int) bool {
	if b.topics[i] != b.topics[j] {
		return b.topics[i] < b.topics[j]
	}
	return b.parts[i] < b.parts[j]
}
func (b byTP) Swap(i, j int) {
	b.topics[i], b.topics[j] = b.topics[j], b.topics[i]
	b.parts[i], b.parts[j] = b.parts[j], b.parts[i]
}
