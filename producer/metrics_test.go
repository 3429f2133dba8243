package producer_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/producer"
)

// producerRecords reads kdeliver.producer.records by outcome.
func producerRecords(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "kdeliver.producer.records" {
				for _, p := range s.DataPoints {
					o, _ := p.Attributes.Value("kdeliver.outcome")
					out[o.AsString()] = p.Value
				}
			}
		}
	}
	return out
}

// TestMetricsCountDeliveries: under 3 lost acknowledgements an
// at-least-once producer counts all 30 records delivered and none failed
// (the retries were absorbed by idempotence: each is in the log once), an
// at-most-once producer with the leader's ack counts the 3 it lost as
// failed; Stats and an OpenTelemetry SDK reader agree.
func TestMetricsCountDeliveries(t *testing.T) {
	for _, tc := range []struct {
		sem    kdeliver.Semantics
		opts   []producer.Option
		failed int64
	}{
		{kdeliver.AtLeastOnce, nil, 0},
		{kdeliver.AtMostOnce, []producer.Option{producer.WithLeaderAck()}, 3},
	} {
		t.Run(fmt.Sprint(tc.sem), func(t *testing.T) {
			c := cluster(t)
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			p := newProducer(t, c, tc.sem, append(tc.opts, kdeliver.WithMeterProvider(mp))...)
			ctx := testCtx(t)
			faults := lostAcks(c, 3)
			var failed int64
			for _, v := range values(30) {
				if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}); err != nil {
					failed++
				}
			}
			if faults.Hits() != 3 {
				t.Fatalf("%d lost acks injected, want 3", faults.Hits())
			}
			got, st := producerRecords(t, reader), p.Stats()
			if failed != tc.failed || got["failed"] != tc.failed || st.Failed != tc.failed {
				t.Errorf("failed: %d Produce calls, metric %d, Stats %d; want %d", failed, got["failed"], st.Failed, tc.failed)
			}
			if want := 30 - tc.failed; got["delivered"] != want || st.Delivered != want {
				t.Errorf("delivered: metric %d, Stats %d; want %d", got["delivered"], st.Delivered, want)
			}
			if tc.sem == kdeliver.AtLeastOnce {
				for v, n := range countValues(readLog(t, c)) {
					if n != 1 {
						t.Errorf("%s read %d times, want 1", v, n)
					}
				}
			}
		})
	}
}
