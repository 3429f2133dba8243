// Command handleroption passes a handler option (retries of a consumer or
// a session) to producer.New.
package main

import (
	"time"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

func main() {
	_, _ = producer.New([]string{"127.0.0.1:9092"}, kdeliver.AtLeastOnce, kdeliver.WithBackoff(time.Millisecond, time.Second))
}
