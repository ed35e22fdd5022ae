package loadtest

import (
	"errors"
	"strconv"
)

// The fanout scenario parses every delivery it receives, up to hundreds of
// thousands a second on the same two cores as the server, so it uses the
// small scanner below instead of encoding/json: it checks the full JSON
// grammar (RFC 8259) but decodes nothing it does not need and never
// allocates.

// errJSON reports input that is not one well-formed JSON value.
var errJSON = errors.New("loadtest: malformed JSON")

// maxJSONDepth bounds nesting so that hostile input cannot exhaust the stack.
const maxJSONDepth = 64

// jsonObject iterates over the members of one JSON object. Keys are returned
// raw (the bytes between the quotes, escapes not decoded) and values as their
// raw bytes; both alias the input.
type jsonObject struct {
	b   []byte
	i   int // next byte to read
	n   int // members returned so far
	end bool
	err error
}

// openObject starts iterating over the object that b holds, after optional
// leading whitespace.
func openObject(b []byte) jsonObject {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return jsonObject{end: true, err: errJSON}
	}
	return jsonObject{b: b, i: i + 1}
}

// next returns the next member, or ok false at the end of the object or on
// an error (see err).
func (o *jsonObject) next() (key, val []byte, ok bool) {
	if o.end {
		return nil, nil, false
	}
	b := o.b
	i := skipSpace(b, o.i)
	if i < len(b) && b[i] == '}' {
		o.end, o.i = true, i+1
		return nil, nil, false
	}
	if o.n > 0 {
		if i >= len(b) || b[i] != ',' {
			return o.fail()
		}
		i = skipSpace(b, i+1)
	}
	if i >= len(b) || b[i] != '"' {
		return o.fail()
	}
	kEnd, err := skipString(b, i)
	if err != nil {
		return o.fail()
	}
	key = b[i+1 : kEnd-1]
	i = skipSpace(b, kEnd)
	if i >= len(b) || b[i] != ':' {
		return o.fail()
	}
	i = skipSpace(b, i+1)
	vEnd, err := skipValue(b, i, 1)
	if err != nil {
		return o.fail()
	}
	o.i, o.n = vEnd, o.n+1
	return key, b[i:vEnd], true
}

func (o *jsonObject) fail() ([]byte, []byte, bool) {
	o.end, o.err = true, errJSON
	return nil, nil, false
}

// rest returns the input after the object's closing brace; valid only once
// next has returned ok false without an error.
func (o *jsonObject) rest() []byte { return o.b[o.i:] }

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the index just past the JSON value starting at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, errJSON
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{' || c == '[':
		if depth >= maxJSONDepth {
			return 0, errJSON
		}
		return skipContainer(b, i, depth+1)
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	}
	return 0, errJSON
}

// skipContainer skips the object or array starting at b[i].
func skipContainer(b []byte, i, depth int) (int, error) {
	obj := b[i] == '{'
	closer := byte(']')
	if obj {
		closer = '}'
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == closer {
		return i + 1, nil
	}
	for {
		var err error
		if obj {
			if i >= len(b) || b[i] != '"' {
				return 0, errJSON
			}
			if i, err = skipString(b, i); err != nil {
				return 0, err
			}
			i = skipSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return 0, errJSON
			}
			i = skipSpace(b, i+1)
		}
		if i, err = skipValue(b, i, depth); err != nil {
			return 0, err
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return 0, errJSON
		}
		switch b[i] {
		case closer:
			return i + 1, nil
		case ',':
			i = skipSpace(b, i+1)
		default:
			return 0, errJSON
		}
	}
}

// skipString skips the string whose opening quote is b[i] (RFC 8259 §7:
// no raw control characters, only the defined escapes).
func skipString(b []byte, i int) (int, error) {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, nil
		case c < 0x20:
			return 0, errJSON
		case c == '\\':
			i++
			if i >= len(b) {
				return 0, errJSON
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return 0, errJSON
				}
				for _, h := range b[i+1 : i+5] {
					if !isHex(h) {
						return 0, errJSON
					}
				}
				i += 4
			default:
				return 0, errJSON
			}
		}
	}
	return 0, errJSON
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// skipNumber skips a number (RFC 8259 §6: -? int frac? exp?, no leading
// zeros).
func skipNumber(b []byte, i int) (int, error) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return 0, errJSON
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return 0, errJSON
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return 0, errJSON
		}
		i = j
	}
	return i, nil
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, errJSON
	}
	return i + len(lit), nil
}

// parseUint decodes a JSON number that is a non-negative integer without
// fraction or exponent.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// delivery is what the fanout scenario reads from one server frame. Every
// slice aliases the frame.
type delivery struct {
	op    []byte // raw op string ("message" for a delivery)
	topic []byte // raw topic string
	seq   uint64
	data  []byte // raw data value
}

// parseDelivery parses a server → client text frame: a JSON object whose
// members "op" and "topic" are strings, "seq" a non-negative integer and
// "data" any JSON value; other members are skipped and the last of repeated
// keys wins, as in encoding/json. Only op is required; ok is false when the
// frame is not one well-formed JSON object or a known member has the wrong
// type.
func parseDelivery(b []byte) (d delivery, ok bool) {
	o := openObject(b)
	for {
		key, val, more := o.next()
		if !more {
			break
		}
		switch string(key) {
		case "op":
			if val[0] != '"' {
				return delivery{}, false
			}
			d.op = val[1 : len(val)-1]
		case "topic":
			if val[0] != '"' {
				return delivery{}, false
			}
			d.topic = val[1 : len(val)-1]
		case "seq":
			if d.seq, ok = parseUint(val); !ok {
				return delivery{}, false
			}
		case "data":
			d.data = val
		}
	}
	if o.err != nil || skipSpace(o.rest(), 0) != len(o.rest()) || d.op == nil {
		return delivery{}, false
	}
	return d, true
}

// probe is the part of a fanout message's data the subscribers use.
type probe struct {
	t   int64  // send time, Unix ns
	n   uint64 // per-topic publish counter, from 1
	run []byte // run id, raw string
}

// parseProbe parses the data of a fanout message,
// {"t":<unix ns>,"n":<k>,"r":"<run id>","pad":"…"}; members may come in any
// order and unknown ones are skipped. All of t, n and r are required.
func parseProbe(b []byte) (p probe, ok bool) {
	o := openObject(b)
	var haveT, haveN bool
	for {
		key, val, more := o.next()
		if !more {
			break
		}
		switch string(key) {
		case "t":
			t, ok := parseUint(val)
			if !ok || t > 1<<63-1 {
				return probe{}, false
			}
			p.t, haveT = int64(t), true
		case "n":
			if p.n, ok = parseUint(val); !ok {
				return probe{}, false
			}
			haveN = true
		case "r":
			if val[0] != '"' {
				return probe{}, false
			}
			p.run = val[1 : len(val)-1]
		}
	}
	if o.err != nil || skipSpace(o.rest(), 0) != len(o.rest()) || !haveT || !haveN || p.run == nil {
		return probe{}, false
	}
	return p, true
}

// padAlphabet fills message padding: pseudo-random letters and digits, so
// permessage-deflate compresses the padding about as well as real text
// (~6 bits a byte) rather than to nothing.
const padAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// newPadSource returns size pseudo-random pad bytes, the same for every run
// (a fixed xorshift seed), to slice message padding from.
func newPadSource(size int) []byte {
	b := make([]byte, size)
	x := uint64(0x9E3779B97F4A7C15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = padAlphabet[x%uint64(len(padAlphabet))]
	}
	return b
}

// appendProbe appends the data of one fanout message,
// {"t":<t>,"n":<n>,"r":"<run>","pad":"…"}, padded so that the data is size
// bytes long (or as short as it can be when size is smaller). pad supplies
// the padding bytes; it must be at least size+len(padAlphabet) long.
func appendProbe(dst []byte, t int64, n uint64, run string, size int, pad []byte) []byte {
	start := len(dst)
	dst = append(dst, `{"t":`...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"n":`...)
	dst = strconv.AppendUint(dst, n, 10)
	dst = append(dst, `,"r":"`...)
	dst = append(dst, run...)
	dst = append(dst, `","pad":"`...)
	const tail = len(`"}`)
	if k := size - (len(dst) - start) - tail; k > 0 {
		off := int(n % uint64(len(padAlphabet)))
		dst = append(dst, pad[off:off+k]...)
	}
	return append(dst, `"}`...)
}
