package consumer

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// BenchmarkRun measures records handled per second through Run (a no-op
// handler) on a 3-broker kfake cluster, 3 partitions, from produced records
// to the handler, commits included.
//
//	go test -run '^$' -bench Run -benchtime 20000x ./consumer/
func BenchmarkRun(b *testing.B) {
	for _, sem := range []kdeliver.Semantics{kdeliver.AtMostOnce, kdeliver.AtLeastOnce} {
		b.Run(sem.String(), func(b *testing.B) {
			cl := newCluster(b, 3)
			produce(b, cl.ListenAddrs(), 0, b.N)
			c := mustNew(b, cl, "g", sem)
			var handled atomic.Int64
			done := make(chan struct{})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ResetTimer()
			go func() {
				_ = c.Run(ctx, func(context.Context, *kgo.Record) error {
					if handled.Add(1) == int64(b.N) {
						close(done)
					}
					return nil
				})
			}()
			<-done
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			if err := c.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}
