package consumer

import (
	"errors"
)

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
