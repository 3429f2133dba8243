package eos

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/internal/preset"
	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

// watchOpts are the session client's options that keep its assignment for
// the hanging-transaction watch.
func (s *Session) watchOpts() []kgo.Opt {
	if s.hd.HangBound <= 0 {
		return nil
	}
	return []kgo.Opt{
		kgo.OnPartitionsAssigned(s.assigned.Assigned),
		kgo.OnPartitionsRevoked(s.assigned.Removed),
		kgo.OnPartitionsLost(s.assigned.Removed),
	}
}

// watchHanging starts the hanging-transaction watch of a Run, if asked
// for, until ctx ends, on a client of its own (the session's client is
// replaced after errors); the returned function waits for it to stop.
func (s *Session) watchHanging(ctx context.Context) (wait func()) {
	if s.hd.HangBound <= 0 {
		return func() {}
	}
	base, _ := preset.Base(&s.cfg.t.Shared, "")
	cl, err := kgo.NewClient(append(base, kgo.SeedBrokers(s.brokers...))...)
	if err != nil {
		s.log.Error("hanging-transaction watch not started", "err", err)
		return func() {}
	}
	waitWatch := txnwatch.Start(ctx, cl, s.hd.HangBound, s.assigned.Owned, s.hd.OnHang, &s.hanging, s.log)
	return func() {
		waitWatch()
		cl.Close()
	}
}
