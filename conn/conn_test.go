package conn

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func TestUpgrade(t *testing.T) {
	h := newHarness(t, nil)
	// A frame sent right behind the handshake, in the same read.
	h.feed(concat([]byte(upgradeRequest), clientFrame(ws.OpText, true, []byte("Hello"))))

	resp, rest := readResponse(t, h.tr.take())
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	for k, v := range map[string]string{"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": testAccept} {
		if got := resp.Header.Get(k); !strings.EqualFold(got, v) {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes after the 101 response, want none", len(rest))
	}
	h.expectOpen()
	checkMessages(t, h.h.messages(), message{ws.OpText, []byte("Hello")})
	if !slices.Equal(h.h.requests, []string{"/ws"}) || h.h.upgradeErrs[0] != nil {
		t.Fatalf("requests %q, upgrade errors %v", h.h.requests, h.h.upgradeErrs)
	}
	// An idle open connection holds neither read state nor a write queue.
	if h.c.rd != nil || h.c.wq != nil {
		t.Fatalf("idle connection holds read state %v / write queue %v", h.c.rd != nil, h.c.wq != nil)
	}
}

func TestUpgradeBrowserRequest(t *testing.T) {
	h := newHarness(t, nil)
	h.feed([]byte(browserUpgradeRequest))
	resp, _ := readResponse(t, h.tr.take())
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != testAccept {
		t.Fatalf("status %d accept %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	// permessage-deflate is offered but ws.Upgrader{} negotiates nothing.
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("unexpected extensions %q", ext)
	}
	h.expectOpen()
}

// paddedRequest returns a complete request head of exactly size bytes.
func paddedRequest(size int) string {
	const prefix = "GET /pad HTTP/1.1\r\nHost: x\r\nX-Pad: "
	return prefix + strings.Repeat("a", size-len(prefix)-4) + "\r\n\r\n"
}

func withoutLine(req, line string) string { return strings.Replace(req, line, "", 1) }

func TestHandshakeRejected(t *testing.T) {
	tests := []struct {
		name       string
		cfg        *Config
		req        string
		status     int
		header     string // "Key: value" that the response must carry
		reachesApp bool   // the request gets to ServeHTTP
	}{
		{
			name:       "missing Sec-WebSocket-Version",
			req:        withoutLine(upgradeRequest, "Sec-WebSocket-Version: 13\r\n"),
			status:     http.StatusUpgradeRequired,
			header:     "Sec-WebSocket-Version: 13",
			reachesApp: true,
		},
		{
			name:       "unknown Sec-WebSocket-Version",
			req:        strings.Replace(upgradeRequest, "Version: 13", "Version: 8", 1),
			status:     http.StatusUpgradeRequired,
			header:     "Sec-WebSocket-Version: 13",
			reachesApp: true,
		},
		{
			name:       "missing Sec-WebSocket-Key",
			req:        withoutLine(upgradeRequest, "Sec-WebSocket-Key: "+testKey+"\r\n"),
			status:     http.StatusBadRequest,
			reachesApp: true,
		},
		{
			name:       "missing Upgrade",
			req:        withoutLine(upgradeRequest, "Upgrade: websocket\r\n"),
			status:     http.StatusBadRequest,
			reachesApp: true,
		},
		{
			name:   "head over MaxHeaderBytes",
			req:    paddedRequest(8<<10 + 1),
			status: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name:   "unterminated head over MaxHeaderBytes",
			req:    "GET /ws HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", 8<<10),
			status: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name:   "head over a small MaxHeaderBytes",
			cfg:    &Config{MaxHeaderBytes: 64},
			req:    upgradeRequest,
			status: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name:   "chunked body",
			req:    "POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			status: http.StatusLengthRequired,
		},
		{
			name:   "Content-Length over MaxBodyBytes",
			req:    "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
			status: http.StatusRequestEntityTooLarge,
		},
		{
			name:   "bad Content-Length",
			req:    "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n",
			status: http.StatusBadRequest,
		},
		{
			name:   "conflicting Content-Length",
			req:    "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
			status: http.StatusBadRequest,
		},
		{
			name:   "malformed request line",
			req:    "GARBAGE\r\n\r\n",
			status: http.StatusBadRequest,
		},
		{
			name:   "space before colon",
			req:    "GET /ws HTTP/1.1\r\nHost : x\r\n\r\n",
			status: http.StatusBadRequest,
		},
		{
			name:   "HTTP/2.0",
			req:    "GET /ws HTTP/2.0\r\nHost: x\r\n\r\n",
			status: http.StatusHTTPVersionNotSupported,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.cfg)
			// Whatever follows a rejected request is ignored.
			h.feed(concat([]byte(tc.req), clientFrame(ws.OpText, true, []byte("x")), []byte(upgradeRequest)))
			h.feed([]byte(upgradeRequest))

			out := h.tr.output()
			resp, rest := readResponse(t, out)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d; response:\n%s", resp.StatusCode, tc.status, out)
			}
			if tc.header != "" {
				k, v, _ := strings.Cut(tc.header, ": ")
				if got := resp.Header.Get(k); got != v {
					t.Fatalf("%s: %q, want %q", k, got, v)
				}
			}
			if len(rest) != 0 {
				t.Fatalf("more than one response: %q", rest)
			}
			if n := len(h.h.requests); n != 0 != tc.reachesApp || n > 1 {
				t.Fatalf("ServeHTTP saw %q", h.h.requests)
			}
			if len(h.h.messages()) != 0 {
				t.Fatal("message delivered on a rejected connection")
			}
			h.tr.take()
			if fs := h.expectLingering(ReasonHandshakeFailed); len(fs) != 0 {
				t.Fatalf("frames written after the response: %v", fs)
			}
			h.tr.peerClose()
			h.expectClosed(ReasonHandshakeFailed)
		})
	}
}

func TestRequestLimitsBoundary(t *testing.T) {
	// A head of exactly MaxHeaderBytes is accepted.
	h := newHarness(t, nil)
	h.feed([]byte(paddedRequest(8 << 10)))
	if resp, _ := readResponse(t, h.tr.take()); resp.StatusCode != http.StatusOK {
		t.Fatalf("head of MaxHeaderBytes: status %d, want 200", resp.StatusCode)
	}
	// A body of exactly MaxBodyBytes is accepted and handed over whole.
	h = newHarness(t, &Config{MaxBodyBytes: 10})
	h.feed([]byte("POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123"))
	if out := h.tr.output(); len(out) != 0 {
		t.Fatalf("answered before the body arrived: %q", out)
	}
	h.feed([]byte("456789"))
	if resp, _ := readResponse(t, h.tr.take()); resp.StatusCode != http.StatusOK {
		t.Fatalf("body of MaxBodyBytes: status %d, want 200", resp.StatusCode)
	}
	if !bytes.HasSuffix(h.h.bodies[0], []byte("\r\n\r\n0123456789")) {
		t.Fatalf("raw request %q does not end with the body", h.h.bodies[0])
	}
}

func TestPlainHTTPKeepAlive(t *testing.T) {
	stream := "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" +
		"GET /ignored HTTP/1.1\r\n\r\n"
	for _, bytewise := range []bool{false, true} {
		t.Run(fmt.Sprintf("bytewise=%v", bytewise), func(t *testing.T) {
			h := newHarness(t, nil)
			if bytewise {
				for i := range len(stream) {
					h.feed([]byte{stream[i]})
				}
			} else {
				h.feed([]byte(stream))
			}
			out := h.tr.take()
			for _, path := range []string{"/healthz", "/v1/publish", "/last"} {
				var resp *http.Response
				resp, out = readResponse(t, out)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: status %d", path, resp.StatusCode)
				}
			}
			if len(out) != 0 {
				t.Fatalf("unexpected output after the last response: %q", out)
			}
			if want := []string{"/healthz", "/v1/publish", "/last"}; !slices.Equal(h.h.requests, want) {
				t.Fatalf("requests %q, want %q", h.h.requests, want)
			}
			if !bytes.HasSuffix(h.h.bodies[1], []byte("\r\n\r\nhello")) {
				t.Fatalf("POST raw request %q lacks its body", h.h.bodies[1])
			}
			h.expectLingering(ReasonHTTPDone)
			h.tr.peerClose()
			h.expectClosed(ReasonHTTPDone)
		})
	}
}

func TestPlainHTTPThenUpgrade(t *testing.T) {
	h := newHarness(t, nil)
	h.feed([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + upgradeRequest))
	resp, rest := readResponse(t, h.tr.take())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first response %d, want 200", resp.StatusCode)
	}
	if resp, _ = readResponse(t, rest); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("second response %d, want 101", resp.StatusCode)
	}
	h.expectOpen()
}

// splitStream is a handshake followed by frames that exercise every state
// the parser keeps between reads.
func splitStream() []byte {
	bin300 := make([]byte, 300)
	for i := range bin300 {
		bin300[i] = byte(i)
	}
	text := []byte("héllo wörld ✓ 𝄞")
	cut := bytes.IndexRune(text, '✓') + 1 // inside ✓
	return concat(
		[]byte(upgradeRequest),
		clientFrame(ws.OpText, true, []byte("Hello")),
		clientFrame(ws.OpBinary, true, bin300),
		clientFrame(ws.OpPing, true, []byte("p1")),
		clientFrame(ws.OpText, false, []byte("Hel")),
		clientFrame(ws.OpPing, true, []byte("p2")),
		clientFrame(ws.OpContinuation, false, nil),
		clientFrame(ws.OpContinuation, true, []byte("lo")),
		clientFrame(ws.OpBinary, true, nil),
		clientFrame(ws.OpText, false, text[:cut]),
		clientFrame(ws.OpContinuation, true, text[cut:]),
		clientFrame(ws.OpPong, true, []byte("unsolicited")),
		clientFrame(ws.OpClose, true, closePayload(1000, "bye")),
		clientFrame(ws.OpText, true, []byte("after close")),
	)
}

type runResult struct {
	out    []byte
	msgs   []message
	reason Reason
}

func runFeeds(t *testing.T, feeds ...[]byte) runResult {
	t.Helper()
	h := newHarness(t, nil)
	for _, p := range feeds {
		h.feed(p)
	}
	return runResult{h.tr.output(), h.h.messages(), h.c.Reason()}
}

func TestSplitStream(t *testing.T) {
	stream := splitStream()
	ref := runFeeds(t, stream)

	// The reference run itself.
	bin300 := make([]byte, 300)
	for i := range bin300 {
		bin300[i] = byte(i)
	}
	checkMessages(t, ref.msgs,
		message{ws.OpText, []byte("Hello")},
		message{ws.OpBinary, bin300},
		message{ws.OpText, []byte("Hello")},
		message{ws.OpBinary, []byte{}},
		message{ws.OpText, []byte("héllo wörld ✓ 𝄞")},
	)
	resp, rest := readResponse(t, ref.out)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	fs := parseServerFrames(t, rest)
	if len(fs) != 3 || fs[0].op() != ws.OpPong || string(fs[0].payload) != "p1" ||
		fs[1].op() != ws.OpPong || string(fs[1].payload) != "p2" {
		t.Fatalf("frames %+v, want pong p1, pong p2, close", fs)
	}
	checkLastClose(t, fs, ws.StatusNormalClosure)
	if ref.reason != ReasonClientClose {
		t.Fatalf("reason %v, want client_close", ref.reason)
	}

	same := func(t *testing.T, got runResult, desc string) {
		t.Helper()
		if !bytes.Equal(got.out, ref.out) {
			t.Fatalf("%s: output differs:\n got %q\nwant %q", desc, got.out, ref.out)
		}
		if !equalMessages(got.msgs, ref.msgs) || got.reason != ref.reason {
			t.Fatalf("%s: messages %v reason %v, want %v %v", desc, got.msgs, got.reason, ref.msgs, ref.reason)
		}
	}
	for i := 0; i <= len(stream); i++ {
		same(t, runFeeds(t, stream[:i], stream[i:]), fmt.Sprintf("split at %d", i))
	}
	var bytewise [][]byte
	for i := range stream {
		bytewise = append(bytewise, stream[i:i+1])
	}
	same(t, runFeeds(t, bytewise...), "byte by byte")

	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		cuts := []int{0, len(stream)}
		for range 1 + rng.IntN(5) {
			cuts = append(cuts, rng.IntN(len(stream)+1))
		}
		slices.Sort(cuts)
		var feeds [][]byte
		for j := 1; j < len(cuts); j++ {
			feeds = append(feeds, stream[cuts[j-1]:cuts[j]])
		}
		same(t, runFeeds(t, feeds...), fmt.Sprintf("split at %v", cuts))
	}
}

func TestLargeMessagesAcrossReads(t *testing.T) {
	big := make([]byte, 70000) // 64-bit length
	for i := range big {
		big[i] = byte(i * 7)
	}
	mid := bytes.Repeat([]byte("ü"), 200) // 16-bit length, runes cut by the chunking
	stream := concat(
		clientFrame(ws.OpBinary, true, big),
		clientFrame(ws.OpText, false, mid[:151]),
		clientFrame(ws.OpPing, true, []byte("mid")),
		clientFrame(ws.OpContinuation, true, mid[151:]),
	)
	for _, chunk := range []int{1, 7, 1000, 4096} {
		h := newHarness(t, nil)
		h.open()
		for p := stream; len(p) > 0; {
			n := min(chunk, len(p))
			h.feed(p[:n])
			p = p[n:]
		}
		h.expectOpen()
		checkMessages(t, h.h.messages(), message{ws.OpBinary, big}, message{ws.OpText, mid})
		fs := h.frames()
		if len(fs) != 1 || fs[0].op() != ws.OpPong || string(fs[0].payload) != "mid" {
			t.Fatalf("chunk %d: frames %+v, want one pong", chunk, fs)
		}
		if h.c.rd != nil {
			t.Fatalf("chunk %d: read state kept after the message completed", chunk)
		}
	}
}

func TestFrameErrors(t *testing.T) {
	type tcase struct {
		name   string
		cfg    *Config
		input  []byte
		code   ws.StatusCode
		reason Reason
	}
	proto := func(name string, input ...[]byte) tcase {
		return tcase{name: name, input: concat(input...), code: ws.StatusProtocolError, reason: ReasonProtocolError}
	}
	utf := func(name string, input ...[]byte) tcase {
		return tcase{name: name, input: concat(input...), code: ws.StatusInvalidFramePayloadData, reason: ReasonInvalidPayload}
	}
	big := func(name string, max int64, input ...[]byte) tcase {
		return tcase{name: name, cfg: &Config{MaxMessageSize: max}, input: concat(input...), code: ws.StatusMessageTooBig, reason: ReasonTooBig}
	}
	b := func(s string) []byte { return []byte(s) }
	tests := []tcase{
		proto("unmasked text", rawFrame(0x81, b("Hello"), false)),
		proto("unmasked close", rawFrame(0x88, closePayload(1000, ""), false)),
		proto("RSV1", rawFrame(0xc1, b("Hello"), true)),
		proto("RSV2", rawFrame(0xa1, b("Hello"), true)),
		proto("RSV3", rawFrame(0x91, b("Hello"), true)),
		proto("RSV1 on a ping", rawFrame(0xc9, nil, true)),
		proto("ping of 126 bytes", clientFrame(ws.OpPing, true, make([]byte, 126))),
		proto("pong of 126 bytes", clientFrame(ws.OpPong, true, make([]byte, 126))),
		proto("close of 126 bytes", clientFrame(ws.OpClose, true, closePayload(1000, strings.Repeat("x", 124)))),
		proto("fragmented ping", clientFrame(ws.OpPing, false, b("x"))),
		proto("fragmented close", clientFrame(ws.OpClose, false, closePayload(1000, ""))),
		proto("continuation with nothing to continue", clientFrame(ws.OpContinuation, true, b("x"))),
		proto("non-final continuation with nothing to continue", clientFrame(ws.OpContinuation, false, b("x"))),
		proto("text inside a fragmented text message",
			clientFrame(ws.OpText, false, b("Hel")), clientFrame(ws.OpText, true, b("lo"))),
		proto("binary inside a fragmented text message",
			clientFrame(ws.OpText, false, b("Hel")), clientFrame(ws.OpBinary, true, b("lo"))),
		proto("text inside a fragmented binary message",
			clientFrame(ws.OpBinary, false, b("Hel")), clientFrame(ws.OpText, false, b("lo"))),
		proto("continuation after a complete message",
			clientFrame(ws.OpText, true, b("Hello")), clientFrame(ws.OpContinuation, true, b("x"))),
		proto("close with a 1-byte payload", clientFrame(ws.OpClose, true, []byte{0x03})),
		proto("64-bit length with the MSB set",
			[]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0x05}, testMask[:]),
		utf("invalid UTF-8 text", clientFrame(ws.OpText, true, b("Hello\xff"))),
		utf("truncated UTF-8 text", clientFrame(ws.OpText, true, b("\xe2\x82"))),
		utf("UTF-16 surrogate", clientFrame(ws.OpText, true, b("\xed\xa0\x80"))),
		utf("overlong encoding", clientFrame(ws.OpText, true, b("\xc0\xaf"))),
		utf("code point above U+10FFFF", clientFrame(ws.OpText, true, b("\xf4\x90\x80\x80"))),
		utf("invalid UTF-8 in a fragmented message",
			clientFrame(ws.OpText, false, b("ab\xce")), clientFrame(ws.OpContinuation, true, b("\xff"))),
		utf("invalid UTF-8 in the first fragment",
			clientFrame(ws.OpText, false, b("\xff")), clientFrame(ws.OpContinuation, true, b("ok"))),
		utf("fragmented message ending inside a rune",
			clientFrame(ws.OpText, false, b("ab")), clientFrame(ws.OpContinuation, true, b("\xce"))),
		utf("close reason with bad UTF-8", clientFrame(ws.OpClose, true, closePayload(1000, "bye\xff"))),
		big("header of a 32 MiB frame", 0, rawHeader(0x82, 32<<20, true)),
		big("header of a 32 MiB text frame", 0, rawHeader(0x81, 32<<20, true)),
		big("header of a 2^62-byte frame", 0, rawHeader(0x82, 1<<62, true)),
		big("one byte over the limit", 100, rawHeader(0x82, 101, true)),
		big("fragmented message crossing the limit", 100,
			clientFrame(ws.OpText, false, make([]byte, 60)), rawHeader(0x00, 41, true)),
		big("many small fragments crossing the limit", 100,
			clientFrame(ws.OpBinary, false, make([]byte, 50)),
			clientFrame(ws.OpContinuation, false, make([]byte, 50)),
			clientFrame(ws.OpContinuation, true, make([]byte, 1))),
	}
	for _, op := range []byte{3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf} {
		tests = append(tests, proto(fmt.Sprintf("reserved opcode %#x", op), rawFrame(0x80|op, b("x"), true)))
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.cfg)
			h.open()
			// Input behind the bad frame, in the same read and in the
			// next, is ignored.
			h.feed(concat(tc.input, clientFrame(ws.OpText, true, []byte("ignored"))))
			h.feed(concat(clientFrame(ws.OpText, true, []byte("ignored")), clientFrame(ws.OpPing, true, nil)))
			if msgs := h.h.messages(); len(msgs) > 1 || len(msgs) == 1 && string(msgs[0].payload) != "Hello" {
				t.Fatalf("messages delivered: %v", msgs)
			}
			fs := h.expectCloseFrame(tc.code, tc.reason)
			if len(fs) != 1 {
				t.Fatalf("frames %+v, want only the close frame", fs)
			}
		})
	}
}

func TestFrameAtTheSizeLimit(t *testing.T) {
	h := newHarness(t, &Config{MaxMessageSize: 100})
	h.open()
	h.feed(concat(
		clientFrame(ws.OpBinary, true, make([]byte, 100)),
		clientFrame(ws.OpText, false, bytes.Repeat([]byte("a"), 50)),
		clientFrame(ws.OpPing, true, make([]byte, 125)), // control frames do not count
		clientFrame(ws.OpContinuation, true, bytes.Repeat([]byte("b"), 50)),
	))
	h.expectOpen()
	checkMessages(t, h.h.messages(),
		message{ws.OpBinary, make([]byte, 100)},
		message{ws.OpText, []byte(strings.Repeat("a", 50) + strings.Repeat("b", 50))})
}

// TestInputIgnoredAfterFailure fails a connection whose socket is full, so
// that it stays in its closing state with the close frame still queued.
func TestInputIgnoredAfterFailure(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.tr.setCapacity(0)
	h.feed(concat(rawFrame(0x81, []byte("unmasked"), false), clientFrame(ws.OpText, true, []byte("lost"))))
	if h.c.Open() || h.c.Closed() {
		t.Fatalf("open=%v closed=%v, want closing", h.c.Open(), h.c.Closed())
	}
	if waits, shuts, _ := h.tr.counts(); waits != 1 || shuts != 0 {
		t.Fatalf("WaitWritable %d CloseWrite %d, want 1 and 0 while the close frame is queued", waits, shuts)
	}
	h.feed(clientFrame(ws.OpText, true, []byte("lost")))
	h.feed(clientFrame(ws.OpPing, true, []byte("no pong")))
	h.feed(clientFrame(ws.OpClose, true, closePayload(1000, "")))
	if h.c.Send(NewFrame(ws.OpText, []byte("x"))) {
		t.Fatal("Send succeeded on a failed connection")
	}
	if len(h.h.messages()) != 0 {
		t.Fatalf("messages delivered after the failure: %v", h.h.messages())
	}
	h.tr.setCapacity(-1)
	h.c.OnWritable()
	if fs := h.expectCloseFrame(ws.StatusProtocolError, ReasonProtocolError); len(fs) != 1 {
		t.Fatalf("frames %+v, want only the close frame", fs)
	}
}

func TestCloseCodes(t *testing.T) {
	for _, code := range []uint16{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		t.Run(fmt.Sprintf("invalid %d", code), func(t *testing.T) {
			h := newHarness(t, nil)
			h.open()
			h.feed(clientFrame(ws.OpClose, true, closePayload(code, "")))
			h.expectCloseFrame(ws.StatusProtocolError, ReasonProtocolError)
		})
	}
	valid := []uint16{1000, 1001, 1002, 1003, 3000, 3999, 4000, 4999}
	for c := uint16(1007); c <= 1014; c++ {
		valid = append(valid, c)
	}
	for _, code := range valid {
		t.Run(fmt.Sprintf("echo %d", code), func(t *testing.T) {
			h := newHarness(t, nil)
			h.open()
			h.feed(clientFrame(ws.OpClose, true, closePayload(code, "reason ✓")))
			h.expectCloseFrame(ws.StatusCode(code), ReasonClientClose)
		})
	}
	t.Run("empty close is echoed empty", func(t *testing.T) {
		h := newHarness(t, nil)
		h.open()
		h.feed(clientFrame(ws.OpClose, true, nil))
		fs := h.expectCloseFrame(0, ReasonClientClose)
		if len(fs[0].payload) != 0 {
			t.Fatalf("close payload % x, want empty", fs[0].payload)
		}
	})
}

func TestClientClose(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	// The close frame arrives in two reads (a partial control frame).
	frame := clientFrame(ws.OpClose, true, closePayload(1000, "bye"))
	h.feed(frame[:5])
	h.expectOpen()
	h.feed(concat(frame[5:], clientFrame(ws.OpText, true, []byte("after close"))))
	if h.c.Send(NewFrame(ws.OpText, []byte("late"))) {
		t.Fatal("Send succeeded after the peer's close frame")
	}
	fs := h.expectLingering(ReasonClientClose)
	checkLastClose(t, fs, ws.StatusNormalClosure)
	if len(h.h.messages()) != 0 {
		t.Fatalf("message after the close frame delivered: %v", h.h.messages())
	}
	h.tr.peerClose()
	h.expectClosed(ReasonClientClose)
	h.tr.peerClose() // a second report is not a second OnClose
	h.expectClosed(ReasonClientClose)
}

func TestClientCloseLingerTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.at(time1s)
	h.feed(clientFrame(ws.OpClose, true, closePayload(1001, "")))
	h.expectLingering(ReasonClientClose)
	h.at(time1s + h.cfg.CloseTimeout - tick)
	if h.c.Closed() {
		t.Fatal("closed before CloseTimeout")
	}
	h.at(time1s + h.cfg.CloseTimeout)
	h.expectClosed(ReasonClientClose)
	if _, shuts, closes := h.tr.counts(); shuts != 1 || closes != 1 {
		t.Fatalf("CloseWrite %d Close %d, want 1 and 1", shuts, closes)
	}
}

func TestPingPong(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	max := bytes.Repeat([]byte{0xee}, 125)
	ping := clientFrame(ws.OpPing, true, max)
	h.feed(concat(
		// RFC 6455 §5.7: masked ping "Hello".
		[]byte{0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
		clientFrame(ws.OpPing, true, nil),
		clientFrame(ws.OpPong, true, []byte("unsolicited")),
		ping[:40], // the last ping arrives in two reads
	))
	h.feed(ping[40:])
	h.expectOpen()
	fs := h.frames()
	want := [][]byte{[]byte("Hello"), {}, max}
	if len(fs) != len(want) {
		t.Fatalf("%d frames, want %d pongs", len(fs), len(want))
	}
	for i, f := range fs {
		if f.op() != ws.OpPong || !f.h.Fin || !bytes.Equal(f.payload, want[i]) {
			t.Fatalf("frame %d: %+v %q, want pong %q", i, f.h, f.payload, want[i])
		}
	}
	if len(h.h.messages()) != 0 {
		t.Fatal("control frames delivered as messages")
	}
}

func TestPingInsideFragmentedMessage(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.feed(concat(
		clientFrame(ws.OpText, false, []byte("Hel")),
		clientFrame(ws.OpPing, true, []byte("ping!")),
		clientFrame(ws.OpPong, true, nil),
		clientFrame(ws.OpContinuation, true, []byte("lo")),
	))
	h.expectOpen()
	fs := h.frames()
	if len(fs) != 1 || fs[0].op() != ws.OpPong || string(fs[0].payload) != "ping!" {
		t.Fatalf("frames %+v, want pong \"ping!\"", fs)
	}
	checkMessages(t, h.h.messages(), message{ws.OpText, []byte("Hello")})
}

func TestCloseInsideFragmentedMessage(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.feed(concat(
		clientFrame(ws.OpText, false, []byte("Hel")),
		clientFrame(ws.OpClose, true, closePayload(1000, "")),
		clientFrame(ws.OpContinuation, true, []byte("lo")),
	))
	h.expectCloseFrame(ws.StatusNormalClosure, ReasonClientClose)
	if len(h.h.messages()) != 0 {
		t.Fatalf("partial message delivered: %v", h.h.messages())
	}
}

func TestPeerGone(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.feed(clientFrame(ws.OpText, false, []byte("half a message")))
	h.tr.peerClose()
	h.expectClosed(ReasonPeerGone)
	if h.c.Send(NewFrame(ws.OpText, []byte("x"))) {
		t.Fatal("Send succeeded on a closed connection")
	}
	h.feed(clientFrame(ws.OpText, true, []byte("x"))) // a late read is ignored
	if len(h.h.messages()) != 0 || h.c.rd != nil {
		t.Fatal("input processed after the socket closed")
	}
}

// A transport that reports OnTransportClosed synchronously from Close, even
// inside Feed, must not crash the parser: a failed 101 write used to close
// inline from feedHTTP, which then dereferenced the read state that
// OnTransportClosed had returned to the pool (fixed in 9e343a3: aborts go
// through the wheel).
func TestSyncCloseTransportDuringSplitHandshake(t *testing.T) {
	h := newHarness(t, nil)
	h.tr.syncClose = true
	h.tr.writeErr = errors.New("broken pipe")
	h.feed([]byte(upgradeRequest[:20]))
	h.feed([]byte(upgradeRequest[20:]))
	h.settle()
	h.expectClosed(ReasonWriteError)
}

func TestAbort(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.c.Abort(ReasonInternal)
	h.expectClosed(ReasonInternal)
	if fs := h.frames(); len(fs) != 0 {
		t.Fatalf("Abort wrote %v", fs)
	}
}

func checkMessages(t *testing.T, got []message, want ...message) {
	t.Helper()
	if !equalMessages(got, want) {
		t.Fatalf("messages:\n got %v\nwant %v", got, want)
	}
}

func equalMessages(a, b []message) bool {
	return slices.EqualFunc(a, b, func(x, y message) bool { return x.op == y.op && bytes.Equal(x.payload, y.payload) })
}

func (m message) String() string {
	if m.op == ws.OpText && utf8.Valid(m.payload) && len(m.payload) <= 40 {
		return fmt.Sprintf("text %q", m.payload)
	}
	return fmt.Sprintf("op %d (%d bytes)", m.op, len(m.payload))
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{ReasonNone.String(): true}
	rs := Reasons()
	if len(rs) != NumReasons-1 || rs[0] != ReasonNone+1 {
		t.Fatalf("Reasons() = %v, want %d reasons after none", rs, NumReasons-1)
	}
	for _, r := range rs {
		name := r.String()
		if name == "" || name == "unknown" || seen[name] {
			t.Errorf("reason %d: name %q empty or repeated", r, name)
		}
		seen[name] = true
	}
	if got := Reason(NumReasons).String(); got != "unknown" {
		t.Errorf("out-of-range reason: %q", got)
	}
}
