package loadtest

import (
	"fmt"
	"io"
	"math/bits"
	"slices"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// StormReport is the machine-readable result of one Storm run. Every field
// is always present in its JSON form except those marked omitempty; numbers
// that could not be measured are null.
type StormReport struct {
	Scenario    string            `json:"scenario"` // "storm"
	Config      StormReportConfig `json:"config"`
	StartedAt   time.Time         `json:"started_at"`
	DurationS   float64           `json:"duration_s"`
	Interrupted bool              `json:"interrupted"` // the context ended the run early
	// RunID is carried in every message's data ("r"), so that messages of
	// other publishers on the same topics are told apart.
	RunID string `json:"run_id"`

	Clients StormClients `json:"clients"`

	// DropS is how long dropping every client took (the drop is meant to
	// be one instant).
	DropS float64 `json:"drop_s"`
	// Back counts clients (of those connected before the drop) that
	// reconnected, and resubscribed when since is on, within the storm
	// timeout; NotBack the others, by the cause of their last failed
	// attempt ("storm_timeout": the next attempt would have been after the
	// timeout; "max_attempts"; "canceled").
	Back         int64            `json:"back"`
	NotBack      int64            `json:"not_back"`
	NotBackCause map[string]int64 `json:"not_back_by_cause"`
	// TimeToAllBackMs is from the drop to the last client back; null when
	// not every client came back.
	TimeToAllBackMs *float64 `json:"time_to_all_back_ms"`
	// ReconnectMs is each client's time from its drop to being back
	// (upgrade done and, with since, the subscribe answered); in close
	// mode it includes the close handshake. P50 … Max below repeat it.
	ReconnectMs LatencySummary `json:"reconnect_ms"`
	// Reconnect is the distribution of per-client reconnect times.
	Reconnect LatencyDistribution `json:"reconnect"`
	// BackTimeline counts the clients back so far, every 50 ms from the
	// drop until the last came back.
	BackTimeline []StormBackPoint `json:"back_timeline"`
	P50          float64          `json:"p50"`
	P90          float64          `json:"p90"`
	P99          float64          `json:"p99"`
	P999         float64          `json:"p999"`
	Max          float64          `json:"max"`
	// Attempts counts reconnect attempts; AttemptsMax is the most one
	// client needed. Refused counts the attempts that failed, by cause:
	// "http_<status>" (503, 429, …: the server answered the upgrade with
	// another status), "refused" (connection refused), "timeout",
	// "reset", "eof", "no_port", "fd_limit", "handshake", "storm_timeout"
	// (an attempt cut short by the end of the reconnect phase),
	// "closed_<code>"
	// (closed before the subscribe answer), "error_<code>" (the subscribe
	// op was answered with another error), "canceled", "other".
	Attempts       int64            `json:"attempts"`
	AttemptsMax    int64            `json:"attempts_max"`
	Refused        int64            `json:"refused"`
	RefusedByCause map[string]int64 `json:"refused_by_cause"`
	// RecoveryIncomplete counts resubscribes answered recovery_incomplete
	// (the server no longer had every message after since).
	RecoveryIncomplete int64 `json:"recovery_incomplete"`

	// Published counts messages the server acknowledged (HTTP 200 with a
	// seq), PublishedPerTopic by topic number; PublishErrors those that
	// failed or got no answer, by cause.
	Published            int64            `json:"published"`
	PublishedPerTopic    []int64          `json:"published_per_topic"`
	PublishErrors        int64            `json:"publish_errors"`
	PublishErrorsByCause map[string]int64 `json:"publish_errors_by_cause"`
	PublishS             float64          `json:"publish_s"`

	// Expected is, over the clients that came back, the acknowledged
	// messages of their topic; Delivered the distinct ones they received;
	// Lost = Expected − Delivered, exactly (by publish counter). Missed is
	// the part of Lost that fell into a client's gap: the seq (from the
	// publish answer) lies between the last message it received before
	// the drop and the first new one after it. With since and enough
	// history Missed is 0; without since it is what the server published
	// while the client was away. LostOutsideGap = Lost − Missed (a bug
	// somewhere). LostNotBack counts the messages clients that never came
	// back did not receive (not part of Lost).
	Expected          int64 `json:"expected"`
	Delivered         int64 `json:"delivered"`
	Lost              int64 `json:"lost"`
	Missed            int64 `json:"missed"`
	LostOutsideGap    int64 `json:"lost_outside_gap"`
	LostNotBack       int64 `json:"lost_not_back"`
	ClientsWithMissed int64 `json:"clients_with_missed"`
	// Duplicates are messages received again (e.g. replayed from a since
	// too old); Reordered, messages whose seq is not above the previous
	// one on the same connection; Foreign, messages of other topics or
	// publishers; Malformed, frames that are not well-formed JSON
	// messages; OtherFrames, other well-formed frames.
	Duplicates  int64 `json:"duplicates"`
	Reordered   int64 `json:"reordered"`
	Foreign     int64 `json:"foreign"`
	Malformed   int64 `json:"malformed"`
	OtherFrames int64 `json:"other_frames"`
	// Drained is whether every client that came back had its topic's last
	// message when the drain ended; DrainS how long the drain took.
	Drained bool    `json:"drained"`
	DrainS  float64 `json:"drain_s"`
	// FailRatio is (Conns − Back) / Conns.
	FailRatio float64 `json:"fail_ratio"`

	Server    StormServerPhases `json:"server"`
	Generator FanoutGenerator   `json:"generator"`
	Warnings  []string          `json:"warnings"`

	// PerClient has one entry per client that connected, when the config
	// asks for it.
	PerClient []StormClientReport `json:"per_client,omitempty"`
}

// StormClients describes the client connections.
type StormClients struct {
	Requested     int64            `json:"requested"`
	Attempted     int64            `json:"attempted"`
	Connected     int64            `json:"connected"` // initially
	Failed        int64            `json:"failed"`    // initially
	FailedByCause map[string]int64 `json:"failed_by_cause"`
	NotAttempted  int64            `json:"not_attempted"`
	// ClosedBeforeDrop and ClosedAfterBack count connections the server
	// ended, by close code ("1006": without a close frame).
	ClosedBeforeDrop map[string]int64 `json:"closed_before_drop"`
	ClosedAfterBack  map[string]int64 `json:"closed_after_back"`
	ClosedClean      int64            `json:"closed_clean"`
	ClosedUnclean    int64            `json:"closed_unclean"`
	// RampS is from the first dial to the last initial connection.
	RampS float64 `json:"ramp_s"`
}

// StormClientReport is what one client saw around its gap.
type StormClientReport struct {
	Client int    `json:"client"`
	Topic  string `json:"topic"`
	Back   bool   `json:"back"`
	// ReconnectMs is null when the client did not come back.
	ReconnectMs *float64 `json:"reconnect_ms"`
	Attempts    int      `json:"attempts"`
	// SeqBefore is the highest seq of this run it received before the
	// drop, SeqAfter the first new one after (0: none).
	SeqBefore          uint64 `json:"seq_before"`
	SeqAfter           uint64 `json:"seq_after"`
	Delivered          int64  `json:"delivered"`
	Lost               int64  `json:"lost"`
	Missed             int64  `json:"missed"`
	Duplicates         int64  `json:"duplicates"`
	RecoveryIncomplete bool   `json:"recovery_incomplete"`
}

// StormServerPhases holds the server's stats before connecting, once every
// client is connected, when the reconnect phase ended, and at the end.
type StormServerPhases struct {
	Before       *ServerStats `json:"before"`
	AfterConnect *ServerStats `json:"after_connect"`
	AfterStorm   *ServerStats `json:"after_storm"`
	After        *ServerStats `json:"after"`
}

// StormReportConfig is the effective configuration (defaults filled in).
type StormReportConfig struct {
	URL              string   `json:"url"`
	StatsURL         string   `json:"stats_url"` // empty: disabled
	Conns            int      `json:"conns"`
	Topics           int      `json:"topics"`
	TopicPrefix      string   `json:"topic_prefix"`
	Rate             float64  `json:"rate"`
	Size             int      `json:"size"`
	ConnectRate      float64  `json:"connect_rate"`
	BeforeDropS      float64  `json:"before_drop_s"`
	Drop             string   `json:"drop"`
	Reconnect        string   `json:"reconnect"`
	BackoffMinS      float64  `json:"backoff_min_s"`
	BackoffMaxS      float64  `json:"backoff_max_s"`
	JitterWindowS    float64  `json:"jitter_window_s"`
	MaxAttempts      int      `json:"max_attempts"`
	Since            bool     `json:"since"`
	StormTimeoutS    float64  `json:"storm_timeout_s"`
	HoldS            float64  `json:"hold_s"`
	DrainS           float64  `json:"drain_s"`
	PublishConns     int      `json:"publish_conns"`
	PublishWindow    int      `json:"publish_window"`
	PublishTimeoutS  float64  `json:"publish_timeout_s"`
	SourceIPs        []string `json:"source_ips"`
	ConnectTimeoutS  float64  `json:"connect_timeout_s"`
	ConnectPhaseMaxS float64  `json:"connect_phase_max_s"`
	CloseWaitS       float64  `json:"close_wait_s"`
	AllowRemote      bool     `json:"allow_remote"`
}

func (r *stormRun) reportConfig() StormReportConfig {
	c := r.cfg
	rc := StormReportConfig{
		URL:              c.URL,
		Conns:            c.Conns,
		Topics:           c.Topics,
		TopicPrefix:      c.TopicPrefix,
		Rate:             c.Rate,
		Size:             c.Size,
		ConnectRate:      c.ConnectRate,
		BeforeDropS:      c.BeforeDrop.Seconds(),
		Drop:             c.Drop,
		Reconnect:        c.Reconnect,
		BackoffMinS:      c.BackoffMin.Seconds(),
		BackoffMaxS:      c.BackoffMax.Seconds(),
		JitterWindowS:    c.JitterWindow.Seconds(),
		MaxAttempts:      c.MaxAttempts,
		Since:            !c.NoSince,
		StormTimeoutS:    c.StormTimeout.Seconds(),
		HoldS:            c.Hold.Seconds(),
		DrainS:           c.Drain.Seconds(),
		PublishConns:     c.PublishConns,
		PublishWindow:    c.PublishWindow,
		PublishTimeoutS:  c.PublishTimeout.Seconds(),
		SourceIPs:        []string{},
		ConnectTimeoutS:  c.ConnectTimeout.Seconds(),
		ConnectPhaseMaxS: c.ConnectPhaseMax.Seconds(),
		CloseWaitS:       c.CloseWait.Seconds(),
		AllowRemote:      c.AllowRemote,
	}
	if r.stats != nil {
		rc.StatsURL = r.stats.url
	}
	for _, a := range c.SourceIPs {
		rc.SourceIPs = append(rc.SourceIPs, a.String())
	}
	return rc
}

// fill computes the report from the run's state. Every goroutine of the run
// has exited by now.
func (r *stormRun) fill(rep *StormReport) {
	rep.DurationS = r.elapsed().Seconds()
	rep.Warnings = append([]string{}, rep.Warnings...)

	pub := r.pubHost.pub
	pub.mu.Lock()
	rep.Published = pub.okTotal
	rep.PublishErrors = pub.errTotal
	rep.PublishErrorsByCause = pub.errs
	rep.PublishedPerTopic = append([]int64{}, pub.ackedCount...)
	acked, ackedCount := pub.acked, pub.ackedCount
	pub.mu.Unlock()

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pubStopReason != "" {
		rep.Warnings = append(rep.Warnings, "publishing stopped: "+r.pubStopReason)
	}
	if !r.publishStarted.IsZero() && !r.publishStopped.IsZero() {
		rep.PublishS = r.publishStopped.Sub(r.publishStarted).Seconds()
	}
	if !r.drainEnd.IsZero() && !r.publishStopped.IsZero() {
		rep.DrainS = r.drainEnd.Sub(r.publishStopped).Seconds()
	}
	rep.Drained = r.drained
	if !r.dropAt.IsZero() {
		rep.DropS = r.dropEnd.Sub(r.dropAt).Seconds()
	}

	rec := hdrhistogram.New(1, maxLatencyUS, 3)
	var exactMax time.Duration // the histogram's max is rounded up to its precision
	for _, cl := range r.clients {
		if cl == nil {
			continue
		}
		rep.Attempts += int64(cl.attempts)
		rep.AttemptsMax = max(rep.AttemptsMax, int64(cl.attempts))
		rep.Duplicates += cl.dups
		rep.Reordered += cl.reordered
		rep.Foreign += cl.foreign
		rep.Malformed += cl.malformed
		rep.OtherFrames += cl.other
		back := cl.isBack.Load()
		cr := StormClientReport{
			Client: cl.i, Topic: string(cl.name), Back: back, Attempts: cl.attempts,
			SeqBefore: cl.seqBefore, SeqAfter: cl.seqAfter, Delivered: cl.delivered,
			Duplicates: cl.dups, RecoveryIncomplete: cl.recoveryIncomplete,
		}
		if back {
			d := cl.backAt.Sub(cl.dropAt)
			_ = rec.RecordValue(min(max(d.Microseconds(), 1), maxLatencyUS))
			exactMax = max(exactMax, d)
			ms := float64(d.Microseconds()) / 1000
			cr.ReconnectMs = &ms
			cr.Lost, cr.Missed = r.clientLoss(cl, acked[cl.topic])
			rep.Expected += ackedCount[cl.topic]
			rep.Delivered += cl.delivered
			rep.Lost += cr.Lost
			rep.Missed += cr.Missed
			if cr.Missed > 0 {
				rep.ClientsWithMissed++
			}
		} else {
			rep.LostNotBack += ackedCount[cl.topic] - cl.got.countIn(acked[cl.topic])
		}
		if r.cfg.PerClient {
			rep.PerClient = append(rep.PerClient, cr)
		}
	}
	rep.LostOutsideGap = rep.Lost - rep.Missed
	rep.Back = r.back.Load()
	rep.NotBack = r.participants.Load() - rep.Back
	rep.NotBackCause = r.notBackBy
	rep.Refused = r.refused.Load()
	rep.RefusedByCause = r.refusedBy
	rep.RecoveryIncomplete = r.recoveryIncomplete.Load()
	rep.ReconnectMs = summarize(rec)
	if l := &rep.ReconnectMs; l.Count > 0 {
		// HDR values are rounded up to the histogram's precision; keep
		// the exact maximum and no percentile above it.
		l.Max = float64(exactMax.Microseconds()) / 1000
		l.P50, l.P90, l.P99, l.P999 = min(l.P50, l.Max), min(l.P90, l.Max), min(l.P99, l.Max), min(l.P999, l.Max)
	}
	rep.Reconnect = distribution(rec)
	rep.BackTimeline = r.backTimeline()
	l := rep.ReconnectMs
	rep.P50, rep.P90, rep.P99, rep.P999, rep.Max = l.P50, l.P90, l.P99, l.P999, l.Max
	if n := r.participants.Load(); n > 0 && rep.Back == n {
		ms := float64(r.lastBack.Sub(r.dropAt).Microseconds()) / 1000
		rep.TimeToAllBackMs = &ms
	}

	sc := StormClients{
		Requested:        int64(r.cfg.Conns),
		Attempted:        r.attempted.Load(),
		Connected:        r.connected.Load(),
		Failed:           r.failed.Load(),
		FailedByCause:    r.failures,
		ClosedBeforeDrop: r.closesBefore,
		ClosedAfterBack:  r.closesAfter,
		ClosedClean:      r.clean.Load(),
		ClosedUnclean:    r.unclean.Load(),
	}
	sc.NotAttempted = sc.Requested - sc.Attempted
	if sc.Connected > 0 {
		sc.RampS = r.lastConnected.Sub(r.firstDial).Seconds()
	}
	rep.Clients = sc
	if r.cfg.Conns > 0 {
		rep.FailRatio = float64(int64(r.cfg.Conns)-rep.Back) / float64(r.cfg.Conns)
	}
	if rep.Published == 0 && sc.Connected > 0 {
		rep.Warnings = append(rep.Warnings, "no message was acknowledged: loss cannot be measured")
	}
	if !r.cfg.NoSince && rep.Duplicates > 0 {
		rep.Warnings = append(rep.Warnings, "duplicates after since recovery: the server replayed messages the client already had")
	}
}

// clientLoss counts the acknowledged messages of cl's topic (the bitmap
// acked, by publish counter) that cl never received, and how many of them
// have a seq inside its gap: above the last one it received before the drop
// and below the first new one after it (or anywhere above, when nothing new
// came after).
func (r *stormRun) clientLoss(cl *stormClient, acked []uint64) (lost, missed int64) {
	seqOf := r.seqOf[cl.topic]
	for w, word := range acked {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			word &^= 1 << b
			n := uint64(w*64+b) + 1
			if cl.got.has(n) {
				continue
			}
			lost++
			if n > uint64(len(seqOf)) {
				continue
			}
			s := seqOf[n-1]
			if s > cl.seqBefore && (cl.seqAfter == 0 || s < cl.seqAfter) {
				missed++
			}
		}
	}
	return lost, missed
}

// writeStormSummary prints a few human lines about rep.
func writeStormSummary(w io.Writer, rep *StormReport) {
	c, s := rep.Config, rep.Clients
	since := "with since"
	if !c.Since {
		since = "without since"
	}
	fmt.Fprintf(w, "storm: %d/%d clients connected to %s on %d topic(s); failed %d (%s); drop %s (%.1f ms), reconnect %s %s\n",
		s.Connected, c.Conns, c.URL, c.Topics, s.Failed, counts(s.FailedByCause), c.Drop, rep.DropS*1000, c.Reconnect, since)
	allBack := "not all back"
	if rep.TimeToAllBackMs != nil {
		allBack = fmt.Sprintf("all back in %.1f ms", *rep.TimeToAllBackMs)
	}
	fmt.Fprintf(w, "back %d/%d (%s); not back %d (%s)\n", rep.Back, s.Connected, allBack, rep.NotBack, counts(rep.NotBackCause))
	fmt.Fprintf(w, "reconnect ms: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n", rep.P50, rep.P90, rep.P99, rep.P999, rep.Max)
	fmt.Fprintf(w, "attempts %d (max %d per client); refused %d (%s); recovery_incomplete %d\n",
		rep.Attempts, rep.AttemptsMax, rep.Refused, counts(rep.RefusedByCause), rep.RecoveryIncomplete)
	fmt.Fprintf(w, "published %d at %.0f/s over %.1fs; errors %d (%s)\n",
		rep.Published, c.Rate, rep.PublishS, rep.PublishErrors, counts(rep.PublishErrorsByCause))
	fmt.Fprintf(w, "delivered %d of %d expected: lost %d (missed in gaps %d on %d clients, outside gaps %d), not back %d; duplicates %d, reordered %d\n",
		rep.Delivered, rep.Expected, rep.Lost, rep.Missed, rep.ClientsWithMissed, rep.LostOutsideGap, rep.LostNotBack, rep.Duplicates, rep.Reordered)
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

// StormBackPoint is one point of StormReport.BackTimeline.
type StormBackPoint struct {
	TMs  float64 `json:"t_ms"` // since the drop began
	Back int64   `json:"back"` // clients back by then
}

// backTimelineStep is the spacing of StormReport.BackTimeline.
const backTimelineStep = 50 * time.Millisecond

// backTimeline counts, every backTimelineStep from the drop, how many
// clients were back, up to the last one back (at most 2,000 points).
func (r *stormRun) backTimeline() []StormBackPoint {
	if r.dropAt.IsZero() {
		return []StormBackPoint{}
	}
	var backs []time.Duration
	for _, cl := range r.clients {
		if cl != nil && cl.isBack.Load() {
			backs = append(backs, cl.backAt.Sub(r.dropAt))
		}
	}
	slices.Sort(backs)
	step := backTimelineStep
	if len(backs) > 0 {
		step = max(step, backs[len(backs)-1]/2000)
	}
	pts := []StormBackPoint{{TMs: 0}}
	i := 0
	for t := step; ; t += step {
		for i < len(backs) && backs[i] <= t {
			i++
		}
		pts = append(pts, StormBackPoint{TMs: float64(t.Microseconds()) / 1000, Back: int64(i)})
		if i == len(backs) {
			return pts
		}
	}
}
