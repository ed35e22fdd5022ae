package conn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net/http"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// fakeTransport is an in-memory Transport. It records what Conn writes, can
// pretend the socket is full, and counts WaitWritable, CloseWrite and Close
// calls. After CloseWrite it takes no more bytes (the sending side is shut).
//
// Like netpoll (which runs close callbacks only after OnRequest returns), it
// never calls OnTransportClosed while the Conn is inside Feed: a Close during
// [harness.feed] is reported right after Feed returns, which is the contract
// documented on [Conn.OnTransportClosed] ("must not overlap with Feed").
// A Close from anywhere else (heartbeat, Send, OnWritable) reports at once.
type fakeTransport struct {
	mu       sync.Mutex
	c        *Conn
	out      []byte // bytes accepted by Writev, in order
	writevs  int    // Writev calls
	capacity int    // bytes the socket still takes; < 0 means unlimited
	discard  bool   // count bytes instead of keeping them (benchmarks)
	written  int    // bytes accepted in total
	writeErr error  // returned by Writev when set
	waitErr  error  // returned by WaitWritable when set
	waits    int    // WaitWritable calls
	shutErr  error  // returned by CloseWrite when set
	shuts    int    // CloseWrite calls
	closes   int    // Close calls
	inFeed   bool
	deferred bool // Close happened inside Feed; OnTransportClosed pending
	// syncClose makes Close report OnTransportClosed at once even inside
	// Feed, as a naive transport would.
	syncClose bool
	reported  bool // OnTransportClosed was called
}

func newFakeTransport() *fakeTransport { return &fakeTransport{capacity: -1} }

func (f *fakeTransport) Writev(bufs [][]byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writevs++
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	if f.shuts > 0 {
		panic("conn: Writev after CloseWrite")
	}
	n := 0
	for _, b := range bufs {
		k := len(b)
		if f.capacity >= 0 {
			k = min(k, f.capacity)
			f.capacity -= k
		}
		if !f.discard {
			f.out = append(f.out, b[:k]...)
		}
		n += k
		if k < len(b) {
			break
		}
	}
	f.written += n
	return n, nil
}

func (f *fakeTransport) WaitWritable() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.waits++
	return f.waitErr
}

// CloseWrite is called with the Conn's lock held: it must not call back.
func (f *fakeTransport) CloseWrite() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shuts++
	return f.shutErr
}

func (f *fakeTransport) Close() error {
	f.mu.Lock()
	f.closes++
	report := !f.reported && !f.deferred
	if report && f.inFeed && !f.syncClose {
		f.deferred, report = true, false
	}
	if report {
		f.reported = true
	}
	f.mu.Unlock()
	if report {
		f.c.OnTransportClosed()
	}
	return nil
}

// peerClose simulates the peer closing the TCP connection.
func (f *fakeTransport) peerClose() {
	f.mu.Lock()
	report := !f.reported
	f.reported = true
	f.mu.Unlock()
	if report {
		f.c.OnTransportClosed()
	}
}

// setCapacity makes the socket take only k more bytes; k < 0 is unlimited.
func (f *fakeTransport) setCapacity(k int) {
	f.mu.Lock()
	f.capacity = k
	f.mu.Unlock()
}

// output returns a copy of everything written so far.
func (f *fakeTransport) output() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.out...)
}

// take returns everything written so far and forgets it.
func (f *fakeTransport) take() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.out
	f.out = nil
	return b
}

func (f *fakeTransport) counts() (waits, shuts, closes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waits, f.shuts, f.closes
}

type message struct {
	op      ws.OpCode
	payload []byte
}

// fakeHandler records every event. ServeHTTP upgrades /ws and answers any
// other path with a 200, keeping the connection alive unless the request
// asked to close it.
type fakeHandler struct {
	mu          sync.Mutex
	requests    []string // path of each request
	bodies      [][]byte // raw request of each request (head and body)
	upgradeErrs []error
	msgs        []message
	closes      []Reason
	echo        bool // Send every message back
	deflate     bool // negotiate permessage-deflate (NegotiateDeflate)
}

func (h *fakeHandler) ServeHTTP(c *Conn, head *RequestHead, raw []byte) {
	h.mu.Lock()
	h.requests = append(h.requests, string(head.Path))
	h.bodies = append(h.bodies, append([]byte(nil), raw...))
	h.mu.Unlock()
	if string(head.Path) == "/ws" {
		u := &ws.Upgrader{}
		if h.deflate {
			var accepted bool
			u.Negotiate = NegotiateDeflate(&accepted)
		}
		_, err := c.Upgrade(raw, head, u)
		h.mu.Lock()
		h.upgradeErrs = append(h.upgradeErrs, err)
		h.mu.Unlock()
		return
	}
	c.WriteHTTP(PlainResponse(http.StatusOK, "", "ok "+string(head.Path), head.Close), !head.Close)
}

func (h *fakeHandler) OnMessage(c *Conn, op ws.OpCode, payload []byte) {
	h.mu.Lock()
	h.msgs = append(h.msgs, message{op, append([]byte{}, payload...)})
	echo := h.echo
	h.mu.Unlock()
	if echo {
		c.Send(NewFrame(op, payload))
	}
}

func (h *fakeHandler) OnClose(c *Conn, reason Reason) {
	h.mu.Lock()
	h.closes = append(h.closes, reason)
	h.mu.Unlock()
}

func (h *fakeHandler) messages() []message {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]message(nil), h.msgs...)
}

func (h *fakeHandler) closeReasons() []Reason {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Reason(nil), h.closes...)
}

// nopHandler upgrades /ws and ignores everything else (benchmarks).
type nopHandler struct{}

func (nopHandler) ServeHTTP(c *Conn, head *RequestHead, raw []byte) {
	_, _ = c.Upgrade(raw, head, &ws.Upgrader{})
}
func (nopHandler) OnMessage(*Conn, ws.OpCode, []byte) {}
func (nopHandler) OnClose(*Conn, Reason)              {}

// harness is one Conn on a fake transport and a wheel driven by hand.
type harness struct {
	t   testing.TB
	cfg *Config
	w   *Wheel
	tr  *fakeTransport
	h   *fakeHandler
	c   *Conn
}

func newHarness(t testing.TB, cfg *Config) *harness {
	t.Helper()
	if cfg == nil {
		cfg = &Config{}
	}
	cfg.Normalize()
	w := NewWheel(10*time.Millisecond, time.Minute)
	tr := newFakeTransport()
	h := &fakeHandler{}
	c := New(tr, h, cfg, w)
	tr.c = c
	return &harness{t: t, cfg: cfg, w: w, tr: tr, h: h, c: c}
}

// feed passes a copy of p to Feed (Feed unmasks in place) and reports a
// Close that happened during Feed once Feed has returned.
func (h *harness) feed(p []byte) {
	b := append([]byte(nil), p...)
	h.tr.mu.Lock()
	h.tr.inFeed = true
	h.tr.mu.Unlock()
	h.c.Feed(b)
	h.tr.mu.Lock()
	h.tr.inFeed = false
	report := h.tr.deferred && !h.tr.reported
	if report {
		h.tr.reported = true
	}
	h.tr.mu.Unlock()
	if report {
		h.c.OnTransportClosed()
	}
}

// at advances the wheel to d after its start.
func (h *harness) at(d time.Duration) { h.w.Advance(d.Milliseconds()) }

// settle advances the wheel by one tick, so that an abort that Conn handed
// to the wheel instead of closing inline (see Conn.deferAbort) happens.
func (h *harness) settle() { h.w.Advance(h.w.Now() + tick.Milliseconds()) }

// open upgrades the connection and discards the 101 response.
func (h *harness) open() {
	h.t.Helper()
	h.feed([]byte(upgradeRequest))
	resp, rest := readResponse(h.t, h.tr.take())
	if resp.StatusCode != http.StatusSwitchingProtocols {
		h.t.Fatalf("upgrade: status %d, want 101", resp.StatusCode)
	}
	if len(rest) != 0 {
		h.t.Fatalf("upgrade: %d unexpected bytes after the 101 response", len(rest))
	}
	if !h.c.Open() {
		h.t.Fatal("upgrade: connection not open")
	}
}

// frames parses everything the server wrote since the last take.
func (h *harness) frames() []serverFrame {
	h.t.Helper()
	return parseServerFrames(h.t, h.tr.take())
}

// expectOpen checks that the connection is open and nothing closed it.
func (h *harness) expectOpen() {
	h.t.Helper()
	if !h.c.Open() || h.c.Closed() {
		h.t.Fatalf("connection not open (reason %v)", h.c.Reason())
	}
	if _, shuts, closes := h.tr.counts(); shuts != 0 || closes != 0 {
		h.t.Fatalf("transport half-closed %d and closed %d times, want open", shuts, closes)
	}
	if r := h.h.closeReasons(); len(r) != 0 {
		h.t.Fatalf("OnClose called with %v on an open connection", r)
	}
}

// expectLingering checks the state of a connection that has flushed its
// last bytes and shut down its sending side (a lingering close): neither
// open nor closed, CloseWrite called once, Close not yet, reason recorded,
// OnClose not yet called. It returns the frames written since the last take.
func (h *harness) expectLingering(reason Reason) []serverFrame {
	h.t.Helper()
	if h.c.Open() || h.c.Closed() {
		h.t.Fatalf("want a lingering connection, got open=%v closed=%v", h.c.Open(), h.c.Closed())
	}
	if _, shuts, closes := h.tr.counts(); shuts != 1 || closes != 0 {
		h.t.Fatalf("CloseWrite called %d times and Close %d times, want 1 and 0", shuts, closes)
	}
	if got := h.c.Reason(); got != reason {
		h.t.Fatalf("Reason() = %v, want %v", got, reason)
	}
	if r := h.h.closeReasons(); len(r) != 0 {
		h.t.Fatalf("OnClose called with %v before the socket closed", r)
	}
	return h.frames()
}

// expectClosed checks that the socket is closed and that OnClose was
// called once with reason. It returns the frames written since the last take.
func (h *harness) expectClosed(reason Reason) []serverFrame {
	h.t.Helper()
	if !h.c.Closed() {
		h.t.Fatalf("connection not closed (open=%v reason=%v)", h.c.Open(), h.c.Reason())
	}
	got := h.h.closeReasons()
	if len(got) != 1 || got[0] != reason {
		h.t.Fatalf("OnClose reasons %v, want [%v]", got, reason)
	}
	if h.c.Reason() != reason {
		h.t.Fatalf("Reason() = %v, want %v", h.c.Reason(), reason)
	}
	if n := h.w.Len(); n != 0 {
		h.t.Fatalf("closed connection still on the wheel (%d scheduled)", n)
	}
	return h.frames()
}

// expectCloseFrame checks that the connection wrote a close frame with code
// (0: empty payload) as its last frame and half-closed, then lets the peer
// close the socket and checks that OnClose reports reason. It returns the
// frames written since the last take.
func (h *harness) expectCloseFrame(code ws.StatusCode, reason Reason) []serverFrame {
	h.t.Helper()
	fs := h.expectLingering(reason)
	checkLastClose(h.t, fs, code)
	h.tr.peerClose()
	h.expectClosed(reason)
	return fs
}

// checkLastClose checks that the last of fs is the only close frame and
// carries code (0: empty payload).
func checkLastClose(t testing.TB, fs []serverFrame, code ws.StatusCode) {
	t.Helper()
	if len(fs) == 0 {
		t.Fatalf("no close frame written, want %d", code)
	}
	last := fs[len(fs)-1]
	if last.op() != ws.OpClose {
		t.Fatalf("last frame is %v, want a close frame with %d", last.op(), code)
	}
	if got, _ := closeBody(t, last.payload); got != code {
		t.Fatalf("close code %d, want %d", got, code)
	}
	for _, f := range fs[:len(fs)-1] {
		if f.op() == ws.OpClose {
			t.Fatal("more than one close frame written")
		}
	}
}

const (
	testKey    = "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455 §1.3
	testAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
)

const upgradeRequest = "GET /ws HTTP/1.1\r\n" +
	"Host: server.example.com\r\n" +
	"Upgrade: websocket\r\n" +
	"Connection: Upgrade\r\n" +
	"Sec-WebSocket-Key: " + testKey + "\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"\r\n"

// browserUpgradeRequest is what Chromium sends for new WebSocket(url).
const browserUpgradeRequest = "GET /ws?topic=prices.AAPL&topic=lobby.7 HTTP/1.1\r\n" +
	"Host: localhost:8080\r\n" +
	"Connection: Upgrade\r\n" +
	"Pragma: no-cache\r\n" +
	"Cache-Control: no-cache\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n" +
	"Upgrade: websocket\r\n" +
	"Origin: http://localhost:8080\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"Accept-Encoding: gzip, deflate, br, zstd\r\n" +
	"Accept-Language: en-US,en;q=0.9\r\n" +
	"Cookie: session=6f1c0a52e7d94b1a8c3e; theme=dark\r\n" +
	"Sec-WebSocket-Key: " + testKey + "\r\n" +
	"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" +
	"\r\n"

// readResponse parses the HTTP response at the start of b (its body
// included) and returns it with the bytes that follow it.
func readResponse(t testing.TB, b []byte) (*http.Response, []byte) {
	t.Helper()
	r := bytes.NewReader(b)
	br := bufio.NewReader(r)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response from %q: %v", b, err)
	}
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	resp.Body.Close()
	rest := b[len(b)-r.Len()-br.Buffered():]
	resp.Body = nil
	resp.ContentLength = int64(body.Len())
	return resp, rest
}

// testMask is the masking key of the RFC 6455 §5.7 examples.
var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// clientFrame returns a masked client frame.
func clientFrame(op ws.OpCode, fin bool, payload []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	return rawFrame(b0, payload, true)
}

// rawFrame returns a frame whose first byte (FIN, RSV and opcode) is b0,
// masked with testMask when masked is set.
func rawFrame(b0 byte, payload []byte, masked bool) []byte {
	b := rawHeader(b0, uint64(len(payload)), masked)
	start := len(b)
	b = append(b, payload...)
	if masked {
		ws.Cipher(b[start:], testMask, 0)
	}
	return b
}

// rawHeader returns a frame header announcing a payload of n bytes.
func rawHeader(b0 byte, n uint64, masked bool) []byte {
	var m byte
	if masked {
		m = 0x80
	}
	b := []byte{b0}
	switch {
	case n <= 125:
		b = append(b, m|byte(n))
	case n <= 0xffff:
		b = append(b, m|126, byte(n>>8), byte(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, n)
	}
	if masked {
		b = append(b, testMask[:]...)
	}
	return b
}

// closePayload returns the body of a close frame.
func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

type serverFrame struct {
	h       ws.Header
	payload []byte
}

func (f serverFrame) op() ws.OpCode { return f.h.OpCode }

// parseServerFrames splits b into complete server frames; anything else
// (a masked frame, a partial frame, a bad header) fails the test.
func parseServerFrames(t testing.TB, b []byte) []serverFrame {
	t.Helper()
	var fs []serverFrame
	for len(b) > 0 {
		h, n, err := ParseHeader(b)
		if err != nil || n == 0 {
			t.Fatalf("server output: bad or partial frame header % x (n=%d err=%v)", b[:min(len(b), 14)], n, err)
		}
		if h.Masked {
			t.Fatalf("server frame is masked (RFC 6455 §5.1 forbids it): %+v", h)
		}
		if int64(len(b)-n) < h.Length {
			t.Fatalf("server output: frame %+v truncated to %d payload bytes", h, len(b)-n)
		}
		fs = append(fs, serverFrame{h: h, payload: b[n : n+int(h.Length)]})
		b = b[n+int(h.Length):]
	}
	return fs
}

// closeBody decodes a close frame payload; code is 0 for an empty one.
func closeBody(t testing.TB, p []byte) (ws.StatusCode, string) {
	t.Helper()
	switch len(p) {
	case 0:
		return 0, ""
	case 1:
		t.Fatalf("close frame with a 1-byte payload")
	}
	if !utf8.Valid(p[2:]) {
		t.Fatalf("close reason %q is not UTF-8", p[2:])
	}
	return ws.StatusCode(binary.BigEndian.Uint16(p)), string(p[2:])
}
