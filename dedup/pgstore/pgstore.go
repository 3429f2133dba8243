// Package pgstore keeps kdeliver's dedup state in PostgreSQL (pgx), in two
// forms:
//
//   - [Store], a [dedup.Store]: one row a key, for side effects anywhere
//     (an HTTP call, another database). [Store.ConfirmTx] marks a key in the
//     transaction of a side effect kept in the same database.
//   - [Sink], a [consumer.Sink] for consumer.NewWithSink: exactly-once into
//     PostgreSQL with no dedup table. The side effects of a batch of records
//     and the consumed offset commit in one transaction; a consumer resumes
//     from the stored offset, and a consumer that lost the partition is
//     fenced by an epoch (kdeliver.ErrFenced). It passes consumer/sinktest.
//
// # Tables
//
// [Store.CreateTable] and [Sink.CreateTable] create the tables if they do not
// exist (names set by [WithTable]):
//
//	kdeliver_dedup   (key text PRIMARY KEY, token text, expires_at timestamptz)
//	kdeliver_offsets (group_id, topic, partition PRIMARY KEY, next_offset, epoch, generation, member_id, updated_at)
//
// Expired dedup rows are reused by Reserve, and removed by [Store.Purge]:
// call it periodically so the table holds about one TTL of keys. The offsets
// table holds one row a partition.
//
// Times are the database's (now()), so clocks of consumer hosts do not
// matter.
package pgstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kdeliver/kdeliver/dedup"
)

// Default table names.
const (
	DefaultDedupTable   = "kdeliver_dedup"
	DefaultOffsetsTable = "kdeliver_offsets"
)

// Option configures a [Store] or a [Sink].
type Option func(*config)

type config struct{ table string }

// WithTable names the table, overriding [DefaultDedupTable] for a Store and
// [DefaultOffsetsTable] for a Sink. The name may be schema-qualified
// ("app.dedup").
func WithTable(name string) Option { return func(c *config) { c.table = name } }

func tableName(def string, opts []Option) string {
	c := config{table: def}
	for _, o := range opts {
		o(&c)
	}
	return pgx.Identifier(splitDots(c.table)).Sanitize()
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// Store is a [dedup.Store] in PostgreSQL. It is safe for concurrent use.
type Store struct {
	pool                             *pgxpool.Pool
	create, reserve, confirm, delete string
	purge                            string
}

var _ dedup.Store = (*Store)(nil)

// New returns a store in pool's database; the caller keeps and closes
// pool. Call [Store.CreateTable] once before use.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	t := tableName(DefaultDedupTable, opts)
	return &Store{
		pool:   pool,
		create: `CREATE TABLE IF NOT EXISTS ` + t + ` (key text PRIMARY KEY, token text, expires_at timestamptz NOT NULL)`,
		// One round trip. The outer SELECT sees the snapshot from before a
		// concurrent insert, so a conflict may read NULL: that is reported as
		// held, and the caller asks again.
		reserve: `WITH ins AS (
	INSERT INTO ` + t + ` AS d (key, token, expires_at) VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
	ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at WHERE d.expires_at <= now()
	RETURNING 1)
SELECT EXISTS (SELECT FROM ins), (SELECT token IS NULL FROM ` + t + ` WHERE key = $1 AND expires_at > now())`,
		confirm: `INSERT INTO ` + t + ` (key, token, expires_at) VALUES ($1, NULL, now() + $2::bigint * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET token = NULL, expires_at = EXCLUDED.expires_at`,
		delete: `DELETE FROM ` + t + ` WHERE key = $1 AND token = $2`,
		purge:  `DELETE FROM ` + t + ` WHERE expires_at <= now()`,
	}
}

// CreateTable creates the store's table if it does not exist.
func (s *Store) CreateTable(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, s.create)
	return wrap("create table", err)
}

// Reserve implements [dedup.Store].
func (s *Store) Reserve(ctx context.Context, key string, lease time.Duration) (dedup.Status, string, error) {
	token := rand.Text()
	var (
		acquired bool
		done     *bool
	)
	if err := s.pool.QueryRow(ctx, s.reserve, key, token, ms(lease)).Scan(&acquired, &done); err != nil {
		return 0, "", wrap("reserve", err)
	}
	switch {
	case acquired:
		return dedup.Acquired, token, nil
	case done != nil && *done:
		return dedup.Done, "", nil
	}
	return dedup.Held, "", nil
}

// Confirm implements [dedup.Store].
func (s *Store) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	_, err := s.pool.Exec(ctx, s.confirm, key, ms(ttl))
	return wrap("confirm", err)
}

// ConfirmTx marks key done inside tx, the transaction of a side effect in
// the same database, so that both commit or neither does. Use it with
// [dedup.Guard.DoTx].
func (s *Store) ConfirmTx(ctx context.Context, tx pgx.Tx, key string, ttl time.Duration) error {
	_, err := tx.Exec(ctx, s.confirm, key, ms(ttl))
	return wrap("confirm", err)
}

// Release implements [dedup.Store].
func (s *Store) Release(ctx context.Context, key, token string) error {
	if token == "" {
		return ctx.Err()
	}
	_, err := s.pool.Exec(ctx, s.delete, key, token)
	return wrap("release", err)
}

// Purge deletes expired keys and leases and returns how many it deleted.
func (s *Store) Purge(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, s.purge)
	return tag.RowsAffected(), wrap("purge", err)
}

func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

func wrap(op string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: postgres %s: %w", dedup.ErrStore, op, err)
}
