package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
	"github.com/kdeliver/kdeliver/consumer/sinktest"
	"github.com/kdeliver/kdeliver/dedup"
	"github.com/kdeliver/kdeliver/dedup/internal/killtest"
	"github.com/kdeliver/kdeliver/dedup/internal/testenv"
	"github.com/kdeliver/kdeliver/dedup/pgstore"
)

// insertEvent is the side effect of the sink tests: one row a record, with
// no unique constraint, so that a duplicate shows as a second row.
func insertEvent(table string) pgstore.ApplyFunc {
	q := `INSERT INTO ` + table + ` (id, part, off, writer) VALUES ($1, $2, $3, $4)`
	pid := os.Getpid()
	return func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error {
		_, err := tx.Exec(ctx, q, dedup.MessageID(r), r.Partition, r.Offset, pid)
		return err
	}
}

// freshTables drops and creates the events table and the sink's offsets
// table.
func freshTables(t testing.TB, p *pgxpool.Pool, events, offsets string) *pgstore.Sink {
	t.Helper()
	ctx := context.Background()
	for _, q := range []string{
		`DROP TABLE IF EXISTS ` + events + `, ` + offsets,
		`CREATE TABLE ` + events + ` (id text NOT NULL, part integer NOT NULL, off bigint NOT NULL, writer integer NOT NULL)`,
	} {
		if _, err := p.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	s := pgstore.NewSink(p, insertEvent(events), pgstore.WithTable(offsets))
	if err := s.CreateTable(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// counts returns the rows and distinct IDs of an events table.
func counts(ctx context.Context, p *pgxpool.Pool, events string) (rows, distinct int, err error) {
	err = p.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM `+events).Scan(&rows, &distinct)
	return rows, distinct, err
}

func recs(topic string, partition int32, from, to int64) []*kgo.Record {
	var out []*kgo.Record
	for o := from; o < to; o++ {
		id := fmt.Sprintf("%s-%d-%d", topic, partition, o)
		out = append(out, &kgo.Record{Topic: topic, Partition: partition, Offset: o,
			Headers: []kgo.RecordHeader{{Key: kdeliver.HeaderMessageID, Value: []byte(id)}}})
	}
	return out
}

func assign(t *testing.T, s *pgstore.Sink, gen int32, topic string, parts ...int32) map[string]map[int32]int64 {
	t.Helper()
	got, err := s.Assign(t.Context(), consumer.Assignment{Group: "g", MemberID: "m", Generation: gen, Partitions: map[string][]int32{topic: parts}})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestSinkConformance: pgstore.Sink passes consumer/sinktest. The side
// effect is one row a record in a table without a unique constraint, so a
// duplicate shows as a second row.
func TestSinkConformance(t *testing.T) {
	p := pool(t)
	const events, offsets = "sinkconf_events", "sinkconf_offsets"
	for _, q := range []string{
		`DROP TABLE IF EXISTS ` + events + `, ` + offsets,
		`CREATE TABLE ` + events + ` (topic text NOT NULL, part integer NOT NULL, off bigint NOT NULL)`,
	} {
		if _, err := p.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgstore.NewSink(p, nil, pgstore.WithTable(offsets)).CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	insert := `INSERT INTO ` + events + ` (topic, part, off) VALUES ($1, $2, $3)`
	sinktest.Run(t, func(*testing.T) sinktest.Harness {
		return sinktest.Harness{
			NewSink: func(fail func(*kgo.Record) error) consumer.Sink {
				return pgstore.NewSink(p, func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error {
					if err := fail(r); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, insert, r.Topic, r.Partition, r.Offset)
					return err
				}, pgstore.WithTable(offsets))
			},
			Rows: func(ctx context.Context, topic string, partition int32) ([]int64, error) {
				rows, err := p.Query(ctx, `SELECT off FROM `+events+` WHERE topic = $1 AND part = $2`, topic, partition)
				if err != nil {
					return nil, err
				}
				return pgx.CollectRows(rows, pgx.RowTo[int64])
			},
		}
	})
}

// A member that lost a partition to another writes nothing: its Write is
// refused by the epoch check, even though it still thinks it owns it.
func TestSinkFencesSupersededMember(t *testing.T) {
	p := pool(t)
	ctx := t.Context()
	old := freshTables(t, p, "sinktest_events", "sinktest_offsets")
	cur := pgstore.NewSink(p, insertEvent("sinktest_events"), pgstore.WithTable("sinktest_offsets"))

	if got := assign(t, old, 1, "t", 0); len(got) != 0 {
		t.Fatalf("first Assign returned offsets %v, want none", got)
	}
	if err := old.Write(ctx, recs("t", 0, 0, 10)); err != nil {
		t.Fatal(err)
	}
	if got := assign(t, cur, 2, "t", 0); got["t"][0] != 10 {
		t.Fatalf("Assign after 10 records = %v, want t/0 at 10", got)
	}
	err := old.Write(ctx, recs("t", 0, 10, 20))
	if !errors.Is(err, kdeliver.ErrFenced) {
		t.Fatalf("Write from the superseded member: err = %v, want ErrFenced", err)
	}
	if rows, _, _ := counts(ctx, p, "sinktest_events"); rows != 10 {
		t.Fatalf("%d rows after the fenced write, want 10", rows)
	}
	// The current owner writes, skipping what is already stored.
	if err := cur.Write(ctx, recs("t", 0, 5, 20)); err != nil {
		t.Fatal(err)
	}
	rows, distinct, err := counts(ctx, p, "sinktest_events")
	if err != nil || rows != 20 || distinct != 20 {
		t.Fatalf("rows=%d distinct=%d err=%v, want 20 distinct rows", rows, distinct, err)
	}
	// Revoked partitions are fenced too.
	cur.Revoke(map[string][]int32{"t": {0}})
	if err := cur.Write(ctx, recs("t", 0, 20, 21)); !errors.Is(err, kdeliver.ErrFenced) {
		t.Fatalf("Write after Revoke: err = %v, want ErrFenced", err)
	}
}

// A failing side effect rolls back the whole batch, offset included.
func TestSinkApplyErrorRollsBack(t *testing.T) {
	p := pool(t)
	ctx := t.Context()
	freshTables(t, p, "sinktest_events", "sinktest_offsets")
	boom := errors.New("boom")
	calls := 0
	s := pgstore.NewSink(p, func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error {
		calls++
		if r.Offset == 3 && calls < 10 {
			return boom
		}
		return insertEvent("sinktest_events")(ctx, tx, r)
	}, pgstore.WithTable("sinktest_offsets"))
	assign(t, s, 1, "t", 0)
	if err := s.Write(ctx, recs("t", 0, 0, 5)); !errors.Is(err, boom) {
		t.Fatalf("Write with a failing record: err = %v, want boom", err)
	}
	if rows, _, _ := counts(ctx, p, "sinktest_events"); rows != 0 {
		t.Fatalf("%d rows after a failed batch, want 0", rows)
	}
	if got := assign(t, s, 2, "t", 0); len(got) != 0 {
		t.Fatalf("offsets after a failed batch = %v, want none stored", got)
	}
	calls = 10
	if err := s.Write(ctx, recs("t", 0, 0, 5)); err != nil {
		t.Fatal(err)
	}
	if rows, _, _ := counts(ctx, p, "sinktest_events"); rows != 5 {
		t.Fatalf("%d rows after the retry, want 5", rows)
	}
}

const (
	killRecords = 50_000
	killEvents  = "killtest_events"
	killOffsets = "killtest_offsets"
)

// 50,000 records into PostgreSQL through the sink, by exactly-once consumer
// processes (consumer.WithSink) killed with SIGKILL 5 times and once more
// after a rebalance between two instances: the table holds each record
// exactly once.
func TestSinkExactlyOnceUnderSIGKILL(t *testing.T) {
	if _, _, child := killtest.Child(); child {
		t.Skip("child process")
	}
	p := pool(t)
	freshTables(t, p, killEvents, killOffsets)
	rep := killtest.Run(t, killtest.Plan{
		Records:    killRecords,
		Partitions: 6,
		Kills:      5,
		ChildTest:  "TestSinkKillChild",
		Slow:       time.Millisecond, // every 10th record: about 6s of work
		Progress: func(ctx context.Context) (int, error) {
			_, d, err := counts(ctx, p, killEvents)
			return d, err
		},
	})
	rows, distinct, err := counts(t.Context(), p, killEvents)
	if err != nil {
		t.Fatal(err)
	}
	var stored int64
	if err := p.QueryRow(t.Context(), `SELECT coalesce(sum(next_offset), 0) FROM `+killOffsets).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	var writers int
	if err := p.QueryRow(t.Context(), `SELECT count(DISTINCT writer) FROM `+killEvents).Scan(&writers); err != nil {
		t.Fatal(err)
	}
	t.Logf("kills=%d rebalances=%d elapsed=%s rows=%d distinct=%d stored offsets sum=%d writing processes=%d",
		rep.Kills, rep.Rebalances, rep.Elapsed.Round(time.Millisecond), rows, distinct, stored, writers)
	if rows != killRecords || distinct != killRecords {
		t.Fatalf("table holds %d rows, %d distinct; want exactly %d: %d duplicates, %d lost",
			rows, distinct, killRecords, rows-distinct, killRecords-distinct)
	}
	if stored != killRecords {
		t.Fatalf("stored offsets add up to %d, want %d", stored, killRecords)
	}
}

// TestSinkKillChild is the consumer process of TestSinkExactlyOnceUnderSIGKILL.
func TestSinkKillChild(t *testing.T) {
	brokers, slow, ok := killtest.Child()
	if !ok {
		t.Skip("helper process of TestSinkExactlyOnceUnderSIGKILL")
	}
	p := pool(t)
	apply := insertEvent(killEvents)
	sink := pgstore.NewSink(p, func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error {
		if slow > 0 && r.Offset%10 == 0 {
			time.Sleep(slow)
		}
		return apply(ctx, tx, r)
	}, pgstore.WithTable(killOffsets))
	runSink(t.Context(), t, brokers, killtest.Group, sink, func(err error) { fmt.Fprintln(os.Stderr, "sink:", err) })
}

// PostgreSQL stopped mid-stream: the side effect does not run while it is
// down, the failures are reported, and when it returns the consumer resumes
// with every record written once.
func TestSinkPostgresOutage(t *testing.T) {
	if _, _, child := killtest.Child(); child {
		t.Skip("child process")
	}
	cluster := testenv.Get(t, "KDELIVER_PG_CLUSTER", "a PostgreSQL cluster this test may stop (\"15 main\")")
	pgctl := func(action string) {
		args := append(strings.Fields(cluster), action)
		if action == "stop" {
			args = append(args, "-m", "immediate") // like a crash: no clean shutdown
		}
		if out, err := exec.Command("pg_ctlcluster", args...).CombinedOutput(); err != nil {
			t.Fatalf("pg_ctlcluster %v: %v\n%s", args, err, out)
		}
	}
	p := pool(t)
	const n = 20_000
	events, offsets := "outage_events", "outage_offsets"
	freshTables(t, p, events, offsets)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var applied, failures atomic.Int64
	insert := insertEvent(events)
	sink := pgstore.NewSink(p, func(ctx context.Context, tx pgx.Tx, r *kgo.Record) error {
		applied.Add(1)
		if r.Offset%10 == 0 {
			time.Sleep(time.Millisecond)
		}
		return insert(ctx, tx, r)
	}, pgstore.WithTable(offsets))
	var (
		mu      sync.Mutex
		lastErr error
	)
	report := func(err error) {
		mu.Lock()
		lastErr = err
		mu.Unlock()
		failures.Add(1)
	}

	brokers, stopKafka := killtest.Kafka(ctx, t, 6, n)
	defer stopKafka()
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Short retries, so that the consumer notices PostgreSQL's return soon.
		runSink(runCtx, t, brokers, "outage", sink, report, kdeliver.WithBackoff(50*time.Millisecond, time.Second))
	}()
	defer func() { stopRun(); <-done }()

	waitUntil(ctx, t, "some records written", func() bool { _, d, err := counts(ctx, p, events); return err == nil && d >= n/5 })
	restarted := false
	defer func() {
		if !restarted {
			pgctl("start")
		}
	}()
	pgctl("stop")
	waitUntil(ctx, t, "failures reported", func() bool { return failures.Load() >= 3 })
	before := applied.Load()
	seen := failures.Load()
	waitUntil(ctx, t, "more failures", func() bool { return failures.Load() >= seen+3 })
	if got := applied.Load(); got != before {
		t.Fatalf("the side effect ran %d times while PostgreSQL was down", got-before)
	}
	mu.Lock()
	err := lastErr
	mu.Unlock()
	if !errors.Is(err, dedup.ErrStore) {
		t.Fatalf("reported error = %v, want one wrapping dedup.ErrStore", err)
	}
	t.Logf("while down: %d failures reported, side effect not run; last: %v", failures.Load(), err)
	pgctl("start")
	restarted = true
	waitUntil(ctx, t, "all records written", func() bool { _, d, err := counts(ctx, p, events); return err == nil && d >= n })
	time.Sleep(300 * time.Millisecond)
	rows, distinct, err := counts(ctx, p, events)
	if err != nil || rows != n || distinct != n {
		t.Fatalf("after the outage: rows=%d distinct=%d err=%v, want exactly %d", rows, distinct, err, n)
	}
}

// runSink consumes killtest.Topic into sink as group with an exactly-once
// sink consumer until ctx ends, passing each failed Write to report.
func runSink(ctx context.Context, t *testing.T, brokers []string, group string, sink consumer.Sink, report func(error), opts ...consumer.Option) {
	opts = append([]consumer.Option{
		consumer.WithMaxPollRecords(2000),
		consumer.WithKgoOpts(killtest.ClientOpts(nil)[1:]...),
	}, opts...)
	c, err := consumer.NewWithSink(brokers, group, []string{killtest.Topic}, reportingSink{sink, report}, opts...)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close(context.Background())
	if err := c.Run(ctx); err != nil {
		t.Error(err)
	}
}

// reportingSink passes the errors of its Sink's Write to report.
type reportingSink struct {
	consumer.Sink
	report func(error)
}

func (s reportingSink) Write(ctx context.Context, recs []*kgo.Record) error {
	err := s.Sink.Write(ctx, recs)
	if err != nil {
		s.report(err)
	}
	return err
}

func waitUntil(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
