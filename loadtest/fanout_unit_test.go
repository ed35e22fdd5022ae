package loadtest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
)

func TestSeqSet(t *testing.T) {
	const n = 1000
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name  string
		order func() []uint64
	}{
		{"in order", func() []uint64 {
			var o []uint64
			for i := uint64(1); i <= n; i++ {
				o = append(o, i)
			}
			return o
		}},
		{"shuffled with holes and repeats", func() []uint64 {
			var o []uint64
			for i := uint64(1); i <= n; i++ {
				if i%97 != 0 {
					o = append(o, i)
				}
				if i%31 == 0 {
					o = append(o, i)
				}
			}
			rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
			return o
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s seqSet
			ref := map[uint64]bool{}
			for _, v := range tc.order() {
				if got, want := s.add(v), !ref[v]; got != want {
					t.Fatalf("add(%d) = %v, want %v", v, got, want)
				}
				ref[v] = true
			}
			for v := uint64(1); v <= n+100; v++ {
				if s.has(v) != ref[v] {
					t.Fatalf("has(%d) = %v, want %v", v, s.has(v), ref[v])
				}
			}
			// Against a bitmap of every odd number up to n+64.
			other := make([]uint64, (n+64+63)/64)
			var want int64
			for v := uint64(1); v <= n+64; v += 2 {
				bitmapSet(other, v)
				if ref[v] {
					want++
				}
			}
			if got := s.countIn(other); got != want {
				t.Errorf("countIn = %d, want %d", got, want)
			}
		})
	}
	var s seqSet
	for v := uint64(1); v <= 64*10; v++ {
		s.add(v)
	}
	if s.base != 640 || len(s.words) != 0 {
		t.Errorf("a complete set keeps base %d and %d words, want 640 and 0", s.base, len(s.words))
	}
}

func TestFindMetric(t *testing.T) {
	text := []byte("# HELP process_cpu_seconds_total Total.\n# TYPE process_cpu_seconds_total counter\n" +
		"process_cpu_seconds_total_bogus 7\nprocess_cpu_seconds_total{a=\"b\"} 8\nprocess_cpu_seconds_total 12.5 1700000000\n")
	if v, err := findMetric(text, "process_cpu_seconds_total"); err != nil || v != 12.5 {
		t.Errorf("findMetric = %v, %v; want 12.5", v, err)
	}
	if _, err := findMetric(text, "go_goroutines"); err == nil {
		t.Error("found a metric that is not there")
	}
	if _, err := findMetric([]byte("x NaNa\n"), "x"); err == nil {
		t.Error("accepted a bad value")
	}
}

func bufPool() *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, 0, 16); return &b }}
}

func TestReadMessageFragmentsAndControl(t *testing.T) {
	c, server := pipeConn(t)
	go func() {
		_ = ws.WriteFrame(server, ws.Frame{Header: ws.Header{OpCode: ws.OpText, Length: 5}, Payload: []byte("hello")})
		_ = ws.WriteFrame(server, ws.NewPingFrame([]byte("p")))
		_ = ws.WriteFrame(server, ws.Frame{Header: ws.Header{OpCode: ws.OpContinuation, Fin: true, Length: 6}, Payload: []byte(" world")})
		_ = ws.WriteFrame(server, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "")))
	}()
	type result struct {
		ev   frameEvent
		m    message
		code ws.StatusCode
		err  error
	}
	res := make(chan result, 2)
	pool := bufPool()
	go func() {
		for range 2 {
			ev, m, buf, code, err := c.readMessage(pool, 1<<20, false)
			if buf != nil {
				m.payload = append([]byte(nil), m.payload...)
				pool.Put(buf)
			}
			res <- result{ev, m, code, err}
		}
	}()
	if f := readClientFrame(t, server); f.Header.OpCode != ws.OpPong || string(f.Payload) != "p" {
		t.Fatalf("answer = %v %q, want pong", f.Header.OpCode, f.Payload)
	}
	if r := <-res; r.err != nil || r.ev != evData || r.m.op != ws.OpText || string(r.m.payload) != "hello world" {
		t.Fatalf("first = %+v", r)
	}
	if r := <-res; r.err != nil || r.ev != evClose || r.code != ws.StatusGoingAway {
		t.Fatalf("second = %+v", r)
	}
}

func TestReadMessageErrors(t *testing.T) {
	tests := []struct {
		name      string
		frames    []ws.Frame
		allowRSV1 bool
		max       int64
		wantCode  ws.StatusCode
		wantErr   error
	}{
		{
			name:     "RSV1 without deflate",
			frames:   []ws.Frame{{Header: ws.Header{OpCode: ws.OpText, Fin: true, Rsv: ws.Rsv(true, false, false), Length: 1}, Payload: []byte("x")}},
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolNonZeroRsv,
		},
		{
			name:      "RSV1 on a continuation",
			allowRSV1: true,
			frames: []ws.Frame{
				{Header: ws.Header{OpCode: ws.OpText, Length: 1}, Payload: []byte("x")},
				{Header: ws.Header{OpCode: ws.OpContinuation, Fin: true, Rsv: ws.Rsv(true, false, false), Length: 1}, Payload: []byte("y")},
			},
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolNonZeroRsv,
		},
		{
			name:     "continuation first",
			frames:   []ws.Frame{{Header: ws.Header{OpCode: ws.OpContinuation, Fin: true, Length: 1}, Payload: []byte("x")}},
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolContinuationUnexpected,
		},
		{
			name: "new message inside a fragmented one",
			frames: []ws.Frame{
				{Header: ws.Header{OpCode: ws.OpText, Length: 1}, Payload: []byte("x")},
				{Header: ws.Header{OpCode: ws.OpText, Fin: true, Length: 1}, Payload: []byte("y")},
			},
			wantCode: ws.StatusProtocolError, wantErr: ws.ErrProtocolContinuationExpected,
		},
		{
			name:     "too big",
			max:      10,
			frames:   []ws.Frame{ws.NewTextFrame(bytes.Repeat([]byte("x"), 11))},
			wantCode: ws.StatusMessageTooBig, wantErr: errMessageTooBig,
		},
		{
			name: "too big across fragments",
			max:  10,
			frames: []ws.Frame{
				{Header: ws.Header{OpCode: ws.OpText, Length: 6}, Payload: []byte("xxxxxx")},
				{Header: ws.Header{OpCode: ws.OpContinuation, Fin: true, Length: 5}, Payload: []byte("yyyyy")},
			},
			wantCode: ws.StatusMessageTooBig, wantErr: errMessageTooBig,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, server := pipeConn(t)
			go func() {
				for _, f := range tc.frames {
					if ws.WriteFrame(server, f) != nil {
						return
					}
				}
			}()
			max := tc.max
			if max == 0 {
				max = 1 << 20
			}
			_, _, buf, code, err := c.readMessage(bufPool(), max, tc.allowRSV1)
			if buf != nil || code != tc.wantCode || !errors.Is(err, tc.wantErr) {
				t.Errorf("readMessage = buf %v, %d, %v; want nil, %d, %v", buf != nil, code, err, tc.wantCode, tc.wantErr)
			}
		})
	}
}

func TestInflater(t *testing.T) {
	in := newInflater()
	for _, msg := range [][]byte{
		[]byte(`{"op":"message","topic":"a","seq":1,"data":{}}`),
		bytes.Repeat([]byte("compressible "), 500),
		newPadSource(3000),
		{},
	} {
		// What a sender without context takeover puts on the wire
		// (RFC 7692 §7.2.1: the trailing 00 00 ff ff removed).
		z, err := wsflate.DefaultHelper.Compress(msg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := in.inflate(z, 1<<20)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("inflate = %d bytes, %v; want %d bytes", len(got), err, len(msg))
		}
	}
	z, _ := wsflate.DefaultHelper.Compress(bytes.Repeat([]byte("a"), 5000))
	if _, err := in.inflate(z, 1000); !errors.Is(err, errMessageTooBig) {
		t.Errorf("inflate past the limit: %v", err)
	}
	if _, err := in.inflate([]byte{0xff, 0xff, 0xff}, 1000); err == nil {
		t.Error("inflated garbage")
	}
}
