package eos

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// The tests of this file are the regressions of issue 14: failure paths
// that stalled or misled rather than losing or duplicating.

// TestOldTimestampOutputAndDeadLetter: the outputs and the dead letter of
// input records timestamped an hour ago are committed with that timestamp.
// The dead letter copies the input's timestamp, and kgo's
// RecordDeliveryTimeout (counted from the timestamp) failed it at once,
// aborting transaction after transaction.
func TestOldTimestampOutputAndDeadLetter(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 3), kdelivertest.WithTopic("out", 3), kdelivertest.WithTopic("dlq", 1))
	old := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	const n = 30
	kdelivertest.Seed(t, c.Brokers(), "in", n, kdelivertest.Timestamp(old))
	began := time.Now()
	s, err := New(c.Brokers(), "g", []string{"in"}, "old-ts", fastOpts(
		WithOutputTopic("out"), WithDeadLetterTopic("dlq"), kdeliver.WithMaxAttempts(2))...)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCommitted(t, c, s, func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if string(in.Value) == "7" {
			return errors.New("poison")
		}
		emit(&kgo.Record{Key: in.Key, Value: in.Value, Timestamp: in.Timestamp})
		return nil
	})
	st := s.Stats()
	if st.DeadLettered != 1 || st.Records != n {
		t.Errorf("stats %+v: want 1 dead-lettered of %d records", st, n)
	}
	out := kdelivertest.ReadCommitted(t, c.Brokers(), "out")
	dlq := kdelivertest.ReadCommitted(t, c.Brokers(), "dlq")
	if len(out) != n-1 || len(dlq) != 1 || string(dlq[0].Value) != "7" {
		t.Fatalf("read %d outputs and %d dead letters, want %d and the one of record 7", len(out), len(dlq), n-1)
	}
	for _, r := range append(out, dlq...) {
		if !r.Timestamp.Equal(old) {
			t.Errorf("%s record %s has timestamp %v, want the input's %v", r.Topic, r.Value, r.Timestamp, old)
		}
	}
	// The dead letter keeps the input's timestamp, but says when the
	// record first failed: during this run, not an hour ago.
	first, err := time.Parse(time.RFC3339Nano, headers(dlq[0])[kdeliver.HeaderDLQFirstFailure])
	if err != nil || first.Before(began) || first.After(time.Now()) {
		t.Errorf("dead letter's %s header %q (%v), want a time within the run", kdeliver.HeaderDLQFirstFailure, headers(dlq[0])[kdeliver.HeaderDLQFirstFailure], err)
	}
}

// TestSlowHandlerCommitsMidPoll: 2,000 records in one poll at 5 ms a record
// take 10 s, far beyond the 3 s transaction timeout; the session ends each
// transaction after its interval, in the middle of the poll, and commits
// everything without an abort. Before, the interval was checked only between
// polls: every transaction outlived its timeout and nothing was committed.
func TestSlowHandlerCommitsMidPoll(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	const n = 2000
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	s, err := New(c.Brokers(), "g", []string{"in"}, "slow", fastOpts(
		WithOutputTopic("out"), WithCommitEvery(n, time.Second),
		WithTransactionTimeout(3*time.Second), WithSessionTimeout(6*time.Second),
		WithKgoOpts(kgo.FetchMaxPartitionBytes(10<<20)))...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			time.Sleep(5 * time.Millisecond)
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}()
	kdelivertest.WaitFor(t, 60*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Aborted != 0 || st.Committed < 5 {
		t.Errorf("stats %+v: want no abort and at least 5 transactions (one a second)", st)
	}
	exactly(t, c, "out", want)
}

// TestRecordSlowerThanTransactionTimeout: one record whose handler takes
// longer than the transaction timeout does not stall the session: the
// transaction it made outlive its timeout is aborted, and the record is
// handled again first in a transaction of its own, where the broker's timer
// starts only at its output.
func TestRecordSlowerThanTransactionTimeout(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	const n = 20
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	s, err := New(c.Brokers(), "g", []string{"in"}, "very-slow", fastOpts(
		WithOutputTopic("out"), WithCommitEvery(n, 400*time.Millisecond),
		WithTransactionTimeout(time.Second), WithSessionTimeout(6*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	var slowCalls atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- s.Run(context.Background(), func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
			if string(in.Value) == "5" {
				slowCalls.Add(1)
				time.Sleep(1500 * time.Millisecond)
			}
			emit(&kgo.Record{Key: in.Key, Value: in.Value})
			return nil
		})
	}()
	kdelivertest.WaitFor(t, 60*time.Second, "all input committed", func() bool { return c.CommittedAll("g", "in") })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	exactly(t, c, "out", want)
	t.Logf("stats %+v, slow record handled %d times", s.Stats(), slowCalls.Load())
}

// TestStopAtNextRecord: cancelling Run while a handler that ignores its ctx
// works through a large poll stops at the next record, commits what was
// handled, and leaves the rest (nothing lost: a second Run copies it).
// Before, Run finished the whole poll and committed it.
func TestStopAtNextRecord(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	const n = 500
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	s, err := New(c.Brokers(), "g", []string{"in"}, "stop", fastOpts(
		WithOutputTopic("out"), WithCommitEvery(n, 30*time.Second),
		WithTransactionTimeout(time.Minute), WithSessionTimeout(2*time.Minute))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var calls, afterStop atomic.Int32
	var stopped atomic.Bool
	h := func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		if calls.Add(1) == 50 {
			cancel()
			stopped.Store(true)
		} else if stopped.Load() {
			afterStop.Add(1)
		}
		time.Sleep(2 * time.Millisecond) // ignores ctx
		emit(&kgo.Record{Key: in.Key, Value: in.Value})
		return nil
	}
	if err := s.Run(ctx, h); err != nil {
		t.Fatal(err)
	}
	if got := afterStop.Load(); got != 0 {
		t.Errorf("%d records were handled after Run's ctx was cancelled, want 0", got)
	}
	if got := c.Committed("g", "in"); got[0] != 50 {
		t.Errorf("committed offsets after the stop = %v, want 50 (the records handled)", got)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The next instance copies the rest: nothing lost, nothing twice.
	s2, err := New(c.Brokers(), "g", []string{"in"}, "stop", fastOpts(WithOutputTopic("out"))...)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCommitted(t, c, s2, h)
	exactly(t, c, "out", want)
}

// TestMissingTopicsAndBrokers: Run fails within the start timeout, with a
// typed error naming what is missing, when the input topic, the output
// topic or the brokers are not there; before, Run waited until its ctx ended
// and returned nil, or aborted and re-created its client for ever.
func TestMissingTopicsAndBrokers(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	for _, tc := range []struct {
		name    string
		brokers []string
		in      string
		opts    []Option
		want    error
		names   string
	}{
		{"input", c.Brokers(), "no-such-input", []Option{WithOutputTopic("out")}, kdeliver.ErrTopicNotFound, "no-such-input"},
		{"output", c.Brokers(), "in", []Option{WithOutputTopic("no-such-output")}, kdeliver.ErrTopicNotFound, "no-such-output"},
		{"dead letters", c.Brokers(), "in", []Option{WithOutputTopic("out"), WithDeadLetterTopic("no-such-dlq"), kdeliver.WithMaxAttempts(1)}, kdeliver.ErrTopicNotFound, "no-such-dlq"},
		{"brokers", []string{"127.0.0.1:1"}, "in", []Option{WithOutputTopic("out")}, kdeliver.ErrUnreachable, "127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := append(fastOpts(tc.opts...), kdeliver.WithStartTimeout(time.Second))
			s, err := New(tc.brokers, "g-"+tc.name, []string{tc.in}, "missing-"+tc.name, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			if err := s.Ping(context.Background()); !errors.Is(err, tc.want) {
				t.Errorf("Ping = %v, want %v", err, tc.want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = s.Run(ctx, copyTo("out"))
			if !errors.Is(err, tc.want) || ctx.Err() != nil {
				t.Fatalf("Run = %v (ctx %v), want %v before the ctx ends", err, ctx.Err(), tc.want)
			}
			if !contains(err.Error(), tc.names) || !contains(err.Error(), "WithStartTimeout") {
				t.Errorf("error %q does not name %s and the option to wait longer", err, tc.names)
			}
		})
	}
}

// TestUnknownOutputTopicStops: a handler that emits to a topic that does not
// exist makes Run fail with ErrTopicNotFound naming it once the start timeout
// passed, instead of aborting and re-creating the client for ever.
func TestUnknownOutputTopicStops(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	s, err := New(c.Brokers(), "g", []string{"in"}, "dyn", append(fastOpts(), kdeliver.WithStartTimeout(time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = s.Run(ctx, copyTo("nowhere"))
	if !errors.Is(err, kdeliver.ErrTopicNotFound) || !errors.Is(err, kerr.UnknownTopicOrPartition) || !contains(err.Error(), "nowhere") {
		t.Fatalf("Run = %v, want ErrTopicNotFound naming topic nowhere", err)
	}
	if st := s.Stats(); st.Committed != 0 {
		t.Errorf("stats %+v: nothing may commit", st)
	}
}

// TestRestartFencesOpenTransaction: an instance that died between committing
// its offsets in a transaction and ending it leaves the group's offsets
// unstable (UNSTABLE_OFFSET_COMMIT) until the transaction times out. A new
// session with the same transactional ID fences (aborts) that transaction
// before it fetches offsets, and copies everything well before the old
// transaction's timeout.
func TestRestartFencesOpenTransaction(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 1), kdelivertest.WithTopic("out", 1))
	const n = 20
	want := kdelivertest.Seed(t, c.Brokers(), "in", n)
	const txnTimeout = time.Minute
	deadTransaction(t, c, "restart", "g", "in", txnTimeout)

	s, err := New(c.Brokers(), "g", []string{"in"}, "restart", fastOpts(
		WithOutputTopic("out"), WithTransactionTimeout(txnTimeout), WithSessionTimeout(2*txnTimeout))...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background(), copyTo("out")) }()
	// The bound is a third of the old transaction's timeout: waiting the
	// transaction out would miss it.
	kdelivertest.WaitFor(t, txnTimeout/3, "all input committed by the new instance", func() bool { return c.CommittedAll("g", "in") })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	exactly(t, c, "out", want)
}

// deadTransaction leaves what a copier killed mid-commit leaves: a
// transaction of txnID, open, holding a pending offset commit for group on
// topic partition 0.
func deadTransaction(t *testing.T, c *kdelivertest.Cluster, txnID, group, topic string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	init := kmsg.NewPtrInitProducerIDRequest()
	init.TransactionalID = kmsg.StringPtr(txnID)
	init.TransactionTimeoutMillis = int32(timeout.Milliseconds())
	init.ProducerID, init.ProducerEpoch = -1, -1
	iresp, err := init.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(iresp.ErrorCode)
	}
	if err != nil {
		t.Fatal(err)
	}
	add := kmsg.NewPtrAddOffsetsToTxnRequest()
	add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = txnID, iresp.ProducerID, iresp.ProducerEpoch, group
	aresp, err := add.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(aresp.ErrorCode)
	}
	if err != nil {
		t.Fatal(err)
	}
	commit := kmsg.NewPtrTxnOffsetCommitRequest()
	commit.TransactionalID, commit.Group, commit.ProducerID, commit.ProducerEpoch = txnID, group, iresp.ProducerID, iresp.ProducerEpoch
	commit.Generation, commit.MemberID = -1, ""
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic, rt.TopicID = topic, c.Kfake().TopicInfo(topic).TopicID
	rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset, rp.LeaderEpoch = 0, 5, -1
	rt.Partitions = append(rt.Partitions, rp)
	commit.Topics = append(commit.Topics, rt)
	cresp, err := commit.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range cresp.Topics {
		for _, rp := range rt.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				t.Fatalf("pending offset commit: %v", err)
			}
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestCloseWhileJoining: a session whose first join waits on the broker (a
// static member that left without a leave holds the group's rebalance for
// its 30 s session timeout) stops at once when Run's ctx is cancelled, and
// Close keeps to its ctx; before, Close waited for the join (40 s on a real
// cluster with an 8 s ctx). The bound asserted is a third of the join's wait.
func TestCloseWhileJoining(t *testing.T) {
	c := kdelivertest.Start(t, kdelivertest.WithTopic("in", 2), kdelivertest.WithTopic("out", 1))
	kdelivertest.Seed(t, c.Brokers(), "in", 10)
	static, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.ConsumerGroup("g"), kgo.ConsumeTopics("in"),
		kgo.InstanceID("static"), kgo.SessionTimeout(30*time.Second), kgo.RebalanceTimeout(30*time.Second),
		kgo.DisableClientMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if fs := static.PollRecords(ctx, 1); fs.Empty() {
		t.Fatal("the static member did not join")
	}
	static.Close() // a static member does not leave: the group waits for it
	s, err := New(c.Brokers(), "g", []string{"in"}, "joining", fastOpts(WithOutputTopic("out"),
		WithTransactionTimeout(20*time.Second), WithSessionTimeout(30*time.Second),
		WithKgoOpts(kgo.RebalanceTimeout(30*time.Second)))...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx, copyTo("out")) }()
	kdelivertest.WaitFor(t, 10*time.Second, "the group to rebalance", func() bool {
		g := c.Kfake().GroupInfo("g")
		return g != nil && g.State == "PreparingRebalance"
	})
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its ctx being cancelled while joining")
	}
	closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
	defer cancelClose()
	closed := make(chan error, 1)
	go func() { closed <- s.Close(closeCtx) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close with a 1 s ctx did not return within 10 s while joining")
	}
}
