package dedup_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
)

// A guarded handler skips a redelivered record, and runs again one whose
// side effect failed.
func ExampleGuard_Handler() {
	guard, err := dedup.NewGuard(dedup.NewMemory(10_000), "orders")
	if err != nil {
		panic(err)
	}
	fail := true
	handler := guard.Handler(func(_ context.Context, r *kgo.Record) error {
		if fail {
			fail = false
			return errors.New("database unavailable")
		}
		fmt.Printf("charged %s\n", r.Value)
		return nil
	})
	rec := &kgo.Record{Value: []byte("order-1"), Headers: []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: []byte("order-1")}}}
	for range 3 { // delivered three times: a failure, a success, a duplicate
		fmt.Println("handler error:", handler(context.Background(), rec))
	}
	// Output:
	// handler error: database unavailable
	// charged order-1
	// handler error: <nil>
	// handler error: <nil>
}
