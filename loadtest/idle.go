package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
)

// IdleConfig configures the idle scenario. The zero value of every field but
// URL is valid and means the default given in its comment.
type IdleConfig struct {
	// URL is the WebSocket endpoint, ws://host:port/ws. Required; only the
	// ws scheme is supported. Its host must resolve to loopback addresses
	// only, unless AllowRemote is set.
	URL string

	// StatsURL is the server's stats endpoint (GET, JSON). Empty means
	// derived from URL: http://host:port/v1/stats. "-" disables stats.
	StatsURL string

	// Conns is how many connections to open. 0 means 1000.
	Conns int

	// Rate is how many new connections to start per second, paced evenly.
	// 0 means 2000.
	Rate float64

	// Topics is how many distinct topics the connections subscribe to at
	// connect time: connection i adds ?topic=<TopicPrefix><i mod Topics> to
	// URL. 0 means 100; negative means no topic at all.
	Topics int

	// TopicPrefix names the topics. "" means "idle.".
	TopicPrefix string

	// Hold is how long to keep every connection open after the connect phase
	// ends. 0 means 10s; negative means no hold.
	Hold time.Duration

	// SourceIPs are local addresses to connect from, used round-robin, to
	// spread connections over more than one ephemeral-port range (each
	// source address has ~28k ports per destination). Empty means the
	// kernel picks. They must be of the target's address family.
	SourceIPs []netip.Addr

	// ClientLoop is how the connections are read: "goroutine" (one
	// goroutine per connection) or "epoll" (a few event loops; Linux
	// only). "" means "epoll" on Linux, else "goroutine".
	ClientLoop string

	// ConnectTimeout bounds one connection's TCP connect plus WebSocket
	// upgrade. 0 means 10s.
	ConnectTimeout time.Duration

	// ConnectPhaseMax bounds the whole connect phase: pacing plus the last
	// handshakes. Connections not started by then are not attempted and
	// handshakes still under way are cancelled. 0 means twice the paced ramp
	// time (Conns/Rate) plus ConnectTimeout.
	ConnectPhaseMax time.Duration

	// CloseWait is how long to wait for the server to answer the final close
	// frames. 0 means 2s.
	CloseWait time.Duration

	// AllowRemote permits a target that is not a loopback address. Without
	// it such a target is refused with ErrNotLoopback before any packet is
	// sent.
	AllowRemote bool

	// Progress, when set, is called about once a second from a separate
	// goroutine while the run lasts, and once more at the end. It must not
	// block for long.
	Progress func(IdleProgress)
}

// IdleProgress is a live view of a running Idle scenario.
type IdleProgress struct {
	Phase     string // "connect", "hold", "close" or "done"
	Elapsed   time.Duration
	Attempted int64
	Connected int64 // completed handshakes so far
	Failed    int64
	Open      int64 // connections open now
	Lost      int64 // connections the server closed or dropped
	// Holding is how long the hold has lasted; 0 before it begins.
	Holding time.Duration
}

// Defaults for IdleConfig.
const (
	defaultIdleConns      = 1000
	defaultIdleRate       = 2000
	defaultIdleTopics     = 100
	defaultTopicPrefix    = "idle."
	defaultIdleHold       = 10 * time.Second
	defaultConnectTimeout = 10 * time.Second
	defaultCloseWait      = 2 * time.Second

	// statsSettleMax bounds how long the after-connect snapshot waits for
	// the server to count the last connections.
	statsSettleMax = 3 * time.Second
	// statsPollEvery is the poll interval while waiting for that.
	statsPollEvery = 50 * time.Millisecond
	// fdReserve is how many descriptors besides the connections the process
	// keeps for itself (stats, pollers, files).
	fdReserve = 64
)

// withDefaults returns cfg with its zero fields filled in.
func (cfg IdleConfig) withDefaults() IdleConfig {
	if cfg.Conns == 0 {
		cfg.Conns = defaultIdleConns
	}
	if cfg.Rate == 0 {
		cfg.Rate = defaultIdleRate
	}
	if cfg.Topics == 0 {
		cfg.Topics = defaultIdleTopics
	}
	if cfg.TopicPrefix == "" {
		cfg.TopicPrefix = defaultTopicPrefix
	}
	if cfg.Hold == 0 {
		cfg.Hold = defaultIdleHold
	}
	if cfg.Hold < 0 {
		cfg.Hold = 0
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.ConnectPhaseMax <= 0 && cfg.Rate > 0 {
		ramp := time.Duration(float64(cfg.Conns) / cfg.Rate * float64(time.Second))
		cfg.ConnectPhaseMax = 2*ramp + cfg.ConnectTimeout
	}
	if cfg.CloseWait <= 0 {
		cfg.CloseWait = defaultCloseWait
	}
	if cfg.ClientLoop == "" {
		cfg.ClientLoop = defaultClientLoop
	}
	return cfg
}

func (cfg IdleConfig) validate() error {
	switch {
	case cfg.URL == "":
		return errors.New("loadtest: idle: URL is required")
	case cfg.Conns < 0:
		return fmt.Errorf("loadtest: idle: Conns %d is negative", cfg.Conns)
	case cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0):
		return fmt.Errorf("loadtest: idle: Rate %v must be a positive number", cfg.Rate)
	}
	if _, err := resolveClientLoop(cfg.ClientLoop); err != nil {
		return fmt.Errorf("loadtest: idle: ClientLoop: %w", err)
	}
	if limit, ok := openFileLimit(); ok && uint64(cfg.Conns)+fdReserve > limit {
		return fmt.Errorf("loadtest: idle: %d connections need more than the %d open files this process may hold; split the load over several processes",
			cfg.Conns, limit)
	}
	return nil
}

// Idle runs the idle scenario: it opens cfg.Conns WebSocket connections at
// cfg.Rate, holds them open for cfg.Hold answering server pings, closes them
// with status 1000 and reports what it saw. It reads the server's stats
// before connecting, once all connections are up, and after the hold.
//
// A config error or a refused target returns (nil, error) before any packet
// is sent. When ctx ends the run early, Idle still closes every connection
// and returns the partial report together with ctx.Err(). log may be nil.
func Idle(ctx context.Context, cfg IdleConfig, log *slog.Logger) (*IdleReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	wsTarget, stats, err := idleEndpoints(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer stats.close()

	r := newIdleRun(cfg, wsTarget, stats, log)
	return r.run(ctx)
}

// idleEndpoints resolves and checks the WebSocket target and the stats
// endpoint (nil stats: disabled).
func idleEndpoints(ctx context.Context, cfg IdleConfig) (target, *statsClient, error) {
	var prefer netip.Addr
	if len(cfg.SourceIPs) > 0 {
		prefer = cfg.SourceIPs[0]
	}
	wsTarget, err := resolveTarget(ctx, cfg.URL, []string{"ws"}, cfg.AllowRemote, prefer)
	if err != nil {
		return target{}, nil, err
	}
	for _, src := range cfg.SourceIPs {
		if src.Unmap().Is4() != wsTarget.addr.Addr().Is4() {
			return target{}, nil, fmt.Errorf("loadtest: idle: source address %s is not of the target's family (%s)", src, wsTarget.addr.Addr())
		}
	}
	switch cfg.StatsURL {
	case "-":
		return wsTarget, nil, nil
	case "":
		u, _ := url.Parse(statsURLFor(wsTarget.url))
		return wsTarget, newStatsClient(target{url: u, addr: wsTarget.addr}), nil
	}
	t, err := resolveTarget(ctx, cfg.StatsURL, []string{"http"}, cfg.AllowRemote, wsTarget.addr.Addr())
	if err != nil {
		return target{}, nil, err
	}
	return wsTarget, newStatsClient(t), nil
}

// Phases of an idle run; closes are attributed to the phase they happen in.
const (
	phaseConnect int32 = iota
	phaseHold
	phaseClose
	phaseDone
)

var phaseNames = [...]string{"connect", "hold", "close", "done"}

// idleRun is the state of one Idle call.
type idleRun struct {
	cfg     IdleConfig
	target  target
	stats   *statsClient
	log     *slog.Logger
	dialers []ws.Dialer // one per source address (or one, kernel's choice)
	urlBase string      // cfg.URL with "?topic=" or "&topic=" appended; or cfg.URL
	// first is the run-wide index of connection 0 when this process holds
	// one shard of a multi-process run (topics stay i mod Topics overall).
	first int

	start     time.Time
	phase     atomic.Int32
	holdStart atomic.Int64 // Unix ns; 0 until the hold begins

	attempted, connected, failed atomic.Int64
	open, lost                   atomic.Int64
	pings, msgs, msgBytes        atomic.Int64
	clean, unclean               atomic.Int64

	dialWG sync.WaitGroup // dials under way
	readWG sync.WaitGroup // connections not yet ended (readers, or on loops)

	// loops read the connections in epoll mode (nil: goroutine mode); set
	// by connectPhase, stopped by closeAll.
	loops *eventLoops
	// loopOpts: idle connections count data frames and skip them, as
	// readFrame does.
	loopOpts loopOpts

	mu            sync.Mutex // guards the fields below
	hist          *hdrhistogram.Histogram
	failures      map[string]int64
	closes        [2]map[string]int64 // by phaseConnect, phaseHold
	conns         []*clientConn       // by index; nil when not open
	lastConnected time.Time
	firstDial     time.Time
	timeline      []IdleTimelinePoint
}

func newIdleRun(cfg IdleConfig, t target, stats *statsClient, log *slog.Logger) *idleRun {
	r := &idleRun{
		cfg:      cfg,
		target:   t,
		stats:    stats,
		log:      log,
		failures: map[string]int64{},
		closes:   [2]map[string]int64{{}, {}},
		conns:    make([]*clientConn, cfg.Conns),
		loopOpts: loopOpts{discard: true},
	}
	maxUS := (cfg.ConnectTimeout + cfg.ConnectPhaseMax).Microseconds() + 1
	r.hist = hdrhistogram.New(1, max(maxUS, 60_000_000), 3)

	r.urlBase = cfg.URL
	if cfg.Topics > 0 {
		sep := "?"
		if t.url.RawQuery != "" {
			sep = "&"
		}
		r.urlBase = cfg.URL + sep + "topic="
	}

	r.dialers = newDialers(t.addr, cfg.SourceIPs, cfg.ConnectTimeout)
	return r
}

func (r *idleRun) elapsed() time.Duration { return time.Since(r.start) }

func (r *idleRun) run(ctx context.Context) (*IdleReport, error) {
	r.start = time.Now()
	rep := &IdleReport{Scenario: "idle", StartedAt: r.start, Config: r.reportConfig()}

	progressDone := r.startProgress()

	rep.Generator.Before = generatorStats(r.elapsed())
	if r.stats != nil {
		rep.Server.Before = r.stats.fetch(ctx, r.elapsed())
	}

	r.log.Info("idle: connecting", "url", r.cfg.URL, "conns", r.cfg.Conns, "rate", r.cfg.Rate)
	r.connectPhase(ctx)
	rep.OpenAfterConnect = r.open.Load()
	rep.Generator.AfterConnect = generatorStats(r.elapsed())
	if r.stats != nil {
		rep.Server.AfterConnect = r.settledStats(ctx, rep.OpenAfterConnect)
	}

	r.phase.Store(phaseHold)
	if ctx.Err() == nil && r.cfg.Hold > 0 {
		r.holdStart.Store(time.Now().UnixNano())
		r.log.Info("idle: holding", "open", r.open.Load(), "hold", r.cfg.Hold)
		t := time.NewTimer(r.cfg.Hold)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	rep.OpenAfterHold = r.open.Load()
	if r.stats != nil && ctx.Err() == nil {
		rep.Server.AfterHold = r.stats.fetch(ctx, r.elapsed())
	}

	r.phase.Store(phaseClose)
	r.log.Info("idle: closing", "open", r.open.Load())
	r.closeAll()
	r.phase.Store(phaseDone)
	progressDone()

	r.fill(rep)
	rep.Interrupted = ctx.Err() != nil
	return rep, ctx.Err()
}

// connectPhase starts cfg.Conns connections paced at cfg.Rate and waits for
// every handshake to finish, all within cfg.ConnectPhaseMax.
func (r *idleRun) connectPhase(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectPhaseMax)
	defer cancel()
	if r.cfg.ClientLoop == ClientLoopEpoll {
		ls, err := newEventLoops(clientLoops(r.cfg.Conns))
		if err != nil {
			r.log.Warn("idle: no event loops; one goroutine per connection instead", "err", err)
		}
		r.loops = ls
	}
	begin := time.Now()
	r.mu.Lock()
	r.firstDial = begin
	r.mu.Unlock()
	pace(pctx, begin, r.cfg.Conns, r.cfg.Rate, func(i int) {
		r.attempted.Add(1)
		r.dialWG.Add(1)
		go r.connect(pctx, i)
	})
	r.dialWG.Wait()
}

// connect dials connection i and, on success, starts its reader.
func (r *idleRun) connect(ctx context.Context, i int) {
	d := &r.dialers[i%len(r.dialers)]
	u := r.urlBase
	if r.cfg.Topics > 0 {
		u += url.QueryEscape(r.cfg.TopicPrefix + strconv.Itoa((r.first+i)%r.cfg.Topics))
	}
	t0 := time.Now()
	nc, br, _, err := d.Dial(ctx, u)
	lat := time.Since(t0)
	if err != nil {
		cause := failureCause(err)
		r.failed.Add(1)
		r.mu.Lock()
		r.failures[cause]++
		r.mu.Unlock()
		r.log.Debug("idle: connect failed", "i", i, "cause", cause, "err", err)
		r.dialWG.Done()
		return
	}
	var c *clientConn
	var pending []byte
	if r.loops != nil {
		if c, pending, err = takeConn(nc, br); err != nil {
			cause := failureCause(err)
			r.failed.Add(1)
			r.mu.Lock()
			r.failures[cause]++
			r.mu.Unlock()
			r.log.Debug("idle: cannot move the socket to an event loop", "i", i, "cause", cause, "err", err)
			r.dialWG.Done()
			return
		}
	} else {
		c = newClientConn(nc, br)
	}
	r.connected.Add(1)
	r.open.Add(1)
	r.mu.Lock()
	_ = r.hist.RecordValue(max(lat.Microseconds(), 1))
	r.conns[i] = c
	r.lastConnected = time.Now()
	r.mu.Unlock()
	r.readWG.Add(1)
	if r.loops != nil {
		r.loops.add(i, c, &idleConn{r: r, i: i, c: c}, &r.loopOpts, false, pending)
		r.dialWG.Done()
		return
	}
	// The reader runs on a fresh goroutine: the dial grew this goroutine's
	// stack, and a reader that only ever blocks in Read fits a small one.
	go r.serve(i, c)
	r.dialWG.Done()
}

// idleConn is connection i of an idle run on an event loop (loopHandler):
// it does what serve does in goroutine mode.
type idleConn struct {
	r *idleRun
	i int
	c *clientConn
}

func (ic *idleConn) onMessage(_ message, n int64, _ time.Time) {
	ic.r.msgs.Add(1)
	ic.r.msgBytes.Add(n)
}

func (ic *idleConn) onPing() { ic.r.pings.Add(1) }

func (ic *idleConn) onEnd(code ws.StatusCode, err error) {
	r := ic.r
	switch {
	case err != nil && ic.c.closing.Load():
		r.unclean.Add(1)
	case err != nil:
		r.serverClosed(1006)
		r.log.Debug("idle: connection lost", "i", ic.i, "err", err)
	case ic.c.closing.Load():
		// The server's answer to our close (RFC 6455 §5.5.1).
		r.clean.Add(1)
	default:
		r.serverClosed(code)
	}
	r.open.Add(-1)
	r.mu.Lock()
	r.conns[ic.i] = nil
	r.mu.Unlock()
	r.readWG.Done()
}

// serve reads connection i until it ends.
func (r *idleRun) serve(i int, c *clientConn) {
	defer r.readWG.Done()
	defer func() {
		_ = c.nc.Close()
		r.open.Add(-1)
		r.mu.Lock()
		r.conns[i] = nil
		r.mu.Unlock()
	}()
	for {
		ev, n, code, err := c.readFrame()
		if err != nil {
			if c.closing.Load() {
				r.unclean.Add(1)
				return
			}
			if code == ws.StatusProtocolError {
				_ = c.writeClose(code)
			}
			r.serverClosed(1006)
			r.log.Debug("idle: connection lost", "i", i, "err", err)
			return
		}
		switch ev {
		case evPing:
			r.pings.Add(1)
		case evData:
			r.msgs.Add(1)
			r.msgBytes.Add(n)
		case evClose:
			if c.closing.Load() {
				// The server's answer to our close (RFC 6455 §5.5.1): the
				// handshake is complete.
				r.clean.Add(1)
				return
			}
			// Server-initiated close: echo its code, then drop the socket.
			_ = c.writeClose(code)
			r.serverClosed(code)
			return
		}
	}
}

// serverClosed counts a connection the server ended, under the current
// phase.
func (r *idleRun) serverClosed(code ws.StatusCode) {
	p := r.phase.Load()
	if p != phaseConnect && p != phaseHold {
		return
	}
	r.lost.Add(1)
	r.mu.Lock()
	r.closes[p][strconv.Itoa(int(code))]++
	r.mu.Unlock()
}

// settledStats reads the server's stats once it counts at least open
// connections, or after statsSettleMax.
func (r *idleRun) settledStats(ctx context.Context, open int64) *ServerStats {
	deadline := time.Now().Add(statsSettleMax)
	for {
		s := r.stats.fetch(ctx, r.elapsed())
		if s.Error != "" || s.Connections == nil || *s.Connections >= open ||
			ctx.Err() != nil || time.Now().After(deadline) {
			return s
		}
		t := time.NewTimer(statsPollEvery)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// closeAll starts the close handshake on every open connection (status
// 1000), gives the server CloseWait to answer, then drops what is left, and
// stops the event loops.
func (r *idleRun) closeAll() {
	r.mu.Lock()
	open := make([]*clientConn, 0, r.open.Load())
	for _, c := range r.conns {
		if c != nil {
			open = append(open, c)
		}
	}
	r.mu.Unlock()
	closeConns(open, r.cfg.CloseWait, &r.readWG)
	if r.loops != nil {
		r.loops.stop()
	}
}

// closeConns starts the close handshake on every connection in open
// (status 1000) and waits until readers (one count per connection not yet
// ended) is done. A goroutine-mode reader gives up CloseWait after the
// close frame (its read deadline) and counts the connection unclean; an
// event-loop connection is shut down at that time, with the same effect.
// A second later whatever is left is closed.
func closeConns(open []*clientConn, closeWait time.Duration, readers *sync.WaitGroup) {
	deadline := time.Now().Add(closeWait)
	loopConns := false
	for _, c := range open {
		c.closing.Store(true)
		if c.nc != nil {
			// The read deadline bounds the wait for the server's answer;
			// the reader then exits by itself.
			_ = c.nc.SetReadDeadline(deadline)
		} else {
			loopConns = true
		}
		_ = c.writeClose(ws.StatusNormalClosure)
	}
	done := make(chan struct{})
	go func() {
		readers.Wait()
		close(done)
	}()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-t.C:
			return false
		}
	}
	if loopConns {
		if wait(time.Until(deadline)) {
			return
		}
		for _, c := range open {
			if c.nc == nil {
				c.abort()
			}
		}
	}
	if wait(time.Until(deadline.Add(time.Second))) {
		return
	}
	// A reader still blocked past its deadline: force it out.
	for _, c := range open {
		c.abort()
	}
	<-done
}

// startProgress extends the timeline and calls cfg.Progress (when set) once
// a second until the returned stop function is called; stop does both once
// more and waits for the goroutine.
func (r *idleRun) startProgress() (stop func()) {
	tick := func() {
		p := r.progress()
		r.mu.Lock()
		r.timeline = append(r.timeline, IdleTimelinePoint{
			TS:        p.Elapsed.Seconds(),
			Phase:     p.Phase,
			Attempted: p.Attempted,
			Connected: p.Connected,
			Failed:    p.Failed,
			Open:      p.Open,
			Lost:      p.Lost,
		})
		r.mu.Unlock()
		if r.cfg.Progress != nil {
			r.cfg.Progress(p)
		}
	}
	r.timeline = append(r.timeline, IdleTimelinePoint{Phase: phaseNames[phaseConnect]})
	quit := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				tick()
				return
			case <-tk.C:
				tick()
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
	}
}

func (r *idleRun) progress() IdleProgress {
	var holding time.Duration
	if hs := r.holdStart.Load(); hs != 0 {
		holding = time.Since(time.Unix(0, hs))
	}
	return IdleProgress{
		Holding:   holding,
		Phase:     phaseNames[r.phase.Load()],
		Elapsed:   r.elapsed(),
		Attempted: r.attempted.Load(),
		Connected: r.connected.Load(),
		Failed:    r.failed.Load(),
		Open:      r.open.Load(),
		Lost:      r.lost.Load(),
	}
}

func (r *idleRun) reportConfig() IdleReportConfig {
	c := IdleReportConfig{
		URL:              r.cfg.URL,
		Conns:            r.cfg.Conns,
		Rate:             r.cfg.Rate,
		Topics:           max(r.cfg.Topics, 0),
		TopicPrefix:      r.cfg.TopicPrefix,
		HoldS:            r.cfg.Hold.Seconds(),
		ConnectTimeoutS:  r.cfg.ConnectTimeout.Seconds(),
		ConnectPhaseMaxS: r.cfg.ConnectPhaseMax.Seconds(),
		CloseWaitS:       r.cfg.CloseWait.Seconds(),
		SourceIPs:        []string{},
		AllowRemote:      r.cfg.AllowRemote,
		Procs:            1,
		ClientLoop:       r.cfg.ClientLoop,
	}
	if r.stats != nil {
		c.StatsURL = r.stats.url
	}
	for _, a := range r.cfg.SourceIPs {
		c.SourceIPs = append(c.SourceIPs, a.String())
	}
	return c
}

// fill copies the run's counters into rep. Every goroutine of the run has
// exited by now.
func (r *idleRun) fill(rep *IdleReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep.DurationS = r.elapsed().Seconds()
	rep.Attempted = r.attempted.Load()
	rep.Connected = r.connected.Load()
	rep.Failed = r.failed.Load()
	rep.FailedByCause = r.failures
	rep.NotAttempted = int64(r.cfg.Conns) - rep.Attempted
	rep.Lost = r.lost.Load()
	if r.cfg.Conns > 0 {
		rep.FailRatio = float64(int64(r.cfg.Conns)-rep.Connected+rep.Lost) / float64(r.cfg.Conns)
	}
	rep.ConnectLatencyMs = summarize(r.hist)
	rep.ConnectLatency = distribution(r.hist)
	rep.Timeline = append([]IdleTimelinePoint{}, r.timeline...)
	if rep.Connected > 0 {
		rep.RampS = r.lastConnected.Sub(r.firstDial).Seconds()
		if rep.RampS > 0 {
			rep.ConnectRate = float64(rep.Connected) / rep.RampS
		}
	}
	rep.ClosesDuringConnect = r.closes[phaseConnect]
	rep.ClosesDuringHold = r.closes[phaseHold]
	rep.PingsAnswered = r.pings.Load()
	rep.MessagesReceived = r.msgs.Load()
	rep.BytesReceived = r.msgBytes.Load()
	rep.ClosedClean = r.clean.Load()
	rep.ClosedUnclean = r.unclean.Load()

	if b, a := rep.Server.Before, rep.Server.AfterConnect; b != nil && a != nil {
		bpc := &BytesPerConn{
			RSS:       perConn(b.RSSBytes, a.RSSBytes, rep.OpenAfterConnect),
			HeapInuse: perConn(b.HeapInuseBytes, a.HeapInuseBytes, rep.OpenAfterConnect),
		}
		if bpc.RSS != nil || bpc.HeapInuse != nil {
			rep.ServerBytesPerConn = bpc
		}
	}
	if b, a := rep.Generator.Before, rep.Generator.AfterConnect; b != nil && a != nil && rep.OpenAfterConnect > 0 {
		rep.GeneratorBytesPerConn = &BytesPerConn{
			RSS:       perConn(b.RSSBytes, a.RSSBytes, rep.OpenAfterConnect),
			HeapInuse: perConn(&b.HeapInuseBytes, &a.HeapInuseBytes, rep.OpenAfterConnect),
		}
	}
}

// failureCause names why a dial failed, for IdleReport.FailedByCause.
func failureCause(err error) string {
	var status ws.StatusError
	var netErr net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return "no_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "fd_limit"
	case errors.As(err, &status), isHandshakeError(err):
		return "handshake"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "other"
}

func isHandshakeError(err error) bool {
	for _, e := range []error{
		ws.ErrHandshakeBadProtocol, ws.ErrHandshakeBadStatus, ws.ErrHandshakeBadUpgrade,
		ws.ErrHandshakeBadConnection, ws.ErrHandshakeBadSecAccept, ws.ErrHandshakeBadSubProtocol,
		ws.ErrHandshakeBadExtensions, ws.ErrMalformedResponse,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
