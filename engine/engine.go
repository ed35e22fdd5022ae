package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/poller"
	"github.com/surgepush/surge/topics"
	"github.com/surgepush/surge/tuning"
)

// Errors returned by the engine.
var (
	ErrStarted = errors.New("engine: already started")
)

// Engine is one Surge server.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	ccfg  conn.Config
	wheel *conn.Wheel
	poll  *poller.Poller
	reg   *topics.Registry
	mux   *http.ServeMux
	up    ws.Upgrader
	prom  *prometheus.Registry
	start time.Time

	started  atomic.Bool
	draining atomic.Bool
	stopOnce sync.Once

	st          stats
	admin       *http.Server
	deflater    *conn.Deflater
	pubPrefixes []string
	auth        *authenticator // nil: authentication off
	publishKey  string
	origins     []string
	connLimit   *connLimiter
	cert        atomic.Pointer[tls.Certificate]

	// broker shares topics with other nodes (nil: single node); Shutdown closes it.
	broker topics.Broker
}

// Option customises New for one call.
type Option func(*Engine)

// WithRegistry makes the engine register its metrics on r instead of a
// registry of its own.
func WithRegistry(r *prometheus.Registry) Option { return func(e *Engine) { e.prom = r } }

// New builds an engine from cfg (defaults filled in). It does not listen yet.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Engine, error) {
	cfg.Normalize()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{cfg: cfg, log: log, start: time.Now()}
	for _, o := range opts {
		o(e)
	}
	policy, ok := conn.ParsePolicy(cfg.SlowPolicy)
	if !ok {
		return nil, fmt.Errorf("engine: slow-policy %q: want disconnect, drop-oldest or conflate", cfg.SlowPolicy)
	}
	def := topics.Rule{Policy: policy, HistorySize: *cfg.HistorySize, HistoryTTL: cfg.HistoryTTL}
	rules, err := topics.ParseRules(cfg.TopicRules, def)
	if err != nil {
		return nil, fmt.Errorf("engine: topic-rules: %w", err)
	}
	for _, p := range strings.Split(cfg.PublishPrefixes, ",") {
		if p = strings.TrimSpace(p); p != "" {
			e.pubPrefixes = append(e.pubPrefixes, p)
		}
	}
	e.auth, err = newAuthenticator(&cfg)
	if err != nil {
		return nil, err
	}
	if cfg.PublishKeyFile != "" {
		b, err := os.ReadFile(cfg.PublishKeyFile)
		if err != nil {
			return nil, fmt.Errorf("engine: publish key: %w", err)
		}
		if e.publishKey = strings.TrimSpace(string(b)); len(e.publishKey) < 16 {
			return nil, errors.New("engine: publish key: want at least 16 characters")
		}
	}
	e.origins = splitList(cfg.AllowedOrigins)
	e.connLimit = newConnLimiter(cfg.ConnRate, cfg.ConnRatePerIP)
	e.deflater = new(conn.Deflater)
	threshold := cfg.DeflateThreshold
	if e.broker, err = newBroker(&cfg, def, rules, log); err != nil {
		return nil, err
	}
	e.reg, err = topics.New(topics.Config{
		Default: def, Rules: rules, ShardSize: cfg.FanoutShard, Workers: cfg.FanoutWorkers,
		DeflateThreshold: threshold, IdleTTL: cfg.TopicIdleTTL, Deflater: e.deflater, Broker: e.broker,
	})
	if err != nil {
		if e.broker != nil {
			e.broker.Close()
		}
		return nil, err
	}
	if e.prom == nil {
		e.prom = prometheus.NewRegistry()
	}
	e.ccfg = conn.Config{
		MaxHeaderBytes:   cfg.MaxHeaderBytes,
		MaxBodyBytes:     cfg.MaxBodyBytes,
		MaxMessageSize:   cfg.MaxMessageSize,
		WriteQueueFrames: cfg.WriteQueueFrames,
		WriteQueueBytes:  cfg.WriteQueueBytes,
		PingInterval:     cfg.PingInterval,
		PongTimeout:      cfg.PongTimeout,
		HandshakeTimeout: cfg.HandshakeTimeout,
		CloseTimeout:     cfg.CloseTimeout,
		Deflater:         e.deflater,
	}
	e.ccfg.Normalize()
	tick := min(e.ccfg.PingInterval, e.ccfg.PongTimeout, e.ccfg.HandshakeTimeout, e.ccfg.CloseTimeout) / 8
	tick = max(min(tick, time.Second), 5*time.Millisecond)
	span := max(e.ccfg.PingInterval, e.ccfg.PongTimeout, e.ccfg.HandshakeTimeout, e.ccfg.CloseTimeout)
	e.wheel = conn.NewWheel(tick, span)
	e.up = ws.Upgrader{}
	e.poll, err = poller.New(poller.Config{Workers: cfg.Workers, BufferSize: cfg.ReadBufferSize}, e, log)
	if err != nil {
		return nil, err
	}
	e.mux = e.routes()
	if err := e.registerMetrics(); err != nil {
		return nil, err
	}
	return e, nil
}

// Config returns the effective configuration (defaults filled in).
func (e *Engine) Config() Config { return e.cfg }

// Start listens on Config.Listen and serves until Shutdown. It returns once
// the listener accepts connections.
func (e *Engine) Start() error {
	if !e.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	raiseFileLimit(e.log)
	for _, w := range tuning.ServeWarnings("/", e.cfg.MaxConnections) {
		e.log.Warn("system limit below --max-connections; see `surge tune`", "warning", w)
	}
	if err := e.poll.Listen("tcp", e.cfg.Listen); err != nil {
		return err
	}
	if e.cfg.TLSListen != "" {
		if err := e.startTLS(); err != nil {
			return err
		}
	}
	go e.wheel.Run()
	go e.reg.Run()
	if e.cfg.PprofListen != "" {
		if err := e.startPprof(); err != nil {
			return err
		}
	}
	e.log.Info("surge listening", "addr", e.Addr(), "echo", e.cfg.Echo,
		"ping_interval", e.ccfg.PingInterval, "pong_timeout", e.ccfg.PongTimeout)
	return nil
}

// Addr returns the listening address as host:port (valid after Start).
func (e *Engine) Addr() string {
	a := e.poll.Addr()
	if a == nil {
		return ""
	}
	return a.String()
}

// Draining reports whether Shutdown has begun.
func (e *Engine) Draining() bool { return e.draining.Load() }

// Shutdown stops accepting, sends close 1001 to every connection, waits for
// them to close until ctx is done, then closes whatever is left.
func (e *Engine) Shutdown(ctx context.Context) error {
	if !e.started.Load() {
		if e.broker != nil {
			e.broker.Close()
		}
		return nil
	}
	var err error
	e.stopOnce.Do(func() {
		e.draining.Store(true)
		e.drain(ctx)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
	wait:
		for e.poll.Conns() > 0 {
			select {
			case <-ctx.Done():
				err = ctx.Err()
				break wait
			case <-tick.C:
			}
		}
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if cerr := e.poll.Close(closeCtx); cerr != nil && err == nil && e.poll.Conns() > 0 {
			err = fmt.Errorf("engine: closing listener: %w", cerr)
		}
		e.wheel.Stop(true)
		e.reg.Close(true)
		if e.broker != nil {
			e.broker.Close()
		}
		if e.admin != nil {
			_ = e.admin.Close()
		}
		e.log.Info("surge stopped", "remaining", e.poll.Conns())
	})
	return err
}

// drain closes every connection with 1001 and a reconnect hint, paced
// evenly over DrainWindow (shortened to fit ctx's deadline), so that a fleet
// of clients neither loses its connections at once nor returns at once:
// each close reason is {"reconnect_after_ms":N} with N drawn uniformly from
// [0, ReconnectJitter).
func (e *Engine) drain(ctx context.Context) {
	conns := e.wheel.Snapshot()
	window := e.cfg.DrainWindow
	if dl, ok := ctx.Deadline(); ok {
		// Leave a quarter of the remaining time for the closing handshakes.
		window = min(window, time.Until(dl)*3/4)
	}
	e.log.Info("draining", "connections", len(conns), "window", window, "reconnect_jitter", e.cfg.ReconnectJitter)
	start := time.Now()
	jitter := e.cfg.ReconnectJitter.Milliseconds()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for i, c := range conns {
		// Connection i is due at start + window·i/len.
		due := start.Add(time.Duration(int64(window) * int64(i) / int64(len(conns))))
		for time.Now().Before(due) {
			select {
			case <-ctx.Done():
				due = time.Time{} // out of time: close the rest now
			case <-tick.C:
			}
		}
		hint := int64(0)
		if jitter > 0 {
			hint = rand.Int64N(jitter)
		}
		c.Close(ws.StatusGoingAway, conn.ReasonShutdown, `{"reconnect_after_ms":`+strconv.FormatInt(hint, 10)+`}`)
		e.st.drained.Add(1)
	}
}

// Open implements poller.Handler: every accepted socket becomes a session.
func (e *Engine) Open(t poller.Transport) poller.Events {
	s := &session{e: e}
	s.Init(t, s, &e.ccfg, e.wheel)
	e.st.accepted.Add(1)
	switch {
	case e.draining.Load():
		s.RejectHTTP(&conn.HTTPError{Status: http.StatusServiceUnavailable, Msg: "server shutting down", Header: "Retry-After: 5\r\n"})
	case e.cfg.MaxConnections > 0 && e.poll.Conns() > int64(e.cfg.MaxConnections):
		e.st.reject(e.log, rejectMaxConns)
		s.RejectHTTP(&conn.HTTPError{Status: http.StatusServiceUnavailable, Msg: "too many connections", Header: "Retry-After: 5\r\n"})
	case e.connLimit != nil:
		if ok, which := e.connLimit.allow(t.RemoteAddr().String()); !ok {
			e.st.reject(e.log, which)
			s.RejectHTTP(&conn.HTTPError{Status: http.StatusTooManyRequests, Msg: "too many new connections", Header: "Retry-After: 1\r\n"})
		}
	}
	return s
}

var _ poller.Handler = (*Engine)(nil)
