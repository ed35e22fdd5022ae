package engine

import (
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/topics"
)

// stats are the engine's counters; /v1/stats and /metrics read them.
type stats struct {
	accepted     atomic.Int64
	upgraded     atomic.Int64
	handshakeBad atomic.Int64
	wsOpen       atomic.Int64
	httpRequests atomic.Int64
	httpBad      atomic.Int64
	msgIn        atomic.Int64
	bytesIn      atomic.Int64
	echoed       atomic.Int64
	drained      atomic.Int64
	deflateConns atomic.Int64
	fanout       prometheus.Histogram
	queueDepth   prometheus.Histogram
	closes       [conn.NumReasons]atomic.Int64
	wsCloses     [conn.NumReasons]atomic.Int64

	hsFails    [numHandshakeFails]atomic.Int64
	rejects    [numRejects]atomic.Int64
	opsLimited atomic.Int64
	forbidden  atomic.Int64
}

// Reasons a connection or request is refused by a limit or access control.
const (
	rejectMaxConns = iota
	rejectConnRate
	rejectConnRatePerIP
	rejectOrigin
	rejectAuth
	rejectTopicForbidden
	rejectTooManyTopics
	rejectPublishAuth
	numRejects
)

var rejectNames = [numRejects]string{"max_connections", "conn_rate", "conn_rate_per_ip", "origin", "auth", "topic_forbidden", "too_many_topics", "publish_auth"}

// reject counts a refusal; which is a reject index or one of rejectNames.
func (s *stats) reject(log *slog.Logger, which any) {
	i := -1
	switch w := which.(type) {
	case int:
		i = w
	case string:
		for j, n := range rejectNames {
			if n == w {
				i = j
			}
		}
	}
	if i < 0 {
		return
	}
	s.rejects[i].Add(1)
	log.Info("request refused", "reason", rejectNames[i])
}

func (s *stats) closed(r conn.Reason, ws bool) {
	s.closes[r].Add(1)
	if ws {
		s.wsCloses[r].Add(1)
	}
}

// Upgrade failures by reason (the surge_handshake_failures_total label).
const (
	hsBadQuery = iota // malformed query string
	hsBadTopic        // invalid topic name in ?topic=
	hsRejected        // gobwas/ws rejected the upgrade (400/405/426…)
	numHandshakeFails
)

var hsNames = [numHandshakeFails]string{"bad_query", "bad_topic", "rejected"}

// handshakeFail counts a rejected upgrade and logs it (sampled by reason).
func (s *stats) handshakeFail(log *slog.Logger, why int, err error) {
	s.handshakeBad.Add(1)
	s.hsFails[why].Add(1)
	log.Info("handshake rejected", "reason", hsNames[why], "err", err)
}

// Stats is the JSON document served at GET /v1/stats.
type Stats struct {
	Connections        int64            `json:"connections"`
	DeflateConnections int64            `json:"deflate_connections"`
	Sockets            int64            `json:"sockets"`
	ConnectionsOpened  int64            `json:"connections_opened"`
	Accepted           int64            `json:"accepted"`
	HandshakeFailures  int64            `json:"handshake_failures"`
	Subscriptions      int              `json:"subscriptions"`
	Topics             int              `json:"topics"`
	Published          int64            `json:"published"`
	MessagesIn         int64            `json:"messages_in"`
	MessagesOut        int64            `json:"messages_out"`
	BytesIn            int64            `json:"bytes_in"`
	BytesOut           int64            `json:"bytes_out"`
	CompressedMessages int64            `json:"compressed_messages"`
	DeflatedSent       int64            `json:"deflated_sent"`
	Replayed           int64            `json:"replayed"`
	Drops              int64            `json:"drops"`
	Conflated          int64            `json:"conflated"`
	SlowConsumerCloses int64            `json:"slow_consumer_closes"`
	WriteStalls        int64            `json:"write_stalls"`
	TopicsReclaimed    int64            `json:"topics_reclaimed"`
	Rejections         map[string]int64 `json:"rejections"`
	OpsRateLimited     int64            `json:"ops_rate_limited"`
	Forbidden          int64            `json:"forbidden"`
	Closes             map[string]int64 `json:"closes"`
	Evictions          map[string]int64 `json:"evictions"`
	HTTPRequests       int64            `json:"http_requests"`
	RSSBytes           int64            `json:"rss_bytes"`
	HeapInuseBytes     uint64           `json:"heap_inuse_bytes"`
	HeapAllocBytes     uint64           `json:"heap_alloc_bytes"`
	Goroutines         int              `json:"goroutines"`
	UptimeSeconds      float64          `json:"uptime_seconds"`
	Draining           bool             `json:"draining"`
	// Broker is present when topics are shared through --broker.
	Broker *topics.BrokerStats `json:"broker,omitempty"`
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	nt, ns := e.reg.Count()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rs, cs := &e.reg.Stats, e.ccfg.Counters
	st := Stats{
		Connections:        e.st.wsOpen.Load(),
		DeflateConnections: e.st.deflateConns.Load(),
		Sockets:            e.poll.Conns(),
		ConnectionsOpened:  e.st.upgraded.Load(),
		Accepted:           e.st.accepted.Load(),
		HandshakeFailures:  e.st.handshakeBad.Load(),
		Subscriptions:      ns,
		Topics:             nt,
		Published:          rs.Published.Load(),
		MessagesIn:         e.st.msgIn.Load(),
		MessagesOut:        rs.Deliveries.Load() + e.st.echoed.Load(),
		BytesIn:            e.st.bytesIn.Load(),
		BytesOut:           rs.DeliveryBytes.Load(),
		CompressedMessages: rs.CompressedFrames.Load(),
		DeflatedSent:       cs.DeflatedSent.Load(),
		Replayed:           rs.Replayed.Load(),
		Drops:              cs.Dropped.Load(),
		Conflated:          cs.Conflated.Load(),
		SlowConsumerCloses: cs.SlowClosed.Load(),
		WriteStalls:        e.poll.WriteStalls(),
		TopicsReclaimed:    rs.Reclaimed.Load(),
		Rejections:         map[string]int64{},
		OpsRateLimited:     e.st.opsLimited.Load(),
		Forbidden:          e.st.forbidden.Load(),
		Closes:             map[string]int64{},
		Evictions:          map[string]int64{},
		HTTPRequests:       e.st.httpRequests.Load(),
		RSSBytes:           readRSS(),
		HeapInuseBytes:     ms.HeapInuse,
		HeapAllocBytes:     ms.HeapAlloc,
		Goroutines:         runtime.NumGoroutine(),
		UptimeSeconds:      time.Since(e.start).Seconds(),
		Draining:           e.draining.Load(),
		Broker:             e.brokerStats(),
	}
	for i, n := range rejectNames {
		st.Rejections[n] = e.st.rejects[i].Load()
	}
	for _, r := range conn.Reasons() {
		if n := e.st.wsCloses[r].Load(); n > 0 {
			st.Closes[r.String()] = n
		}
		if isEviction(r) {
			st.Evictions[r.String()] = e.st.closes[r].Load()
		}
	}
	return st
}

// isEviction reports whether the server, not the client, ended the connection
// because of the client's behaviour.
func isEviction(r conn.Reason) bool {
	switch r {
	case conn.ReasonPingTimeout, conn.ReasonWriteQueueFull, conn.ReasonProtocolError,
		conn.ReasonInvalidPayload, conn.ReasonTooBig, conn.ReasonHandshakeTimeout, conn.ReasonPolicy:
		return true
	}
	return false
}

func (e *Engine) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, e.Stats())
}

// readRSS returns the resident set size from /proc/self/statm, or 0.
func readRSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func (e *Engine) registerMetrics() error {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f()) })
	}
	rs, cs := &e.reg.Stats, e.ccfg.Counters
	e.st.fanout = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "surge_fanout_seconds",
		Help:    "Time from publish accepted to the last subscriber's queue append.",
		Buckets: prometheus.ExponentialBuckets(5e-6, 2.5, 14),
	})
	e.st.queueDepth = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "surge_write_queue_depth_frames",
		Help:    "Frames queued on a connection when its socket filled and it began waiting for write readiness.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 12),
	})
	e.ccfg.OnStall = func(frames, _ int) { e.st.queueDepth.Observe(float64(frames)) }
	pool := func(name string, f func() (int, int)) []prometheus.Collector {
		return []prometheus.Collector{
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "surge_pool_running", Help: "Busy workers of a pool.", ConstLabels: prometheus.Labels{"pool": name}},
				func() float64 { r, _ := f(); return float64(r) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "surge_pool_capacity", Help: "Workers a pool may run.", ConstLabels: prometheus.Labels{"pool": name}},
				func() float64 { _, c := f(); return float64(c) }),
		}
	}
	cols := []prometheus.Collector{
		e.st.fanout,
		e.st.queueDepth,
		gauge("surge_connections", "Open WebSocket connections.", func() float64 { return float64(e.st.wsOpen.Load()) }),
		gauge("surge_deflate_connections", "Open WebSocket connections with permessage-deflate.", func() float64 { return float64(e.st.deflateConns.Load()) }),
		gauge("surge_sockets", "Open TCP sockets (WebSocket, HTTP and handshaking).", func() float64 { return float64(e.poll.Conns()) }),
		gauge("surge_topics", "Topics in the registry.", func() float64 { n, _ := e.reg.Count(); return float64(n) }),
		gauge("surge_subscriptions", "Subscriptions.", func() float64 { _, n := e.reg.Count(); return float64(n) }),
		counter("surge_connections_opened_total", "WebSocket upgrades completed.", e.st.upgraded.Load),
		&labeledCounter{desc: prometheus.NewDesc("surge_handshake_failures_total", "Upgrade requests rejected, by reason.", []string{"reason"}, nil),
			names: hsNames[:], vals: e.st.hsFails[:]},
		counter("surge_messages_published_total", "Messages published.", rs.Published.Load),
		counter("surge_messages_in_total", "WebSocket messages received.", e.st.msgIn.Load),
		counter("surge_messages_delivered_total", "Messages queued to subscribers.", rs.Deliveries.Load),
		counter("surge_bytes_in_total", "WebSocket payload bytes received.", e.st.bytesIn.Load),
		counter("surge_bytes_delivered_total", "Frame bytes queued to subscribers (plain size).", rs.DeliveryBytes.Load),
		counter("surge_messages_compressed_total", "Messages compressed (once each, for all deflate subscribers).", rs.CompressedFrames.Load),
		counter("surge_deflated_deliveries_total", "Compressed frames queued to subscribers.", cs.DeflatedSent.Load),
		counter("surge_messages_replayed_total", "History messages replayed on since-recovery.", rs.Replayed.Load),
		counter("surge_messages_dropped_total", "Messages dropped by drop-oldest or conflate overflow.", cs.Dropped.Load),
		counter("surge_messages_conflated_total", "Pending messages replaced by a newer one with the same key.", cs.Conflated.Load),
		counter("surge_slow_consumer_closes_total", "Connections closed by the disconnect policy.", cs.SlowClosed.Load),
		counter("surge_write_stalls_total", "Times a socket send buffer filled and a connection waited for write readiness.", e.poll.WriteStalls),
		counter("surge_topics_reclaimed_total", "Idle empty topics reclaimed.", rs.Reclaimed.Load),
		&rejectCollector{e: e, desc: prometheus.NewDesc("surge_rejections_total",
			"Connections and requests refused by limits and access control, by reason.", []string{"reason"}, nil)},
		counter("surge_ops_rate_limited_total", "Connections closed for exceeding the in-band op rate.", e.st.opsLimited.Load),
		counter("surge_forbidden_total", "Ops refused by token claims.", e.st.forbidden.Load),
		&closeCollector{e: e, desc: prometheus.NewDesc("surge_connections_closed_total",
			"Closed sockets by reason.", []string{"reason"}, nil)},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	cols = append(cols, pool("io", e.poll.Pool)...)
	cols = append(cols, pool("fanout", e.reg.Pool)...)
	cols = append(cols, e.brokerCollectors()...)
	for _, c := range cols {
		if err := e.prom.Register(c); err != nil {
			return err
		}
	}
	return nil
}

type closeCollector struct {
	e    *Engine
	desc *prometheus.Desc
}

func (c *closeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *closeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range conn.Reasons() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.e.st.closes[r].Load()), r.String())
	}
}

type rejectCollector struct {
	e    *Engine
	desc *prometheus.Desc
}

func (c *rejectCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *rejectCollector) Collect(ch chan<- prometheus.Metric) {
	for i, n := range rejectNames {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.e.st.rejects[i].Load()), n)
	}
}

// labeledCounter exports a fixed set of counters under one label.
type labeledCounter struct {
	desc  *prometheus.Desc
	names []string
	vals  []atomic.Int64
}

func (c *labeledCounter) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *labeledCounter) Collect(ch chan<- prometheus.Metric) {
	for i, n := range c.names {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.vals[i].Load()), n)
	}
}
