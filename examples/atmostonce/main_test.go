package main

import (
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, nil, os.Stdout); err != nil {
		panic(err)
	}
	// Output:
	// sent temperature-1..temperature-5 with acks=0 (no acknowledgement, no retry)
	// handled temperature-1
	// temperature-2: handler fails: skipped, its offset was committed before processing
	// handled temperature-3
	// handled temperature-4
	// handled temperature-5
	// 4 of 5 readings handled: at-most-once never repeats a reading, and loses one on failure
}
