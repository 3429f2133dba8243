package txnwatch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Assignment is the partitions a group member owns, kept from kgo's
// assignment callbacks, for [Watcher]'s partitions function.
type Assignment struct {
	mu    sync.Mutex
	parts map[string]map[int32]bool
}

// Assigned adds partitions (kgo.OnPartitionsAssigned).
func (a *Assignment) Assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.parts == nil {
		a.parts = map[string]map[int32]bool{}
	}
	for t, ps := range assigned {
		if a.parts[t] == nil {
			a.parts[t] = map[int32]bool{}
		}
		for _, p := range ps {
			a.parts[t][p] = true
		}
	}
}

// Removed drops partitions (kgo.OnPartitionsRevoked, kgo.OnPartitionsLost).
func (a *Assignment) Removed(_ context.Context, _ *kgo.Client, removed map[string][]int32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for t, ps := range removed {
		for _, p := range ps {
			delete(a.parts[t], p)
		}
		if len(a.parts[t]) == 0 {
			delete(a.parts, t)
		}
	}
}

// Owned returns the partitions owned.
func (a *Assignment) Owned() map[string][]int32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string][]int32, len(a.parts))
	for t, ps := range a.parts {
		for p := range ps {
			out[t] = append(out[t], p)
		}
	}
	return out
}

// Start runs a [Watcher] of a client's owned partitions until ctx ends:
// each report is logged as a warning, counted in n and passed to report
// (if not nil). The returned function waits for the watcher to stop.
func Start(ctx context.Context, cl *kgo.Client, bound time.Duration, owned func() map[string][]int32, report func(Report), n *atomic.Int64, log *slog.Logger) (wait func()) {
	w, err := New(cl, bound, owned, func(r Report) {
		n.Add(1)
		log.Warn("kdeliver: " + r.String())
		if report != nil {
			report(r)
		}
	}, func(format string, args ...any) {
		log.Warn("hanging-transaction watch: " + fmt.Sprintf(format, args...))
	})
	if err != nil { // the option checked the bound
		log.Error("hanging-transaction watch not started", "err", err)
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx)
	}()
	return func() { <-done }
}
