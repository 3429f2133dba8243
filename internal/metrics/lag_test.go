package metrics

import (
	"maps"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

func fetch(topic string, part int32, hwm int64, offsets ...int64) kgo.Fetch {
	fp := kgo.FetchPartition{Partition: part, HighWatermark: hwm}
	for _, o := range offsets {
		fp.Records = append(fp.Records, &kgo.Record{Topic: topic, Partition: part, Offset: o})
	}
	return kgo.Fetch{Topics: []kgo.FetchTopic{{Topic: topic, Partitions: []kgo.FetchPartition{fp}}}}
}

// TestLag: the lag of a partition is its high watermark minus the offset
// committed, the first fetched offset before any commit; commits of
// records count per partition, a forgotten partition is gone.
func TestLag(t *testing.T) {
	var l Lag
	l.Fetched(kgo.Fetches{fetch("a", 0, 10, 4, 5, 6), fetch("a", 1, 7, 0, 1), fetch("b", 0, 3)})
	want := map[string]map[int32]int64{"a": {0: 6, 1: 7}, "b": {0: 0}}
	if got := l.Snapshot(); !equal(got, want) {
		t.Fatalf("after the first fetch: %v, want %v", got, want)
	}
	recs := []*kgo.Record{{Topic: "a", Partition: 0, Offset: 4}, {Topic: "a", Partition: 0, Offset: 5},
		{Topic: "a", Partition: 1, Offset: 0}, {Topic: "a", Partition: 1, Offset: 1}, {Topic: "a", Partition: 0, Offset: 6}}
	l.CommittedRecords(recs)
	want = map[string]map[int32]int64{"a": {0: 3, 1: 5}, "b": {0: 0}}
	if got := l.Snapshot(); !equal(got, want) {
		t.Fatalf("after committing records: %v, want %v", got, want)
	}
	l.Committed(map[string]map[int32]kgo.EpochOffset{"a": {1: {Offset: 7}}, "b": {0: {Offset: 2}}})
	l.Forget(map[string][]int32{"a": {0}})
	want = map[string]map[int32]int64{"a": {1: 0}, "b": {0: 1}}
	if got := l.Snapshot(); !equal(got, want) {
		t.Fatalf("after a commit and a revoke: %v, want %v", got, want)
	}
	l.Forget(nil)
	if got := l.Snapshot(); got != nil {
		t.Fatalf("after forgetting all: %v, want nil", got)
	}
}

func equal(a, b map[string]map[int32]int64) bool {
	return maps.EqualFunc(a, b, func(x, y map[int32]int64) bool { return maps.Equal(x, y) })
}
