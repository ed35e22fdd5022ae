package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Multi-process fanout run. The parent is the only publisher; the children
// only subscribe. Phases, parent ↔ children:
//
//  1. The parent reads the server's stats and starts the children with the
//     run id; each connects its subscribers (subscriber g, run-wide, on
//     topic g mod Topics) and sends "connected".
//  2. The parent reads the stats once the server counts every subscription,
//     connects its publisher, picks the schedule's start a little ahead and
//     sends "publish" with the time from which latency is measured; each
//     child answers "ready" before the first message is sent, so that no
//     delivery is judged against an unknown measuring start.
//  3. The parent publishes. Every second each child sends the unique
//     deliveries and the latency histogram (HDR-encoded) of the interval;
//     the parent adds them to its own latency shards, so its live line,
//     timeline and final percentiles are those of one histogram fed every
//     delivery of every child (exact, not averaged).
//  4. When the publisher has its last answers the parent sends "drain" with
//     the set of acknowledged publish counters of every topic (1…upto minus
//     the failed ones). Each child then knows exactly what each of its
//     subscribers should have, waits for it (or Drain), and sends
//     "drained"; lost stays exact per subscriber: acknowledged messages of
//     its topic it never received.
//  5. The parent reads the stats after, sends "close"; each child closes its
//     subscribers and sends its report; the parent sums the counts.
//
// Generator memory and CPU are the parent's (publisher) plus the children's.

// fanoutChildProgress is a fanout child's "progress" message.
type fanoutChildProgress struct {
	// Cumulative counts.
	Attempted    int64 `json:"attempted"`
	Connected    int64 `json:"connected"`
	Failed       int64 `json:"failed"`
	ServerClosed int64 `json:"server_closed"`
	Anomalies    int64 `json:"anomalies"`
	// Delivered counts unique deliveries since the previous message; Hist
	// is the latency (µs) of the measured ones among them, HDR-encoded.
	Delivered int64  `json:"delivered"`
	Hist      string `json:"hist,omitempty"`
}

// childDrained is a fanout child's "drained" message.
type childDrained struct {
	Drained bool `json:"drained"` // every open subscriber had every acknowledged message
}

// fanoutChildReport is a fanout child's "report" message.
type fanoutChildReport struct {
	Report *FanoutReport `json:"report"`
	// CPUS is the child's CPU time over publishing and drain.
	CPUS          *float64 `json:"cpu_s"`
	FirstDial     int64    `json:"first_dial_ns"`
	LastConnected int64    `json:"last_connected_ns"` // 0: none connected
}

// publishLead is how far ahead of now the parent schedules the first
// publish, so that the children's "ready" usually comes before it.
const publishLead = 100 * time.Millisecond

// runFanout runs the fanout scenario in this process or, when procs (0:
// automatic from the open-file limit) resolves to more than one, with the
// subscribers spread over that many child processes. args are the
// scenario's command-line flags, which the children get too; stderr
// receives their logs.
func runFanout(ctx context.Context, cfg FanoutConfig, procs int, args []string, stderr io.Writer, log *slog.Logger) (*FanoutReport, error) {
	subs := cfg.Subs
	if subs == 0 {
		subs = defaultFanoutSubs
	}
	n, err := resolveProcs(procs, subs)
	if err != nil {
		return nil, err
	}
	if n <= 1 {
		return Fanout(ctx, cfg, log)
	}
	return fanoutProcs(ctx, cfg, n, args, stderr, log)
}

// fanoutProcs is Fanout with the subscribers spread over n child processes.
func fanoutProcs(ctx context.Context, cfg FanoutConfig, n int, args []string, stderr io.Writer, log *slog.Logger) (*FanoutReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if err := validateShard(cfg, (cfg.Subs+n-1)/n); err != nil {
		return nil, err
	}
	if cfg.Topics > cfg.Subs {
		return nil, fmt.Errorf("loadtest: fanout: %d topics for %d subscribers: some topics would have no subscriber", cfg.Topics, cfg.Subs)
	}
	wsTarget, stats, metrics, err := fanoutEndpoints(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer stats.close()
	defer metrics.close()
	r, err := newFanoutRun(cfg, wsTarget, stats, metrics, log)
	if err != nil {
		return nil, err
	}
	return r.runParent(ctx, shards(n, cfg.Subs, cfg.ConnectRate, cfg.SourceIPs, r.runID), args, stderr)
}

// validateShard checks cfg as a process holding subs of its subscribers
// runs it: the open-file limit is per process, and a shard may hold fewer
// subscribers than there are topics.
func validateShard(cfg FanoutConfig, subs int) error {
	cfg.Subs = subs
	cfg.Topics = min(cfg.Topics, subs)
	return cfg.validate()
}

// runParent drives the children of a multi-process fanout run, publishes,
// and merges their reports.
func (r *fanoutRun) runParent(ctx context.Context, sh []shard, args []string, stderr io.Writer) (*FanoutReport, error) {
	r.start = time.Now()
	r.lastTick = r.start
	rep := &FanoutReport{Scenario: "fanout", StartedAt: r.start, Config: r.reportConfig()}
	rep.Config.Procs = len(sh)

	var pmu sync.Mutex
	latest := make([]fanoutChildProgress, len(sh))
	onProgress := func(i int, data json.RawMessage) {
		var p fanoutChildProgress
		if json.Unmarshal(data, &p) != nil {
			return
		}
		if p.Delivered > 0 || p.Hist != "" {
			s := &r.shards[i%len(r.shards)]
			s.mu.Lock()
			err := mergeEncoded(s.cur, p.Hist)
			s.delivered += p.Delivered
			s.mu.Unlock()
			if err != nil {
				r.log.Warn("procs: child progress", "child", i, "err", err)
			}
		}
		pmu.Lock()
		defer pmu.Unlock()
		latest[i] = p
		var sum fanoutChildProgress
		for _, q := range latest {
			sum.Attempted += q.Attempted
			sum.Connected += q.Connected
			sum.Failed += q.Failed
			sum.ServerClosed += q.ServerClosed
			sum.Anomalies += q.Anomalies
		}
		r.attempted.Store(sum.Attempted)
		r.connected.Store(sum.Connected)
		r.failed.Store(sum.Failed)
		r.serverClosed.Store(sum.ServerClosed)
		r.anomalies.Store(sum.Anomalies)
	}
	samplerDone := r.startSampler()

	parentGen := struct{ before, afterConnect, after *GeneratorStats }{before: generatorStats(r.elapsed())}
	if r.stats != nil {
		rep.Server.Before = r.stats.fetch(ctx, r.elapsed())
	}
	r.log.Info("fanout: connecting subscribers", "url", r.cfg.URL, "subs", r.cfg.Subs, "topics", r.cfg.Topics,
		"rate", r.cfg.ConnectRate, "procs", len(sh))
	g, err := startProcs("fanout", args, sh, stderr, r.log, onProgress)
	if err != nil {
		samplerDone()
		return nil, err
	}
	runErr := r.parentPhases(ctx, g, rep, &parentGen.afterConnect)
	parentGen.after = generatorStats(r.elapsed())
	if runErr != nil {
		g.stop(r.cfg.CloseWait + childGrace)
	} else {
		g.finish(r.cfg.CloseWait + childGrace)
	}
	if parentGen.afterConnect == nil {
		parentGen.afterConnect = parentGen.after
	}
	// Every child has exited: its last latency shares are in the shards.
	x, mergeErr := r.absorb(rep, g.received("report"), []*GeneratorStats{parentGen.before, parentGen.afterConnect, parentGen.after})
	samplerDone()

	rep.Interrupted = ctx.Err() != nil || runErr != nil
	r.fill(rep)
	x.addTo(rep)
	if runErr == nil {
		runErr = mergeErr
	}
	if runErr == nil {
		runErr = ctx.Err()
	}
	if runErr != nil {
		rep.Warnings = append(rep.Warnings, runErr.Error())
	}
	return rep, runErr
}

// parentPhases connects (children), publishes, drains and closes. An error
// means a child failed, a phase timed out or ctx ended. afterConnect
// receives the parent's own memory once the subscribers are connected.
func (r *fanoutRun) parentPhases(ctx context.Context, g *procGroup, rep *FanoutReport, afterConnect **GeneratorStats) error {
	bg := context.WithoutCancel(ctx)
	msgs, err := g.await(ctx, "connected", r.cfg.ConnectPhaseMax+childStartMax)
	if err != nil {
		return err
	}
	*afterConnect = generatorStats(r.elapsed())
	var open int64
	for _, m := range msgs {
		var c childConnected
		if err := json.Unmarshal(m, &c); err != nil {
			return fmt.Errorf("loadtest: procs: bad connected message: %w", err)
		}
		open += c.Open
	}
	if r.stats != nil {
		rep.Server.AfterConnect = r.settledStats(ctx, rep.Server.Before, open)
	}
	if open > 0 {
		pub, err := r.newPublisher(ctx)
		if err != nil {
			r.log.Error("fanout: cannot publish", "err", err)
			rep.Warnings = append(rep.Warnings, "publisher: "+err.Error())
		} else if err := r.parentPublish(ctx, g, rep, pub); err != nil {
			return err
		}
	}
	if r.stats != nil {
		rep.Server.After = r.stats.fetch(bg, r.elapsed())
	}
	r.phase.Store(fphaseClose)
	r.log.Info("fanout: closing", "connected", r.connected.Load())
	g.send(childCmd{Cmd: "close"})
	_, err = g.await(ctx, "report", r.cfg.CloseWait+childGrace)
	return err
}

// parentPublish runs the publish and drain phases with the children.
func (r *fanoutRun) parentPublish(ctx context.Context, g *procGroup, rep *FanoutReport, pub publisher) error {
	cpuBefore := r.cpuSample(ctx)
	begin := time.Now().Add(publishLead)
	g.send(childCmd{Cmd: "publish", MeasureStart: begin.Add(r.cfg.Warmup).UnixNano()})
	if _, err := g.await(ctx, "ready", childStartMax); err != nil {
		pub.finish()
		return err
	}
	r.publishPhaseAt(ctx, pub, begin)
	r.phase.Store(fphaseDrain)
	pub.finish()
	g.send(childCmd{Cmd: "drain", Acked: r.pub.ackedSpec()})
	msgs, err := g.await(ctx, "drained", r.cfg.Drain+childStartMax)
	r.drainEnd = time.Now()
	if err != nil {
		return err
	}
	r.drained = true
	for _, m := range msgs {
		var d childDrained
		if json.Unmarshal(m, &d) != nil || !d.Drained {
			r.drained = false
		}
	}
	r.sample() // the timeline ends with the drain
	rep.cpu = r.cpuUsage(context.WithoutCancel(ctx), cpuBefore)
	return nil
}

// fanoutSums are the per-subscriber figures of the children's reports,
// added to the report after fill.
type fanoutSums struct {
	expected, delivered, lost, dups, reordered, seqGaps       int64
	foreign, malformed, other, compressed, withLoss, lostOnCl int64
}

func (x fanoutSums) addTo(rep *FanoutReport) {
	rep.Expected += x.expected
	rep.Delivered += x.delivered
	rep.Lost += x.lost
	rep.Duplicates += x.dups
	rep.Reordered += x.reordered
	rep.SeqGaps += x.seqGaps
	rep.Foreign += x.foreign
	rep.Malformed += x.malformed
	rep.OtherFrames += x.other
	rep.Compressed += x.compressed
	rep.SubscribersWithLoss += x.withLoss
	rep.LostOnClosed += x.lostOnCl
	if u := rep.cpu; u != nil && rep.Delivered > 0 {
		rep.CPUUsPerDelivery = perDeliveryUS(u.ServerS, rep.Delivered)
		rep.Generator.CPUUsPerDelivery = perDeliveryUS(u.GeneratorS, rep.Delivered)
	}
}

// absorb adds the children's reports (nil: none came) to the run's state
// for fill, and returns their per-subscriber sums. parent holds the
// parent's own memory before, after connect and after.
func (r *fanoutRun) absorb(rep *FanoutReport, reports []json.RawMessage, parent []*GeneratorStats) (fanoutSums, error) {
	var x fanoutSums
	var attempted, connected, failed, deflated, serverClosed, clean, unclean int64
	gens := [3][]*GeneratorStats{{parent[0]}, {parent[1]}, {parent[2]}}
	var cpu float64
	cpuKnown := true
	var errs []error
	r.mu.Lock()
	defer r.mu.Unlock()
	r.firstDial, r.lastConnected = time.Time{}, time.Time{}
	for i, raw := range reports {
		if raw == nil {
			errs = append(errs, fmt.Errorf("loadtest: procs: no report from child %d", i))
			continue
		}
		var cr fanoutChildReport
		if err := json.Unmarshal(raw, &cr); err != nil || cr.Report == nil {
			errs = append(errs, fmt.Errorf("loadtest: procs: bad report from child %d: %v", i, err))
			continue
		}
		c, s := cr.Report, cr.Report.Subscribers
		attempted += s.Attempted
		connected += s.Connected
		failed += s.Failed
		deflated += s.Deflate
		clean += s.ClosedClean
		unclean += s.ClosedUnclean
		for _, v := range s.ClosedByServer {
			serverClosed += v
		}
		addCounts(r.failures, s.FailedByCause)
		addCounts(r.closes, s.ClosedByServer)
		x.expected += c.Expected
		x.delivered += c.Delivered
		x.lost += c.Lost
		x.dups += c.Duplicates
		x.reordered += c.Reordered
		x.seqGaps += c.SeqGaps
		x.foreign += c.Foreign
		x.malformed += c.Malformed
		x.other += c.OtherFrames
		x.compressed += c.Compressed
		x.withLoss += c.SubscribersWithLoss
		x.lostOnCl += c.LostOnClosed
		gens[0] = append(gens[0], c.Generator.Before)
		gens[1] = append(gens[1], c.Generator.AfterConnect)
		gens[2] = append(gens[2], c.Generator.After)
		if cr.CPUS == nil {
			cpuKnown = false
		} else {
			cpu += *cr.CPUS
		}
		if fd := time.Unix(0, cr.FirstDial); cr.FirstDial != 0 && (r.firstDial.IsZero() || fd.Before(r.firstDial)) {
			r.firstDial = fd
		}
		if lc := time.Unix(0, cr.LastConnected); cr.LastConnected != 0 && lc.After(r.lastConnected) {
			r.lastConnected = lc
		}
	}
	r.attempted.Store(attempted)
	r.connected.Store(connected)
	r.failed.Store(failed)
	r.deflated.Store(deflated)
	r.serverClosed.Store(serverClosed)
	r.clean.Store(clean)
	r.unclean.Store(unclean)
	rep.Generator.Before = sumGenerator(gens[0])
	rep.Generator.AfterConnect = sumGenerator(gens[1])
	rep.Generator.After = sumGenerator(gens[2])
	if u := rep.cpu; u != nil && u.GeneratorS != nil {
		if cpuKnown {
			v := *u.GeneratorS + cpu
			u.GeneratorS = &v
		} else {
			u.GeneratorS = nil
		}
	}
	return x, joinErrs(errs...)
}

// ackedSpec returns the acknowledged publish counters of every topic.
func (t *pubTracker) ackedSpec() []ackedTopic {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ackedTopic, len(t.acked))
	for i, b := range t.acked {
		for w := len(b) - 1; w >= 0; w-- {
			if b[w] != 0 {
				out[i].Upto = uint64(w*64 + 64 - bits.LeadingZeros64(b[w]))
				break
			}
		}
		for n := uint64(1); n < out[i].Upto; n++ {
			if b[(n-1)/64]&(1<<((n-1)%64)) == 0 {
				out[i].Missing = append(out[i].Missing, n)
			}
		}
	}
	return out
}

// setAcked makes acked (from the parent's ackedSpec) the acknowledged
// publishes, for a child's drain and loss accounting.
func (t *pubTracker) setAcked(acked []ackedTopic) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.acked {
		b := t.acked[i]
		clear(b)
		t.ackedCount[i] = 0
		if i >= len(acked) {
			continue
		}
		upto := min(acked[i].Upto, uint64(len(b))*64)
		for n := uint64(1); n <= upto; n++ {
			bitmapSet(b, n)
		}
		t.ackedCount[i] = int64(upto)
		for _, n := range acked[i].Missing {
			if n >= 1 && n <= upto && b[(n-1)/64]&(1<<((n-1)%64)) != 0 {
				b[(n-1)/64] &^= 1 << ((n - 1) % 64)
				t.ackedCount[i]--
			}
		}
	}
}

// fanoutChild runs this process as one child of a multi-process fanout run:
// cfg is the run's config from the flags, the shard comes from
// SURGE_LOAD_SHARD. It returns the process exit code: 0 once its report is
// written.
func fanoutChild(cfg FanoutConfig, stdout, stderr io.Writer) int {
	sh, _, err := childShard()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	log := childLogger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := newChildIO(os.Stdin, stdout, cancel)

	cfg.Subs, cfg.ConnectRate, cfg.SourceIPs = sh.Count, sh.Rate, sh.SourceIPs
	cfg.StatsURL, cfg.MetricsURL, cfg.Progress = "-", "-", nil
	cfg = cfg.withDefaults()
	if err := validateShard(cfg, cfg.Subs); err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	wsTarget, _, _, err := fanoutEndpoints(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	r, err := newFanoutRun(cfg, wsTarget, nil, nil, log)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFail
	}
	r.runID, r.first = sh.RunID, sh.First
	if err := ch.send("report", r.runChild(ctx, ch)); err != nil {
		fmt.Fprintf(stderr, "surge load fanout: child %d: %v\n", sh.Index, err)
		return exitFail
	}
	return exitOK
}

// runChild is run for a child: connect the subscribers, then follow the
// parent's commands (publish, drain, close; ctx ending means close), and
// return the report.
func (r *fanoutRun) runChild(ctx context.Context, ch *childIO) *fanoutChildReport {
	r.start = time.Now()
	rep := &FanoutReport{Scenario: "fanout", StartedAt: r.start, Config: r.reportConfig()}
	progressDone := r.childProgress(ch)
	rep.Generator.Before = generatorStats(r.elapsed())
	r.connectPhase(ctx)
	rep.Generator.AfterConnect = generatorStats(r.elapsed())
	_ = ch.send("connected", childConnected{Open: r.open.Load()})

	cr := &fanoutChildReport{Report: rep}
	cmd := ch.next(ctx)
	if cmd.Cmd == "publish" {
		r.measureStart.Store(cmd.MeasureStart)
		r.phase.Store(fphasePublish)
		cpu0, ok0 := processCPU()
		_ = ch.send("ready", struct{}{})
		if cmd = ch.next(ctx); cmd.Cmd == "drain" {
			r.pub.setAcked(cmd.Acked)
			r.phase.Store(fphaseDrain)
			r.drained = r.waitDelivered()
			if cpu1, ok1 := processCPU(); ok0 && ok1 {
				v := (cpu1 - cpu0).Seconds()
				cr.CPUS = &v
			}
			rep.Generator.After = generatorStats(r.elapsed())
			_ = ch.send("drained", childDrained{Drained: r.drained})
			ch.next(ctx) // "close"
		}
	}
	if rep.Generator.After == nil {
		rep.Generator.After = generatorStats(r.elapsed())
	}
	r.phase.Store(fphaseClose)
	r.closeAll()
	r.phase.Store(fphaseDone)
	progressDone()
	rep.Interrupted = ctx.Err() != nil
	r.fill(rep)
	r.mu.Lock()
	cr.FirstDial = r.firstDial.UnixNano()
	if !r.lastConnected.IsZero() {
		cr.LastConnected = r.lastConnected.UnixNano()
	}
	r.mu.Unlock()
	return cr
}

// waitDelivered waits until every open subscriber has every acknowledged
// message of its topic (true) or Drain has passed (false).
func (r *fanoutRun) waitDelivered() bool {
	deadline := time.Now().Add(r.cfg.Drain)
	tk := time.NewTicker(drainPollEvery)
	defer tk.Stop()
	for {
		if r.allDelivered() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		<-tk.C
	}
}

// childProgress sends a "progress" message about once a second, with the
// deliveries and latencies the shards collected since the previous one,
// until the returned stop function is called; stop sends the last one.
func (r *fanoutRun) childProgress(ch *childIO) (stop func()) {
	delta := hdrhistogram.New(1, maxLatencyUS, 3)
	flush := func() {
		delta.Reset()
		var delivered int64
		for i := range r.shards {
			s := &r.shards[i]
			s.mu.Lock()
			delta.Merge(s.cur)
			s.cur.Reset()
			delivered += s.delivered
			s.delivered = 0
			s.mu.Unlock()
		}
		p := fanoutChildProgress{
			Attempted:    r.attempted.Load(),
			Connected:    r.connected.Load(),
			Failed:       r.failed.Load(),
			ServerClosed: r.serverClosed.Load(),
			Anomalies:    r.anomalies.Load(),
			Delivered:    delivered,
		}
		var err error
		if p.Hist, err = encodeHist(delta); err != nil {
			r.log.Error("fanout: child cannot encode its latencies", "err", err)
		}
		_ = ch.send("progress", p)
	}
	quit := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				flush()
				return
			case <-tk.C:
				flush()
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
	}
}
