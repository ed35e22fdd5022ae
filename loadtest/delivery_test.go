package loadtest

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
	"unicode/utf8"
)

func TestParseDelivery(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		ok    bool
		op    string
		topic string
		seq   uint64
		data  string
	}{
		{
			name: "surge delivery",
			in:   `{"op":"message","topic":"prices.AAPL","seq":1201,"data":{"t":1,"n":2,"r":"ab","pad":"x"}}`,
			ok:   true, op: "message", topic: "prices.AAPL", seq: 1201, data: `{"t":1,"n":2,"r":"ab","pad":"x"}`,
		},
		{
			name: "any order, whitespace, extra members",
			in:   " {\n\"data\" : [1, {\"a\":null}] , \"x\":{\"y\":[true,false]},\"seq\": 7,\"topic\":\"t\" ,\"op\":\"message\"}\t",
			ok:   true, op: "message", topic: "t", seq: 7, data: `[1, {"a":null}]`,
		},
		{
			name: "a reply, no seq",
			in:   `{"op":"ok","id":"1"}`,
			ok:   true, op: "ok",
		},
		{
			name: "last of repeated keys wins",
			in:   `{"op":"x","seq":1,"op":"message","seq":2}`,
			ok:   true, op: "message", seq: 2,
		},
		{
			name: "escapes in strings",
			in:   `{"op":"message","topic":"a\"b\\c\u00e9","data":"\n"}`,
			ok:   true, op: "message", topic: `a\"b\\c\u00e9`, data: `"\n"`,
		},
		{name: "no op", in: `{"seq":1}`},
		{name: "op not a string", in: `{"op":1}`},
		{name: "negative seq", in: `{"op":"message","seq":-1}`},
		{name: "fractional seq", in: `{"op":"message","seq":1.5}`},
		{name: "seq overflow", in: `{"op":"message","seq":18446744073709551616}`},
		{name: "leading zero", in: `{"op":"message","seq":01}`},
		{name: "trailing garbage", in: `{"op":"message"}x`},
		{name: "two objects", in: `{"op":"message"}{}`},
		{name: "unterminated", in: `{"op":"message"`},
		{name: "trailing comma", in: `{"op":"message",}`},
		{name: "raw control character", in: "{\"op\":\"mes\x01sage\"}"},
		{name: "bad escape", in: `{"op":"\x"}`},
		{name: "short unicode escape", in: `{"op":"\u12"}`},
		{name: "bad literal", in: `{"op":"message","data":tru}`},
		{name: "bad number", in: `{"op":"message","data":1.}`},
		{name: "array", in: `["op","message"]`},
		{name: "empty", in: ``},
		{name: "too deep", in: `{"op":"message","data":` + repeat("[", 100) + repeat("]", 100) + `}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := parseDelivery([]byte(tc.in))
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if string(d.op) != tc.op || string(d.topic) != tc.topic || d.seq != tc.seq || string(d.data) != tc.data {
				t.Errorf("got op %q topic %q seq %d data %q", d.op, d.topic, d.seq, d.data)
			}
		})
	}
}

func repeat(s string, n int) string { return string(bytes.Repeat([]byte(s), n)) }

func TestParseProbe(t *testing.T) {
	tests := []struct {
		in string
		ok bool
		p  probe
	}{
		{in: `{"t":1700000000000000000,"n":3,"r":"abcd","pad":"xyz"}`, ok: true, p: probe{t: 1700000000000000000, n: 3, run: []byte("abcd")}},
		{in: `{"pad":"","r":"","n":0,"t":0}`, ok: true, p: probe{run: []byte{}}},
		{in: `{"t":1,"n":2}`},                           // no run id
		{in: `{"t":-1,"n":2,"r":"a"}`},                  // negative time
		{in: `{"t":9223372036854775808,"n":2,"r":"a"}`}, // beyond int64
		{in: `{"t":1,"n":"2","r":"a"}`},
		{in: `"just a string"`},
	}
	for _, tc := range tests {
		p, ok := parseProbe([]byte(tc.in))
		if ok != tc.ok || (ok && (p.t != tc.p.t || p.n != tc.p.n || !bytes.Equal(p.run, tc.p.run))) {
			t.Errorf("parseProbe(%s) = %+v, %v; want %+v, %v", tc.in, p, ok, tc.p, tc.ok)
		}
	}
}

func TestAppendProbeSizeAndRoundTrip(t *testing.T) {
	pad := newPadSource(4096 + len(padAlphabet))
	for _, size := range []int{1, 40, 61, 100, 1024, 4096} {
		for _, n := range []uint64{1, 9, 10, 12345, 1 << 40} {
			const ts = 1763862000123456789
			b := appendProbe([]byte("prefix"), ts, n, "0123abcd", size, pad)
			data := b[len("prefix"):]
			if !json.Valid(data) {
				t.Fatalf("size %d n %d: invalid JSON %s", size, n, data)
			}
			if min := len(appendProbe(nil, ts, n, "0123abcd", 0, pad)); size >= min && len(data) != size {
				t.Errorf("size %d n %d: data is %d bytes", size, n, len(data))
			}
			p, ok := parseProbe(data)
			if !ok || p.t != ts || p.n != n || string(p.run) != "0123abcd" {
				t.Errorf("size %d n %d: parsed %+v, %v", size, n, p, ok)
			}
		}
	}
}

func TestParseUint(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "7": 7, "18446744073709551615": 1<<64 - 1} {
		if v, ok := parseUint([]byte(in)); !ok || v != want {
			t.Errorf("parseUint(%q) = %d, %v", in, v, ok)
		}
	}
	for _, in := range []string{"", "-1", "01", "1e3", "1.0", "18446744073709551616", "99999999999999999999"} {
		if v, ok := parseUint([]byte(in)); ok {
			t.Errorf("parseUint(%q) = %d, accepted", in, v)
		}
	}
}

// FuzzParseDelivery checks the scanner against encoding/json: it never
// accepts what encoding/json rejects, and on valid input it finds the same
// members (compared where keys have no escapes, since it matches keys
// byte for byte).
func FuzzParseDelivery(f *testing.F) {
	for _, s := range []string{
		`{"op":"message","topic":"a","seq":1,"data":{"t":1,"n":1,"r":"x","pad":""}}`,
		`{"op":"ok","id":"1"}`,
		`{"op":"message","seq":01}`,
		`{"a":[1,2,{"b":null}],"op":"x"}`,
		`{"op":"\u0041\n"}`,
		` {"op" : "m" } `,
		`{"op":"m","data":-0.5e+10}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, ok := parseDelivery(b)
		if ok && !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		// Beyond here the results are compared, except where the two
		// differ by design: escaped keys (matched byte for byte here),
		// invalid UTF-8 (encoding/json substitutes U+FFFD) and nesting
		// deeper than maxJSONDepth.
		if bytes.Contains(b, []byte(`\`)) || !utf8.Valid(b) ||
			bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) >= maxJSONDepth {
			return
		}
		var ref map[string]json.RawMessage
		if json.Unmarshal(b, &ref) != nil {
			if ok {
				t.Fatalf("accepted %q, which encoding/json rejects", b)
			}
			return
		}
		var op string
		refOK := json.Unmarshal(ref["op"], &op) == nil && len(ref["op"]) > 0 && ref["op"][0] == '"'
		if raw, has := ref["topic"]; has && (len(raw) == 0 || raw[0] != '"') {
			refOK = false
		}
		var seq uint64
		if raw, has := ref["seq"]; has {
			v, err := strconv.ParseUint(string(raw), 10, 64)
			refOK = refOK && err == nil
			seq = v
		}
		if !refOK {
			if ok {
				t.Fatalf("accepted %q with op %q seq %d", b, d.op, d.seq)
			}
			return
		}
		if !ok {
			t.Fatalf("rejected %q", b)
		}
		var topic string
		if raw, has := ref["topic"]; has {
			_ = json.Unmarshal(raw, &topic)
		}
		if string(d.op) != op || string(d.topic) != topic || d.seq != seq || !bytes.Equal(d.data, ref["data"]) {
			t.Fatalf("%q: got op %q topic %q seq %d data %q; encoding/json: %q %q %d %q",
				b, d.op, d.topic, d.seq, d.data, op, topic, seq, ref["data"])
		}
	})
}
