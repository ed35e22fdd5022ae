package poller

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

type nopEvents struct{ closed *atomic.Int32 }

func (nopEvents) Feed([]byte)          {}
func (nopEvents) OnWritable()          {}
func (e nopEvents) OnTransportClosed() { e.closed.Add(1) }

type openFunc func(Transport) Events

func (f openFunc) Open(c Transport) Events { return f(c) }

// The trim of netpoll's unused per-connection buffers must find its fields
// in the pinned netpoll version; if netpoll's layout changes this fails
// instead of silently losing ~1.5 KiB per idle connection.
func TestTrimFindsNetpollFields(t *testing.T) {
	var closed atomic.Int32
	opened := make(chan *Conn, 1)
	p, err := New(Config{}, openFunc(func(c Transport) Events {
		opened <- c.(*Conn)
		return nopEvents{&closed}
	}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Close(ctx)
	}()
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var pc *Conn
	select {
	case pc = <-opened:
	case <-time.After(5 * time.Second):
		t.Fatal("no accept")
	}
	if !netpollProcess.trim.ok {
		t.Fatal("netpoll's connection layout was not recognised; update poller/trim.go for this netpoll version")
	}
	// Writes go straight to the fd and arrive.
	if n, err := pc.Writev([][]byte{[]byte("hel"), []byte("lo")}); err != nil || n != 5 {
		t.Fatalf("writev: %d %v", n, err)
	}
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q %v", buf, err)
	}
	// A peer close reaches OnTransportClosed exactly once.
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for closed.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if closed.Load() != 1 || p.Conns() != 0 {
		t.Fatalf("closed %d conns %d", closed.Load(), p.Conns())
	}
}
