package eos

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The eos loop against a hand-written GroupTransactSession loop with the
// same batching (1000 records or 100ms a transaction), copying b.N records of
// 100 bytes from 3 to 3 partitions on a one-broker kfake cluster. Compare
// records/s:
//
//	go test -run '^$' -bench 'Copy' -benchtime 200000x -count 5 ./eos/
func BenchmarkCopyEOSSession(b *testing.B) {
	c, addrs := benchSeed(b)
	s, err := New(addrs, "g", []string{"in"}, "bench", WithOutputTopic("out"), WithCommitEvery(1000, 100*time.Millisecond),
		WithKgoOpts(kgo.DisableClientMetrics(), kgo.MetadataMinAge(100*time.Millisecond)))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	_ = c
	b.ResetTimer()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}()
	for s.Stats().Records < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkCopyRawGroupTransactSession(b *testing.B) {
	_, addrs := benchSeed(b)
	rawCopy(b, kgo.SeedBrokers(addrs...))
}

// The raw loop with the session's own client options (kotel hooks, presets),
// isolating the cost of the eos loop from that of the instrumentation.
func BenchmarkCopyRawGroupTransactSessionSameOpts(b *testing.B) {
	_, addrs := benchSeed(b)
	s, err := New(addrs, "g-unused", []string{"in"}, "unused", WithKgoOpts(kgo.DisableClientMetrics(), kgo.MetadataMinAge(100*time.Millisecond)))
	if err != nil {
		b.Fatal(err)
	}
	opts := s.opts
	s.Close(context.Background())
	rawCopy(b, opts...)
}

func rawCopy(b *testing.B, extra ...kgo.Opt) {
	sess, err := kgo.NewGroupTransactSession(append([]kgo.Opt{kgo.DisableClientMetrics(), kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.ConsumerGroup("g"), kgo.ConsumeTopics("in"), kgo.TransactionalID("bench"), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit()}, extra...)...)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	ctx := context.Background()
	b.ResetTimer()
	b.StartTimer()
	var committed int64
	for committed < int64(b.N) {
		fs := sess.PollRecords(ctx, 1000)
		if fs.Empty() {
			continue
		}
		if err := sess.Begin(); err != nil {
			b.Fatal(err)
		}
		var failed atomic.Bool
		n := 0
		produce := func(fs kgo.Fetches) {
			fs.EachRecord(func(r *kgo.Record) {
				n++
				sess.Produce(ctx, &kgo.Record{Topic: "out", Key: r.Key, Value: r.Value}, func(_ *kgo.Record, err error) {
					if err != nil {
						failed.Store(true)
					}
				})
			})
		}
		produce(fs)
		deadline := time.Now().Add(100 * time.Millisecond)
		for n < 1000 && time.Now().Before(deadline) {
			pctx, cancel := context.WithDeadline(ctx, deadline)
			produce(sess.PollRecords(pctx, 1000-n))
			cancel()
		}
		ok, err := sess.End(ctx, kgo.TransactionEndTry(!failed.Load()))
		if err != nil {
			b.Fatal(err)
		}
		if ok {
			committed += int64(n)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func benchSeed(b *testing.B) (*kfake.Cluster, []string) {
	b.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "in", "out"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	addrs := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DisableClientMetrics())
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	val := make([]byte, 100)
	for i := 0; i < b.N; i += 10000 {
		var rs []*kgo.Record
		for j := i; j < min(i+10000, b.N); j++ {
			rs = append(rs, &kgo.Record{Topic: "in", Value: val})
		}
		if err := cl.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}
	return c, addrs
}
