package loadtest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
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
// Exactly one goroutine, the reader, calls readFrame; any goroutine may call
// writeControl (writes are serialised by wmu). The connection keeps only a
// 128-byte buffer of its own: frames are read straight from the socket.
type clientConn struct {
	nc net.Conn
	// r is nc, or nc behind the few bytes the handshake read past the 101
	// response.
	r io.Reader

	wmu sync.Mutex // serialises frame writes on nc

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
	c := &clientConn{nc: nc, r: nc}
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
