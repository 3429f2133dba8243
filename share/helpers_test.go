package share

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait bounds the waits of the tests.
const wait = 30 * time.Second

// newCluster starts a kfake cluster with topic "t" of parts partitions,
// fast share-group heartbeats and a short session timeout; lock is the
// acquisition lock.
func newCluster(t testing.TB, parts int32, lock time.Duration) *kdelivertest.Cluster {
	t.Helper()
	return kdelivertest.Start(t, kdelivertest.WithTopic("t", parts), kdelivertest.WithKfakeOpts(
		kfake.BrokerConfigs(map[string]string{
			"group.share.heartbeat.interval.ms": "100",
			// A crashed member keeps its partitions until its session
			// times out (a share group assigns partitions too).
			"group.share.session.timeout.ms":      "3000",
			"group.share.record.lock.duration.ms": strconv.Itoa(int(lock.Milliseconds())),
		}),
	))
}

// quiet is a logger that drops everything.
func quiet() Option {
	if os.Getenv("SHARE_DEBUG") != "" {
		return kdeliver.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	}
	return kdeliver.WithLogger(slog.New(slog.DiscardHandler))
}

// fast makes retries and metadata quick on kfake.
func fast() Option {
	return WithKgoOpts(
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
	)
}

// startAll sets the group to read from the earliest record, on kfake.
func startAll(cl *kdelivertest.Cluster, group string) {
	cl.Kfake().SetGroupConfigs(group, map[string]string{"share.auto.offset.reset": "earliest"})
}

// produce seeds topic "t" with values from..to-1.
func produce(t testing.TB, cl *kdelivertest.Cluster, from, to int) []string {
	t.Helper()
	return kdelivertest.Seed(t, cl.Brokers(), "t", to-from, kdelivertest.From(from))
}

// waitFor polls cond until it holds, failing the test after [wait].
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	kdelivertest.WaitFor(t, wait, what, cond)
}

// runBG runs c.Run in the background; the returned function cancels it and
// returns Run's error.
func runBG(t testing.TB, c *Consumer, h Handler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(wait):
				err = errors.New("Run did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// seen counts each value handled.
type seen struct {
	mu sync.Mutex
	n  map[string]int
}

func newSeen() *seen { return &seen{n: map[string]int{}} }

func (s *seen) add(v string) {
	s.mu.Lock()
	s.n[v]++
	s.mu.Unlock()
}

func (s *seen) count(v string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[v]
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.n)
}

// dups returns the values seen more than once.
func (s *seen) dups() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for v, n := range s.n {
		if n > 1 {
			out = append(out, v)
		}
	}
	return out
}

// ack is one acknowledgement the broker received.
type ack struct {
	seq       int64
	partition int32
	offset    int64
	typ       int8 // 1 accept, 2 release, 3 reject, 4 renew
}

// acks records every acknowledgement the cluster receives (in ShareFetch
// and ShareAcknowledge requests), in order, and can drop them (strip): the
// broker then never sees them, as when acks are lost with a connection.
type acks struct {
	mu    sync.Mutex
	seq   int64
	list  []ack
	strip bool
	// produced is the sequence number of each produce request to a
	// topic, by topic ID or name.
	produced map[string][]int64
}

func watchAcks(cl *kdelivertest.Cluster) *acks {
	a := &acks{produced: map[string][]int64{}}
	k := cl.Kfake()
	k.ControlKey(78, func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		req := kreq.(*kmsg.ShareFetchRequest)
		a.mu.Lock()
		defer a.mu.Unlock()
		for ti := range req.Topics {
			for pi := range req.Topics[ti].Partitions {
				p := &req.Topics[ti].Partitions[pi]
				for _, b := range p.AcknowledgementBatches {
					a.note(p.Partition, b.FirstOffset, b.LastOffset, b.AcknowledgeTypes)
				}
				if a.strip {
					p.AcknowledgementBatches = nil
				}
			}
		}
		return nil, nil, false
	})
	k.ControlKey(79, func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		req := kreq.(*kmsg.ShareAcknowledgeRequest)
		a.mu.Lock()
		defer a.mu.Unlock()
		for ti := range req.Topics {
			for pi := range req.Topics[ti].Partitions {
				p := &req.Topics[ti].Partitions[pi]
				for _, b := range p.AcknowledgementBatches {
					a.note(p.Partition, b.FirstOffset, b.LastOffset, b.AcknowledgeTypes)
				}
				if a.strip {
					p.AcknowledgementBatches = nil
				}
			}
		}
		return nil, nil, false
	})
	return a
}

func (a *acks) note(p int32, first, last int64, types []int8) {
	for o := first; o <= last; o++ {
		typ := types[0]
		if len(types) > 1 {
			typ = types[o-first]
		}
		if typ == 0 { // a gap
			continue
		}
		a.seq++
		a.list = append(a.list, ack{seq: a.seq, partition: p, offset: o, typ: typ})
	}
}

func (a *acks) setStrip(v bool) {
	a.mu.Lock()
	a.strip = v
	a.mu.Unlock()
}

// of returns the acknowledgements of one record, in order.
func (a *acks) of(p int32, o int64) []ack {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []ack
	for _, x := range a.list {
		if x.partition == p && x.offset == o {
			out = append(out, x)
		}
	}
	return out
}

// count returns how many acknowledgements of typ were received.
func (a *acks) count(typ int8) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, x := range a.list {
		if x.typ == typ {
			n++
		}
	}
	return n
}

// next returns the next sequence number, for events outside the broker's
// requests (a handler call).
func (a *acks) next() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seq++
	return a.seq
}
