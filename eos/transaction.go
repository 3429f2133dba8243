package eos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/ready"
)

// attempts counts the failures of one record.
type attempts struct {
	n     int
	first time.Time
}

type recordKey struct {
	topic     string
	partition int32
	offset    int64
}

// Abort reasons, the "eos.reason" attribute of an aborted transaction span.
const (
	reasonRebalance = "rebalance"      // End returned (false, nil)
	reasonHandler   = "handler_error"  // the handler failed; retried
	reasonProduce   = "produce_error"  // an output record failed; client replaced
	reasonShutdown  = "shutdown"       // ctx cancelled or Close, nothing handled yet
	reasonEnd       = "end_error"      // End failed; client replaced
	reasonTimeout   = "txn_timeout"    // handling outlived the transaction timeout
	reasonRewind    = "rewind_guard"   // polled below the committed offset; client replaced
	reasonStop      = "handler_failed" // the handler failed for the last time; Run returns
	reasonFenced    = "fenced"         // another instance owns the transactional ID
	reasonFatal     = "fatal_error"    // a failure no retry fixes (a missing ACL); Run returns
)

// loop is the state of one Run.
type loop struct {
	s          *Session
	h          Handler
	hctx       context.Context // the handler's: Run's values, cancelled when Close's ctx ends
	attempts   map[recordKey]attempts
	bo         *backoff.ExponentialBackOff // between handler attempts
	recreateBo *backoff.ExponentialBackOff // between client recreations
	// expect holds, after an abort or a cut, the offset each partition
	// must resume at; the first record polled per partition is checked.
	expect map[string]map[int32]int64
	// solo is a record whose handling made a transaction outlive its
	// timeout: it is handled first in a transaction of its own.
	solo recordKey
	// missing holds output topics that produces found unknown, since when.
	missing map[string]time.Time
	checked bool // the brokers and topics were found ready in this Run
	// seq calls the handler of the sequential loop; nil when handlers run
	// concurrently (kdeliver.WithConcurrency, see concurrent.go).
	seq *caller
	// paced records were handled in paceTook by the last transaction that
	// handled any, from its first poll to its end (see pollLimit).
	paced    int
	paceTook time.Duration
	// held is what the last transaction polled while it flushed, for the
	// next one (see flushPolling).
	held *heldPoll
	// ahead holds the partitions of the last commit's held records, whose
	// end kgo takes as committed, and the client it was made on (see
	// rewindAhead).
	ahead   map[string]map[int32]kgo.EpochOffset
	aheadOf *client
	// runTrace is Run's ctx without its cancellation when it carries a
	// span, else nil: the context of output records when tracing is off
	// and the input record carries no trace of its own.
	runTrace context.Context
}

// txn is the state of one transaction.
type txn struct {
	c        *client
	sess     *kgo.GroupTransactSession
	span     trace.Span
	begun    time.Time
	firstOut time.Time // when the first output was produced: the broker's timer starts then
	records  int
	dlq      int
	reason   string // abort reason, "" while the transaction can commit
	replace  bool   // close the client after End
	fatal    error  // Run returns it after End
	crashed  error  // abandon without End and return it
	// cut holds, for partitions whose polled records were not all
	// handled, the offset of the first one not handled: the transaction
	// commits that offset instead of the end of the poll.
	cut map[string]map[int32]kgo.EpochOffset
	// ahead holds, for partitions with records polled while the
	// transaction flushed (held for the next one), the offset of the first
	// such record: the transaction commits that offset.
	ahead map[string]map[int32]kgo.EpochOffset
	// held is what the transaction handled first, polled while the last
	// one flushed; nil if it began with a poll of its own.
	held *heldPoll
	// slowest is the record whose handler took longest, and how long.
	slowest     recordKey
	slowestTook time.Duration

	prodMu    sync.Mutex
	prodErr   error
	prodTopic string                   // topic of the output that failed first
	promise   func(*kgo.Record, error) // one for all the transaction's records
}

func (t *txn) abort(reason string) {
	if t.reason == "" {
		t.reason = reason
	}
}

func (l *loop) run(ctx context.Context) error {
	if trace.SpanContextFromContext(ctx).IsValid() {
		l.runTrace = context.WithoutCancel(ctx)
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		c, err := l.s.current()
		if err != nil {
			if errors.Is(err, kdeliver.ErrClosed) {
				return nil
			}
			return fmt.Errorf("eos: rebuilding the client: %w", err)
		}
		if !c.prepared.Load() {
			if err := l.prepare(ctx, c); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if err := l.transaction(ctx, c); err != nil {
			return err
		}
	}
}

// transaction polls, begins, handles records until the transaction is full,
// its time is up or Run stops, and ends the transaction. It returns an error
// only to stop Run.
func (l *loop) transaction(ctx context.Context, c *client) error {
	s := l.s
	sess := c.gts
	// The first poll asks for what the last transaction's pace handles in
	// an interval (see pollLimit).
	slack := s.slack()
	var fs kgo.Fetches
	held := l.held
	l.held = nil
	if held != nil && held.c == c {
		fs = held.fs // polled while the last transaction flushed (see flushPolling)
	} else {
		held = nil
		limit := -1 // every buffered record: see concurrent.go
		if l.seq != nil {
			limit = pollLimit(s.cfg.commitRecords, int(sess.Client().BufferedFetchRecords()), l.paced, l.paceTook, s.cfg.commitInterval, slack)
		}
		fs = sess.PollRecords(ctx, limit)
	}
	if fs.IsClientClosed() {
		return nil
	}
	if ctx.Err() != nil {
		if !fs.Empty() {
			// The poll raced the cancellation: the client has moved past
			// records nobody handled, and a later Run on this session
			// would commit their offsets with its first transaction.
			// Drop the client; the next one starts from the committed
			// offsets.
			s.dropClient(c)
		}
		return nil
	}
	if err := l.pollErrors(fs); err != nil {
		// No transaction is open; what this poll returned is read again
		// from the committed offsets (Run's end closes the client).
		return err
	}
	if fs.Empty() {
		return nil
	}
	t := &txn{c: c, sess: sess, begun: time.Now(), held: held}
	if err := sess.Begin(); err != nil {
		// The previous End left the producer unusable.
		if f := l.fenced(err, t); f != nil {
			return f
		}
		if ferr := s.scope.Err(err); ferr != nil {
			s.dropClient(c)
			return fmt.Errorf("eos: beginning a transaction: %w", ferr)
		}
		l.replace(ctx, c, "begin failed", err)
		return nil
	}
	_, t.span = s.tracer.Start(context.Background(), "eos transaction", trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("eos.transactional_id", s.txnID)))

	deadline := t.begun.Add(s.cfg.commitInterval)
	if l.seq == nil {
		l.handleConcurrently(ctx, t, fs, deadline)
	}
	for l.seq != nil {
		l.handleAll(ctx, t, fs, deadline.Add(slack)) // handles up to slack past the deadline (see pollLimit)
		now := time.Now()
		if t.reason != "" || t.crashed != nil || t.cut != nil || t.records >= s.cfg.commitRecords || !now.Before(deadline) {
			break
		}
		pctx, cancel := context.WithDeadline(ctx, deadline)
		buffered := int(sess.Client().BufferedFetchRecords())
		fs = sess.PollRecords(pctx, pollLimit(s.cfg.commitRecords-t.records, buffered, t.records, now.Sub(t.begun), deadline.Sub(now), slack))
		cancel()
		if fs.IsClientClosed() {
			t.abort(reasonShutdown)
			break
		}
		if ctx.Err() != nil {
			// Records this poll returned are not handled: cut before
			// them, so the transaction commits what was handled.
			l.cutRest(t, fs)
			break
		}
		if err := l.pollErrors(fs); err != nil {
			// The open transaction aborts, then Run returns err.
			t.abort(reasonFatal)
			t.fatal = err
			break
		}
	}
	if t.crashed != nil {
		// A simulated crash: no End, no commit, no leave; the broker
		// aborts the transaction on timeout or when the next instance
		// with this transactional ID initializes.
		t.span.SetAttributes(attribute.String("eos.outcome", "crash"))
		t.span.End()
		s.dropClient(c) // leaves, so that a restart need not wait out the session
		return t.crashed
	}
	if t.records == 0 && t.reason == "" {
		t.abort(reasonShutdown) // stopped before handling anything
	}
	return l.end(ctx, t)
}

// pollShare is the share of what a transaction's pace reaches by its
// deadline that a poll asks for: a poll that asks for less costs one more
// poll of kgo's buffer, one that asks for more than is reached costs a cut.
const pollShare = 0.8

// overrunShare is the share of the interval a transaction may run past its
// deadline to handle the rest of kgo's buffer (see pollLimit).
const overrunShare = 0.1

// slack is how long a transaction may run past its deadline (overrunShare
// of the interval).
func (s *Session) slack() time.Duration {
	return time.Duration(float64(s.cfg.commitInterval) * overrunShare)
}

// pollLimit is how many records a transaction's next poll asks for: of
// the left it may still take, pollShare of those its handling reaches in
// the time to its deadline (remaining) at the pace of the handled records
// it took elapsed to handle, and at least one; with no pace yet (a Run's
// first poll), one record, whose handling gives the pace. The records the
// transaction would not reach then stay in kgo's buffer for the next one:
// polled, they would be cut, and a cut sets its partitions back
// (SetOffsets), which drops what kgo had buffered for them and fetches it
// again.
//
// But when the pace handles all kgo has buffered by the deadline plus
// slack, the poll takes it all, and the transaction may run up to slack
// past its deadline to handle it: kgo fetches again only once its buffer
// is drained, so a remainder left in it would hold back the next fetch
// while the transaction ends, and the next transaction would start by
// waiting for it.
func pollLimit(left, buffered, handled int, elapsed, remaining, slack time.Duration) int {
	if handled == 0 {
		return min(left, 1)
	}
	if elapsed <= 0 {
		return left
	}
	rate := float64(handled) / float64(elapsed)
	reach := pollShare * rate * float64(remaining)
	if buffered > 0 && float64(buffered) <= rate*float64(remaining+slack) {
		reach = max(reach, float64(buffered))
	}
	if reach >= float64(left) {
		return left
	}
	return max(int(reach), 1)
}

// handleAll handles the polled records in order until the transaction is
// full, its interval is up or Run stops (then the rest are cut, see
// [txn.cut]); after an abort reason is set the rest are left for the rewind.
func (l *loop) handleAll(ctx context.Context, t *txn, fs kgo.Fetches, deadline time.Time) {
	s := l.s
	now := time.Now() // then the end of the last handler call
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		for i, r := range p.Records {
			if t.reason != "" || t.crashed != nil {
				return
			}
			stop := t.cut != nil || ctx.Err() != nil ||
				t.records > 0 && (t.records >= s.cfg.commitRecords || !now.Before(deadline) ||
					l.solo == recordKey{r.Topic, r.Partition, r.Offset})
			if stop {
				t.cutAt(p.Records[i])
				return
			}
			now = l.handle(ctx, t, r, now)
		}
	})
}

// cutAt notes that r and the records after it in its partition are not
// handled in this transaction (the lowest such record of a partition wins).
func (t *txn) cutAt(r *kgo.Record) { lowest(&t.cut, r) }

// lowest sets r's offset as its partition's in *m, unless *m has a lower
// one, making the maps as needed.
func lowest(m *map[string]map[int32]kgo.EpochOffset, r *kgo.Record) {
	if *m == nil {
		*m = map[string]map[int32]kgo.EpochOffset{}
	}
	ps := (*m)[r.Topic]
	if ps == nil {
		ps = map[int32]kgo.EpochOffset{}
		(*m)[r.Topic] = ps
	}
	if eo, ok := ps[r.Partition]; !ok || r.Offset < eo.Offset {
		ps[r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset}
	}
}

// cutRest cuts before every record of fs.
func (l *loop) cutRest(t *txn, fs kgo.Fetches) {
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) > 0 {
			t.cutAt(p.Records[0])
		}
	})
}

// end ends t and acts on the outcome.
func (l *loop) end(ctx context.Context, t *txn) error {
	s := l.s
	if t.records > 0 {
		l.paced, l.paceTook = t.records, time.Since(t.begun)
	}
	// kgo commits whatever was written if asked to, even when some records
	// of the transaction failed: wait for every produce to finish before
	// deciding, or a failure that lands during End's own flush would commit
	// the offsets of output that was never written.
	var prodErr error
	if t.reason == "" {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.txnTimeout)
		if l.seq != nil && t.cut == nil && ctx.Err() == nil {
			prodErr = l.flushPolling(ctx, fctx, t)
		} else {
			prodErr = t.sess.Client().Flush(fctx)
		}
		cancel()
	}
	t.prodMu.Lock()
	if t.prodErr != nil {
		prodErr = t.prodErr
	}
	prodTopic := t.prodTopic
	t.prodMu.Unlock()
	// A transaction that outlived its timeout was aborted by the broker,
	// which fails its outputs too: the cause is the timeout, not the
	// produce.
	outlived := !t.firstOut.IsZero() && time.Since(t.firstOut) >= s.cfg.txnTimeout
	if prodErr != nil && !outlived {
		// Every produce error aborts, and the client is replaced: a
		// request timeout or lost connection leaves unknown what the
		// broker applied, and only a new producer epoch fences it.
		t.abort(reasonProduce)
		t.replace = true
		if err := s.scope.Err(prodErr, prodTopic); err != nil {
			// No Write on the output (or the transactional ID): a new
			// client would be refused the same.
			t.fatal = fmt.Errorf("eos: producing the output: %w", err)
		} else if err := l.noteMissing(prodTopic, prodErr); err != nil {
			t.fatal = err
		}
	}
	if t.reason == "" && outlived {
		l.timedOut(t)
	}
	// End must not be cancelled except to shut down: it leaves the
	// transaction in an unknown state. Close unblocks it by closing the
	// client.
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.txnTimeout+s.cfg.sessionTimeout)
	if t.reason == "" && (t.cut != nil || t.ahead != nil || t.held != nil) {
		ectx = kgo.PreTxnCommitFnContext(ectx, func(req *kmsg.TxnOffsetCommitRequest) error {
			if t.held != nil {
				// Commit as the member that polled the held records: if
				// the group rebalanced since, the broker refuses the
				// offsets and the transaction aborts, as a rebalance
				// during it would (kgo may have revoked their partitions
				// after the last End, unseen by this one).
				req.MemberID, req.Generation = t.held.member, t.held.generation
				t.held.addEnds(req, t.cut)
			}

			for i := range req.Topics {
				rt := &req.Topics[i]
				for j := range rt.Partitions {
					rp := &rt.Partitions[j]
					if eo, ok := t.cut[rt.Topic][rp.Partition]; ok {
						rp.Offset, rp.LeaderEpoch = eo.Offset, eo.Epoch
					} else if eo, ok := t.ahead[rt.Topic][rp.Partition]; ok {
						rp.Offset, rp.LeaderEpoch = eo.Offset, eo.Epoch
					}
				}
			}
			return nil
		})
	}
	committed, err := t.sess.End(ectx, kgo.TransactionEndTry(t.reason == ""))
	cancel()
	if !committed {
		l.held = nil // the client rewinds past them
	}

	switch {
	case committed:
		// kgo takes the end of the held records as committed, where the
		// group has the offsets of their first (t.ahead).
		l.ahead, l.aheadOf = t.ahead, t.c
		if t.cut != nil {
			// End moved the client to the end of the poll; resume at
			// the cut instead (the offset just committed).
			t.sess.Client().SetOffsets(t.cut)
			l.expect = map[string]map[int32]int64{}
			for topic, ps := range t.cut {
				l.expect[topic] = map[int32]int64{}
				for p, eo := range ps {
					l.expect[topic][p] = eo.Offset
				}
			}
		} else {
			l.expect = nil
		}
		s.stats.committed.Add(1)
		s.txnDur.Record(time.Since(t.begun).Seconds(), "committed")
		s.stats.records.Add(int64(t.records))
		s.stats.deadLettered.Add(int64(t.dlq))
		clear(l.attempts)
		clear(l.missing)
		l.bo.Reset()
		l.recreateBo.Reset()
		t.span.SetAttributes(attribute.String("eos.outcome", "commit"), attribute.Int("eos.records", t.records))
		t.span.End()
		if s.committed != nil {
			s.committed()
		}
		return nil
	case err == nil:
		if t.reason == "" {
			t.reason = reasonRebalance
			s.stats.abortedRebalance.Add(1)
		}
	default:
		if f := l.fenced(err, t); f != nil {
			l.endAbortSpan(t, reasonFenced, err)
			return f
		}
		if ferr := s.scope.Err(err); ferr != nil {
			l.endAbortSpan(t, reasonEnd, err)
			return fmt.Errorf("eos: ending the transaction: %w", ferr)
		}
		t.abort(reasonEnd)
		t.replace = true
	}
	s.stats.aborted.Add(1)
	switch t.reason {
	case reasonHandler, reasonStop:
		s.stats.abortedHandler.Add(1)
	case reasonTimeout:
		s.stats.abortedTimeout.Add(1)
	case reasonProduce:
		s.stats.abortedProduce.Add(1)
	case reasonRebalance:
	default:
		s.stats.abortedOther.Add(1)
	}
	l.endAbortSpan(t, t.reason, err)
	if t.fatal != nil {
		return t.fatal
	}
	if t.replace {
		if ctx.Err() == nil {
			why := t.reason
			if err == nil {
				err = prodErr
			}
			l.replace(ctx, t.c, why, err)
		}
		return nil
	}
	if err := l.rewindAhead(ctx, t.c); err != nil {
		if ctx.Err() == nil {
			l.replace(ctx, t.c, "rewinding held records failed", err)
		}
		return nil
	}
	l.expect = committedOffsets(t.sess.Client())
	if t.reason == reasonHandler {
		wait(ctx, l.bo.NextBackOff())
	}
	return nil
}

// heldPoll is what a transaction polled while its flush ran, for the next
// transaction to handle first, and the group member that polled it.
type heldPoll struct {
	c          *client
	fs         kgo.Fetches
	member     string
	generation int32
}

// addEnds adds to the offsets of the transaction that handled h the
// partitions of h that kgo left out: it takes the end of h as committed
// by the transaction that polled it, which committed their start.
// A partition cut (in cut) commits the cut.
func (h *heldPoll) addEnds(req *kmsg.TxnOffsetCommitRequest, cut map[string]map[int32]kgo.EpochOffset) {
	ends := map[string]map[int32]kgo.EpochOffset{} // after each partition's last held record
	ids := map[string][16]byte{}
	for _, f := range h.fs {
		for _, ft := range f.Topics {
			for _, fp := range ft.Partitions {
				if len(fp.Records) == 0 {
					continue
				}
				if ends[ft.Topic] == nil {
					ends[ft.Topic], ids[ft.Topic] = map[int32]kgo.EpochOffset{}, ft.TopicID
				}
				last := fp.Records[len(fp.Records)-1]
				ends[ft.Topic][fp.Partition] = kgo.EpochOffset{Epoch: last.LeaderEpoch, Offset: last.Offset + 1}
			}
		}
	}
	for topic, ps := range ends {
		i := slices.IndexFunc(req.Topics, func(rt kmsg.TxnOffsetCommitRequestTopic) bool { return rt.Topic == topic })
		if i < 0 {
			rt := kmsg.NewTxnOffsetCommitRequestTopic()
			rt.Topic, rt.TopicID = topic, ids[topic]
			req.Topics = append(req.Topics, rt)
			i = len(req.Topics) - 1
		}
		rt := &req.Topics[i]
		for p, eo := range ps {
			if slices.ContainsFunc(rt.Partitions, func(rp kmsg.TxnOffsetCommitRequestTopicPartition) bool { return rp.Partition == p }) {
				continue // polled on since: kgo has its end
			}
			if c, ok := cut[topic][p]; ok {
				eo = c
			}
			rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
			rp.Partition, rp.Offset, rp.LeaderEpoch = p, eo.Offset, eo.Epoch
			rt.Partitions = append(rt.Partitions, rp)
		}
	}
}

// flushPolling flushes t's outputs and, while the flush runs, polls what
// the next transaction handles first (up to what the pace handles in an
// interval, see pollLimit), so that kgo's next fetch runs while t ends
// instead of after it: kgo fetches again only once its buffer is drained.
// t commits the offset of each partition's first polled record (t.ahead).
func (l *loop) flushPolling(ctx, fctx context.Context, t *txn) error {
	s := l.s
	cl := t.sess.Client()
	member, generation := cl.GroupMetadata()
	pctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		defer stop()
		done <- cl.Flush(fctx)
	}()
	limit := pollLimit(s.cfg.commitRecords, int(cl.BufferedFetchRecords()), l.paced, l.paceTook, s.cfg.commitInterval, s.slack())
	var fs kgo.Fetches
	for n := 0; n < limit && pctx.Err() == nil; {
		p := t.sess.PollRecords(pctx, limit-n)
		if p.IsClientClosed() || pctx.Err() != nil && p.NumRecords() == 0 {
			break
		}
		fs = append(fs, p...)
		n += p.NumRecords()
		if len(p.Errors()) > 0 {
			break // the next transaction's first poll acts on them
		}
	}
	err := <-done
	if len(fs) == 0 {
		return err
	}
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) > 0 {
			lowest(&t.ahead, p.Records[0])
		}
	})
	l.held = &heldPoll{c: t.c, fs: fs, member: member, generation: generation}
	s.stats.held.Add(int64(fs.NumRecords()))
	return err
}

// rewindAhead, after a transaction that did not commit, sets the
// partitions whose records the last commit held for the next transaction
// to the offsets the group has: kgo takes the end of those records as
// committed, and its rewind after the abort stops there.
func (l *loop) rewindAhead(ctx context.Context, c *client) error {
	ahead, of := l.ahead, l.aheadOf
	l.ahead, l.aheadOf = nil, nil
	if ahead == nil || of != c {
		return nil
	}
	cl := c.gts.Client()
	fctx, cancel := context.WithTimeout(ctx, l.s.cfg.sessionTimeout)
	defer cancel()
	var resps kadm.OffsetResponses
	var err error
	for {
		// The aborted transaction's markers may still be on their way:
		// the broker answers UNSTABLE_OFFSET_COMMIT until they land.
		resps, err = kadm.NewClient(cl).FetchOffsets(kadm.RequireStable(fctx), l.s.group)
		if err == nil {
			err = resps.Error()
		}
		if !errors.Is(err, kerr.UnstableOffsetCommit) || fctx.Err() != nil {
			break
		}
		wait(fctx, 20*time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("fetching the committed offsets of group %q: %w", l.s.group, err)
	}
	set := map[string]map[int32]kgo.EpochOffset{}
	for topic, ps := range ahead {
		for p := range ps {
			if o, ok := resps.Lookup(topic, p); ok && o.At >= 0 {
				if set[topic] == nil {
					set[topic] = map[int32]kgo.EpochOffset{}
				}
				set[topic][p] = kgo.EpochOffset{Epoch: o.LeaderEpoch, Offset: o.At}
			}
		}
	}
	cl.SetOffsets(set)
	l.s.stats.rewoundAhead.Add(1)
	return nil
}

// timedOut aborts t, which outlived the transaction timeout because
// handling was slow, and says what to change.
func (l *loop) timedOut(t *txn) {
	s := l.s
	t.abort(reasonTimeout)
	t.replace = true
	held := time.Since(t.firstOut).Round(time.Millisecond)
	slow := t.slowest
	s.log.Warn("eos: transaction outlived its timeout because handling was slow; aborting it and handling its records again, the slowest in a transaction of its own",
		"records", t.records, "held_open", held, "transaction_timeout", s.cfg.txnTimeout,
		"slowest_topic", slow.topic, "slowest_partition", slow.partition, "slowest_offset", slow.offset,
		"slowest_took", t.slowestTook.Round(time.Millisecond),
		"fix", "raise eos.WithTransactionTimeout above the slowest record's handling plus the commit interval, lower eos.WithCommitEvery, or speed up the handler")
	if t.records > 1 {
		l.solo = slow
	}
}

// noteMissing records that the output topic failed as unknown, and returns
// the error that stops Run once it stayed unknown for the start timeout.
func (l *loop) noteMissing(topic string, err error) error {
	if topic == "" || !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil
	}
	since, ok := l.missing[topic]
	if !ok {
		l.missing[topic] = time.Now()
		l.s.log.Warn("eos: output topic unknown to the brokers; retrying", "topic", topic, "up_to", l.s.hd.Start(), "err", err)
		return nil
	}
	if time.Since(since) < l.s.hd.Start() {
		return nil
	}
	return fmt.Errorf("eos: output %w", ready.Missing(time.Since(since).Round(time.Second), topic))
}

func (l *loop) endAbortSpan(t *txn, reason string, err error) {
	l.s.txnDur.Record(time.Since(t.begun).Seconds(), "aborted")
	t.span.SetAttributes(attribute.String("eos.outcome", "abort"), attribute.String("eos.reason", reason), attribute.Int("eos.records", t.records))
	if err != nil {
		t.span.RecordError(err)
		t.span.SetStatus(codes.Error, reason)
	}
	t.span.End()
}

// replace closes the client after an error; the next transaction builds a
// new one, whose InitProducerID bumps the epoch and fences anything the old
// producer left in flight.
func (l *loop) replace(ctx context.Context, c *client, why string, err error) {
	s := l.s
	pause := l.recreateBo.NextBackOff()
	s.log.Warn("eos: replacing the client: a new producer epoch fences what the old one may have left in flight",
		"reason", why, "err", err, "retry_in", pause)
	s.dropClient(c)
	s.stats.recreated.Add(1)
	wait(ctx, pause)
}

// fenced returns a fencedError when err says another producer owns the
// transactional ID. A fence that follows a transaction open longer than its
// timeout is the broker's timeout abort, not another owner: the client is
// replaced instead.
func (l *loop) fenced(err error, t *txn) error {
	if !errors.Is(err, kerr.ProducerFenced) && !errors.Is(err, kerr.InvalidProducerEpoch) {
		return nil
	}
	if !t.firstOut.IsZero() && time.Since(t.firstOut) >= l.s.cfg.txnTimeout {
		l.timedOut(t)
		return nil
	}
	l.s.stats.aborted.Add(1)
	l.s.stats.fenced.Add(1)
	l.s.log.Error("eos: producer fenced: another instance owns the transactional ID", "err", err)
	l.s.dropClient(t.c)
	return fmt.Errorf("eos: %w: another instance owns transactional ID %q; exit: %w", kdeliver.ErrFenced, l.s.txnID, err)
}

// pollErrors logs the errors of a poll and returns the first failure no
// retry fixes among them ([fatal.Scope.Fetches]), after failing the
// session with it, or nil.
func (l *loop) pollErrors(fs kgo.Fetches) error {
	err := l.s.scope.Fetches(fs, func(topic string, p int32, err error) {
		l.s.log.Warn("eos: fetch error; the client retries", "topic", topic, "partition", p, "err", err)
	})
	if err != nil {
		l.s.fail(err)
	}
	return err
}

// checkRewind reports whether r is below the offset its partition was
// rewound (or cut) to by the last transaction (kgo #1222 guard).
func (l *loop) checkRewind(r *kgo.Record) bool {
	ps, ok := l.expect[r.Topic]
	if !ok {
		return false
	}
	want, ok := ps[r.Partition]
	if !ok {
		return false
	}
	delete(ps, r.Partition)
	// With read_committed, aborted records and markers take offsets, so
	// the first record may be above the committed offset; below is a
	// re-read of committed input.
	return r.Offset < want
}

func committedOffsets(cl *kgo.Client) map[string]map[int32]int64 {
	m := map[string]map[int32]int64{}
	for t, ps := range cl.CommittedOffsets() {
		m[t] = map[int32]int64{}
		for p, eo := range ps {
			m[t][p] = eo.Offset
		}
	}
	return m
}

func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
