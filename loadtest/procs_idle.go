package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Multi-process idle run. Phases, parent ↔ children:
//
//  1. The parent reads the server's stats (before) and starts the children;
//     each connects its shard at its share of the rate and sends
//     "connected" with how many are open.
//  2. Once every child is connected the parent reads the stats (after
//     connect, settled on the sum), holds for Hold, reads them again (after
//     hold) and sends "close".
//  3. Each child closes its connections and sends its report with its
//     connect-latency histogram; the parent sums the counts, merges the
//     histograms (exact percentiles) and computes the derived figures as a
//     single process would.
//
// The generator's memory is the sum over the children (the parent holds no
// connection).

// childConnected is a child's "connected" message.
type childConnected struct {
	Open int64 `json:"open"` // connections open at the end of its connect phase
}

// idleChildReport is an idle child's "report" message.
type idleChildReport struct {
	Report *IdleReport `json:"report"`
	// Hist is the connect-latency histogram (µs), HDR-encoded.
	Hist string `json:"hist"`
	// FirstDial and LastConnected are Unix ns; LastConnected is 0 when no
	// connection succeeded.
	FirstDial     int64 `json:"first_dial_ns"`
	LastConnected int64 `json:"last_connected_ns"`
}

// runIdle runs the idle scenario in this process or, when procs (0:
// automatic from the open-file limit) resolves to more than one, over that
// many child processes. args are the scenario's command-line flags, which
// the children get too; stderr receives their logs.
func runIdle(ctx context.Context, cfg IdleConfig, procs int, args []string, stderr io.Writer, log *slog.Logger) (*IdleReport, error) {
	conns := cfg.Conns
	if conns == 0 {
		conns = defaultIdleConns
	}
	n, err := resolveProcs(procs, conns)
	if err != nil {
		return nil, err
	}
	if n <= 1 {
		return Idle(ctx, cfg, log)
	}
	return idleProcs(ctx, cfg, n, args, stderr, log)
}

// idleProcs is Idle spread over n child processes.
func idleProcs(ctx context.Context, cfg IdleConfig, n int, args []string, stderr io.Writer, log *slog.Logger) (*IdleReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	sh := shards(n, cfg.Conns, cfg.Rate, cfg.SourceIPs, "")
	// The open-file limit is per process: check the config as the biggest
	// child will run it.
	vc := cfg
	vc.Conns = sh[0].Count
	if err := vc.validate(); err != nil {
		return nil, err
	}
	wsTarget, stats, err := idleEndpoints(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer stats.close()
	r := newIdleRun(cfg, wsTarget, stats, log)
	return r.runParent(ctx, sh, args, stderr)
}

// runParent drives the children of a multi-process idle run and merges
// their reports.
func (r *idleRun) runParent(ctx context.Context, sh []shard, args []string, stderr io.Writer) (*IdleReport, error) {
	r.start = time.Now()
	rep := &IdleReport{Scenario: "idle", StartedAt: r.start, Config: r.reportConfig()}
	rep.Config.Procs = len(sh)

	// The live view sums the children's latest progress.
	var pmu sync.Mutex
	latest := make([]IdleProgress, len(sh))
	onProgress := func(i int, data json.RawMessage) {
		var p IdleProgress
		if json.Unmarshal(data, &p) != nil {
			return
		}
		pmu.Lock()
		defer pmu.Unlock()
		latest[i] = p
		var s IdleProgress
		for _, q := range latest {
			s.Attempted += q.Attempted
			s.Connected += q.Connected
			s.Failed += q.Failed
			s.Open += q.Open
			s.Lost += q.Lost
		}
		r.attempted.Store(s.Attempted)
		r.connected.Store(s.Connected)
		r.failed.Store(s.Failed)
		r.open.Store(s.Open)
		r.lost.Store(s.Lost)
	}
	progressDone := r.startProgress()

	if r.stats != nil {
		rep.Server.Before = r.stats.fetch(ctx, r.elapsed())
	}
	r.log.Info("idle: connecting", "url", r.cfg.URL, "conns", r.cfg.Conns, "rate", r.cfg.Rate, "procs", len(sh))
	g, err := startProcs("idle", args, sh, stderr, r.log, onProgress)
	if err != nil {
		r.phase.Store(phaseDone)
		progressDone()
		return nil, err
	}
	runErr := r.parentPhases(ctx, g, rep)
	if runErr != nil {
		g.stop(r.cfg.CloseWait + childGrace)
	} else {
		g.finish(r.cfg.CloseWait + childGrace)
	}
	// Every child has exited: no progress message overwrites the final
	// counts, which the last progress line shows.
	mergeErr := r.absorb(rep, g.received("report"))
	r.phase.Store(phaseDone)
	progressDone()

	r.fill(rep)
	rep.Interrupted = ctx.Err() != nil || runErr != nil
	if runErr == nil {
		runErr = mergeErr
	}
	if runErr == nil {
		runErr = ctx.Err()
	}
	return rep, runErr
}

// parentPhases runs the connect, hold and close phases; an error means a
// child failed, a phase timed out or ctx ended.
func (r *idleRun) parentPhases(ctx context.Context, g *procGroup, rep *IdleReport) error {
	msgs, err := g.await(ctx, "connected", r.cfg.ConnectPhaseMax+childStartMax)
	if err != nil {
		return err
	}
	var open int64
	for _, m := range msgs {
		var c childConnected
		if err := json.Unmarshal(m, &c); err != nil {
			return fmt.Errorf("loadtest: procs: bad connected message: %w", err)
		}
		open += c.Open
	}
	if r.stats != nil {
		rep.Server.AfterConnect = r.settledStats(ctx, open)
	}
	r.phase.Store(phaseHold)
	if r.cfg.Hold > 0 {
		r.log.Info("idle: holding", "open", open, "hold", r.cfg.Hold)
		t := time.NewTimer(r.cfg.Hold)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.failed:
			return g.err()
		case <-t.C:
		}
	}
	if r.stats != nil {
		rep.Server.AfterHold = r.stats.fetch(ctx, r.elapsed())
	}
	r.phase.Store(phaseClose)
	r.log.Info("idle: closing", "open", r.open.Load())
	g.send(childCmd{Cmd: "close"})
	_, err = g.await(ctx, "report", r.cfg.CloseWait+childGrace)
	return err
}

// absorb adds the children's reports (nil: none came) to the run's state,
// for fill.
func (r *idleRun) absorb(rep *IdleReport, reports []json.RawMessage) error {
	var attempted, connected, failed, lost, pings, msgs, bytes, clean, unclean int64
	var before, afterConnect []*GeneratorStats
	var errs []error
	r.mu.Lock()
	defer r.mu.Unlock()
	rep.OpenAfterConnect, rep.OpenAfterHold = 0, 0
	r.firstDial, r.lastConnected = time.Time{}, time.Time{}
	for i, raw := range reports {
		if raw == nil {
			errs = append(errs, fmt.Errorf("loadtest: procs: no report from child %d", i))
			continue
		}
		var cr idleChildReport
		if err := json.Unmarshal(raw, &cr); err != nil || cr.Report == nil {
			errs = append(errs, fmt.Errorf("loadtest: procs: bad report from child %d: %v", i, err))
			continue
		}
		c := cr.Report
		attempted += c.Attempted
		connected += c.Connected
		failed += c.Failed
		lost += c.Lost
		pings += c.PingsAnswered
		msgs += c.MessagesReceived
		bytes += c.BytesReceived
		clean += c.ClosedClean
		unclean += c.ClosedUnclean
		rep.OpenAfterConnect += c.OpenAfterConnect
		rep.OpenAfterHold += c.OpenAfterHold
		addCounts(r.failures, c.FailedByCause)
		addCounts(r.closes[phaseConnect], c.ClosesDuringConnect)
		addCounts(r.closes[phaseHold], c.ClosesDuringHold)
		before = append(before, c.Generator.Before)
		afterConnect = append(afterConnect, c.Generator.AfterConnect)
		if err := mergeEncoded(r.hist, cr.Hist); err != nil {
			errs = append(errs, err)
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
	r.lost.Store(lost)
	r.pings.Store(pings)
	r.msgs.Store(msgs)
	r.msgBytes.Store(bytes)
	r.clean.Store(clean)
	r.unclean.Store(unclean)
	r.open.Store(0)
	rep.Generator.Before = sumGenerator(before)
	rep.Generator.AfterConnect = sumGenerator(afterConnect)
	return joinErrs(errs...)
}

func addCounts(dst, src map[string]int64) {
	for k, v := range src {
		dst[k] += v
	}
}

// sumGenerator adds up the children's memory at one phase; nil when a
// child did not reach it. ElapsedS is the latest child's.
func sumGenerator(gs []*GeneratorStats) *GeneratorStats {
	if len(gs) == 0 {
		return nil
	}
	sum := &GeneratorStats{}
	var rss int64
	rssKnown := true
	for _, g := range gs {
		if g == nil {
			return nil
		}
		sum.ElapsedS = max(sum.ElapsedS, g.ElapsedS)
		sum.HeapInuseBytes += g.HeapInuseBytes
		sum.Goroutines += g.Goroutines
		if g.RSSBytes == nil {
			rssKnown = false
		} else {
			rss += *g.RSSBytes
		}
	}
	if rssKnown {
		sum.RSSBytes = &rss
	}
	return sum
}

// idleChild runs this process as one child of a multi-process idle run: cfg
// is the run's config from the flags, the shard comes from SURGE_LOAD_SHARD.
// It returns the process exit code: 0 once its report is written.
func idleChild(cfg IdleConfig, stdout, stderr io.Writer) int {
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

	cfg.Conns, cfg.Rate, cfg.SourceIPs, cfg.StatsURL = sh.Count, sh.Rate, sh.SourceIPs, "-"
	cfg.Progress = func(p IdleProgress) { _ = ch.send("progress", p) }
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	wsTarget, _, err := idleEndpoints(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	r := newIdleRun(cfg, wsTarget, nil, log)
	r.first = sh.First
	cr, err := r.runChild(ctx, ch)
	if err == nil {
		err = ch.send("report", cr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "surge load idle: child %d: %v\n", sh.Index, err)
		return exitFail
	}
	return exitOK
}

// runChild is run for a child: connect, report "connected", hold until the
// parent says "close" (or ctx ends), close, and return the report.
func (r *idleRun) runChild(ctx context.Context, ch *childIO) (*idleChildReport, error) {
	r.start = time.Now()
	rep := &IdleReport{Scenario: "idle", StartedAt: r.start, Config: r.reportConfig()}
	progressDone := r.startProgress()
	rep.Generator.Before = generatorStats(r.elapsed())
	r.connectPhase(ctx)
	rep.OpenAfterConnect = r.open.Load()
	rep.Generator.AfterConnect = generatorStats(r.elapsed())
	r.phase.Store(phaseHold)
	_ = ch.send("progress", r.progress()) // the parent's live line need not wait a second
	if err := ch.send("connected", childConnected{Open: rep.OpenAfterConnect}); err != nil {
		r.log.Error("idle: child cannot reach its parent", "err", err)
	}
	ch.next(ctx) // "close", or ctx ended
	rep.OpenAfterHold = r.open.Load()
	r.phase.Store(phaseClose)
	r.closeAll()
	r.phase.Store(phaseDone)
	progressDone()
	r.fill(rep)
	rep.Interrupted = ctx.Err() != nil

	r.mu.Lock()
	defer r.mu.Unlock()
	hist, err := encodeHist(r.hist)
	if err != nil {
		return nil, err
	}
	cr := &idleChildReport{Report: rep, Hist: hist, FirstDial: r.firstDial.UnixNano()}
	if !r.lastConnected.IsZero() {
		cr.LastConnected = r.lastConnected.UnixNano()
	}
	return cr, nil
}
