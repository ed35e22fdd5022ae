package engine

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/surgepush/surge/topics"
)

// newBroker builds the broker Config.Broker names: nil (single node) when
// it is empty, else a NATS JetStream broker whose stream keeps, per topic,
// as many messages as the largest history of any rule for as long as the
// longest history TTL or the topic idle TTL (a topic unpublished for longer
// starts a new epoch at seq 1, as a reclaimed topic does on one node).
func newBroker(cfg *Config, def topics.Rule, rules []topics.Rule, log *slog.Logger) (topics.Broker, error) {
	url := strings.TrimSpace(cfg.Broker)
	if url == "" {
		return nil, nil
	}
	if !strings.Contains(url, "://") {
		url = "nats://" + url
	}
	hist, age := def.HistorySize, max(def.HistoryTTL, cfg.TopicIdleTTL)
	unlimited := def.HistoryTTL <= 0
	for _, r := range rules {
		hist = max(hist, r.HistorySize)
		age = max(age, r.HistoryTTL)
		unlimited = unlimited || r.HistoryTTL <= 0
	}
	if unlimited {
		age = 0
	}
	return topics.NewNATSBroker(topics.NATSConfig{
		URL:         url,
		Name:        "surge " + cfg.Listen,
		Stream:      cfg.BrokerStream,
		HistorySize: hist,
		MaxAge:      age,
		CredsFile:   cfg.BrokerCreds,
		CAFile:      cfg.BrokerTLSCA,
		CertFile:    cfg.BrokerTLSCert,
		KeyFile:     cfg.BrokerTLSKey,
		Log:         log.With("component", "broker"),
	})
}

// brokerHealthy returns why cross-node delivery is not working, or nil
// (always nil on a single node).
func (e *Engine) brokerHealthy() error {
	if h, ok := e.broker.(topics.BrokerHealth); ok {
		return h.Healthy()
	}
	return nil
}

// brokerStats returns the broker's counters for /v1/stats (nil on a single node).
func (e *Engine) brokerStats() *topics.BrokerStats {
	if s, ok := e.broker.(topics.BrokerStatser); ok {
		st := s.BrokerStats()
		return &st
	}
	return nil
}

// publishStatus maps a publish error to an HTTP status.
func publishStatus(err error) int {
	switch {
	case errors.Is(err, topics.ErrTopicName):
		return http.StatusBadRequest
	case errors.Is(err, topics.ErrMessageTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, topics.ErrBrokerUnavailable), errors.Is(err, topics.ErrBrokerConflict), errors.Is(err, topics.ErrBrokerClosed):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// publishCode maps a publish error to a WebSocket error code.
func publishCode(err error) string {
	switch publishStatus(err) {
	case http.StatusBadRequest:
		return "bad_topic"
	case http.StatusRequestEntityTooLarge:
		return "too_big"
	case http.StatusServiceUnavailable:
		return "unavailable"
	}
	return "internal"
}

// writePublishError answers a failed publish; 503s carry Retry-After.
func writePublishError(w http.ResponseWriter, prefix string, err error) {
	status := publishStatus(err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeAPIError(w, status, prefix+err.Error())
}

// brokerCollectors are the broker's metrics (none on a single node).
func (e *Engine) brokerCollectors() []prometheus.Collector {
	s, ok := e.broker.(topics.BrokerStatser)
	if !ok {
		return nil
	}
	counter := func(name, help string, f func(topics.BrokerStats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(s.BrokerStats())) })
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "surge_broker_up", Help: "1 while cross-node delivery works (connected, stream in place)."},
			func() float64 {
				if e.brokerHealthy() == nil {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "surge_broker_topics", Help: "Topics this node is subscribed to at the broker."},
			func() float64 { return float64(s.BrokerStats().Topics) }),
		counter("surge_broker_published_total", "Messages this node put into the broker.", func(st topics.BrokerStats) int64 { return st.Published }),
		counter("surge_broker_received_total", "Messages the broker delivered to this node.", func(st topics.BrokerStats) int64 { return st.Received }),
		counter("surge_broker_duplicates_total", "Broker messages received twice and dropped.", func(st topics.BrokerStats) int64 { return st.Duplicates }),
		counter("surge_broker_repaired_total", "Messages fetched from the stream to fill a delivery gap.", func(st topics.BrokerStats) int64 { return st.Repaired }),
		counter("surge_broker_lost_total", "Messages of a delivery gap no longer retained by the stream.", func(st topics.BrokerStats) int64 { return st.Lost }),
		counter("surge_broker_conflicts_total", "Publishes retried because another node took the seq first.", func(st topics.BrokerStats) int64 { return st.Conflicts }),
		counter("surge_broker_reconnects_total", "Broker connections re-established.", func(st topics.BrokerStats) int64 { return st.Reconnects }),
	}
}
