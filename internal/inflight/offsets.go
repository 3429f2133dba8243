// Package inflight keeps track of records handed to concurrent handlers:
// which offset of a partition may be committed without passing a record
// whose handler has not succeeded ([Offsets]), and which record may run next
// without breaking the order its lane (partition, key) needs ([Lanes]).
package inflight

import "sort"

// Offsets tracks the records of one partition between the poll that
// returned them and their handler's success. Records are added in offset
// order (with gaps: compaction, transaction markers); they finish in any
// order. The committable offset is the offset after the longest prefix of
// finished records, so it never passes a record still in hand. It is not
// safe for concurrent use.
type Offsets struct {
	entries []entry // offset order; entries[head:] are live
	head    int
	commit  int64 // offset after the finished prefix; -1 before any record
	epoch   int32 // leader epoch of the last record of the prefix
	pending int   // live entries not done
}

type entry struct {
	offset int64
	epoch  int32
	done   bool
}

// NewOffsets returns an empty tracker.
func NewOffsets() *Offsets { return &Offsets{commit: -1, epoch: -1} }

// Add records that the record at offset (with its leader epoch) was handed
// out. Offsets must grow; an offset not above the last one added is
// ignored (a redelivery of a record still tracked) and Add returns false.
func (o *Offsets) Add(offset int64, epoch int32) bool {
	if n := len(o.entries); n > o.head && o.entries[n-1].offset >= offset {
		return false
	}
	if o.head == len(o.entries) && offset < o.commit {
		return false
	}
	o.entries = append(o.entries, entry{offset: offset, epoch: epoch})
	o.pending++
	return true
}

// Done marks the record at offset finished (its handler succeeded, or it
// was skipped or dead-lettered) and moves the committable offset past the
// finished prefix. It reports whether the committable offset moved. An
// offset not tracked is ignored.
func (o *Offsets) Done(offset int64) bool {
	live := o.entries[o.head:]
	if len(live) == 0 {
		return false
	}
	// Offsets are mostly consecutive: try the record's place first.
	i := int(offset - live[0].offset)
	if i < 0 || i >= len(live) || live[i].offset != offset {
		i = sort.Search(len(live), func(i int) bool { return live[i].offset >= offset })
	}
	if i == len(live) || live[i].offset != offset || live[i].done {
		return false
	}
	live[i].done = true
	o.pending--
	moved := false
	for o.head < len(o.entries) && o.entries[o.head].done {
		e := o.entries[o.head]
		o.commit, o.epoch = e.offset+1, e.epoch
		o.head++
		moved = true
	}
	if o.head == len(o.entries) {
		// Reuse the slice once everything finished.
		o.entries, o.head = o.entries[:0], 0
	} else if o.head > 1024 && o.head > len(o.entries)/2 {
		o.entries = append(o.entries[:0], o.entries[o.head:]...)
		o.head = 0
	}
	return moved
}

// Committable returns the offset after the finished prefix (the offset to
// commit) and its leader epoch; ok is false when no record has finished
// since the tracker was made.
func (o *Offsets) Committable() (offset int64, epoch int32, ok bool) {
	return o.commit, o.epoch, o.commit >= 0
}

// InFlight returns how many records were added and are not done.
func (o *Offsets) InFlight() int { return o.pending }

// First returns the offset of the first record not done, and false when
// every record added is done.
func (o *Offsets) First() (int64, bool) {
	if o.head == len(o.entries) {
		return 0, false
	}
	return o.entries[o.head].offset, true
}
