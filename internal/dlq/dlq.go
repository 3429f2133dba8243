// Package dlq builds dead letters, the same for a consumer and an
// exactly-once session. The root package exports the header names.
package dlq

import (
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The headers a dead letter adds to the failed record's own.
const (
	HeaderTopic        = "kdeliver-dlq-topic"
	HeaderPartition    = "kdeliver-dlq-partition"
	HeaderOffset       = "kdeliver-dlq-offset"
	HeaderAttempts     = "kdeliver-dlq-attempts"
	HeaderError        = "kdeliver-dlq-error"
	HeaderFirstFailure = "kdeliver-dlq-first-failure"
)

// Record is the copy of r for the dead-letter topic: r's key, value,
// headers and timestamp, plus where it came from, how often (attempts) and
// why (err) it failed, and when it first did.
func Record(topic string, r *kgo.Record, attempts int, first time.Time, err error) *kgo.Record {
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+6)
	hs = append(hs, r.Headers...)
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: HeaderOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
		kgo.RecordHeader{Key: HeaderAttempts, Value: []byte(strconv.Itoa(attempts))},
		kgo.RecordHeader{Key: HeaderError, Value: []byte(err.Error())},
		kgo.RecordHeader{Key: HeaderFirstFailure, Value: []byte(first.UTC().Format(time.RFC3339Nano))},
	)
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp}
}
