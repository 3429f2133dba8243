// Command postgres shows exactly-once from Kafka into PostgreSQL with
// pgstore.Sink: each batch's rows and the consumed offsets commit in one
// transaction, so a consumer that stops and restarts writes every record
// once.
//
// It produces 1,000 orders (to an embedded cluster unless -brokers is
// given), consumes them into the table example_orders with a sink consumer
// (consumer.NewWithSink) that stops mid-stream (it never commits to Kafka:
// the offsets live in PostgreSQL) and a second one that resumes where the
// table ends, and prints the table's counts:
//
//	go run ./examples/postgres -postgres 'postgres://kdeliver:kdeliver@127.0.0.1:5432/kdeliver'
//	go run ./examples/postgres -postgres URL -brokers host:9092   # a real cluster
//
// The URL defaults to $KDELIVER_POSTGRES_URL (.ci/services.sh starts such a
// server).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/pgstore"
	"github.com/kdeliver/kdeliver/internal/exampleenv"
)

const orders = 1000

func main() {
	url := flag.String("postgres", os.Getenv("KDELIVER_POSTGRES_URL"), "PostgreSQL URL")
	exampleenv.Main("postgres", func(ctx context.Context, brokers []string, w io.Writer) error {
		return run(ctx, *url, brokers, w)
	})
}

func run(ctx context.Context, url string, given []string, w io.Writer) error {
	if url == "" {
		return errors.New("no PostgreSQL: pass -postgres URL or set KDELIVER_POSTGRES_URL")
	}
	// Fresh names, so that a rerun on a real cluster starts clean.
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic, group := "orders-"+id, "orders-to-postgres-"+id
	brokers, stop, err := exampleenv.Brokers(ctx, given, 3, topic)
	if err != nil {
		return err
	}
	defer stop()

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	for _, q := range []string{
		`DROP TABLE IF EXISTS example_orders, example_offsets`,
		`CREATE TABLE example_orders (order_id text NOT NULL, body text NOT NULL)`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			return err
		}
	}
	if err := produce(ctx, brokers, topic); err != nil {
		return err
	}

	// First consumer: stops after about half the orders.
	if err := consume(ctx, pool, brokers, topic, group, orders/2); err != nil {
		return err
	}
	// Second consumer: resumes from the offsets stored in PostgreSQL.
	if err := consume(ctx, pool, brokers, topic, group, orders); err != nil {
		return err
	}
	var rows, distinct int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT order_id) FROM example_orders`).Scan(&rows, &distinct); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d orders produced, %d rows written, %d duplicates, %d lost\n", orders, rows, rows-distinct, orders-distinct)
	return nil
}

func produce(ctx context.Context, brokers []string, topic string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		return err
	}
	defer cl.Close()
	rs := make([]*kgo.Record, orders)
	for i := range rs {
		id := fmt.Sprintf("order-%04d", i)
		rs[i] = &kgo.Record{Key: []byte(id), Value: []byte(`{"qty":1}`),
			// What producer.WithMessageIDs() stamps; the sink does not need
			// it, the table keeps it to show there are no duplicates.
			Headers: []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: []byte(id)}}}
	}
	return cl.ProduceSync(ctx, rs...).FirstErr()
}

// consume runs a sink consumer until the table holds at least until rows.
func consume(ctx context.Context, pool *pgxpool.Pool, brokers []string, topic, group string, until int) error {
	sink := pgstore.NewSink(pool, func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error {
		_, err := tx.Exec(ctx, `INSERT INTO example_orders (order_id, body) VALUES ($1, $2)`, dedup.MessageID(r), r.Value)
		return err
	}, pgstore.WithTable("example_offsets"))
	if err := sink.CreateTable(ctx); err != nil {
		return err
	}
	// Exactly-once into the sink: each batch's rows and the offset after it
	// commit in one PostgreSQL transaction, and each partition starts at
	// the offset stored there. Nothing is committed to Kafka.
	c, err := consumer.NewWithSink(brokers, group, []string{topic}, sink,
		consumer.WithMaxPollRecords(100), // small batches, so the stop lands mid-stream
		kdeliver.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx)) // Run has returned by then: nothing to wait for
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }() // no handler: the sink's ApplyFunc is the side effect
	for {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM example_orders`).Scan(&n); err != nil {
			stop()
			<-done
			return err
		}
		if n >= until {
			break
		}
		select {
		case <-ctx.Done():
			stop()
			<-done
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop()
	return <-done
}
