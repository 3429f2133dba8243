package sinktest_test

import (
	"context"
	"fmt"
	"time"

	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/consumer/sinktest"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// A sink consumer writing into a Memory, as a test of code around it would
// use it: the rows are the records, and the offsets stored with them are
// where a restarted consumer resumes.
func ExampleMemory() {
	cluster, err := kdelivertest.NewCluster(kdelivertest.WithTopic("orders", 1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := kdelivertest.SeedRecords(ctx, cluster.Brokers(), "orders", 3); err != nil {
		fmt.Println(err)
		return
	}

	db := sinktest.NewMemory()
	c, err := consumer.NewWithSink(cluster.Brokers(), "billing", []string{"orders"}, db.NewSink(nil))
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	for len(db.Records("orders")) < 3 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range db.Records("orders") {
		fmt.Printf("row %s at offset %d\n", r.Value, r.Offset)
	}
	fmt.Println("stored offsets:", db.Offsets("billing", "orders"))
	// Output:
	// row 0 at offset 0
	// row 1 at offset 1
	// row 2 at offset 2
	// stored offsets: map[0:3]
}
