package poller

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// TLS. netpoll has no TLS, so wss:// is served by a separate listener of
// ordinary goroutines: one reader goroutine per TLS connection (blocked in
// tls.Conn.Read, feeding the same conn state machine) and a writer goroutine
// only while bytes are being written. This costs a goroutine stack and
// crypto/tls's buffers per idle connection — several times the plain
// listener's cost (see docs/measurements.md) — so for very large
// deployments terminate TLS in a proxy in front of the plain listener (an
// nginx example is in tuning/README.md); the built-in listener is for
// deployments that want one binary.

// tlsWriteTimeout bounds one blocking TLS write; a peer that does not read
// for this long is closed as a failed write.
const tlsWriteTimeout = 30 * time.Second

// ListenTLS serves TLS on addr with cfg (use GetCertificate for reloads).
func (p *Poller) ListenTLS(addr string, cfg *tls.Config) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("poller: listen tls %s: %w", addr, err)
	}
	p.tlsMu.Lock()
	p.tlsLn = ln
	p.tlsConns = make(map[*TLSConn]struct{})
	p.tlsMu.Unlock()
	go p.acceptTLS(tls.NewListener(ln, cfg))
	return nil
}

// TLSAddr returns the TLS listener's address, or nil.
func (p *Poller) TLSAddr() net.Addr {
	p.tlsMu.Lock()
	defer p.tlsMu.Unlock()
	if p.tlsLn == nil {
		return nil
	}
	return p.tlsLn.Addr()
}

func (p *Poller) acceptTLS(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.log.Warn("tls accept", "err", err)
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off
			continue
		}
		tc := &TLSConn{c: c.(*tls.Conn), p: p}
		p.tlsMu.Lock()
		if p.tlsConns == nil { // closing
			p.tlsMu.Unlock()
			c.Close()
			continue
		}
		p.tlsConns[tc] = struct{}{}
		p.tlsMu.Unlock()
		p.conns.Add(1)
		tc.ev = p.h.Open(tc)
		go tc.readLoop()
	}
}

// closeTLS stops the TLS listener and closes its connections.
func (p *Poller) closeTLS() {
	p.tlsMu.Lock()
	ln, conns := p.tlsLn, p.tlsConns
	p.tlsConns = nil
	p.tlsMu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for c := range conns {
		c.Close()
	}
}

// TLSConn is one TLS connection; it implements conn.Transport.
type TLSConn struct {
	c  *tls.Conn
	p  *Poller
	ev Events

	mu         sync.Mutex
	pending    [][]byte // handed to the writer goroutine
	writing    bool
	wantWrite  bool // WaitWritable armed while writing
	closeWrite bool // CloseWrite requested while writing
	closed     bool
}

// RemoteAddr returns the peer address.
func (t *TLSConn) RemoteAddr() net.Addr { return t.c.RemoteAddr() }

func (t *TLSConn) readLoop() {
	buf := make([]byte, 2048)
	for {
		n, err := t.c.Read(buf)
		if n > 0 {
			t.ev.Feed(buf[:n])
		}
		if err != nil {
			break
		}
	}
	t.Close()
	t.p.tlsMu.Lock()
	if t.p.tlsConns != nil {
		delete(t.p.tlsConns, t)
	}
	t.p.tlsMu.Unlock()
	t.p.conns.Add(-1)
	t.ev.OnTransportClosed() // after the last Feed: never overlaps it
}

// Writev hands bufs to a writer goroutine and reports them written; while a
// write is in progress it reports 0 (a full socket) so the caller queues.
func (t *TLSConn) Writev(bufs [][]byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, net.ErrClosed
	}
	if t.writing {
		return 0, nil
	}
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	t.pending = append(t.pending[:0], bufs...)
	t.writing = true
	go t.writeLoop()
	return n, nil
}

func (t *TLSConn) writeLoop() {
	t.mu.Lock()
	bufs := t.pending
	t.mu.Unlock()
	var err error
	for _, b := range bufs {
		t.c.SetWriteDeadline(time.Now().Add(tlsWriteTimeout))
		if _, err = t.c.Write(b); err != nil {
			break
		}
	}
	t.mu.Lock()
	clear(t.pending)
	t.pending = t.pending[:0]
	t.writing = false
	notify := t.wantWrite
	t.wantWrite = false
	if err == nil && t.closeWrite {
		t.closeWrite = false
		err = t.c.CloseWrite()
	}
	t.mu.Unlock()
	if err != nil {
		t.Close()
		return
	}
	if notify {
		t.ev.OnWritable()
	}
}

// WaitWritable arms one OnWritable for when the current write finishes.
func (t *TLSConn) WaitWritable() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return net.ErrClosed
	}
	if t.writing {
		t.wantWrite = true
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()
	go t.ev.OnWritable()
	return nil
}

// CloseWrite sends close_notify once pending writes are done.
func (t *TLSConn) CloseWrite() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.writing {
		t.closeWrite = true
		return nil
	}
	return t.c.CloseWrite()
}

// Close closes the connection; the reader then reports OnTransportClosed.
func (t *TLSConn) Close() error {
	t.mu.Lock()
	already := t.closed
	t.closed = true
	t.mu.Unlock()
	if already {
		return nil
	}
	return t.c.Close()
}
