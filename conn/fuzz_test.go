package conn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// headerSize computes the size of the frame header at the start of b from
// its first two bytes, independently of ParseHeader; 2 when b is shorter.
func headerSize(b []byte) int {
	if len(b) < 2 {
		return 2
	}
	n := 2
	switch b[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b[1]&0x80 != 0 {
		n += 4
	}
	return n
}

func FuzzParseHeader(f *testing.F) {
	for _, tc := range rfcExamples {
		f.Add(tc.wire[:min(len(tc.wire), 16)])
	}
	f.Add([]byte{})
	f.Add([]byte{0x81})
	f.Add([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0xff, 0xfe, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		size := headerSize(b)
		gh, gerr := ws.ReadHeader(bytes.NewReader(b)) // gobwas/ws as the reference
		switch {
		case err != nil:
			if !errors.Is(err, errLengthMSB) || n != 0 {
				t.Fatalf("ParseHeader(% x): n=%d err=%v", b, n, err)
			}
			if len(b) < 10 || b[1]&0x7f != 127 || b[2]&0x80 == 0 {
				t.Fatalf("ParseHeader(% x): MSB error on a header without a 64-bit length with the MSB set", b)
			}
			if !errors.Is(gerr, ws.ErrHeaderLengthMSB) && !errors.Is(gerr, io.ErrUnexpectedEOF) {
				t.Fatalf("ParseHeader(% x): MSB error; gobwas says %v", b, gerr)
			}
		case n == 0:
			if len(b) >= size {
				t.Fatalf("ParseHeader(% x): incomplete, but the header needs only %d bytes", b, size)
			}
			if !errors.Is(gerr, io.EOF) && !errors.Is(gerr, io.ErrUnexpectedEOF) {
				t.Fatalf("ParseHeader(% x): incomplete; gobwas says %+v, %v", b, gh, gerr)
			}
		default:
			if n != size || n > len(b) {
				t.Fatalf("ParseHeader(% x): n=%d, want %d", b, n, size)
			}
			if gerr != nil || gh != h {
				t.Fatalf("ParseHeader(% x) = %+v; gobwas: %+v, %v", b, h, gh, gerr)
			}
			if h.Length < 0 {
				t.Fatalf("ParseHeader(% x): negative length %d", b, h.Length)
			}
			// The header alone parses the same; one byte less is incomplete.
			if h2, n2, err2 := ParseHeader(b[:n]); h2 != h || n2 != n || err2 != nil {
				t.Fatalf("ParseHeader(header only) = %+v, %d, %v", h2, n2, err2)
			}
			if _, n2, err2 := ParseHeader(b[:n-1]); n2 != 0 || err2 != nil {
				t.Fatalf("ParseHeader(header minus one byte) n=%d err=%v", n2, err2)
			}
			// A server header for the same frame round-trips.
			if h.Rsv&^4 == 0 {
				enc := AppendHeader(nil, h.OpCode, h.Fin, h.Rsv == 4, int(h.Length))
				h3, n3, err3 := ParseHeader(enc)
				want := h
				want.Masked, want.Mask = false, [4]byte{}
				if err3 != nil || n3 != len(enc) || h3 != want || n3 != HeaderSize(int(h.Length)) {
					t.Fatalf("AppendHeader(%+v) = % x parses as %+v, %d, %v", want, enc, h3, n3, err3)
				}
			}
		}
	})
}

func FuzzParseHead(f *testing.F) {
	for _, s := range []string{
		upgradeRequest,
		browserUpgradeRequest,
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /v1/publish?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"GET / HTTP/1.1\r\nUpgrade: h2c, WebSocket\r\nconnection: Keep-Alive, close\r\n\r\n",
		"GET / HTTP/2.0\r\n\r\n",
		"GET /\r\n\r\n",
		"\r\n\r\n",
		"GET / HTTP/1.1\r\n bad: fold\r\n\r\n",
		"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseHead(b) // any bytes: must not panic
		n := ScanHead(b)
		if n == 0 {
			if bytes.Contains(b, crlfcrlf) {
				t.Fatalf("ScanHead missed the end of the head in %q", b)
			}
			return
		}
		if !bytes.HasSuffix(b[:n], crlfcrlf) || bytes.Contains(b[:n-1], crlfcrlf) {
			t.Fatalf("ScanHead(%q) = %d: not the first blank line", b, n)
		}
		head, err := ParseHead(b[:n])
		if err != nil {
			var he *HTTPError
			if !errors.As(err, &he) || he.Status != http.StatusBadRequest && he.Status != http.StatusHTTPVersionNotSupported {
				t.Fatalf("ParseHead(%q): error %v, want an *HTTPError 400 or 505", b[:n], err)
			}
			resp, rerr := http.ReadResponse(bufio.NewReader(bytes.NewReader(he.Response())), nil)
			if rerr != nil || resp.StatusCode != he.Status {
				t.Fatalf("HTTPError.Response() is not a %d response: %v", he.Status, rerr)
			}
			return
		}
		if head.HeadLen != n {
			t.Fatalf("HeadLen %d, want %d", head.HeadLen, n)
		}
		if !isToken(head.Method) {
			t.Fatalf("method %q is not a token", head.Method)
		}
		if len(head.Target) == 0 || head.Target[0] != '/' && string(head.Target) != "*" {
			t.Fatalf("target %q", head.Target)
		}
		target := head.Path
		if head.Query != nil {
			target = append(append(append([]byte(nil), head.Path...), '?'), head.Query...)
		}
		if !bytes.Equal(target, head.Target) || bytes.IndexByte(head.Path, '?') >= 0 {
			t.Fatalf("path %q + query %q != target %q", head.Path, head.Query, head.Target)
		}
		if p := string(head.Proto); p != "HTTP/1.1" && p != "HTTP/1.0" {
			t.Fatalf("proto %q accepted", p)
		}
		if head.ContentLength < -1 {
			t.Fatalf("content length %d", head.ContentLength)
		}
		// net/http as a reference where both accept the request.
		req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:n])))
		if rerr == nil {
			if req.Method != string(head.Method) || req.RequestURI != string(head.Target) {
				t.Fatalf("ParseHead: %s %s; net/http: %s %s", head.Method, head.Target, req.Method, req.RequestURI)
			}
		}
	})
}

func FuzzFeed(f *testing.F) {
	b := func(s string) []byte { return []byte(s) }
	seeds := [][]byte{
		nil,
		splitStream()[len(upgradeRequest):],
		clientFrame(ws.OpText, true, b("Hello")),
		clientFrame(ws.OpBinary, true, make([]byte, 300)),
		concat(clientFrame(ws.OpText, false, b("Hel")), clientFrame(ws.OpPing, true, b("p")), clientFrame(ws.OpContinuation, true, b("lo"))),
		clientFrame(ws.OpClose, true, closePayload(1000, "bye")),
		clientFrame(ws.OpClose, true, closePayload(1005, "")),
		clientFrame(ws.OpClose, true, []byte{3}),
		clientFrame(ws.OpText, true, b("\xff")),
		concat(clientFrame(ws.OpText, false, b("\xce")), clientFrame(ws.OpContinuation, true, b("\xbb"))),
		rawFrame(0x81, b("unmasked"), false),
		rawFrame(0xc1, b("rsv"), true),
		rawFrame(0x83, b("op3"), true),
		rawHeader(0x82, 32<<20, true),
		rawHeader(0x82, 1<<63, true),
		concat(clientFrame(ws.OpBinary, false, make([]byte, 1000)), rawHeader(0x00, 100, true)),
	}
	for _, s := range seeds {
		f.Add(s, uint(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		k := int(split % uint(len(data)+1))
		whole := fuzzConn(t)
		whole.feed(data)
		parts := fuzzConn(t)
		parts.feed(data[:k])
		parts.feed(data[k:])

		out, outParts := whole.tr.output(), parts.tr.output()
		if !bytes.Equal(out, outParts) {
			t.Fatalf("split at %d changes the output:\n whole %q\n split %q", k, out, outParts)
		}
		if !equalMessages(whole.h.messages(), parts.h.messages()) || whole.c.Reason() != parts.c.Reason() ||
			whole.c.Open() != parts.c.Open() {
			t.Fatalf("split at %d changes the outcome: %v %v / %v %v", k,
				whole.h.messages(), whole.c.Reason(), parts.h.messages(), parts.c.Reason())
		}
		checkFuzzedConn(t, whole)
	})
}

// fuzzConn is an open connection with a 1 KiB message limit whose handler
// echoes every message.
func fuzzConn(t *testing.T) *harness {
	h := newHarness(t, &Config{MaxMessageSize: 1 << 10})
	h.h.echo = true
	h.open()
	return h
}

func checkFuzzedConn(t *testing.T, h *harness) {
	t.Helper()
	for _, m := range h.h.messages() {
		if m.op != ws.OpText && m.op != ws.OpBinary {
			t.Fatalf("message with opcode %v", m.op)
		}
		if m.op == ws.OpText && !utf8.Valid(m.payload) {
			t.Fatalf("text message %q is not UTF-8", m.payload)
		}
		if len(m.payload) > 1<<10 {
			t.Fatalf("message of %d bytes over the limit", len(m.payload))
		}
	}
	fs := h.frames() // fails the test on anything but whole server frames
	var closeFrame *serverFrame
	for i, f := range fs {
		switch f.op() {
		case ws.OpPong:
			if len(f.payload) > ws.MaxControlFramePayloadSize {
				t.Fatalf("pong of %d bytes", len(f.payload))
			}
		case ws.OpText, ws.OpBinary: // echoes
		case ws.OpClose:
			if i != len(fs)-1 {
				t.Fatalf("frames after the close frame: %+v", fs[i+1:])
			}
			closeFrame = &fs[i]
		default:
			t.Fatalf("server sent %+v", f.h)
		}
	}
	if h.c.Open() {
		if closeFrame != nil {
			t.Fatal("close frame sent on a connection that is still open")
		}
		h.expectOpen()
		return
	}
	if closeFrame == nil {
		t.Fatalf("connection not open (reason %v) but no close frame sent", h.c.Reason())
	}
	code, _ := closeBody(t, closeFrame.payload)
	reason := h.c.Reason()
	switch reason {
	case ReasonProtocolError, ReasonInvalidPayload, ReasonTooBig:
		want := map[Reason]ws.StatusCode{
			ReasonProtocolError:  ws.StatusProtocolError,
			ReasonInvalidPayload: ws.StatusInvalidFramePayloadData,
			ReasonTooBig:         ws.StatusMessageTooBig,
		}[reason]
		if code != want {
			t.Fatalf("reason %v with close code %d, want %d", reason, code, want)
		}
	case ReasonClientClose:
		// The peer's code is echoed (1000 for a normal close).
		if code != 0 && !validCloseCode(code) {
			t.Fatalf("echoed invalid close code %d", code)
		}
	default:
		t.Fatalf("unexpected reason %v (close code %d)", reason, code)
	}
	if _, shuts, closes := h.tr.counts(); shuts != 1 || closes != 0 {
		t.Fatalf("CloseWrite %d Close %d after the close frame, want 1 and 0", shuts, closes)
	}
	h.tr.peerClose()
	h.expectClosed(reason)
}

// FuzzFeedRequest feeds arbitrary bytes to a connection in its HTTP phase,
// whole and split in two: the request parser must never panic and must
// answer the same however the bytes arrive.
func FuzzFeedRequest(f *testing.F) {
	for _, s := range []string{
		upgradeRequest,
		string(splitStream()),
		browserUpgradeRequest,
		"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.0\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 8\r\n\r\n",
		"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GARBAGE\r\n\r\n",
	} {
		f.Add([]byte(s), uint(len(s)/3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		k := int(split % uint(len(data)+1))
		whole := newHarness(t, &Config{MaxHeaderBytes: 1 << 10, MaxBodyBytes: 1 << 10})
		whole.feed(data)
		parts := newHarness(t, &Config{MaxHeaderBytes: 1 << 10, MaxBodyBytes: 1 << 10})
		parts.feed(data[:k])
		parts.feed(data[k:])
		if out, outParts := whole.tr.output(), parts.tr.output(); !bytes.Equal(out, outParts) {
			t.Fatalf("split at %d changes the output:\n whole %q\n split %q", k, out, outParts)
		}
		if !equalMessages(whole.h.messages(), parts.h.messages()) || whole.c.Reason() != parts.c.Reason() ||
			whole.c.Open() != parts.c.Open() || len(whole.h.requests) != len(parts.h.requests) {
			t.Fatalf("split at %d changes the outcome: %q %v / %q %v", k,
				whole.h.requests, whole.c.Reason(), parts.h.requests, parts.c.Reason())
		}
	})
}
