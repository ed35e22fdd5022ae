package conn

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/klauspost/compress/flate"
)

// permessage-deflate (RFC 7692). Surge always negotiates
// server_no_context_takeover and client_no_context_takeover: every message
// is compressed on its own, so a message is compressed once and the same
// bytes go to every subscriber that negotiated the extension, and no
// connection holds a compression window (32 KiB) while idle.

// ErrInflateTooBig is returned when a compressed message inflates beyond the limit.
var ErrInflateTooBig = errors.New("conn: inflated message exceeds the maximum message size")

var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// Deflater compresses and inflates messages with pooled state. One per
// server; safe for concurrent use.
type Deflater struct {
	// Level is the compression level (flate.BestSpeed…BestCompression).
	// Default flate.BestSpeed: fan-out is latency-bound.
	Level int

	once    sync.Once
	writers sync.Pool
	readers sync.Pool
}

func (d *Deflater) init() {
	d.once.Do(func() {
		if d.Level == 0 {
			d.Level = flate.BestSpeed
		}
	})
}

type pooledWriter struct {
	w   *flate.Writer
	buf bytes.Buffer
}

// CompressFrame returns a complete unfragmented server frame with RSV1 set
// whose payload is p compressed (RFC 7692 §7.2.1, without the final
// 0x00 0x00 0xff 0xff).
func (d *Deflater) CompressFrame(op ws.OpCode, p []byte) []byte {
	d.init()
	pw, _ := d.writers.Get().(*pooledWriter)
	if pw == nil {
		pw = new(pooledWriter)
		pw.w, _ = flate.NewWriter(&pw.buf, d.Level)
	}
	pw.buf.Reset()
	pw.w.Reset(&pw.buf)
	_, _ = pw.w.Write(p)
	_ = pw.w.Flush()
	out := bytes.TrimSuffix(pw.buf.Bytes(), deflateTail)
	frame := make([]byte, 0, HeaderSize(len(out))+len(out))
	frame = AppendHeader(frame, op, true, true, len(out))
	frame = append(frame, out...)
	if pw.buf.Cap() <= 256<<10 {
		d.writers.Put(pw)
	}
	return frame
}

// Inflate appends the decompression of a permessage-deflate payload to dst,
// failing with ErrInflateTooBig once the output would exceed max bytes (a
// deflate bomb costs at most max bytes of memory).
func (d *Deflater) Inflate(dst, p []byte, max int64) ([]byte, error) {
	d.init()
	src := io.MultiReader(bytes.NewReader(p), bytes.NewReader(deflateTail))
	r, _ := d.readers.Get().(io.ReadCloser)
	if r == nil {
		r = flate.NewReader(src)
	} else if err := r.(flate.Resetter).Reset(src, nil); err != nil {
		return dst, err
	}
	defer d.readers.Put(r)
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		room := cap(dst) - len(dst)
		n, err := r.Read(dst[len(dst):cap(dst)][:room])
		dst = dst[:len(dst)+n]
		if int64(len(dst)) > max {
			return dst, ErrInflateTooBig
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF && n == 0 {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}

// NegotiateDeflate is a gobwas/ws Upgrader.Negotiate function: it accepts
// the first acceptable permessage-deflate offer and answers with
// server_no_context_takeover and client_no_context_takeover. Offers with
// unknown, repeated or malformed parameters are declined (RFC 7692 §5.1), as
// are offers of server_max_window_bits below 15 (the compressor always uses
// a 32 KiB window). client_max_window_bits is accepted and not echoed (the
// inflater takes any window up to 32 KiB; RFC 7692 §7.1.2.2 allows this).
func NegotiateDeflate(accepted *bool) func(httphead.Option) (httphead.Option, error) {
	return func(opt httphead.Option) (httphead.Option, error) {
		if *accepted || string(opt.Name) != "permessage-deflate" {
			return httphead.Option{}, nil
		}
		ok := true
		seen := map[string]bool{}
		opt.Parameters.ForEach(func(k, v []byte) bool {
			key := string(k)
			if seen[key] {
				ok = false
				return false
			}
			seen[key] = true
			switch key {
			case "server_no_context_takeover", "client_no_context_takeover":
				ok = len(v) == 0
			case "server_max_window_bits":
				ok = validWindowBits(v, false) && (string(v) == "15" || string(v) == `"15"`)
			case "client_max_window_bits":
				ok = validWindowBits(v, true)
			default:
				ok = false
			}
			return ok
		})
		if !ok {
			return httphead.Option{}, nil // decline this offer; others may follow
		}
		*accepted = true
		resp := httphead.Option{Name: []byte("permessage-deflate")}
		resp.Parameters.Set([]byte("server_no_context_takeover"), nil)
		resp.Parameters.Set([]byte("client_no_context_takeover"), nil)
		return resp, nil
	}
}

func validWindowBits(v []byte, mayBeEmpty bool) bool {
	if len(v) == 0 {
		return mayBeEmpty
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
		if n > 15 {
			return false
		}
	}
	return n >= 8 && n <= 15
}
