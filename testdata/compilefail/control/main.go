// Command control uses the API as intended and must build: it shows that a
// failure of the other programs is their misuse, not the build itself.
package main

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/eos"
	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	ctx := context.Background()
	b := []string{"127.0.0.1:9092"}
	p, _ := producer.New(b, kdeliver.AtLeastOnce, producer.WithMessageIDs(), kdeliver.WithClientID("c"))
	_ = p.Produce(ctx, &kgo.Record{Topic: "t"})
	tp, _ := producer.NewTransactional(b, "id")
	_ = tp.Transact(ctx, func(ctx context.Context, tx *producer.Tx) error {
		return tx.Produce(ctx, &kgo.Record{Topic: "t"})
	})
	_, _ = consumer.New(b, "g", []string{"t"}, kdeliver.AtLeastOnce, consumer.WithMaxPollRecords(3),
		kdeliver.WithBackoff(time.Millisecond, time.Second), kdeliver.WithClientID("c"))
	_, _ = eos.New(b, "g", []string{"t"}, "id", eos.WithOutputTopic("o"), kdeliver.WithMaxAttempts(3))
}
