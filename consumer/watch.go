package consumer

import (
	"context"

	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

// watchHanging starts the hanging-transaction watch of the run, if asked
// for, until ctx ends; the returned function waits for it to stop.
func (r *run) watchHanging(ctx context.Context) (wait func()) {
	hd := r.c.hd
	if hd.HangBound <= 0 {
		return func() {}
	}
	return txnwatch.Start(ctx, r.cl, hd.HangBound, r.assigned.Owned, hd.OnHang, &r.c.hanging, r.c.log)
}
