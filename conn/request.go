package conn

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// RequestHead is the parsed head of one HTTP/1.1 request. Its byte slices
// alias the buffer passed to [ParseHead] and are valid only as long as it.
type RequestHead struct {
	Method []byte
	Target []byte // request-target as sent: /ws?topic=a
	Path   []byte // Target up to '?'
	Query  []byte // Target after '?', without it; nil if none
	Proto  []byte // HTTP/1.1
	// ContentLength is the declared body length, or -1 when absent.
	ContentLength int64
	Chunked       bool   // Transfer-Encoding: chunked
	Upgrade       bool   // Upgrade: websocket present (case-insensitive)
	WSVersion     []byte // Sec-WebSocket-Version value
	Origin        []byte // Origin value
	Authorization []byte // Authorization value
	Protocols     []byte // Sec-WebSocket-Protocol value(s), comma-joined
	Close         bool   // Connection: close, or HTTP/1.0 without keep-alive
	HeadLen       int    // bytes through the blank line
}

// HTTPError is a request-phase failure answered with a plain HTTP response.
type HTTPError struct {
	Status int
	Msg    string
	Header string // extra header lines, each ending in \r\n
}

func (e *HTTPError) Error() string { return fmt.Sprintf("conn: http %d: %s", e.Status, e.Msg) }

// Response renders e as a complete HTTP/1.1 response that closes the connection.
func (e *HTTPError) Response() []byte {
	return PlainResponse(e.Status, e.Header, e.Msg, true)
}

// PlainResponse renders a text/plain response.
func PlainResponse(status int, header, body string, closeConn bool) []byte {
	b := make([]byte, 0, 128+len(header)+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)+1), 10)
	if closeConn {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n"...)
	b = append(b, header...)
	b = append(b, "\r\n"...)
	b = append(b, body...)
	return append(b, '\n')
}

var crlfcrlf = []byte("\r\n\r\n")

// ScanHead returns the length of the request head at the start of b,
// including the terminating blank line, or 0 when the head is incomplete.
func ScanHead(b []byte) int {
	i := bytes.Index(b, crlfcrlf)
	if i < 0 {
		return 0
	}
	return i + 4
}

// ParseHead parses a complete request head (as delimited by [ScanHead]).
// It checks only what routing needs; the WebSocket handshake itself is
// validated by gobwas/ws in [Conn.Upgrade].
func ParseHead(b []byte) (RequestHead, error) {
	h := RequestHead{ContentLength: -1, HeadLen: len(b)}
	eol := bytes.Index(b, []byte("\r\n"))
	if eol <= 0 {
		return h, &HTTPError{Status: http.StatusBadRequest, Msg: "malformed request line"}
	}
	line := b[:eol]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return h, &HTTPError{Status: http.StatusBadRequest, Msg: "malformed request line"}
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return h, &HTTPError{Status: http.StatusBadRequest, Msg: "malformed request line"}
	}
	h.Method = line[:sp1]
	h.Target = line[sp1+1 : sp1+1+sp2]
	h.Proto = line[sp1+2+sp2:]
	if !isToken(h.Method) || h.Target[0] != '/' && !bytes.Equal(h.Target, []byte("*")) {
		return h, &HTTPError{Status: http.StatusBadRequest, Msg: "malformed request line"}
	}
	switch string(h.Proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		h.Close = true
	default:
		return h, &HTTPError{Status: http.StatusHTTPVersionNotSupported, Msg: "only HTTP/1.1 is supported"}
	}
	h.Path = h.Target
	if q := bytes.IndexByte(h.Target, '?'); q >= 0 {
		h.Path, h.Query = h.Target[:q], h.Target[q+1:]
	}
	var closeSeen, keepAlive bool
	rest := b[eol+2:]
	for len(rest) > 0 {
		eol = bytes.Index(rest, []byte("\r\n"))
		if eol < 0 {
			return h, &HTTPError{Status: http.StatusBadRequest, Msg: "malformed header"}
		}
		line, rest = rest[:eol], rest[eol+2:]
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return h, &HTTPError{Status: http.StatusBadRequest, Msg: "malformed header line"}
		}
		k, v := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case asciiEqualFold(k, "Content-Length"):
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || !allDigits(v) || (h.ContentLength >= 0 && h.ContentLength != n) {
				return h, &HTTPError{Status: http.StatusBadRequest, Msg: "bad Content-Length"}
			}
			h.ContentLength = n
		case asciiEqualFold(k, "Transfer-Encoding"):
			h.Chunked = true
		case asciiEqualFold(k, "Sec-WebSocket-Version"):
			h.WSVersion = v
		case asciiEqualFold(k, "Origin"):
			h.Origin = v
		case asciiEqualFold(k, "Authorization"):
			h.Authorization = v
		case asciiEqualFold(k, "Sec-WebSocket-Protocol"):
			if len(h.Protocols) == 0 {
				h.Protocols = v
			} else {
				// Several header lines form one list; join them (rare: copy).
				h.Protocols = append(append(append([]byte(nil), h.Protocols...), ','), v...)
			}
		case asciiEqualFold(k, "Upgrade"):
			// Repeated header lines form one list (RFC 9110 §5.3).
			h.Upgrade = h.Upgrade || hasToken(v, "websocket")
		case asciiEqualFold(k, "Connection"):
			if hasToken(v, "close") {
				closeSeen = true
			} else if hasToken(v, "keep-alive") {
				keepAlive = true
			}
		}
	}
	// close anywhere wins; keep-alive turns on persistence for HTTP/1.0.
	switch {
	case closeSeen:
		h.Close = true
	case keepAlive:
		h.Close = false
	}
	return h, nil
}

// tchar marks the token characters of RFC 9110 §5.6.2.
var tchar = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c > ' ' && c < 0x7f && !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, rune(c))
	}
	return t
}()

// allDigits reports whether b is 1*DIGIT (RFC 9110 §8.6: no sign, no space).
func allDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x|0x20 != y|0x20 || (x|0x20 < 'a' || x|0x20 > 'z') && x != y {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated header value v contains tok
// (case-insensitive).
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var part []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			part, v = v[:i], v[i+1:]
		} else {
			part, v = v, nil
		}
		if asciiEqualFold(bytes.TrimSpace(part), tok) {
			return true
		}
	}
	return false
}
