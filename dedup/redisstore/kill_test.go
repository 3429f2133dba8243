package redisstore_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/internal/killtest"
	"github.com/kdeliver/kdeliver/dedup/redisstore"
)

const (
	killRecords = 50_000
	envRun      = "KDELIVER_REDIS_KILLTEST_RUN"
)

// 50,000 records through an exactly-once consumer guarded by the Redis
// store (consumer.NewWithGuard), by consumer processes killed with SIGKILL 5
// times and once more after a rebalance between two instances. The side
// effect is a counter per message ID in Redis, incremented in the same
// MULTI/EXEC as the dedup mark (dedup.ConfirmInTx + Store.ConfirmTx): every
// counter ends at exactly 1.
func TestGuardExactlyOnceUnderSIGKILL(t *testing.T) {
	if _, _, child := killtest.Child(); child {
		t.Skip("child process")
	}
	rdb := client(t)
	run := rand.Text()[:8]
	effects := "killtest:" + run + ":effects"
	t.Cleanup(func() { rdb.Del(context.Background(), effects, effects+":skipped") })
	rep := killtest.Run(t, killtest.Plan{
		Records:    killRecords,
		Partitions: 6,
		Kills:      5,
		ChildTest:  "TestGuardKillChild",
		Env:        []string{envRun + "=" + run},
		Slow:       time.Millisecond,
		Progress: func(ctx context.Context) (int, error) {
			n, err := rdb.HLen(ctx, effects).Result()
			return int(n), err
		},
	})
	counts, err := rdb.HGetAll(t.Context(), effects).Result()
	if err != nil {
		t.Fatal(err)
	}
	var total, dups int
	for _, v := range counts {
		n, _ := strconv.Atoi(v)
		total += n
		if n > 1 {
			dups += n - 1
		}
	}
	lost := 0
	for i := range killRecords {
		if _, ok := counts[killtest.ID(i)]; !ok {
			lost++
		}
	}
	skipped, _ := rdb.Get(t.Context(), effects+":skipped").Int()
	t.Logf("kills=%d rebalances=%d elapsed=%s effects=%d distinct=%d duplicates=%d lost=%d redeliveries skipped by the guard=%d",
		rep.Kills, rep.Rebalances, rep.Elapsed.Round(time.Millisecond), total, len(counts), dups, lost, skipped)
	if dups != 0 || lost != 0 || total != killRecords {
		t.Fatalf("side effects: %d for %d records: %d duplicates, %d lost", total, killRecords, dups, lost)
	}
}

// TestGuardKillChild is the consumer process of TestGuardExactlyOnceUnderSIGKILL.
func TestGuardKillChild(t *testing.T) {
	brokers, slow, ok := killtest.Child()
	if !ok {
		t.Skip("helper process of TestGuardExactlyOnceUnderSIGKILL")
	}
	rdb := client(t)
	run := os.Getenv(envRun)
	effects := "killtest:" + run + ":effects"
	store := redisstore.New(rdb, redisstore.WithPrefix("killtest:"+run+":dedup:"))
	// A killed process leaves its in-flight key held: the lease is how long
	// the redelivered record waits.
	guard, err := dedup.NewGuard(skipCounter{store, rdb, effects + ":skipped"}, killtest.Group,
		dedup.WithLease(2*time.Second), dedup.WithTTL(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c, err := consumer.NewWithGuard(brokers, killtest.Group, []string{killtest.Topic}, guard,
		consumer.WithKgoOpts(killtest.ClientOpts(nil)[1:]...))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	// The guard runs the handler only for records not done yet; the
	// handler marks the key in the MULTI/EXEC of its side effect.
	handler := func(ctx context.Context, r *kgo.Record) error {
		if slow > 0 && r.Offset%10 == 0 {
			time.Sleep(slow)
		}
		key, ttl, ok := dedup.ConfirmInTx(ctx)
		if !ok {
			return errors.New("not run by the guard")
		}
		_, err := rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.HIncrBy(ctx, effects, dedup.MessageID(r), 1)
			store.ConfirmTx(ctx, pipe, key, ttl)
			return nil
		})
		return err
	}
	if err := c.Run(t.Context(), handler); err != nil {
		fmt.Fprintln(os.Stderr, "run:", err)
		t.Fatal(err)
	}
}

// skipCounter counts in Redis the reservations that found a key done: the
// redeliveries that the guard skipped.
type skipCounter struct {
	dedup.Store
	rdb     *redis.Client
	counter string
}

func (s skipCounter) Reserve(ctx context.Context, key string, lease time.Duration) (dedup.Status, string, error) {
	st, token, err := s.Store.Reserve(ctx, key, lease)
	if err == nil && st == dedup.Done {
		s.rdb.Incr(ctx, s.counter)
	}
	return st, token, err
}
