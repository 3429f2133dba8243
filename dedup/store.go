package dedup

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
)

// Status is what [Store.Reserve] found.
type Status uint8

const (
	// Acquired means the caller now holds the key's lease: it runs the side
	// effect, then calls [Store.Confirm] on success or [Store.Release] on
	// failure.
	Acquired Status = iota + 1
	// Done means the key was confirmed and has not expired: its side effect
	// happened, so skip it.
	Done
	// Held means another caller holds an unexpired lease on the key: the
	// side effect may be running now, or may yet fail. Neither skip nor run;
	// ask again later. The lease ends by Confirm, Release or expiry.
	Held
)

func (s Status) String() string {
	switch s {
	case Acquired:
		return "acquired"
	case Done:
		return "done"
	case Held:
		return "held"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Store remembers which keys had their side effect done. Checking and marking
// are separate calls, so a side effect that fails is never recorded as done:
//
//	status, token, err := store.Reserve(ctx, key, lease) // check, take a lease
//	// status Acquired: run the side effect, then
//	store.Confirm(ctx, key, ttl)    // on success: mark done
//	store.Release(ctx, key, token)  // on failure: let a retry take it now
//
// A Store is safe for concurrent use by many goroutines and, except the
// memory store, by many processes. The package dedup/storetest checks these
// rules; every implementation should pass it.
type Store interface {
	// Reserve takes a lease on key for the given duration when the key is
	// neither done nor leased, and returns [Acquired] with a token that
	// identifies this lease. Otherwise it changes nothing and returns [Done]
	// or [Held] with an empty token. An expired lease or an expired done
	// mark counts as absent. Reserve never marks a key done.
	Reserve(ctx context.Context, key string, lease time.Duration) (Status, string, error)
	// Confirm marks key done for ttl, replacing any lease on it. It is
	// idempotent, and it does not need a lease: a side effect that ran
	// after its lease expired still happened, so it is recorded.
	Confirm(ctx context.Context, key string, ttl time.Duration) error
	// Release ends the lease token took, so that the key can be reserved
	// again at once. It does nothing when the key is done, or leased under
	// another token (the lease expired and another caller took it).
	Release(ctx context.Context, key, token string) error
}

// ErrStore is wrapped by errors of the stores in this module when the
// backing server cannot be reached or refuses a request. Nothing was marked;
// the caller retries later. ctx errors are returned as they are.
var ErrStore = errors.New("dedup: store unavailable")

// MessageID returns the record's [kdeliver.HeaderMessageID] header value
// (producer.WithMessageIDs stamps it), or "" when it has none.
func MessageID(r *kgo.Record) string {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == kdeliver.HeaderMessageID {
			return string(r.Headers[i].Value)
		}
	}
	return ""
}

// Position returns "topic/partition/offset": the record's place in the log.
// It identifies a record delivered again after a crash or rebalance, but not
// a message that a producer sent twice (each copy has its own offset).
func Position(r *kgo.Record) string {
	var b strings.Builder
	b.Grow(len(r.Topic) + 24)
	b.WriteString(r.Topic)
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(int64(r.Partition), 10))
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(r.Offset, 10))
	return b.String()
}

// DefaultKey is the key used unless [WithKey] says otherwise: the message ID
// when the record has one ("id:" + [MessageID]), else its position ("pos:" +
// [Position]). The prefixes keep the two kinds apart.
func DefaultKey(r *kgo.Record) string {
	if id := MessageID(r); id != "" {
		return "id:" + id
	}
	return "pos:" + Position(r)
}
