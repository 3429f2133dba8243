package producer_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/kdelivertest"
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

// droppedAcks makes the cluster write each of the next n produce requests
// and then close the connection instead of answering: the acknowledgement
// is lost on the wire, as when a connection breaks after the broker wrote
// the batch. (lostAcks answers with an error code instead, which the
// client retries without a failed request.) A side client sends the
// request to the same broker, so that the cluster applies it exactly as
// sent, producer ID and sequence included.
func droppedAcks(t *testing.T, c *kdelivertest.Cluster, n int) *atomic.Int64 {
	side, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(side.Close)
	var dropped atomic.Int64
	var forwarding atomic.Bool
	k := c.Kfake()
	k.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		if forwarding.Load() || dropped.Load() >= int64(n) {
			return nil, nil, false // the side client's copy, or done: handled normally
		}
		forwarding.Store(true)
		done := make(chan error, 1)
		node := k.CurrentNode()
		go func() {
			_, err := side.Broker(int(node)).Request(context.Background(), req)
			done <- err
		}()
		var sideErr error
		k.SleepControl(func() { sideErr = <-done })
		forwarding.Store(false)
		if sideErr != nil {
			t.Errorf("side copy of a produce request: %v", sideErr)
		}
		dropped.Add(1)
		return nil, errors.New("acknowledgement lost"), true
	})
	return &dropped
}

// TestMetricsCountLostAcks: 3 acknowledgements lost on the wire (the
// broker wrote each batch, the connection broke before the answer) are 3
// failed produce requests counted and retried; every one of the 30
// records is delivered, none failed, and the log holds each once.
func TestMetricsCountLostAcks(t *testing.T) {
	c := cluster(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	p := newProducer(t, c, kdeliver.AtLeastOnce, kdeliver.WithMeterProvider(mp))
	ctx := testCtx(t)
	dropped := droppedAcks(t, c, 3)
	for _, v := range values(30) {
		if err := p.Produce(ctx, &kgo.Record{Topic: topic, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	if dropped.Load() != 3 {
		t.Fatalf("%d acknowledgements dropped, want 3", dropped.Load())
	}
	st := p.Stats()
	if st.RequestErrors != 3 || requestErrors(t, reader) != 3 {
		t.Errorf("request errors: Stats %d, metric %d; want 3 (one per lost acknowledgement)", st.RequestErrors, requestErrors(t, reader))
	}
	if got := producerRecords(t, reader); st.Delivered != 30 || st.Failed != 0 || got["delivered"] != 30 || got["failed"] != 0 {
		t.Errorf("Stats %+v, metric %v; want 30 delivered, 0 failed", st, got)
	}
	got := countValues(readLog(t, c))
	for _, v := range values(30) {
		if got[v] != 1 {
			t.Errorf("%s read %d times, want 1: the retried batches were written again", v, got[v])
		}
	}
}

// requestErrors reads kdeliver.producer.request.errors.
func requestErrors(t *testing.T, reader *sdkmetric.ManualReader) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "kdeliver.producer.request.errors" && len(s.DataPoints) == 1 {
				return s.DataPoints[0].Value
			}
		}
	}
	return -1
}
