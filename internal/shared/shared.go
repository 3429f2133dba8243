// Package shared holds what the options of the root package set, so that
// they apply to producers, consumers, sessions and guards alike, and the
// target every package's options apply to.
package shared

import (
	"crypto/tls"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/sasl"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kdeliver/kdeliver/internal/txnwatch"
)

// Settings are the options of the root package that every client takes.
type Settings struct {
	Logger         *slog.Logger
	ClientID       string
	TracerProvider trace.TracerProvider // nil: the global provider
	MeterProvider  metric.MeterProvider // nil: the global provider
	Conn           Conn
}

// Conn is how every client of a configuration connects to the brokers.
type Conn struct {
	TLS *tls.Config // nil: plaintext
	// SASL authenticates each connection (nil: no authentication); SASLName
	// describes it for messages, without its secret.
	SASL          sasl.Mechanism
	SASLName      string
	PlaintextSASL bool // SASL without TLS was allowed
}

// check returns what is wrong with the connection settings taken
// together.
func (c Conn) check() []string {
	var problems []string
	switch {
	case c.SASL != nil && c.TLS == nil && !c.PlaintextSASL:
		problems = append(problems, "SASL over a plaintext connection sends the credentials (PLAIN) or the session in clear; "+
			"add kdeliver.WithTLS or kdeliver.WithTLSFiles or, on a network you trust, kdeliver.WithPlaintextSASL()")
	case c.PlaintextSASL && c.TLS != nil:
		problems = append(problems, "kdeliver.WithPlaintextSASL() allows SASL without TLS, but kdeliver.WithTLS or WithTLSFiles was given too: remove WithPlaintextSASL")
	case c.PlaintextSASL && c.SASL == nil:
		problems = append(problems, "kdeliver.WithPlaintextSASL() allows SASL without TLS, but no kdeliver.WithSASL was given: remove it, or add WithSASL")
	}
	return problems
}

// Handling are the root package's options of what runs a handler: a
// consumer and an exactly-once session.
type Handling struct {
	BackoffInitial, BackoffMax time.Duration // 0: the defaults
	MaxAttempts                int           // 0: retry for ever
	RetrySet                   bool          // WithBackoff or WithMaxAttempts was given
	StartTimeout               time.Duration // 0: the default
	DeadLetterTopic            string
	// Concurrency is how many handlers run at once (0: one, the
	// sequential loop); Order is the root's Ordering (0: by partition);
	// MaxInFlight bounds the records polled and not yet done (0: the
	// default for Concurrency).
	Concurrency, Order, MaxInFlight int
	// HangBound, if positive, watches the owned partitions for hanging
	// transactions (WithHangingTransactionWatch); OnHang, if not nil,
	// gets each report.
	HangBound time.Duration
	OnHang    func(txnwatch.Report)
	// GroupProtocol is the root's GroupProtocol (0: classic, 1: consumer,
	// KIP-848); GroupProtocolSet records that kdeliver.WithGroupProtocol
	// was given at all. A share group (share.New) has a protocol of its
	// own and must reject the option when GroupProtocolSet is true.
	GroupProtocol    int
	GroupProtocolSet bool
}

// Protocols of Handling.GroupProtocol, mirrored by the root package's
// GroupProtocol constants.
const (
	ClassicProtocol  = 0
	ConsumerProtocol = 1
)

// ConsumerProtocol reports whether the group runs KIP-848's consumer
// protocol.
func (h Handling) ConsumerProtocol() bool { return h.GroupProtocol == ConsumerProtocol }

// DefaultMaxInFlight is the bound on records in flight for a concurrency
// of n: enough queued behind each handler to keep it busy.
func DefaultMaxInFlight(n int) int { return max(64, 8*n) }

// Defaults of Handling, mirrored by the root package's constants (the root
// package imports this one).
const (
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 10 * time.Second
	DefaultStartTimeout   = 30 * time.Second
)

// Target is what every option applies to: the shared settings, and in Pkg
// the package's own configuration. An option that does not fit records a
// problem.
type Target struct {
	Shared   Settings
	Handling Handling
	Pkg      any
	Problems []string
}

// Reject records a problem found while applying an option.
func (t *Target) Reject(problem string) { t.Problems = append(t.Problems, problem) }

// Finish records the problems of the options taken together (SASL without
// TLS); every package calls it after applying the last option.
func (t *Target) Finish() { t.Problems = append(t.Problems, t.Shared.Conn.check()...) }

// Backoff returns the retry backoff with the defaults filled in.
func (h Handling) Backoff() (initial, limit time.Duration) {
	initial, limit = h.BackoffInitial, h.BackoffMax
	if initial == 0 {
		initial = DefaultBackoffInitial
	}
	if limit == 0 {
		limit = max(DefaultBackoffMax, initial)
	}
	return initial, limit
}

// Start returns the start timeout with the default filled in.
func (h Handling) Start() time.Duration {
	if h.StartTimeout == 0 {
		return DefaultStartTimeout
	}
	return h.StartTimeout
}
