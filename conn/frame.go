package conn

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// Frame parsing errors. Each maps to a close code through [closeCodeFor].
var (
	errLengthMSB = errors.New("conn: 64-bit payload length has its most significant bit set")
)

// ParseHeader parses a frame header from the start of b in place.
//
// It returns the header and its encoded size. When b holds only part of a
// header it returns n == 0 and a nil error: the caller keeps the bytes and
// calls again with more. Protocol rules that need connection state (masking,
// RSV bits, fragmentation) are checked by the caller with [ws.CheckHeader].
func ParseHeader(b []byte) (h ws.Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < n+2 {
			return h, 0, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[n:]))
		n += 2
	case 127:
		if len(b) < n+8 {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[n:])
		if u>>63 != 0 {
			// RFC 6455 §5.2: the most significant bit MUST be 0.
			return h, 0, errLengthMSB
		}
		h.Length = int64(u)
		n += 8
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}

// HeaderSize returns the encoded size of a server (unmasked) frame header
// for a payload of n bytes.
func HeaderSize(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// AppendHeader appends an unmasked server frame header to dst.
func AppendHeader(dst []byte, op ws.OpCode, fin, rsv1 bool, n int) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	if rsv1 {
		b0 |= 0x40
	}
	switch {
	case n <= 125:
		return append(dst, b0, byte(n))
	case n <= 0xffff:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, 127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}

// AppendFrame appends a complete unfragmented, unmasked server frame.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = AppendHeader(dst, op, true, false, len(payload))
	return append(dst, payload...)
}

// NewFrame returns a complete unfragmented server frame in a new slice of
// exactly the right size. The result is immutable by convention and may be
// shared by any number of write queues.
func NewFrame(op ws.OpCode, payload []byte) []byte {
	return AppendFrame(make([]byte, 0, HeaderSize(len(payload))+len(payload)), op, payload)
}

// NewCloseFrame returns a close frame carrying code and reason. Reasons longer
// than the 123 bytes a control frame allows are cut at a UTF-8 boundary.
func NewCloseFrame(code ws.StatusCode, reason string) []byte {
	if code == 0 {
		return NewFrame(ws.OpClose, nil)
	}
	reason = truncateUTF8(reason, ws.MaxControlFramePayloadSize-2)
	return NewFrame(ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && s[i]&0xc0 == 0x80 { // step back off continuation bytes
		i--
	}
	return s[:i]
}
