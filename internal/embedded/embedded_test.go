package embedded_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver/internal/embedded"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartProduceConsume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := embedded.Start(ctx, embedded.WithTopic("t", 3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := len(c.Brokers()); got != 3 {
		t.Fatalf("Brokers() = %d addresses; want 3", got)
	}
	for _, b := range c.Brokers() {
		if !strings.HasPrefix(b, "127.0.0.1:") {
			t.Errorf("broker %s is not on 127.0.0.1", b)
		}
	}
	if err := c.CreateTopic("u", 2); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...), kgo.ConsumeTopics("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("v")}, &kgo.Record{Topic: "u", Value: []byte("w")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	fs := cl.PollRecords(ctx, 1)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	if recs := fs.Records(); len(recs) != 1 || string(recs[0].Value) != "v" {
		t.Fatalf("consumed %v; want the one record produced to t", recs)
	}
	if infos := c.Kfake().PartitionInfos("t"); len(infos) != 3 {
		t.Errorf("topic t has %d partitions; want 3", len(infos))
	}
}

func TestStartRejectsZeroBrokers(t *testing.T) {
	if _, err := embedded.Start(context.Background(), embedded.WithBrokers(0)); err == nil {
		t.Fatal("Start with 0 brokers succeeded")
	}
}

func TestBrokersEmbeddedThenReal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	brokers, stop, err := embedded.Brokers(ctx, nil, 2, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// The embedded cluster stands in for a real one: creating the topics
	// again keeps them, and a new one is made.
	if err := embedded.CreateTopics(ctx, brokers, 4, "a", "c"); err != nil {
		t.Fatal(err)
	}
	got, _, err := embedded.Brokers(ctx, brokers, 1, "b")
	if err != nil || len(got) != len(brokers) {
		t.Fatalf("Brokers(given) = %v, %v", got, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	for _, name := range []string{"a", "c"} {
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(name)
		req.Topics = append(req.Topics, mt)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	parts := map[string]int{}
	for _, mt := range resp.Topics {
		parts[*mt.Topic] = len(mt.Partitions)
	}
	if parts["a"] != 2 || parts["c"] != 4 {
		t.Errorf("partitions = %v; want a:2 (kept) c:4 (created)", parts)
	}
}

func TestCreateTopicsUnreachable(t *testing.T) {
	err := embedded.CreateTopics(context.Background(), []string{"127.0.0.1:1"}, 1, "x")
	if err == nil || !strings.Contains(err.Error(), "cannot reach brokers 127.0.0.1:1") {
		t.Fatalf("CreateTopics on a closed port = %v", err)
	}
}
