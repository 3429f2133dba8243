package share

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// TestAtLeastOnceAcceptsAfterHandler: every record is handled, and its
// accept reaches the broker only after its handler returned.
func TestAtLeastOnceAcceptsAfterHandler(t *testing.T) {
	cl := newCluster(t, 3, 30*time.Second)
	a := watchAcks(cl)
	startAll(cl, "g")
	want := produce(t, cl, 0, 300)
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast())
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	var mu sync.Mutex
	handled := map[[2]int64]int64{} // partition, offset -> sequence when its handler returned
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		s.add(string(r.Value))
		mu.Lock()
		handled[[2]int64{int64(r.Partition), r.Offset}] = a.next()
		mu.Unlock()
		return nil
	})
	waitFor(t, "every record handled", func() bool { return s.distinct() == len(want) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for po, hseq := range handled {
		as := a.of(int32(po[0]), po[1])
		if len(as) != 1 || as[0].typ != 1 {
			t.Fatalf("record %v: acknowledgements %v, want one accept", po, as)
		}
		if as[0].seq < hseq {
			t.Fatalf("record %v accepted (seq %d) before its handler returned (seq %d)", po, as[0].seq, hseq)
		}
	}
	if d := s.dups(); len(d) > 0 {
		t.Fatalf("duplicates without a fault: %v", d)
	}
	st := c.Stats()
	if st.Accepted != 300 || st.Handled != 300 || st.Received != 300 || st.Redelivered != 0 || st.Deliveries[1] != 300 {
		t.Fatalf("stats %+v", st)
	}
}

// TestAtLeastOnceReleaseRedelivers: a failed record is released and
// delivered again with a higher delivery count.
func TestAtLeastOnceReleaseRedelivers(t *testing.T) {
	cl := newCluster(t, 3, 30*time.Second)
	a := watchAcks(cl)
	startAll(cl, "g")
	want := produce(t, cl, 0, 50)
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast())
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	var mu sync.Mutex
	var counts []int32
	var failedAt [2]int64
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		if string(r.Value) == want[7] {
			mu.Lock()
			counts = append(counts, r.DeliveryCount())
			n := len(counts)
			failedAt = [2]int64{int64(r.Partition), r.Offset}
			mu.Unlock()
			if n < 3 {
				return errors.New("transient")
			}
		}
		s.add(string(r.Value))
		return nil
	})
	waitFor(t, "every record handled", func() bool { return s.distinct() == len(want) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(counts, []int32{1, 2, 3}) {
		t.Fatalf("delivery counts of the failing record: %v, want [1 2 3]", counts)
	}
	var types []int8
	for _, x := range a.of(int32(failedAt[0]), failedAt[1]) {
		types = append(types, x.typ)
	}
	if !slices.Equal(types, []int8{2, 2, 1}) {
		t.Fatalf("acknowledgements of the failing record: %v, want release, release, accept", types)
	}
	st := c.Stats()
	if st.Released != 2 || st.Failed != 2 || st.Redelivered != 2 || st.Retried != 2 || st.Deliveries[2] != 1 || st.Deliveries[3] != 1 || st.Handled != 50 {
		t.Fatalf("stats %+v", st)
	}
}

// produceWatch notes the sequence of each produce request after it is
// armed, and fails the first failN of them with failCode.
type produceWatch struct {
	mu       sync.Mutex
	armed    bool
	seqs     []int64
	failN    int
	failCode int16
}

func watchProduce(cl *kdelivertest.Cluster, a *acks) *produceWatch {
	w := &produceWatch{}
	k := cl.Kfake()
	k.ControlKey(0, func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.armed {
			return nil, nil, false
		}
		if w.failN != 0 {
			if w.failN > 0 {
				w.failN--
			}
			req := kreq.(*kmsg.ProduceRequest)
			resp := req.ResponseKind().(*kmsg.ProduceResponse)
			for _, rt := range req.Topics {
				st := kmsg.NewProduceResponseTopic()
				st.Topic, st.TopicID = rt.Topic, rt.TopicID
				for _, rp := range rt.Partitions {
					sp := kmsg.NewProduceResponseTopicPartition()
					sp.Partition = rp.Partition
					sp.ErrorCode = w.failCode
					st.Partitions = append(st.Partitions, sp)
				}
				resp.Topics = append(resp.Topics, st)
			}
			return resp, nil, true
		}
		w.seqs = append(w.seqs, a.next())
		return nil, nil, false
	})
	return w
}

func (w *produceWatch) arm(failN int, code int16) {
	w.mu.Lock()
	w.armed, w.failN, w.failCode = true, failN, code
	w.mu.Unlock()
}

func (w *produceWatch) produced() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.seqs)
}

// TestPoisonDeadLettered: a record that always fails is delivered N
// times, then written to the dead-letter topic and only then rejected;
// nothing else reaches the dead-letter topic.
func TestPoisonDeadLettered(t *testing.T) {
	cl := newCluster(t, 3, 30*time.Second)
	if err := cl.CreateTopic("dlq", 1); err != nil {
		t.Fatal(err)
	}
	a := watchAcks(cl)
	startAll(cl, "g")
	want := produce(t, cl, 0, 60)
	pw := watchProduce(cl, a)
	pw.arm(0, 0)
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast(),
		kdeliver.WithMaxAttempts(3), WithDeadLetterTopic("dlq"))
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	var poison atomic.Pointer[[2]int64]
	var counts []int32
	var mu sync.Mutex
	stop := runBG(t, c, func(_ context.Context, r *kgo.Record) error {
		if string(r.Value) == want[11] {
			poison.Store(&[2]int64{int64(r.Partition), r.Offset})
			mu.Lock()
			counts = append(counts, r.DeliveryCount())
			mu.Unlock()
			return errors.New("poison")
		}
		s.add(string(r.Value))
		return nil
	})
	waitFor(t, "the poison record dead-lettered and the others handled", func() bool {
		return c.Stats().DeadLettered == 1 && s.distinct() == len(want)-1
	})
	waitFor(t, "the poison record rejected", func() bool { return a.count(3) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if !slices.Equal(counts, []int32{1, 2, 3}) {
		t.Fatalf("delivery counts of the poison record: %v, want [1 2 3]", counts)
	}
	mu.Unlock()
	p := poison.Load()
	as := a.of(int32(p[0]), p[1])
	if len(as) != 3 || as[0].typ != 2 || as[1].typ != 2 || as[2].typ != 3 {
		t.Fatalf("acknowledgements of the poison record: %+v, want release, release, reject", as)
	}
	prod := pw.produced()
	if len(prod) != 1 || prod[0] > as[2].seq {
		t.Fatalf("dead-letter produce at %v, reject at %d: the dead letter must be written before the reject", prod, as[2].seq)
	}
	dl := kdelivertest.ReadCommitted(t, cl.Brokers(), "dlq")
	if len(dl) != 1 || string(dl[0].Value) != want[11] {
		t.Fatalf("dead-letter topic holds %d records, want the poison record only", len(dl))
	}
	h := map[string]string{}
	for _, x := range dl[0].Headers {
		h[x.Key] = string(x.Value)
	}
	if h[kdeliver.HeaderDLQTopic] != "t" || h[kdeliver.HeaderDLQAttempts] != "3" || h[kdeliver.HeaderDLQError] != "poison" ||
		h[kdeliver.HeaderDLQOffset] != strconv.FormatInt(p[1], 10) || h[kdeliver.HeaderDLQPartition] != strconv.FormatInt(p[0], 10) {
		t.Fatalf("dead-letter headers %v", h)
	}
	st := c.Stats()
	if st.Rejected != 1 || st.DeadLettered != 1 || st.Released != 2 || st.Handled != 60 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDeadLetterFailureDoesNotReject: while the dead-letter write fails,
// the record is not rejected; stopped then, it is released and delivered
// again, and dead-lettered once the topic takes it.
func TestDeadLetterFailureDoesNotReject(t *testing.T) {
	cl := newCluster(t, 1, 30*time.Second)
	if err := cl.CreateTopic("dlq", 1); err != nil {
		t.Fatal(err)
	}
	a := watchAcks(cl)
	startAll(cl, "g")
	want := produce(t, cl, 0, 5)
	pw := watchProduce(cl, a)
	pw.arm(-1, kerr.InvalidRecord.Code) // every dead-letter write fails
	opts := []Option{quiet(), fast(), kdeliver.WithMaxAttempts(2), WithDeadLetterTopic("dlq"), kdeliver.WithBackoff(10*time.Millisecond, 50*time.Millisecond)}
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, opts...)
	if err != nil {
		t.Fatal(err)
	}
	h := func(_ context.Context, r *kgo.Record) error {
		if string(r.Value) == want[2] {
			return errors.New("poison")
		}
		return nil
	}
	stop := runBG(t, c, h)
	waitFor(t, "dead-letter writes failing", func() bool { return c.Stats().DeadLetterErrors >= 3 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := a.count(3); n != 0 {
		t.Fatalf("%d rejects sent while the dead-letter write failed", n)
	}
	if st := c.Stats(); st.Rejected != 0 || st.DeadLettered != 0 || st.Released != 2 {
		t.Fatalf("stats %+v, want the poison record released twice (its first delivery's failure, then on stop), never rejected", st)
	}

	pw.arm(0, 0) // the topic takes writes again
	c2, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, opts...)
	if err != nil {
		t.Fatal(err)
	}
	stop2 := runBG(t, c2, h)
	waitFor(t, "the poison record dead-lettered", func() bool { return c2.Stats().DeadLettered == 1 })
	waitFor(t, "the poison record rejected", func() bool { return a.count(3) == 1 })
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if dl := kdelivertest.ReadCommitted(t, cl.Brokers(), "dlq"); len(dl) != 1 {
		t.Fatalf("dead-letter topic holds %d records, want 1", len(dl))
	}
}

// TestLastDeliveryWithoutDeadLetterStopsRun: without a dead-letter topic,
// the last failed delivery ends Run with a HandlerError; the record is
// released, not lost.
func TestLastDeliveryWithoutDeadLetterStopsRun(t *testing.T) {
	cl := newCluster(t, 1, 30*time.Second)
	a := watchAcks(cl)
	startAll(cl, "g")
	produce(t, cl, 0, 1)
	c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast(), kdeliver.WithMaxAttempts(2))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err = c.Run(ctx, func(context.Context, *kgo.Record) error { return errors.New("poison") })
	var herr *kdeliver.HandlerError
	if !errors.As(err, &herr) || herr.Attempts != 2 {
		t.Fatalf("Run returned %v, want a HandlerError after 2 deliveries", err)
	}
	// Two releases of kdeliver's; franz-go releases on leave what it
	// fetched ahead and no poll took (a third delivery, maybe).
	if a.count(3) != 0 || a.count(1) != 0 || a.count(2) < 2 {
		t.Fatalf("%d accepts, %d releases, %d rejects: want only releases, at least two", a.count(1), a.count(2), a.count(3))
	}
	if st := c.Stats(); st.Released != 2 || st.Failed != 2 || st.Accepted != 0 {
		t.Fatalf("stats %+v", st)
	}
}
