package consumer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// closeClient leaves the group within ctx and closes the client. A client
// that never joined (its first join may wait on the broker until the
// rebalance timeout, and kgo's leave waits for it) or whose leave does not
// finish within ctx is closed at once without a leave: the group notices
// after its session timeout.
func (r *run) closeClient(ctx context.Context) {
	if _, gen := r.cl.GroupMetadata(); gen < 0 {
		r.kill()
	} else {
		r.cl.AllowRebalance()
		if err := r.cl.LeaveGroupContext(ctx); err != nil {
			r.c.log.Warn("leaving the group did not finish: closing without it (the group reassigns the partitions after its session timeout)", "err", err)
			r.kill()
		}
	}
	r.cl.CloseAllowingRebalance()
	r.kill()
}

// groupMetadata returns the member ID and generation for the sink's
// assignments; kgo may assign partitions before NewClient has returned.
func (r *run) groupMetadata() (string, int32) {
	if cl := r.clp.Load(); cl != nil {
		return cl.GroupMetadata()
	}
	return "", -1
}

func (r *run) markDone(rec *kgo.Record) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	tp := r.pending[rec.Topic]
	if tp == nil {
		tp = make(map[int32]kgo.EpochOffset)
		r.pending[rec.Topic] = tp
	}
	tp[rec.Partition] = kgo.EpochOffset{Epoch: rec.LeaderEpoch, Offset: rec.Offset + 1}
}

// hasPending says whether handled records wait for their commit.
func (r *run) hasPending() bool {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	return len(r.pending) > 0
}

// commitPending commits the offsets of processed records and forgets those
// that were committed.
func (r *run) commitPending(ctx context.Context) error {
	r.pmu.Lock()
	offsets := make(map[string]map[int32]kgo.EpochOffset, len(r.pending))
	for t, ps := range r.pending {
		m := make(map[int32]kgo.EpochOffset, len(ps))
		for p, o := range ps {
			m[p] = o
		}
		offsets[t] = m
	}
	r.pmu.Unlock()
	if len(offsets) == 0 {
		return nil
	}
	err := r.c.commit(ctx, r.cl, offsets)
	r.c.commitsTried.Add(1)
	if err != nil {
		return err
	}
	r.pmu.Lock()
	for t, ps := range offsets {
		for p, o := range ps {
			if r.pending[t][p] == o {
				delete(r.pending[t], p)
			}
		}
		if len(r.pending[t]) == 0 {
			delete(r.pending, t)
		}
	}
	r.pmu.Unlock()
	return nil
}

// commit commits offsets synchronously and returns the first error,
// including per-partition errors.
func (c *Consumer) commit(ctx context.Context, cl *kgo.Client, offsets map[string]map[int32]kgo.EpochOffset) (rerr error) {
	start := time.Now()
	defer func() {
		c.noteCommit(start, rerr)
		if rerr == nil {
			c.lag.Committed(offsets)
		}
	}()
	cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			rerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil && rerr == nil {
					rerr = fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, err)
				}
			}
		}
	})
	return rerr
}

// onRevoked commits what was processed before partitions move to another
// member (with a sink: drops the sink's claims, the offsets are stored
// already). It runs on kgo's group goroutine, only while Run allows
// rebalancing (between batches) or while leaving the group.
func (r *run) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	if probed(ctx) {
		return
	}
	r.assigned.Removed(ctx, nil, revoked)
	if r.crashed.Load() {
		return
	}
	if r.c.sink != nil {
		r.revokeSink(revoked)
		return
	}
	if r.eng != nil {
		r.eng.revoke(ctx, revoked, false)
		return
	}
	r.pmu.Lock()
	n := 0
	for _, ps := range r.pending {
		n += len(ps)
	}
	r.pmu.Unlock()
	if n > 0 {
		if err := r.commitPending(ctx); err != nil {
			r.c.log.Warn("commit on revoke failed: the new owner repeats records after the last commit", "err", err)
		} else {
			r.c.revokeCommits.Add(1)
			r.c.log.Info("committed on revoke", "partitions", n)
		}
	}
	r.forget(revoked)
}

// onLost forgets offsets of partitions lost without a clean revoke: the
// group may have given them to another member, whose progress a late
// commit from here would overwrite.
func (r *run) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	if probed(ctx) {
		return
	}
	r.assigned.Removed(ctx, nil, lost)
	if r.c.sink != nil {
		r.c.log.Warn("partitions lost: the sink's claims on them are dropped", "partitions", lost)
		r.revokeSink(lost)
		return
	}
	r.c.log.Warn("partitions lost: their uncommitted progress will be repeated", "partitions", lost)
	if r.eng != nil {
		r.eng.revoke(ctx, lost, true)
		return
	}
	r.forget(lost)
}

func (r *run) forget(parts map[string][]int32) {
	r.c.lag.Forget(parts)
	r.pmu.Lock()
	defer r.pmu.Unlock()
	for t, ps := range parts {
		for _, p := range ps {
			delete(r.pending[t], p)
		}
		if len(r.pending[t]) == 0 {
			delete(r.pending, t)
		}
	}
}

// probeKey marks the ctx of New's calls to the client's callbacks.
type probeKey struct{}

// probed reports whether ctx is a probe from [probeCallbacks], and notes
// that one of kdeliver's callbacks received it.
func probed(ctx context.Context) bool {
	hit, _ := ctx.Value(probeKey{}).(*atomic.Bool)
	if hit == nil {
		return false
	}
	hit.Store(true)
	return true
}

// probeCallbacks reports whether the built client's revoke, lost and
// adjust-offsets callbacks are still kdeliver's. kgo wraps callbacks, so
// they cannot be compared; instead each is called with no partitions and a
// cancelled ctx marked as a probe, which kdeliver's callbacks only note. A
// raw callback that replaced ours gets an empty call, which kgo makes too (a
// cooperative rebalance revoking nothing). The mark is in the ctx, so a real
// callback that kgo runs meanwhile (the group may be joined during New) is
// not mistaken for the probe.
func probeCallbacks(cl *kgo.Client) (revoked, lost, adjust bool) {
	probe := func(call func(ctx context.Context)) bool {
		var hit atomic.Bool
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), probeKey{}, &hit))
		cancel()
		call(ctx)
		return hit.Load()
	}
	callback := func(opt any) bool {
		fn, ok := cl.OptValue(opt).(func(context.Context, *kgo.Client, map[string][]int32))
		return ok && fn != nil && probe(func(ctx context.Context) { fn(ctx, cl, map[string][]int32{}) })
	}
	fn, ok := cl.OptValue(kgo.AdjustFetchOffsetsFn).(func(context.Context, map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error))
	adjust = ok && fn != nil && probe(func(ctx context.Context) { _, _ = fn(ctx, map[string]map[int32]kgo.Offset{}) })
	return callback(kgo.OnPartitionsRevoked), callback(kgo.OnPartitionsLost), adjust
}
