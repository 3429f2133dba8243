package exampleenv_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/kdeliver/kdeliver/internal/exampleenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBrokersEmbeddedThenReal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	brokers, stop, err := exampleenv.Brokers(ctx, nil, 2, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if len(brokers) != 3 {
		t.Errorf("embedded cluster has brokers %v, want 3", brokers)
	}
	for _, b := range brokers {
		if !strings.HasPrefix(b, "127.0.0.1:") {
			t.Errorf("broker %s is not on 127.0.0.1", b)
		}
	}
	// The embedded cluster stands in for a real one: creating the topics
	// again keeps them, and a new one is made.
	if err := exampleenv.CreateTopics(ctx, brokers, 4, "a", "c"); err != nil {
		t.Fatal(err)
	}
	got, stopGiven, err := exampleenv.Brokers(ctx, brokers, 1, "b")
	if err != nil || !slices.Equal(got, brokers) {
		t.Fatalf("Brokers(given) = %v, %v; want the given brokers", got, err)
	}
	stopGiven() // releases nothing: the cluster was given
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	for _, name := range []string{"a", "b", "c"} {
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
	if parts["a"] != 2 || parts["b"] != 2 || parts["c"] != 4 {
		t.Errorf("partitions = %v; want a:2 b:2 (kept) c:4 (created)", parts)
	}
}

func TestBrokersCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := exampleenv.Brokers(ctx, nil, 1, "a"); err == nil {
		t.Fatal("Brokers with a canceled ctx started a cluster")
	}
}

func TestCreateTopicsUnreachable(t *testing.T) {
	err := exampleenv.CreateTopics(context.Background(), []string{"127.0.0.1:1"}, 1, "x")
	if err == nil || !strings.Contains(err.Error(), "cannot reach brokers 127.0.0.1:1") {
		t.Fatalf("CreateTopics on a closed port = %v", err)
	}
}

func TestSplitBrokers(t *testing.T) {
	for in, want := range map[string][]string{
		"":               nil,
		"a:1":            {"a:1"},
		" a:1 , b:2 ,, ": {"a:1", "b:2"},
		",":              nil,
		"a:1,b:2,c:3":    {"a:1", "b:2", "c:3"},
	} {
		if got := exampleenv.SplitBrokers(in); !slices.Equal(got, want) {
			t.Errorf("SplitBrokers(%q) = %q, want %q", in, got, want)
		}
	}
}
