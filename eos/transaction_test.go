package eos

import (
	"reflect"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestPollLimit: a transaction's next poll asks for pollShare of what its
// handling reaches by the deadline at its pace so far, within what it may
// still take, and at least one record; and for all kgo has buffered when
// the pace handles it by the deadline plus the slack.
func TestPollLimit(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name                      string
		left, buffered, handled   int
		elapsed, remaining, slack time.Duration
		want                      int
	}{
		{"no pace yet: one record", 1000, 500, 0, 5 * ms, 95 * ms, 10 * ms, 1},
		{"no time elapsed: all it may take", 1000, 0, 10, 0, 95 * ms, 10 * ms, 1000},
		{"at its pace: 300 handled in 30 ms, 20 ms left", 100_000, 0, 300, 30 * ms, 20 * ms, 10 * ms, 160},
		{"capped by what it may take", 150, 0, 300, 30 * ms, 20 * ms, 10 * ms, 150},
		{"a slow handler: one record in 40 ms, 60 ms left", 500, 0, 1, 40 * ms, 60 * ms, 10 * ms, 1},
		{"at least one as the deadline nears", 500, 0, 1, 90 * ms, time.Microsecond, 10 * ms, 1},
		{"all kgo holds, handled by the deadline plus the slack", 100_000, 250, 300, 30 * ms, 20 * ms, 10 * ms, 250},
		{"all kgo holds, just within the slack", 100_000, 300, 300, 30 * ms, 20 * ms, 10 * ms, 300},
		{"past the slack, the buffer's rest stays", 100_000, 301, 300, 30 * ms, 20 * ms, 10 * ms, 160},
		{"no slack: the buffer's rest stays", 100_000, 250, 300, 30 * ms, 20 * ms, 0, 160},
		{"all kgo holds, within what it may take", 200, 250, 300, 30 * ms, 20 * ms, 10 * ms, 200},
		{"a slow handler leaves the buffer", 500, 400, 1, 40 * ms, 60 * ms, 10 * ms, 1},
		{"past the deadline, a small rest within the slack", 500, 8, 100, 100 * ms, 0, 10 * ms, 8},
	} {
		if got := pollLimit(c.left, c.buffered, c.handled, c.elapsed, c.remaining, c.slack); got != c.want {
			t.Errorf("%s: pollLimit(%d, %d, %d, %v, %v, %v) = %d, want %d", c.name, c.left, c.buffered, c.handled, c.elapsed, c.remaining, c.slack, got, c.want)
		}
	}
}

// TestAddEnds: a transaction that handled held records commits, for each
// of their partitions kgo left out of its offsets (it takes their end as
// committed already), the end of the held records, or the cut; partitions
// kgo has (polled on since) keep kgo's offset.
func TestAddEnds(t *testing.T) {
	id := [16]byte{7}
	recs := func(topic string, p int32, epoch int32, offsets ...int64) kgo.FetchPartition {
		fp := kgo.FetchPartition{Partition: p}
		for _, o := range offsets {
			fp.Records = append(fp.Records, &kgo.Record{Topic: topic, Partition: p, LeaderEpoch: epoch, Offset: o})
		}
		return fp
	}
	h := &heldPoll{fs: kgo.Fetches{
		{Topics: []kgo.FetchTopic{
			{Topic: "a", TopicID: [16]byte{1}, Partitions: []kgo.FetchPartition{recs("a", 0, 1, 8, 9), recs("a", 1, 1, 15)}},
			{Topic: "b", TopicID: id, Partitions: []kgo.FetchPartition{recs("b", 0, 2, 3, 4)}},
		}},
		{Topics: []kgo.FetchTopic{ // a second poll: its ends win
			{Topic: "a", TopicID: [16]byte{1}, Partitions: []kgo.FetchPartition{recs("a", 1, 1, 16, 19), recs("a", 2, 1, 29)}},
		}},
	}}
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic, rt.TopicID = "a", [16]byte{1}
	rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = 0, 15 // polled on since the held records
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)

	h.addEnds(req, map[string]map[int32]kgo.EpochOffset{"a": {2: {Epoch: 1, Offset: 25}}})

	got := map[string]map[int32]int64{}
	ids := map[string][16]byte{}
	for _, rt := range req.Topics {
		if got[rt.Topic] != nil {
			t.Fatalf("topic %s twice in the request", rt.Topic)
		}
		got[rt.Topic], ids[rt.Topic] = map[int32]int64{}, rt.TopicID
		for _, rp := range rt.Partitions {
			got[rt.Topic][rp.Partition] = rp.Offset
		}
	}
	want := map[string]map[int32]int64{"a": {0: 15, 1: 20, 2: 25}, "b": {0: 5}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("offsets %v, want %v (kgo's for a[0], the held end for a[1] and b[0], the cut for a[2])", got, want)
	}
	if ids["b"] != id {
		t.Errorf("topic b added with ID %v, want %v (TxnOffsetCommit v6 commits by ID)", ids["b"], id)
	}
}
