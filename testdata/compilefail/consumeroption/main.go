// Command consumeroption passes a consumer option to producer.New.
package main

import (
	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	_, _ = producer.New([]string{"127.0.0.1:9092"}, kdeliver.AtLeastOnce, consumer.WithMaxPollRecords(3))
}
