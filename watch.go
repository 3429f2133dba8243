package kdeliver

import (
	"fmt"
	"time"

	"github.com/kdeliver/kdeliver/internal/shared"
	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

// HangingTransaction is a partition held by an open transaction, as
// [WithHangingTransactionWatch] reports it: its last stable offset has not
// moved for longer than the bound while its high watermark is beyond it, so
// read_committed consumers stop there. It names the producer holding it
// (ProducerID -1 if none was found), and its String says how to free it
// (`kdeliver txns abort`, or Kafka's kafka-transactions.sh).
type HangingTransaction = txnwatch.Report

// WithHangingTransactionWatch watches the partitions a read_committed
// consumer (consumer.WithReadCommitted, NewWithGuard's ExactlyOnce) or an
// exactly-once session owns for hanging transactions. A partition whose
// last stable offset stands still, with records behind it, for longer than
// bound is reported once per stall: logged as a warning, counted
// (Stats().HangingTransactions, the kdeliver.transactions.hanging metric)
// and passed to report if not nil (from the watcher's goroutine: do not
// block). Choose bound above the longest transaction your producers run
// (their transaction timeout is the upper end). The watcher asks the
// brokers for the partitions' offsets every bound/4 (100ms to 30s) and, for
// a stalled partition, DescribeProducers and ListTransactions, which need
// Describe on the topic and on transactional IDs. It is off by default.
func WithHangingTransactionWatch(bound time.Duration, report func(HangingTransaction)) HandlerOption {
	return HandlerOption{func(t *shared.Target) {
		if bound <= 0 {
			t.Reject(fmt.Sprintf("kdeliver.WithHangingTransactionWatch(%v, ...): the bound must be positive, above the longest transaction your producers run", bound))
			return
		}
		t.Handling.HangBound, t.Handling.OnHang = bound, report
	}}
}
