package redisstore_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/internal/testenv"
	"github.com/kdeliver/kdeliver/dedup/redisstore"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// client connects to the Redis of KDELIVER_REDIS_ADDR.
func client(t testing.TB) *redis.Client {
	t.Helper()
	addr := testenv.Get(t, "KDELIVER_REDIS_ADDR", "Redis")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		testenv.Unreachable(t, "Redis at "+addr, err)
	}
	return rdb
}

func TestConformance(t *testing.T) {
	rdb := client(t)
	storetest.Run(t, func(*testing.T) dedup.Store { return redisstore.New(rdb) })
}
