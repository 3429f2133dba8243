package kdeliver

import (
	"log/slog"
	"time"

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
// retries, fencing) to l, overriding the default of passing warnings and
// errors (a record retried, a client replaced, a commit that failed) to
// slog.Default(). Pass slog.New(slog.DiscardHandler) for silence. kdeliver
// never logs record contents or credentials.
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

// DefaultStartTimeout is how long a consumer's or an exactly-once session's
// Run waits for the brokers to answer and its topics to exist.
const DefaultStartTimeout = 30 * time.Second

// WithStartTimeout sets how long Run of a consumer or an exactly-once
// session waits, before reading, for a broker to answer and for every topic
// it reads (and, for a session, writes) to exist, overriding
// [DefaultStartTimeout]; Run then fails with an error matching
// [ErrUnreachable] or [ErrTopicNotFound] that names what is missing. For a
// session it is also how long an output topic may stay unknown to its
// produces before Run fails. It must be positive. A producer ignores it: its
// records fail after the delivery timeout.
func WithStartTimeout(d time.Duration) Option {
	return Option{func(s *shared.Settings) {
		if d <= 0 {
			d = -1 // refused by the constructor
		}
		s.StartTimeout = d
	}}
}
