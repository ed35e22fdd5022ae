package loadtest

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// StormConfig configures the storm scenario: a reconnect storm. The zero
// value of every field but URL is valid and means the default given in its
// comment.
type StormConfig struct {
	// URL is the WebSocket endpoint, ws://host:port/ws. Required; its host
	// must resolve to loopback addresses only, unless AllowRemote is set.
	// Publishing goes to POST /v1/publish on the same host and port.
	URL string

	// StatsURL is the server's stats endpoint. Empty means
	// http://host:port/v1/stats; "-" disables stats.
	StatsURL string

	// Conns is how many clients connect, drop together and reconnect. 0
	// means 1000.
	Conns int

	// Topics is how many topics the clients are spread over: client i
	// subscribes to <TopicPrefix><i mod Topics>. 0 means 1.
	Topics int

	// TopicPrefix names the topics (letters, digits and . _ - : / @).
	// "" means "storm.".
	TopicPrefix string

	// Rate is messages published per second in total, round-robin over the
	// topics, over HTTP (POST /v1/publish) from just after the clients are
	// connected until the hold ends. 0 means 50.
	Rate float64

	// Size is the length in bytes of each message's data (the fanout probe).
	// 0 means 100.
	Size int

	// ConnectRate is how many clients start connecting per second in the
	// initial connect phase (reconnects are paced by Reconnect instead). 0
	// means 2000.
	ConnectRate float64

	// BeforeDrop is how long the publisher runs with every client
	// connected before the drop. 0 means 1s.
	BeforeDrop time.Duration

	// Drop is how every client leaves at the drop: "abrupt" (the TCP
	// connection is closed without a close frame) or "close" (a close
	// frame 1000, then the TCP close once the server answered or CloseWait
	// passed). "" means "abrupt".
	Drop string

	// Reconnect is when clients try again: "immediate" (every attempt, the
	// first and each retry, at once: the thundering herd) or "jitter"
	// (the first attempt at a uniformly random moment of JitterWindow
	// after the drop, retry k after a uniformly random wait in
	// [0, min(BackoffMax, BackoffMin·2^(k−1))): exponential backoff with
	// full jitter). "" means "jitter".
	Reconnect string

	// BackoffMin and BackoffMax bound the jitter backoff. 0 means 100ms
	// and 5s.
	BackoffMin, BackoffMax time.Duration

	// JitterWindow spreads the first reconnect attempt in jitter mode. 0
	// means 1s; negative means the first attempt is immediate.
	JitterWindow time.Duration

	// MaxAttempts bounds one client's reconnect attempts. 0 means 100.
	MaxAttempts int

	// NoSince turns since recovery off. By default (false) every
	// subscription is made with the subscribe op, which answers the
	// topic's seq and epoch, and a reconnecting client resubscribes with
	// {"op":"subscribe","topic":…,"since":<last seq seen>,"epoch":…}, so
	// the server replays what it missed (or answers recovery_incomplete).
	// With NoSince clients subscribe at connect time (/ws?topic=…) and
	// resume with live messages only.
	NoSince bool

	// StormTimeout bounds the reconnect phase, from the drop. 0 means 30s.
	StormTimeout time.Duration

	// Hold is how long publishing goes on after every client is back (or
	// StormTimeout passed). 0 means 2s; negative means none.
	Hold time.Duration

	// Drain is how long to wait, after the last publish, for every client
	// that came back to receive its topic's last message. 0 means 2s.
	Drain time.Duration

	// PublishConns is how many keep-alive HTTP connections publish. 0
	// means 2.
	PublishConns int

	// PublishWindow is how many publishes may await their answer on one
	// publishing connection. 0 means 64.
	PublishWindow int

	// PublishTimeout bounds the wait for one publish's answer. 0 means 5s.
	PublishTimeout time.Duration

	// SourceIPs are local addresses the clients connect from, round-robin
	// (see IdleConfig.SourceIPs). Empty means the kernel picks.
	SourceIPs []netip.Addr

	// ConnectTimeout bounds one attempt's TCP connect, upgrade and (with
	// since) subscribe answer. 0 means 10s.
	ConnectTimeout time.Duration

	// ConnectPhaseMax bounds the initial connect phase. 0 means twice
	// Conns/ConnectRate plus ConnectTimeout.
	ConnectPhaseMax time.Duration

	// CloseWait is how long to wait for the server to answer a close frame
	// (the drop in "close" mode, and the final close). 0 means 2s.
	CloseWait time.Duration

	// AllowRemote permits a target that is not a loopback address. Without
	// it such a target is refused with ErrNotLoopback before any packet is
	// sent.
	AllowRemote bool

	// PerClient adds one entry per client to the report (what it saw
	// around its gap). Meant for tests and small runs.
	PerClient bool

	// Progress, when set, is called about once a second from a separate
	// goroutine while the run lasts, and once more at the end. It must not
	// block for long.
	Progress func(StormProgress)
}

// StormProgress is a live view of a running Storm scenario.
type StormProgress struct {
	// Phase is "connect", "publish", "storm", "hold", "drain", "close" or
	// "done".
	Phase     string
	Elapsed   time.Duration
	Connected int64 // initial connections made
	Open      int64 // connections open now
	Back      int64 // clients back after the drop
	Attempts  int64 // reconnect attempts so far
	Refused   int64 // reconnect attempts that failed
	Published int64 // publishes the server acknowledged
}

// Defaults for StormConfig.
const (
	defaultStormConns        = 1000
	defaultStormPrefix       = "storm."
	defaultStormRate         = 50
	defaultStormBeforeDrop   = time.Second
	defaultStormBackoffMin   = 100 * time.Millisecond
	defaultStormBackoffMax   = 5 * time.Second
	defaultStormJitterWindow = time.Second
	defaultStormMaxAttempts  = 100
	defaultStormTimeout      = 30 * time.Second
	defaultStormHold         = 2 * time.Second
	defaultStormPublishConns = 2

	dropAbrupt         = "abrupt"
	dropClose          = "close"
	reconnectImmediate = "immediate"
	reconnectJitter    = "jitter"
)

// withDefaults returns cfg with its zero fields filled in.
func (cfg StormConfig) withDefaults() StormConfig {
	if cfg.Conns == 0 {
		cfg.Conns = defaultStormConns
	}
	if cfg.Topics == 0 {
		cfg.Topics = 1
	}
	if cfg.TopicPrefix == "" {
		cfg.TopicPrefix = defaultStormPrefix
	}
	if cfg.Rate == 0 {
		cfg.Rate = defaultStormRate
	}
	if cfg.Size == 0 {
		cfg.Size = defaultFanoutSize
	}
	if cfg.ConnectRate == 0 {
		cfg.ConnectRate = defaultFanoutConnectRate
	}
	if cfg.BeforeDrop == 0 {
		cfg.BeforeDrop = defaultStormBeforeDrop
	}
	if cfg.Drop == "" {
		cfg.Drop = dropAbrupt
	}
	if cfg.Reconnect == "" {
		cfg.Reconnect = reconnectJitter
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin = defaultStormBackoffMin
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = defaultStormBackoffMax
	}
	if cfg.JitterWindow == 0 {
		cfg.JitterWindow = defaultStormJitterWindow
	}
	if cfg.JitterWindow < 0 {
		cfg.JitterWindow = 0
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = defaultStormMaxAttempts
	}
	if cfg.StormTimeout == 0 {
		cfg.StormTimeout = defaultStormTimeout
	}
	if cfg.Hold == 0 {
		cfg.Hold = defaultStormHold
	}
	if cfg.Hold < 0 {
		cfg.Hold = 0
	}
	if cfg.Drain <= 0 {
		cfg.Drain = defaultFanoutDrain
	}
	if cfg.PublishConns <= 0 {
		cfg.PublishConns = defaultStormPublishConns
	}
	if cfg.PublishWindow <= 0 {
		cfg.PublishWindow = defaultPublishWindow
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = defaultPublishTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.ConnectPhaseMax <= 0 && cfg.ConnectRate > 0 {
		ramp := time.Duration(float64(cfg.Conns) / cfg.ConnectRate * float64(time.Second))
		cfg.ConnectPhaseMax = 2*ramp + cfg.ConnectTimeout
	}
	if cfg.CloseWait <= 0 {
		cfg.CloseWait = defaultCloseWait
	}
	return cfg
}

// publishWindow is the longest the publisher can run: before the drop, the
// whole storm, the hold, and a second of slack.
func (cfg StormConfig) publishWindow() time.Duration {
	return cfg.BeforeDrop + cfg.StormTimeout + cfg.Hold + time.Second
}

// maxMessages is the most messages the publisher schedules.
func (cfg StormConfig) maxMessages() int {
	return int(math.Ceil(cfg.Rate * cfg.publishWindow().Seconds()))
}

func (cfg StormConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("loadtest: storm: "+format, args...)
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case cfg.URL == "":
		return bad("URL is required")
	case cfg.Conns < 0:
		return bad("Conns %d is negative", cfg.Conns)
	case cfg.Topics < 0:
		return bad("Topics %d is negative", cfg.Topics)
	case cfg.Topics > cfg.Conns:
		return bad("%d topics for %d clients: some topics would have no subscriber", cfg.Topics, cfg.Conns)
	case cfg.Rate < 0 || !finite(cfg.Rate):
		return bad("Rate %v must be a positive number", cfg.Rate)
	case cfg.ConnectRate < 0 || !finite(cfg.ConnectRate):
		return bad("ConnectRate %v must be a positive number", cfg.ConnectRate)
	case cfg.Size < 0 || cfg.Size > 1<<20:
		return bad("Size %d must be between 1 B and 1 MiB", cfg.Size)
	case cfg.BeforeDrop < 0 || cfg.StormTimeout < 0:
		return bad("BeforeDrop and StormTimeout must not be negative")
	case cfg.Drop != dropAbrupt && cfg.Drop != dropClose:
		return bad("Drop %q must be %q or %q", cfg.Drop, dropAbrupt, dropClose)
	case cfg.Reconnect != reconnectImmediate && cfg.Reconnect != reconnectJitter:
		return bad("Reconnect %q must be %q or %q", cfg.Reconnect, reconnectImmediate, reconnectJitter)
	case cfg.BackoffMin < 0 || cfg.BackoffMax < cfg.BackoffMin:
		return bad("backoff bounds %v–%v: need 0 ≤ min ≤ max", cfg.BackoffMin, cfg.BackoffMax)
	case cfg.MaxAttempts < 0:
		return bad("MaxAttempts %d is negative", cfg.MaxAttempts)
	case !validTopicPrefix(cfg.TopicPrefix):
		return bad("TopicPrefix %q: only letters, digits and . _ - : / @ are allowed", cfg.TopicPrefix)
	}
	perTopic := (cfg.maxMessages() + cfg.Topics - 1) / cfg.Topics
	if bitsNeeded := float64(cfg.Conns) * float64(perTopic); bitsNeeded > maxTrackedBits {
		return bad("%d clients × %d messages per topic is too much to track exactly; lower Rate or StormTimeout, or raise Topics",
			cfg.Conns, perTopic)
	}
	if limit, ok := openFileLimit(); ok && uint64(cfg.Conns+cfg.PublishConns)+fdReserve > limit {
		return bad("%d connections need more than the %d open files this process may hold; split the clients over several processes",
			cfg.Conns+cfg.PublishConns, limit)
	}
	return nil
}

// Storm runs the storm scenario: it connects cfg.Conns clients (paced at
// cfg.ConnectRate, client i subscribed to topic i mod cfg.Topics), starts
// publishing cfg.Rate messages a second over HTTP, drops every client at
// one instant (cfg.Drop), lets them reconnect (cfg.Reconnect, with or
// without since recovery) within cfg.StormTimeout, holds cfg.Hold, stops
// publishing, drains and closes. It reports how long the clients took to
// come back, every failed attempt by cause, and exactly which acknowledged
// messages each client never received (seq numbers tell which of them fell
// into its gap).
//
// A config error or a refused target returns (nil, error) before any packet
// is sent. When ctx ends the run early, Storm stops, closes every
// connection and returns the partial report together with ctx.Err(). log
// may be nil.
func Storm(ctx context.Context, cfg StormConfig, log *slog.Logger) (*StormReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var prefer netip.Addr
	if len(cfg.SourceIPs) > 0 {
		prefer = cfg.SourceIPs[0]
	}
	wsTarget, err := resolveTarget(ctx, cfg.URL, []string{"ws"}, cfg.AllowRemote, prefer)
	if err != nil {
		return nil, err
	}
	for _, src := range cfg.SourceIPs {
		if src.Unmap().Is4() != wsTarget.addr.Addr().Is4() {
			return nil, fmt.Errorf("loadtest: storm: source address %s is not of the target's family (%s)", src, wsTarget.addr.Addr())
		}
	}
	stats, err := endpointClient(ctx, cfg.StatsURL, wsTarget, "/v1/stats", cfg.AllowRemote)
	if err != nil {
		return nil, err
	}
	defer stats.close()
	r, err := newStormRun(cfg, wsTarget, stats, log)
	if err != nil {
		return nil, err
	}
	return r.run(ctx)
}

// Phases of a storm run.
const (
	sphaseConnect int32 = iota
	sphasePublish
	sphaseStorm
	sphaseHold
	sphaseDrain
	sphaseClose
	sphaseDone
)

var stormPhaseNames = [...]string{"connect", "publish", "storm", "hold", "drain", "close", "done"}

// stormRun is the state of one Storm call.
type stormRun struct {
	cfg     StormConfig
	target  target
	stats   *statsClient // nil: disabled
	log     *slog.Logger
	dialers []ws.Dialer
	urlBase string // cfg.URL with "?topic=" or "&topic=" appended

	// pubHost lends the fanout scenario's publisher, probe format, run id
	// and topic names; only its publishing half is used.
	pubHost *fanoutRun
	seqOf   [][]uint64 // per topic, publish counter n−1 → acknowledged seq; guarded by pubHost.pub.mu
	maxN    uint64     // most messages one topic can get
	maxMsg  int64      // largest frame a client accepts
	bufPool sync.Pool  // *[]byte message buffers

	ctx   context.Context // the run's; client goroutines stop when it ends
	start time.Time
	phase atomic.Int32

	// dropped is closed at the drop; dropAt and stormDeadline are set
	// before.
	dropped       chan struct{}
	dropAt        time.Time
	stormDeadline time.Time
	// closingAll is set before the final close; a client that connects
	// after it closes at once.
	closingAll atomic.Bool
	// allBack is closed when every client that connected initially is back.
	allBack      chan struct{}
	participants atomic.Int64

	attempted, connected, failed atomic.Int64
	open, back                   atomic.Int64
	attempts, refused            atomic.Int64
	recoveryIncomplete           atomic.Int64
	clean, unclean               atomic.Int64

	dialWG sync.WaitGroup // initial connects
	lifeWG sync.WaitGroup // client goroutines

	mu             sync.Mutex // guards the fields below
	clients        []*stormClient
	failures       map[string]int64 // initial connect failures by cause
	refusedBy      map[string]int64 // failed reconnect attempts by cause
	notBackBy      map[string]int64 // clients never back, by their last failure
	closesBefore   map[string]int64 // server closes before the drop, by code
	closesAfter    map[string]int64 // server closes after a client was back
	dropEnd        time.Time
	lastBack       time.Time
	firstDial      time.Time
	lastConnected  time.Time
	drained        bool
	drainEnd       time.Time
	pubStopReason  string
	publishStarted time.Time
	publishStopped time.Time
}

func newStormRun(cfg StormConfig, t target, stats *statsClient, log *slog.Logger) (*stormRun, error) {
	fcfg := FanoutConfig{
		URL:            cfg.URL,
		Subs:           cfg.Conns,
		Topics:         cfg.Topics,
		TopicPrefix:    cfg.TopicPrefix,
		Rate:           cfg.Rate,
		Size:           cfg.Size,
		Duration:       cfg.publishWindow(),
		Publish:        publishHTTP,
		PublishConns:   cfg.PublishConns,
		PublishWindow:  cfg.PublishWindow,
		PublishTimeout: cfg.PublishTimeout,
		ConnectTimeout: cfg.ConnectTimeout,
		CloseWait:      cfg.CloseWait,
	}.withDefaults()
	host, err := newFanoutRun(fcfg, t, nil, nil, log)
	if err != nil {
		return nil, err
	}
	r := &stormRun{
		cfg:          cfg,
		target:       t,
		stats:        stats,
		log:          log,
		dialers:      newDialers(t.addr, cfg.SourceIPs, cfg.ConnectTimeout),
		pubHost:      host,
		maxN:         host.maxN,
		maxMsg:       int64(cfg.Size)*2 + 1<<20,
		dropped:      make(chan struct{}),
		allBack:      make(chan struct{}),
		clients:      make([]*stormClient, cfg.Conns),
		failures:     map[string]int64{},
		refusedBy:    map[string]int64{},
		notBackBy:    map[string]int64{},
		closesBefore: map[string]int64{},
		closesAfter:  map[string]int64{},
	}
	r.seqOf = make([][]uint64, cfg.Topics)
	for i := range r.seqOf {
		r.seqOf[i] = make([]uint64, r.maxN)
	}
	host.pub.onAck = func(m pubMsg, seq uint64) {
		if m.n >= 1 && m.n <= uint64(len(r.seqOf[m.topic])) {
			r.seqOf[m.topic][m.n-1] = seq
		}
	}
	sep := "?"
	if t.url.RawQuery != "" {
		sep = "&"
	}
	r.urlBase = cfg.URL + sep + "topic="
	r.bufPool.New = func() any { b := make([]byte, 0, cfg.Size+256); return &b }
	return r, nil
}

func (r *stormRun) elapsed() time.Duration { return time.Since(r.start) }

// topicURL is the URL client i dials: with since the bare endpoint (the
// subscription is made with the subscribe op), else with ?topic=.
func (r *stormRun) topicURL(i int) string {
	if !r.cfg.NoSince {
		return r.cfg.URL
	}
	return r.urlBase + url.QueryEscape(string(r.pubHost.topicNames[i%r.cfg.Topics]))
}

func (r *stormRun) run(ctx context.Context) (*StormReport, error) {
	r.ctx, r.start = ctx, time.Now()
	rep := &StormReport{Scenario: "storm", StartedAt: r.start, Config: r.reportConfig(), RunID: r.pubHost.runID}
	bg := context.WithoutCancel(ctx)
	stopProgress := r.startProgress()

	rep.Generator.Before = generatorStats(r.elapsed())
	if r.stats != nil {
		rep.Server.Before = r.stats.fetch(ctx, r.elapsed())
	}

	r.log.Info("storm: connecting", "url", r.cfg.URL, "conns", r.cfg.Conns, "topics", r.cfg.Topics, "since", !r.cfg.NoSince)
	r.connectPhase(ctx)
	r.participants.Store(r.connected.Load())
	rep.Generator.AfterConnect = generatorStats(r.elapsed())
	if r.stats != nil && ctx.Err() == nil {
		rep.Server.AfterConnect = r.stats.fetch(ctx, r.elapsed())
	}

	if ctx.Err() == nil && r.connected.Load() > 0 {
		r.stormPhases(ctx, rep)
	} else if r.connected.Load() == 0 {
		rep.Warnings = append(rep.Warnings, "no client connected; no storm")
	}
	if r.stats != nil {
		rep.Server.After = r.stats.fetch(bg, r.elapsed())
	}
	rep.Generator.After = generatorStats(r.elapsed())

	r.phase.Store(sphaseClose)
	r.log.Info("storm: closing", "open", r.open.Load())
	r.closeAll()
	stopProgress()

	rep.Interrupted = ctx.Err() != nil
	r.fill(rep)
	return rep, ctx.Err()
}

// stormPhases publishes, drops every client, waits for them to come back,
// holds, stops publishing and drains.
func (r *stormRun) stormPhases(ctx context.Context, rep *StormReport) {
	pub, err := r.pubHost.newHTTPPublisher(ctx)
	if err != nil {
		r.log.Error("storm: cannot publish", "err", err)
		rep.Warnings = append(rep.Warnings, "publisher: "+err.Error())
	}
	var stopPub func()
	if pub != nil {
		stopPub = r.startPublishing(ctx, pub)
	}
	r.phase.Store(sphasePublish)
	sleepCtx(ctx, r.cfg.BeforeDrop)

	if ctx.Err() == nil {
		r.phase.Store(sphaseStorm)
		r.log.Info("storm: dropping every client", "mode", r.cfg.Drop, "reconnect", r.cfg.Reconnect)
		r.dropAll()
		t := time.NewTimer(time.Until(r.stormDeadline))
		select {
		case <-r.allBack:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if r.stats != nil {
			rep.Server.AfterStorm = r.stats.fetch(ctx, r.elapsed())
		}
		r.log.Info("storm: reconnect phase over", "back", r.back.Load(), "of", r.participants.Load())
		r.phase.Store(sphaseHold)
		sleepCtx(ctx, r.cfg.Hold)
	}

	r.phase.Store(sphaseDrain)
	if pub != nil {
		stopPub()
		r.drain()
	}
}

// startPublishing publishes round-robin over the topics at cfg.Rate until
// the returned stop is called (which also waits for the outstanding
// answers), ctx ends, or the publisher gives up.
func (r *stormRun) startPublishing(ctx context.Context, pub *httpPublisher) (stop func()) {
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	begin := time.Now()
	r.mu.Lock()
	r.publishStarted = begin
	r.mu.Unlock()
	topics := r.cfg.Topics
	tracker := r.pubHost.pub
	go func() {
		defer close(done)
		_, total := r.pubHost.cfg.messageCounts()
		pace(pctx, begin, total, r.cfg.Rate, func(k int) {
			m := pubMsg{topic: k % topics, n: uint64(k/topics) + 1}
			if !pub.send(pctx, m) {
				cancel()
			}
		})
	}()
	return func() {
		cancel()
		<-done
		now := time.Now()
		tracker.lastSend.Store(now.UnixNano())
		pub.finish()
		r.mu.Lock()
		r.publishStopped = now
		r.pubStopReason = tracker.stopReason()
		r.mu.Unlock()
	}
}

// dropAll ends every client's connection at once: the TCP connection is
// closed (abrupt) or a close frame 1000 is sent (close).
func (r *stormRun) dropAll() {
	now := time.Now()
	r.dropAt = now
	r.stormDeadline = now.Add(r.cfg.StormTimeout)
	r.mu.Lock()
	clients := append([]*stormClient(nil), r.clients...)
	r.mu.Unlock()
	close(r.dropped)
	for _, cl := range clients {
		if cl == nil {
			continue
		}
		cl.mu.Lock()
		cl.dropped, cl.dropAt = true, time.Now()
		c := cl.c
		cl.mu.Unlock()
		if c == nil {
			continue
		}
		if r.cfg.Drop == dropClose {
			c.closing.Store(true)
			_ = c.nc.SetReadDeadline(time.Now().Add(r.cfg.CloseWait))
			if c.writeClose(ws.StatusNormalClosure) != nil {
				_ = c.nc.Close()
			}
		} else {
			_ = c.nc.Close()
		}
	}
	r.mu.Lock()
	r.dropEnd = time.Now()
	r.mu.Unlock()
	if r.participants.Load() == 0 {
		close(r.allBack)
	}
}

// drain waits until every client that is back has its topic's last
// acknowledged message, or cfg.Drain has passed.
func (r *stormRun) drain() {
	tracker := r.pubHost.pub
	tracker.mu.Lock()
	want := append([]uint64(nil), tracker.lastSeq...)
	tracker.mu.Unlock()
	r.mu.Lock()
	clients := append([]*stormClient(nil), r.clients...)
	r.mu.Unlock()
	deadline := time.Now().Add(r.cfg.Drain)
	tk := time.NewTicker(drainPollEvery)
	defer tk.Stop()
	for {
		all := true
		for _, cl := range clients {
			if cl != nil && cl.isBack.Load() && !cl.gone.Load() && cl.maxSeq.Load() < want[cl.topic] {
				all = false
				break
			}
		}
		if all || !time.Now().Before(deadline) {
			r.mu.Lock()
			r.drained, r.drainEnd = all, time.Now()
			r.mu.Unlock()
			return
		}
		<-tk.C
	}
}

// closeAll starts the close handshake (1000) on every open client, gives
// the server CloseWait to answer, then drops what is left, and waits for
// every client goroutine.
func (r *stormRun) closeAll() {
	r.closingAll.Store(true)
	r.mu.Lock()
	clients := append([]*stormClient(nil), r.clients...)
	r.mu.Unlock()
	deadline := time.Now().Add(r.cfg.CloseWait)
	var open []*clientConn
	for _, cl := range clients {
		if cl == nil {
			continue
		}
		cl.mu.Lock()
		c := cl.c
		if c != nil && !cl.final {
			cl.final = true
			open = append(open, c)
		}
		cl.mu.Unlock()
	}
	for _, c := range open {
		c.closing.Store(true)
		_ = c.nc.SetReadDeadline(deadline)
		_ = c.writeClose(ws.StatusNormalClosure)
	}
	done := make(chan struct{})
	go func() {
		r.lifeWG.Wait()
		close(done)
	}()
	t := time.NewTimer(r.cfg.CloseWait + time.Second)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	for _, c := range open {
		_ = c.nc.Close()
	}
	<-done
}

// connectPhase connects cfg.Conns clients paced at cfg.ConnectRate and waits
// for every attempt, all within cfg.ConnectPhaseMax.
func (r *stormRun) connectPhase(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectPhaseMax)
	defer cancel()
	begin := time.Now()
	r.mu.Lock()
	r.firstDial = begin
	r.mu.Unlock()
	pace(pctx, begin, r.cfg.Conns, r.cfg.ConnectRate, func(i int) {
		r.attempted.Add(1)
		r.dialWG.Add(1)
		go r.connectInitial(pctx, i)
	})
	r.dialWG.Wait()
}

// startProgress calls cfg.Progress about once a second until the returned
// stop is called; stop reports phase "done" once more.
func (r *stormRun) startProgress() (stop func()) {
	if r.cfg.Progress == nil {
		return func() { r.phase.Store(sphaseDone) }
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
				return
			case <-tk.C:
				r.report()
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
		r.phase.Store(sphaseDone)
		r.report()
	}
}

func (r *stormRun) report() {
	ok, _ := r.pubHost.pub.counts()
	r.cfg.Progress(StormProgress{
		Phase:     stormPhaseNames[r.phase.Load()],
		Elapsed:   r.elapsed(),
		Connected: r.connected.Load(),
		Open:      r.open.Load(),
		Back:      r.back.Load(),
		Attempts:  r.attempts.Load(),
		Refused:   r.refused.Load(),
		Published: ok,
	})
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
