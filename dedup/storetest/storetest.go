// Package storetest checks that a [dedup.Store] keeps the rules that
// [dedup.Guard] relies on. Every store in kdeliver passes it; a third-party
// store should too:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) dedup.Store { return mystore.New(...) })
//	}
//
// The suite uses keys unique to each run, so stores backed by a shared
// server need no cleaning between runs. It waits for leases and TTLs of a
// few hundred milliseconds to expire, so a run takes a few seconds.
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kdeliver/kdeliver/dedup"
)

const (
	long  = time.Minute
	short = 300 * time.Millisecond
)

// Run runs the conformance suite as subtests of t. newStore is called once
// per subtest; stores may share their backing server.
func Run(t *testing.T, newStore func(t *testing.T) dedup.Store) {
	t.Helper()
	run := rand.Text()[:8]
	key := func(t *testing.T, name string) string {
		return "storetest:" + run + ":" + t.Name() + ":" + name
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s dedup.Store, key func(string) string)
	}{
		{"ReserveFreshKey", testReserveFresh},
		{"CheckDoesNotMark", testCheckDoesNotMark},
		{"ConfirmMarksDone", testConfirm},
		{"ConfirmIsIdempotent", testConfirmIdempotent},
		{"ReleaseAfterConfirmKeepsDone", testReleaseAfterConfirm},
		{"LeaseExpiryLetsAnotherTakeOver", testLeaseExpiry},
		{"StaleReleaseKeepsNewLease", testStaleRelease},
		{"TTLExpiry", testTTLExpiry},
		{"ConcurrentReserveOneWinner", testConcurrentOneWinner},
		{"ConcurrentDistinctKeys", testConcurrentDistinct},
		{"CanceledContext", testCanceled},
		{"GuardFailureIsRedelivered", testGuard},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			tc.fn(t, s, func(name string) string { return key(t, name) })
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func reserve(t *testing.T, s dedup.Store, key string, lease time.Duration) (dedup.Status, string) {
	t.Helper()
	st, token, err := s.Reserve(ctxT(t), key, lease)
	if err != nil {
		t.Fatalf("Reserve(%q): %v", key, err)
	}
	switch st {
	case dedup.Acquired:
		if token == "" {
			t.Fatalf("Reserve(%q) = Acquired with an empty token", key)
		}
	case dedup.Done, dedup.Held:
		if token != "" {
			t.Fatalf("Reserve(%q) = %s with token %q, want none", key, st, token)
		}
	default:
		t.Fatalf("Reserve(%q) returned invalid status %s", key, st)
	}
	return st, token
}

func want(t *testing.T, s dedup.Store, key string, wantSt dedup.Status) string {
	t.Helper()
	st, token := reserve(t, s, key, long)
	if st != wantSt {
		t.Fatalf("Reserve(%q) = %s, want %s", key, st, wantSt)
	}
	return token
}

func confirm(t *testing.T, s dedup.Store, key string, ttl time.Duration) {
	t.Helper()
	if err := s.Confirm(ctxT(t), key, ttl); err != nil {
		t.Fatalf("Confirm(%q): %v", key, err)
	}
}

func release(t *testing.T, s dedup.Store, key, token string) {
	t.Helper()
	if err := s.Release(ctxT(t), key, token); err != nil {
		t.Fatalf("Release(%q): %v", key, err)
	}
}

// eventually reserves key until it is Acquired, for at most 15s.
func eventually(t *testing.T, s dedup.Store, key string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, token := reserve(t, s, key, long)
		if st == dedup.Acquired {
			return token
		}
		if time.Now().After(deadline) {
			t.Fatalf("Reserve(%q) still %s after 15s: the lease or TTL never expired", key, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testReserveFresh(t *testing.T, s dedup.Store, key func(string) string) {
	a := want(t, s, key("a"), dedup.Acquired)
	b := want(t, s, key("b"), dedup.Acquired)
	if a == b {
		t.Fatalf("two leases got the same token %q", a)
	}
}

// A reservation is a check, not a mark: while held, others see Held (not
// Done); once released, the key is free again.
func testCheckDoesNotMark(t *testing.T, s dedup.Store, key func(string) string) {
	k := key("k")
	token := want(t, s, k, dedup.Acquired)
	want(t, s, k, dedup.Held)
	release(t, s, k, token)
	token = want(t, s, k, dedup.Acquired)
	release(t, s, k, token)
	want(t, s, k, dedup.Acquired)
}

func testConfirm(t *testing.T, s dedup.Store, key func(string) string) {
	k, other := key("k"), key("other")
	want(t, s, k, dedup.Acquired)
	confirm(t, s, k, long)
	want(t, s, k, dedup.Done)
	want(t, s, k, dedup.Done)
	want(t, s, other, dedup.Acquired)
}

func testConfirmIdempotent(t *testing.T, s dedup.Store, key func(string) string) {
	k := key("k")
	want(t, s, k, dedup.Acquired)
	confirm(t, s, k, long)
	confirm(t, s, k, long)
	want(t, s, k, dedup.Done)
	// Confirm needs no lease: a side effect that ran is recorded.
	k2 := key("unreserved")
	confirm(t, s, k2, long)
	confirm(t, s, k2, long)
	want(t, s, k2, dedup.Done)
}

func testReleaseAfterConfirm(t *testing.T, s dedup.Store, key func(string) string) {
	k := key("k")
	token := want(t, s, k, dedup.Acquired)
	confirm(t, s, k, long)
	release(t, s, k, token)
	want(t, s, k, dedup.Done)
}

func testLeaseExpiry(t *testing.T, s dedup.Store, key func(string) string) {
	k := key("k")
	if st, _ := reserve(t, s, k, short); st != dedup.Acquired {
		t.Fatalf("Reserve = %s, want acquired", st)
	}
	eventually(t, s, k)
	want(t, s, k, dedup.Held)
}

// A lease that expired and was taken over must not be ended by its first
// holder's late Release: that would let a third caller run concurrently.
func testStaleRelease(t *testing.T, s dedup.Store, key func(string) string) {
	k := key("k")
	st, first := reserve(t, s, k, short)
	if st != dedup.Acquired {
		t.Fatalf("Reserve = %s, want acquired", st)
	}
	second := eventually(t, s, k)
	if second == first {
		t.Fatalf("the new lease reused the expired lease's token %q", first)
	}
	release(t, s, k, first)
	want(t, s, k, dedup.Held)
	release(t, s, k, second)
	want(t, s, k, dedup.Acquired)
}

func testTTLExpiry(t *testing.T, s dedup.Store, key func(string) string) {
	k, kept := key("k"), key("kept")
	want(t, s, k, dedup.Acquired)
	confirm(t, s, k, short)
	confirm(t, s, kept, long)
	eventually(t, s, k)
	want(t, s, kept, dedup.Done)
}

func testConcurrentOneWinner(t *testing.T, s dedup.Store, key func(string) string) {
	const n = 32
	k := key("k")
	statuses := race(t, n, func(ctx context.Context, _ int) (dedup.Status, error) {
		st, _, err := s.Reserve(ctx, k, long)
		return st, err
	})
	if statuses[dedup.Acquired] != 1 || statuses[dedup.Held] != n-1 {
		t.Fatalf("%d concurrent Reserve calls on one key: %v, want 1 acquired and %d held", n, statuses, n-1)
	}
	confirm(t, s, k, long)
	statuses = race(t, n, func(ctx context.Context, _ int) (dedup.Status, error) {
		st, _, err := s.Reserve(ctx, k, long)
		return st, err
	})
	if statuses[dedup.Done] != n {
		t.Fatalf("%d concurrent Reserve calls on a done key: %v, want all done", n, statuses)
	}
}

func testConcurrentDistinct(t *testing.T, s dedup.Store, key func(string) string) {
	const n, per = 8, 25
	statuses := race(t, n, func(ctx context.Context, g int) (dedup.Status, error) {
		for i := range per {
			k := key(fmt.Sprintf("%d-%d", g, i))
			st, _, err := s.Reserve(ctx, k, long)
			if err != nil || st != dedup.Acquired {
				return st, err
			}
			if err := s.Confirm(ctx, k, long); err != nil {
				return 0, err
			}
		}
		return dedup.Acquired, nil
	})
	if statuses[dedup.Acquired] != n {
		t.Fatalf("goroutines reserving distinct keys: %v, want every key acquired", statuses)
	}
	for g := range n {
		for i := range per {
			want(t, s, key(fmt.Sprintf("%d-%d", g, i)), dedup.Done)
		}
	}
}

func race(t *testing.T, n int, fn func(ctx context.Context, g int) (dedup.Status, error)) map[dedup.Status]int {
	t.Helper()
	ctx := ctxT(t)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		start = make(chan struct{})
		out   = map[dedup.Status]int{}
		errs  []error
	)
	for g := range n {
		wg.Go(func() {
			<-start
			st, err := fn(ctx, g)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out[st]++
		})
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d goroutines failed: %v", len(errs), n, errors.Join(errs...))
	}
	return out
}

// A canceled context fails every call with an error wrapping
// context.Canceled, and changes nothing.
func testCanceled(t *testing.T, s dedup.Store, key func(string) string) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	k, held := key("k"), key("held")
	if _, _, err := s.Reserve(ctx, k, long); !errors.Is(err, context.Canceled) {
		t.Fatalf("Reserve with a canceled context: err = %v, want context.Canceled", err)
	}
	token := want(t, s, k, dedup.Acquired)
	if err := s.Confirm(ctx, k, long); !errors.Is(err, context.Canceled) {
		t.Fatalf("Confirm with a canceled context: err = %v, want context.Canceled", err)
	}
	want(t, s, k, dedup.Held)
	htoken := want(t, s, held, dedup.Acquired)
	if err := s.Release(ctx, held, htoken); !errors.Is(err, context.Canceled) {
		t.Fatalf("Release with a canceled context: err = %v, want context.Canceled", err)
	}
	want(t, s, held, dedup.Held)
	release(t, s, k, token)
	want(t, s, k, dedup.Acquired)
}

// The point of keeping check and mark apart: a side effect that fails is
// run again on redelivery, and one that succeeded is not.
func testGuard(t *testing.T, s dedup.Store, key func(string) string) {
	g, err := dedup.NewGuard(s, key("ns"), dedup.WithLease(long), dedup.WithTTL(2*long))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	runs := 0
	fail := errors.New("side effect failed")
	attempt := func(err error) (dedup.Outcome, error) {
		return g.Do(ctx, key("k"), func(context.Context) error { runs++; return err })
	}
	if _, err := attempt(fail); !errors.Is(err, fail) {
		t.Fatalf("Do with a failing side effect: err = %v, want %v", err, fail)
	}
	if out, err := attempt(nil); err != nil || out != dedup.Processed {
		t.Fatalf("Do after a failure = %s, %v, want processed: a failed side effect must run again", out, err)
	}
	if out, err := attempt(nil); err != nil || out != dedup.Duplicate {
		t.Fatalf("Do after a success = %s, %v, want duplicate", out, err)
	}
	if runs != 2 {
		t.Fatalf("side effect ran %d times, want 2 (one failure, one success)", runs)
	}
}
