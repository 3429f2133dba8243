package inflight

import (
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestOffsetsGap: record 50 in hand while 51..77 finished: the committable
// offset stays at 50, and moves to 78 once 50 finishes.
func TestOffsetsGap(t *testing.T) {
	o := NewOffsets()
	if _, _, ok := o.Committable(); ok {
		t.Fatal("committable before anything finished")
	}
	for off := int64(0); off < 78; off++ {
		o.Add(off, 1)
	}
	for off := int64(0); off < 50; off++ {
		o.Done(off)
	}
	for off := int64(51); off < 78; off++ {
		if o.Done(off) {
			t.Fatalf("Done(%d) moved the committable offset past the record in hand", off)
		}
	}
	if c, _, _ := o.Committable(); c != 50 {
		t.Fatalf("committable %d, want 50", c)
	}
	if f, ok := o.First(); !ok || f != 50 || o.InFlight() != 1 {
		t.Fatalf("first %d %v, in flight %d: want 50, 1", f, ok, o.InFlight())
	}
	if !o.Done(50) {
		t.Fatal("Done(50) did not move the committable offset")
	}
	if c, e, _ := o.Committable(); c != 78 || e != 1 {
		t.Fatalf("committable %d epoch %d, want 78, 1", c, e)
	}
}

// TestOffsetsRandom: whatever order records finish in, the committable
// offset is always the offset after the longest finished prefix.
func TestOffsetsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		o := NewOffsets()
		var offs []int64
		for off := int64(0); len(offs) < 500; off += 1 + rng.Int64N(3) { // gaps
			offs = append(offs, off)
			o.Add(off, int32(round))
		}
		done := map[int64]bool{}
		for _, i := range rng.Perm(len(offs)) {
			o.Done(offs[i])
			done[offs[i]] = true
			want := int64(-1)
			for _, off := range offs {
				if !done[off] {
					break
				}
				want = off + 1
			}
			if c, _, _ := o.Committable(); c != want {
				t.Fatalf("round %d: committable %d, want %d", round, c, want)
			}
		}
	}
}

func TestOffsetsIgnoresRepeats(t *testing.T) {
	o := NewOffsets()
	o.Add(5, 0)
	if o.Add(5, 0) || o.Add(3, 0) {
		t.Fatal("an offset not above the last was added")
	}
	o.Done(5)
	if o.Add(2, 0) {
		t.Fatal("an offset below the committed one was added")
	}
	if o.Done(7) {
		t.Fatal("Done of an untracked offset moved the offset")
	}
}

func hashString(s string) uint64 { return maphash.String(seed, s) }

var seed = maphash.MakeSeed()

func TestLanes(t *testing.T) {
	l := NewLanes[string, int](hashString)
	if !l.Push("a", 1) || !l.Push("b", 10) {
		t.Fatal("the first item of a lane did not run at once")
	}
	if l.Push("a", 2) || l.Push("a", 3) {
		t.Fatal("an item ran while its lane was busy")
	}
	if l.Busy() != 2 || l.Queued() != 2 {
		t.Fatalf("busy %d queued %d, want 2 2", l.Busy(), l.Queued())
	}
	if v, ok := l.Next("a"); !ok || v != 2 {
		t.Fatalf("Next(a) = %d %v, want 2", v, ok)
	}
	if v, ok := l.Next("b"); ok {
		t.Fatalf("Next(b) = %d, want none", v)
	}
	dropped := l.Drop(func(k string) bool { return k == "a" })
	if len(dropped) != 1 || dropped[0] != 3 || l.Queued() != 0 {
		t.Fatalf("Drop = %v, queued %d", dropped, l.Queued())
	}
	if _, ok := l.Next("a"); ok {
		t.Fatal("a dropped item ran")
	}
	if !l.Push("a", 4) {
		t.Fatal("an idle lane did not run its item")
	}
}

// TestLanesModel runs random pushes, nexts and drops against a plain map
// model, with a hash that collides a lot (so probes, growth and the
// backward-shift deletion are exercised), and checks every answer.
func TestLanesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		l := NewLanes[int, int](func(k int) uint64 { return uint64(k % 7) })
		model := map[int][]int{} // lane -> items, the first running
		next := 0
		for range 2000 {
			k := rng.IntN(40)
			switch op := rng.IntN(10); {
			case op < 5:
				next++
				idle := l.Push(k, next)
				_, busy := model[k]
				if idle == busy {
					t.Fatalf("round %d: Push(%d) idle=%v, model busy=%v", round, k, idle, busy)
				}
				model[k] = append(model[k], next)
			case op < 9:
				v, ok := l.Next(k)
				q, busy := model[k]
				switch {
				case !busy:
					if ok {
						t.Fatalf("round %d: Next(%d) of an idle lane gave %d", round, k, v)
					}
				case len(q) == 1:
					if ok {
						t.Fatalf("round %d: Next(%d) gave %d, want none", round, k, v)
					}
					delete(model, k)
				default:
					if !ok || v != q[1] {
						t.Fatalf("round %d: Next(%d) = %d %v, want %d", round, k, v, ok, q[1])
					}
					model[k] = q[1:]
				}
			default:
				got := l.Drop(func(key int) bool { return key == k })
				var want []int
				if q, busy := model[k]; busy {
					want = q[1:]
					model[k] = q[:1]
				}
				if !slices.Equal(got, want) {
					t.Fatalf("round %d: Drop(%d) = %v, want %v", round, k, got, want)
				}
			}
			queued := 0
			for _, q := range model {
				queued += len(q) - 1
			}
			if l.Busy() != len(model) || l.Queued() != queued {
				t.Fatalf("round %d: busy %d queued %d, model %d %d", round, l.Busy(), l.Queued(), len(model), queued)
			}
		}
	}
}
