package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// controlWriteTimeout bounds one control-frame write (pong, close).
const controlWriteTimeout = 5 * time.Second

// errControlTooLong: RFC 6455 §5.5 limits control frame payloads to 125
// bytes.
var errControlTooLong = errors.New("loadtest: control frame payload over 125 bytes")

// clientConn is one client WebSocket connection held by a scenario.
//
// In goroutine mode exactly one goroutine, the reader, calls readFrame; any
// goroutine may call writeControl (writes are serialised by wmu). The
// connection keeps only a 128-byte buffer of its own: frames are read
// straight from the socket.
//
// In event-loop mode (newFdConn) nc is nil and the connection owns the
// socket descriptor fd instead: its loop reads it, and writes go straight
// to it, non-blocking.
type clientConn struct {
	nc net.Conn
	// r is nc, or nc behind the few bytes the handshake read past the 101
	// response.
	r io.Reader

	wmu sync.Mutex // serialises frame writes on nc or fd
	// fd is the socket in event-loop mode; -1 once closed, and always in
	// goroutine mode. Changed (by the loop, which alone closes it) only
	// with wmu held; others read it only with wmu held.
	fd int

	// closing is set once the generator has sent its own close frame; from
	// then on a close frame from the server is the handshake's answer, and a
	// read error is expected.
	closing atomic.Bool

	// buf holds a frame header, then a control payload. Reader goroutine only.
	buf [128]byte
}

// newClientConn wraps a dialed connection. br is the reader gobwas returned
// from the handshake (non-nil only when the server sent bytes right behind
// the 101 response); its buffered bytes are copied and the pooled reader is
// returned at once, so no 4 KiB buffer stays with the connection.
func newClientConn(nc net.Conn, br *bufio.Reader) *clientConn {
	c := &clientConn{nc: nc, r: nc, fd: -1}
	if br != nil {
		pending := make([]byte, br.Buffered())
		n, _ := io.ReadFull(br, pending)
		ws.PutReader(br)
		c.r = io.MultiReader(bytes.NewReader(pending[:n]), nc)
	}
	return c
}

// writeControl writes one masked control frame (RFC 6455 §5.3: every frame
// a client sends is masked) in a single write.
func (c *clientConn) writeControl(op ws.OpCode, payload []byte) error {
	if len(payload) > 125 {
		return errControlTooLong
	}
	var b [6 + 125]byte
	b[0] = 0x80 | byte(op) // FIN + opcode
	b[1] = 0x80 | byte(len(payload))
	mask := ws.NewMask()
	copy(b[2:6], mask[:])
	n := copy(b[6:], payload)
	ws.Cipher(b[6:6+n], mask, 0)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.nc == nil {
		return writeFd(c.fd, b[:6+n])
	}
	if err := c.nc.SetWriteDeadline(time.Now().Add(controlWriteTimeout)); err != nil {
		return err
	}
	_, err := c.nc.Write(b[:6+n])
	return err
}

// writeClose sends a close frame with code (and no reason). code 0 sends an
// empty body, as RFC 6455 §5.5.1 allows and as the echo of a close that
// carried no status must be.
func (c *clientConn) writeClose(code ws.StatusCode) error {
	if code == 0 || code == ws.StatusNoStatusRcvd {
		return c.writeControl(ws.OpClose, nil)
	}
	var body [2]byte
	binary.BigEndian.PutUint16(body[:], uint16(code))
	return c.writeControl(ws.OpClose, body[:])
}

// frameEvent is what the reader saw in one frame.
type frameEvent int

const (
	evPing frameEvent = iota + 1
	evPong
	evData
	evClose
)

// readFrame reads one frame. For data frames it discards the payload and
// returns its length; for a ping it answers with a pong carrying the same
// payload (RFC 6455 §5.5.2–5.5.3); for a close it returns the status code
// (1005 when the frame had none, §7.1.5). Reader goroutine only.
func (c *clientConn) readFrame() (ev frameEvent, n int64, code ws.StatusCode, err error) {
	h, err := ws.ReadHeaderBuffer(c.r, c.buf[:])
	if err != nil {
		return 0, 0, 0, err
	}
	if h.Masked {
		// RFC 6455 §5.1: a client must fail a connection whose server frames
		// are masked.
		return 0, 0, ws.StatusProtocolError, ws.ErrProtocolMaskUnexpected
	}
	if h.OpCode.IsControl() {
		// §5.5: control frames are ≤ 125 bytes and never fragmented.
		if h.Length > 125 {
			return 0, 0, ws.StatusProtocolError, ws.ErrProtocolControlPayloadOverflow
		}
		if !h.Fin {
			return 0, 0, ws.StatusProtocolError, ws.ErrProtocolControlNotFinal
		}
		p := c.buf[:h.Length]
		if _, err := io.ReadFull(c.r, p); err != nil {
			return 0, 0, 0, err
		}
		switch h.OpCode {
		case ws.OpPing:
			return evPing, h.Length, 0, c.writeControl(ws.OpPong, p)
		case ws.OpPong:
			return evPong, h.Length, 0, nil
		case ws.OpClose:
			if len(p) < 2 {
				return evClose, h.Length, ws.StatusNoStatusRcvd, nil
			}
			return evClose, h.Length, ws.StatusCode(binary.BigEndian.Uint16(p)), nil
		default:
			return 0, 0, ws.StatusProtocolError, ws.ErrProtocolOpCodeReserved
		}
	}
	if h.OpCode.IsReserved() {
		return 0, 0, ws.StatusProtocolError, ws.ErrProtocolOpCodeReserved
	}
	if _, err := io.CopyN(io.Discard, c.r, h.Length); err != nil {
		return 0, 0, 0, err
	}
	return evData, h.Length, 0, nil
}

// errMessageTooBig: a data message longer than the reader allows (closed
// with 1009, RFC 6455 §7.4.1).
var errMessageTooBig = errors.New("loadtest: message too big")

// message is one complete data message read by readMessage.
type message struct {
	op ws.OpCode // ws.OpText or ws.OpBinary
	// compressed is RSV1 of the message's first frame: the payload is
	// deflated (RFC 7692 §6).
	compressed bool
	payload    []byte
}

// readMessage reads frames until it has one complete data message,
// answering pings and skipping pongs on the way as readFrame does. It
// returns evData and the message, or evClose and the close status code.
//
// A connection waiting for data holds no payload buffer: one is taken from
// pool (which holds *[]byte) only once the first data frame header has
// arrived. The message's payload lives in *buf, which the caller must return
// to pool when done with the payload; buf is nil unless ev is evData.
// Messages over maxSize bytes fail with errMessageTooBig and code 1009.
// allowRSV1 permits compressed messages (permessage-deflate negotiated).
// Reader goroutine only.
func (c *clientConn) readMessage(pool *sync.Pool, maxSize int64, allowRSV1 bool) (ev frameEvent, m message, buf *[]byte, code ws.StatusCode, err error) {
	fail := func(code ws.StatusCode, err error) (frameEvent, message, *[]byte, ws.StatusCode, error) {
		if buf != nil {
			pool.Put(buf)
		}
		return 0, message{}, nil, code, err
	}
	for {
		h, err := ws.ReadHeaderBuffer(c.r, c.buf[:])
		if err != nil {
			return fail(0, err)
		}
		switch {
		case h.Masked:
			// RFC 6455 §5.1: server frames are never masked.
			return fail(ws.StatusProtocolError, ws.ErrProtocolMaskUnexpected)
		case h.Rsv2() || h.Rsv3(), h.Rsv1() && (!allowRSV1 || h.OpCode.IsControl() || h.OpCode == ws.OpContinuation):
			// §5.2, and RFC 7692 §6: RSV1 only on the first frame of a
			// data message, and only when deflate was negotiated.
			return fail(ws.StatusProtocolError, ws.ErrProtocolNonZeroRsv)
		case h.OpCode.IsReserved():
			return fail(ws.StatusProtocolError, ws.ErrProtocolOpCodeReserved)
		}
		if h.OpCode.IsControl() {
			// Control frames may come between the fragments of a message
			// (§5.4).
			if h.Length > 125 {
				return fail(ws.StatusProtocolError, ws.ErrProtocolControlPayloadOverflow)
			}
			if !h.Fin {
				return fail(ws.StatusProtocolError, ws.ErrProtocolControlNotFinal)
			}
			p := c.buf[:h.Length]
			if _, err := io.ReadFull(c.r, p); err != nil {
				return fail(0, err)
			}
			switch h.OpCode {
			case ws.OpPing:
				if err := c.writeControl(ws.OpPong, p); err != nil {
					return fail(0, err)
				}
			case ws.OpClose:
				code := ws.StatusNoStatusRcvd
				if len(p) >= 2 {
					code = ws.StatusCode(binary.BigEndian.Uint16(p))
				}
				if buf != nil {
					pool.Put(buf)
				}
				return evClose, message{}, nil, code, nil
			}
			continue
		}
		if h.OpCode == ws.OpContinuation {
			if buf == nil {
				return fail(ws.StatusProtocolError, ws.ErrProtocolContinuationUnexpected)
			}
		} else {
			if buf != nil {
				return fail(ws.StatusProtocolError, ws.ErrProtocolContinuationExpected)
			}
			m = message{op: h.OpCode, compressed: h.Rsv1()}
			buf = pool.Get().(*[]byte)
			*buf = (*buf)[:0]
		}
		have := int64(len(*buf))
		if h.Length > maxSize-have {
			return fail(ws.StatusMessageTooBig, errMessageTooBig)
		}
		*buf = slices.Grow(*buf, int(h.Length))[:have+h.Length]
		if _, err := io.ReadFull(c.r, (*buf)[have:]); err != nil {
			return fail(0, err)
		}
		if h.Fin {
			m.payload = *buf
			return evData, m, buf, 0, nil
		}
	}
}

// writeText writes p as one masked text frame (RFC 6455 §5.3). It masks p in
// place: p is garbage afterwards. Safe for concurrent use with writeControl.
func (c *clientConn) writeText(p []byte, timeout time.Duration) error {
	mask := ws.NewMask()
	h := ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Mask: mask, Length: int64(len(p))}
	var hb [ws.MaxHeaderSize]byte
	hw := bytes.NewBuffer(hb[:0])
	if err := ws.WriteHeader(hw, h); err != nil {
		return err
	}
	ws.Cipher(p, mask, 0)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.nc == nil {
		return writeFd(c.fd, hw.Bytes(), p)
	}
	if err := c.nc.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	bufs := net.Buffers{hw.Bytes(), p}
	_, err := bufs.WriteTo(c.nc)
	return err
}

// abort ends the connection without a close handshake, from any goroutine:
// the reader then sees EOF or an error. In event-loop mode the socket is
// shut down, not closed, so that its loop, which owns the descriptor,
// closes it.
func (c *clientConn) abort() {
	if c.nc != nil {
		_ = c.nc.Close()
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.fd >= 0 {
		_ = shutdownFd(c.fd)
	}
}

// newDialers returns one WebSocket dialer per source address (or one that
// lets the kernel choose, when sources is empty). Every dialer connects to
// addr, the address checked when the target was resolved, never to a fresh
// lookup of the URL's host. Client sockets send no TCP keepalives: load
// clients that stay idle behave as browsers do.
func newDialers(addr netip.AddrPort, sources []netip.Addr, timeout time.Duration) []ws.Dialer {
	a := addr.String()
	mk := func(nd *net.Dialer) ws.Dialer {
		return ws.Dialer{
			Timeout: timeout,
			NetDial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return nd.DialContext(ctx, "tcp", a)
			},
		}
	}
	if len(sources) == 0 {
		return []ws.Dialer{mk(&net.Dialer{KeepAlive: -1})}
	}
	ds := make([]ws.Dialer, 0, len(sources))
	for _, src := range sources {
		ds = append(ds, mk(&net.Dialer{
			KeepAlive: -1,
			LocalAddr: &net.TCPAddr{IP: src.Unmap().AsSlice()},
			Control:   bindNoPort,
		}))
	}
	return ds
}
