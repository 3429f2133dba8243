package main

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver/internal/exampleenv"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

// startWithClient starts an embedded cluster and an admin client on it.
func startWithClient(t *testing.T) (*kdelivertest.Cluster, *kgo.Client) {
	t.Helper()
	c := kdelivertest.Start(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return c, cl
}

// refuseListOffsets makes the cluster answer ListOffsets for partition 1 of
// the topics matched with NOT_LEADER_FOR_PARTITION while refuse(n) is true,
// n counting such requests from 1; the other partitions are answered at
// offset 0.
func refuseListOffsets(c *kdelivertest.Cluster, match func(topic string) bool, refuse func(n int64) bool) *atomic.Int64 {
	var n atomic.Int64
	k := c.Kfake()
	k.ControlKey(int16(kmsg.ListOffsets), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		req := kreq.(*kmsg.ListOffsetsRequest)
		hit := false
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				hit = hit || match(rt.Topic) && rp.Partition == 1
			}
		}
		if !hit || !refuse(n.Add(1)) {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.ListOffsetsResponse)
		resp.Version = req.Version
		for _, rt := range req.Topics {
			st := kmsg.NewListOffsetsResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewListOffsetsResponseTopicPartition()
				sp.Partition, sp.LeaderEpoch = rp.Partition, rp.CurrentLeaderEpoch
				if match(rt.Topic) && rp.Partition == 1 {
					sp.ErrorCode = kerr.NotLeaderForPartition.Code
				}
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return &n
}

func is(topic string) func(string) bool { return func(s string) bool { return s == topic } }

func TestWaitWritableNewTopic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, cl := startWithClient(t)
	// Created through the protocol, as on a real cluster.
	if err := exampleenv.CreateTopics(ctx, c.Brokers(), 6, "fresh"); err != nil {
		t.Fatal(err)
	}
	if err := waitWritable(ctx, cl, "fresh", 6); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, record("fresh", 1), record("fresh", 2), record("fresh", 3)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if n, err := recordsInLog(ctx, cl, "fresh", 6); err != nil || n != 3 {
		t.Errorf("recordsInLog = %d, %v; want the 3 records produced", n, err)
	}
}

func TestWaitWritableWaitsForTheLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, cl := startWithClient(t)
	if err := c.CreateTopic("slow", 6); err != nil {
		t.Fatal(err)
	}
	// Partition 1's leader is listed but not yet serving it, 3 times.
	asked := refuseListOffsets(c, is("slow"), func(n int64) bool { return n <= 3 })
	if err := waitWritable(ctx, cl, "slow", 6); err != nil {
		t.Fatal(err)
	}
	if n := asked.Load(); n != 4 {
		t.Errorf("partition 1's leader was asked %d times; want 3 refusals and 1 answer", n)
	}
}

func TestWaitWritableGivesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, cl := startWithClient(t)
	if err := c.CreateTopic("never", 6); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	refuseListOffsets(c, is("never"), func(n int64) bool {
		if n == 3 {
			stop() // the wait's ctx ends while the partition is still refused
		}
		return true
	})
	err := waitWritable(wctx, cl, "never", 6)
	var nw *notWritableError
	if !errors.As(err, &nw) || !errors.Is(err, context.Canceled) {
		t.Fatalf("waitWritable = %v; want a *notWritableError wrapping context.Canceled", err)
	}
	for _, want := range []string{"topic never ", "5 of 6 partitions ready", "partition 1: its leader", "NOT_LEADER_FOR_PARTITION"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestLeadersOf(t *testing.T) {
	part := func(p, leader int32, code int16) kmsg.MetadataResponseTopicPartition {
		mp := kmsg.NewMetadataResponseTopicPartition()
		mp.Partition, mp.Leader, mp.LeaderEpoch, mp.ErrorCode = p, leader, 7, code
		return mp
	}
	meta := func(code int16, parts ...kmsg.MetadataResponseTopicPartition) *kmsg.MetadataResponse {
		resp := kmsg.NewPtrMetadataResponse()
		mt := kmsg.NewMetadataResponseTopic()
		mt.Topic, mt.ErrorCode, mt.Partitions = kmsg.StringPtr("t"), code, parts
		resp.Topics = append(resp.Topics, mt)
		return resp
	}
	cases := []struct {
		name string
		resp *kmsg.MetadataResponse
		why  string
	}{
		{"no topic", kmsg.NewPtrMetadataResponse(), "does not list the topic"},
		{"topic error", meta(kerr.UnknownTopicOrPartition.Code), "UNKNOWN_TOPIC_OR_PARTITION"},
		{"missing partition", meta(0, part(0, 1, 0), part(2, 1, 0)), "partition 1: not in the metadata"},
		{"no leader", meta(0, part(0, 1, 0), part(1, -1, 0), part(2, 1, 0)), "partition 1: no leader"},
		{"partition error", meta(0, part(0, 1, 0), part(1, 2, kerr.LeaderNotAvailable.Code), part(2, 1, 0)), "LEADER_NOT_AVAILABLE"},
		{"ready", meta(0, part(0, 1, 0), part(1, 2, 0), part(2, 1, 0)), ""},
	}
	for _, c := range cases {
		leaders, why := leadersOf(c.resp, "t", 3)
		if c.why == "" {
			if why != "" || len(leaders[1]) != 2 || len(leaders[2]) != 1 || leaders[2][0] != (leaderPartition{1, 7}) {
				t.Errorf("%s: leaders %v, why %q", c.name, leaders, why)
			}
			continue
		}
		if !strings.Contains(why, c.why) || leaders != nil {
			t.Errorf("%s: why %q, leaders %v; want %q and none", c.name, why, leaders, c.why)
		}
	}
}
