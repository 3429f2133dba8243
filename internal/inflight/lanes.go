package inflight

// Lanes keeps order within lanes while lanes run concurrently: a lane (a
// partition, or a key of a partition) runs one item at a time, in the order
// its items were pushed. It is not safe for concurrent use.
//
// The lanes live in an open-addressing table (linear probing, deletion by
// backward shift, so no tombstones): a lane is added and removed for almost
// every record when keys rarely repeat, and the table holds at most the
// records in flight, so it stays small and its probes short.
type Lanes[K comparable, T any] struct {
	hash   func(K) uint64
	slots  []slot[K, T] // a power of two long
	busy   int          // slots in use
	queued int
}

type slot[K comparable, T any] struct {
	h   uint64 // the key's mixed hash, never 0 in a used slot; 0: empty
	key K
	ln  *lane[T] // nil while the lane runs one item with none waiting
}

// lane is a lane's queue; a lane running one item with none waiting has
// none, so that most lanes (one record per key) cost no allocation.
type lane[T any] struct {
	queue []T
	head  int
}

// NewLanes returns an empty set of lanes; hash hashes a lane's key (equal
// keys must hash equal; a good spread keeps probes short).
func NewLanes[K comparable, T any](hash func(K) uint64) *Lanes[K, T] {
	return &Lanes[K, T]{hash: hash, slots: make([]slot[K, T], 16)}
}

// find returns the slot of k, or the empty slot where it would go.
func (l *Lanes[K, T]) find(k K, h uint64) (int, bool) {
	mask := len(l.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &l.slots[i]
		if s.h == 0 {
			return i, false
		}
		if s.h == h && s.key == k {
			return i, true
		}
	}
}

// Push adds v to lane k. It returns true when the lane was idle: v is now
// the lane's running item, to be run by the caller, who calls [Lanes.Next]
// when it finishes. Otherwise v waits for the items ahead of it.
func (l *Lanes[K, T]) Push(k K, v T) bool {
	h := mix(l.hash(k))
	i, ok := l.find(k, h)
	if !ok {
		if 4*(l.busy+1) > len(l.slots) {
			l.grow()
			i, _ = l.find(k, h)
		}
		l.slots[i] = slot[K, T]{h: h, key: k}
		l.busy++
		return true
	}
	s := &l.slots[i]
	if s.ln == nil {
		s.ln = &lane[T]{}
	}
	s.ln.queue = append(s.ln.queue, v)
	l.queued++
	return false
}

// Next is called when lane k's running item finished. It returns the lane's
// next item, which is now running, or false when the lane has none (it is
// then idle and forgotten).
func (l *Lanes[K, T]) Next(k K) (T, bool) {
	var zero T
	i, ok := l.find(k, mix(l.hash(k)))
	if !ok {
		return zero, false
	}
	ln := l.slots[i].ln
	if ln == nil || ln.head == len(ln.queue) {
		l.remove(i)
		return zero, false
	}
	v := ln.queue[ln.head]
	ln.queue[ln.head] = zero
	ln.head++
	l.queued--
	if ln.head == len(ln.queue) {
		ln.queue, ln.head = ln.queue[:0], 0
	}
	return v, true
}

// remove empties slot i and shifts back the entries after it whose probe
// passed through it.
func (l *Lanes[K, T]) remove(i int) {
	mask := len(l.slots) - 1
	for j := (i + 1) & mask; l.slots[j].h != 0; j = (j + 1) & mask {
		home := int(l.slots[j].h) & mask
		// The entry at j stays if its home lies cyclically in (i, j].
		if (i < j && i < home && home <= j) || (i > j && (home > i || home <= j)) {
			continue
		}
		l.slots[i] = l.slots[j]
		i = j
	}
	l.slots[i] = slot[K, T]{}
	l.busy--
}

func (l *Lanes[K, T]) grow() {
	old := l.slots
	l.slots = make([]slot[K, T], 2*len(old))
	for _, s := range old {
		if s.h != 0 {
			i, _ := l.find(s.key, s.h)
			l.slots[i] = s
		}
	}
}

// mix spreads a hash's bits over the low ones the table indexes by.
func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h | 1<<63 // never 0: 0 marks an empty slot
}

// Drop removes the waiting items of the lanes match selects and returns
// them; their running items stay running (Next then finds the lane empty).
func (l *Lanes[K, T]) Drop(match func(K) bool) []T {
	var out []T
	for i := range l.slots {
		s := &l.slots[i]
		if s.h == 0 || s.ln == nil || !match(s.key) {
			continue
		}
		out = append(out, s.ln.queue[s.ln.head:]...)
		l.queued -= len(s.ln.queue) - s.ln.head
		s.ln = nil
	}
	return out
}

// Queued returns how many items wait behind running ones.
func (l *Lanes[K, T]) Queued() int { return l.queued }

// Busy returns how many lanes have a running item.
func (l *Lanes[K, T]) Busy() int { return l.busy }
