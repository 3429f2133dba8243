package dedup_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemoryConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(*testing.T) dedup.Store { return dedup.NewMemory(10_000) })
}

func TestMemoryBound(t *testing.T) {
	ctx := context.Background()
	m := dedup.NewMemory(3)
	for _, k := range []string{"a", "b", "c"} {
		if err := m.Confirm(ctx, k, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	// Touch "a" so that "b" is the least recently used.
	if st, _, _ := m.Reserve(ctx, "a", time.Minute); st != dedup.Done {
		t.Fatalf("a = %s, want done", st)
	}
	if err := m.Confirm(ctx, "d", time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := m.Len(); n != 3 {
		t.Fatalf("Len = %d, want the bound 3", n)
	}
	for k, want := range map[string]dedup.Status{"a": dedup.Done, "c": dedup.Done, "d": dedup.Done} {
		if st, _, _ := m.Reserve(ctx, k, time.Minute); st != want {
			t.Errorf("%s = %s, want %s", k, st, want)
		}
	}
	if st, _, _ := m.Reserve(ctx, "b", time.Minute); st != dedup.Acquired {
		t.Errorf("b = %s, want acquired: it was the least recently used and evicted", st)
	}
}
