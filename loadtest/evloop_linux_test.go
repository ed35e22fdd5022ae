//go:build linux

package loadtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"golang.org/x/sys/unix"
)

// recorder is a loopHandler that writes down what it is told.
type recorder struct {
	mu     sync.Mutex
	events []string
	ended  chan struct{}
	code   ws.StatusCode
	err    error
}

var opName = map[ws.OpCode]string{ws.OpContinuation: "continuation", ws.OpText: "text", ws.OpBinary: "binary"}

func newRecorder() *recorder { return &recorder{ended: make(chan struct{})} }

func (r *recorder) add(e string) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) onMessage(m message, n int64, _ time.Time) {
	e := fmt.Sprintf("%s:%d:%s", opName[m.op], n, m.payload)
	if m.compressed {
		e = "deflated " + e
	}
	r.add(e)
}

func (r *recorder) onPing() { r.add("ping") }

func (r *recorder) onEnd(code ws.StatusCode, err error) {
	r.code, r.err = code, err
	close(r.ended)
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// socketPair returns a clientConn owning one end of a Unix stream socket
// pair (non-blocking, as takeConn leaves a TCP socket) and the other end
// as the server's side.
func socketPair(t *testing.T) (*clientConn, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	t.Cleanup(func() { _ = peer.Close() })
	c := &clientConn{fd: fds[0]}
	t.Cleanup(func() {
		c.wmu.Lock()
		if c.fd >= 0 {
			_ = unix.Close(c.fd)
			c.fd = -1
		}
		c.wmu.Unlock()
	})
	return c, peer
}

// serverFrames encodes frames as a server sends them (unmasked).
func serverFrames(t *testing.T, frames ...ws.Frame) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, f := range frames {
		if err := ws.WriteFrame(&b, f); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// readClientFrameFrom reads one frame the client sent on peer, checks that
// it is masked (RFC 6455 §5.3) and unmasks it.
func readClientFrameFrom(t *testing.T, peer *os.File) ws.Frame {
	t.Helper()
	if err := peer.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	f, err := ws.ReadFrame(peer)
	if err != nil {
		t.Fatalf("reading the client's frame: %v", err)
	}
	if !f.Header.Masked {
		t.Fatalf("client frame %v is not masked", f.Header.OpCode)
	}
	ws.Cipher(f.Payload, f.Header.Mask, 0)
	return f
}

func frag(op ws.OpCode, fin bool, p string) ws.Frame {
	return ws.Frame{Header: ws.Header{OpCode: op, Fin: fin, Length: int64(len(p))}, Payload: []byte(p)}
}

// splitStream is a server stream of every kind of frame: a small text
// message, a ping, a fragmented message with a ping and a pong between
// its fragments, a message with a 16-bit length, an empty one, a binary
// one and a close.
func splitStream(t *testing.T) (stream []byte, want []string) {
	long := strings.Repeat("x", 300)
	stream = serverFrames(t,
		ws.NewTextFrame([]byte("hello")),
		ws.NewPingFrame([]byte("p1")),
		frag(ws.OpText, false, "fra"),
		ws.NewPingFrame([]byte("p2")),
		frag(ws.OpContinuation, false, "gm"),
		ws.NewPongFrame([]byte("ignored")),
		frag(ws.OpContinuation, true, "ented"),
		ws.NewTextFrame([]byte(long)),
		ws.NewTextFrame(nil),
		ws.NewBinaryFrame([]byte{1, 2, 3}),
		ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye")),
	)
	want = []string{
		"text:5:hello", "ping", "ping", "text:10:fragmented",
		"text:300:" + long, "text:0:", "binary:3:\x01\x02\x03",
	}
	return stream, want
}

// TestLoopFeedSplitEverywhere feeds the same stream split in two at every
// byte boundary, and byte by byte: the messages, pongs and close must come
// out the same every time.
func TestLoopFeedSplitEverywhere(t *testing.T) {
	stream, want := splitStream(t)
	pool := bufPool()
	opts := &loopOpts{pool: pool, maxMsg: 1 << 20}
	c, peer := socketPair(t)
	check := func(name string, chunks [][]byte) {
		t.Helper()
		rec := newRecorder()
		lc := &loopConn{c: c, h: rec, opts: opts}
		var done bool
		var code ws.StatusCode
		var err error
		for i, ch := range chunks {
			if len(ch) == 0 {
				continue
			}
			if done {
				t.Fatalf("%s: done before chunk %d", name, i)
			}
			done, code, err = lc.feed(ch, time.Now())
		}
		if !done || code != ws.StatusGoingAway || err != nil {
			t.Fatalf("%s: feed = %v %d %v; want done with 1001", name, done, code, err)
		}
		if got := rec.got(); !slicesEqual(got, want) {
			t.Fatalf("%s: events\n%q\nwant\n%q", name, got, want)
		}
		for _, p := range []string{"p1", "p2"} {
			if f := readClientFrameFrom(t, peer); f.Header.OpCode != ws.OpPong || string(f.Payload) != p {
				t.Fatalf("%s: client sent %v %q, want pong %q", name, f.Header.OpCode, f.Payload, p)
			}
		}
		if lc.inFrame || lc.inMsg || lc.hdrN != 0 || lc.ctl != nil {
			t.Fatalf("%s: state left behind: %+v", name, lc)
		}
	}
	for k := 0; k <= len(stream); k++ {
		check(fmt.Sprintf("split at %d", k), [][]byte{stream[:k], stream[k:]})
	}
	var bytewise [][]byte
	for i := range stream {
		bytewise = append(bytewise, stream[i:i+1])
	}
	check("byte by byte", bytewise)
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLoopFeedLongLength: a message with a 64-bit length (over 64 KiB,
// more than one loop read), arriving in three pieces.
func TestLoopFeedLongLength(t *testing.T) {
	c, _ := socketPair(t)
	rec := newRecorder()
	opts := &loopOpts{pool: bufPool(), maxMsg: 1 << 20}
	lc := &loopConn{c: c, h: rec, opts: opts}
	p := bytes.Repeat([]byte("y"), 70000)
	stream := serverFrames(t, ws.NewBinaryFrame(p))
	if stream[1] != 127 {
		t.Fatalf("header length byte %d, want 127", stream[1])
	}
	for _, ch := range [][]byte{stream[:5], stream[5:40000], stream[40000:]} {
		if done, code, err := lc.feed(ch, time.Now()); done {
			t.Fatalf("feed = done %d %v", code, err)
		}
	}
	if got := rec.got(); len(got) != 1 || got[0] != "binary:70000:"+string(p) {
		t.Fatalf("got %d events", len(got))
	}
}

func TestLoopFeedErrors(t *testing.T) {
	msb := []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1}
	tests := []struct {
		name     string
		stream   []byte
		rsv1     bool
		discard  bool
		wantCode ws.StatusCode
		wantErr  error
	}{
		{name: "masked", stream: func() []byte {
			var b bytes.Buffer
			_ = ws.WriteHeader(&b, ws.Header{OpCode: ws.OpText, Fin: true, Masked: true, Length: 1})
			return append(b.Bytes(), 'x')
		}(), wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolMaskUnexpected},
		{name: "RSV1 without deflate", stream: serverFrames(t, ws.Frame{Header: ws.Header{OpCode: ws.OpText, Fin: true, Rsv: ws.Rsv(true, false, false), Length: 1}, Payload: []byte("x")}),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolNonZeroRsv},
		{name: "RSV1 on a continuation", rsv1: true, stream: serverFrames(t,
			frag(ws.OpText, false, "x"),
			ws.Frame{Header: ws.Header{OpCode: ws.OpContinuation, Fin: true, Rsv: ws.Rsv(true, false, false), Length: 1}, Payload: []byte("y")}),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolNonZeroRsv},
		{name: "continuation first", stream: serverFrames(t, frag(ws.OpContinuation, true, "x")),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolContinuationUnexpected},
		{name: "new message inside a fragmented one", stream: serverFrames(t, frag(ws.OpText, false, "x"), frag(ws.OpText, true, "y")),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolContinuationExpected},
		{name: "too big", stream: serverFrames(t, ws.NewTextFrame(bytes.Repeat([]byte("x"), 11))),
			wantCode: ws.StatusMessageTooBig, wantErr: errMessageTooBig},
		{name: "too big across fragments", stream: serverFrames(t, frag(ws.OpText, false, "xxxxxx"), frag(ws.OpContinuation, true, "yyyyy")),
			wantCode: ws.StatusMessageTooBig, wantErr: errMessageTooBig},
		{name: "control too long", stream: append([]byte{0x89, 126, 0, 126}, make([]byte, 126)...),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolControlPayloadOverflow},
		{name: "fragmented control", stream: serverFrames(t, frag(ws.OpPing, false, "x")),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolControlNotFinal},
		{name: "reserved opcode", stream: serverFrames(t, frag(ws.OpCode(3), true, "x")),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolOpCodeReserved},
		{name: "length MSB", stream: msb, wantErr: ws.ErrHeaderLengthMSB},
		{name: "discard: reserved opcode", discard: true, stream: serverFrames(t, frag(ws.OpCode(0xB), true, "x")),
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolOpCodeReserved},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := socketPair(t)
			pool := bufPool()
			lc := &loopConn{c: c, h: newRecorder(), opts: &loopOpts{pool: pool, maxMsg: 10, discard: tc.discard}, rsv1: tc.rsv1}
			// Every split gives the same answer.
			for k := 0; k <= len(tc.stream); k++ {
				*lc = loopConn{c: lc.c, h: lc.h, opts: lc.opts, rsv1: lc.rsv1}
				done, code, err := lc.feed(tc.stream[:k], time.Now())
				if !done {
					done, code, err = lc.feed(tc.stream[k:], time.Now())
				}
				if !done || code != tc.wantCode || !errors.Is(err, tc.wantErr) {
					t.Fatalf("split at %d: feed = %v %d %v; want done %d %v", k, done, code, err, tc.wantCode, tc.wantErr)
				}
				lc.release()
			}
		})
	}
}

// TestLoopFeedDiscard: idle connections count data frames (fragments
// each) and skip them without buffering, and still answer pings.
func TestLoopFeedDiscard(t *testing.T) {
	c, peer := socketPair(t)
	rec := newRecorder()
	lc := &loopConn{c: c, h: rec, opts: &loopOpts{discard: true}}
	stream := serverFrames(t, ws.NewTextFrame(bytes.Repeat([]byte("z"), 1000)), ws.NewPingFrame([]byte("k")),
		frag(ws.OpBinary, false, "ab"), frag(ws.OpContinuation, true, "c"))
	for i := range stream {
		if done, code, err := lc.feed(stream[i:i+1], time.Now()); done {
			t.Fatalf("feed = done %d %v", code, err)
		}
	}
	want := []string{"text:1000:", "ping", "binary:2:", "continuation:1:"}
	if got := rec.got(); !slicesEqual(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if f := readClientFrameFrom(t, peer); f.Header.OpCode != ws.OpPong || string(f.Payload) != "k" {
		t.Fatalf("client sent %v %q, want pong", f.Header.OpCode, f.Payload)
	}
}

// startLoops starts n event loops whose afterRead hook sends on the
// returned channel, and stops them when the test ends.
func startLoops(t *testing.T, n int) (*eventLoops, chan struct{}) {
	t.Helper()
	reads := make(chan struct{}, 1024)
	ls, err := newEventLoopsHooked(n, func() {
		select {
		case reads <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ls.stop)
	return ls, reads
}

func waitEnded(t *testing.T, rec *recorder) {
	t.Helper()
	select {
	case <-rec.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
}

func write(t *testing.T, peer *os.File, b []byte) {
	t.Helper()
	if _, err := peer.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestEventLoopSplitReads: through a real loop and socket, the stream
// split at every byte boundary, each part a separate read (the second part
// is written only once the loop has read the first). The loop answers the
// pings, echoes the server's close and closes the socket.
func TestEventLoopSplitReads(t *testing.T) {
	stream, want := splitStream(t)
	ls, reads := startLoops(t, 1)
	opts := &loopOpts{pool: bufPool(), maxMsg: 1 << 20}
	for k := 1; k < len(stream); k++ {
		c, peer := socketPair(t)
		rec := newRecorder()
		for len(reads) > 0 {
			<-reads
		}
		ls.add(0, c, rec, opts, false, nil)
		write(t, peer, stream[:k])
		<-reads
		write(t, peer, stream[k:])
		waitEnded(t, rec)
		if rec.code != ws.StatusGoingAway || rec.err != nil {
			t.Fatalf("split at %d: ended %d %v; want 1001", k, rec.code, rec.err)
		}
		if got := rec.got(); !slicesEqual(got, want) {
			t.Fatalf("split at %d: events\n%q\nwant\n%q", k, got, want)
		}
		for _, p := range []string{"p1", "p2"} {
			if f := readClientFrameFrom(t, peer); f.Header.OpCode != ws.OpPong || string(f.Payload) != p {
				t.Fatalf("split at %d: client sent %v %q, want pong %q", k, f.Header.OpCode, f.Payload, p)
			}
		}
		if f := readClientFrameFrom(t, peer); f.Header.OpCode != ws.OpClose || binary.BigEndian.Uint16(f.Payload) != 1001 {
			t.Fatalf("split at %d: client sent %v %q, want its close echo", k, f.Header.OpCode, f.Payload)
		}
		if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("split at %d: after the close, read %v; want EOF", k, err)
		}
		_ = peer.Close()
	}
}

// TestEventLoopClientClose: the client starts the close handshake; the
// server's answer ends the connection without a second close frame.
func TestEventLoopClientClose(t *testing.T) {
	ls, _ := startLoops(t, 1)
	c, peer := socketPair(t)
	rec := newRecorder()
	ls.add(0, c, rec, &loopOpts{pool: bufPool(), maxMsg: 1 << 20}, false, nil)
	c.closing.Store(true)
	if err := c.writeClose(ws.StatusNormalClosure); err != nil {
		t.Fatal(err)
	}
	if f := readClientFrameFrom(t, peer); f.Header.OpCode != ws.OpClose || binary.BigEndian.Uint16(f.Payload) != 1000 {
		t.Fatalf("client sent %v %q, want close 1000", f.Header.OpCode, f.Payload)
	}
	write(t, peer, serverFrames(t, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
	waitEnded(t, rec)
	if rec.code != ws.StatusNormalClosure || rec.err != nil {
		t.Fatalf("ended %d %v, want 1000", rec.code, rec.err)
	}
	if n, err := peer.Read(make([]byte, 16)); err != io.EOF {
		t.Fatalf("after the handshake, read %d, %v; want EOF", n, err)
	}
	if err := c.writeClose(ws.StatusNormalClosure); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after the end = %v, want a closed-connection error", err)
	}
}

// TestEventLoopAbortAndProtocolError: abort (shutdown) ends a connection
// with EOF; a protocol error is answered with its status.
func TestEventLoopAbortAndProtocolError(t *testing.T) {
	ls, _ := startLoops(t, 1)
	opts := &loopOpts{pool: bufPool(), maxMsg: 1 << 20}

	c, _ := socketPair(t)
	rec := newRecorder()
	ls.add(0, c, rec, opts, false, nil)
	c.abort()
	waitEnded(t, rec)
	if !errors.Is(rec.err, io.EOF) {
		t.Errorf("after abort: ended %d %v, want EOF", rec.code, rec.err)
	}

	c, peer := socketPair(t)
	rec = newRecorder()
	ls.add(0, c, rec, opts, false, nil)
	write(t, peer, serverFrames(t, frag(ws.OpContinuation, true, "x")))
	waitEnded(t, rec)
	if rec.code != ws.StatusProtocolError || !errors.Is(rec.err, ws.ErrProtocolContinuationUnexpected) {
		t.Errorf("ended %d %v, want 1002", rec.code, rec.err)
	}
	if f := readClientFrameFrom(t, peer); f.Header.OpCode != ws.OpClose || binary.BigEndian.Uint16(f.Payload) != 1002 {
		t.Fatalf("client sent %v %q, want close 1002", f.Header.OpCode, f.Payload)
	}
}

// TestEventLoopPending: bytes the handshake read past the 101 response
// are parsed before the socket is read.
func TestEventLoopPending(t *testing.T) {
	ls, _ := startLoops(t, 1)
	c, peer := socketPair(t)
	rec := newRecorder()
	stream := serverFrames(t, ws.NewTextFrame([]byte("early")), frag(ws.OpText, false, "sp"))
	ls.add(0, c, rec, &loopOpts{pool: bufPool(), maxMsg: 1 << 20}, false, stream[:len(stream)-1])
	write(t, peer, stream[len(stream)-1:])
	write(t, peer, serverFrames(t, frag(ws.OpContinuation, true, "lit")))
	_ = peer.Close()
	waitEnded(t, rec)
	if got, want := rec.got(), []string{"text:5:early", "text:5:split"}; !slicesEqual(got, want) || !errors.Is(rec.err, io.EOF) {
		t.Fatalf("events %q (ended %v), want %q and EOF", got, rec.err, want)
	}
}

// TestEventLoopDeflate: compressed messages, whole and fragmented, reach
// the handler flagged compressed and inflate to the original.
func TestEventLoopDeflate(t *testing.T) {
	ls, reads := startLoops(t, 1)
	c, peer := socketPair(t)
	rec := newRecorder()
	ls.add(0, c, rec, &loopOpts{pool: bufPool(), maxMsg: 1 << 20}, true, nil)
	orig := strings.Repeat(`{"op":"message","data":"abcabc"}`, 20)
	f, err := wsflate.CompressFrame(ws.NewTextFrame([]byte(orig)))
	if err != nil {
		t.Fatal(err)
	}
	whole := serverFrames(t, f)
	half := len(f.Payload) / 2
	first := ws.Frame{Header: ws.Header{OpCode: ws.OpText, Rsv: ws.Rsv(true, false, false), Length: int64(half)}, Payload: f.Payload[:half]}
	rest := frag(ws.OpContinuation, true, string(f.Payload[half:]))
	split := serverFrames(t, first, rest)
	for _, b := range [][]byte{whole[:3], whole[3:], split[:half], split[half:]} {
		write(t, peer, b)
		<-reads
	}
	_ = peer.Close()
	waitEnded(t, rec)
	got := rec.got()
	if len(got) != 2 {
		t.Fatalf("events %q, want 2", got)
	}
	in := newInflater()
	for _, e := range got {
		p, ok := strings.CutPrefix(e, fmt.Sprintf("deflated text:%d:", len(f.Payload)))
		if !ok {
			t.Fatalf("event %q is not a compressed text message", e)
		}
		out, err := in.inflate([]byte(p), 1<<20)
		if err != nil || string(out) != orig {
			t.Fatalf("inflated %q, %v; want the original", out, err)
		}
	}
}

// TestEventLoopManyConns: many connections on one loop, their messages
// interleaved; each gets exactly its own, in order.
func TestEventLoopManyConns(t *testing.T) {
	const conns, msgs = 300, 20
	ls, _ := startLoops(t, 1)
	opts := &loopOpts{pool: bufPool(), maxMsg: 1 << 20}
	peers := make([]*os.File, conns)
	recs := make([]*recorder, conns)
	for i := range conns {
		c, peer := socketPair(t)
		peers[i], recs[i] = peer, newRecorder()
		ls.add(i, c, recs[i], opts, false, nil)
	}
	for k := range msgs {
		for i, p := range peers {
			write(t, p, serverFrames(t, ws.NewTextFrame(fmt.Appendf(nil, "%d/%d", i, k))))
		}
	}
	for _, p := range peers {
		write(t, p, serverFrames(t, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, ""))))
	}
	for i, rec := range recs {
		waitEnded(t, rec)
		got := rec.got()
		if len(got) != msgs || rec.code != ws.StatusGoingAway {
			t.Fatalf("conn %d: %d messages, ended %d %v", i, len(got), rec.code, rec.err)
		}
		for k, e := range got {
			if want := fmt.Sprintf("%d/%d", i, k); !strings.HasSuffix(e, ":"+want) {
				t.Fatalf("conn %d message %d = %q, want %q", i, k, e, want)
			}
		}
	}
	l := ls.loops[0]
	l.mu.Lock()
	left := len(l.conns)
	l.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections left on the loop", left)
	}
}

// TestEventLoopStopEndsTheRest: stop ends a connection still open.
func TestEventLoopStopEndsTheRest(t *testing.T) {
	ls, err := newEventLoops(2)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := socketPair(t)
	rec := newRecorder()
	ls.add(1, c, rec, &loopOpts{pool: bufPool(), maxMsg: 1 << 20}, false, nil)
	ls.stop()
	waitEnded(t, rec)
	if !errors.Is(rec.err, net.ErrClosed) {
		t.Errorf("ended %v, want net.ErrClosed", rec.err)
	}
}
