package engine_test

import (
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/surgepush/surge/engine"
)

type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// value returns the metric's value (counter, gauge or histogram count) for
// the label pair, or the unlabelled one.
func (s scrape) value(name string, label ...string) float64 {
	f := s[name]
	if f == nil {
		return -1
	}
	for _, m := range f.Metric {
		if len(label) == 2 {
			match := false
			for _, lp := range m.Label {
				if lp.GetName() == label[0] && lp.GetValue() == label[1] {
					match = true
				}
			}
			if !match {
				continue
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestMetricsScenario drives a scripted scenario and checks that the
// Prometheus metrics move exactly as it says.
func TestMetricsScenario(t *testing.T) {
	e := startEngine(t, engine.Config{DeflateThreshold: 64})
	m0 := scrapeMetrics(t, e.Addr())
	for _, name := range []string{
		"surge_connections", "surge_sockets", "surge_topics", "surge_subscriptions",
		"surge_connections_opened_total", "surge_handshake_failures_total", "surge_messages_published_total",
		"surge_messages_delivered_total", "surge_bytes_delivered_total", "surge_messages_compressed_total",
		"surge_deflated_deliveries_total", "surge_messages_dropped_total", "surge_messages_conflated_total",
		"surge_slow_consumer_closes_total", "surge_write_stalls_total", "surge_write_queue_depth_frames",
		"surge_fanout_seconds", "surge_connections_closed_total", "surge_rejections_total",
		"surge_pool_running", "surge_pool_capacity", "go_goroutines", "process_resident_memory_bytes",
	} {
		if m0[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	a := dialRaw(t, e.Addr(), "/ws?topic=m")
	z, _ := dialRawExt(t, e.Addr(), "/ws?topic=m", "permessage-deflate")
	bad := dialRaw(t, e.Addr(), "/ws?topic=m&topic=n")
	rawRequest(t, e.Addr(), "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
	m1 := scrapeMetrics(t, e.Addr())
	check := func(m scrape, name string, want float64, label ...string) {
		t.Helper()
		if got := m.value(name, label...); got != want {
			t.Errorf("%s%v = %v, want %v", name, label, got, want)
		}
	}
	check(m1, "surge_connections", 3)
	check(m1, "surge_deflate_connections", 1)
	check(m1, "surge_topics", 2)
	check(m1, "surge_subscriptions", 4)
	check(m1, "surge_connections_opened_total", 3)
	check(m1, "surge_handshake_failures_total", 1, "reason", "rejected")
	for i := 0; i < 5; i++ {
		publish(t, e.Addr(), "m", map[string]string{"pad": "0123456789012345678901234567890123456789012345678901234567890123456789"})
	}
	for _, rc := range []*rawClient{a, z, bad} {
		for i := 0; i < 5; i++ {
			if _, err := rc.read(); err != nil {
				t.Fatal(err)
			}
		}
	}
	bad.write(frame(0x81, []byte("x"), false)) // unmasked: protocol error
	bad.readClose()
	waitFor(t, 5*time.Second, "the protocol error to be counted", func() bool {
		return scrapeMetrics(t, e.Addr()).value("surge_connections_closed_total", "reason", "protocol_error") == 1
	})
	m2 := scrapeMetrics(t, e.Addr())
	check(m2, "surge_connections", 2)
	check(m2, "surge_messages_published_total", 5)
	check(m2, "surge_messages_delivered_total", 15)
	check(m2, "surge_messages_compressed_total", 5)
	check(m2, "surge_deflated_deliveries_total", 5)
	check(m2, "surge_fanout_seconds", 5)
	check(m2, "surge_subscriptions", 2)
	check(m2, "surge_topics", 2) // n stays until it has been idle for topic-idle-ttl
	if m2.value("surge_bytes_delivered_total") < 15*70 {
		t.Errorf("bytes delivered %v", m2.value("surge_bytes_delivered_total"))
	}
}
