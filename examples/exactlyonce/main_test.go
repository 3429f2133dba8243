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
	// transaction 1 wrote payment-a, payment-b, then failed: aborted=true
	// transaction 2 wrote payment-c, payment-d, payment-e: committed
	// read_uncommitted sees the log:  payment-a payment-b payment-c payment-d payment-e
	// read_committed sees:            payment-c payment-d payment-e
}
