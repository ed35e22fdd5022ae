package topics

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// jsonData returns a JSON string value such that the delivery payload of
// EncodeMessage(name, seq, data) is exactly n bytes.
func jsonData(t testing.TB, name string, seq uint64, n int) []byte {
	t.Helper()
	overhead := len(fmt.Sprintf(`{"op":"message","topic":%q,"seq":%d,"data":""}`, name, seq))
	if n < overhead {
		t.Fatalf("payload %d is below the %d-byte minimum", n, overhead)
	}
	return []byte(`"` + strings.Repeat("a", n-overhead) + `"`)
}

type delivery struct {
	Op    string          `json:"op"`
	Topic string          `json:"topic"`
	Seq   uint64          `json:"seq"`
	Data  json.RawMessage `json:"data"`
}

func checkTextFrame(t *testing.T, frame []byte, name string, seq uint64, data []byte) {
	t.Helper()
	h, p := splitFrame(t, frame)
	if !h.Fin || h.Rsv != 0 || h.OpCode != ws.OpText {
		t.Fatalf("header %+v, want FIN, no RSV, text", h)
	}
	// RFC 6455 §5.2: the minimal length form.
	var hdr int
	switch n := len(p); {
	case n <= 125:
		hdr = 2
		if frame[1] != byte(n) {
			t.Fatalf("7-bit length byte %d for %d bytes", frame[1], n)
		}
	case n <= 0xffff:
		hdr = 4
		if frame[1] != 126 {
			t.Fatalf("length byte %d for %d bytes, want 126", frame[1], n)
		}
	default:
		hdr = 10
		if frame[1] != 127 {
			t.Fatalf("length byte %d for %d bytes, want 127", frame[1], n)
		}
	}
	if len(frame) != hdr+len(p) {
		t.Fatalf("header is %d bytes for a %d-byte payload, want %d", len(frame)-len(p), len(p), hdr)
	}
	if frame[0] != 0x81 {
		t.Fatalf("first byte %#x, want 0x81", frame[0])
	}
	if cap(frame) != len(frame) {
		t.Errorf("frame cap %d, len %d: the exact size was not preallocated", cap(frame), len(frame))
	}
	var d delivery
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("payload is not the delivery JSON: %v\n%.200s", err, p)
	}
	if dec.More() {
		t.Fatalf("trailing data after the delivery JSON")
	}
	if d.Op != "message" || d.Topic != name || d.Seq != seq || !bytes.Equal(d.Data, data) {
		t.Fatalf("decoded op %q topic %q seq %d data %.40q; want message %q %d %.40q", d.Op, d.Topic, d.Seq, d.Data, name, seq, data)
	}
}

func TestEncodeMessageLengthForms(t *testing.T) {
	name := "prices.AAPL"
	for _, seq := range []uint64{1, 1201, math.MaxUint64} {
		// exact payload sizes at the header-form boundaries
		for _, n := range []int{80, 125, 126, 127, 65535, 65536, 70000} {
			data := jsonData(t, name, seq, n)
			f := EncodeMessage(name, seq, data)
			if _, p := splitFrame(t, f); len(p) != n {
				t.Fatalf("payload %d bytes, want %d", len(p), n)
			}
			checkTextFrame(t, f, name, seq, data)
		}
		// data sizes around the same boundaries
		for _, n := range []int{0, 125, 126, 65535, 65536} {
			data := []byte(`"` + strings.Repeat("z", n) + `"`)
			checkTextFrame(t, EncodeMessage(name, seq, data), name, seq, data)
		}
	}
	for _, data := range []string{`0`, `null`, `true`, `[]`, `{}`, `{"a":[1,2,{"b":"\u00e9"}]}`, `"ü"`, `-1.5e10`} {
		checkTextFrame(t, EncodeMessage("t", 7, []byte(data)), "t", 7, []byte(data))
	}
	long := strings.Repeat("n", MaxTopicLen)
	checkTextFrame(t, EncodeMessage(long, 1, []byte("1")), long, 1, []byte("1"))
}

// Publish delivers exactly the EncodeMessage frame.
func TestPublishFrameMatchesEncode(t *testing.T) {
	r := newReg(t, Config{})
	f := new(fakeSub)
	mustSubscribe(t, r, "x", f, nil)
	data := jsonData(t, "x", 1, 126)
	mustPublish(t, r, "x", string(data))
	if got := f.messages()[0].Frame; !bytes.Equal(got, EncodeMessage("x", 1, data)) {
		t.Fatalf("delivered frame %q differs from EncodeMessage", got)
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	names := []string{"b", "prices.AAPL", strings.Repeat("n", MaxTopicLen)}
	seqs := []uint64{0, 1, 255, 256, 1 << 32, 1 << 63, math.MaxUint64}
	datas := [][]byte{nil, {0}, []byte("hello"), bytes.Repeat([]byte{0xff, 0}, 70000)}
	for _, name := range names {
		for _, seq := range seqs {
			for _, data := range datas {
				f := EncodeBinary(name, seq, data)
				h, p := splitFrame(t, f)
				if !h.Fin || h.Rsv != 0 || h.OpCode != ws.OpBinary {
					t.Fatalf("header %+v, want FIN, no RSV, binary", h)
				}
				if want := 2 + len(name) + 8 + len(data); len(p) != want {
					t.Fatalf("payload %d bytes, want %d", len(p), want)
				}
				if p[0] != BinaryVersion || int(p[1]) != len(name) {
					t.Fatalf("version %d, name length %d", p[0], p[1])
				}
				gotName, gotSeq, gotData, ok := DecodeBinary(p)
				if !ok || gotName != name || gotSeq != seq || !bytes.Equal(gotData, data) {
					t.Fatalf("DecodeBinary(EncodeBinary(%q, %d, %d bytes)) = %q, %d, %d bytes, %v", name, seq, len(data), gotName, gotSeq, len(gotData), ok)
				}
			}
		}
	}
	// Big-endian seq on the wire.
	_, p := splitFrame(t, EncodeBinary("s", 0x0102030405060708, nil))
	if !bytes.Equal(p[3:11], []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("seq bytes %x, want 0102030405060708", p[3:11])
	}
}

func TestDecodeBinaryRejects(t *testing.T) {
	valid := EncodeBinary("ab", 9, []byte("x"))
	_, p := splitFrame(t, valid)
	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version only", []byte{BinaryVersion}},
		{"version 0", append([]byte{0}, p[1:]...)},
		{"version 2", append([]byte{2}, p[1:]...)},
		{"text payload", []byte(`{"op":"message"}`)},
		{"zero name length", []byte{BinaryVersion, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"name cut", []byte{BinaryVersion, 5, 'a', 'b'}},
		{"no seq", []byte{BinaryVersion, 2, 'a', 'b'}},
		{"seq cut", p[:2+2+7]},
	}
	for _, tc := range tests {
		if name, seq, data, ok := DecodeBinary(tc.in); ok {
			t.Errorf("DecodeBinary(%s %x) = %q, %d, %q, true; want not ok", tc.name, tc.in, name, seq, data)
		}
	}
	// The shortest valid payload: name, seq, no data.
	if name, seq, data, ok := DecodeBinary(p[:2+2+8]); !ok || name != "ab" || seq != 9 || len(data) != 0 {
		t.Errorf("DecodeBinary(no data) = %q, %d, %q, %v", name, seq, data, ok)
	}
}

func TestPublishBinary(t *testing.T) {
	r := newReg(t, Config{ShardSize: 2})
	fakes := subscribeN(t, r, "bin", 5)
	data := []byte{0, 1, 2, 0xff, '{'}
	for i := 1; i <= 3; i++ {
		if res, err := r.Publish(Publication{Topic: "bin", Data: data, Binary: true}); err != nil || res.Seq != uint64(i) {
			t.Fatalf("Publish = %+v, %v", res, err)
		}
	}
	for _, f := range fakes {
		msgs := f.messages()
		for i, m := range msgs {
			h, p := splitFrame(t, m.Frame)
			if h.OpCode != ws.OpBinary {
				t.Fatalf("opcode %v, want binary", h.OpCode)
			}
			name, seq, got, ok := DecodeBinary(p)
			if !ok || name != "bin" || seq != uint64(i+1) || !bytes.Equal(got, data) {
				t.Fatalf("decoded %q %d %x %v", name, seq, got, ok)
			}
		}
		checkRun(t, "binary", f.seqs(t), 1, 3)
	}
}
