package conn

import (
	"bytes"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// sinkTransport accepts every byte without keeping it and never allocates.
type sinkTransport struct {
	c *Conn
	n int
}

func (s *sinkTransport) Writev(bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	s.n += n
	return n, nil
}
func (s *sinkTransport) WaitWritable() error { return nil }
func (s *sinkTransport) CloseWrite() error   { return nil }
func (s *sinkTransport) Close() error {
	s.c.OnTransportClosed()
	return nil
}

// openSinkConn returns an upgraded connection on a sinkTransport whose
// handler ignores every event.
func openSinkConn(tb testing.TB) *Conn {
	tb.Helper()
	cfg := &Config{}
	cfg.Normalize()
	w := NewWheel(10*time.Millisecond, time.Minute)
	tr := &sinkTransport{}
	c := New(tr, nopHandler{}, cfg, w)
	tr.c = c
	c.Feed([]byte(upgradeRequest))
	if !c.Open() {
		tb.Fatal("upgrade failed")
	}
	return c
}

// smallTextFrame is a masked 32-byte text frame.
var smallTextFrame = clientFrame(ws.OpText, true, bytes.Repeat([]byte("a"), 32))

var (
	sinkHeader ws.Header
	sinkHead   RequestHead
)

func BenchmarkParseHeader(b *testing.B) {
	hdr := smallTextFrame[:6]
	b.ReportAllocs()
	for b.Loop() {
		h, n, err := ParseHeader(hdr)
		if n != 6 || err != nil {
			b.Fatal(n, err)
		}
		sinkHeader = h
	}
}

func BenchmarkParseHead(b *testing.B) {
	req := []byte(browserUpgradeRequest)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		n := ScanHead(req)
		h, err := ParseHead(req[:n])
		if err != nil {
			b.Fatal(err)
		}
		sinkHead = h
	}
}

// BenchmarkUpgrade is one connection's whole HTTP phase: New, the browser's
// upgrade request in one read, the 101, and the socket closing.
func BenchmarkUpgrade(b *testing.B) {
	cfg := &Config{}
	cfg.Normalize()
	w := NewWheel(10*time.Millisecond, time.Minute)
	req := []byte(browserUpgradeRequest)
	buf := make([]byte, len(req))
	tr := &sinkTransport{}
	b.ReportAllocs()
	for b.Loop() {
		c := New(tr, nopHandler{}, cfg, w)
		tr.c = c
		copy(buf, req)
		c.Feed(buf)
		if !c.Open() {
			b.Fatal("upgrade failed")
		}
		c.OnTransportClosed() // the peer leaves; takes c off the wheel
	}
}

func BenchmarkFeedSmallFrame(b *testing.B) {
	c := openSinkConn(b)
	buf := make([]byte, len(smallTextFrame))
	b.SetBytes(int64(len(smallTextFrame)))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, smallTextFrame) // Feed unmasks in place
		c.Feed(buf)
	}
	if !c.Open() {
		b.Fatal("connection closed")
	}
}

// BenchmarkFeedSplitFrame is the partial-frame path: the same frame in two
// reads, cut inside the header.
func BenchmarkFeedSplitFrame(b *testing.B) {
	c := openSinkConn(b)
	buf := make([]byte, len(smallTextFrame))
	b.SetBytes(int64(len(smallTextFrame)))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, smallTextFrame)
		c.Feed(buf[:3])
		c.Feed(buf[3:])
	}
	if !c.Open() {
		b.Fatal("connection closed")
	}
}

func BenchmarkSend(b *testing.B) {
	c := openSinkConn(b)
	frame := NewFrame(ws.OpText, bytes.Repeat([]byte("x"), 64))
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if !c.Send(frame) {
			b.Fatal("Send failed")
		}
	}
}
