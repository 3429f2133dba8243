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
	// produced order-1..order-5, each acknowledged by all in-sync replicas
	// handled order-1
	// handled order-2
	// order-3: the payment service is down, handler fails: retried, offset not committed
	// handled order-3
	// handled order-4
	// handled order-5
	// all 5 orders handled; offsets committed after processing, so a crash would repeat, never lose
}
