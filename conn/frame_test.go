package conn

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func repeatByte(c byte, n int) []byte { return bytes.Repeat([]byte{c}, n) }

// rfcExamples are the frames of RFC 6455 §5.7, each as it appears on the wire.
var rfcExamples = []struct {
	name    string
	wire    []byte
	hdr     ws.Header // Mask is checked only when Masked
	n       int       // header size
	payload []byte    // unmasked payload
}{
	{
		name:    "single-frame unmasked text",
		wire:    []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f},
		hdr:     ws.Header{Fin: true, OpCode: ws.OpText, Length: 5},
		n:       2,
		payload: []byte("Hello"),
	},
	{
		name:    "single-frame masked text",
		wire:    []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
		hdr:     ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Mask: testMask, Length: 5},
		n:       6,
		payload: []byte("Hello"),
	},
	{
		name:    "fragmented unmasked text, first fragment",
		wire:    []byte{0x01, 0x03, 0x48, 0x65, 0x6c},
		hdr:     ws.Header{OpCode: ws.OpText, Length: 3},
		n:       2,
		payload: []byte("Hel"),
	},
	{
		name:    "fragmented unmasked text, last fragment",
		wire:    []byte{0x80, 0x02, 0x6c, 0x6f},
		hdr:     ws.Header{Fin: true, OpCode: ws.OpContinuation, Length: 2},
		n:       2,
		payload: []byte("lo"),
	},
	{
		name:    "unmasked ping",
		wire:    []byte{0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f},
		hdr:     ws.Header{Fin: true, OpCode: ws.OpPing, Length: 5},
		n:       2,
		payload: []byte("Hello"),
	},
	{
		name:    "masked pong",
		wire:    []byte{0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
		hdr:     ws.Header{Fin: true, OpCode: ws.OpPong, Masked: true, Mask: testMask, Length: 5},
		n:       6,
		payload: []byte("Hello"),
	},
	{
		name:    "256 bytes binary, 16-bit length",
		wire:    append([]byte{0x82, 0x7e, 0x01, 0x00}, repeatByte(0xab, 256)...),
		hdr:     ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 256},
		n:       4,
		payload: repeatByte(0xab, 256),
	},
	{
		name:    "64 KiB binary, 64-bit length",
		wire:    append([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}, repeatByte(0xcd, 65536)...),
		hdr:     ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 65536},
		n:       10,
		payload: repeatByte(0xcd, 65536),
	},
}

func TestParseHeaderRFCExamples(t *testing.T) {
	for _, tc := range rfcExamples {
		t.Run(tc.name, func(t *testing.T) {
			wire := append([]byte(nil), tc.wire...)
			h, n, err := ParseHeader(wire)
			if err != nil {
				t.Fatalf("ParseHeader: %v", err)
			}
			if n != tc.n {
				t.Fatalf("n = %d, want %d", n, tc.n)
			}
			if h != tc.hdr {
				t.Fatalf("header %+v, want %+v", h, tc.hdr)
			}
			if got := len(wire) - n; int64(got) != h.Length {
				t.Fatalf("%d payload bytes follow the header, header says %d", got, h.Length)
			}
			payload := wire[n:]
			if h.Masked {
				ws.Cipher(payload, h.Mask, 0)
			}
			if !bytes.Equal(payload, tc.payload) {
				t.Fatalf("payload %q, want %q", payload, tc.payload)
			}
		})
	}
}

func TestNewFrameRFCExamples(t *testing.T) {
	for _, tc := range rfcExamples {
		if tc.hdr.Masked || !tc.hdr.Fin {
			continue // servers send neither masked nor (through NewFrame) fragmented frames
		}
		t.Run(tc.name, func(t *testing.T) {
			got := NewFrame(tc.hdr.OpCode, tc.payload)
			if !bytes.Equal(got, tc.wire) {
				t.Fatalf("NewFrame = % x…, want % x…", got[:min(len(got), 12)], tc.wire[:min(len(tc.wire), 12)])
			}
			if len(got) != cap(got) {
				t.Fatalf("NewFrame: len %d, cap %d: want an exact-size slice", len(got), cap(got))
			}
			if n := HeaderSize(len(tc.payload)); n != tc.n {
				t.Fatalf("HeaderSize(%d) = %d, want %d", len(tc.payload), n, tc.n)
			}
		})
	}
}

func TestAppendHeader(t *testing.T) {
	tests := []struct {
		name string
		op   ws.OpCode
		fin  bool
		rsv1 bool
		n    int
		want []byte
	}{
		{"RFC fragmented first", ws.OpText, false, false, 3, []byte{0x01, 0x03}},
		{"RFC fragmented last", ws.OpContinuation, true, false, 2, []byte{0x80, 0x02}},
		{"RFC ping", ws.OpPing, true, false, 5, []byte{0x89, 0x05}},
		{"RFC 256 binary", ws.OpBinary, true, false, 256, []byte{0x82, 0x7e, 0x01, 0x00}},
		{"RFC 64 KiB binary", ws.OpBinary, true, false, 65536, []byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}},
		{"compressed text", ws.OpText, true, true, 5, []byte{0xc1, 0x05}},
		{"empty", ws.OpText, true, false, 0, []byte{0x81, 0x00}},
		{"7-bit max", ws.OpText, true, false, 125, []byte{0x81, 0x7d}},
		{"16-bit min", ws.OpText, true, false, 126, []byte{0x81, 0x7e, 0x00, 0x7e}},
		{"16-bit max", ws.OpText, true, false, 0xffff, []byte{0x81, 0x7e, 0xff, 0xff}},
		{"64-bit min", ws.OpText, true, false, 0x10000, []byte{0x81, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("xy")
			got := AppendHeader(prefix, tc.op, tc.fin, tc.rsv1, tc.n)
			if !bytes.Equal(got[:2], prefix) || !bytes.Equal(got[2:], tc.want) {
				t.Fatalf("AppendHeader = % x, want xy + % x", got, tc.want)
			}
			if HeaderSize(tc.n) != len(tc.want) {
				t.Fatalf("HeaderSize(%d) = %d, want %d", tc.n, HeaderSize(tc.n), len(tc.want))
			}
			// Round trip through the parser.
			h, n, err := ParseHeader(got[2:])
			var rsv byte
			if tc.rsv1 {
				rsv = 4
			}
			want := ws.Header{Fin: tc.fin, Rsv: rsv, OpCode: tc.op, Length: int64(tc.n)}
			if err != nil || n != len(tc.want) || h != want {
				t.Fatalf("ParseHeader(AppendHeader) = %+v, %d, %v; want %+v, %d", h, n, err, want, len(tc.want))
			}
		})
	}
}

func TestParseHeaderFlags(t *testing.T) {
	tests := []struct {
		b0   byte
		want ws.Header
	}{
		{0x00, ws.Header{OpCode: ws.OpContinuation}},
		{0x80, ws.Header{Fin: true, OpCode: ws.OpContinuation}},
		{0xc1, ws.Header{Fin: true, Rsv: 4, OpCode: ws.OpText}},
		{0xa2, ws.Header{Fin: true, Rsv: 2, OpCode: ws.OpBinary}},
		{0x98, ws.Header{Fin: true, Rsv: 1, OpCode: ws.OpClose}},
		{0x7f, ws.Header{Rsv: 7, OpCode: 0xf}},
		{0x83, ws.Header{Fin: true, OpCode: 3}},
	}
	for _, tc := range tests {
		h, n, err := ParseHeader([]byte{tc.b0, 0x00})
		if err != nil || n != 2 || h != tc.want {
			t.Errorf("ParseHeader(%#x 00) = %+v, %d, %v; want %+v, 2, nil", tc.b0, h, n, err, tc.want)
		}
	}
}

func TestParseHeaderLengthMSB(t *testing.T) {
	for _, masked := range []bool{false, true} {
		b := []byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0x01}
		if masked {
			b[1] |= 0x80
			b = append(b, testMask[:]...)
		}
		h, n, err := ParseHeader(b)
		if !errors.Is(err, errLengthMSB) || n != 0 {
			t.Errorf("masked=%v: ParseHeader(% x) = %+v, %d, %v; want errLengthMSB, 0", masked, b, h, n, err)
		}
		// Until all eight length bytes are there the header is just incomplete.
		for i := 0; i < 10; i++ {
			if _, n, err := ParseHeader(b[:i]); n != 0 || err != nil {
				t.Errorf("masked=%v: prefix %d: n=%d err=%v, want 0, nil", masked, i, n, err)
			}
		}
	}
	// The largest legal length parses.
	b := []byte{0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if h, n, err := ParseHeader(b); err != nil || n != 10 || h.Length != 1<<63-1 {
		t.Errorf("ParseHeader(max length) = %+v, %d, %v", h, n, err)
	}
}

func TestParseHeaderIncomplete(t *testing.T) {
	headers := [][]byte{
		{0x81, 0x05},
		{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d},
		{0x82, 0x7e, 0x01, 0x00},
		{0x82, 0xfe, 0x01, 0x00, 0x37, 0xfa, 0x21, 0x3d},
		{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0},
		{0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0x37, 0xfa, 0x21, 0x3d},
	}
	for _, full := range headers {
		if _, n, err := ParseHeader(full); n != len(full) || err != nil {
			t.Fatalf("ParseHeader(% x) n=%d err=%v, want %d", full, n, err, len(full))
		}
		for i := 0; i < len(full); i++ {
			h, n, err := ParseHeader(full[:i])
			if n != 0 || err != nil {
				t.Errorf("ParseHeader(% x) (prefix %d of %d) = %+v, %d, %v; want n=0, nil", full[:i], i, len(full), h, n, err)
			}
		}
	}
}

func TestHeaderSize(t *testing.T) {
	for n, want := range map[int]int{0: 2, 1: 2, 125: 2, 126: 4, 0xffff: 4, 0x10000: 10, 1 << 30: 10} {
		if got := HeaderSize(n); got != want {
			t.Errorf("HeaderSize(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestNewCloseFrame(t *testing.T) {
	long := strings.Repeat("a", 200)
	accent := strings.Repeat("a", 122) + "é" // é straddles the 123-byte limit
	tests := []struct {
		name   string
		code   ws.StatusCode
		reason string
		want   []byte
	}{
		{"no code", 0, "", []byte{0x88, 0x00}},
		{"no code drops the reason", 0, "ignored", []byte{0x88, 0x00}},
		{"normal", ws.StatusNormalClosure, "", []byte{0x88, 0x02, 0x03, 0xe8}},
		{"going away", ws.StatusGoingAway, "bye", []byte{0x88, 0x05, 0x03, 0xe9, 'b', 'y', 'e'}},
		{"slow consumer", ws.StatusPolicyViolation, "slow consumer", append([]byte{0x88, 15, 0x03, 0xf0}, "slow consumer"...)},
		{"long reason cut at 123 bytes", 4000, long, append([]byte{0x88, 125, 0x0f, 0xa0}, long[:123]...)},
		{"cut at a rune boundary", 4000, accent, append([]byte{0x88, 124, 0x0f, 0xa0}, accent[:122]...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := NewCloseFrame(tc.code, tc.reason)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("NewCloseFrame(%d, %q) = % x, want % x", tc.code, tc.reason, got, tc.want)
			}
			h, n, err := ParseHeader(got)
			if err != nil || n != 2 || ws.CheckHeader(h, ws.StateClientSide) != nil {
				t.Fatalf("not a valid control frame: %+v %d %v", h, n, err)
			}
			if !utf8.Valid(got[min(len(got), 4):]) {
				t.Fatalf("reason is not valid UTF-8: %q", got[4:])
			}
		})
	}
}

func TestTruncateUTF8(t *testing.T) {
	tests := []struct {
		s    string
		max  int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 5, "hello"},
		{"hello", 3, "hel"},
		{"héllo", 2, "h"},       // é is 2 bytes: drop it rather than split it
		{"héllo", 3, "hé"},      //
		{"✓✓", 4, "✓"},          // ✓ is 3 bytes
		{"✓✓", 5, "✓"},          //
		{"𝄞x", 3, ""},           // 4-byte rune
		{"\xff\xfe", 1, "\xff"}, // invalid input is cut bytewise
	}
	for _, tc := range tests {
		if got := truncateUTF8(tc.s, tc.max); got != tc.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", tc.s, tc.max, got, tc.want)
		}
	}
}
