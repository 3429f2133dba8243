// Package shared holds the settings every kdeliver client shares, so that the
// root package's options apply to producers, consumers and sessions alike.
package shared

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Settings are the options of the root package.
type Settings struct {
	Logger         *slog.Logger
	ClientID       string
	TracerProvider trace.TracerProvider // nil: the global provider
	MeterProvider  metric.MeterProvider // nil: the global provider
	StartTimeout   time.Duration        // 0: the default
}

// Config is implemented by each package's configuration: it exposes the
// shared settings and takes problems found while applying options.
type Config interface {
	Shared() *Settings
	// Reject records an option that does not fit this configuration.
	Reject(problem string)
}

// DefaultStartTimeout mirrors kdeliver.DefaultStartTimeout (the root
// package imports this one).
const DefaultStartTimeout = 30 * time.Second

// Start returns the start timeout, and a problem if one was set that is not
// positive.
func (s *Settings) Start() (time.Duration, string) {
	switch {
	case s.StartTimeout == 0:
		return DefaultStartTimeout, ""
	case s.StartTimeout < 0:
		return DefaultStartTimeout, "kdeliver.WithStartTimeout needs a positive duration"
	}
	return s.StartTimeout, ""
}
