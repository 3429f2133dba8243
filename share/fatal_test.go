package share

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kdeliver/kdeliver"
)

// TestNotAuthorizedEndsRun: the brokers refuse a running share
// consumer's fetches (TOPIC_AUTHORIZATION_FAILED, its Read ACL revoked) or
// its heartbeats (GROUP_AUTHORIZATION_FAILED); Run returns by itself with
// an error matching ErrNotAuthorized and the Kafka error, classed fatal,
// instead of a warning a poll for ever.
func TestNotAuthorizedEndsRun(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault *kfake.Fault // nil: the partitions of every ShareFetch refused
		cause error
		want  string
	}{
		{"fetch", nil, kerr.TopicAuthorizationFailed, "topic t"},
		{"heartbeat", &kfake.Fault{Keys: []kmsg.Key{kmsg.ShareGroupHeartbeat}, Err: kerr.GroupAuthorizationFailed, Count: -1}, kerr.GroupAuthorizationFailed, "group g"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, 2, 30*time.Second)
			startAll(cl, "g")
			produce(t, cl, 0, 10)
			c, err := New(cl.Brokers(), "g", []string{"t"}, kdeliver.AtLeastOnce, quiet(), fast())
			if err != nil {
				t.Fatal(err)
			}
			s := newSeen()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- c.Run(ctx, func(_ context.Context, r *kgo.Record) error {
					s.add(string(r.Value))
					return nil
				})
			}()
			waitFor(t, "the first records handled", func() bool { return s.distinct() == 10 })
			if tc.fault != nil {
				f := cl.Kfake().Fault(*tc.fault)
				defer f.Remove()
			} else {
				refuseShareFetches(cl.Kfake())
			}
			produce(t, cl, 10, 20)
			select {
			case err = <-done:
			case <-time.After(wait):
				cancel()
				t.Fatalf("Run did not return within %v of a failure no retry fixes", wait)
			}
			if !errors.Is(err, kdeliver.ErrNotAuthorized) || !errors.Is(err, tc.cause) {
				t.Fatalf("Run = %v, want an error matching ErrNotAuthorized and %v", err, tc.cause)
			}
			if k := kdeliver.ClassOf(err); k != kdeliver.Fatal {
				t.Errorf("ClassOf(Run's error) = %v, want fatal", k)
			}
			t.Logf("Run: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run's error %q does not name %q", err, tc.want)
			}
		})
	}
}

// refuseShareFetches answers every ShareFetch with
// TOPIC_AUTHORIZATION_FAILED on each partition it names, as a broker does
// for a topic the client may not read (kfake's faults set the top-level
// code of a ShareFetch, which kgo retries).
func refuseShareFetches(k *kfake.Cluster) {
	k.ControlKey(int16(kmsg.ShareFetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		req := kreq.(*kmsg.ShareFetchRequest)
		resp := req.ResponseKind().(*kmsg.ShareFetchResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewShareFetchResponseTopic()
			st.TopicID = rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewShareFetchResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.TopicAuthorizationFailed.Code
				sp.CurrentLeader.LeaderID, sp.CurrentLeader.LeaderEpoch = -1, -1
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}
