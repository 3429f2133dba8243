package eos

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver/internal/ready"
)

// fenceAttempt bounds one InitProducerID request of [Session.fence].
const fenceAttempt = 10 * time.Second

// prepare fences earlier producers of the transactional ID, then starts
// consuming. The fence is an InitProducerID request of its own: the
// coordinator aborts the transaction a crashed instance left open (pending
// offsets included) before it answers, so the group's offsets are stable
// when this client fetches them; kgo's producer initializes (and bumps the
// epoch) again at its first produce.
func (s *Session) prepare(ctx context.Context, c *client) error {
	cl := c.gts.Client()
	req := kmsg.NewPtrInitProducerIDRequest()
	req.TransactionalID = kmsg.StringPtr(s.txnID)
	req.TransactionTimeoutMillis = int32(s.cfg.txnTimeout.Milliseconds())
	req.ProducerID, req.ProducerEpoch = -1, -1
	bo := s.newBackoff()
	limit := time.Now().Add(s.cfg.txnTimeout)
	for {
		actx, cancel := context.WithTimeout(ctx, fenceAttempt)
		resp, err := req.RequestWith(actx, cl)
		cancel()
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		switch {
		case err == nil:
			cl.AddConsumeTopics(s.topics...)
			c.prepared.Store(true)
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case s.scope.Err(err) != nil:
			return fmt.Errorf("eos: fencing earlier producers of transactional ID %q: %w", s.txnID, s.scope.Err(err))
		case !time.Now().Before(limit):
			// Not fenced: kgo's producer fences at its first produce,
			// which is correct, only slower to resume.
			s.log.Warn("eos: could not fence earlier producers of the transactional ID before reading; reading anyway (a crashed instance's transaction may delay the first poll until it times out)", "err", err)
			cl.AddConsumeTopics(s.topics...)
			c.prepared.Store(true)
			return nil
		}
		// CONCURRENT_TRANSACTIONS while the old transaction's markers
		// are written, a coordinator moving, a connection failing.
		wait(ctx, bo.NextBackOff())
	}
}

// prepare checks, once per Run, that the brokers answer and the topics
// exist, then fences and starts consuming on c.
func (l *loop) prepare(ctx context.Context, c *client) error {
	s := l.s
	if !l.checked {
		if err := ready.Wait(ctx, c.gts.Client(), s.scope, s.needed(), s.hd.Start(), s.log); err != nil {
			return fmt.Errorf("eos: %w", err)
		}
		if s.hd.ConsumerProtocol() {
			// kgo falls back to the classic protocol unseen on brokers
			// without KIP-848: fail instead.
			if err := ready.ConsumerProtocol(ctx, c.gts.Client(), s.scope); err != nil {
				return fmt.Errorf("eos: %w", err)
			}
		}
		l.checked = true
	}
	return s.prepare(ctx, c)
}
