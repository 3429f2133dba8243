package inflight

// Lanes keeps order within lanes while lanes run concurrently: a lane (a
// partition, or a key of a partition) runs one item at a time, in the order
// its items were pushed. It is not safe for concurrent use.
type Lanes[K comparable, T any] struct {
	m      map[K]*lane[T]
	queued int
}

// lane is a lane's queue; a lane running one item with none waiting has a
// nil lane, so that most lanes (one record per key) cost no allocation.
type lane[T any] struct {
	queue []T
	head  int
}

// NewLanes returns an empty set of lanes.
func NewLanes[K comparable, T any]() *Lanes[K, T] { return &Lanes[K, T]{m: map[K]*lane[T]{}} }

// Push adds v to lane k. It returns true when the lane was idle: v is now
// the lane's running item, to be run by the caller, who calls [Lanes.Next]
// when it finishes. Otherwise v waits for the items ahead of it.
func (l *Lanes[K, T]) Push(k K, v T) bool {
	ln, ok := l.m[k]
	if !ok {
		l.m[k] = nil
		return true
	}
	if ln == nil {
		ln = &lane[T]{}
		l.m[k] = ln
	}
	ln.queue = append(ln.queue, v)
	l.queued++
	return false
}

// Next is called when lane k's running item finished. It returns the lane's
// next item, which is now running, or false when the lane has none (it is
// then idle and forgotten).
func (l *Lanes[K, T]) Next(k K) (T, bool) {
	var zero T
	ln, ok := l.m[k]
	if !ok {
		return zero, false
	}
	if ln == nil || ln.head == len(ln.queue) {
		delete(l.m, k)
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

// Drop removes the waiting items of the lanes match selects and returns
// them; their running items stay running (Next then finds the lane empty).
func (l *Lanes[K, T]) Drop(match func(K) bool) []T {
	var out []T
	for k, ln := range l.m {
		if ln == nil || !match(k) {
			continue
		}
		out = append(out, ln.queue[ln.head:]...)
		l.queued -= len(ln.queue) - ln.head
		ln.queue, ln.head = nil, 0
	}
	return out
}

// Queued returns how many items wait behind running ones.
func (l *Lanes[K, T]) Queued() int { return l.queued }

// Busy returns how many lanes have a running item.
func (l *Lanes[K, T]) Busy() int { return len(l.m) }
