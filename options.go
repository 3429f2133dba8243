package kdeliver

import (
	"log/slog"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// Option is a setting shared by producers, consumers and exactly-once
// sessions: it is accepted wherever a producer.Option, consumer.Option or
// eos.Option is.
type Option struct {
	apply func(*shared.Settings)
}

// Apply applies the option to a package's configuration. It is called by
// kdeliver's packages; applications pass options to constructors instead.
func (o Option) Apply(c shared.Config) {
	if o.apply != nil {
		o.apply(c.Shared())
	}
}

// WithLogger logs the client's lifecycle events (commits, rebalances,
// retries, fencing) to l, overriding the default of no logging. kdeliver never
// logs record contents or credentials.
func WithLogger(l *slog.Logger) Option {
	return Option{func(s *shared.Settings) { s.Logger = l }}
}

// WithClientID sets the Kafka client ID, overriding the default "kdeliver".
func WithClientID(id string) Option {
	return Option{func(s *shared.Settings) { s.ClientID = id }}
}

// WithTracerProvider makes record and transaction spans with tp, overriding
// the global provider (otel.GetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return Option{func(s *shared.Settings) { s.TracerProvider = tp }}
}

// WithMeterProvider records client metrics with mp, overriding the global
// provider (otel.GetMeterProvider).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return Option{func(s *shared.Settings) { s.MeterProvider = mp }}
}
