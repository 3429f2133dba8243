package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	segkafka "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/consumer"
)

// autoCommitInterval is the commit interval of the clients whose
// at-least-once idiom is "mark each handled record, commit marks
// periodically" (sarama's default; set on kafka-go and librdkafka too).
const autoCommitInterval = time.Second

func consumeSection(ctx context.Context, e *env) (section, error) {
	topic := e.name("bench-consume")
	if err := seed(ctx, e, topic, e.cfg.consumeRecords); err != nil {
		return section{}, err
	}
	read := func(run func(ctx context.Context, e *env, topic, group string, n int) (result, error)) func(ctx context.Context, e *env, n int) (result, error) {
		return func(ctx context.Context, e *env, n int) (result, error) {
			return run(ctx, e, topic, e.name("bench-group"), n)
		}
	}
	sides := []side{
		{name: "raw kgo at-least-once", run: read(rawKgoConsume(kdeliver.AtLeastOnce, 0, 0)),
			note: "poll, handle each record, CommitUncommittedOffsets (synchronous) after each poll"},
		{name: "raw kgo at-least-once, 500 a poll, commit every 1 s", run: read(rawKgoConsume(kdeliver.AtLeastOnce, consumer.DefaultMaxPollRecords, consumer.DefaultCommitInterval)),
			note: "kdeliver's policy on a bare client: PollRecords(500) (consumer.WithMaxPollRecords, which bounds how long a poll's records hold a rebalance), handle, CommitUncommittedOffsets (synchronous) once 1 s (consumer.WithCommitInterval) has passed since the last, and at the end"},
		{name: "kdeliver at-least-once", base: "raw kgo at-least-once", also: []string{"raw kgo at-least-once, 500 a poll, commit every 1 s"}, run: read(kdeliverConsume(kdeliver.AtLeastOnce))},
		{name: "sarama", base: "raw kgo at-least-once", run: read(saramaConsume),
			note: "consumer group, MarkMessage after each record, auto-commit of marks every 1 s, Commit at the end"},
		{name: "kafka-go", base: "raw kgo at-least-once", run: read(kafkaGoConsume),
			note: "Reader with GroupID, FetchMessage then CommitMessages per record, CommitInterval 1 s (commits queued, flushed every second and at Close)"},
		{name: "confluent-kafka-go", base: "raw kgo at-least-once", run: read(confluentConsume),
			note: "Poll, StoreMessage after each record (enable.auto.offset.store=false), auto-commit of stored offsets every 1 s, Commit at the end"},
		{name: "Java ConsumerPerformance", base: "raw kgo at-least-once", run: read(javaConsume),
			note: "Kafka's defaults: auto-commit every 5 s of what poll returned (at-least-once in its poll loop); its fetch rate (join excluded); CPU minus a 1-record run's"},
		{name: "raw kgo at-most-once", run: read(rawKgoConsume(kdeliver.AtMostOnce, 0, 0)),
			note: "poll (all that is buffered), CommitUncommittedOffsets (synchronous), then handle the records"},
		{name: "raw kgo at-most-once, 500 a poll", run: read(rawKgoConsume(kdeliver.AtMostOnce, consumer.DefaultMaxPollRecords, 0)),
			note: "the same with PollRecords(500): kdeliver's default poll bound (consumer.WithMaxPollRecords), which bounds what a crash loses"},
		{name: "kdeliver at-most-once", base: "raw kgo at-most-once, 500 a poll", run: read(kdeliverConsume(kdeliver.AtMostOnce))},
	}
	if !confluentBuilt {
		sides = deleteSide(sides, "confluent-kafka-go")
	}
	if e.javaCP == "" {
		sides = deleteSide(sides, "Java ConsumerPerformance")
	}
	return section{name: "consumer", records: e.cfg.consumeRecords, sides: keep(e, sides)}, nil
}

// seed writes n records of 1 KiB to a new topic, spread evenly over its
// partitions.
func seed(ctx context.Context, e *env, topic string, n int) error {
	if err := e.c.CreateTopic(ctx, topic, partitions); err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		return err
	}
	defer cl.Close()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	a := newAcks(n)
	for i := range n {
		cl.Produce(sctx, &kgo.Record{Topic: topic, Partition: int32(i % partitions), Key: []byte("k" + strconv.Itoa(i%10000)), Value: e.payload.value(i)},
			func(_ *kgo.Record, err error) { a.ack(err) })
	}
	if err := a.wait(sctx); err != nil {
		return fmt.Errorf("seed %s: %w", topic, err)
	}
	fmt.Fprintf(os.Stderr, "bench: seeded %s with %d records\n", topic, n)
	return nil
}

// counter counts handled records; the first one starts the meter, the
// n-th closes done.
type counter struct {
	n, want int64
	m       meter
	done    chan struct{}
	started atomic.Bool
}

func newCounter(n int) *counter { return &counter{want: int64(n), done: make(chan struct{})} }

// add counts one record and reports whether it was the last wanted.
func (c *counter) add() bool {
	if c.started.CompareAndSwap(false, true) {
		c.m = startMeter()
	}
	n := atomic.AddInt64(&c.n, 1)
	if n == c.want {
		close(c.done)
	}
	return n == c.want
}

func (c *counter) count() int { return int(atomic.LoadInt64(&c.n)) }

// rawKgoConsume is a bare kgo loop: polls of at most maxPoll records (0:
// all that is buffered), committing synchronously before handling
// (AtMostOnce) or after it, after every poll, or, with commitEvery, once
// commitEvery has passed since the last commit and at the end.
func rawKgoConsume(sem kdeliver.Semantics, maxPoll int, commitEvery time.Duration) func(ctx context.Context, e *env, topic, group string, n int) (result, error) {
	return func(ctx context.Context, e *env, topic, group string, n int) (result, error) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
			kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			return result{}, err
		}
		defer cl.Close()
		c := newCounter(n)
		lastCommit := time.Now()
		for c.count() < n {
			var fs kgo.Fetches
			if maxPoll > 0 {
				fs = cl.PollRecords(ctx, maxPoll)
			} else {
				fs = cl.PollFetches(ctx)
			}
			if err := ctx.Err(); err != nil {
				return result{}, fmt.Errorf("after %d records: %w", c.count(), err)
			}
			if errs := fs.Errors(); len(errs) > 0 {
				return result{}, fmt.Errorf("fetch %s[%d]: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
			}
			if sem == kdeliver.AtMostOnce {
				if err := cl.CommitUncommittedOffsets(ctx); err != nil {
					return result{}, fmt.Errorf("commit: %w", err)
				}
			}
			for it := fs.RecordIter(); !it.Done() && c.count() < n; {
				_ = it.Next()
				c.add()
			}
			if sem != kdeliver.AtMostOnce && (commitEvery == 0 || c.count() >= n || time.Since(lastCommit) >= commitEvery) {
				if err := cl.CommitUncommittedOffsets(ctx); err != nil {
					return result{}, fmt.Errorf("commit: %w", err)
				}
				lastCommit = time.Now()
			}
		}
		return c.m.stop(n), nil
	}
}

func kdeliverConsume(sem kdeliver.Semantics) func(ctx context.Context, e *env, topic, group string, n int) (result, error) {
	return func(ctx context.Context, e *env, topic, group string, n int) (result, error) {
		cs, err := consumer.New(e.brokers, group, []string{topic}, sem, kdeliver.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			return result{}, err
		}
		defer cs.Close(context.Background())
		c := newCounter(n)
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		err = cs.Run(rctx, func(context.Context, *kgo.Record) error {
			if c.count() < n && c.add() {
				stop()
			}
			return nil
		})
		if err != nil {
			return result{}, err
		}
		if c.count() < n {
			return result{}, fmt.Errorf("kdeliver Run returned after %d of %d records: %v", c.count(), n, ctx.Err())
		}
		return c.m.stop(n), nil
	}
}

type saramaHandler struct {
	c    *counter
	n    int
	done func(sarama.ConsumerGroupSession)
}

func (saramaHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (saramaHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h saramaHandler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		if h.c.count() >= h.n {
			return nil
		}
		s.MarkMessage(msg, "")
		if h.c.add() {
			h.done(s)
			return nil
		}
	}
	return nil
}

func saramaConsume(ctx context.Context, e *env, topic, group string, n int) (result, error) {
	cfg := saramaConfig()
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	cfg.Consumer.Offsets.AutoCommit.Enable = true
	cfg.Consumer.Offsets.AutoCommit.Interval = autoCommitInterval
	cg, err := sarama.NewConsumerGroup(e.brokers, group, cfg)
	if err != nil {
		return result{}, err
	}
	defer cg.Close()
	c := newCounter(n)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var res result
	var commitOnce sync.Once
	h := saramaHandler{c: c, n: n, done: func(s sarama.ConsumerGroupSession) {
		commitOnce.Do(func() {
			s.Commit() // synchronous
			res = c.m.stop(n)
			stop()
		})
	}}
	for rctx.Err() == nil {
		if err := cg.Consume(rctx, []string{topic}, h); err != nil && rctx.Err() == nil {
			return result{}, err
		}
	}
	if c.count() < n {
		return result{}, fmt.Errorf("after %d of %d records: %w", c.count(), n, ctx.Err())
	}
	return res, nil
}

func kafkaGoConsume(ctx context.Context, e *env, topic, group string, n int) (result, error) {
	r := segkafka.NewReader(segkafka.ReaderConfig{
		Brokers:        e.brokers,
		GroupID:        group,
		Topic:          topic,
		MinBytes:       1,
		MaxBytes:       1 << 20, // per partition, as max.partition.fetch.bytes
		MaxWait:        500 * time.Millisecond,
		StartOffset:    segkafka.FirstOffset,
		CommitInterval: autoCommitInterval,
	})
	closed := false
	defer func() {
		if !closed {
			r.Close()
		}
	}()
	c := newCounter(n)
	for c.count() < n {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			return result{}, fmt.Errorf("after %d records: %w", c.count(), err)
		}
		if err := r.CommitMessages(ctx, msg); err != nil {
			return result{}, fmt.Errorf("commit: %w", err)
		}
		c.add()
	}
	closed = true
	if err := r.Close(); err != nil { // flushes the queued commits
		return result{}, fmt.Errorf("close (final commit): %w", err)
	}
	return c.m.stop(n), nil
}

func javaConsumerArgs(e *env, topic, group string, n int) []string {
	return []string{"--bootstrap-server", strings.Join(e.brokers, ","), "--topic", topic, "--group", group,
		"--num-records", strconv.Itoa(n), "--timeout", "30000"}
}

func javaConsume(ctx context.Context, e *env, topic, group string, n int) (result, error) {
	base, err := javaBaseline(ctx, e, "ConsumerPerformance", func() (time.Duration, error) {
		_, _, cpu, err := javaRun(ctx, e, "ConsumerPerformance", javaConsumerArgs(e, topic, e.name("bench-group"), 1)...)
		return cpu, err
	})
	if err != nil {
		return result{}, err
	}
	out, _, cpu, err := javaRun(ctx, e, "ConsumerPerformance", javaConsumerArgs(e, topic, group, n)...)
	if err != nil {
		return result{}, err
	}
	// A header line naming the columns, then one line of values.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	col := -1
	var vals []string
	for i, l := range lines {
		names := strings.Split(l, ",")
		for j, name := range names {
			if strings.TrimSpace(name) == "fetch.nMsg.sec" && i+1 < len(lines) {
				col, vals = j, strings.Split(lines[i+1], ",")
			}
		}
	}
	if col < 0 || col >= len(vals) {
		return result{}, fmt.Errorf("no fetch.nMsg.sec in ConsumerPerformance's output:\n%s", tail(out))
	}
	r, err := strconv.ParseFloat(strings.TrimSpace(vals[col]), 64)
	if err != nil || r <= 0 {
		return result{}, fmt.Errorf("fetch.nMsg.sec %q in ConsumerPerformance's output:\n%s", vals[col], tail(out))
	}
	return result{records: n, wall: time.Duration(float64(n) / r * float64(time.Second)), cpu: max(cpu-base, 0)}, nil
}
