package consumer

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/internal/crash"
	"github.com/kdeliver/kdeliver/internal/deadline"
	"github.com/kdeliver/kdeliver/internal/dlq"
	"github.com/kdeliver/kdeliver/internal/inflight"
	"github.com/kdeliver/kdeliver/internal/shared"
)

// BatchHandler processes consecutive records of one partition, in offset
// order ([Consumer.RunBatch]): what the partition's backlog holds (one or
// more polls' records), up to the partition's share of the in-flight bound
// ([kdeliver.WithMaxInFlight] divided by [kdeliver.WithConcurrency]'s n; 64
// records by default for n = 1): raise the bound for larger batches. Its return value drives the commit of
// the whole batch: nil marks every record done; an error retries the whole
// batch with the backoff ([kdeliver.WithBackoff]) until it succeeds or
// fails [kdeliver.WithMaxAttempts] times (then the batch goes to the
// dead-letter topic, record by record, or Run stops); [Skip](err) gives up
// on the batch and commits past it. A panic is an error matching
// [kdeliver.ErrPanic]. Batches of one partition are handed over one at a
// time in offset order; batches of different partitions run concurrently,
// up to [kdeliver.WithConcurrency]'s n. ctx is as for a [Handler] (no
// "process" span is made for a batch). The slice and its records must not
// be kept after the handler returns.
type BatchHandler func(ctx context.Context, records []*kgo.Record) error

// deadLetterTimeout bounds one attempt to write a dead letter (counted from
// the hand-over); a failed attempt is retried with the backoff.
const deadLetterTimeout = 30 * time.Second

// concurrent reports whether Run uses the concurrent engine.
func (c *Consumer) concurrent() bool {
	return c.hd.Concurrency > 0 || c.cfg.deadLetter != ""
}

// RunBatch is [Consumer.Run] with a [BatchHandler]: each call gets
// consecutive records of one partition, in offset order. The lifecycle,
// the commit rules and the errors are Run's (on a stop, the batch in hand
// finishes; a batch not done is read again by the partition's next owner).
// It runs the concurrent engine, with a concurrency of one (one batch at a
// time) unless [kdeliver.WithConcurrency] says more, and commits on the
// commit interval ([WithCommitInterval]), on revoke and on shutdown. A
// consumer built with [NewWithGuard] refuses it: the guard works record by
// record.
func (c *Consumer) RunBatch(ctx context.Context, h BatchHandler) error {
	if h == nil {
		return fmt.Errorf("%w: consumer: RunBatch needs a handler", kdeliver.ErrInvalidConfig)
	}
	if c.guard != nil {
		return fmt.Errorf("%w: consumer: RunBatch of a consumer with a dedup guard: the guard reserves and marks record by record; use Run", kdeliver.ErrInvalidConfig)
	}
	return c.run(ctx, nil, h)
}

// topicPart is a topic partition.
type topicPart struct {
	topic string
	part  int32
}

// laneKey names a lane: a partition, or a key of a partition.
type laneKey struct {
	gen uint64 // the partition state's: a new assignment gets new lanes
	key uint64 // keyHash of the record key (ByKey), else 0
}

func (k laneKey) hash() uint64 { return k.gen*0x9e3779b97f4a7c15 ^ k.key }

// keyHash is the 64-bit FNV-1a hash of a record key, which names its lane.
// Two keys whose hashes collide share a lane, which only keeps more in
// order than asked.
func keyHash(key []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, b := range key {
		h ^= uint64(b)
		h *= 1099511628211
	}
	return h
}

// item is what a worker runs: a record, a batch of one partition for the
// batch handler, or (ByPartition) consecutive records of one partition for
// the record handler, one after another: a partition's lane runs one record
// at a time anyway, and handing its records over in runs costs a lane
// hand-off per run instead of per record.
type item struct {
	rec   *kgo.Record   // the record handler's record
	recs  []*kgo.Record // the batch handler's records, or a run's
	each  bool          // recs is a run: the record handler gets each
	ps    *partState
	key   laneKey
	laned bool // runs in a lane (else unordered)

	// A run's records done so far (set by its worker) and how many of
	// them count for the commit (e.mu): a commit while the run is still
	// going takes its done prefix, so a slow record holds back only
	// itself and what follows it.
	progress atomic.Int32
	applied  int
}

// apply counts the first done records of the run it for the commit. e.mu is
// held.
func (it *item) apply(done int) {
	for ; it.applied < done; it.applied++ {
		it.ps.offs.Done(it.recs[it.applied].Offset)
	}
}

func (it *item) size() int {
	if it.rec != nil {
		return 1
	}
	return len(it.recs)
}

// partState is the engine's state of a partition it was handed records of.
// A revoked or lost partition is gone: its records in flight may finish,
// but their offsets are never committed from this state (a new assignment
// of the partition gets a new state).
type partState struct {
	tp        topicPart
	gen       uint64 // unique per state, for its lanes
	offs      *inflight.Offsets
	committed int64         // the offset last committed; -1 before any
	backlog   []*kgo.Record // polled, not yet handed to a lane
	arr       []*kgo.Record // the backlog's array (feed takes from its front)
	inflight  int           // records handed to lanes and not finished
	running   *item         // the run being handled (ByPartition)
	hungry    bool          // in the engine's hungry queue
	paused    bool
	revoking  atomic.Bool // revoked: nothing more is dispatched (set under the engine's mu)
	gone      atomic.Bool // revoked or lost: never committed again
}

// room makes room for n more records at the end of the backlog without
// growing its array while the array has room for them: feed takes records
// from the backlog's front, so the backlog moves back to the array's start.
func (ps *partState) room(n int) {
	k := len(ps.backlog)
	if k+n <= cap(ps.backlog) {
		return
	}
	if k+n > cap(ps.arr) {
		ps.arr = make([]*kgo.Record, 0, 2*(k+n))
	}
	arr := ps.arr[:cap(ps.arr)]
	copy(arr, ps.backlog) // overlapping is fine: the backlog is at or after arr's start
	clear(arr[k:])        // no stale pointers past the backlog
	ps.backlog = arr[:k]
}

// engine runs handlers concurrently: a poll loop puts each partition's
// records in its backlog and pauses the partition, the backlogs feed the
// lanes (within the in-flight bound and each partition's share of it), n
// workers run the lanes' items, and a committer commits each partition's
// finished prefix on an interval.
type engine struct {
	r       *run
	c       *Consumer
	h       Handler
	bh      BatchHandler
	n       int
	order   kdeliver.Ordering
	maxIn   int // records in lanes, all partitions
	share   int // records in lanes, one partition
	step    int // free room in lanes that makes a finish feed them
	amo     bool
	dlq     string
	timeout *deadline.Timeouts // dead letters' delivery timeout

	mu       sync.Mutex
	work     *sync.Cond // an item is ready, or the workers must exit
	space    *sync.Cond // records finished, or the engine stops
	ready    []*item
	head     int
	lanes    *inflight.Lanes[laneKey, *item]
	parts    map[topicPart]*partState
	hungry   []*partState // partitions with a backlog, in turn
	gens     uint64       // partition states made
	total    int          // records in lanes, all partitions
	stopping atomic.Bool  // no more polls (set under mu)
	exiting  bool         // workers exit once nothing is left to run
	free     []*item      // finished single-record items, for reuse
	hashes   []uint64     // hand's key hashes
	looking  atomic.Int32 // workers out of a handler and not waiting
	rescue   *rescuer
	fatal    error

	cmu sync.Mutex // serializes commits
}

func newEngine(r *run, h Handler, bh BatchHandler) *engine {
	hd := r.c.hd
	n := max(hd.Concurrency, 1)
	maxIn := hd.MaxInFlight
	if maxIn == 0 {
		maxIn = shared.DefaultMaxInFlight(n)
	}
	e := &engine{
		r: r, c: r.c, h: h, bh: bh, n: n,
		order: kdeliver.Ordering(hd.Order),
		maxIn: maxIn,
		share: maxIn,
		amo:   r.c.sem == kdeliver.AtMostOnce,
		dlq:   r.c.cfg.deadLetter,
		lanes: inflight.NewLanes[laneKey, *item](laneKey.hash),
		parts: map[topicPart]*partState{},
	}
	if e.order == kdeliver.ByPartition || bh != nil {
		// A partition runs one item at a time: more queued behind it
		// than its share of the bound only keeps the bound from the
		// other partitions.
		e.share = max(1, maxIn/n)
	}
	e.step = max(1, e.maxIn/4)
	if e.dlq != "" {
		e.timeout = deadline.New(deadLetterTimeout)
	}
	e.work = sync.NewCond(&e.mu)
	e.space = sync.NewCond(&e.mu)
	e.rescue = newRescuer(n)
	return e
}

// loop polls and dispatches until runCtx ends, the client closes or a
// record stops Run; then it stops the workers (the items in hand finish)
// and returns. The caller makes the final commit.
func (e *engine) loop(runCtx, hardCtx context.Context) error {
	pollCtx, cancelPoll := context.WithCancel(runCtx)
	defer cancelPoll()
	workers := e.start(runCtx, hardCtx, cancelPoll)
	defer e.rescue.timer.Stop()
	commitDone := make(chan struct{})
	stopCommits := make(chan struct{})
	if e.amo {
		close(commitDone)
	} else {
		go e.committer(hardCtx, stopCommits, commitDone)
	}

	var err error
	for err == nil {
		e.mu.Lock()
		stopped := e.stopping.Load()
		e.mu.Unlock()
		if stopped || pollCtx.Err() != nil {
			break
		}
		// Partitions with a deep backlog are paused, so a poll returns
		// records of the partitions that need them.
		e.pauseFull(pollCtx)
		fetches := e.r.cl.PollRecords(pollCtx, e.c.cfg.maxPoll)
		if pollCtx.Err() != nil {
			// Records polled now are neither committed nor handled:
			// the group delivers them again.
			break
		}
		if fetches.IsClientClosed() {
			err = kdeliver.ErrClosed
			break
		}
		if ferr := e.r.fetchErrors(fetches); ferr != nil {
			// Nothing of this poll is dispatched (see run.loop).
			e.r.fail(ferr)
			err = ferr
			break
		}
		e.c.lag.Fetched(fetches)
		if e.amo {
			recs := fetches.Records()
			if len(recs) == 0 {
				e.r.cl.AllowRebalance()
				continue
			}
			start := time.Now()
			cerr := e.r.cl.CommitRecords(hardCtx, recs...)
			e.c.noteCommit(start, cerr)
			if cerr == nil {
				e.c.lag.CommittedRecords(recs)
			}
			if cerr != nil {
				e.c.log.Warn("commit before processing failed: dropping the batch unprocessed (at-most-once loses, never repeats)", "records", len(recs), "err", cerr)
				e.r.cl.AllowRebalance()
				continue
			}
		}
		e.dispatch(fetches)
		// The records are registered: a revoke now sees them.
		e.r.cl.AllowRebalance()
	}

	e.mu.Lock()
	e.stopping.Store(true)
	if !e.amo || e.r.crashed.Load() {
		// Records not started are read again by the partitions' next
		// owner. Under AtMostOnce they are committed already: they are
		// handled, unless the process "crashed".
		e.dropAll()
	}
	e.exiting = true
	e.work.Broadcast()
	e.mu.Unlock()
	workers.Wait()
	close(stopCommits)
	<-commitDone
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		err = e.fatal
	}
	return err
}

// start starts the workers.
func (e *engine) start(runCtx, hardCtx context.Context, stopPoll context.CancelFunc) *sync.WaitGroup {
	var workers sync.WaitGroup
	for i := range e.n {
		g := newGrabber(e)
		e.rescue.gs[i] = g
		workers.Add(1)
		go func() {
			defer workers.Done()
			e.worker(runCtx, hardCtx, stopPoll, g)
		}()
	}
	return &workers
}

// dispatch puts the polled records in their partitions' backlogs and feeds
// the lanes.
func (e *engine) dispatch(fetches kgo.Fetches) {
	e.mu.Lock()
	defer e.mu.Unlock()
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 {
			return
		}
		k := topicPart{p.Topic, p.Partition}
		ps := e.parts[k]
		if ps == nil || ps.gone.Load() || ps.revoking.Load() {
			// A new state (a new assignment) gets lanes of its own: a
			// handler of the old one still running after its revoke
			// must not hold up the new one's records.
			e.gens++
			ps = &partState{tp: k, gen: e.gens, offs: inflight.NewOffsets(), committed: -1}
			e.parts[k] = ps
		}
		ps.room(len(p.Records))
		for _, rec := range p.Records {
			if e.amo || ps.offs.Add(rec.Offset, rec.LeaderEpoch) {
				ps.backlog = append(ps.backlog, rec)
			} // else a redelivery of a record in flight
		}
		if len(ps.backlog) == 0 {
			return
		}
		if !ps.hungry {
			ps.hungry = true
			e.hungry = append(e.hungry, ps)
		}
	})
	e.feed()
}

// pauseFull pauses the partitions whose backlog is still a share deep when
// the next poll is made (after up to pauseDelay for the lanes to take it):
// kgo would hand out more of their records before any other partition's.
// It is done before a poll, not when records arrive, because kgo drops what
// it buffered for a paused partition (and fetches it again on resume): a
// partition whose lanes take its backlog quickly is never paused.
// Partitions are resumed by feed, once their backlog runs low.
func (e *engine) pauseFull(ctx context.Context) {
	e.mu.Lock()
	if e.deep() {
		// Give the lanes a moment to take the backlogs: pausing costs a
		// refetch, and fast handlers drain a poll's records at once.
		wake := time.AfterFunc(pauseDelay, func() {
			e.mu.Lock()
			e.space.Broadcast()
			e.mu.Unlock()
		})
		end := time.Now().Add(pauseDelay)
		for e.deep() && !e.stopping.Load() && ctx.Err() == nil && time.Now().Before(end) {
			e.space.Wait()
		}
		wake.Stop()
	}
	var pause map[string][]int32
	for _, ps := range e.hungry {
		if ps.paused || ps.revoking.Load() || ps.gone.Load() || len(ps.backlog) < e.share {
			continue
		}
		ps.paused = true
		if pause == nil {
			pause = map[string][]int32{}
		}
		pause[ps.tp.topic] = append(pause[ps.tp.topic], ps.tp.part)
	}
	if pause != nil {
		// Paused under e.mu, like feed and revoke resume: a resume
		// made between marking a partition paused and pausing it
		// would come first, leaving the partition paused for good
		// with nothing in its backlog to resume it.
		if testHookPause != nil {
			testHookPause()
		}
		e.r.cl.PauseFetchPartitions(pause)
		e.c.pauses.Add(1)
	}
	e.mu.Unlock()
}

// testHookPause, when set by a test, runs just before a pause.
var testHookPause func()

// pauseDelay is how long a poll waits for the lanes to take a backlog a
// share deep before it pauses the partition.
const pauseDelay = 5 * time.Millisecond

// deep reports whether a partition not paused has a backlog a share deep.
// e.mu is held.
func (e *engine) deep() bool {
	for _, ps := range e.hungry {
		if !ps.paused && !ps.revoking.Load() && !ps.gone.Load() && len(ps.backlog) >= e.share {
			return true
		}
	}
	return false
}

// feed moves records from the backlogs to the lanes, partition after
// partition, while the bound and each partition's share allow, and resumes
// fetching a partition whose backlog runs low. e.mu is held.
func (e *engine) feed() {
	var resume map[string][]int32
	for turns := len(e.hungry); turns > 0 && e.total < e.maxIn && len(e.hungry) > 0; turns-- {
		ps := e.hungry[0]
		e.hungry[0] = nil
		e.hungry = e.hungry[1:]
		if ps.revoking.Load() || ps.gone.Load() || len(ps.backlog) == 0 {
			ps.hungry, ps.backlog = false, nil
			continue
		}
		room := min(e.share-ps.inflight, e.maxIn-e.total, len(ps.backlog))
		if room > 0 {
			e.hand(ps, ps.backlog[:room:room])
			clear(ps.backlog[:room])
			ps.backlog = ps.backlog[room:]
			turns = len(e.hungry) + 1 // progress: another round
		}
		if len(ps.backlog) == 0 {
			ps.hungry, ps.backlog = false, nil
		} else {
			e.hungry = append(e.hungry, ps)
		}
		if ps.paused && len(ps.backlog) < e.share {
			// Fetch more while the lanes still hold records.
			ps.paused = false
			if resume == nil {
				resume = map[string][]int32{}
			}
			resume[ps.tp.topic] = append(resume[ps.tp.topic], ps.tp.part)
		}
	}
	if resume != nil {
		e.r.cl.ResumeFetchPartitions(resume)
	}
	if int64(e.total) > e.c.inFlightPeak.Load() {
		e.c.inFlightPeak.Store(int64(e.total))
	}
}

// hand puts recs (of ps, in offset order) in their lanes. e.mu is held.
func (e *engine) hand(ps *partState, recs []*kgo.Record) {
	ps.inflight += len(recs)
	e.total += len(recs)
	if e.bh != nil || e.order == kdeliver.ByPartition {
		e.push(&item{recs: slices.Clone(recs), each: e.bh == nil, ps: ps, key: laneKey{gen: ps.gen}, laned: true})
		return
	}
	byKey := e.order == kdeliver.ByKey
	if byKey {
		// The keys are hashed in a loop of their own: their bytes are
		// seldom in cache any more, and independent reads in a tight
		// loop wait for memory together, not one after another.
		e.hashes = e.hashes[:0]
		for _, rec := range recs {
			e.hashes = append(e.hashes, keyHash(rec.Key))
		}
	}
	for i, rec := range recs {
		it := e.newItem()
		it.rec, it.ps = rec, ps
		if byKey && rec.Key != nil {
			it.key, it.laned = laneKey{gen: ps.gen, key: e.hashes[i]}, true
		}
		e.push(it)
	}
}

// newItem returns a zero single-record item, reusing finished ones: a
// record's item lives from its hand-over to its finish, so at most the
// in-flight bound of them exist. e.mu is held.
func (e *engine) newItem() *item {
	if len(e.free) == 0 {
		slab := make([]item, 64)
		for i := range slab {
			e.free = append(e.free, &slab[i])
		}
	}
	it := e.free[len(e.free)-1]
	e.free = e.free[:len(e.free)-1]
	return it
}

// recycle keeps a finished single-record item for newItem. e.mu is held.
func (e *engine) recycle(it *item) {
	if it.rec != nil {
		it.rec, it.ps, it.key, it.laned = nil, nil, laneKey{}, false
		e.free = append(e.free, it)
	}
}

// push queues it in its lane, or hands it to a worker if it may run now.
func (e *engine) push(it *item) {
	if it.laned && !e.lanes.Push(it.key, it) {
		return
	}
	e.enqueue(it)
}

// enqueue puts it in the ready queue and wakes a waiting worker, unless
// enough workers are awake to take what is queued: a wake-up costs more
// than a cheap handler, and a worker out of a handler takes the next ready
// item itself. e.mu is held.
func (e *engine) enqueue(it *item) {
	e.ready = append(e.ready, it)
	if len(e.ready)-e.head > int(e.looking.Load()) {
		e.work.Signal()
	}
}

// drained reports whether nothing is left to run. e.mu is held.
func (e *engine) drained() bool { return e.total == 0 && len(e.hungry) == 0 }

// worker runs ready items until the engine exits.
func (e *engine) worker(runCtx, hardCtx context.Context, stopPoll context.CancelFunc, g *grabber) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.looking.Add(1)
	defer e.looking.Add(-1)
	for {
		for e.head == len(e.ready) && !(e.exiting && e.drained()) {
			e.looking.Add(-1)
			e.work.Wait()
			e.looking.Add(1)
		}
		if e.head == len(e.ready) {
			return
		}
		if k := e.grab(); k > 1 {
			// Take a few records at once, so the hand-over costs one
			// lock, not one each.
			e.runGrabbed(runCtx, hardCtx, stopPoll, g, k)
			continue
		}
		it := e.pop()
		if e.halted(it.ps) || (it.each && it.ps.revoking.Load()) {
			// A run of a revoked partition is dropped whole: it is
			// the partition's suffix, which the new owner reads.
			e.finish(it, 0)
			continue
		}
		if it.each {
			it.ps.running = it
		}
		e.looking.Add(-1)
		e.mu.Unlock()
		done, stop := e.run(runCtx, hardCtx, it)
		e.looking.Add(1)
		e.mu.Lock()
		e.stopOn(stop, stopPoll)
		e.finish(it, done)
	}
}

// grab returns how many ready records a worker takes at once: while more
// wait than there are workers, up to maxGrab of those beyond one for each
// other worker (they would wait anyway); else one. A run (ByPartition) or a
// batch is taken alone. e.mu is held.
func (e *engine) grab() int {
	waiting := len(e.ready) - e.head
	if e.ready[e.head].rec == nil || waiting <= e.n {
		return 1
	}
	return min(waiting-(e.n-1), maxGrab)
}

// stopOn makes a handler's stop error the run's (the first one wins) and
// stops polling. e.mu is held.
func (e *engine) stopOn(stop error, stopPoll context.CancelFunc) {
	if stop == nil {
		return
	}
	if e.fatal == nil {
		e.fatal = stop
	}
	e.stopping.Store(true)
	stopPoll()
}

// pop takes the first ready item. e.mu is held.
func (e *engine) pop() *item {
	it := e.ready[e.head]
	e.ready[e.head] = nil
	e.head++
	if e.head == len(e.ready) {
		e.ready, e.head = e.ready[:0], 0
	}
	return it
}

// maxGrab bounds the items a worker takes from the ready queue at once.
const maxGrab = 32

// runGrabbed takes up to k ready single-record items (not runs or batches), runs them
// one after another without the lock, and finishes them together. It is
// used while more items wait than there are workers, so the ones it holds
// would wait anyway. The records not started go back to the ready queue
// for any worker when one of them fails (before it waits to retry or
// writes a dead letter) or when the grab runs for rescueTick to twice that
// ([rescuer]), and those done before it are finished then, so that a slow
// or stuck record holds up no other's handling or commit for longer than
// that. e.mu is held on entry and on return.
func (e *engine) runGrabbed(runCtx, hardCtx context.Context, stopPoll context.CancelFunc, g *grabber, k int) {
	buf := g.own[:0]
	for len(buf) < k && e.head < len(e.ready) && e.ready[e.head].rec != nil {
		buf = append(buf, e.pop())
	}
	g.start(buf)
	var stop error
	ran := 0
	e.looking.Add(-1)
	e.mu.Unlock()
	for i, it := range buf {
		if stop != nil || !g.claim(i) {
			break
		}
		ran++
		// A revoke waits for the records in flight, these included:
		// dropping one would leave a gap in its partition before
		// records of other lanes that ran, which the new owner would
		// repeat.
		if e.halted(it.ps) {
			g.result(i, false)
			continue
		}
		ok, st := e.handle(runCtx, hardCtx, it.ps, it.rec, nil, g.yield)
		stop = st
		g.result(i, ok)
	}
	fin, kept := g.end(ran)
	e.looking.Add(1)
	e.mu.Lock()
	e.stopOn(stop, stopPoll)
	for i := fin; i < ran+kept; i++ {
		// Records are kept (not started, not given back) only after a
		// stop, which halts every partition (AtMostOnce stops only on a
		// crash): they are read again by the partition's next owner.
		done := 0
		if i < ran {
			done = int(g.res[i].Load() - 1)
		}
		e.settle(buf[i], done)
	}
	e.settled()
	clear(buf)
}

// rescueTick is how often the rescuer looks at the grabs: one running
// through two of its ticks (rescueTick to twice that) gives back the
// records it has not started (and finishes those done before, so that
// their offsets commit).
const rescueTick = time.Millisecond

// rescuer gives back the grabs that run too long. One timer serves every
// worker: armed by a grab when it is idle, it ticks while grabs run, so a
// grab costs no timer of its own.
type rescuer struct {
	gs    []*grabber // the workers'; set before they start
	armed atomic.Bool
	timer *time.Timer
}

func newRescuer(n int) *rescuer {
	r := &rescuer{gs: make([]*grabber, n)}
	r.timer = time.AfterFunc(time.Hour, r.tick)
	r.timer.Stop()
	return r
}

// arm makes sure the timer ticks; a grab calls it after it is marked
// running.
func (r *rescuer) arm() {
	if !r.armed.Load() && r.armed.CompareAndSwap(false, true) {
		r.timer.Reset(rescueTick)
	}
}

// tick gives back each grab that was running at the last tick too, and
// ticks again while grabs run.
func (r *rescuer) tick() {
	running := false
	for _, g := range r.gs {
		ep := g.current()
		if ep != 0 && ep == g.seen {
			g.giveBack(ep)
		}
		g.seen = ep
		running = running || ep != 0
	}
	if running {
		r.timer.Reset(rescueTick)
		return
	}
	r.armed.Store(false)
	// A grab that started before the store may have found the timer
	// armed: it is seen now, or it sees the timer unarmed.
	for _, g := range r.gs {
		if g.current() != 0 {
			r.arm()
			return
		}
	}
}

// grabber is a worker's records taken at once ([engine.runGrabbed]). The
// worker claims them one by one and notes each result; a give-back (a
// failing record's, or the rescuer's when a record is slow) finishes
// the records done so far, claims the rest and queues them for any
// worker.
type grabber struct {
	e   *engine
	own []*item // the worker's buffer

	mu    sync.Mutex    // a grab's start and end against a give-back; never held with e.mu taken after it
	buf   []*item       // the grab
	state atomic.Uint64 // the grab's epoch << 32 | the next index to claim; the epoch is odd while a grab runs
	seen  uint64        // the grab running at the rescuer's last tick (the rescuer's)
	res   [maxGrab]atomic.Int32
	fin   int // records of buf finished by a give-back
}

// result notes record i's outcome.
func (g *grabber) result(i int, done bool) { g.res[i].Store(int32(b2i(done)) + 1) }

func newGrabber(e *engine) *grabber {
	return &grabber{e: e, own: make([]*item, 0, maxGrab)}
}

// start begins a grab of buf.
func (g *grabber) start(buf []*item) {
	g.mu.Lock()
	g.buf, g.fin = buf, 0
	for i := range buf {
		g.res[i].Store(0)
	}
	g.state.Store((g.state.Load()>>32 + 1) << 32) // odd: running
	g.mu.Unlock()
	g.e.rescue.arm()
}

// current returns the epoch of the running grab, or 0 when none runs.
func (g *grabber) current() uint64 {
	if ep := g.state.Load() >> 32; ep&1 == 1 {
		return ep
	}
	return 0
}

// yield gives back the rest of the running grab (a record failed).
func (g *grabber) yield() { g.giveBack(g.current()) }

// claim takes record i of the grab for the worker; false once the rest was
// given back.
func (g *grabber) claim(i int) bool {
	st := g.state.Load()
	return int(uint32(st)) == i && g.state.CompareAndSwap(st, st+1)
}

// end closes the grab after the worker claimed n records. The worker
// finishes buf[fin:n] and owns the kept records after them (not given
// back).
func (g *grabber) end(n int) (fin, kept int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.state.Load()
	if int(uint32(st)) == n {
		kept = len(g.buf) - n
	}
	g.state.Store((st>>32 + 1) << 32) // even: ended, a late give-back finds nothing
	g.buf = nil
	return g.fin, kept
}

// giveBack queues the records of grab ep not claimed yet, and wakes
// workers for them.
func (g *grabber) giveBack(ep uint64) {
	var rest, ended [maxGrab]*item
	var results [maxGrab]int
	n, m := 0, 0
	g.mu.Lock()
	if g.state.Load()>>32 != ep {
		g.mu.Unlock()
		return // ended: a later grab is not this one's to give back
	}
	for st := g.state.Load(); int(uint32(st)) < len(g.buf); st = g.state.Load() {
		i := int(uint32(st))
		if g.state.CompareAndSwap(st, st&^0xffffffff|uint64(len(g.buf))) {
			n = copy(rest[:], g.buf[i:])
			break
		}
	}
	for g.buf != nil && g.fin < len(g.buf) {
		r := g.res[g.fin].Load()
		if r == 0 {
			break // running, or given back
		}
		ended[m], results[m] = g.buf[g.fin], int(r-1)
		m++
		g.fin++
	}
	g.mu.Unlock()
	if n == 0 && m == 0 {
		// Given back already, and the record running is not done: the
		// rescuer calls again at each tick while it runs.
		return
	}
	e := g.e
	e.mu.Lock()
	for i := range m {
		e.settle(ended[i], results[i])
	}
	if m > 0 {
		e.settled()
	}
	e.ready = append(e.ready, rest[:n]...)
	if e.head < len(e.ready) {
		e.work.Broadcast()
	}
	e.mu.Unlock()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// dropping reports whether records of ps must not be started: the
// partition is revoked or lost, or Run stops (and its records are not
// committed already). It needs no lock.
func (e *engine) dropping(ps *partState) bool {
	return ps.revoking.Load() || e.halted(ps)
}

// halted reports whether no record of ps may start any more: the partition
// is gone (lost, or revoked and its revoke timeout passed), or Run stops
// (and its records are not committed already). A revoked partition's
// records in flight still run until then. It needs no lock.
func (e *engine) halted(ps *partState) bool {
	return ps.gone.Load() || (e.stopping.Load() && (!e.amo || e.r.crashed.Load()))
}

// run handles it and returns how many of its records, from the first, are
// done; stop is the error that must stop Run.
func (e *engine) run(runCtx, hardCtx context.Context, it *item) (done int, stop error) {
	switch {
	case it.rec != nil:
		ok, stop := e.handle(runCtx, hardCtx, it.ps, it.rec, nil, nil)
		return b2i(ok), stop
	case it.each:
		for i, rec := range it.recs {
			if i > 0 && e.dropping(it.ps) {
				return i, nil
			}
			ok, stop := e.handle(runCtx, hardCtx, it.ps, rec, nil, nil)
			if !ok || stop != nil {
				return i, stop
			}
			it.progress.Store(int32(i + 1))
		}
		return len(it.recs), nil
	default:
		ok, stop := e.handle(runCtx, hardCtx, it.ps, it.recs[0], it.recs, nil)
		if ok {
			return len(it.recs), stop
		}
		return 0, stop
	}
}

// finish ends it: its records are no longer in flight, the first done
// ones count for the commit (the others are read again by the partition's
// next owner), its lane's next item may run, and the backlogs feed the
// room it leaves. e.mu is held.
func (e *engine) finish(it *item, done int) {
	e.settle(it, done)
	e.settled()
}

// settle is finish without feeding the backlogs and waking who waits for
// room: a worker settles the items it ran together, then calls settled
// once. e.mu is held.
func (e *engine) settle(it *item, done int) {
	ps := it.ps
	n := it.size()
	ps.inflight -= n
	e.total -= n
	if done > 0 {
		e.c.stats.handled.Add(int64(done))
	}
	if done > 0 && !e.amo && !ps.gone.Load() {
		switch {
		case it.rec != nil:
			ps.offs.Done(it.rec.Offset)
		case it.each:
			it.apply(done)
		default:
			for _, rec := range it.recs {
				ps.offs.Done(rec.Offset)
			}
		}
	}
	if ps.running == it {
		ps.running = nil
	}
	if it.laned {
		if next, ok := e.lanes.Next(it.key); ok {
			e.enqueue(next)
		}
	}
	e.recycle(it)
}

// settled feeds the room that settled items left and wakes who waits for
// it. e.mu is held.
func (e *engine) settled() {
	// Feeding a record at a time as each finishes would cost a hand-over
	// per record: the backlogs feed once a step of the bound is free, or
	// when no item is ready (a worker would wait).
	if (!e.stopping.Load() || (e.amo && !e.r.crashed.Load())) && (e.maxIn-e.total >= e.step || e.head == len(e.ready)) {
		e.feed()
	}
	if e.exiting && e.drained() {
		e.work.Broadcast()
	}
	e.space.Broadcast()
}

// dropAll drops every record not started. e.mu is held.
func (e *engine) dropAll() {
	for _, ps := range e.hungry {
		ps.hungry, ps.backlog = false, nil
	}
	clear(e.hungry)
	e.hungry = e.hungry[:0]
	for _, it := range e.lanes.Drop(func(laneKey) bool { return true }) {
		e.release(it)
	}
	ready := e.ready[e.head:]
	e.ready, e.head = nil, 0
	for _, it := range ready {
		// The lane of a ready item is running it: free the lane (its
		// queue was just dropped).
		e.finish(it, 0)
	}
}

// inFlight returns the records polled and not finished.
func (e *engine) inFlight() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return int64(e.total)
}

// release forgets an item dropped from its lane's queue. e.mu is held.
func (e *engine) release(it *item) {
	n := it.size()
	it.ps.inflight -= n
	e.total -= n
	e.recycle(it)
}

// handle runs it until it is done (it succeeded, was skipped or
// dead-lettered), it must stop Run (stop is the error), or it is given up
// without being done (Run or its partition stopped while it waited).
//
// yield, if not nil, is called before the first wait for a retry.
func (e *engine) handle(runCtx, hardCtx context.Context, ps *partState, rec *kgo.Record, batch []*kgo.Record, yield func()) (done bool, stop error) {
	var bo backoff.BackOff // made at the first failure: none on the success path
	var firstFailure time.Time
	for attempt := 1; ; attempt++ {
		var err error
		if batch != nil {
			if attempt > 1 {
				e.c.stats.retried.Add(1)
			}
			err = e.callBatch(hardCtx, batch)
		} else {
			err = e.r.call(hardCtx, e.h, rec, attempt)
		}
		if err == nil {
			return true, nil
		}
		if firstFailure.IsZero() {
			firstFailure = time.Now()
		}
		switch {
		case errors.Is(err, crash.ErrCrash):
			e.r.crashed.Store(true)
			return false, &kdeliver.HandlerError{Record: rec, Attempts: attempt, Err: err}
		case e.amo:
			e.c.stats.skipped.Add(1)
			e.c.log.Warn("handler failed: record skipped (at-most-once)", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
			return true, nil
		case isSkip(err):
			e.c.stats.skipped.Add(int64(max(1, len(batch))))
			e.c.log.Warn("handler skipped the record: committing past it", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "records", max(1, len(batch)), "err", err)
			return true, nil
		case e.c.guard != nil && errors.Is(err, dedup.ErrNoKey):
			return false, &kdeliver.HandlerError{Record: rec, Attempts: attempt, Err: err}
		case e.c.hd.MaxAttempts > 0 && attempt >= e.c.hd.MaxAttempts:
			if e.dlq == "" {
				return false, &kdeliver.HandlerError{Record: rec, Attempts: attempt, Err: err}
			}
			if yield != nil {
				yield() // a dead letter may take retries too
			}
			return e.deadLetter(runCtx, hardCtx, ps, rec, batch, attempt, firstFailure, err), nil
		}
		if ps.gone.Load() {
			return false, nil // the partition's new owner retries it
		}
		if bo == nil {
			bo = e.backoff()
			if yield != nil {
				yield()
			}
		}
		wait := bo.NextBackOff()
		e.c.log.Warn("handler failed: retrying", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "attempt", attempt, "wait", wait, "err", err)
		if !sleep(runCtx, hardCtx, wait) {
			return false, nil
		}
	}
}

func (e *engine) backoff() backoff.BackOff {
	initial, limit := e.c.hd.Backoff()
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(limit),
		backoff.WithMaxElapsedTime(0),
	)
}

// sleep waits d, and reports false if a ctx ended first.
func sleep(runCtx, hardCtx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-runCtx.Done():
	case <-hardCtx.Done():
	}
	return false
}

// callBatch runs the batch handler once, turning a panic into an error.
func (e *engine) callBatch(ctx context.Context, recs []*kgo.Record) (err error) {
	defer func() {
		if v := recover(); v != nil {
			e.c.log.Error("batch handler panicked", "topic", recs[0].Topic, "partition", recs[0].Partition, "offset", recs[0].Offset, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", kdeliver.ErrPanic, v)
		}
		if err != nil && !isSkip(err) {
			e.c.stats.failed.Add(1)
		}
	}()
	return e.bh(ctx, recs)
}

// deadLetter writes the records of it to the dead-letter topic, retrying
// with the backoff until all in-sync replicas acknowledged them; only then
// is it done. It gives up (not done) when Run or the partition stops.
func (e *engine) deadLetter(runCtx, hardCtx context.Context, ps *partState, rec *kgo.Record, batch []*kgo.Record, attempts int, first time.Time, herr error) bool {
	src := batch
	if src == nil {
		src = []*kgo.Record{rec}
	}
	letters := make([]*kgo.Record, len(src))
	for i, r := range src {
		letters[i] = dlq.Record(e.dlq, r, attempts, first, herr)
	}
	var bo backoff.BackOff
	for try := 1; ; try++ {
		for _, l := range letters {
			e.timeout.Attach(context.Background(), l)
		}
		var err error
		for i, res := range e.r.cl.ProduceSync(hardCtx, letters...) {
			if res.Err != nil && err == nil {
				err = deadline.Err(letters[i], res.Err)
			}
			deadline.Detach(letters[i])
		}
		if ferr := e.c.scope.Err(err, e.dlq); ferr != nil {
			// No Write on the dead-letter topic: no retry helps. The
			// record is not done, so its offset is not committed.
			e.r.fail(ferr)
			return false
		}
		if err == nil {
			e.c.deadLettered.Add(int64(len(letters)))
			e.c.log.Warn("handler failed for the last time: record dead-lettered", "topic", src[0].Topic, "partition", src[0].Partition, "offset", src[0].Offset, "records", len(src), "attempts", attempts, "dead_letter_topic", e.dlq, "err", herr)
			return true
		}
		if ps.gone.Load() {
			return false
		}
		if bo == nil {
			bo = e.backoff()
		}
		wait := bo.NextBackOff()
		e.c.log.Warn("dead-letter write failed: retrying; the partition's commit waits for it", "topic", src[0].Topic, "partition", src[0].Partition, "offset", src[0].Offset, "dead_letter_topic", e.dlq, "try", try, "wait", wait, "err", err)
		if !sleep(runCtx, hardCtx, wait) {
			return false
		}
	}
}

// committer commits the finished prefixes every commit interval until stop
// is closed.
func (e *engine) committer(ctx context.Context, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(e.c.cfg.commitInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if e.r.crashed.Load() {
			return
		}
		if err := e.commit(ctx); err != nil && ctx.Err() == nil {
			e.c.log.Warn("commit failed: will retry at the next interval; a crash now repeats the records finished since the last commit", "err", err)
		}
	}
}

// commit commits each partition's finished prefix that moved since its
// last commit.
func (e *engine) commit(ctx context.Context) error {
	if e.amo {
		return nil // committed before handling
	}
	e.cmu.Lock()
	defer e.cmu.Unlock()
	e.mu.Lock()
	offsets := e.committable(func(*partState) bool { return true })
	e.mu.Unlock()
	return e.commitOffsets(ctx, offsets)
}

// committable returns the finished prefixes of the partitions match
// selects that moved since their last commit. e.mu is held.
func (e *engine) committable(match func(*partState) bool) map[string]map[int32]kgo.EpochOffset {
	var offsets map[string]map[int32]kgo.EpochOffset
	for _, ps := range e.parts {
		if ps.gone.Load() || !match(ps) {
			continue
		}
		if ps.running != nil && !e.amo {
			ps.running.apply(int(ps.running.progress.Load()))
		}
		off, epoch, ok := ps.offs.Committable()
		if !ok || off <= ps.committed {
			continue
		}
		if offsets == nil {
			offsets = map[string]map[int32]kgo.EpochOffset{}
		}
		if offsets[ps.tp.topic] == nil {
			offsets[ps.tp.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[ps.tp.topic][ps.tp.part] = kgo.EpochOffset{Epoch: epoch, Offset: off}
	}
	return offsets
}

// commitOffsets commits offsets and notes them committed. e.cmu is held.
func (e *engine) commitOffsets(ctx context.Context, offsets map[string]map[int32]kgo.EpochOffset) error {
	if len(offsets) == 0 {
		return nil
	}
	err := e.c.commit(ctx, e.r.cl, offsets)
	e.c.commitsTried.Add(1)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for t, ps := range offsets {
		for p, o := range ps {
			if st := e.parts[topicPart{t, p}]; st != nil && o.Offset > st.committed {
				st.committed = o.Offset
			}
		}
	}
	return nil
}

// revoke stops dispatching the partitions, drops their records not
// started, and, unless they were lost, lets their records in flight finish
// for up to the revoke timeout and commits their finished prefix. It runs
// on kgo's group goroutine (with polling blocked).
func (e *engine) revoke(ctx context.Context, parts map[string][]int32, lost bool) {
	e.c.lag.Forget(parts)
	if e.amo {
		return // committed before handling; what was polled is handled
	}
	set := map[topicPart]*partState{}
	e.mu.Lock()
	for t, ps := range parts {
		for _, p := range ps {
			if st := e.parts[topicPart{t, p}]; st != nil {
				set[st.tp] = st
				st.revoking.Store(true)
				if lost {
					st.gone.Store(true)
				}
			}
		}
	}
	if len(set) == 0 {
		e.mu.Unlock()
		return
	}
	var resume map[string][]int32
	for k, st := range set {
		if st.paused {
			// kgo keeps a pause across assignments: a partition
			// assigned here again must be fetched.
			st.paused = false
			if resume == nil {
				resume = map[string][]int32{}
			}
			resume[k.topic] = append(resume[k.topic], k.part)
		}
	}
	if resume != nil {
		e.r.cl.ResumeFetchPartitions(resume)
	}
	for _, st := range set {
		st.backlog = nil // feed drops it from the hungry queue
	}
	gens := make(map[uint64]bool, len(set))
	for _, st := range set {
		gens[st.gen] = true
	}
	for _, it := range e.lanes.Drop(func(k laneKey) bool { return gens[k.gen] }) {
		e.release(it)
	}
	// The ready records (each its lane's next) are in flight: they run,
	// within the revoke timeout. Dropping them would leave gaps before
	// records of other lanes that finished, which the new owner would
	// repeat.
	if lost {
		for k, st := range set {
			if e.parts[k] == st {
				delete(e.parts, k)
			}
		}
		e.mu.Unlock()
		return
	}
	// Let the records in flight finish, for up to the revoke timeout.
	for _, st := range set {
		e.c.revokeInFlight.Add(int64(st.inflight))
	}
	timer := time.AfterFunc(e.c.cfg.revokeTimeout, func() {
		e.mu.Lock()
		e.space.Broadcast()
		e.mu.Unlock()
	})
	end := time.Now().Add(e.c.cfg.revokeTimeout)
	for busy(set) && time.Now().Before(end) && ctx.Err() == nil && !e.r.crashed.Load() {
		e.space.Wait()
	}
	timer.Stop()
	stuck := busy(set)
	e.mu.Unlock()
	if e.r.crashed.Load() {
		return
	}

	e.cmu.Lock()
	defer e.cmu.Unlock()
	e.mu.Lock()
	offsets := e.committable(func(ps *partState) bool { return set[ps.tp] == ps })
	for k, st := range set {
		st.gone.Store(true)
		if e.parts[k] == st {
			delete(e.parts, k)
		}
	}
	e.mu.Unlock()
	if stuck {
		e.c.log.Warn("revoke timeout passed with handlers still running: their records are not committed and the new owner handles them again", "timeout", e.c.cfg.revokeTimeout, "partitions", parts)
	}
	cctx, cancel := context.WithTimeout(ctx, shutdownTimeout)
	defer cancel()
	if err := e.commitOffsets(cctx, offsets); err != nil {
		e.c.log.Warn("commit on revoke failed: the new owner repeats records after the last commit", "err", err)
	} else if len(offsets) > 0 {
		e.c.revokeCommits.Add(1)
		e.c.log.Info("committed on revoke", "partitions", len(offsets))
	}
}

// busy reports whether any of the partitions has records in flight. e.mu is
// held.
func busy(set map[topicPart]*partState) bool {
	for _, st := range set {
		if st.inflight > 0 {
			return true
		}
	}
	return false
}
