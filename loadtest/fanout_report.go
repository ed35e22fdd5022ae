package loadtest

import (
	"fmt"
	"io"
	"time"
)

// FanoutReport is the machine-readable result of one Fanout run. Every field
// is always present in its JSON form except those marked omitempty; numbers
// that could not be measured are null.
type FanoutReport struct {
	Scenario    string             `json:"scenario"` // "fanout"
	Config      FanoutReportConfig `json:"config"`
	StartedAt   time.Time          `json:"started_at"`
	DurationS   float64            `json:"duration_s"`
	Interrupted bool               `json:"interrupted"` // the context ended the run early
	// RunID is carried in every message's data ("r"), so that deliveries
	// of other publishers on the same topics are told apart (Foreign).
	RunID string `json:"run_id"`

	// Published counts messages the server acknowledged (HTTP 200 with a
	// seq, or a WebSocket "ok" reply). PublishErrors counts messages sent
	// whose publish failed or got no answer, by cause: "http_<status>",
	// the server's error code (e.g. "forbidden"), "timeout", "connection",
	// "bad_answer". NotSent messages were never sent: the run was stopped,
	// the publisher gave up, or it fell more than a second behind.
	Published            int64             `json:"published"`
	PublishErrors        int64             `json:"publish_errors"`
	PublishErrorsByCause map[string]int64  `json:"publish_errors_by_cause"`
	PublishErrorSamples  map[string]string `json:"publish_error_samples,omitempty"` // first message per cause
	NotSent              int64             `json:"not_sent"`
	// PublishS is from the first to the last send; PublishRate is
	// Published / PublishS.
	PublishS    float64 `json:"publish_s"`
	PublishRate float64 `json:"publish_rate"`
	// PublishLatencyMs is from sending a publish to reading its answer.
	PublishLatencyMs LatencySummary `json:"publish_latency_ms"`

	// Expected is the sum over connected subscribers of the messages
	// acknowledged on their topic. Delivered counts distinct messages
	// received (each message once per subscriber). Lost is exact: for each
	// subscriber, the acknowledged messages of its topic it never received,
	// whether skipped (a gap in seq) or still missing when the drain ended,
	// including everything after the server closed it; without publish
	// errors, Delivered + Lost = Expected. Duplicates are deliveries of a
	// message already received; Reordered, deliveries whose seq is below
	// one received before on that subscription. SeqGaps counts seqs
	// skipped between consecutive deliveries (informational: other
	// publishers' messages also use seqs). Foreign deliveries belong to
	// other topics or publishers; Malformed frames are not well-formed
	// deliveries; OtherFrames are well-formed frames whose op is not
	// "message". Compressed counts deliveries that came deflated.
	Expected            int64 `json:"expected"`
	Delivered           int64 `json:"delivered"`
	Lost                int64 `json:"lost"`
	Duplicates          int64 `json:"duplicates"`
	Reordered           int64 `json:"reordered"`
	SeqGaps             int64 `json:"seq_gaps"`
	Foreign             int64 `json:"foreign"`
	Malformed           int64 `json:"malformed"`
	OtherFrames         int64 `json:"other_frames"`
	Compressed          int64 `json:"compressed"`
	SubscribersWithLoss int64 `json:"subscribers_with_loss"`
	LostOnClosed        int64 `json:"lost_on_closed"` // part of Lost: on subscribers the server closed
	// DrainS is from the last send to the end of the drain; Drained is
	// whether every open subscriber had every acknowledged message by then.
	DrainS  float64 `json:"drain_s"`
	Drained bool    `json:"drained"`

	// End-to-end latency in milliseconds, from the publisher stamping a
	// message to a subscriber having read it, over the messages sent after
	// the warmup (first deliveries only).
	LatencyCount int64   `json:"latency_count"`
	P50          float64 `json:"p50"`
	P90          float64 `json:"p90"`
	P99          float64 `json:"p99"`
	P999         float64 `json:"p999"`
	Max          float64 `json:"max"`
	Mean         float64 `json:"mean"`
	// DeliveriesPerSec is LatencyCount over the measured publishing time.
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	// Latency is the same end-to-end distribution in more detail (for
	// plots).
	Latency LatencyDistribution `json:"latency"`

	Subscribers SubscriberCounts `json:"subscribers"`
	// FailRatio is (Subs − connected + closed by the server) / Subs.
	FailRatio float64 `json:"fail_ratio"`

	Server FanoutServerPhases `json:"server"`
	// ServerCPUS is the server's CPU time over publishing and drain, from
	// its stats when they report it, else from process_cpu_seconds_total in
	// its /metrics (ServerCPUSource says which); CPUUsPerDelivery is that
	// divided by Delivered, in microseconds.
	ServerCPUS       *float64 `json:"server_cpu_s"`
	ServerCPUSource  string   `json:"server_cpu_source"`
	CPUUsPerDelivery *float64 `json:"cpu_us_per_delivery"`
	// ServerMessagesOut is the change of the server's messages_out stat
	// over the run (a cross-check of Delivered), when reported.
	ServerMessagesOut *int64 `json:"server_messages_out"`

	Generator FanoutGenerator `json:"generator"`

	// Timeline has one point per second of publishing and draining.
	Timeline []TimelinePoint `json:"timeline"`
	// Warnings explain anything that made the run incomplete.
	Warnings []string `json:"warnings"`

	cpu *CPUUsage
}

// FanoutReportConfig is the effective configuration (defaults filled in).
type FanoutReportConfig struct {
	URL              string   `json:"url"`
	StatsURL         string   `json:"stats_url"`   // empty: disabled
	MetricsURL       string   `json:"metrics_url"` // empty: disabled
	Subs             int      `json:"subs"`
	Topics           int      `json:"topics"`
	TopicPrefix      string   `json:"topic_prefix"`
	Rate             float64  `json:"rate"`
	Size             int      `json:"size"`
	DurationS        float64  `json:"duration_s"`
	WarmupS          float64  `json:"warmup_s"`
	DrainS           float64  `json:"drain_s"`
	Publish          string   `json:"publish"`
	PublishConns     int      `json:"publish_conns"`
	PublishWindow    int      `json:"publish_window"`
	PublishTimeoutS  float64  `json:"publish_timeout_s"`
	Deflate          bool     `json:"deflate"`
	SourceIPs        []string `json:"source_ips"`
	ConnectRate      float64  `json:"connect_rate"`
	ConnectTimeoutS  float64  `json:"connect_timeout_s"`
	ConnectPhaseMaxS float64  `json:"connect_phase_max_s"`
	CloseWaitS       float64  `json:"close_wait_s"`
	AllowRemote      bool     `json:"allow_remote"`
	// Messages is how many messages the schedule holds (warmup included).
	Messages int `json:"messages"`
	// Procs is how many generator processes held the subscribers (1: this
	// process alone; see --procs). The parent process publishes.
	Procs int `json:"procs"`
	// ClientLoop is how the subscribers were read: "goroutine" or "epoll".
	ClientLoop string `json:"client_loop"`
}

// SubscriberCounts describes the subscriber connections.
type SubscriberCounts struct {
	Requested     int64            `json:"requested"`
	Attempted     int64            `json:"attempted"`
	Connected     int64            `json:"connected"`
	Failed        int64            `json:"failed"`
	FailedByCause map[string]int64 `json:"failed_by_cause"`
	NotAttempted  int64            `json:"not_attempted"`
	// Deflate counts subscribers that negotiated permessage-deflate.
	Deflate int64 `json:"deflate"`
	// ClosedByServer counts subscribers the server ended before the
	// generator closed them, by close code ("1006": dropped without a close
	// frame).
	ClosedByServer map[string]int64 `json:"closed_by_server"`
	ClosedClean    int64            `json:"closed_clean"`
	ClosedUnclean  int64            `json:"closed_unclean"`
	// RampS is from the first dial to the last handshake.
	RampS float64 `json:"ramp_s"`
}

// FanoutServerPhases holds the server's stats before connecting, once every
// subscription is registered, and after the drain. A nil phase was not
// reached.
type FanoutServerPhases struct {
	Before       *ServerStats `json:"before"`
	AfterConnect *ServerStats `json:"after_connect"`
	After        *ServerStats `json:"after"`
}

// FanoutGenerator is the load generator's own cost.
type FanoutGenerator struct {
	Before       *GeneratorStats `json:"before"`
	AfterConnect *GeneratorStats `json:"after_connect"`
	After        *GeneratorStats `json:"after"`
	// CPUS is this process's CPU time over publishing and drain;
	// CPUUsPerDelivery is that divided by Delivered.
	CPUS             *float64 `json:"cpu_s"`
	CPUUsPerDelivery *float64 `json:"cpu_us_per_delivery"`
}

// CPUUsage is CPU time spent over publishing and drain, in seconds.
type CPUUsage struct {
	ServerS    *float64
	GeneratorS *float64
	Source     string
}

// TimelinePoint is one interval (about a second) of the run, from the start
// of publishing.
type TimelinePoint struct {
	TS        float64 `json:"t_s"`        // end of the interval
	IntervalS float64 `json:"interval_s"` // its length
	Phase     string  `json:"phase"`      // at its end
	Published int64   `json:"published"`  // publishes sent
	// PublishErrors counts failures recorded in the interval.
	PublishErrors int64 `json:"publish_errors"`
	Delivered     int64 `json:"delivered"` // unique deliveries received
	// P99 is the 99th percentile latency (ms) of the measured deliveries
	// received in the interval; null when there were none.
	P99 *float64 `json:"p99"`
}

// writeFanoutSummary prints a few human lines about rep.
func writeFanoutSummary(w io.Writer, rep *FanoutReport) {
	c, s := rep.Config, rep.Subscribers
	fmt.Fprintf(w, "fanout: %d/%d subscribers on %d topic(s) of %s; failed %d (%s); closed by server (%s); deflate %d\n",
		s.Connected, c.Subs, c.Topics, c.URL, s.Failed, counts(s.FailedByCause), counts(s.ClosedByServer), s.Deflate)
	pl := rep.PublishLatencyMs
	fmt.Fprintf(w, "published %d/%d via %s in %.2fs (%.1f/s, %d B each); errors %d (%s); not sent %d; answer ms p50 %.2f p99 %.2f\n",
		rep.Published, c.Messages, c.Publish, rep.PublishS, rep.PublishRate, c.Size,
		rep.PublishErrors, counts(rep.PublishErrorsByCause), rep.NotSent, pl.P50, pl.P99)
	fmt.Fprintf(w, "delivered %d of %d expected: lost %d, duplicates %d, reordered %d (seq gaps %d, foreign %d, malformed %d, compressed %d)\n",
		rep.Delivered, rep.Expected, rep.Lost, rep.Duplicates, rep.Reordered, rep.SeqGaps, rep.Foreign, rep.Malformed, rep.Compressed)
	fmt.Fprintf(w, "latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f  (%d samples); %.0f deliveries/s\n",
		rep.P50, rep.P90, rep.P99, rep.P999, rep.Max, rep.Mean, rep.LatencyCount, rep.DeliveriesPerSec)
	if rep.ServerCPUS != nil && rep.CPUUsPerDelivery != nil {
		fmt.Fprintf(w, "server cpu %.2fs: %.2f µs per delivery (%s)", *rep.ServerCPUS, *rep.CPUUsPerDelivery, rep.ServerCPUSource)
	} else {
		fmt.Fprint(w, "server cpu: not reported")
	}
	if g := rep.Generator; g.CPUS != nil && g.CPUUsPerDelivery != nil {
		fmt.Fprintf(w, "; generator cpu %.2fs: %.2f µs per delivery", *g.CPUS, *g.CPUUsPerDelivery)
	}
	if g := rep.Generator.After; g != nil && g.RSSBytes != nil {
		v := float64(*g.RSSBytes)
		fmt.Fprintf(w, ", rss %s", bytesOrNA(&v))
	}
	fmt.Fprintln(w)
	drained, interrupted := "complete", ""
	if !rep.Drained {
		drained = "incomplete"
	}
	if rep.Interrupted {
		interrupted = " (interrupted)"
	}
	fmt.Fprintf(w, "drain %.2fs (%s); fail ratio %.4f; %.1fs total%s\n", rep.DrainS, drained, rep.FailRatio, rep.DurationS, interrupted)
	for _, msg := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", msg)
	}
}

func (r *fanoutRun) reportConfig() FanoutReportConfig {
	warm, measured := r.cfg.messageCounts()
	c := FanoutReportConfig{
		URL:              r.cfg.URL,
		Subs:             r.cfg.Subs,
		Topics:           r.cfg.Topics,
		TopicPrefix:      r.cfg.TopicPrefix,
		Rate:             r.cfg.Rate,
		Size:             r.cfg.Size,
		DurationS:        r.cfg.Duration.Seconds(),
		WarmupS:          r.cfg.Warmup.Seconds(),
		DrainS:           r.cfg.Drain.Seconds(),
		Publish:          r.cfg.Publish,
		PublishConns:     r.cfg.PublishConns,
		PublishWindow:    r.cfg.PublishWindow,
		PublishTimeoutS:  r.cfg.PublishTimeout.Seconds(),
		Deflate:          r.cfg.Deflate,
		SourceIPs:        []string{},
		ConnectRate:      r.cfg.ConnectRate,
		ConnectTimeoutS:  r.cfg.ConnectTimeout.Seconds(),
		ConnectPhaseMaxS: r.cfg.ConnectPhaseMax.Seconds(),
		CloseWaitS:       r.cfg.CloseWait.Seconds(),
		AllowRemote:      r.cfg.AllowRemote,
		Messages:         warm + measured,
		Procs:            1,
		ClientLoop:       r.cfg.ClientLoop,
	}
	if r.stats != nil {
		c.StatsURL = r.stats.url
	}
	if r.metrics != nil {
		c.MetricsURL = r.metrics.url
	}
	for _, a := range r.cfg.SourceIPs {
		c.SourceIPs = append(c.SourceIPs, a.String())
	}
	return c
}

// fill computes the report from the run's state. Every goroutine of the run
// has exited by now.
func (r *fanoutRun) fill(rep *FanoutReport) {
	rep.DurationS = r.elapsed().Seconds()
	rep.RunID = r.runID
	rep.Warnings = append([]string{}, rep.Warnings...)

	// Publishing.
	pub := r.pub
	pub.mu.Lock()
	rep.Published = pub.okTotal
	rep.PublishErrors = pub.errTotal
	rep.PublishErrorsByCause = pub.errs
	if len(pub.errMsg) > 0 {
		rep.PublishErrorSamples = pub.errMsg
	}
	rep.PublishLatencyMs = summarize(pub.rtt)
	acked, ackedCount := pub.acked, pub.ackedCount
	pub.mu.Unlock()
	rep.NotSent = pub.notSent.Load()
	if reason := pub.stopReason(); reason != "" {
		rep.Warnings = append(rep.Warnings, "publishing stopped: "+reason)
	}
	lastSend := time.Unix(0, pub.lastSend.Load())
	if !r.pubStart.IsZero() {
		rep.PublishS = lastSend.Sub(r.pubStart).Seconds()
		if rep.PublishS > 0 {
			rep.PublishRate = float64(rep.Published) / rep.PublishS
		}
		rep.DrainS = r.drainEnd.Sub(lastSend).Seconds()
	}
	rep.Drained = r.drained

	// Exactness, per subscriber.
	r.mu.Lock()
	for _, s := range r.subs {
		if s == nil {
			continue
		}
		want := ackedCount[s.topic]
		lost := want - s.got.countIn(acked[s.topic])
		rep.Expected += want
		rep.Lost += lost
		if lost > 0 {
			rep.SubscribersWithLoss++
			if s.closeCode != 0 {
				rep.LostOnClosed += lost
			}
		}
		rep.Delivered += s.delivered
		rep.Duplicates += s.dups
		rep.Reordered += s.reordered
		rep.SeqGaps += s.seqGaps
		rep.Foreign += s.foreign
		rep.Malformed += s.malformed
		rep.OtherFrames += s.other
		rep.Compressed += s.deflated
	}
	sc := SubscriberCounts{
		Requested:      int64(r.cfg.Subs),
		Attempted:      r.attempted.Load(),
		Connected:      r.connected.Load(),
		Failed:         r.failed.Load(),
		FailedByCause:  r.failures,
		Deflate:        r.deflated.Load(),
		ClosedByServer: r.closes,
		ClosedClean:    r.clean.Load(),
		ClosedUnclean:  r.unclean.Load(),
	}
	if sc.Connected > 0 {
		sc.RampS = r.lastConnected.Sub(r.firstDial).Seconds()
	}
	r.mu.Unlock()
	sc.NotAttempted = sc.Requested - sc.Attempted
	rep.Subscribers = sc
	if r.cfg.Subs > 0 {
		rep.FailRatio = float64(sc.Requested-sc.Connected+r.serverClosed.Load()) / float64(sc.Requested)
	}
	if r.cfg.Deflate && sc.Connected > 0 && sc.Deflate == 0 {
		rep.Warnings = append(rep.Warnings, "--deflate: the server negotiated permessage-deflate with no subscriber")
	}
	if sc.Connected == 0 {
		rep.Warnings = append(rep.Warnings, "no subscriber connected; nothing was published")
	}

	// Latency over the measured period.
	r.sampleMu.Lock()
	l := summarize(r.total)
	rep.Latency = distribution(r.total)
	rep.Timeline = append([]TimelinePoint{}, r.timeline...)
	r.sampleMu.Unlock()
	rep.LatencyCount, rep.P50, rep.P90, rep.P99, rep.P999, rep.Max, rep.Mean =
		l.Count, l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean
	if ms := r.measureStart.Load(); !r.pubStart.IsZero() {
		window := r.cfg.Duration
		if rep.NotSent > 0 || rep.Interrupted {
			window = lastSend.Sub(time.Unix(0, ms))
		}
		if window > 0 {
			rep.DeliveriesPerSec = float64(l.Count) / window.Seconds()
		}
	}

	// Cost.
	if u := rep.cpu; u != nil {
		rep.ServerCPUS, rep.ServerCPUSource = u.ServerS, u.Source
		rep.Generator.CPUS = u.GeneratorS
		if rep.Delivered > 0 {
			rep.CPUUsPerDelivery = perDeliveryUS(u.ServerS, rep.Delivered)
			rep.Generator.CPUUsPerDelivery = perDeliveryUS(u.GeneratorS, rep.Delivered)
		}
	}
	if b, a := rep.Server.Before, rep.Server.After; b != nil && a != nil && b.MessagesOut != nil && a.MessagesOut != nil {
		d := *a.MessagesOut - *b.MessagesOut
		rep.ServerMessagesOut = &d
	}
}

func perDeliveryUS(cpuS *float64, delivered int64) *float64 {
	if cpuS == nil {
		return nil
	}
	v := *cpuS * 1e6 / float64(delivered)
	return &v
}
