// Package embedded is on its way out (issue 8: nothing outside internal/
// may import it). Tests start clusters with package kdelivertest, the demo
// and the example programs find theirs with package exampleenv. What is
// left forwards to them for the code not yet moved; delete the package once
// nothing imports it.
package embedded

import (
	"context"

	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// Cluster is a [kdelivertest.Cluster].
type Cluster = kdelivertest.Cluster

// Option is a [kdelivertest.Option].
type Option = kdelivertest.Option

// Options of [Start]: see package kdelivertest.
var (
	WithBrokers   = kdelivertest.WithBrokers
	WithTopic     = kdelivertest.WithTopic
	WithKfakeOpts = kdelivertest.WithKfakeOpts
)

// Start is [kdelivertest.NewCluster]; ctx bounds nothing but is checked
// first.
func Start(ctx context.Context, opts ...Option) (*Cluster, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return kdelivertest.NewCluster(opts...)
}

// Brokers is [exampleenv.Brokers].
func Brokers(ctx context.Context, given []string, partitions int32, topics ...string) ([]string, func(), error) {
	return exampleenv.Brokers(ctx, given, partitions, topics...)
}
