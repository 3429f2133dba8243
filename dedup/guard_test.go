package dedup_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/dedup"
)

// confirmCounter counts the Confirm calls that reach a store through it.
type confirmCounter struct {
	dedup.Store
	n int
}

func (c *confirmCounter) Confirm(ctx context.Context, key string, ttl time.Duration) error {
	c.n++
	return c.Store.Confirm(ctx, key, ttl)
}

// ConfirmInTx gives a guarded handler its key and TTL and takes the mark
// away from the guard: the handler's own confirm is the only one, and a
// redelivery is still skipped. Outside a guarded handler it reports false.
func TestConfirmInTx(t *testing.T) {
	if _, _, ok := dedup.ConfirmInTx(t.Context()); ok {
		t.Fatal("ConfirmInTx outside a guarded handler reported ok")
	}
	mem := dedup.NewMemory(10)
	store := &confirmCounter{Store: mem}
	g, err := dedup.NewGuard(store, "ns", dedup.WithTTL(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rec := &kgo.Record{Topic: "t", Partition: 1, Offset: 7}
	runs := 0
	h := g.Handler(func(ctx context.Context, r *kgo.Record) error {
		runs++
		key, ttl, ok := dedup.ConfirmInTx(ctx)
		if !ok || key != g.Key(r) || key != "ns:pos:t/1/7" || ttl != time.Hour {
			t.Fatalf("ConfirmInTx = %q, %v, %v; want %q, 1h, true", key, ttl, ok, g.Key(r))
		}
		if runs == 1 {
			return errors.New("transaction rolled back") // no mark: released
		}
		return mem.Confirm(ctx, key, ttl) // "in the transaction"
	})
	for i := range 3 {
		if err := h(t.Context(), rec); (err != nil) != (i == 0) {
			t.Fatalf("delivery %d: err = %v", i+1, err)
		}
	}
	if runs != 2 {
		t.Fatalf("handler ran %d times over a failure, a success and a duplicate; want 2", runs)
	}
	if store.n != 0 {
		t.Fatalf("the guard confirmed %d times after the handler took the mark", store.n)
	}
}
