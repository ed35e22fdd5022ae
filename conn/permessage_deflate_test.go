package conn

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// deflateRequest offers permessage-deflate the way browsers do.
var deflateRequest = strings.Replace(upgradeRequest, "\r\n\r\n",
	"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n", 1)

// newDeflateHarness returns an open connection with permessage-deflate.
func newDeflateHarness(t testing.TB, cfg *Config) *harness {
	t.Helper()
	h := newHarness(t, cfg)
	h.h.deflate = true
	h.feed([]byte(deflateRequest))
	resp, _ := readResponse(t, h.tr.take())
	ext := resp.Header.Get("Sec-WebSocket-Extensions")
	if resp.StatusCode != 101 || !strings.HasPrefix(ext, "permessage-deflate") || !h.c.Deflate() {
		t.Fatalf("deflate not negotiated: status %d extensions %q", resp.StatusCode, ext)
	}
	return h
}

// deflated returns p compressed as a permessage-deflate payload.
func deflated(p []byte) []byte {
	frame := new(Deflater).CompressFrame(ws.OpBinary, p)
	_, n, _ := ParseHeader(frame)
	return frame[n:]
}

// compressedFrames returns a masked client message with RSV1 whose
// compressed payload is cut into parts frames.
func compressedFrames(op ws.OpCode, p []byte, parts int) []byte {
	z := deflated(p)
	var out []byte
	for i := range parts {
		chunk := z[i*len(z)/parts : (i+1)*len(z)/parts]
		var b0 byte
		if i == 0 {
			b0 = 0x40 | byte(op) // RSV1 on the first frame only (RFC 7692 §6.1)
		}
		if i == parts-1 {
			b0 |= 0x80
		}
		out = append(out, rawFrame(b0, chunk, true)...)
	}
	return out
}

func TestDeflateNegotiation(t *testing.T) {
	h := newDeflateHarness(t, nil)
	h.expectOpen()
	// Offered but not enabled by the server: nothing negotiated.
	h = newHarness(t, nil)
	h.feed([]byte(deflateRequest))
	resp, _ := readResponse(t, h.tr.take())
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" || h.c.Deflate() {
		t.Fatalf("extension %q negotiated without Negotiate", ext)
	}
}

func TestDeflateMessages(t *testing.T) {
	text := []byte(strings.Repeat("héllo wörld ", 100))
	bin := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 500)
	stream := concat(
		compressedFrames(ws.OpText, text, 1),
		compressedFrames(ws.OpBinary, bin, 3),
		clientFrame(ws.OpPing, true, []byte("p")),
		clientFrame(ws.OpText, true, []byte("plain")), // RSV1 clear: not compressed
		compressedFrames(ws.OpText, nil, 1),
	)
	want := []message{{ws.OpText, text}, {ws.OpBinary, bin}, {ws.OpText, []byte("plain")}, {ws.OpText, []byte{}}}
	for _, chunk := range []int{len(stream), 1000, 7, 1} {
		t.Run(fmt.Sprintf("reads of %d", chunk), func(t *testing.T) {
			h := newDeflateHarness(t, nil)
			for p := stream; len(p) > 0; {
				n := min(chunk, len(p))
				h.feed(p[:n])
				p = p[n:]
			}
			h.expectOpen()
			checkMessages(t, h.h.messages(), want...)
			if fs := h.frames(); len(fs) != 1 || fs[0].op() != ws.OpPong {
				t.Fatalf("frames %+v, want one pong", fs)
			}
		})
	}
}

func TestDeflateErrors(t *testing.T) {
	bomb := make([]byte, 2<<20) // 2 MiB of zeros compress to a few KiB
	tests := []struct {
		name   string
		input  []byte
		code   ws.StatusCode
		reason Reason
	}{
		{"deflate bomb", compressedFrames(ws.OpBinary, bomb, 1), ws.StatusMessageTooBig, ReasonTooBig},
		{"fragmented deflate bomb", compressedFrames(ws.OpBinary, bomb, 4), ws.StatusMessageTooBig, ReasonTooBig},
		{"compressed invalid UTF-8", compressedFrames(ws.OpText, []byte("ok\xff"), 1),
			ws.StatusInvalidFramePayloadData, ReasonInvalidPayload},
		{"not deflate data", rawFrame(0xc2, []byte{0xff, 0xff, 0xff, 0xff, 0xff}, true),
			ws.StatusInvalidFramePayloadData, ReasonInvalidPayload},
		{"RSV1 on a continuation", concat(clientFrame(ws.OpText, false, []byte("a")), rawFrame(0xc0, deflated([]byte("b")), true)),
			ws.StatusProtocolError, ReasonProtocolError},
		{"RSV1 on a ping", rawFrame(0xc9, nil, true), ws.StatusProtocolError, ReasonProtocolError},
		{"RSV1 on a close", rawFrame(0xc8, closePayload(1000, ""), true), ws.StatusProtocolError, ReasonProtocolError},
		{"RSV2", rawFrame(0xa1, []byte("x"), true), ws.StatusProtocolError, ReasonProtocolError},
		{"RSV3", rawFrame(0x91, []byte("x"), true), ws.StatusProtocolError, ReasonProtocolError},
		{"compressed header over the limit", rawHeader(0xc2, 2<<20, true), ws.StatusMessageTooBig, ReasonTooBig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newDeflateHarness(t, nil)
			h.feed(concat(tc.input, clientFrame(ws.OpText, true, []byte("ignored"))))
			if len(h.h.messages()) != 0 {
				t.Fatalf("messages delivered: %v", h.h.messages())
			}
			if fs := h.expectCloseFrame(tc.code, tc.reason); len(fs) != 1 {
				t.Fatalf("frames %+v, want only the close frame", fs)
			}
		})
	}
}

// TestDeflateMessageAtLimit: a message that inflates to exactly
// MaxMessageSize is delivered.
func TestDeflateMessageAtLimit(t *testing.T) {
	h := newDeflateHarness(t, &Config{MaxMessageSize: 1000})
	h.feed(compressedFrames(ws.OpBinary, make([]byte, 1000), 1))
	h.expectOpen()
	checkMessages(t, h.h.messages(), message{ws.OpBinary, make([]byte, 1000)})
}

// FuzzFeedDeflate is FuzzFeed on a connection with permessage-deflate.
func FuzzFeedDeflate(f *testing.F) {
	for _, s := range [][]byte{
		compressedFrames(ws.OpText, []byte("Hello"), 1),
		compressedFrames(ws.OpBinary, bytes.Repeat([]byte("abc"), 200), 3),
		compressedFrames(ws.OpBinary, make([]byte, 4000), 1),
		compressedFrames(ws.OpText, []byte("\xce\xbb\xff"), 2),
		rawFrame(0xc1, []byte{0x00, 0x05, 0x00, 0xfa, 0xff, 'a', 'b'}, true), // truncated stored block
		concat(compressedFrames(ws.OpText, []byte("a"), 1), clientFrame(ws.OpText, true, []byte("b"))),
	} {
		f.Add(s, uint(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		k := int(split % uint(len(data)+1))
		whole := newDeflateHarness(t, &Config{MaxMessageSize: 1 << 10})
		whole.h.echo = true
		whole.feed(data)
		parts := newDeflateHarness(t, &Config{MaxMessageSize: 1 << 10})
		parts.h.echo = true
		parts.feed(data[:k])
		parts.feed(data[k:])
		if !bytes.Equal(whole.tr.output(), parts.tr.output()) ||
			!equalMessages(whole.h.messages(), parts.h.messages()) || whole.c.Reason() != parts.c.Reason() {
			t.Fatalf("split at %d changes the outcome: %v %v / %v %v", k,
				whole.h.messages(), whole.c.Reason(), parts.h.messages(), parts.c.Reason())
		}
		checkFuzzedConn(t, whole)
	})
}
