package integration

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver/kdelivertest"
)

// ReadCommitted reads every record of topic that is committed when it is
// called, with read_committed isolation, in partition order, then offset
// order: [kdelivertest.ReadCommittedRecords] on this cluster's brokers,
// bounded by ctx. Compare what it returns with what should be there with
// [kdelivertest.Audit].
func (c *Cluster) ReadCommitted(ctx context.Context, topic string, opts ...kgo.Opt) ([]*kgo.Record, error) {
	return kdelivertest.ReadCommittedRecords(ctx, c.brokers, topic, opts...)
}
