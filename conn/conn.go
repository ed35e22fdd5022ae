package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Transport is the socket under a Conn. Implementations must be safe for use
// by one goroutine at a time (Conn serialises writes under its lock).
type Transport interface {
	// Writev writes as much of bufs as the socket takes without blocking and
	// returns the byte count. A full socket is (n < total, nil), not an error.
	Writev(bufs [][]byte) (int, error)
	// WaitWritable arms one notification: the transport calls
	// Conn.OnWritable once the socket can take more bytes.
	WaitWritable() error
	// CloseWrite shuts down the sending side (TCP FIN) after everything
	// written so far, leaving the socket open to read the peer's remaining
	// bytes, so that unread input does not turn the close into a reset that
	// can destroy the close frame in flight (a "lingering close").
	CloseWrite() error
	// Close closes the socket. The transport then calls
	// Conn.OnTransportClosed exactly once (also when the peer closes first).
	// Close must not be called with the Conn's lock held.
	Close() error
}

// Handler receives a connection's events. Calls for one Conn never overlap.
type Handler interface {
	// ServeHTTP is called for each complete HTTP request while the
	// connection is in its HTTP phase. raw holds the head and body; it and
	// head's slices are valid only until ServeHTTP returns. The handler
	// answers by calling exactly one of c.Upgrade, c.WriteHTTP or c.RejectHTTP.
	ServeHTTP(c *Conn, head *RequestHead, raw []byte)
	// OnMessage is called for each complete text or binary message.
	// payload is valid only until OnMessage returns.
	OnMessage(c *Conn, op ws.OpCode, payload []byte)
	// OnClose is called exactly once, after the socket is closed.
	OnClose(c *Conn, reason Reason)
}

const (
	stateHTTP    = iota // request phase: handshake or plain HTTP API
	stateOpen           // WebSocket open
	stateClosing        // close frame queued; parse only a close reply
	stateClosed
)

const (
	flagPingOut     = 1 << iota // a ping is unanswered
	flagWaitWrite               // WaitWritable armed
	flagCloseFlush              // close the socket as soon as the queue drains
	flagCloseReply              // waiting for the peer's close frame
	flagDiscardRead             // the connection failed: ignore further input
	flagNotified                // OnClose was called
	flagServedHTTP              // at least one HTTP request was answered (keep-alive)
	flagHalfClosed              // CloseWrite was called
	flagDeflate                 // permessage-deflate negotiated
)

// action is what a caller must do with the transport after unlocking.
type action uint8

const (
	actNone  action = iota
	actAbort        // close the socket now
)

// do performs a; it must be called without c.mu held. An abort is never
// performed inline: callers may be inside Feed or a fan-out holding topic
// locks, and closing the transport calls OnTransportClosed and OnClose.
func (c *Conn) do(a action) { c.deferAbort(a) }

var errBadVersion = errors.New("conn: unsupported Sec-WebSocket-Version")

// Conn is one server-side connection. It costs about 100 bytes while idle:
// read state and write queue exist only while a frame is partial or bytes
// wait for the socket.
type Conn struct {
	mu  sync.Mutex
	t   Transport
	h   Handler
	cfg *Config
	w   *Wheel

	state  atomic.Uint32
	flags  uint16 // guarded by mu
	reason Reason

	rd *readState  // owned by the reading goroutine (Feed)
	wq *writeQueue // guarded by mu

	lastRead atomic.Int64 // wheel ms of the last byte received
	mark     int64        // wheel ms: ping sent at / close deadline; guarded by mu
	expires  int64        // wheel ms at which the connection's credentials expire (0: never); guarded by mu

	// Heartbeat wheel links, guarded by Wheel.mu.
	hbPrev, hbNext *Conn
	hbSlot         int32
}

type readState struct {
	http []byte // partial HTTP request

	hdr  [ws.MaxHeaderSize]byte // partial frame header
	hdrN int

	inFrame   bool      // within a frame's payload
	fh        ws.Header // that frame
	remaining int64     // payload bytes of fh still to come
	done      int64     // payload bytes of fh already seen (mask offset)

	fragmented bool      // a fragmented data message is being assembled
	fragOp     ws.OpCode // its opcode
	msg        []byte    // data payload assembled so far
	checked    int       // bytes of msg known to be complete valid UTF-8 (text)
	compressed bool      // the message being assembled has RSV1 (permessage-deflate)
	inflated   []byte    // inflation buffer
	ctl        [ws.MaxControlFramePayloadSize]byte
	ctlN       int
}

func (r *readState) idle() bool {
	return len(r.http) == 0 && r.hdrN == 0 && !r.inFrame && !r.fragmented
}

type writeQueue struct {
	bufs    [][]byte    // bufs[head:] wait for the socket; bufs[head] may be a tail
	meta    []entryMeta // parallel to bufs
	head    int
	bytes   int
	partial bool // bufs[head] is partly written and must not be dropped
}

// entryMeta describes a queued frame for the overflow policies.
type entryMeta struct {
	key uint64 // conflation key (messages only)
	msg bool   // a droppable message, not a reply, control frame or handshake
}

// New returns a connection in its HTTP phase, scheduled on w for the
// handshake deadline. cfg must be normalized and shared, not copied.
func New(t Transport, h Handler, cfg *Config, w *Wheel) *Conn {
	c := new(Conn)
	c.Init(t, h, cfg, w)
	return c
}

// Init is New for a Conn embedded in a larger per-connection object, which
// saves an allocation. It must be called once, before any other method.
func (c *Conn) Init(t Transport, h Handler, cfg *Config, w *Wheel) {
	c.t, c.h, c.cfg, c.w = t, h, cfg, w
	now := w.Now()
	c.lastRead.Store(now)
	c.mark = now + cfg.HandshakeTimeout.Milliseconds()
	w.Add(c, c.mark)
}

// SetExpiry closes the open connection with 1008 "token expired"
// (ReasonPolicy) at t, checked by the heartbeat wheel.
func (c *Conn) SetExpiry(t time.Time) {
	at := c.w.At(t)
	c.mu.Lock()
	c.expires = max(at, 1)
	c.mu.Unlock()
	c.w.Add(c, at)
}

// RemoteAddr returns the peer address when the transport knows it, else "".
func (c *Conn) RemoteAddr() string {
	if a, ok := c.t.(interface{ RemoteAddr() net.Addr }); ok {
		if addr := a.RemoteAddr(); addr != nil {
			return addr.String()
		}
	}
	return ""
}

// Open reports whether the WebSocket is open (upgraded and not closing).
func (c *Conn) Open() bool { return c.state.Load() == stateOpen }

// Closed reports whether the socket is closed.
func (c *Conn) Closed() bool { return c.state.Load() == stateClosed }

// Reason returns why the connection closed, or ReasonNone while open.
func (c *Conn) Reason() Reason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// Feed consumes bytes received from the socket. It keeps any partial
// request, header, frame or message in the connection and resumes on the
// next call, so p may be split anywhere. p may be modified in place (frames
// are unmasked in it) and is not retained after Feed returns.
// Feed must not be called concurrently with itself.
func (c *Conn) Feed(p []byte) {
	c.lastRead.Store(c.w.Now())
	for len(p) > 0 {
		switch c.state.Load() {
		case stateHTTP:
			p = c.feedHTTP(p)
		case stateOpen, stateClosing:
			if c.discarding() {
				p = nil
				break
			}
			p = c.feedFrames(p)
		default:
			p = nil
		}
	}
	if rd := c.rd; rd != nil && rd.idle() {
		c.rd = nil
		c.cfg.putReadState(rd)
	}
}

func (c *Conn) discarding() bool {
	c.mu.Lock()
	d := c.flags&flagDiscardRead != 0
	c.mu.Unlock()
	return d
}

func (c *Conn) readState() *readState {
	if c.rd == nil {
		c.rd = c.cfg.getReadState()
	}
	return c.rd
}

// feedHTTP handles the request phase and returns the bytes it did not use.
func (c *Conn) feedHTTP(p []byte) []byte {
	buffered := c.rd != nil && len(c.rd.http) > 0
	if buffered {
		c.rd.http = append(c.rd.http, p...)
		p = c.rd.http
	}
	n := ScanHead(p)
	if n == 0 || n > c.cfg.MaxHeaderBytes {
		if len(p) > c.cfg.MaxHeaderBytes || n > c.cfg.MaxHeaderBytes {
			c.RejectHTTP(&HTTPError{Status: http.StatusRequestHeaderFieldsTooLarge, Msg: "request header too large"})
			return nil
		}
		if !buffered {
			rd := c.readState()
			rd.http = append(rd.http[:0], p...)
		}
		return nil
	}
	head, err := ParseHead(p[:n])
	if err != nil {
		var he *HTTPError
		if !errors.As(err, &he) {
			he = &HTTPError{Status: http.StatusBadRequest, Msg: err.Error()}
		}
		c.RejectHTTP(he)
		return nil
	}
	total := n
	switch {
	case head.Chunked:
		c.RejectHTTP(&HTTPError{Status: http.StatusLengthRequired, Msg: "chunked request bodies are not supported; send Content-Length"})
		return nil
	case head.ContentLength > c.cfg.MaxBodyBytes:
		c.RejectHTTP(&HTTPError{Status: http.StatusRequestEntityTooLarge, Msg: "request body too large"})
		return nil
	case head.ContentLength > 0:
		total += int(head.ContentLength)
	}
	if len(p) < total {
		if !buffered {
			rd := c.readState()
			rd.http = append(rd.http[:0], p...)
		}
		return nil
	}
	rest := p[total:]
	c.h.ServeHTTP(c, &head, p[:total])
	if buffered {
		// rest aliases rd.http: detach it before the buffer is reused.
		if len(rest) > 0 {
			rest = append([]byte(nil), rest...)
		}
		c.rd.http = c.rd.http[:0]
		if cap(c.rd.http) > 4<<10 {
			c.rd.http = nil
		}
	}
	return rest
}

// feedFrames parses frames from p and returns what it did not consume
// (non-empty only when the state changed under it).
func (c *Conn) feedFrames(p []byte) []byte {
	for len(p) > 0 {
		if c.state.Load() == stateClosed {
			return nil
		}
		if rd := c.rd; rd != nil && rd.inFrame {
			p = c.continuePayload(p)
			continue
		}
		var (
			h   ws.Header
			n   int
			err error
		)
		if rd := c.rd; rd != nil && rd.hdrN > 0 {
			k := copy(rd.hdr[rd.hdrN:], p)
			h, n, err = ParseHeader(rd.hdr[:rd.hdrN+k])
			if err == nil && n == 0 {
				rd.hdrN += k
				return nil
			}
			if err == nil {
				p = p[n-rd.hdrN:]
			}
			rd.hdrN = 0
		} else {
			h, n, err = ParseHeader(p)
			if err == nil && n == 0 {
				rd := c.readState()
				rd.hdrN = copy(rd.hdr[:], p)
				return nil
			}
			p = p[n:]
		}
		if err != nil {
			c.fail(ws.StatusProtocolError, ReasonProtocolError, err.Error())
			return nil
		}
		if !c.checkHeader(h) {
			return nil
		}
		if int64(len(p)) >= h.Length {
			payload := p[:h.Length]
			p = p[h.Length:]
			if h.Masked {
				ws.Cipher(payload, h.Mask, 0)
			}
			if !c.onFrame(h, payload, true) {
				return nil
			}
			continue
		}
		// Partial payload: keep it in the connection.
		rd := c.readState()
		rd.inFrame, rd.fh, rd.remaining, rd.done = true, h, h.Length, 0
		rd.ctlN = 0
		if !h.OpCode.IsControl() && h.OpCode != ws.OpContinuation {
			rd.compressed = h.Rsv1()
		}
	}
	return nil
}

// continuePayload consumes bytes of a partially received frame.
func (c *Conn) continuePayload(p []byte) []byte {
	rd := c.rd
	k := int64(len(p))
	if k > rd.remaining {
		k = rd.remaining
	}
	chunk := p[:k]
	if rd.fh.Masked {
		ws.Cipher(chunk, rd.fh.Mask, int(rd.done))
	}
	if rd.fh.OpCode.IsControl() {
		rd.ctlN += copy(rd.ctl[rd.ctlN:], chunk)
	} else {
		rd.msg = append(rd.msg, chunk...)
		if c.isText(rd.fh) && !c.checkUTF8() {
			return nil
		}
	}
	rd.done += k
	rd.remaining -= k
	if rd.remaining > 0 {
		return nil
	}
	rd.inFrame = false
	h := rd.fh
	if h.OpCode.IsControl() {
		c.onFrame(h, rd.ctl[:rd.ctlN], false)
	} else {
		c.onFrame(h, nil, false)
	}
	return p[k:]
}

// checkHeader validates h against the connection state (RFC 6455 §5.2,
// §5.4, §5.5) and the size limit; on failure it fails the connection.
func (c *Conn) checkHeader(h ws.Header) bool {
	s := ws.StateServerSide
	fragmented := c.rd != nil && c.rd.fragmented
	if fragmented {
		s |= ws.StateFragmented
	}
	deflate := c.deflate()
	if deflate {
		s |= ws.StateExtended
	}
	if err := ws.CheckHeader(h, s); err != nil {
		c.fail(ws.StatusProtocolError, ReasonProtocolError, err.Error())
		return false
	}
	// RFC 7692 §6: permessage-deflate defines RSV1 only, and only on the
	// first frame of a data message.
	if h.Rsv != 0 && (h.Rsv != ws.Rsv(true, false, false) || h.OpCode.IsControl() || h.OpCode == ws.OpContinuation) {
		c.fail(ws.StatusProtocolError, ReasonProtocolError, "RSV bits not allowed on this frame")
		return false
	}
	if h.OpCode.IsControl() {
		return true
	}
	size := h.Length
	if fragmented {
		size += int64(len(c.rd.msg))
	}
	if size > c.cfg.MaxMessageSize {
		c.fail(ws.StatusMessageTooBig, ReasonTooBig, "message too big")
		return false
	}
	return true
}

// onFrame handles one complete frame. inPlace reports whether payload is
// the whole data payload in the caller's buffer; otherwise a data frame's
// payload was already appended to rd.msg. It returns false when the
// connection failed and parsing must stop.
func (c *Conn) onFrame(h ws.Header, payload []byte, inPlace bool) bool {
	if h.OpCode.IsControl() {
		return c.onControl(h.OpCode, payload)
	}
	if h.OpCode == ws.OpContinuation || !h.Fin || !inPlace {
		rd := c.readState()
		if h.OpCode != ws.OpContinuation {
			rd.fragmented, rd.fragOp, rd.compressed = true, h.OpCode, h.Rsv1()
		}
		if inPlace {
			rd.msg = append(rd.msg, payload...)
			if rd.fragOp == ws.OpText && !rd.compressed && !c.checkUTF8() {
				return false
			}
		}
		if !h.Fin {
			return true
		}
		op, msg, compressed := rd.fragOp, rd.msg, rd.compressed
		complete := rd.checked == len(msg)
		rd.fragmented, rd.msg, rd.checked, rd.compressed = false, rd.msg[:0], 0, false
		if compressed {
			return c.deliverCompressed(op, msg)
		}
		if op == ws.OpText && !complete {
			c.fail(ws.StatusInvalidFramePayloadData, ReasonInvalidPayload, "invalid UTF-8 in text message")
			return false
		}
		return c.deliver(op, msg)
	}
	if h.Rsv1() {
		return c.deliverCompressed(h.OpCode, payload)
	}
	if h.OpCode == ws.OpText && !utf8.Valid(payload) {
		c.fail(ws.StatusInvalidFramePayloadData, ReasonInvalidPayload, "invalid UTF-8 in text message")
		return false
	}
	return c.deliver(h.OpCode, payload)
}

// isText reports whether h carries uncompressed text to check as it arrives.
func (c *Conn) isText(h ws.Header) bool {
	if h.OpCode == ws.OpContinuation {
		return c.rd.fragOp == ws.OpText && !c.rd.compressed
	}
	return h.OpCode == ws.OpText && !h.Rsv1()
}

// deliverCompressed inflates a permessage-deflate message (bounded by
// MaxMessageSize: a deflate bomb ends in 1009) and delivers it.
func (c *Conn) deliverCompressed(op ws.OpCode, p []byte) bool {
	rd := c.readState()
	out, err := c.cfg.Deflater.Inflate(rd.inflated[:0], p, c.cfg.MaxMessageSize)
	rd.inflated = out[:0]
	if cap(out) > 64<<10 {
		rd.inflated = nil
	}
	switch {
	case errors.Is(err, ErrInflateTooBig):
		c.fail(ws.StatusMessageTooBig, ReasonTooBig, "inflated message too big")
		return false
	case err != nil:
		c.fail(ws.StatusInvalidFramePayloadData, ReasonInvalidPayload, "bad deflate data")
		return false
	}
	if op == ws.OpText && !utf8.Valid(out) {
		c.fail(ws.StatusInvalidFramePayloadData, ReasonInvalidPayload, "invalid UTF-8 in text message")
		return false
	}
	return c.deliver(op, out)
}

// Deflate reports whether permessage-deflate was negotiated.
func (c *Conn) Deflate() bool { return c.deflate() }

func (c *Conn) deflate() bool {
	c.mu.Lock()
	d := c.flags&flagDeflate != 0
	c.mu.Unlock()
	return d
}

// checkUTF8 validates the text assembled so far, failing the connection
// (1007) at the first invalid byte rather than at the end of the message, so
// a peer cannot make us buffer a message that is already known to be bad.
// A sequence cut at the end of what has arrived is not an error yet.
func (c *Conn) checkUTF8() bool {
	rd := c.rd
	n, bad := utf8Prefix(rd.msg[rd.checked:])
	rd.checked += n
	if bad {
		c.fail(ws.StatusInvalidFramePayloadData, ReasonInvalidPayload, "invalid UTF-8 in text message")
		return false
	}
	return true
}

// utf8Prefix returns the length of the longest prefix of b made of complete,
// valid UTF-8 sequences, and whether what follows it is invalid (as opposed
// to an incomplete sequence at the very end).
func utf8Prefix(b []byte) (n int, bad bool) {
	if utf8.Valid(b) {
		return len(b), false
	}
	for n < len(b) {
		if b[n] < utf8.RuneSelf {
			n++
			continue
		}
		r, size := utf8.DecodeRune(b[n:])
		if r == utf8.RuneError && size == 1 {
			return n, utf8.FullRune(b[n:])
		}
		n += size
	}
	return n, false
}

func (c *Conn) deliver(op ws.OpCode, msg []byte) bool {
	if c.state.Load() != stateOpen {
		return true // closing: data after our close frame is dropped (RFC 6455 §1.4)
	}
	c.h.OnMessage(c, op, msg)
	return true
}

func (c *Conn) onControl(op ws.OpCode, payload []byte) bool {
	switch op {
	case ws.OpPing:
		if c.state.Load() == stateOpen {
			c.Send(NewFrame(ws.OpPong, payload))
		}
	case ws.OpPong:
		c.mu.Lock()
		c.flags &^= flagPingOut
		c.mu.Unlock()
	case ws.OpClose:
		return c.onClose(payload)
	}
	return true
}

// onClose answers a close frame (RFC 6455 §5.5.1, §7.4).
func (c *Conn) onClose(payload []byte) bool {
	var code ws.StatusCode
	switch {
	case len(payload) == 1:
		c.fail(ws.StatusProtocolError, ReasonProtocolError, "close frame payload of one byte")
		return false
	case len(payload) >= 2:
		code = ws.StatusCode(binary.BigEndian.Uint16(payload))
		if !validCloseCode(code) {
			c.fail(ws.StatusProtocolError, ReasonProtocolError, "invalid close code")
			return false
		}
		if !utf8.Valid(payload[2:]) {
			c.fail(ws.StatusInvalidFramePayloadData, ReasonInvalidPayload, "invalid UTF-8 in close reason")
			return false
		}
	}
	c.mu.Lock()
	if c.state.Load() == stateClosing {
		// The peer answered our close: the handshake is complete.
		c.flags |= flagDiscardRead | flagCloseFlush
		c.flags &^= flagCloseReply
		a := c.flushLocked()
		c.mu.Unlock()
		c.do(a)
		return false
	}
	c.mu.Unlock()
	// Echo the status code (RFC 6455 §5.5.1) and close once it is flushed.
	c.closeWith(NewCloseFrame(code, ""), ReasonClientClose, false)
	return false
}

// validCloseCode reports whether a received close code is acceptable
// (RFC 6455 §7.4.1–7.4.2: 1004–1006 and 1015 must not be sent; 1000–2999 are
// reserved to the protocol and its registry; 3000–4999 are for applications).
func validCloseCode(code ws.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// fail sends a close frame with code and closes the socket once it is
// flushed, without waiting for the peer ("Fail the WebSocket Connection",
// RFC 6455 §7.1.7). Further input is ignored.
func (c *Conn) fail(code ws.StatusCode, reason Reason, text string) {
	c.closeWith(NewCloseFrame(code, text), reason, false)
}

// Close starts the closing handshake: it queues a close frame with code and
// text, then waits up to Config.CloseTimeout for the peer's close frame
// before closing the socket. reason is recorded for stats. Safe to call from
// any goroutine, more than once (the first reason wins).
func (c *Conn) Close(code ws.StatusCode, reason Reason, text string) {
	c.closeWith(NewCloseFrame(code, text), reason, true)
}

// Abort closes the socket now without a close frame.
func (c *Conn) Abort(reason Reason) {
	c.mu.Lock()
	if c.reason == ReasonNone {
		c.reason = reason
	}
	st := c.state.Load()
	if st != stateClosed {
		c.state.Store(stateClosing)
		c.flags |= flagDiscardRead
	}
	c.mu.Unlock()
	if st != stateClosed {
		_ = c.t.Close()
	}
}

func (c *Conn) closeWith(frame []byte, reason Reason, awaitReply bool) {
	c.mu.Lock()
	st := c.state.Load()
	if st == stateClosed || c.flags&flagCloseFlush != 0 {
		c.mu.Unlock()
		return
	}
	if c.flags&flagCloseReply != 0 {
		// Our close frame is already queued. A failure now (RFC 6455
		// §7.1.7) stops reading and closes once flushed; a second graceful
		// Close changes nothing.
		if !awaitReply {
			c.flags |= flagCloseFlush | flagDiscardRead
			c.flags &^= flagCloseReply
			a := c.flushLocked()
			c.mu.Unlock()
			c.do(a)
			return
		}
		c.mu.Unlock()
		return
	}
	if c.reason == ReasonNone {
		c.reason = reason
	}
	if st == stateHTTP {
		frame, awaitReply = nil, false
	}
	c.state.Store(stateClosing)
	if awaitReply {
		c.flags |= flagCloseReply
	} else {
		c.flags |= flagCloseFlush | flagDiscardRead
	}
	c.mark = c.w.Now() + c.cfg.CloseTimeout.Milliseconds()
	if frame != nil {
		c.appendLocked(frame)
	}
	a := c.flushLocked()
	if a == actAbort {
		c.mark = c.w.Now()
	}
	c.mu.Unlock()
	c.w.Add(c, c.mark) // closes it at mark; never inline (see deferAbort)
}

// Send queues one complete frame. frame is not copied and must not be
// modified afterwards: the same bytes may be queued on many connections.
// It reports false when the connection is not open; on queue overflow it
// closes the connection (ReasonWriteQueueFull) and reports false.
func (c *Conn) Send(frame []byte) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return false
	}
	if q := c.wq; q != nil && (len(q.bufs)-q.head >= c.cfg.WriteQueueFrames || q.bytes+len(frame) > c.cfg.WriteQueueBytes) {
		c.mu.Unlock()
		c.closeWith(NewCloseFrame(ws.StatusPolicyViolation, "slow consumer"), ReasonWriteQueueFull, false)
		return false
	}
	c.appendLocked(frame)
	a := c.flushLocked()
	c.mu.Unlock()
	c.deferAbort(a)
	return a == actNone && c.state.Load() == stateOpen
}

// WriteHTTP sends a complete HTTP response during the request phase. With
// keepAlive false the socket closes once it is flushed.
func (c *Conn) WriteHTTP(resp []byte, keepAlive bool) {
	if !keepAlive {
		c.mu.Lock()
		if c.reason == ReasonNone {
			c.reason = ReasonHTTPDone
		}
		c.state.Store(stateClosing)
		c.flags |= flagCloseFlush | flagDiscardRead
		c.mark = c.w.Now() + c.cfg.CloseTimeout.Milliseconds()
	} else {
		c.mu.Lock()
		c.flags |= flagServedHTTP
		c.mark = c.w.Now() + c.cfg.HandshakeTimeout.Milliseconds()
	}
	c.appendLocked(resp)
	a := c.flushLocked()
	c.mu.Unlock()
	if !keepAlive && a != actAbort {
		c.w.Add(c, c.mark)
	}
	c.do(a)
}

// RejectHTTP answers the request phase with e and closes the connection.
func (c *Conn) RejectHTTP(e *HTTPError) {
	c.mu.Lock()
	if c.reason == ReasonNone {
		c.reason = ReasonHandshakeFailed
	}
	c.mu.Unlock()
	c.WriteHTTP(e.Response(), false)
}

// Upgrade validates the WebSocket handshake in raw (a complete request head
// already received) with u, writes the response, and on success switches
// the connection to the WebSocket state. On failure gobwas/ws has written
// the error response (400, 426 with Sec-WebSocket-Version, or the status of
// a ws.RejectConnectionError from u's callbacks) and the connection closes.
func (c *Conn) Upgrade(raw []byte, head *RequestHead, u *ws.Upgrader) (ws.Handshake, error) {
	if string(head.WSVersion) != "13" {
		// RFC 6455 §4.2.2: answer a missing or unknown version with 426 and
		// the version we speak (gobwas/ws answers a missing one with 400).
		c.RejectHTTP(&HTTPError{Status: http.StatusUpgradeRequired, Msg: "Sec-WebSocket-Version must be 13",
			Header: "Sec-WebSocket-Version: 13\r\n"})
		return ws.Handshake{}, errBadVersion
	}
	var out bytes.Buffer
	rw := struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(raw), &out}
	hs, err := u.Upgrade(rw)
	if err != nil {
		c.mu.Lock()
		if c.reason == ReasonNone {
			c.reason = ReasonHandshakeFailed
		}
		c.mu.Unlock()
		c.WriteHTTP(out.Bytes(), false)
		return hs, err
	}
	c.mu.Lock()
	for _, ext := range hs.Extensions {
		if string(ext.Name) == "permessage-deflate" {
			c.flags |= flagDeflate
		}
	}
	c.state.Store(stateOpen)
	now := c.w.Now()
	c.lastRead.Store(now)
	c.appendLocked(out.Bytes())
	a := c.flushLocked()
	c.mu.Unlock()
	if a != actNone {
		c.do(a)
		return hs, io.ErrClosedPipe
	}
	c.w.Add(c, now+c.cfg.PingInterval.Milliseconds())
	return hs, nil
}

// appendLocked queues b. c.mu must be held.
func (c *Conn) appendLocked(b []byte) {
	if len(b) == 0 {
		return
	}
	if c.wq == nil {
		c.wq = c.cfg.getWriteQueue()
	}
	c.wq.bufs = append(c.wq.bufs, b)
	c.wq.meta = append(c.wq.meta, entryMeta{})
	c.wq.bytes += len(b)
}

// flushLocked writes queued bytes without blocking and returns what the
// caller must do with the transport after unlocking. c.mu must be held.
func (c *Conn) flushLocked() action {
	q := c.wq
	if q == nil {
		return c.finishLocked()
	}
	if c.flags&flagWaitWrite != 0 || c.state.Load() == stateClosed {
		return actNone
	}
	for q.head < len(q.bufs) {
		n, err := c.t.Writev(q.bufs[q.head:])
		if err != nil {
			if c.reason == ReasonNone {
				c.reason = ReasonWriteError
			}
			c.flags |= flagCloseFlush | flagDiscardRead
			c.state.Store(stateClosing)
			return actAbort
		}
		q.bytes -= n
		for n > 0 {
			b := q.bufs[q.head]
			if n < len(b) {
				q.bufs[q.head] = b[n:]
				q.partial = true
				break
			}
			n -= len(b)
			q.bufs[q.head], q.meta[q.head] = nil, entryMeta{}
			q.head++
			q.partial = false
		}
		if q.head < len(q.bufs) {
			// The socket is full: wait for writability.
			if q.head > 0 && q.head >= len(q.bufs)/2 {
				q.compact()
			}
			c.flags |= flagWaitWrite
			if f := c.cfg.OnStall; f != nil {
				f(len(q.bufs)-q.head, q.bytes)
			}
			if err := c.t.WaitWritable(); err != nil {
				if c.reason == ReasonNone {
					c.reason = ReasonWriteError
				}
				c.flags |= flagCloseFlush | flagDiscardRead
				c.state.Store(stateClosing)
				return actAbort
			}
			return actNone
		}
	}
	c.wq = nil
	c.cfg.putWriteQueue(q)
	return c.finishLocked()
}

// finishLocked half-closes a closing connection once its queue is empty;
// the wheel closes it at c.mark unless the peer closes first. It runs under
// c.mu because the transport's close callback takes c.mu before the fd is
// released, so the fd cannot be another socket's yet. c.mu must be held.
func (c *Conn) finishLocked() action {
	if c.flags&flagCloseFlush == 0 || c.flags&flagHalfClosed != 0 || c.state.Load() == stateClosed {
		return actNone
	}
	c.flags |= flagHalfClosed
	if err := c.t.CloseWrite(); err != nil {
		return actAbort
	}
	return actNone
}

// OnWritable is called by the transport when the socket can take more bytes.
func (c *Conn) OnWritable() {
	c.mu.Lock()
	c.flags &^= flagWaitWrite
	a := c.flushLocked()
	c.mu.Unlock()
	c.do(a)
}

// OnTransportClosed is called by the transport exactly once when the socket
// is closed, by either side. It must not overlap with Feed.
func (c *Conn) OnTransportClosed() {
	c.mu.Lock()
	if c.reason == ReasonNone {
		c.reason = ReasonPeerGone
	}
	c.state.Store(stateClosed)
	notify := c.flags&flagNotified == 0
	c.flags |= flagNotified
	if q := c.wq; q != nil {
		c.wq = nil
		c.cfg.putWriteQueue(q)
	}
	reason := c.reason
	c.mu.Unlock()
	c.w.Remove(c)
	if rd := c.rd; rd != nil {
		c.rd = nil
		c.cfg.putReadState(rd)
	}
	if notify {
		c.h.OnClose(c, reason)
	}
}

// heartbeat is called by the wheel when c's slot comes due. It returns the
// next time to examine c, or -1 to drop it from the wheel.
func (c *Conn) heartbeat(now int64) int64 {
	c.mu.Lock()
	var (
		next    int64 = -1
		closeIt bool
	)
	switch c.state.Load() {
	case stateHTTP:
		if now >= c.mark {
			if c.reason == ReasonNone {
				c.reason = ReasonHandshakeTimeout
				if c.flags&flagServedHTTP != 0 {
					c.reason = ReasonHTTPDone // an idle keep-alive connection
				}
			}
			c.state.Store(stateClosing)
			closeIt = true
		} else {
			next = c.mark
		}
	case stateOpen:
		if c.expires != 0 && now >= c.expires {
			c.mu.Unlock()
			c.Close(ws.StatusPolicyViolation, ReasonPolicy, "token expired")
			return -1 // Close rescheduled it
		}
		last := c.lastRead.Load()
		if c.flags&flagPingOut != 0 && last < c.mark {
			if now-c.mark >= c.cfg.PongTimeout.Milliseconds() {
				c.reason = ReasonPingTimeout
				c.state.Store(stateClosing)
				c.flags |= flagDiscardRead
				closeIt = true
			} else {
				next = c.mark + c.cfg.PongTimeout.Milliseconds()
			}
			break
		}
		c.flags &^= flagPingOut
		if idle := now - last; idle >= c.cfg.PingInterval.Milliseconds() {
			c.flags |= flagPingOut
			c.mark = now
			c.appendLocked(pingFrame)
			if c.flushLocked() != actNone {
				closeIt = true
			} else {
				next = now + c.cfg.PongTimeout.Milliseconds()
			}
		} else {
			next = last + c.cfg.PingInterval.Milliseconds()
		}
	case stateClosing:
		if now >= c.mark {
			closeIt = true
		} else {
			next = c.mark
		}
	}
	if next > 0 && c.expires != 0 && c.state.Load() == stateOpen {
		next = min(next, c.expires)
	}
	c.mu.Unlock()
	if closeIt {
		_ = c.t.Close()
		return -1
	}
	return next
}

// pingFrame is the server's heartbeat ping (empty payload), shared by all.
var pingFrame = NewFrame(ws.OpPing, nil)
