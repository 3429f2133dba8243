package share_test

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
	"github.com/kdeliver/kdeliver/share"
)

// An at-least-once share consumer: each record is accepted after its
// handler returns nil; a record that fails is released and delivered
// again with a higher delivery count. WithStartAtEarliest reads what was
// produced before the group started.
func Example() {
	cluster, err := kdelivertest.NewCluster(kdelivertest.WithTopic("jobs", 3))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	p, err := kgo.NewClient(kgo.SeedBrokers(cluster.Brokers()...), kgo.DefaultProduceTopic("jobs"))
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, v := range []string{"resize-1", "resize-2", "resize-3"} {
		if err := p.ProduceSync(context.Background(), &kgo.Record{Value: []byte(v)}).FirstErr(); err != nil {
			fmt.Println(err)
			return
		}
	}
	p.Close()

	c, err := share.New(cluster.Brokers(), "workers", []string{"jobs"}, kdeliver.AtLeastOnce,
		share.WithStartAtEarliest())
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var done []string
	err = c.Run(ctx, func(_ context.Context, rec *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if string(rec.Value) == "resize-2" && rec.DeliveryCount() == 1 {
			return fmt.Errorf("thumbnail service busy") // released, delivered again
		}
		done = append(done, fmt.Sprintf("%s (delivery %d)", rec.Value, rec.DeliveryCount()))
		if len(done) == 3 {
			cancel()
		}
		return nil
	})
	sort.Strings(done)
	for _, d := range done {
		fmt.Println(d)
	}
	fmt.Println("Run returned", err)
	// Output:
	// resize-1 (delivery 1)
	// resize-2 (delivery 2)
	// resize-3 (delivery 1)
	// Run returned <nil>
}
