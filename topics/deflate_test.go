package topics

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/surgepush/surge/conn"
)

// inflate decompresses a permessage-deflate payload twice: with
// conn.Deflater and with the standard library (an independent decoder), and
// fails unless both agree.
func inflate(t *testing.T, p []byte) []byte {
	t.Helper()
	got, err := new(conn.Deflater).Inflate(nil, p, 1<<24)
	if err != nil {
		t.Fatalf("conn.Deflater.Inflate: %v", err)
	}
	// RFC 7692 §7.2.2: append 0x00 0x00 0xff 0xff, then inflate. The stream
	// has no final block, so the reader ends with ErrUnexpectedEOF.
	fr := flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff})))
	std, err := io.ReadAll(fr)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("compress/flate: %v", err)
	}
	if !bytes.Equal(got, std) {
		t.Fatalf("conn.Deflater and compress/flate disagree (%d vs %d bytes)", len(got), len(std))
	}
	return got
}

func TestDeflateLargePublish(t *testing.T) {
	for _, binary := range []bool{false, true} {
		r := newReg(t, Config{DeflateThreshold: 64, ShardSize: 2})
		plain := subscribeN(t, r, "z", 3)
		def := []*fakeSub{{deflate: true}, {deflate: true}}
		for _, f := range def {
			mustSubscribe(t, r, "z", f, nil)
		}
		data := []byte(`{"text":"` + strings.Repeat("surge push ", 200) + `"}`)
		if _, err := r.Publish(Publication{Topic: "z", Data: data, Binary: binary}); err != nil {
			t.Fatal(err)
		}
		m := def[0].messages()[0]
		for _, f := range append(plain, def...) {
			if f.messages()[0] != m {
				t.Fatal("subscribers got different messages")
			}
		}
		if m.Deflated == nil {
			t.Fatalf("binary %v: no compressed frame", binary)
		}
		op := ws.OpText
		if binary {
			op = ws.OpBinary
		}
		h, cp := splitFrame(t, m.Deflated)
		if !h.Fin || !h.Rsv1() || h.Rsv2() || h.Rsv3() || h.OpCode != op {
			t.Fatalf("compressed header %+v, want FIN, RSV1 only, %v", h, op)
		}
		if want := 0xc0 | byte(op); m.Deflated[0] != want {
			t.Fatalf("first byte %#x, want %#x", m.Deflated[0], want)
		}
		if bytes.HasSuffix(cp, []byte{0, 0, 0xff, 0xff}) {
			t.Errorf("compressed payload keeps the 00 00 ff ff tail (RFC 7692 §7.2.1 removes it)")
		}
		_, pp := splitFrame(t, m.Frame)
		if len(cp) >= len(pp) {
			t.Errorf("compressed payload %d bytes is not smaller than %d plain", len(cp), len(pp))
		}
		if got := inflate(t, cp); !bytes.Equal(got, pp) {
			t.Fatalf("inflated payload differs from the plain payload:\n%.80q\n%.80q", got, pp)
		}
		if got := r.Stats.CompressedFrames.Load(); got != 1 {
			t.Errorf("Stats.CompressedFrames = %d, want 1 (compressed once, not per subscriber)", got)
		}
	}
}

func TestDeflateThresholdBoundary(t *testing.T) {
	r := newReg(t, Config{DeflateThreshold: 64})
	f := &fakeSub{deflate: true}
	mustSubscribe(t, r, "th", f, nil)
	for i, tc := range []struct {
		payload int
		want    bool
	}{{63, false}, {64, true}, {50, false}, {65, true}, {5000, true}, {70000, true}} {
		seq := uint64(i + 1)
		before := r.Stats.CompressedFrames.Load()
		mustPublish(t, r, "th", string(jsonData(t, "th", seq, tc.payload)))
		m := f.messages()[i]
		if _, p := splitFrame(t, m.Frame); len(p) != tc.payload {
			t.Fatalf("payload %d, want %d", len(p), tc.payload)
		}
		if got := m.Deflated != nil; got != tc.want {
			t.Errorf("payload %d: compressed %v, want %v", tc.payload, got, tc.want)
		}
		var inc int64
		if tc.want {
			inc = 1
		}
		if got := r.Stats.CompressedFrames.Load() - before; got != inc {
			t.Errorf("payload %d: CompressedFrames moved by %d, want %d", tc.payload, got, inc)
		}
	}
}

func TestNoDeflateWithoutDeflateSubscriber(t *testing.T) {
	big := `"` + strings.Repeat("x", 4096) + `"`
	r := newReg(t, Config{DeflateThreshold: 64, ShardSize: 2})
	plain := subscribeN(t, r, "nd", 5)
	mustPublish(t, r, "nd", big)
	if m := plain[0].messages()[0]; m.Deflated != nil {
		t.Fatal("compressed although no subscriber deflates")
	}
	// A deflate subscriber comes and goes: compression follows it.
	d := &fakeSub{deflate: true}
	sub, _ := mustSubscribe(t, r, "nd", d, nil)
	mustPublish(t, r, "nd", big)
	if d.messages()[0].Deflated == nil {
		t.Fatal("not compressed with a deflate subscriber")
	}
	r.Unsubscribe(sub)
	mustPublish(t, r, "nd", big)
	if m := plain[0].messages()[2]; m.Deflated != nil {
		t.Fatal("still compressed after the deflate subscriber left")
	}
	if got := r.Stats.CompressedFrames.Load(); got != 1 {
		t.Fatalf("Stats.CompressedFrames = %d, want 1", got)
	}
	// No subscribers at all.
	mustPublish(t, r, "empty", big)
	if got := r.Stats.CompressedFrames.Load(); got != 1 {
		t.Fatalf("Stats.CompressedFrames = %d after a publish to nobody, want 1", got)
	}
}

func TestDeflateDisabled(t *testing.T) {
	r := newReg(t, Config{DeflateThreshold: -1})
	d := &fakeSub{deflate: true}
	mustSubscribe(t, r, "off", d, nil)
	mustPublish(t, r, "off", `"`+strings.Repeat("x", 1<<16)+`"`)
	if d.messages()[0].Deflated != nil || r.Stats.CompressedFrames.Load() != 0 {
		t.Fatal("compressed with DeflateThreshold < 0")
	}
}

// The default threshold is 512 bytes of payload.
func TestDeflateDefaultThreshold(t *testing.T) {
	r := newReg(t, Config{})
	d := &fakeSub{deflate: true}
	mustSubscribe(t, r, "def", d, nil)
	mustPublish(t, r, "def", string(jsonData(t, "def", 1, 511)))
	mustPublish(t, r, "def", string(jsonData(t, "def", 2, 512)))
	m := d.messages()
	if m[0].Deflated != nil || m[1].Deflated == nil {
		t.Fatalf("511 bytes compressed %v, 512 bytes compressed %v; want false, true", m[0].Deflated != nil, m[1].Deflated != nil)
	}
}
