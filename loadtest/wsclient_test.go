package loadtest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// pipeConn returns a clientConn on one end of an in-memory pipe and the
// server end.
func pipeConn(t *testing.T) (*clientConn, net.Conn) {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	deadline := time.Now().Add(5 * time.Second)
	_ = client.SetDeadline(deadline)
	_ = server.SetDeadline(deadline)
	return newClientConn(client, nil), server
}

// readClientFrame reads one frame the client wrote, checks it is masked
// (RFC 6455 §5.3) and returns it unmasked.
func readClientFrame(t *testing.T, server net.Conn) ws.Frame {
	t.Helper()
	f, err := ws.ReadFrame(server)
	if err != nil {
		t.Fatalf("read client frame: %v", err)
	}
	if !f.Header.Masked {
		t.Fatalf("client frame %v is not masked", f.Header.OpCode)
	}
	return ws.UnmaskFrameInPlace(f)
}

func TestClientConnAnswersPingWithMaskedPong(t *testing.T) {
	c, server := pipeConn(t)
	payload := []byte("are you there?")
	go func() { _ = ws.WriteFrame(server, ws.NewPingFrame(payload)) }()

	type result struct {
		ev  frameEvent
		err error
	}
	res := make(chan result, 1)
	go func() {
		ev, _, _, err := c.readFrame()
		res <- result{ev, err}
	}()
	f := readClientFrame(t, server)
	if f.Header.OpCode != ws.OpPong || !bytes.Equal(f.Payload, payload) {
		t.Fatalf("answer = %v %q, want pong %q", f.Header.OpCode, f.Payload, payload)
	}
	if r := <-res; r.ev != evPing || r.err != nil {
		t.Fatalf("readFrame = %v, %v", r.ev, r.err)
	}
}

func TestClientConnReadsFrames(t *testing.T) {
	closeBody := func(code ws.StatusCode) []byte {
		b := make([]byte, 2)
		binary.BigEndian.PutUint16(b, uint16(code))
		return append(b, "bye"...)
	}
	tests := []struct {
		name     string
		frame    ws.Frame
		wantEv   frameEvent
		wantN    int64
		wantCode ws.StatusCode
		wantErr  error
	}{
		{
			name:   "text",
			frame:  ws.NewTextFrame([]byte(`{"op":"message","topic":"idle.1","seq":1,"data":{}}`)),
			wantEv: evData,
			wantN:  int64(len(`{"op":"message","topic":"idle.1","seq":1,"data":{}}`)),
		},
		{
			name:   "large binary is discarded, not buffered",
			frame:  ws.NewBinaryFrame(make([]byte, 70_000)),
			wantEv: evData,
			wantN:  70_000,
		},
		{
			name:   "pong",
			frame:  ws.NewPongFrame([]byte("x")),
			wantEv: evPong,
			wantN:  1,
		},
		{
			name:     "close with code",
			frame:    ws.NewCloseFrame(closeBody(ws.StatusGoingAway)),
			wantEv:   evClose,
			wantN:    5,
			wantCode: ws.StatusGoingAway,
		},
		{
			name:     "close without code",
			frame:    ws.NewCloseFrame(nil),
			wantEv:   evClose,
			wantCode: ws.StatusNoStatusRcvd,
		},
		{
			name:     "masked server frame",
			frame:    ws.MaskFrame(ws.NewTextFrame([]byte("hi"))),
			wantCode: ws.StatusProtocolError,
			wantErr:  ws.ErrProtocolMaskUnexpected,
		},
		{
			name:     "oversized control frame",
			frame:    ws.NewPingFrame(make([]byte, 126)),
			wantCode: ws.StatusProtocolError,
			wantErr:  ws.ErrProtocolControlPayloadOverflow,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, server := pipeConn(t)
			go func() { _ = ws.WriteFrame(server, tc.frame) }()
			ev, n, code, err := c.readFrame()
			if !errors.Is(err, tc.wantErr) || ev != tc.wantEv || n != tc.wantN || code != tc.wantCode {
				t.Fatalf("readFrame = %v, %d, %d, %v; want %v, %d, %d, %v",
					ev, n, code, err, tc.wantEv, tc.wantN, tc.wantCode, tc.wantErr)
			}
		})
	}
}

func TestClientConnWriteClose(t *testing.T) {
	c, server := pipeConn(t)
	go func() { _ = c.writeClose(ws.StatusNormalClosure) }()
	f := readClientFrame(t, server)
	code, _ := ws.ParseCloseFrameData(f.Payload)
	if f.Header.OpCode != ws.OpClose || code != ws.StatusNormalClosure {
		t.Fatalf("close frame = %v code %d, want close 1000", f.Header.OpCode, code)
	}
}

func TestClientConnKeepsHandshakeLeftovers(t *testing.T) {
	client, server := net.Pipe()
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	// A frame the server sent right behind its 101 response, already read
	// into the handshake's buffer.
	var buf bytes.Buffer
	_ = ws.WriteFrame(&buf, ws.NewTextFrame([]byte("early")))
	br := bufioReaderWith(buf.Bytes())
	c := newClientConn(client, br)
	ev, n, _, err := c.readFrame()
	if err != nil || ev != evData || n != 5 {
		t.Fatalf("readFrame = %v, %d, %v; want data 5", ev, n, err)
	}
}

// bufioReaderWith returns a bufio.Reader whose buffer holds b.
func bufioReaderWith(b []byte) *bufio.Reader {
	br := bufio.NewReaderSize(bytes.NewReader(b), 64)
	_, _ = br.Peek(len(b))
	return br
}
