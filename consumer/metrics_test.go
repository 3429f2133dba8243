package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/dedup"
)

// collect reads every kdeliver sum and gauge of reader: name and outcome
// (or topic/partition for the lag) to value.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != "github.com/kdeliver/kdeliver" {
			continue
		}
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					o, _ := p.Attributes.Value("kdeliver.outcome")
					out[m.Name+"{"+o.AsString()+"}"] = int64(p.Count)
				}
				continue
			}
			for _, p := range points {
				key := m.Name
				if o, ok := p.Attributes.Value("kdeliver.outcome"); ok {
					key += "{" + o.AsString() + "}"
				}
				if pt, ok := p.Attributes.Value("messaging.destination.partition.id"); ok {
					key += "{" + pt.AsString() + "}"
				}
				if s, ok := p.Attributes.Value("kdeliver.semantics"); !ok || s.AsString() == "" {
					t.Errorf("%s: no kdeliver.semantics attribute in %v", key, p.Attributes.ToSlice())
				}
				out[key] = p.Value
			}
		}
	}
	return out
}

// TestMetricsCountOutcomes: records that fail once, records skipped and
// records that succeed at once are counted by outcome, the same in Stats
// and through an OpenTelemetry SDK reader, and each partition's lag is 0
// once everything is committed, sequentially and with concurrent handlers.
func TestMetricsCountOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"sequential", nil},
		{"by key", []Option{kdeliver.WithConcurrency(4, kdeliver.ByKey)}},
		{"by partition", []Option{kdeliver.WithConcurrency(3, kdeliver.ByPartition)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, 3)
			const n = 60
			produce(t, cl, 0, n)
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			opts := append([]Option{kdeliver.WithMeterProvider(mp), kdeliver.WithBackoff(time.Millisecond, time.Millisecond)}, tc.opts...)
			c := mustNew(t, cl, "g", kdeliver.AtLeastOnce, opts...)
			var mu sync.Mutex
			tried := map[int]int{}
			r := start(c, func(_ context.Context, rec *kgo.Record) error {
				seq, err := strconv.Atoi(string(rec.Value))
				if err != nil {
					return Skip(err)
				}
				mu.Lock()
				tried[seq]++
				first := tried[seq] == 1
				mu.Unlock()
				switch {
				case seq%15 == 7: // 4 records: 7, 22, 37, 52
					return Skip(errors.New("poison"))
				case seq%10 == 3 && first: // 6 records fail once
					return fmt.Errorf("record %d: transient", seq)
				}
				return nil
			})
			end := ends(cl)
			waitFor(t, "every record committed", func() bool {
				got := committed(cl, "g")
				for p, o := range end {
					if got[p] != o {
						return false
					}
				}
				return true
			})
			waitFor(t, "lag 0 on every partition", func() bool {
				lag := c.Stats().Lag["t"]
				return len(lag) == 3 && lag[0] == 0 && lag[1] == 0 && lag[2] == 0
			})
			got := collect(t, reader)
			st := c.Stats()
			want := map[string]int64{
				"kdeliver.consumer.records{handled}":       n,
				"kdeliver.consumer.records{skipped}":       4,
				"kdeliver.consumer.records{dead_lettered}": 0,
				"kdeliver.consumer.handler.calls{failed}":  6,
				"kdeliver.consumer.handler.calls{retry}":   6,
				"kdeliver.consumer.lag{0}":                 0,
				"kdeliver.consumer.lag{1}":                 0,
				"kdeliver.consumer.lag{2}":                 0,
			}
			for k, v := range want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %d (present: %v), want %d; all: %v", k, g, ok, v, got)
				}
			}
			if got["kdeliver.consumer.commits{ok}"] < 1 || got["kdeliver.consumer.commit.duration{ok}"] < 1 {
				t.Errorf("no successful commit counted: %v", got)
			}
			if st.Handled != n || st.Skipped != 4 || st.Failed != 6 || st.Retried != 6 || st.Commits < 1 {
				t.Errorf("Stats = %+v, want Handled %d, Skipped 4, Failed 6, Retried 6, Commits ≥ 1", st, n)
			}
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); st.InFlight != 0 || st.Lag != nil {
				t.Errorf("after Run: InFlight %d, Lag %v; want 0 and none", st.InFlight, st.Lag)
			}
		})
	}
}

// TestMetricsCountGuardDuplicates: a guard that absorbs every record of a
// second group (the first did the side effects) counts each as a duplicate.
func TestMetricsCountGuardDuplicates(t *testing.T) {
	cl := newCluster(t, 3)
	const n = 30
	produce(t, cl, 0, n)
	guard, err := dedup.NewGuard(dedup.NewMemory(1000), "effect")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	effects := 0
	h := func(context.Context, *kgo.Record) error {
		mu.Lock()
		effects++
		mu.Unlock()
		return nil
	}
	for _, group := range []string{"g1", "g2"} {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		c := mustNewWithGuard(t, cl, group, guard, kdeliver.WithMeterProvider(mp))
		r := start(c, h)
		waitFor(t, group+" commits every record", func() bool { return sumCommitted(cl, group) == n })
		got := collect(t, reader)
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		_ = mp.Shutdown(context.Background())
		wantDups := int64(0)
		if group == "g2" {
			wantDups = n
		}
		if got["kdeliver.consumer.records{duplicate}"] != wantDups || c.Stats().Duplicates != wantDups {
			t.Errorf("%s: duplicates metric %d, Stats %d; want %d", group, got["kdeliver.consumer.records{duplicate}"], c.Stats().Duplicates, wantDups)
		}
	}
	if effects != n {
		t.Errorf("%d side effects, want %d", effects, n)
	}
	if gs := guard.Stats(); gs.Duplicates != n || gs.StoreErrors != 0 {
		t.Errorf("guard stats %+v, want %d duplicates and no store errors", gs, n)
	}
}
