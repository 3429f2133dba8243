package dedup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// Default lease and TTL of a [Guard].
const (
	DefaultLease = 30 * time.Second
	DefaultTTL   = 24 * time.Hour
)

// Option configures a [Guard]. kdeliver.Option values are Options too (the
// guard uses the logger); an option of another package is not, and does
// not compile here.
type Option interface {
	ApplyGuard(*shared.Target)
}

type option func(*config)

// ApplyGuard applies the option; [NewGuard] calls it.
func (o option) ApplyGuard(t *shared.Target) { o(t.Pkg.(*config)) }

type config struct {
	lease time.Duration
	ttl   time.Duration
	key   func(*kgo.Record) string
}

// WithLease sets how long a reservation stays held while the side effect
// runs, overriding [DefaultLease]. It must exceed the longest side effect: a
// lease that expires mid-run lets a redelivery run the side effect again.
// A crash leaves the key held until the lease expires, so the lease is also
// how long a redelivered record waits after a crash.
func WithLease(d time.Duration) Option {
	return option(func(c *config) { c.lease = d })
}

// WithTTL sets how long a key stays done after its side effect, overriding
// [DefaultTTL]. It must cover the window in which a duplicate can arrive:
// redelivery after a crash or rebalance, and producer re-sends. It must
// exceed the lease.
func WithTTL(d time.Duration) Option {
	return option(func(c *config) { c.ttl = d })
}

// WithKey sets how a record's key is derived, overriding [DefaultKey]. A
// key must be the same for every delivery of one message and differ between
// messages; an empty key is an error.
func WithKey(f func(*kgo.Record) string) Option {
	return option(func(c *config) { c.key = f })
}

// Outcome is what [Guard.Do] did with a key.
type Outcome uint8

const (
	// Processed means the side effect ran and succeeded, and the key was
	// confirmed.
	Processed Outcome = iota + 1
	// Duplicate means the key was already done: the side effect was not run.
	Duplicate
)

func (o Outcome) String() string {
	switch o {
	case Processed:
		return "processed"
	case Duplicate:
		return "duplicate"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// ErrNoKey is returned by [Guard.Handler] for a record whose key function
// returned "": nothing identifies it, so it was not processed. Fix the key
// function or have the producer stamp [kdeliver.HeaderMessageID].
var ErrNoKey = errors.New("dedup: record has no key")

// Guard runs a side effect at most once per key while keeping at-least-once:
// a key is reserved, the side effect runs, and only a success marks the key
// done. A failure releases the key, so the redelivered record runs again.
// Under an at-least-once consumer this makes the effect of each record
// happen once, with the limits below.
//
// Limits: a process that dies after the side effect and before Confirm
// leaves the key unmarked, and the redelivered record runs again once the
// lease expires. [Guard.DoTx] (or [ConfirmInTx] in a [Guard.Handler])
// closes that window when the side effect and the mark can share a
// transaction (pgstore.Store.ConfirmTx, redisstore.Store.ConfirmTx). Keys
// are kept for the TTL only.
//
// A Guard is safe for concurrent use. Two callers with the same key never
// run the side effect at the same time: the second waits while the first
// holds the lease.
type Guard struct {
	store     Store
	namespace string
	lease     time.Duration
	ttl       time.Duration
	key       func(*kgo.Record) string
	log       *slog.Logger

	duplicates, storeErrors, takeovers atomic.Int64
}

// GuardStats are a guard's figures since it was built.
type GuardStats struct {
	// Duplicates counts keys found done: side effects not run again.
	Duplicates int64
	// StoreErrors counts failed store calls (reserve, confirm, release).
	StoreErrors int64
	// Takeovers counts keys acquired after waiting for another holder:
	// its lease expired (it crashed or outran the lease) or it released
	// the key after failing.
	Takeovers int64
}

// Stats returns the guard's figures. It is safe to call at any time.
func (g *Guard) Stats() GuardStats {
	return GuardStats{Duplicates: g.duplicates.Load(), StoreErrors: g.storeErrors.Load(), Takeovers: g.takeovers.Load()}
}

// NewGuard returns a guard over store. namespace is prepended to every key,
// so that consumers with different side effects sharing one store do not
// see each other's keys: use the consumer group, or the name of the side
// effect. It returns an error wrapping [kdeliver.ErrInvalidConfig] listing
// every problem with the arguments and options.
func NewGuard(store Store, namespace string, opts ...Option) (*Guard, error) {
	c := config{lease: DefaultLease, ttl: DefaultTTL, key: DefaultKey}
	t := &shared.Target{Pkg: &c}
	var ps preset.Problems
	for i, o := range opts {
		if o == nil {
			ps.Add(true, fmt.Sprintf("option %d of %d is nil: remove it", i+1, len(opts)))
			continue
		}
		o.ApplyGuard(t)
	}
	t.Finish()
	for _, p := range t.Problems {
		ps.Add(true, p)
	}
	ps.Add(store == nil, "the store is nil: pass dedup.NewMemory, redisstore.New or pgstore.New")
	ps.Add(namespace == "", "the namespace is empty: name the consumer group or the side effect")
	ps.Add(c.lease <= 0, "the lease must be positive")
	ps.Add(c.ttl <= c.lease, fmt.Sprintf("the TTL (%s) must exceed the lease (%s): a key must stay done longer than a run can take", c.ttl, c.lease))
	ps.Add(c.key == nil, "the key function is nil")
	if err := ps.Err("dedup guard", 0); err != nil {
		return nil, err
	}
	return &Guard{store: store, namespace: namespace + ":", lease: c.lease, ttl: c.ttl, key: c.key, log: t.Shared.Log()}, nil
}

// Key returns the store key of a record: the namespace followed by the key
// function's result, or "" when the key function returns "".
func (g *Guard) Key(r *kgo.Record) string {
	k := g.key(r)
	if k == "" {
		return ""
	}
	return g.namespace + k
}

// Do runs fn unless key is done, and marks key done when fn succeeds.
//
// It reserves key; while another caller holds it, Do waits and asks again
// until ctx ends. When the key is done it returns [Duplicate] without
// running fn. Otherwise it runs fn: on success it confirms the key and
// returns [Processed]; on failure it releases the key and returns fn's
// error, so a retry runs fn again. A store error is returned before fn runs.
//
// key is used as given: [Guard.Key] adds the namespace to a record's key.
// After fn succeeded, Confirm is retried (even if ctx is canceled) for up to
// the lease, since failing to mark would let a redelivery run fn again.
func (g *Guard) Do(ctx context.Context, key string, fn func(ctx context.Context) error) (Outcome, error) {
	return g.do(ctx, key, func(ctx context.Context) (bool, error) { return false, fn(ctx) })
}

// DoTx is [Guard.Do] for a side effect that marks key done in its own
// transaction: fn must confirm key with the given TTL inside the
// transaction that holds the side effect (pgstore.Store.ConfirmTx,
// redisstore.Store.ConfirmTx), so that the side effect and the mark commit
// together and no crash can separate them. DoTx does not confirm.
func (g *Guard) DoTx(ctx context.Context, key string, fn func(ctx context.Context, key string, ttl time.Duration) error) (Outcome, error) {
	return g.do(ctx, key, func(ctx context.Context) (bool, error) { return true, fn(ctx, key, g.ttl) })
}

func (g *Guard) do(ctx context.Context, key string, fn func(ctx context.Context) (confirmed bool, err error)) (Outcome, error) {
	if key == "" {
		return 0, ErrNoKey
	}
	token, err := g.reserve(ctx, key)
	if err != nil {
		return 0, err
	}
	if token == "" {
		g.duplicates.Add(1)
		return Duplicate, nil
	}
	confirmed, err := fn(ctx)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(g.lease, 5*time.Second))
		defer cancel()
		if rerr := g.store.Release(rctx, key, token); rerr != nil {
			g.storeErrors.Add(1)
			// The lease expires on its own; a retry just waits for it.
			g.log.Warn("dedup: release failed; the key stays held until its lease expires", "error", rerr)
		}
		return 0, err
	}
	if !confirmed {
		if err := g.confirm(ctx, key); err != nil {
			return 0, err
		}
	}
	return Processed, nil
}

// reserve returns the lease token, "" when key is done.
func (g *Guard) reserve(ctx context.Context, key string) (string, error) {
	wait := 10 * time.Millisecond
	maxWait := min(g.lease/4, time.Second)
	for waited := false; ; waited = true {
		st, token, err := g.store.Reserve(ctx, key, g.lease)
		if err != nil {
			g.storeErrors.Add(1)
			return "", fmt.Errorf("dedup: reserve: %w", err)
		}
		switch st {
		case Acquired:
			if waited {
				g.takeovers.Add(1)
			}
			return token, nil
		case Done:
			return "", nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("dedup: waiting for a key held by another consumer: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, maxWait)
	}
}

func (g *Guard) confirm(ctx context.Context, key string) error {
	if ctx.Err() == nil {
		if g.store.Confirm(ctx, key, g.ttl) == nil {
			return nil
		}
		g.storeErrors.Add(1)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.lease)
	defer cancel()
	wait := 50 * time.Millisecond
	for {
		err := g.store.Confirm(cctx, key, g.ttl)
		if err == nil {
			return nil
		}
		g.storeErrors.Add(1)
		if cctx.Err() != nil {
			return fmt.Errorf("dedup: the side effect ran but could not be marked done; a redelivery will run it again: %w", err)
		}
		g.log.Warn("dedup: confirm failed; retrying", "error", err)
		t := time.NewTimer(wait)
		select {
		case <-cctx.Done():
			t.Stop()
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// Handler wraps a record handler so that records already processed are
// skipped: a record whose key is done returns nil without calling h; a
// record whose h fails is released for redelivery. Its signature matches
// consumer.Handler. A record with no key returns [ErrNoKey].
//
// h runs as the fn of [Guard.Do]: the guard confirms the key after h
// returns nil, unless h took the confirmation into its own transaction with
// [ConfirmInTx] (as with [Guard.DoTx]).
//
// consumer.NewWithGuard uses it: the consumer
// commits after the handler returns nil, and the guard absorbs the
// redeliveries.
func (g *Guard) Handler(h func(ctx context.Context, r *kgo.Record) error) func(ctx context.Context, r *kgo.Record) error {
	return func(ctx context.Context, r *kgo.Record) error {
		key := g.Key(r)
		if key == "" {
			return fmt.Errorf("%w: %s", ErrNoKey, Position(r))
		}
		res := &reservation{key: key, ttl: g.ttl}
		_, err := g.do(ctx, key, func(ctx context.Context) (bool, error) {
			err := h(context.WithValue(ctx, reservationKey{}, res), r)
			return res.inTx.Load(), err
		})
		return err
	}
}

// reservation is the key whose side effect a [Guard.Handler] is running,
// carried in the handler's ctx for [ConfirmInTx].
type reservation struct {
	key  string
	ttl  time.Duration
	inTx atomic.Bool // the handler confirms the key in its transaction
}

type reservationKey struct{}

// ConfirmInTx hands the mark of the record in hand over to the side
// effect's own transaction. Called in a handler run by [Guard.Handler] (and
// so by consumer.NewWithGuard), it returns the key and TTL to confirm inside
// the transaction that holds the side effect (pgstore.Store.ConfirmTx,
// redisstore.Store.ConfirmTx), and tells the guard not to confirm the key
// itself when the handler returns nil. The side effect and its mark then
// commit together, as with [Guard.DoTx], so no crash can leave a side
// effect done but unmarked.
//
// Once it has called ConfirmInTx, the handler must either commit the mark
// with its side effect and return nil, or return an error (the key is then
// released). A handler that returns nil without having confirmed leaves the
// key held until its lease expires, and unmarked.
//
// ok is false, and nothing changes, when ctx is not a guarded handler's.
func ConfirmInTx(ctx context.Context) (key string, ttl time.Duration, ok bool) {
	res, _ := ctx.Value(reservationKey{}).(*reservation)
	if res == nil {
		return "", 0, false
	}
	res.inTx.Store(true)
	return res.key, res.ttl, true
}
