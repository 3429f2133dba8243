// Package redisstore is a [dedup.Store] in Redis, shared by every consumer
// process that uses the same Redis.
//
// Each key is one Redis string under a prefix: a lease is "l:" + token with
// the lease as its expiry (PX), a done key is "d" with the TTL as its expiry,
// so Redis removes expired entries itself and nothing grows without bound.
// Reserve and Release are Lua scripts (one round trip, atomic); Confirm is a
// SET.
//
// Durability is Redis's: a key confirmed just before a Redis crash without
// persistence (AOF with fsync) is forgotten, and its record can be processed
// again. [Store.ConfirmTx] puts the mark in the same MULTI/EXEC as a side
// effect kept in Redis, so that both happen or neither.
package redisstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kdeliver/kdeliver/dedup"
)

// DefaultPrefix is prepended to every key unless [WithPrefix] says otherwise.
const DefaultPrefix = "kdeliver:dedup:"

const done = "d"

var reserveScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return 1
end
if v == 'd' then return 2 end
return 3
`)

var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Option configures a [Store].
type Option func(*Store)

// WithPrefix prepends prefix to every Redis key, overriding [DefaultPrefix].
func WithPrefix(prefix string) Option { return func(s *Store) { s.prefix = prefix } }

// Store is a [dedup.Store] in Redis. It is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

var _ dedup.Store = (*Store)(nil)

// New returns a store using rdb, which the caller keeps and closes. In a
// Redis Cluster each key is a single slot, so any client works.
func New(rdb redis.UniversalClient, opts ...Option) *Store {
	s := &Store{rdb: rdb, prefix: DefaultPrefix}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Reserve implements [dedup.Store].
func (s *Store) Reserve(ctx context.Context, key string, lease time.Duration) (dedup.Status, string, error) {
	token := "l:" + rand.Text()
	n, err := reserveScript.Run(ctx, s.rdb, []string{s.prefix + key}, token, ms(lease)).Int()
	if err != nil {
		return 0, "", wrap("reserve", err)
	}
	switch n {
	case 1:
		return dedup.Acquired, token, nil
	case 2:
		return dedup.Done, "", nil
	case 3:
		return dedup.Held, "", nil
	}
	return 0, "", fmt.Errorf("%w: reserve script returned %d", dedup.ErrStore, n)
}

// Confirm implements [dedup.Store].
func (s *Store) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	return wrap("confirm", s.rdb.Set(ctx, s.prefix+key, done, ttl).Err())
}

// ConfirmTx queues the mark of key into pipe, a MULTI/EXEC transaction that
// also holds the side effect (redis.Client.TxPipelined), so that both are
// applied together. Use it with [dedup.Guard.DoTx].
func (s *Store) ConfirmTx(ctx context.Context, pipe redis.Pipeliner, key string, ttl time.Duration) {
	pipe.Set(ctx, s.prefix+key, done, ttl)
}

// Release implements [dedup.Store].
func (s *Store) Release(ctx context.Context, key, token string) error {
	if token == "" {
		return ctx.Err()
	}
	return wrap("release", releaseScript.Run(ctx, s.rdb, []string{s.prefix + key}, token).Err())
}

func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

func wrap(op string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: redis %s: %w", dedup.ErrStore, op, err)
}
