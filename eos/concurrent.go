package eos

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/inflight"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// With kdeliver.WithConcurrency(n > 1, order), one transaction's records run
// on up to n goroutines (a fan), in lanes that keep the order asked for: a
// partition (ByPartition) or a key of a partition (ByKey) runs one record at
// a time, in offset order; Unordered and ByKey records without a key have no
// lane. What makes it exactly once:
//
//   - A record's outputs are produced, under the fan's lock, after its
//     handler returned and before the next record of its lane starts, so
//     the outputs of a lane are produced in lane order (kgo keeps the order
//     of produce calls per output partition).
//   - A transaction commits, per input partition, exactly the records whose
//     outputs it holds, and they are a prefix of what was polled: once the
//     transaction is cut (its count or interval reached, Run stopping),
//     no record starts unless an already started record of its partition
//     comes after it (a hole, possible in ByKey lanes: it runs, so the
//     handled records stay a prefix); the first record not handled of
//     each partition is the offset committed, and the client is moved
//     back to it. A handler that fails while Run stops leaves a record not
//     done; if a later record of its partition is done, the transaction is
//     aborted rather than committed (inflight.Offsets checks the prefix).
//   - A failure, a crash or an abort stops every start; the records in
//     flight finish, and the transaction ends (aborts) only when no
//     handler runs, so nothing is produced into the next one.
//
// The first poll of a transaction takes every buffered record, so that the
// partitions share the transaction's record count (a bounded poll is served
// from one partition first); records not taken by the transaction are
// fetched again after it commits. At most WithMaxInFlight records are
// handed to lanes at once, each partition its share.

// fan is the state of one transaction's concurrent handling. Its fields
// are guarded by mu.
type fan struct {
	l        *loop
	t        *txn
	ctx      context.Context // Run's
	deadline time.Time
	n        int // handler goroutines
	order    kdeliver.Ordering
	max      int // records in lanes (queued or running)

	mu      sync.Mutex
	cond    *sync.Cond // signalled when a handler returns or the fan stops
	parts   map[tp]*part
	list    []*part // parts in order of first poll, for round robin
	rr      int
	lanes   *inflight.Lanes[lane, *kgo.Record]
	ready   []*kgo.Record // records free to start, waiting for a goroutine
	running int           // handler goroutines
	taken   int           // records the transaction took from the polls
	waiting int           // records in the backlogs
	held    int           // records taken and not finished
	started int
	// full: the transaction takes no more records (those taken run);
	// cut: no record starts but holes; halted: none starts at all (an
	// abort or a crash); solo: the transaction's first record is the
	// slow one (loop.solo), and nothing else starts before it finishes.
	full, cut, halted, solo bool
	stopPoll                context.CancelFunc // cancels the poll in progress
	callers                 []*caller
}

type tp struct {
	topic     string
	partition int32
}

// lane names a lane: a partition, or a key of a partition.
type lane struct {
	tp
	key string
}

var laneSeed = maphash.MakeSeed()

func (l lane) hash() uint64 { return maphash.Comparable(laneSeed, l) }

// part is one input partition in a transaction.
type part struct {
	tp
	backlog    []*kgo.Record // polled, not taken yet
	offs       *inflight.Offsets
	held       int   // taken and not finished
	maxStarted int64 // highest offset started, -1 before any
	maxDone    int64 // highest offset done, -1 before any
}

// handleConcurrently handles the records of fs, and of further polls, on
// the fan until the transaction is full, its interval is up, Run stops or
// a record fails; it returns once no handler runs, with t's cut set for
// what was not handled.
func (l *loop) handleConcurrently(ctx context.Context, t *txn, fs kgo.Fetches, deadline time.Time) {
	s := l.s
	f := &fan{l: l, t: t, ctx: ctx, deadline: deadline, n: s.hd.Concurrency, order: kdeliver.Ordering(s.hd.Order),
		max: s.hd.MaxInFlight, parts: map[tp]*part{}, lanes: inflight.NewLanes[lane, *kgo.Record](lane.hash)}
	if f.max == 0 {
		f.max = shared.DefaultMaxInFlight(f.n)
	}
	f.cond = sync.NewCond(&f.mu)
	t.makePromise()

	f.mu.Lock()
	f.add(fs)
	f.fill()
	for {
		for !f.over() && !f.wantPoll() {
			f.cond.Wait()
		}
		if f.over() {
			break
		}
		pctx, cancel := context.WithDeadline(ctx, deadline)
		f.stopPoll = cancel
		f.mu.Unlock()
		fs := t.sess.PollRecords(pctx, -1)
		cancel()
		f.mu.Lock()
		f.stopPoll = nil
		if fs.IsClientClosed() {
			t.abort(reasonShutdown)
			f.halt()
			break
		}
		if err := l.pollErrors(fs); err != nil {
			// Nothing of this poll starts; the transaction aborts and
			// Run returns err.
			t.abort(reasonFatal)
			t.fatal = err
			f.halt()
			break
		}
		f.add(fs)
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			f.stop()
			break
		}
		f.fill()
	}
	// Start what may still start (holes), then wait for every handler.
	f.dispatch()
	for f.running > 0 {
		f.cond.Wait()
	}
	f.settleCut()
	f.mu.Unlock()
}

// add puts the records of fs in their partitions' backlogs.
func (f *fan) add(fs kgo.Fetches) {
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 {
			return
		}
		k := tp{p.Topic, p.Partition}
		pt := f.parts[k]
		if pt == nil {
			pt = &part{tp: k, offs: inflight.NewOffsets(), maxStarted: -1, maxDone: -1}
			f.parts[k] = pt
			f.list = append(f.list, pt)
		}
		pt.backlog = append(pt.backlog, p.Records...)
		f.waiting += len(p.Records)
	})
}

// over reports that the transaction takes no more records.
func (f *fan) over() bool {
	return f.halted || f.cut || f.full || f.taken >= f.l.s.cfg.commitRecords
}

// wantPoll reports that the transaction could take records the backlogs do
// not have: it has room, and fewer records wait than it may still take
// (which bounds the backlogs when their partitions hold their share).
func (f *fan) wantPoll() bool {
	left := f.l.s.cfg.commitRecords - f.taken
	return !f.solo && f.held < f.max && left > 0 && f.waiting < left
}

// stop cuts the transaction: no record starts but holes.
func (f *fan) stop() {
	if !f.cut {
		f.cut = true
		f.wake()
	}
}

// halt stops every start: the transaction aborts (or crashed).
func (f *fan) halt() {
	if !f.halted {
		f.halted = true
		f.wake()
	}
}

func (f *fan) wake() {
	if f.stopPoll != nil {
		f.stopPoll()
	}
	f.cond.Broadcast()
}

// share is how many records of one partition may be in lanes at once.
func (f *fan) share() int {
	per := (f.max + f.n - 1) / f.n
	if f.order != kdeliver.ByPartition {
		// Several handlers may work on one partition.
		busy := 0
		for _, p := range f.list {
			if p.held > 0 || len(p.backlog) > 0 {
				busy++
			}
		}
		per = max(per, (f.max+busy-1)/max(busy, 1))
	}
	return max(per, 1)
}

// fill takes records from the backlogs, round robin over the partitions,
// while the transaction has room, and starts what may start.
func (f *fan) fill() {
	l, t := f.l, f.t
	if f.taken == 0 && l.solo != (recordKey{}) {
		// The slow record goes first, alone.
		for _, p := range f.list {
			if len(p.backlog) > 0 && (recordKey{p.topic, p.partition, p.backlog[0].Offset}) == l.solo {
				f.take(p)
				f.solo = t.reason == ""
				break
			}
		}
	}
	if t.reason != "" {
		f.halt()
	}
	share := f.share()
	for !f.over() && !f.solo && f.held < f.max && len(f.list) > 0 {
		if f.ctx.Err() != nil || f.taken > 0 && !time.Now().Before(f.deadline) {
			f.stop()
			break
		}
		var p *part
		for i := range f.list {
			c := f.list[(f.rr+i)%len(f.list)]
			if len(c.backlog) > 0 && c.held < share {
				p = c
				f.rr = (f.rr + i + 1) % len(f.list)
				break
			}
		}
		if p == nil {
			break
		}
		if r := p.backlog[0]; f.taken > 0 && (recordKey{r.Topic, r.Partition, r.Offset}) == l.solo {
			// The slow record starts the next transaction.
			f.full = true
			f.wake()
			break
		}
		f.take(p)
		if t.reason != "" {
			f.halt()
			break
		}
	}
	f.dispatch()
}

// take moves p's first backlog record into its lane.
func (f *fan) take(p *part) {
	l, t, s := f.l, f.t, f.l.s
	r := p.backlog[0]
	p.backlog = p.backlog[1:]
	f.waiting--
	if l.checkRewind(r) {
		s.log.Error("eos: polled a record below the committed offset after an abort; replacing the client", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset)
		s.stats.rewind.Add(1)
		t.abort(reasonRewind)
		t.replace = true
		return
	}
	p.offs.Add(r.Offset, r.LeaderEpoch)
	p.held++
	f.held++
	f.taken++
	if k, ok := f.laneOf(r); ok && !f.lanes.Push(k, r) {
		return // waits behind its lane's running record
	}
	f.ready = append(f.ready, r)
}

// laneOf returns r's lane, if its order has one.
func (f *fan) laneOf(r *kgo.Record) (lane, bool) {
	switch {
	case f.order == kdeliver.ByPartition:
		return lane{tp: tp{r.Topic, r.Partition}}, true
	case f.order == kdeliver.ByKey && r.Key != nil:
		return lane{tp: tp{r.Topic, r.Partition}, key: string(r.Key)}, true
	}
	return lane{}, false
}

// dispatch starts handler goroutines for the records free to start.
func (f *fan) dispatch() {
	for f.running < f.n {
		r := f.next()
		if r == nil {
			return
		}
		f.running++
		go f.work(r)
	}
}

// next returns the next record to start, dropping those that may not (the
// transaction is cut or halted), or nil.
func (f *fan) next() *kgo.Record {
	for len(f.ready) > 0 {
		r := f.ready[0]
		f.ready[0] = nil
		f.ready = f.ready[1:]
		p := f.parts[tp{r.Topic, r.Partition}]
		if f.startable(r, p) {
			f.started++
			p.maxStarted = max(p.maxStarted, r.Offset)
			return r
		}
		// Dropped: it and the rest of its lane are read again.
		f.finish(r, p)
		f.t.cutAt(r)
	}
	return nil
}

// startable reports whether r may start now.
func (f *fan) startable(r *kgo.Record, p *part) bool {
	if f.halted {
		return false
	}
	if !f.cut && (f.ctx.Err() != nil || f.started > 0 && !time.Now().Before(f.deadline)) {
		f.stop()
	}
	// After the cut, only holes: records below one of their partition
	// that started.
	return !f.cut || r.Offset < p.maxStarted
}

// finish marks r no longer held and frees its lane for the next record.
func (f *fan) finish(r *kgo.Record, p *part) {
	p.held--
	f.held--
	if k, ok := f.laneOf(r); ok {
		if nx, ok := f.lanes.Next(k); ok {
			f.ready = append(f.ready, nx)
		}
	}
}

// work runs records on one goroutine until none may start.
func (f *fan) work(r *kgo.Record) {
	l, t := f.l, f.t
	f.mu.Lock()
	var c *caller
	if n := len(f.callers); n > 0 {
		c, f.callers = f.callers[n-1], f.callers[:n-1]
	} else {
		c = newCaller(l)
	}
	f.mu.Unlock()
	for r != nil {
		pctx, span := l.processSpan(t, r)
		began := time.Now()
		out, err := c.call(pctx, r)
		took := time.Since(began)
		f.mu.Lock()
		p := f.parts[tp{r.Topic, r.Partition}]
		done := false
		switch {
		case t.crashed != nil:
		case t.reason != "" && err == nil:
			// The transaction aborts: its outputs are no use.
		default:
			// settle produces under f.mu, which this handler may have
			// waited for: read the clock again.
			done = l.settle(f.ctx, t, r, pctx, span, took, time.Now(), out, err)
		}
		if done {
			p.offs.Done(r.Offset)
			p.maxDone = max(p.maxDone, r.Offset)
		}
		if t.crashed != nil || t.reason != "" {
			f.halt()
		}
		f.solo = false // the slow record, if it was, finished: the others may go
		f.finish(r, p)
		f.fill()
		r = f.next()
		if r == nil {
			f.running--
			f.callers = append(f.callers, c)
		}
		f.cond.Broadcast()
		f.mu.Unlock()
		span.End()
	}
}

// settleCut sets t's cut, once no handler runs, to the first record not
// handled of each partition, and aborts if a partition's handled records
// are not a prefix of what it polled.
func (f *fan) settleCut() {
	t, s := f.t, f.l.s
	for _, p := range f.list {
		if len(p.backlog) > 0 {
			t.cutAt(p.backlog[0])
		}
		if first, ok := p.offs.First(); ok && p.maxDone > first && t.reason == "" && t.crashed == nil {
			// A handler failed while Run stopped, below a record done:
			// committing would skip it or repeat the one done.
			s.log.Warn("eos: a record failed while stopping below records already handled; aborting the transaction, its records are handled again",
				"topic", p.topic, "partition", p.partition, "offset", first)
			t.abort(reasonShutdown)
		}
	}
	for _, r := range f.lanes.Drop(func(lane) bool { return true }) {
		t.cutAt(r) // none should remain: every lane's head was settled
	}
}
