package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// Client loops: how the subscriber side of the clients reads its sockets.
//
//   - goroutine: one goroutine per connection blocking in net.Conn reads
//     (Go's netpoller). Every platform.
//   - epoll (Linux, the default there): after the WebSocket handshake the
//     socket leaves Go's netpoller (its descriptor is duplicated, the
//     net.Conn closed) and joins one of a few epoll event loops
//     (evloop_linux.go). A loop does one read per readiness into a buffer
//     it shares with all its connections and parses every complete frame in
//     it (loopConn.feed); a connection keeps only the few bytes of a frame
//     split across reads. One read syscall per batch of messages instead of
//     two per message, and no goroutine, stack or read buffer per
//     connection.
const (
	ClientLoopGoroutine = "goroutine"
	ClientLoopEpoll     = "epoll"
)

// errClientLoop: an unknown or unsupported client loop.
var errClientLoop = errors.New("loadtest: unsupported client loop")

// resolveClientLoop returns the client loop mode s names ("" means the
// platform's default).
func resolveClientLoop(s string) (string, error) {
	switch s {
	case "":
		return defaultClientLoop, nil
	case ClientLoopGoroutine:
		return s, nil
	case ClientLoopEpoll:
		if haveEpoll {
			return s, nil
		}
	}
	return "", fmt.Errorf("%w %q (%q, or %q on Linux)", errClientLoop, s, ClientLoopGoroutine, ClientLoopEpoll)
}

// clientLoops is how many event loops serve conns connections: one per
// GOMAXPROCS.
func clientLoops(conns int) int {
	return max(1, min(runtime.GOMAXPROCS(0), conns))
}

// loopReadBuffer is the size of each event loop's shared read buffer.
const loopReadBuffer = 64 << 10

// loopHandler receives what an event loop reads on one connection. Its
// methods are called on that connection's loop goroutine only (and, for
// bytes the handshake read past the 101 response, once on the goroutine
// that adds the connection, before the loop sees it), never concurrently
// for one connection.
type loopHandler interface {
	// onMessage is one complete data message, received at now: when the
	// read that completed it returned. m.payload is valid only until
	// onMessage returns (it may alias the loop's read buffer). In discard
	// mode m.payload is nil and n is the data frame's payload length.
	onMessage(m message, n int64, now time.Time)
	// onPing is a ping the loop has answered with a pong.
	onPing()
	// onEnd is called once when the connection is over: the server's close
	// frame with code and err nil, or err (code: the status the client
	// failed the connection with, or 0). The loop has already answered a
	// close frame, sent a failing status and closed the socket.
	onEnd(code ws.StatusCode, err error)
}

// loopOpts is what all the connections of one run share.
type loopOpts struct {
	// pool holds *[]byte buffers for messages that span reads or frames.
	pool *sync.Pool
	// maxMsg is the longest data message accepted (longer: closed with
	// 1009).
	maxMsg int64
	// discard makes data frames counted and skipped rather than assembled
	// into messages: the idle scenario's readFrame semantics (no RSV or
	// fragmentation checks).
	discard bool
}

// loopConn is one connection on an event loop: its socket (in c) and the
// state of a frame or message split across reads. All fields but c's write
// side belong to the loop goroutine.
type loopConn struct {
	c    *clientConn
	h    loopHandler
	opts *loopOpts
	// rsv1 permits compressed messages (permessage-deflate negotiated).
	rsv1 bool

	hdrN    uint8                  // bytes of a split header in hdr
	inFrame bool                   // cur's payload is being read
	inMsg   bool                   // a data message spans frames or reads: in msg
	msgOp   ws.OpCode              // the message's opcode
	msgRSV1 bool                   // the message's first frame had RSV1
	hdr     [ws.MaxHeaderSize]byte // a header split across reads
	cur     ws.Header              // the frame being read
	remain  int64                  // payload bytes of cur still to come
	ctl     []byte                 // a control payload split across reads; nil otherwise
	msg     *[]byte                // from opts.pool while inMsg
}

// parseFrameHeader parses the RFC 6455 §5.2 frame header at the start of p.
// n is the header's length, 0 when p holds only part of it. The checks
// are those of ws.ReadHeader.
func parseFrameHeader(p []byte) (h ws.Header, n int, err error) {
	if len(p) < 2 {
		return h, 0, nil
	}
	h.Fin = p[0]&0x80 != 0
	h.Rsv = (p[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(p[0] & 0x0f)
	h.Masked = p[1]&0x80 != 0
	n = 2
	l := p[1] & 0x7f
	switch l {
	case 126:
		n += 2
	case 127:
		n += 8
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		n += 4
	}
	if len(p) < n {
		return ws.Header{}, 0, nil
	}
	switch l {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(p[2:4]))
	case 127:
		if p[2]&0x80 != 0 {
			return ws.Header{}, 0, ws.ErrHeaderLengthMSB
		}
		h.Length = int64(binary.BigEndian.Uint64(p[2:10]))
	}
	if h.Masked {
		copy(h.Mask[:], p[n-4:n])
	}
	return h, n, nil
}

// feed parses b, the bytes one read returned at now, handing complete
// messages and pings to lc.h and answering pings. done reports that the
// connection is over (a close frame: code and err nil; or a protocol
// error: its code and err; bytes after it are ignored). Loop goroutine
// only.
func (lc *loopConn) feed(b []byte, now time.Time) (done bool, code ws.StatusCode, err error) {
	for len(b) > 0 {
		if !lc.inFrame {
			var h ws.Header
			var n int
			if lc.hdrN > 0 {
				k := copy(lc.hdr[lc.hdrN:], b)
				h, n, err = parseFrameHeader(lc.hdr[:int(lc.hdrN)+k])
				if err != nil {
					return true, 0, err
				}
				if n == 0 {
					lc.hdrN += uint8(k) // k == len(b): 14 bytes always hold a header
					return false, 0, nil
				}
				b = b[n-int(lc.hdrN):]
				lc.hdrN = 0
			} else {
				h, n, err = parseFrameHeader(b)
				if err != nil {
					return true, 0, err
				}
				if n == 0 {
					lc.hdrN = uint8(copy(lc.hdr[:], b))
					return false, 0, nil
				}
				b = b[n:]
			}
			if code, err := lc.begin(h, int64(len(b))); err != nil {
				return true, code, err
			}
		}
		var p []byte
		var fin bool
		if b, p, fin = lc.payload(b); !fin {
			return false, 0, nil
		}
		if done, code, err := lc.frameDone(p, now); done {
			return true, code, err
		}
	}
	return false, 0, nil
}

// begin checks the header of a new frame (RFC 6455 §5.2–5.5, RFC 7692 §6;
// the checks of clientConn.readMessage, or of readFrame in discard mode)
// and prepares for its payload; avail is how many bytes of it the current
// read holds.
func (lc *loopConn) begin(h ws.Header, avail int64) (ws.StatusCode, error) {
	switch {
	case h.Masked:
		// §5.1: server frames are never masked.
		return ws.StatusProtocolError, ws.ErrProtocolMaskUnexpected
	case lc.opts.discard:
	case h.Rsv2() || h.Rsv3(), h.Rsv1() && (!lc.rsv1 || h.OpCode.IsControl() || h.OpCode == ws.OpContinuation):
		return ws.StatusProtocolError, ws.ErrProtocolNonZeroRsv
	}
	if h.OpCode.IsReserved() {
		return ws.StatusProtocolError, ws.ErrProtocolOpCodeReserved
	}
	lc.cur, lc.remain, lc.inFrame = h, h.Length, true
	if h.OpCode.IsControl() {
		// §5.5: control frames are ≤ 125 bytes and never fragmented; they
		// may come between the fragments of a message (§5.4).
		if h.Length > 125 {
			return ws.StatusProtocolError, ws.ErrProtocolControlPayloadOverflow
		}
		if !h.Fin {
			return ws.StatusProtocolError, ws.ErrProtocolControlNotFinal
		}
		if avail < h.Length {
			lc.ctl = make([]byte, 0, h.Length)
		}
		return 0, nil
	}
	if lc.opts.discard {
		return 0, nil
	}
	if h.OpCode == ws.OpContinuation {
		if !lc.inMsg {
			return ws.StatusProtocolError, ws.ErrProtocolContinuationUnexpected
		}
	} else {
		if lc.inMsg {
			return ws.StatusProtocolError, ws.ErrProtocolContinuationExpected
		}
		if h.Length > lc.opts.maxMsg {
			return ws.StatusMessageTooBig, errMessageTooBig
		}
		if h.Fin && avail >= h.Length {
			return 0, nil // the whole message is in this read: no copy
		}
		lc.inMsg, lc.msgOp, lc.msgRSV1 = true, h.OpCode, h.Rsv1()
		lc.msg = lc.opts.pool.Get().(*[]byte)
		*lc.msg = (*lc.msg)[:0]
	}
	have := int64(len(*lc.msg))
	if h.Length > lc.opts.maxMsg-have {
		return ws.StatusMessageTooBig, errMessageTooBig
	}
	*lc.msg = slices.Grow(*lc.msg, int(h.Length))
	return 0, nil
}

// payload takes what b holds of the current frame's payload; fin reports
// that the frame is complete, and p is then its payload: in b (a message
// that came in one read, or a control frame that did), in lc.ctl, or in
// lc.msg (the message assembled so far; nil in discard mode).
func (lc *loopConn) payload(b []byte) (rest, p []byte, fin bool) {
	k := min(lc.remain, int64(len(b)))
	p = b[:k]
	switch {
	case lc.cur.OpCode.IsControl():
		if lc.ctl != nil {
			lc.ctl = append(lc.ctl, p...)
			p = lc.ctl
		}
	case lc.opts.discard:
		p = nil
	case lc.inMsg:
		*lc.msg = append(*lc.msg, p...)
		p = *lc.msg
	}
	lc.remain -= k
	if lc.remain > 0 {
		return b[k:], nil, false
	}
	lc.inFrame = false
	return b[k:], p, true
}

// frameDone acts on the frame whose payload p has just been read
// completely: answers a ping, ends the connection on a close, hands a
// complete message to the handler.
func (lc *loopConn) frameDone(p []byte, now time.Time) (done bool, code ws.StatusCode, err error) {
	h := lc.cur
	switch h.OpCode {
	case ws.OpPing:
		lc.ctl = nil
		// §5.5.2–5.5.3: answer with a pong carrying the same payload.
		if err := lc.c.writeControl(ws.OpPong, p); err != nil {
			return true, 0, err
		}
		lc.h.onPing()
		return false, 0, nil
	case ws.OpPong:
		lc.ctl = nil
		return false, 0, nil
	case ws.OpClose:
		lc.ctl = nil
		// §7.1.5: a close without a status counts as 1005.
		if len(p) < 2 {
			return true, ws.StatusNoStatusRcvd, nil
		}
		return true, ws.StatusCode(binary.BigEndian.Uint16(p)), nil
	}
	switch {
	case lc.opts.discard:
		lc.h.onMessage(message{op: h.OpCode}, h.Length, now)
	case !h.Fin:
	case lc.inMsg:
		lc.h.onMessage(message{op: lc.msgOp, compressed: lc.msgRSV1, payload: p}, int64(len(p)), now)
		lc.release()
	default:
		lc.h.onMessage(message{op: h.OpCode, compressed: h.Rsv1(), payload: p}, int64(len(p)), now)
	}
	return false, 0, nil
}

// release returns the message buffer, if any, to the pool.
func (lc *loopConn) release() {
	if lc.msg != nil {
		lc.opts.pool.Put(lc.msg)
	}
	lc.msg, lc.inMsg, lc.ctl = nil, false, nil
}
