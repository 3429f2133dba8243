package kdeliver

import (
	"errors"
	"strings"
)

// ErrInvalidConfig is wrapped by every error that rejects a configuration: an
// invalid [Semantics], an option that contradicts the chosen semantics, a
// missing broker list, topic or group. Construction fails with it; nothing is
// started. Fix the configuration the message names.
var ErrInvalidConfig = errors.New("kdeliver: invalid configuration")

// ErrClosed is returned by calls on a producer, consumer or session after its
// Close. Create a new one.
var ErrClosed = errors.New("kdeliver: closed")

// ConfigError lists every problem found in one configuration. It wraps
// [ErrInvalidConfig].
type ConfigError struct {
	// What names the thing being configured, e.g. "producer".
	What string
	// Semantics is the semantics the configuration was checked against, or
	// 0 when it was itself the problem.
	Semantics Semantics
	// Problems says what is wrong and how to fix it, one entry a problem.
	Problems []string
}

// Error lists the problems on one line each.
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("kdeliver: invalid ")
	if e.Semantics.Valid() {
		b.WriteString(e.Semantics.String())
		b.WriteByte(' ')
	}
	b.WriteString(e.What)
	b.WriteString(" configuration")
	if len(e.Problems) == 1 {
		b.WriteString(": ")
		b.WriteString(e.Problems[0])
		return b.String()
	}
	b.WriteString(":")
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p)
	}
	return b.String()
}

// Unwrap returns [ErrInvalidConfig].
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// Problems collects configuration problems and turns them into one
// [ConfigError]. The zero value is ready to use.
type Problems struct {
	list []string
}

// Add records a problem when cond is true. msg says what is wrong and how to
// fix it.
func (p *Problems) Add(cond bool, msg string) {
	if cond {
		p.list = append(p.list, msg)
	}
}

// Err returns nil when no problem was added, else a [*ConfigError] for what.
func (p *Problems) Err(what string, s Semantics) error {
	if len(p.list) == 0 {
		return nil
	}
	return &ConfigError{What: what, Semantics: s, Problems: p.list}
}
