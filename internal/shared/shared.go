// Package shared holds the settings every kdeliver client shares, so that the
// root package's options apply to producers, consumers and sessions alike.
package shared

import (
	"log/slog"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Settings are the options of the root package.
type Settings struct {
	Logger         *slog.Logger
	ClientID       string
	TracerProvider trace.TracerProvider // nil: the global provider
	MeterProvider  metric.MeterProvider // nil: the global provider
}

// Config is implemented by each package's configuration: it exposes the
// shared settings and takes problems found while applying options.
type Config interface {
	Shared() *Settings
	// Reject records an option that does not fit this configuration.
	Reject(problem string)
}
