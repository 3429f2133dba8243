// Command produceroption passes a producer option to consumer.New.
package main

import (
	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	_, _ = consumer.New([]string{"127.0.0.1:9092"}, "g", []string{"t"}, kdeliver.AtLeastOnce, producer.WithLeaderAck())
}
