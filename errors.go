package kdeliver

import (
	"errors"
	"slices"
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

// ErrUnreachable is matched (errors.Is) by the error a consumer's or an
// exactly-once session's Run (and their Ping) returns when no seed broker
// answered within the start timeout ([WithStartTimeout]). The message names
// the brokers and the last connection error. Check the addresses, that the
// brokers run, and the network and TLS/SASL settings.
var ErrUnreachable = errors.New("kdeliver: brokers unreachable")

// ErrTopicNotFound is matched (errors.Is) by the error Run (and Ping) of a
// consumer or an exactly-once session returns when a topic it reads or
// writes does not exist within the start timeout ([WithStartTimeout]), or
// when an exactly-once session's output topic stays unknown that long. The
// message names the topics; the error also matches
// kerr.UnknownTopicOrPartition. Create the topic or fix its name.
var ErrTopicNotFound = errors.New("kdeliver: topic not found")

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
// fix it. A message already recorded is not repeated.
func (p *Problems) Add(cond bool, msg string) {
	if cond && !slices.Contains(p.list, msg) {
		p.list = append(p.list, msg)
	}
}

// Len returns the number of problems recorded.
func (p *Problems) Len() int { return len(p.list) }

// Err returns nil when no problem was added, else a [*ConfigError] for what.
func (p *Problems) Err(what string, s Semantics) error {
	if len(p.list) == 0 {
		return nil
	}
	return &ConfigError{What: what, Semantics: s, Problems: p.list}
}
