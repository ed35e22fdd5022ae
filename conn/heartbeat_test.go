package conn

import (
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// The wheel of every harness ticks every 10 ms and is advanced by hand with
// harness.at; defaults: PingInterval 25s, PongTimeout 10s,
// HandshakeTimeout 5s, CloseTimeout 3s.
const (
	tick    = 10 * time.Millisecond
	time1s  = time.Second
	pingAt  = 25 * time.Second // default PingInterval after an upgrade at 0
	timeout = 35 * time.Second // pingAt + default PongTimeout
)

// expectPing checks that exactly one frame, the server's empty ping, was
// written since the last take.
func (h *harness) expectPing() {
	h.t.Helper()
	fs := h.frames()
	if len(fs) != 1 || fs[0].op() != ws.OpPing || len(fs[0].payload) != 0 {
		h.t.Fatalf("frames %+v, want one empty ping", fs)
	}
}

func (h *harness) expectNoFrames() {
	h.t.Helper()
	if fs := h.frames(); len(fs) != 0 {
		h.t.Fatalf("unexpected frames %+v", fs)
	}
}

func TestPingAfterSilence(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(pingAt - tick)
	h.expectNoFrames()
	h.at(pingAt)
	h.expectPing()
	h.expectOpen()
}

func TestPongTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(pingAt)
	h.expectPing()
	h.at(timeout - tick)
	h.expectOpen()
	h.at(timeout)
	if fs := h.expectClosed(ReasonPingTimeout); len(fs) != 0 {
		t.Fatalf("frames written on ping timeout: %+v", fs)
	}
	// Input that arrives after the timeout is ignored.
	h.feed(clientFrame(ws.OpText, true, []byte("too late")))
	if len(h.h.messages()) != 0 {
		t.Fatal("message delivered after the ping timeout")
	}
}

func TestAnsweredPingKeepsOpen(t *testing.T) {
	answers := map[string][]byte{
		"pong":                 clientFrame(ws.OpPong, true, nil),
		"pong of a stale ping": clientFrame(ws.OpPong, true, []byte("old")),
		"text":                 clientFrame(ws.OpText, true, []byte("hi")),
		"ping":                 clientFrame(ws.OpPing, true, nil),
		"partial frame":        clientFrame(ws.OpBinary, true, make([]byte, 100))[:10],
	}
	for name, answer := range answers {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.open()
			h.at(pingAt)
			h.expectPing()
			h.at(30 * time.Second)
			h.feed(answer)
			h.tr.take() // a pong for the ping answer
			h.at(timeout)
			h.expectOpen()
			h.expectNoFrames()
			// Silent again: the next ping comes PingInterval after the answer.
			h.at(55*time.Second - tick)
			h.expectNoFrames()
			h.at(55 * time.Second)
			h.expectPing()
			h.at(65*time.Second - tick)
			h.expectOpen()
			h.at(65 * time.Second)
			h.expectClosed(ReasonPingTimeout)
		})
	}
}

func TestTrafficDelaysPing(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(20 * time.Second)
	h.feed(clientFrame(ws.OpText, true, []byte("hi")))
	h.at(pingAt)
	h.expectNoFrames()
	h.at(45*time.Second - tick)
	h.expectNoFrames()
	h.at(45 * time.Second)
	h.expectPing()
	h.expectOpen()
}

func TestHandshakeTimeout(t *testing.T) {
	for name, partial := range map[string]string{"nothing sent": "", "partial head": upgradeRequest[:40]} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.at(time1s)
			h.feed([]byte(partial))
			h.at(h.cfg.HandshakeTimeout - tick)
			if h.c.Closed() {
				t.Fatal("closed before HandshakeTimeout")
			}
			h.at(h.cfg.HandshakeTimeout)
			h.expectClosed(ReasonHandshakeTimeout)
			if out := h.tr.output(); len(out) != 0 {
				t.Fatalf("wrote %q on handshake timeout", out)
			}
			// The rest of the request comes too late.
			h.feed([]byte(upgradeRequest[len(partial):]))
			if len(h.h.requests) != 0 {
				t.Fatal("request served after the handshake timeout")
			}
		})
	}
}

func TestHandshakeBeforeTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.at(4 * time.Second)
	h.open()
	h.at(h.cfg.HandshakeTimeout)
	h.expectOpen()
	h.at(4*time.Second + pingAt - tick)
	h.expectNoFrames()
	h.at(4*time.Second + pingAt)
	h.expectPing()
}

func TestKeepAliveIdleTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.at(time1s)
	h.feed([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp, _ := readResponse(t, h.tr.take()); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	h.at(time1s + h.cfg.HandshakeTimeout - tick)
	if h.c.Closed() {
		t.Fatal("keep-alive connection closed before its idle timeout")
	}
	h.at(time1s + h.cfg.HandshakeTimeout)
	h.expectClosed(ReasonHTTPDone)
}

func TestServerCloseWaitsForReply(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(time1s)
	h.c.Close(ws.StatusGoingAway, ReasonShutdown, "going away")
	fs := h.frames()
	checkLastClose(t, fs, ws.StatusGoingAway)
	if _, reason := closeBody(t, fs[0].payload); reason != "going away" {
		t.Fatalf("close reason %q", reason)
	}
	if h.c.Open() || h.c.Closed() {
		t.Fatalf("open=%v closed=%v, want closing", h.c.Open(), h.c.Closed())
	}
	if _, shuts, closes := h.tr.counts(); shuts != 0 || closes != 0 {
		t.Fatalf("CloseWrite %d Close %d before the reply, want 0 and 0", shuts, closes)
	}
	h.c.Close(ws.StatusInternalServerError, ReasonInternal, "second") // no effect
	if h.c.Send(NewFrame(ws.OpText, []byte("x"))) {
		t.Fatal("Send succeeded while closing")
	}
	// Data and pings before the reply are dropped (RFC 6455 §1.4).
	h.feed(concat(clientFrame(ws.OpText, true, []byte("in flight")), clientFrame(ws.OpPing, true, nil)))
	h.expectNoFrames()
	if len(h.h.messages()) != 0 {
		t.Fatalf("message delivered while closing: %v", h.h.messages())
	}
	h.at(2 * time.Second)
	h.feed(clientFrame(ws.OpClose, true, closePayload(1001, "")))
	if fs := h.expectLingering(ReasonShutdown); len(fs) != 0 {
		t.Fatalf("answered the close reply with %+v", fs)
	}
	h.tr.peerClose()
	h.expectClosed(ReasonShutdown)
}

// A protocol error while waiting for the close reply fails the connection:
// input stops being parsed and the socket half-closes (RFC 6455 §7.1.7),
// keeping the first reason (fixed in 9e343a3).
func TestProtocolErrorWhileAwaitingCloseReply(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.c.Close(ws.StatusGoingAway, ReasonShutdown, "")
	checkLastClose(t, h.frames(), ws.StatusGoingAway)
	h.feed(concat(rawFrame(0x81, []byte("unmasked"), false), clientFrame(ws.OpText, true, []byte("x"))))
	if !h.c.discarding() {
		t.Fatal("input after a protocol error while closing is still parsed")
	}
	if fs := h.expectLingering(ReasonShutdown); len(fs) != 0 {
		t.Fatalf("second close frame or other frames written: %+v", fs)
	}
	h.tr.peerClose()
	h.expectClosed(ReasonShutdown)
}

func TestServerCloseReplyThenTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(time1s)
	h.c.Close(ws.StatusGoingAway, ReasonShutdown, "")
	h.feed(clientFrame(ws.OpClose, true, nil))
	h.expectLingering(ReasonShutdown)
	// The peer never closes its side: the socket closes CloseTimeout after Close.
	h.at(time1s + h.cfg.CloseTimeout - tick)
	if h.c.Closed() {
		t.Fatal("closed before CloseTimeout")
	}
	h.at(time1s + h.cfg.CloseTimeout)
	h.expectClosed(ReasonShutdown)
}

func TestServerCloseTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(time1s)
	h.c.Close(ws.StatusGoingAway, ReasonShutdown, "")
	checkLastClose(t, h.frames(), ws.StatusGoingAway)
	h.at(time1s + h.cfg.CloseTimeout - tick)
	if h.c.Closed() {
		t.Fatal("closed before CloseTimeout")
	}
	h.at(time1s + h.cfg.CloseTimeout)
	h.expectClosed(ReasonShutdown)
	if _, _, closes := h.tr.counts(); closes != 1 {
		t.Fatalf("Close called %d times, want 1", closes)
	}
}

func TestServerCloseBeforeUpgrade(t *testing.T) {
	h := newHarness(t, nil)
	h.feed([]byte(upgradeRequest[:30]))
	h.c.Close(ws.StatusGoingAway, ReasonShutdown, "")
	if out := h.tr.output(); len(out) != 0 {
		t.Fatalf("wrote %q to a connection still in its HTTP phase", out)
	}
	h.feed([]byte(upgradeRequest[30:]))
	if len(h.h.requests) != 0 {
		t.Fatal("request served after Close")
	}
	if h.c.Open() {
		t.Fatal("upgraded after Close")
	}
	h.at(h.cfg.CloseTimeout)
	h.expectClosed(ReasonShutdown)
}

func TestManyConnsOnOneWheel(t *testing.T) {
	cfg := &Config{}
	cfg.Normalize()
	w := NewWheel(10*time.Millisecond, time.Minute)
	type pair struct {
		tr *fakeTransport
		h  *fakeHandler
		c  *Conn
	}
	var conns []pair
	for i := range 50 {
		w.Advance(int64(i) * 100) // connections opened 100 ms apart
		tr, h := newFakeTransport(), &fakeHandler{}
		c := New(tr, h, cfg, w)
		tr.c = c
		c.Feed([]byte(upgradeRequest))
		conns = append(conns, pair{tr, h, c})
	}
	if n := w.Len(); n != 50 {
		t.Fatalf("wheel holds %d connections, want 50", n)
	}
	// Every even connection answers its ping.
	w.Advance(30 * 1000)
	for i, p := range conns {
		if i%2 == 0 {
			p.c.Feed(clientFrame(ws.OpPong, true, nil))
		}
	}
	w.Advance(40 * 1000)
	for i, p := range conns {
		r := p.h.closeReasons()
		if i%2 == 0 && (len(r) != 0 || !p.c.Open()) {
			t.Fatalf("conn %d answered its ping but closed: %v", i, r)
		}
		if i%2 == 1 && (len(r) != 1 || r[0] != ReasonPingTimeout) {
			t.Fatalf("conn %d never answered but OnClose got %v", i, r)
		}
	}
	if n := w.Len(); n != 25 {
		t.Fatalf("wheel holds %d connections, want 25", n)
	}
}
