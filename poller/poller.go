package poller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/panjf2000/ants/v2"
)

// Events receives one connection's events. Feed calls for one connection
// never overlap, and OnTransportClosed never overlaps Feed.
type Events interface {
	// Feed receives bytes read from the socket; p is valid until Feed returns.
	Feed(p []byte)
	// OnWritable reports that the socket can take more bytes.
	OnWritable()
	// OnTransportClosed reports that the socket closed; called exactly once.
	OnTransportClosed()
}

// Handler is called by the Poller for every accepted connection.
type Handler interface {
	// Open returns the receiver of c's events. It runs on an accepting
	// goroutine and must not block. c is a *Conn (plain) or *TLSConn.
	Open(c Transport) Events
}

// Transport is an accepted socket: *Conn or *TLSConn. Both implement
// conn.Transport.
type Transport interface {
	Writev(bufs [][]byte) (int, error)
	WaitWritable() error
	CloseWrite() error
	Close() error
	RemoteAddr() net.Addr
}

// Config configures a Poller. The zero value is valid.
type Config struct {
	// Workers bounds the ants pool that runs every read, write-readiness and
	// accept handler. Default 64 × GOMAXPROCS.
	Workers int
	// BufferSize is netpoll's initial per-connection read buffer and its
	// minimum buffer node (netpoll.LinkBufferCap). Small values keep idle
	// connections cheap; reads grow buffers on demand. Default 256.
	// Process-wide: only the first Poller's value applies.
	BufferSize int
	// Loops is the number of netpoll poller loops. Default GOMAXPROCS/20+1
	// (netpoll's default). Process-wide.
	Loops int
}

// Normalize fills the defaults of unset fields.
func (c *Config) Normalize() {
	if c.Workers <= 0 {
		c.Workers = 64 * runtime.GOMAXPROCS(0)
	}
	if c.BufferSize <= 0 {
		c.BufferSize = 256
	}
}

// process holds netpoll's process-wide setup; see the package doc.
type process struct {
	trim trimmer
	once sync.Once
	pool *ants.Pool
	err  error
	cfg  Config
}

var netpollProcess process

func (p *process) setup(cfg Config, log *slog.Logger) (*ants.Pool, error) {
	p.once.Do(func() {
		p.cfg = cfg
		p.pool, p.err = ants.NewPool(cfg.Workers, ants.WithExpiryDuration(10*time.Second))
		if p.err != nil {
			return
		}
		netpoll.LinkBufferCap = cfg.BufferSize
		pool := p.pool
		p.err = netpoll.Configure(netpoll.Config{
			PollerNum:    cfg.Loops,
			BufferSize:   cfg.BufferSize,
			Runner:       func(_ context.Context, f func()) { submit(pool, f) },
			LoggerOutput: slogWriter{log},
		})
	})
	if p.err == nil && (cfg.Workers != p.cfg.Workers || cfg.BufferSize != p.cfg.BufferSize) {
		log.Info("poller: netpoll settings are process-wide; keeping the first poller's",
			"workers", p.cfg.Workers, "buffer_size", p.cfg.BufferSize)
	}
	return p.pool, p.err
}

// submit runs f on pool, blocking while every worker is busy (backpressure
// on the netpoll loop). It runs f inline if the pool was released.
func submit(pool *ants.Pool, f func()) {
	if err := pool.Submit(f); err != nil {
		f()
	}
}

type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn("netpoll", "msg", string(p))
	return len(p), nil
}

// Poller accepts connections on one listener.
type Poller struct {
	log  *slog.Logger
	h    Handler
	pool *ants.Pool
	wp   *writePoller

	ln     net.Listener
	loop   netpoll.EventLoop
	done   chan error
	conns  atomic.Int64
	stalls atomic.Int64

	tlsMu    sync.Mutex
	tlsLn    net.Listener
	tlsConns map[*TLSConn]struct{}
}

// New creates a Poller. It does not listen yet.
func New(cfg Config, h Handler, log *slog.Logger) (*Poller, error) {
	cfg.Normalize()
	pool, err := netpollProcess.setup(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("poller: setup: %w", err)
	}
	p := &Poller{log: log, h: h, pool: pool, done: make(chan error, 1)}
	p.wp, err = newWritePoller(func(f func()) { submit(pool, f) })
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Listen binds addr (host:port; port 0 picks one) and starts accepting.
func (p *Poller) Listen(network, addr string) error {
	ln, err := netpoll.CreateListener(network, addr)
	if err != nil {
		return fmt.Errorf("poller: listen %s: %w", addr, err)
	}
	loop, err := netpoll.NewEventLoop(p.onRequest, netpoll.WithOnPrepare(p.onPrepare))
	if err != nil {
		ln.Close()
		return fmt.Errorf("poller: event loop: %w", err)
	}
	p.ln, p.loop = ln, loop
	go func() { p.done <- loop.Serve(ln) }()
	go p.wp.run()
	return nil
}

// Addr returns the listening address.
func (p *Poller) Addr() net.Addr { return p.ln.Addr() }

// Pool returns the running workers and the capacity of the handler pool.
func (p *Poller) Pool() (running, capacity int) { return p.pool.Running(), p.pool.Cap() }

// WriteStalls returns how many times a socket's send buffer filled and a
// connection had to wait for write readiness.
func (p *Poller) WriteStalls() int64 { return p.stalls.Load() }

// Conns returns the number of open sockets.
func (p *Poller) Conns() int64 { return p.conns.Load() }

// Close stops accepting and closes every remaining socket now; callers that
// want a graceful close do it per connection first.
func (p *Poller) Close(ctx context.Context) error {
	var err error
	if p.loop != nil {
		err = p.loop.Shutdown(ctx)
		select {
		case <-p.done:
		case <-ctx.Done():
		}
	}
	p.closeTLS()
	p.wp.close()
	return err
}

func (p *Poller) onPrepare(nc netpoll.Connection) context.Context {
	netpollProcess.trim.trim(nc)
	c := &Conn{nc: nc, p: p, fd: int32(nc.(interface{ Fd() int }).Fd())}
	p.conns.Add(1)
	_ = nc.AddCloseCallback(c.onClosed)
	c.ev = p.h.Open(c)
	return c
}

func (p *Poller) onRequest(ctx context.Context, nc netpoll.Connection) error {
	c := ctx.(*Conn)
	r := nc.Reader()
	n := r.Len()
	if n == 0 {
		return nil
	}
	buf, err := r.Next(n)
	if err != nil {
		return err
	}
	c.ev.Feed(buf)
	return r.Release()
}

// Conn is one accepted socket. It implements conn.Transport and, to spare an
// allocation, the context.Context netpoll carries for it.
type Conn struct {
	ev   Events
	nc   netpoll.Connection
	p    *Poller
	fd   int32
	wreg atomic.Bool // registered with the write poller
}

// RemoteAddr returns the peer address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Close closes the socket; OnTransportClosed follows.
func (c *Conn) Close() error { return c.nc.Close() }

// CloseWrite shuts down the sending side (FIN) and keeps reading.
func (c *Conn) CloseWrite() error { return shutdownWrite(int(c.fd)) }

// WaitWritable arms one write-readiness notification (OnWritable).
func (c *Conn) WaitWritable() error {
	c.p.stalls.Add(1)
	return c.p.wp.arm(c)
}

// Writev writes without blocking; see conn.Transport.
func (c *Conn) Writev(bufs [][]byte) (int, error) { return writev(int(c.fd), bufs) }

func (c *Conn) onClosed(netpoll.Connection) error {
	if c.wreg.Load() {
		c.p.wp.remove(c)
	}
	c.p.conns.Add(-1)
	c.ev.OnTransportClosed()
	return nil
}

// context.Context, for netpoll's per-connection ctx.
func (c *Conn) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *Conn) Done() <-chan struct{}       { return nil }
func (c *Conn) Err() error                  { return nil }
func (c *Conn) Value(any) any               { return nil }

var errClosed = errors.New("poller: closed")

var _ io.Closer = (*Conn)(nil)
