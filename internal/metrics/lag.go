package metrics

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Lag is each owned partition's committed-offset lag: the high watermark
// last fetched minus the offset last committed. Before a partition's first
// commit, the offset of the first record fetched stands for the committed
// one (where the group's committed offset was when the partition came).
// Its methods are safe for concurrent use.
type Lag struct {
	mu    sync.Mutex
	parts map[topicPart]*lagPart
}

type topicPart struct {
	topic string
	part  int32
}

type lagPart struct{ hwm, committed int64 }

// Fetched notes a poll's partitions: their high watermarks, and the first
// offset of a partition not seen before.
func (l *Lag) Fetched(fetches kgo.Fetches) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 && p.HighWatermark <= 0 {
			return
		}
		if l.parts == nil {
			l.parts = map[topicPart]*lagPart{}
		}
		k := topicPart{p.Topic, p.Partition}
		lp := l.parts[k]
		if lp == nil {
			lp = &lagPart{committed: -1}
			if len(p.Records) > 0 {
				lp.committed = p.Records[0].Offset
			}
			l.parts[k] = lp
		}
		if lp.committed < 0 && len(p.Records) > 0 {
			lp.committed = p.Records[0].Offset
		}
		lp.hwm = max(lp.hwm, p.HighWatermark)
	})
}

// Committed notes offsets committed.
func (l *Lag) Committed(offsets map[string]map[int32]kgo.EpochOffset) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for t, ps := range offsets {
		for p, eo := range ps {
			if lp := l.parts[topicPart{t, p}]; lp != nil {
				lp.committed = max(lp.committed, eo.Offset)
			}
		}
	}
}

// CommittedRecords notes the commit of recs (the offset after each
// partition's last).
func (l *Lag) CommittedRecords(recs []*kgo.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A poll's records come partition by partition: look each one up once.
	var lp *lagPart
	for i, r := range recs {
		if i == 0 || r.Partition != recs[i-1].Partition || r.Topic != recs[i-1].Topic {
			lp = l.parts[topicPart{r.Topic, r.Partition}]
		}
		if lp != nil {
			lp.committed = max(lp.committed, r.Offset+1)
		}
	}
}

// Forget drops partitions no longer owned; nil drops every partition.
func (l *Lag) Forget(parts map[string][]int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if parts == nil {
		clear(l.parts)
	}
	for t, ps := range parts {
		for _, p := range ps {
			delete(l.parts, topicPart{t, p})
		}
	}
}

// Each calls f with each owned partition's lag (0 if nothing is known of
// its committed offset yet).
func (l *Lag) Each(f func(topic string, part int32, lag int64)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, lp := range l.parts {
		f(k.topic, k.part, lp.lag())
	}
}

// Snapshot returns the lags by topic and partition; nil if none is known.
func (l *Lag) Snapshot() map[string]map[int32]int64 {
	var out map[string]map[int32]int64
	l.Each(func(t string, p int32, lag int64) {
		if out == nil {
			out = map[string]map[int32]int64{}
		}
		if out[t] == nil {
			out[t] = map[int32]int64{}
		}
		out[t][p] = lag
	})
	return out
}

func (lp *lagPart) lag() int64 {
	if lp.committed < 0 {
		return 0
	}
	return max(0, lp.hwm-lp.committed)
}
