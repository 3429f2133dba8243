package consumer

import (
	"errors"
	"fmt"
)

// ErrPanic is wrapped by the error a handler's panic turns into. A panic is
// never a crash of the process: under AtLeastOnce it is retried like any
// failure, under AtMostOnce it is logged and the record skipped. Look for it
// with errors.Is on a [*HandlerError].
var ErrPanic = errors.New("consumer: handler panicked")

// HandlerError is returned by [Consumer.Run] when it stops because a handler
// kept failing: under AtLeastOnce or ExactlyOnce after the attempts allowed
// by [WithMaxAttempts], or at once for a record without a dedup key
// (errors.Is(err, dedup.ErrNoKey), with [WithDedup]). With [WithSink] it
// reports a sink Write that kept failing, and Offset is the first record of
// the batch. The record's offset is not committed (or stored by the sink), so
// the group delivers it again to the next consumer of its partition. Fix the
// cause (Err says what the handler or sink returned; errors.Is(err, ErrPanic)
// for a panic) and start a new Consumer.
type HandlerError struct {
	Topic     string
	Partition int32
	Offset    int64
	// Attempts is how many times the handler ran on the record.
	Attempts int
	// Err is the handler's last error.
	Err error
}

func (e *HandlerError) Error() string {
	return fmt.Sprintf("consumer: handler failed on %s[%d]@%d after %d attempt(s): %v", e.Topic, e.Partition, e.Offset, e.Attempts, e.Err)
}

// Unwrap returns the handler's error.
func (e *HandlerError) Unwrap() error { return e.Err }

// Skip wraps a handler's error to say "give up on this record": Run logs it
// and commits past the record instead of retrying it. Use it for records that
// can never succeed (malformed input, a poison message) under AtLeastOnce;
// under AtMostOnce every error already means skip. Skip(nil) returns nil.
//
//	if err := json.Unmarshal(rec.Value, &v); err != nil {
//		return consumer.Skip(err) // retrying cannot fix a bad record
//	}
func Skip(err error) error {
	if err == nil {
		return nil
	}
	return &skipError{err}
}

type skipError struct{ err error }

func (s *skipError) Error() string { return "consumer: skip record: " + s.err.Error() }
func (s *skipError) Unwrap() error { return s.err }

// isSkip reports whether err was made by Skip.
func isSkip(err error) bool {
	var s *skipError
	return errors.As(err, &s)
}
