// Command postgres shows exactly-once from Kafka into PostgreSQL with
// pgstore.Sink: each batch's rows and the consumed offsets commit in one
// transaction, so a consumer that crashes and restarts writes every record
// once.
//
// It produces 1,000 orders (to an in-process Kafka unless -brokers is
// given), consumes them into the table example_orders with a consumer built
// with kdeliver.ExactlyOnce and consumer.WithSink that stops mid-stream (it
// never commits to Kafka: the offsets live in PostgreSQL) and a second one
// that resumes where the table ends, and prints the table's counts:
//
//	go run ./examples/postgres -postgres 'postgres://kdeliver:kdeliver@127.0.0.1:5432/kdeliver'
//
// The URL defaults to $KDELIVER_POSTGRES_URL (.ci/services.sh starts such a
// server).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/pgstore"
	"github.com/kdeliver/kdeliver/internal/embedded"
)

const (
	topic  = "orders"
	group  = "orders-to-postgres"
	orders = 1000
)

func main() {
	url := flag.String("postgres", os.Getenv("KDELIVER_POSTGRES_URL"), "PostgreSQL URL")
	brokerList := flag.String("brokers", "", "Kafka brokers, comma-separated (default: an in-process cluster)")
	flag.Parse()
	if *url == "" {
		log.Fatal("no PostgreSQL: pass -postgres URL or set KDELIVER_POSTGRES_URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, *url, *brokerList); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url, brokerList string) error {
	var given []string
	if brokerList != "" {
		given = strings.Split(brokerList, ",")
	}
	brokers, stop, err := embedded.Brokers(ctx, given, 3, topic)
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
	if err := produce(ctx, brokers); err != nil {
		return err
	}

	// First consumer: stops after about half the orders.
	if err := consume(ctx, pool, brokers, orders/2); err != nil {
		return err
	}
	// Second consumer: resumes from the offsets stored in PostgreSQL.
	if err := consume(ctx, pool, brokers, orders); err != nil {
		return err
	}
	var rows, distinct int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT order_id) FROM example_orders`).Scan(&rows, &distinct); err != nil {
		return err
	}
	fmt.Printf("%d orders produced, %d rows written, %d duplicates, %d lost\n", orders, rows, rows-distinct, orders-distinct)
	return nil
}

func produce(ctx context.Context, brokers []string) error {
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
			Headers: []kgo.RecordHeader{{Key: dedup.HeaderMessageID, Value: []byte(id)}}}
	}
	return cl.ProduceSync(ctx, rs...).FirstErr()
}

// consume runs a sink consumer until the table holds at least until rows.
func consume(ctx context.Context, pool *pgxpool.Pool, brokers []string, until int) error {
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
	c, err := consumer.New(brokers, group, []string{topic}, kdeliver.ExactlyOnce,
		consumer.WithSink(sink),
		consumer.WithMaxPollRecords(100), // small batches, so the stop lands mid-stream
		kdeliver.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx, nil) }() // no handler: the sink's ApplyFunc is the side effect
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
