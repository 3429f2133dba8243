// Package crash lets kdeliver's own tests and demo simulate a process that
// dies mid-batch. It is internal: applications cannot use it.
package crash

import "errors"

// ErrCrash, returned by a consumer handler (or wrapped in what it returns),
// makes consumer.Consumer.Run return at once as if the process had been
// killed right after the handler ran: no further offset is committed, there
// is no graceful shutdown commit, and the client is closed.
var ErrCrash = errors.New("kdeliver: simulated crash")
