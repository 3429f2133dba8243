//go:build cgo

package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// confluentBuilt is false where cgo is off: confluent-kafka-go wraps
// librdkafka (bundled, linked statically) and needs a C compiler.
const confluentBuilt = true

func confluentVersion() string {
	_, v := ckafka.LibraryVersion()
	return v
}

func confluentProduce(ctx context.Context, e *env, n int) (result, error) {
	p, err := ckafka.NewProducer(&ckafka.ConfigMap{
		"bootstrap.servers":                     e.brokers[0],
		"client.id":                             "bench-confluent",
		"enable.idempotence":                    true,
		"acks":                                  "all",
		"max.in.flight.requests.per.connection": inFlight,
		"linger.ms":                             int(linger / time.Millisecond),
		"batch.size":                            batchBytes,
		"compression.type":                      "none",
		"message.timeout.ms":                    int(deliveryLimit / time.Millisecond),
		"go.delivery.report.fields":             "none",
	})
	if err != nil {
		return result{}, err
	}
	defer p.Close()
	a := newAcks(n)
	freed := make(chan struct{}, 1)
	go func() {
		for ev := range p.Events() {
			if m, ok := ev.(*ckafka.Message); ok {
				a.ack(m.TopicPartition.Error)
				select {
				case freed <- struct{}{}:
				default:
				}
			}
		}
	}()
	topic := e.topic
	m := startMeter()
	for i := 0; i < n; {
		msg := &ckafka.Message{TopicPartition: ckafka.TopicPartition{Topic: &topic, Partition: int32(i % partitions)}, Value: e.payload.value(i)}
		err := p.Produce(msg, nil)
		var kerr ckafka.Error
		switch {
		case err == nil:
			i++
		case errors.As(err, &kerr) && kerr.Code() == ckafka.ErrQueueFull:
			select { // wait for a delivery to free room
			case <-freed:
			case <-ctx.Done():
				return result{}, fmt.Errorf("after %d records: %w", i, ctx.Err())
			}
		default:
			return result{}, fmt.Errorf("record %d: %w", i, err)
		}
	}
	if err := a.wait(ctx); err != nil {
		return result{}, err
	}
	return m.stop(n), nil
}

func confluentConsume(ctx context.Context, e *env, topic, group string, n int) (result, error) {
	cs, err := ckafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":        e.brokers[0],
		"group.id":                 group,
		"auto.offset.reset":        "earliest",
		"enable.auto.commit":       true,
		"auto.commit.interval.ms":  int(autoCommitInterval / time.Millisecond),
		"enable.auto.offset.store": false,
	})
	if err != nil {
		return result{}, err
	}
	defer cs.Close()
	if err := cs.Subscribe(topic, nil); err != nil {
		return result{}, err
	}
	c := newCounter(n)
	for c.count() < n {
		if err := ctx.Err(); err != nil {
			return result{}, fmt.Errorf("after %d records: %w", c.count(), err)
		}
		switch ev := cs.Poll(100).(type) {
		case *ckafka.Message:
			if ev.TopicPartition.Error != nil {
				return result{}, ev.TopicPartition.Error
			}
			if _, err := cs.StoreMessage(ev); err != nil {
				return result{}, fmt.Errorf("store offset: %w", err)
			}
			c.add()
		case ckafka.Error:
			if ev.IsFatal() {
				return result{}, ev
			}
		}
	}
	if _, err := cs.Commit(); err != nil {
		var kerr ckafka.Error
		if !errors.As(err, &kerr) || kerr.Code() != ckafka.ErrNoOffset {
			return result{}, fmt.Errorf("final commit: %w", err)
		}
	}
	return c.m.stop(n), nil
}

func confluentCopy(ctx context.Context, e *env, in, out, group string, n int) (result, error) {
	cs, err := ckafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":  e.brokers[0],
		"group.id":           group,
		"auto.offset.reset":  "earliest",
		"enable.auto.commit": false,
		"isolation.level":    "read_committed",
	})
	if err != nil {
		return result{}, err
	}
	defer cs.Close()
	p, err := ckafka.NewProducer(&ckafka.ConfigMap{
		"bootstrap.servers":         e.brokers[0],
		"transactional.id":          e.name("bench-confluent-txn"),
		"enable.idempotence":        true,
		"acks":                      "all",
		"linger.ms":                 int(linger / time.Millisecond),
		"batch.size":                batchBytes,
		"go.delivery.report.fields": "none",
	})
	if err != nil {
		return result{}, err
	}
	defer p.Close()
	var failed atomic.Pointer[error]
	go func() {
		for ev := range p.Events() {
			if msg, ok := ev.(*ckafka.Message); ok && msg.TopicPartition.Error != nil {
				err := msg.TopicPartition.Error
				failed.CompareAndSwap(nil, &err)
			}
		}
	}()
	if err := p.InitTransactions(ctx); err != nil {
		return result{}, fmt.Errorf("init transactions: %w", err)
	}
	if err := cs.Subscribe(in, nil); err != nil {
		return result{}, err
	}
	var m meter
	committed, pending, commits := 0, 0, 0
	for committed < n {
		if err := p.BeginTransaction(); err != nil {
			return result{}, fmt.Errorf("begin: %w", err)
		}
		var t0 time.Time
		for pending+committed < n && (t0.IsZero() || time.Since(t0) < txnInterval) {
			if err := ctx.Err(); err != nil {
				return result{}, fmt.Errorf("after %d records committed: %w", committed, err)
			}
			switch ev := cs.Poll(10).(type) {
			case *ckafka.Message:
				if ev.TopicPartition.Error != nil {
					return result{}, ev.TopicPartition.Error
				}
				if committed == 0 && pending == 0 {
					m = startMeter()
				}
				if t0.IsZero() {
					t0 = time.Now()
				}
				for {
					err := p.Produce(&ckafka.Message{TopicPartition: ckafka.TopicPartition{Topic: &out, Partition: ev.TopicPartition.Partition},
						Key: ev.Key, Value: ev.Value}, nil)
					if kerr, ok := err.(ckafka.Error); ok && kerr.Code() == ckafka.ErrQueueFull {
						p.Flush(1)
						continue
					}
					if err != nil {
						return result{}, fmt.Errorf("produce: %w", err)
					}
					break
				}
				pending++
			case ckafka.Error:
				if ev.IsFatal() {
					return result{}, ev
				}
			}
		}
		parts, err := cs.Assignment()
		if err != nil {
			return result{}, err
		}
		pos, err := cs.Position(parts)
		if err != nil {
			return result{}, fmt.Errorf("position: %w", err)
		}
		meta, err := cs.GetConsumerGroupMetadata()
		if err != nil {
			return result{}, err
		}
		if err := p.SendOffsetsToTransaction(ctx, pos, meta); err != nil {
			return result{}, fmt.Errorf("send offsets: %w", err)
		}
		if err := p.CommitTransaction(ctx); err != nil {
			return result{}, fmt.Errorf("commit: %w", err)
		}
		if f := failed.Load(); f != nil {
			return result{}, fmt.Errorf("produce: %w", *f)
		}
		committed += pending
		pending = 0
		commits++
	}
	return m.stopCommits(n, commits), nil
}
