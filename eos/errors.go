package eos

import (
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrFenced is matched (errors.Is) by the error [Session.Run] returns when
// Kafka fenced the session's producer: another instance owns this
// transactional ID; exit. The fenced session's open transaction is aborted
// and none of its records become visible to read_committed readers. Do not
// retry with the same transactional ID in this process: that would fence the
// other instance in turn. The error also matches the Kafka error, e.g.
// kerr.ProducerFenced.
var ErrFenced = errors.New("eos: producer fenced: another instance owns this transactional ID; exit")

type fencedError struct{ err error }

func (e *fencedError) Error() string        { return ErrFenced.Error() + ": " + e.err.Error() }
func (e *fencedError) Is(target error) bool { return target == ErrFenced }
func (e *fencedError) Unwrap() error        { return e.err }

// HandlerError is returned by [Session.Run] when the handler failed (returned
// an error or panicked) on the same record [WithMaxAttempts] times and no
// dead-letter topic is set. The transaction holding the record was aborted:
// nothing from it is visible, and the record is handled again by whoever
// runs the group next. Fix the cause, or set [WithDeadLetterTopic].
type HandlerError struct {
	// Record is the input record the handler failed on.
	Record *kgo.Record
	// Attempts is how many times it was handled.
	Attempts int
	// Err is the handler's last error.
	Err error
}

func (e *HandlerError) Error() string {
	return fmt.Sprintf("eos: handler failed %d times on %s[%d] offset %d: %v", e.Attempts, e.Record.Topic, e.Record.Partition, e.Record.Offset, e.Err)
}

// Unwrap returns the handler's error.
func (e *HandlerError) Unwrap() error { return e.Err }

// panicError is a handler panic turned into an error.
type panicError struct{ v any }

func (e panicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.v) }
