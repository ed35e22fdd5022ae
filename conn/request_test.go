package conn

import (
	"errors"
	"net/http"
	"testing"
)

func TestParseHead(t *testing.T) {
	type want struct {
		method, target, path, query string
		hasQuery                    bool
		contentLength               int64
		chunked, upgrade, close     bool
		wsVersion                   string
	}
	tests := []struct {
		name string
		req  string
		want want
	}{
		{"upgrade", upgradeRequest,
			want{method: "GET", target: "/ws", path: "/ws", contentLength: -1, upgrade: true, wsVersion: "13"}},
		{"browser upgrade with query", browserUpgradeRequest,
			want{method: "GET", target: "/ws?topic=prices.AAPL&topic=lobby.7", path: "/ws",
				query: "topic=prices.AAPL&topic=lobby.7", hasQuery: true, contentLength: -1, upgrade: true, wsVersion: "13"}},
		{"empty query", "GET /ws? HTTP/1.1\r\n\r\n",
			want{method: "GET", target: "/ws?", path: "/ws", hasQuery: true, contentLength: -1}},
		{"post with body", "POST /v1/publish HTTP/1.1\r\ncontent-length:  5 \r\n\r\n",
			want{method: "POST", target: "/v1/publish", path: "/v1/publish", contentLength: 5}},
		{"repeated equal Content-Length", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
			want{method: "POST", target: "/", path: "/", contentLength: 5}},
		{"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
			want{method: "POST", target: "/", path: "/", contentLength: -1, chunked: true}},
		{"header names and tokens are case-insensitive", "GET / HTTP/1.1\r\nUPGRADE: h2c, WebSocket\r\nconnection: Upgrade, CLOSE\r\n\r\n",
			want{method: "GET", target: "/", path: "/", contentLength: -1, upgrade: true, close: true}},
		{"HTTP/1.0 closes", "GET / HTTP/1.0\r\n\r\n",
			want{method: "GET", target: "/", path: "/", contentLength: -1, close: true}},
		{"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
			want{method: "GET", target: "/", path: "/", contentLength: -1}},
		{"asterisk", "OPTIONS * HTTP/1.1\r\n\r\n",
			want{method: "OPTIONS", target: "*", path: "*", contentLength: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHead([]byte(tc.req))
			if err != nil {
				t.Fatalf("ParseHead: %v", err)
			}
			got := want{string(h.Method), string(h.Target), string(h.Path), string(h.Query), h.Query != nil,
				h.ContentLength, h.Chunked, h.Upgrade, h.Close, string(h.WSVersion)}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			if h.HeadLen != len(tc.req) {
				t.Fatalf("HeadLen %d, want %d", h.HeadLen, len(tc.req))
			}
		})
	}
}

func TestParseHeadErrors(t *testing.T) {
	tests := []struct {
		name   string
		req    string
		status int
	}{
		{"empty", "\r\n\r\n", 400},
		{"no target", "GET\r\n\r\n", 400},
		{"no proto", "GET /\r\n\r\n", 400},
		{"double space", "GET  / HTTP/1.1\r\n\r\n", 400},
		{"method not a token", "G(T / HTTP/1.1\r\n\r\n", 400},
		{"relative target", "GET ws HTTP/1.1\r\n\r\n", 400},
		{"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", 505},
		{"HTTP/1.1 with junk", "GET / HTTP/1.1 x\r\n\r\n", 505},
		{"header without colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400},
		{"empty header name", "GET / HTTP/1.1\r\n: x\r\n\r\n", 400},
		{"Content-Length not a number", "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n", 400},
		{"empty Content-Length", "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400},
		{"Content-Length list", "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
		{"Content-Length overflow", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
		// RFC 9110 §8.6: 1*DIGIT only; a sign was accepted before 9e343a3.
		{"Content-Length +5", "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400},
		{"Content-Length -0", "POST / HTTP/1.1\r\nContent-Length: -0\r\n\r\n", 400},
		{"Content-Length +0", "POST / HTTP/1.1\r\nContent-Length: +0\r\n\r\n", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHead([]byte(tc.req))
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("ParseHead = %+v, %v; want an *HTTPError %d", h, err, tc.status)
			}
			if he.Status != tc.status {
				t.Fatalf("status %d (%s), want %d", he.Status, he.Msg, tc.status)
			}
		})
	}
}

func TestScanHead(t *testing.T) {
	for req, want := range map[string]int{
		"":                               0,
		"GET / HTTP/1.1\r\n":             0,
		"GET / HTTP/1.1\r\n\r":           0,
		"GET / HTTP/1.1\r\n\r\n":         18,
		"GET / HTTP/1.1\r\n\r\nbody":     18,
		"GET / HTTP/1.1\n\n":             0, // bare LF is not a head end
		"\r\n\r\nGET / HTTP/1.1\r\n\r\n": 4,
	} {
		if got := ScanHead([]byte(req)); got != want {
			t.Errorf("ScanHead(%q) = %d, want %d", req, got, want)
		}
	}
}

func TestPlainResponse(t *testing.T) {
	e := &HTTPError{Status: http.StatusUpgradeRequired, Msg: "upgrade", Header: "Sec-WebSocket-Version: 13\r\n"}
	resp, rest := readResponse(t, e.Response())
	if resp.StatusCode != 426 || resp.Header.Get("Sec-WebSocket-Version") != "13" || !resp.Close || len(rest) != 0 {
		t.Fatalf("response %+v, rest %q", resp, rest)
	}
	if resp.ContentLength != int64(len("upgrade\n")) {
		t.Fatalf("body length %d", resp.ContentLength)
	}
	resp, _ = readResponse(t, PlainResponse(200, "", "ok", false))
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("keep-alive response %+v", resp)
	}
}
