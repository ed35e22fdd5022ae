package loadtest

import (
	"encoding/json"
	"math"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// IdleReport is the machine-readable result of one Idle run. Every field is
// always present in its JSON form except those marked omitempty.
type IdleReport struct {
	Scenario    string           `json:"scenario"` // "idle"
	Config      IdleReportConfig `json:"config"`
	StartedAt   time.Time        `json:"started_at"`
	DurationS   float64          `json:"duration_s"`
	Interrupted bool             `json:"interrupted"` // the context ended the run early

	// Attempted connections were dialed; Connected completed the WebSocket
	// handshake; Failed did not (by cause: refused, timeout, handshake, reset,
	// eof, no_port, fd_limit, canceled, other). NotAttempted were never
	// dialed because the run was stopped or the connect phase hit its
	// deadline.
	Attempted     int64            `json:"attempted"`
	Connected     int64            `json:"connected"`
	Failed        int64            `json:"failed"`
	FailedByCause map[string]int64 `json:"failed_by_cause"`
	NotAttempted  int64            `json:"not_attempted"`
	// FailRatio is (Conns − Connected + Lost) / Conns: the share of the
	// requested connections that did not stay open until the generator
	// closed them.
	FailRatio float64 `json:"fail_ratio"`

	// ConnectLatencyMs is TCP connect plus WebSocket upgrade, successful
	// connections only; ConnectLatency is the same distribution in more
	// detail (for plots).
	ConnectLatencyMs LatencySummary      `json:"connect_latency_ms"`
	ConnectLatency   LatencyDistribution `json:"connect_latency"`
	// RampS is from the first dial to the last successful handshake;
	// ConnectRate is Connected / RampS.
	RampS       float64 `json:"ramp_s"`
	ConnectRate float64 `json:"connect_rate"`

	OpenAfterConnect int64 `json:"open_after_connect"`
	OpenAfterHold    int64 `json:"open_after_hold"`
	// ClosesDuringConnect and ClosesDuringHold count connections the server
	// ended before the generator began closing, by close code ("1001", …;
	// "1005" a close frame without a code; "1006" the connection was lost
	// without a close frame). Lost is their total.
	ClosesDuringConnect map[string]int64 `json:"closes_during_connect"`
	ClosesDuringHold    map[string]int64 `json:"closes_during_hold"`
	Lost                int64            `json:"lost"`

	PingsAnswered    int64 `json:"pings_answered"`
	MessagesReceived int64 `json:"messages_received"` // data frames
	BytesReceived    int64 `json:"bytes_received"`    // data frame payload bytes

	// ClosedClean connections answered the generator's close (1000) with a
	// close frame within CloseWait; ClosedUnclean did not.
	ClosedClean   int64 `json:"closed_clean"`
	ClosedUnclean int64 `json:"closed_unclean"`

	Server ServerPhases `json:"server"`
	// ServerBytesPerConn is (after_connect − before) / OpenAfterConnect for
	// the server's rss_bytes and heap_inuse_bytes; omitted when the server did
	// not report them.
	ServerBytesPerConn *BytesPerConn `json:"server_bytes_per_conn,omitempty"`

	Generator GeneratorPhases `json:"generator"`
	// GeneratorBytesPerConn is the same difference for this process.
	GeneratorBytesPerConn *BytesPerConn `json:"generator_bytes_per_conn,omitempty"`

	// Timeline has a point at the start, about one a second while the run
	// lasts, and one at its end.
	Timeline []IdleTimelinePoint `json:"timeline"`
}

// IdleTimelinePoint is the state of an idle run at one moment, counted from
// the run's start.
type IdleTimelinePoint struct {
	TS        float64 `json:"t_s"`
	Phase     string  `json:"phase"`
	Attempted int64   `json:"attempted"`
	Connected int64   `json:"connected"` // handshakes completed so far
	Failed    int64   `json:"failed"`
	Open      int64   `json:"open"` // open at that moment
	Lost      int64   `json:"lost"` // closed or dropped by the server so far
}

// IdleReportConfig is the effective configuration (defaults filled in).
type IdleReportConfig struct {
	URL              string   `json:"url"`
	StatsURL         string   `json:"stats_url"` // empty: stats disabled
	Conns            int      `json:"conns"`
	Rate             float64  `json:"rate"`
	Topics           int      `json:"topics"` // 0: no topic subscribed
	TopicPrefix      string   `json:"topic_prefix"`
	HoldS            float64  `json:"hold_s"`
	ConnectTimeoutS  float64  `json:"connect_timeout_s"`
	ConnectPhaseMaxS float64  `json:"connect_phase_max_s"`
	CloseWaitS       float64  `json:"close_wait_s"`
	SourceIPs        []string `json:"source_ips"`
	AllowRemote      bool     `json:"allow_remote"`
	// Procs is how many generator processes held the connections (1: this
	// process alone; see --procs).
	Procs int `json:"procs"`
	// ClientLoop is how the connections were read: "goroutine" or "epoll".
	ClientLoop string `json:"client_loop"`
}

// LatencySummary is a latency distribution in milliseconds.
type LatencySummary struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// LatencyDistribution is the shape of an HDR latency histogram in
// milliseconds: the value at fixed percentiles (distributionPercentiles:
// 0, 50, 75, 90, 95, 99, 99.9, 99.99, 100), and the counts in up to
// distributionBuckets log-spaced buckets from the smallest to the largest
// value recorded. Both are empty when nothing was recorded.
type LatencyDistribution struct {
	Percentiles []PercentileValue `json:"percentiles"`
	Buckets     []LatencyBucket   `json:"buckets"`
}

// PercentileValue is the latency at or below which P percent of the samples
// fall.
type PercentileValue struct {
	P  float64 `json:"p"`
	Ms float64 `json:"ms"`
}

// LatencyBucket counts the samples from FromMs (inclusive) to ToMs
// (exclusive), to the histogram's precision (3 significant digits).
type LatencyBucket struct {
	FromMs float64 `json:"from_ms"`
	ToMs   float64 `json:"to_ms"`
	Count  int64   `json:"count"`
}

// distributionPercentiles are the percentiles a LatencyDistribution gives.
var distributionPercentiles = [...]float64{0, 50, 75, 90, 95, 99, 99.9, 99.99, 100}

// distributionBuckets is the most buckets a LatencyDistribution has.
const distributionBuckets = 40

// ServerPhases holds the server's stats before connecting, once all
// connections are up, and after the hold. A nil phase was not reached.
type ServerPhases struct {
	Before       *ServerStats `json:"before"`
	AfterConnect *ServerStats `json:"after_connect"`
	AfterHold    *ServerStats `json:"after_hold"`
}

// GeneratorPhases holds the generator's own memory before connecting and
// once all connections are up.
type GeneratorPhases struct {
	Before       *GeneratorStats `json:"before"`
	AfterConnect *GeneratorStats `json:"after_connect"`
}

// BytesPerConn is a memory difference divided by the open connections.
type BytesPerConn struct {
	RSS       *float64 `json:"rss,omitempty"`
	HeapInuse *float64 `json:"heap_inuse,omitempty"`
}

// summarize converts a histogram of microseconds into milliseconds.
func summarize(h *hdrhistogram.Histogram) LatencySummary {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	if h.TotalCount() == 0 {
		return LatencySummary{}
	}
	return LatencySummary{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1000,
		P50:   ms(h.ValueAtPercentile(50)),
		P90:   ms(h.ValueAtPercentile(90)),
		P99:   ms(h.ValueAtPercentile(99)),
		P999:  ms(h.ValueAtPercentile(99.9)),
		Max:   ms(h.Max()),
	}
}

// perConn returns (after − before) / n, or nil when either side is unknown
// or n is not positive.
func perConn(before, after *int64, n int64) *float64 {
	if before == nil || after == nil || n <= 0 {
		return nil
	}
	v := float64(*after-*before) / float64(n)
	return &v
}

// distribution describes a histogram of microseconds in milliseconds. The
// buckets are log-spaced between the lowest and the highest value recorded
// (values below ~2 ms are exact to the microsecond, so a narrow range gets
// fewer, one-microsecond-wide buckets).
func distribution(h *hdrhistogram.Histogram) LatencyDistribution {
	d := LatencyDistribution{Percentiles: []PercentileValue{}, Buckets: []LatencyBucket{}}
	if h.TotalCount() == 0 {
		return d
	}
	ms := func(us float64) float64 { return us / 1000 }
	for _, p := range distributionPercentiles {
		var v int64
		switch p {
		case 0:
			v = h.Min()
		case 100:
			v = h.Max()
		default:
			v = h.ValueAtPercentile(p)
		}
		d.Percentiles = append(d.Percentiles, PercentileValue{P: p, Ms: ms(float64(v))})
	}

	lo, hi := max(h.Min(), 1), h.Max()+1 // [lo, hi) in µs
	n := int(min(int64(distributionBuckets), hi-lo))
	span := math.Log(float64(hi) / float64(lo))
	edge := func(i int) float64 { return float64(lo) * math.Exp(span*float64(i)/float64(n)) }
	counts := make([]int64, n)
	for _, b := range h.Distribution() {
		if b.Count == 0 {
			continue
		}
		i := int(float64(n) * math.Log(float64(max(b.From, lo))/float64(lo)) / span)
		counts[min(max(i, 0), n-1)] += b.Count
	}
	for i, c := range counts {
		d.Buckets = append(d.Buckets, LatencyBucket{FromMs: ms(edge(i)), ToMs: ms(edge(i + 1)), Count: c})
	}
	return d
}

// MarshalJSON writes the report with the top-level fields every scenario's
// report carries for automation: delivered (data messages received during
// the run), lost (connections closed by the server; see Lost), and latency
// percentiles in ms (p50, p90, p99, p999, max), which for idle are those of
// the connect latency.
func (r IdleReport) MarshalJSON() ([]byte, error) {
	type plain IdleReport // drops this method
	l := r.ConnectLatencyMs
	return json.Marshal(struct {
		plain
		Delivered int64   `json:"delivered"`
		P50       float64 `json:"p50"`
		P90       float64 `json:"p90"`
		P99       float64 `json:"p99"`
		P999      float64 `json:"p999"`
		Max       float64 `json:"max"`
	}{plain(r), r.MessagesReceived, l.P50, l.P90, l.P99, l.P999, l.Max})
}
