package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
)

// FanoutConfig configures the fanout scenario. The zero value of every field
// but URL is valid and means the default given in its comment.
type FanoutConfig struct {
	// URL is the WebSocket endpoint, ws://host:port/ws. Required; only the
	// ws scheme is supported. Its host must resolve to loopback addresses
	// only, unless AllowRemote is set. HTTP publishing goes to
	// POST /v1/publish on the same host and port.
	URL string

	// StatsURL is the server's stats endpoint (GET, JSON). Empty means
	// http://host:port/v1/stats; "-" disables stats.
	StatsURL string

	// MetricsURL is the server's Prometheus endpoint, read for
	// process_cpu_seconds_total before and after publishing. Empty means
	// http://host:port/metrics; "-" disables it.
	MetricsURL string

	// Subs is how many subscriber connections to open. 0 means 1000.
	Subs int

	// Topics is how many topics the messages are spread over; subscriber i
	// subscribes at connect time to <TopicPrefix><i mod Topics>. 0 means 1.
	Topics int

	// TopicPrefix names the topics: letters, digits and . _ - : / @ only.
	// "" means "fanout.".
	TopicPrefix string

	// Rate is messages published per second in total, round-robin over the
	// topics. 0 means 20.
	Rate float64

	// Size is the length in bytes of each message's data (the JSON probe
	// {"t":…,"n":…,"r":…,"pad":"…"}, padded). 0 means 100; sizes below the
	// probe's own length (~60 bytes) give unpadded probes.
	Size int

	// Duration is how long the measured publishing lasts, after Warmup. 0
	// means 10s.
	Duration time.Duration

	// Warmup is publishing at Rate before the measured period. Its messages
	// are checked for loss like every other, but their latency is not
	// recorded. 0 means none.
	Warmup time.Duration

	// Drain is how long to wait after the last publish for deliveries still
	// on their way; the wait ends early once every subscriber has every
	// message. 0 means 2s.
	Drain time.Duration

	// Publish is "http" (POST /v1/publish, pipelined over PublishConns
	// keep-alive connections) or "ws" (the publish op over one WebSocket;
	// servers may refuse it with error code "forbidden"). "" means "http".
	Publish string

	// PublishConns is how many HTTP connections publish. 0 means 4. The ws
	// publisher always uses one connection.
	PublishConns int

	// PublishWindow is how many publishes may await their answer on one
	// publishing connection. 0 means 64.
	PublishWindow int

	// PublishTimeout bounds the wait for one publish's answer. 0 means 5s.
	PublishTimeout time.Duration

	// Deflate makes subscribers offer permessage-deflate (RFC 7692) with no
	// context takeover in either direction.
	Deflate bool

	// SourceIPs are local addresses the subscribers connect from, round-robin
	// (see IdleConfig.SourceIPs). Empty means the kernel picks.
	SourceIPs []netip.Addr

	// ClientLoop is how the subscribers read their sockets: "goroutine"
	// (one goroutine per connection) or "epoll" (a few event loops; Linux
	// only). "" means "epoll" on Linux, else "goroutine".
	ClientLoop string

	// ConnectRate is how many subscribers start connecting per second. 0
	// means 2000.
	ConnectRate float64

	// ConnectTimeout bounds one connection's TCP connect plus WebSocket
	// upgrade. 0 means 10s.
	ConnectTimeout time.Duration

	// ConnectPhaseMax bounds the whole subscriber connect phase. 0 means
	// twice Subs/ConnectRate plus ConnectTimeout.
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
	Progress func(FanoutProgress)
}

// FanoutProgress is a live view of a running Fanout scenario.
type FanoutProgress struct {
	// Phase is "connect", "warmup", "publish", "drain", "close" or "done".
	Phase        string
	Elapsed      time.Duration
	Connected    int64 // subscriber handshakes completed
	Failed       int64 // subscribers that could not connect
	ServerClosed int64 // subscribers the server closed or dropped
	Published    int64 // publishes the server acknowledged
	// PublishErrors counts publishes that failed or got no answer.
	PublishErrors int64
	// Delivered counts unique deliveries so far; DeliveriesPerSec is the
	// rate over the last interval.
	Delivered        int64
	DeliveriesPerSec float64
	// P99Ms is the 99th percentile end-to-end latency so far, over the
	// measured period.
	P99Ms float64
	// Anomalies counts duplicates, reorderings and malformed frames so far.
	Anomalies int64
	// Publishing is how long publishing has lasted (warmup included); 0
	// before it begins.
	Publishing time.Duration
}

// Defaults for FanoutConfig.
const (
	defaultFanoutSubs        = 1000
	defaultFanoutTopics      = 1
	defaultFanoutPrefix      = "fanout."
	defaultFanoutRate        = 20
	defaultFanoutSize        = 100
	defaultFanoutDuration    = 10 * time.Second
	defaultFanoutDrain       = 2 * time.Second
	defaultPublishConns      = 4
	defaultPublishWindow     = 64
	defaultPublishTimeout    = 5 * time.Second
	defaultFanoutConnectRate = 2000

	// maxTrackedBits bounds the bitmaps that track which messages each
	// subscriber got (subscribers × messages per topic, in bits; 32 GiB
	// of bits = 4 GiB).
	maxTrackedBits = 32 << 30
	// publishLateMax is how far past its schedule the publisher may run
	// before it gives up on the messages not yet sent.
	publishLateMax = time.Second
	// drainPollEvery is how often the drain checks whether every
	// subscriber has every message.
	drainPollEvery = 20 * time.Millisecond
	// subReadBuffer is each subscriber's socket read buffer: big enough
	// that a small delivery (header and payload) takes one read.
	subReadBuffer = 1024
	// maxLatencyUS is the histogram ceiling: 60 s.
	maxLatencyUS = 60_000_000
	// minTimelineInterval: a shorter interval with nothing in it (the
	// drain's last moments) adds no timeline point.
	minTimelineInterval = 100 * time.Millisecond
	// runIDLen is the length of the hex run id carried in every message.
	runIDLen = 8
)

// Publish modes.
const (
	publishHTTP = "http"
	publishWS   = "ws"
)

// withDefaults returns cfg with its zero fields filled in.
func (cfg FanoutConfig) withDefaults() FanoutConfig {
	if cfg.Subs == 0 {
		cfg.Subs = defaultFanoutSubs
	}
	if cfg.Topics == 0 {
		cfg.Topics = defaultFanoutTopics
	}
	if cfg.TopicPrefix == "" {
		cfg.TopicPrefix = defaultFanoutPrefix
	}
	if cfg.Rate == 0 {
		cfg.Rate = defaultFanoutRate
	}
	if cfg.Size == 0 {
		cfg.Size = defaultFanoutSize
	}
	if cfg.Duration == 0 {
		cfg.Duration = defaultFanoutDuration
	}
	if cfg.Drain <= 0 {
		cfg.Drain = defaultFanoutDrain
	}
	if cfg.Publish == "" {
		cfg.Publish = publishHTTP
	}
	if cfg.PublishConns <= 0 {
		cfg.PublishConns = defaultPublishConns
	}
	if cfg.Publish == publishWS {
		cfg.PublishConns = 1
	}
	if cfg.PublishWindow <= 0 {
		cfg.PublishWindow = defaultPublishWindow
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = defaultPublishTimeout
	}
	if cfg.ConnectRate == 0 {
		cfg.ConnectRate = defaultFanoutConnectRate
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.ConnectPhaseMax <= 0 && cfg.ConnectRate > 0 {
		ramp := time.Duration(float64(cfg.Subs) / cfg.ConnectRate * float64(time.Second))
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

// messageCounts returns how many messages the warmup and the measured period
// publish.
func (cfg FanoutConfig) messageCounts() (warm, measured int) {
	return int(math.Round(cfg.Rate * cfg.Warmup.Seconds())), int(math.Round(cfg.Rate * cfg.Duration.Seconds()))
}

// perTopic is the most messages one topic gets.
func (cfg FanoutConfig) perTopic() int {
	warm, measured := cfg.messageCounts()
	return (warm + measured + cfg.Topics - 1) / cfg.Topics
}

func (cfg FanoutConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("loadtest: fanout: "+format, args...)
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case cfg.URL == "":
		return bad("URL is required")
	case cfg.Subs < 0:
		return bad("Subs %d is negative", cfg.Subs)
	case cfg.Topics < 0:
		return bad("Topics %d is negative", cfg.Topics)
	case cfg.Topics > cfg.Subs:
		return bad("%d topics for %d subscribers: some topics would have no subscriber", cfg.Topics, cfg.Subs)
	case cfg.Rate < 0 || !finite(cfg.Rate):
		return bad("Rate %v must be a positive number", cfg.Rate)
	case cfg.ConnectRate < 0 || !finite(cfg.ConnectRate):
		return bad("ConnectRate %v must be a positive number", cfg.ConnectRate)
	case cfg.Size < 0 || cfg.Size > 16<<20:
		return bad("Size %d must be between 1 and 16 MiB", cfg.Size)
	case cfg.Duration < 0 || cfg.Warmup < 0:
		return bad("Duration and Warmup must not be negative")
	case cfg.Publish != publishHTTP && cfg.Publish != publishWS:
		return bad("Publish %q must be %q or %q", cfg.Publish, publishHTTP, publishWS)
	case !validTopicPrefix(cfg.TopicPrefix):
		return bad("TopicPrefix %q: only letters, digits and . _ - : / @ are allowed", cfg.TopicPrefix)
	}
	if _, err := resolveClientLoop(cfg.ClientLoop); err != nil {
		return bad("ClientLoop: %v", err)
	}
	if _, measured := cfg.messageCounts(); measured < 1 {
		return bad("Rate × Duration gives no message to publish")
	}
	if bitsNeeded := float64(cfg.Subs) * float64(cfg.perTopic()); bitsNeeded > maxTrackedBits {
		return bad("%d subscribers × %d messages per topic is too much to track exactly; lower Rate or Duration, or raise Topics",
			cfg.Subs, cfg.perTopic())
	}
	if limit, ok := openFileLimit(); ok && uint64(cfg.Subs+cfg.PublishConns)+fdReserve > limit {
		return bad("%d connections need more than the %d open files this process may hold; split the subscribers over several processes",
			cfg.Subs+cfg.PublishConns, limit)
	}
	return nil
}

func validTopicPrefix(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == '@':
		default:
			return false
		}
	}
	return len(p) <= 200
}

// Fanout runs the fanout scenario: it connects cfg.Subs subscribers (each
// subscribed at connect time to one of cfg.Topics topics), publishes
// cfg.Rate messages a second over HTTP or WebSocket for cfg.Warmup +
// cfg.Duration, waits up to cfg.Drain for the last deliveries, and reports
// end-to-end latency and exactly how many deliveries were lost, duplicated
// or reordered.
//
// A config error or a refused target returns (nil, error) before any packet
// is sent. When ctx ends the run early, Fanout stops publishing, still
// drains and closes every connection, and returns the partial report
// together with ctx.Err(). log may be nil.
func Fanout(ctx context.Context, cfg FanoutConfig, log *slog.Logger) (*FanoutReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
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
	return r.run(ctx)
}

// fanoutEndpoints resolves and checks the WebSocket target and the stats
// and metrics endpoints (nil: disabled).
func fanoutEndpoints(ctx context.Context, cfg FanoutConfig) (wsTarget target, stats, metrics *statsClient, err error) {
	var prefer netip.Addr
	if len(cfg.SourceIPs) > 0 {
		prefer = cfg.SourceIPs[0]
	}
	wsTarget, err = resolveTarget(ctx, cfg.URL, []string{"ws"}, cfg.AllowRemote, prefer)
	if err != nil {
		return target{}, nil, nil, err
	}
	for _, src := range cfg.SourceIPs {
		if src.Unmap().Is4() != wsTarget.addr.Addr().Is4() {
			return target{}, nil, nil, fmt.Errorf("loadtest: fanout: source address %s is not of the target's family (%s)", src, wsTarget.addr.Addr())
		}
	}
	stats, err = endpointClient(ctx, cfg.StatsURL, wsTarget, "/v1/stats", cfg.AllowRemote)
	if err != nil {
		return target{}, nil, nil, err
	}
	metrics, err = endpointClient(ctx, cfg.MetricsURL, wsTarget, "/metrics", cfg.AllowRemote)
	if err != nil {
		stats.close()
		return target{}, nil, nil, err
	}
	return wsTarget, stats, metrics, nil
}

// Phases of a fanout run.
const (
	fphaseConnect int32 = iota
	fphaseWarmup
	fphasePublish
	fphaseDrain
	fphaseClose
	fphaseDone
)

var fanoutPhaseNames = [...]string{"connect", "warmup", "publish", "drain", "close", "done"}

// fanoutRun is the state of one Fanout call.
type fanoutRun struct {
	cfg     FanoutConfig
	target  target
	stats   *statsClient // nil: disabled
	metrics *statsClient // nil: disabled
	log     *slog.Logger
	dialers []ws.Dialer
	urlBase string // cfg.URL with "?topic=" or "&topic=" appended
	// first is the run-wide index of subscriber 0 when this process holds
	// one shard of a multi-process run (topics stay i mod Topics overall).
	first int

	runID      string
	topicNames [][]byte
	maxN       uint64 // most messages one topic can get
	maxMsg     int64  // largest delivery a subscriber accepts
	pad        []byte // padding source for message data

	start        time.Time
	phase        atomic.Int32
	measureStart atomic.Int64 // Unix ns; latency is recorded for messages sent at or after it

	attempted, connected, failed atomic.Int64
	open, serverClosed           atomic.Int64
	clean, unclean               atomic.Int64
	deflated                     atomic.Int64 // subscribers that negotiated deflate
	anomalies                    atomic.Int64 // duplicates, reorderings, malformed (live view)

	dialWG sync.WaitGroup
	readWG sync.WaitGroup // subscribers not yet ended (readers, or on loops)

	// loops read the subscribers in epoll mode (nil: goroutine mode); set
	// by connectPhase, stopped by closeAll.
	loops    *eventLoops
	loopOpts loopOpts

	bufPool  sync.Pool // *[]byte message buffers
	inflPool sync.Pool // *inflater

	shards []latShard
	pub    *pubTracker

	mu            sync.Mutex // guards the fields below
	subs          []*subscriber
	failures      map[string]int64
	closes        map[string]int64 // server closes by code
	firstDial     time.Time
	lastConnected time.Time

	drained  bool      // set by drain
	drainEnd time.Time // set by drain

	tickReset chan struct{} // restarts the sampler's ticker at the start of publishing

	sampleMu  sync.Mutex // guards the sampling state below
	sec       *hdrhistogram.Histogram
	total     *hdrhistogram.Histogram
	delivered int64 // unique deliveries folded in so far
	lastRate  float64
	lastErrs  int64
	timeline  []TimelinePoint
	lastTick  time.Time
	pubStart  time.Time // zero until publishing starts
}

func newFanoutRun(cfg FanoutConfig, t target, stats, metrics *statsClient, log *slog.Logger) (*fanoutRun, error) {
	var id [runIDLen / 2]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	r := &fanoutRun{
		cfg:       cfg,
		target:    t,
		stats:     stats,
		metrics:   metrics,
		log:       log,
		dialers:   newDialers(t.addr, cfg.SourceIPs, cfg.ConnectTimeout),
		runID:     hex.EncodeToString(id[:]),
		maxN:      uint64(cfg.perTopic()),
		maxMsg:    int64(cfg.Size)*2 + 1<<20,
		pad:       newPadSource(cfg.Size + len(padAlphabet)),
		failures:  map[string]int64{},
		closes:    map[string]int64{},
		subs:      make([]*subscriber, cfg.Subs),
		sec:       hdrhistogram.New(1, maxLatencyUS, 3),
		tickReset: make(chan struct{}, 1),
		total:     hdrhistogram.New(1, maxLatencyUS, 3),
	}
	r.measureStart.Store(math.MaxInt64)
	for i := range cfg.Topics {
		r.topicNames = append(r.topicNames, []byte(cfg.TopicPrefix+strconv.Itoa(i)))
	}
	sep := "?"
	if t.url.RawQuery != "" {
		sep = "&"
	}
	r.urlBase = cfg.URL + sep + "topic="
	if cfg.Deflate {
		offer := []httphead.Option{wsflate.Parameters{
			ServerNoContextTakeover: true,
			ClientNoContextTakeover: true,
		}.Option()}
		for i := range r.dialers {
			r.dialers[i].Extensions = offer
		}
	}
	// A few shards per core keep the histogram lock uncontended.
	r.shards = make([]latShard, 16)
	for i := range r.shards {
		r.shards[i].cur = hdrhistogram.New(1, maxLatencyUS, 3)
	}
	r.bufPool.New = func() any { b := make([]byte, 0, cfg.Size+256); return &b }
	r.loopOpts = loopOpts{pool: &r.bufPool, maxMsg: r.maxMsg}
	r.inflPool.New = func() any { return newInflater() }
	r.pub = newPubTracker(cfg)
	return r, nil
}

func (r *fanoutRun) elapsed() time.Duration { return time.Since(r.start) }

func (r *fanoutRun) run(ctx context.Context) (*FanoutReport, error) {
	r.start = time.Now()
	r.lastTick = r.start
	rep := &FanoutReport{Scenario: "fanout", StartedAt: r.start, Config: r.reportConfig()}
	// Final measurements and the close handshake run even when ctx has
	// ended, each bounded by its own timeout.
	bg := context.WithoutCancel(ctx)

	samplerDone := r.startSampler()

	rep.Generator.Before = generatorStats(r.elapsed())
	if r.stats != nil {
		rep.Server.Before = r.stats.fetch(ctx, r.elapsed())
	}

	r.log.Info("fanout: connecting subscribers", "url", r.cfg.URL, "subs", r.cfg.Subs, "topics", r.cfg.Topics, "rate", r.cfg.ConnectRate)
	r.connectPhase(ctx)
	rep.Generator.AfterConnect = generatorStats(r.elapsed())
	if r.stats != nil && ctx.Err() == nil {
		rep.Server.AfterConnect = r.settledStats(ctx, rep.Server.Before, r.open.Load())
	}

	var cpuBefore cpuSample
	if ctx.Err() == nil && r.open.Load() > 0 {
		pub, err := r.newPublisher(ctx)
		if err != nil {
			r.log.Error("fanout: cannot publish", "err", err)
			rep.Warnings = append(rep.Warnings, "publisher: "+err.Error())
		} else {
			cpuBefore = r.cpuSample(ctx)
			r.publishPhase(ctx, pub)
			r.phase.Store(fphaseDrain)
			pub.finish()
			r.drain()
			rep.cpu = r.cpuUsage(bg, cpuBefore)
		}
	}
	if r.stats != nil {
		rep.Server.After = r.stats.fetch(bg, r.elapsed())
	}
	rep.Generator.After = generatorStats(r.elapsed())

	r.phase.Store(fphaseClose)
	r.log.Info("fanout: closing", "open", r.open.Load())
	r.closeAll()
	samplerDone() // reports phase "done" once

	rep.Interrupted = ctx.Err() != nil
	r.fill(rep)
	return rep, ctx.Err()
}

// connectPhase connects cfg.Subs subscribers paced at cfg.ConnectRate and
// waits for every handshake, all within cfg.ConnectPhaseMax.
func (r *fanoutRun) connectPhase(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectPhaseMax)
	defer cancel()
	if r.cfg.ClientLoop == ClientLoopEpoll {
		ls, err := newEventLoops(clientLoops(r.cfg.Subs))
		if err != nil {
			r.log.Warn("fanout: no event loops; one goroutine per subscriber instead", "err", err)
		}
		r.loops = ls
	}
	begin := time.Now()
	r.mu.Lock()
	r.firstDial = begin
	r.mu.Unlock()
	pace(pctx, begin, r.cfg.Subs, r.cfg.ConnectRate, func(i int) {
		r.attempted.Add(1)
		r.dialWG.Add(1)
		go r.connect(pctx, i)
	})
	r.dialWG.Wait()
}

// settledStats reads the server's stats once it counts the new
// subscriptions (or connections, when it does not report subscriptions), or
// after statsSettleMax: a message published before the server has
// registered a subscription would count as lost.
func (r *fanoutRun) settledStats(ctx context.Context, before *ServerStats, open int64) *ServerStats {
	deadline := time.Now().Add(statsSettleMax)
	for {
		s := r.stats.fetch(ctx, r.elapsed())
		settled := s.Error != "" || ctx.Err() != nil || time.Now().After(deadline)
		switch {
		case settled:
		case s.Subscriptions != nil:
			base := int64(0)
			if before != nil && before.Subscriptions != nil {
				base = *before.Subscriptions
			}
			settled = *s.Subscriptions >= base+open
		case s.Connections != nil:
			settled = *s.Connections >= open
		default:
			settled = true
		}
		if settled {
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

// publishPhase publishes the warmup and measured messages at cfg.Rate,
// round-robin over the topics, until all are handed to pub, ctx ends, the
// schedule is more than publishLateMax behind, or pub gives up.
func (r *fanoutRun) publishPhase(ctx context.Context, pub publisher) {
	r.publishPhaseAt(ctx, pub, time.Now())
}

// publishPhaseAt is publishPhase with the schedule starting at begin (which
// may lie a little in the future: the first publish waits for it).
func (r *fanoutRun) publishPhaseAt(ctx context.Context, pub publisher, begin time.Time) {
	warm, measured := r.cfg.messageCounts()
	total := warm + measured
	end := begin.Add(r.cfg.Warmup + r.cfg.Duration + publishLateMax)
	pctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	r.measureStart.Store(begin.Add(r.cfg.Warmup).UnixNano())
	// The timeline's seconds count from here.
	r.sample()
	r.sampleMu.Lock()
	r.pubStart, r.lastTick = begin, begin
	r.sampleMu.Unlock()
	r.tickReset <- struct{}{}
	if warm > 0 {
		r.phase.Store(fphaseWarmup)
	} else {
		r.phase.Store(fphasePublish)
	}
	r.log.Info("fanout: publishing", "via", r.cfg.Publish, "messages", total, "rate", r.cfg.Rate)
	topics := r.cfg.Topics
	sent := pace(pctx, begin, total, r.cfg.Rate, func(k int) {
		if k == warm {
			r.phase.Store(fphasePublish)
		}
		m := pubMsg{topic: k % topics, n: uint64(k/topics) + 1}
		if !pub.send(pctx, m) {
			cancel()
		}
	})
	r.pub.lastSend.Store(time.Now().UnixNano())
	r.pub.notSent.Store(int64(total) - r.pub.handedOff.Load())
	if sent < total && ctx.Err() == nil {
		if reason := r.pub.stopReason(); reason != "" {
			r.log.Error("fanout: publishing stopped", "reason", reason)
		} else {
			r.log.Warn("fanout: publisher fell behind its schedule; messages not sent", "not_sent", total-sent)
		}
	}
}

// drain waits until every subscriber still open has every acknowledged
// message of its topic, or cfg.Drain has passed since the last publish.
func (r *fanoutRun) drain() {
	deadline := time.Now().Add(r.cfg.Drain)
	tk := time.NewTicker(drainPollEvery)
	defer tk.Stop()
	for {
		if r.allDelivered() {
			r.drained = true
			break
		}
		if !time.Now().Before(deadline) {
			break
		}
		<-tk.C
	}
	r.drainEnd = time.Now()
	r.sample() // the timeline ends with the drain
}

// allDelivered reports whether every open subscriber has seen as many of
// this run's messages as its topic got acknowledged.
func (r *fanoutRun) allDelivered() bool {
	want := r.pub.ackedPerTopic()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.subs {
		if s != nil && !s.gone.Load() && s.uniq.Load() < want[s.topic] {
			return false
		}
	}
	return true
}

// closeAll starts the close handshake on every open subscriber (status
// 1000), gives the server CloseWait to answer, then drops what is left, and
// stops the event loops.
func (r *fanoutRun) closeAll() {
	r.mu.Lock()
	var open []*clientConn
	for _, s := range r.subs {
		if s != nil && !s.gone.Load() {
			open = append(open, s.c)
		}
	}
	r.mu.Unlock()
	closeConns(open, r.cfg.CloseWait, &r.readWG)
	if r.loops != nil {
		r.loops.stop()
	}
}

// cpuSample is the server's and the generator's CPU time at one moment;
// unknown values are nil.
type cpuSample struct {
	server    *float64 // seconds
	source    string   // where server came from
	generator *float64 // seconds
}

func (r *fanoutRun) cpuSample(ctx context.Context) cpuSample {
	var s cpuSample
	if r.stats != nil {
		if s.server = r.stats.serverCPU(ctx); s.server != nil {
			s.source = "stats " + r.stats.url
		}
	}
	if s.server == nil && r.metrics != nil {
		if v, err := r.metrics.metricValue(ctx, "process_cpu_seconds_total"); err == nil {
			s.server, s.source = &v, "process_cpu_seconds_total from "+r.metrics.url
		} else {
			r.log.Debug("fanout: no server CPU from /metrics", "err", err)
		}
	}
	if d, ok := processCPU(); ok {
		v := d.Seconds()
		s.generator = &v
	}
	return s
}

// cpuUsage measures the CPU time spent since before.
func (r *fanoutRun) cpuUsage(ctx context.Context, before cpuSample) *CPUUsage {
	after := r.cpuSample(ctx)
	u := &CPUUsage{}
	if before.server != nil && after.server != nil && before.source == after.source {
		u.Source = after.source
		d := *after.server - *before.server
		u.ServerS = &d
	}
	if before.generator != nil && after.generator != nil {
		d := *after.generator - *before.generator
		u.GeneratorS = &d
	}
	return u
}

// topicURL is the URL subscriber i dials.
func (r *fanoutRun) topicURL(i int) string {
	return r.urlBase + url.QueryEscape(string(r.topicNames[(r.first+i)%r.cfg.Topics]))
}

// startSampler folds the latency shards into the run's histograms, extends
// the timeline and calls cfg.Progress about once a second until the
// returned stop function is called; stop samples once more and waits for
// the goroutine.
func (r *fanoutRun) startSampler() (stop func()) {
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
			case <-r.tickReset:
				tk.Reset(time.Second)
			case <-tk.C:
				r.sample()
				r.report()
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
		r.phase.Store(fphaseDone)
		r.sample()
		r.report()
	}
}

// sample folds what the shards collected since the last sample into the
// run's histograms and, once publishing has started, appends a timeline
// point.
func (r *fanoutRun) sample() {
	r.sampleMu.Lock()
	defer r.sampleMu.Unlock()
	now := time.Now()
	var delivered int64
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		r.sec.Merge(sh.cur)
		sh.cur.Reset()
		delivered += sh.delivered
		sh.delivered = 0
		sh.mu.Unlock()
	}
	dt := now.Sub(r.lastTick)
	r.lastTick = now
	r.delivered += delivered
	if dt > 0 {
		r.lastRate = float64(delivered) / dt.Seconds()
	}
	published := r.pub.sentNow.Swap(0)
	_, errs := r.pub.counts()
	newErrs := errs - r.lastErrs
	r.lastErrs = errs
	phase := r.phase.Load()
	active := phase >= fphaseWarmup && phase <= fphaseDrain
	busy := delivered > 0 || published > 0 || newErrs > 0
	if !r.pubStart.IsZero() && (busy || (active && dt >= minTimelineInterval)) {
		p := TimelinePoint{
			TS:            now.Sub(r.pubStart).Seconds(),
			IntervalS:     dt.Seconds(),
			Phase:         fanoutPhaseNames[phase],
			Published:     published,
			PublishErrors: newErrs,
			Delivered:     delivered,
		}
		if r.sec.TotalCount() > 0 {
			v := float64(r.sec.ValueAtPercentile(99)) / 1000
			p.P99 = &v
		}
		r.timeline = append(r.timeline, p)
	}
	r.total.Merge(r.sec)
	r.sec.Reset()
}

// report calls cfg.Progress, when set.
func (r *fanoutRun) report() {
	if r.cfg.Progress == nil {
		return
	}
	ok, errs := r.pub.counts()
	r.sampleMu.Lock()
	p := FanoutProgress{
		Phase:            fanoutPhaseNames[r.phase.Load()],
		Elapsed:          r.elapsed(),
		Connected:        r.connected.Load(),
		Failed:           r.failed.Load(),
		ServerClosed:     r.serverClosed.Load(),
		Published:        ok,
		PublishErrors:    errs,
		Delivered:        r.delivered,
		DeliveriesPerSec: r.lastRate,
		Anomalies:        r.anomalies.Load(),
	}
	if r.total.TotalCount() > 0 {
		p.P99Ms = float64(r.total.ValueAtPercentile(99)) / 1000
	}
	if !r.pubStart.IsZero() {
		p.Publishing = time.Since(r.pubStart)
	}
	r.sampleMu.Unlock()
	r.cfg.Progress(p)
}
