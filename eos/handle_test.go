package eos

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The caller collects what goroutines the handler starts emit, gives each
// call only its own records, and refuses an emit after the handler
// returned (run with -race: out is reset without the mutex).
func TestCallerEmits(t *testing.T) {
	var late func(*kgo.Record)
	l := &loop{s: &Session{cfg: &config{outputTopic: "out"}}}
	l.h = func(_ context.Context, in *kgo.Record, emit func(*kgo.Record)) error {
		var wg sync.WaitGroup
		for i := range int(in.Offset) {
			wg.Go(func() { emit(&kgo.Record{Value: []byte{byte(i)}}) })
		}
		wg.Wait()
		late = emit
		return nil
	}
	c := newCaller(l)
	for _, n := range []int64{8, 3, 0, 5} {
		out, err := c.call(context.Background(), &kgo.Record{Offset: n})
		if err != nil {
			t.Fatalf("call with %d emits: %v", n, err)
		}
		if len(out) != int(n) {
			t.Fatalf("call with %d emits returned %d records", n, len(out))
		}
		seen := map[byte]bool{}
		for _, o := range out {
			if o.Topic != "out" {
				t.Errorf("emitted record has topic %q, want the output topic", o.Topic)
			}
			seen[o.Value[0]] = true
		}
		if len(seen) != int(n) {
			t.Errorf("call with %d emits returned %d distinct records: %v", n, len(seen), out)
		}
	}
	defer func() {
		v := recover()
		if s, _ := v.(string); !strings.Contains(s, "after the handler returned") {
			t.Errorf("an emit after the handler returned: recovered %v, want its panic", v)
		}
	}()
	late(&kgo.Record{})
}
