// Command producetx produces outside a transaction on an exactly-once
// producer.
package main

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	p, _ := producer.NewTransactional([]string{"127.0.0.1:9092"}, "id")
	_ = p.Produce(context.Background(), &kgo.Record{Topic: "t"})
}
