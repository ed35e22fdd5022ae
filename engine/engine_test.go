package engine_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/surgepush/surge/engine"
)

func TestPublishReachesSubscriber(t *testing.T) {
	e := startEngine(t, engine.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+e.Addr()+"/ws?topic=prices.AAPL&topic=other", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	seq := publish(t, e.Addr(), "prices.AAPL", map[string]any{"p": 189.5, "s": "héllo"})
	if seq != 1 {
		t.Fatalf("first seq = %d, want 1", seq)
	}
	if seq := publish(t, e.Addr(), "prices.AAPL", 2); seq != 2 {
		t.Fatalf("second seq = %d, want 2", seq)
	}
	for want := uint64(1); want <= 2; want++ {
		typ, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ != websocket.MessageText {
			t.Fatalf("type %v", typ)
		}
		var m struct {
			Op    string          `json:"op"`
			Topic string          `json:"topic"`
			Seq   uint64          `json:"seq"`
			Data  json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if m.Op != "message" || m.Topic != "prices.AAPL" || m.Seq != want {
			t.Fatalf("got %s", b)
		}
		if want == 1 && string(m.Data) != `{"p":189.5,"s":"héllo"}` {
			t.Fatalf("data %s", m.Data)
		}
	}
	// coder/websocket reads pongs only inside Read, so read concurrently.
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.Read(ctx)
		readErr <- err
	}()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := <-readErr; websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("read after close: %v", err)
	}
	waitFor(t, 5*time.Second, "close counted", func() bool { return getStats(t, e.Addr()).Closes["client_close"] == 1 })
}

func TestSubscribeOps(t *testing.T) {
	e := startEngine(t, engine.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+e.Addr()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	roundTrip := func(req string) map[string]any {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
			t.Fatal(err)
		}
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return m
	}
	cases := []struct {
		req, op, id, code string
	}{
		{`{"op":"subscribe","topic":"lobby.7","id":"1"}`, "ok", "1", ""},
		{`{"op":"subscribe","topic":"bad topic!","id":"2"}`, "error", "2", "bad_topic"},
		{`{"op":"unsubscribe","topic":"nope","id":"3"}`, "error", "3", "not_subscribed"},
		{`{"op":"publish","topic":"lobby.7","data":{},"id":"4"}`, "error", "4", "forbidden"},
		{`{"op":"dance","id":"5"}`, "error", "5", "unknown_op"},
		{`not json`, "error", "", "bad_request"},
		{`{"op":"unsubscribe","topic":"lobby.7","id":6}`, "ok", "6", ""},
	}
	for _, tc := range cases {
		m := roundTrip(tc.req)
		if m["op"] != tc.op || fmt.Sprint(m["id"]) != tc.id && !(tc.id == "" && m["id"] == nil) || tc.code != "" && m["code"] != tc.code {
			t.Errorf("%s → %v, want op=%s id=%s code=%s", tc.req, m, tc.op, tc.id, tc.code)
		}
	}
	// After subscribe via op, deliveries arrive.
	roundTrip(`{"op":"subscribe","topic":"lobby.8","id":"9"}`)
	publish(t, e.Addr(), "lobby.8", "hi")
	_, b, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"topic":"lobby.8","seq":1,"data":"hi"`) {
		t.Fatalf("delivery %s %v", b, err)
	}
}

func TestClientPublishAllowed(t *testing.T) {
	e := startEngine(t, engine.Config{AllowPublish: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+e.Addr()+"/ws?topic=lobby.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"op":"publish","topic":"lobby.1","data":{"move":"e4"},"id":"p"}`)); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		switch {
		case strings.Contains(s, `"op":"ok"`) && strings.Contains(s, `"seq":1`):
			got["ok"] = true
		case strings.Contains(s, `"op":"message"`) && strings.Contains(s, `"data":{"move":"e4"}`):
			got["message"] = true
		default:
			t.Fatalf("unexpected %s", s)
		}
	}
}

func TestHTTPAPIErrors(t *testing.T) {
	e := startEngine(t, engine.Config{})
	base := "http://" + e.Addr()
	cases := []struct {
		method, path, body string
		status             int
		contains           string
	}{
		{"POST", "/v1/publish", `{"topic":"a"}`, 400, `"result":"error"`},
		{"POST", "/v1/publish", `{"data":1}`, 400, "missing"},
		{"POST", "/v1/publish", `{"topic":"a b","data":1}`, 400, "invalid topic"},
		{"POST", "/v1/publish", `{nope`, 400, "not valid JSON"},
		{"GET", "/v1/publish", ``, 405, ""},
		{"GET", "/nope", ``, 404, ""},
		{"GET", "/healthz", ``, 200, "ok"},
		{"GET", "/readyz", ``, 200, "ready"},
		{"GET", "/metrics", ``, 200, "surge_connections"},
		{"GET", "/echo", ``, 404, ""}, // echo is off by default
		{"GET", "/", ``, 200, `data-testid="chart-connections"`},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.contains) {
			t.Errorf("%s %s %s → %d %s; want %d containing %q", tc.method, tc.path, tc.body, resp.StatusCode, b, tc.status, tc.contains)
		}
	}
}

// rawRequest sends raw bytes and returns the status line and headers.
func rawRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestHandshakeRejections(t *testing.T) {
	e := startEngine(t, engine.Config{MaxHeaderBytes: 4096})
	a := e.Addr()
	up := "Upgrade: websocket\r\nConnection: Upgrade\r\n"
	key := "Sec-WebSocket-Key: " + testKey + "\r\n"
	cases := []struct {
		name, req string
		status    int
		header    string
	}{
		{"no version", "GET /ws HTTP/1.1\r\nHost: x\r\n" + up + key + "\r\n", 426, "Sec-WebSocket-Version"},
		{"version 8", "GET /ws HTTP/1.1\r\nHost: x\r\n" + up + key + "Sec-WebSocket-Version: 8\r\n\r\n", 426, "Sec-WebSocket-Version"},
		{"no key", "GET /ws HTTP/1.1\r\nHost: x\r\n" + up + "Sec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"short key", "GET /ws HTTP/1.1\r\nHost: x\r\n" + up + "Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"no host", "GET /ws HTTP/1.1\r\n" + up + key + "Sec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"no upgrade", "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"POST", "POST /ws HTTP/1.1\r\nHost: x\r\n" + up + key + "Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n", 405, ""},
		{"bad topic", "GET /ws?topic=a%20b HTTP/1.1\r\nHost: x\r\n" + up + key + "Sec-WebSocket-Version: 13\r\n\r\n", 400, ""},
		{"garbage", "HELLO\r\n\r\n", 400, ""},
		{"http/2.0", "GET /ws HTTP/2.0\r\nHost: x\r\n\r\n", 505, ""},
		{"huge header", "GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431, ""},
		{"chunked", "POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, ""},
		{"body too big", "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := rawRequest(t, a, tc.req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.header != "" && resp.Header.Get(tc.header) != "13" {
				t.Fatalf("header %s = %q", tc.header, resp.Header.Get(tc.header))
			}
		})
	}
	// The server still serves a normal client afterwards.
	rc := dialRaw(t, a, "/ws")
	rc.write(frame(0x88, []byte{0x03, 0xe8}, true))
	if code, _ := rc.readClose(); code != 1000 {
		t.Fatalf("close code %d", code)
	}
}

func TestProtocolErrorsCloseWithCode(t *testing.T) {
	e := startEngine(t, engine.Config{MaxMessageSize: 1 << 16})
	big := make([]byte, 8)
	binary.BigEndian.PutUint64(big, 32<<20)
	cases := []struct {
		name string
		send []byte
		code int
	}{
		{"unmasked", frame(0x81, []byte("hi"), false), 1002},
		{"rsv1 without extension", frame(0xC1, []byte("hi"), true), 1002},
		{"rsv2", frame(0xA1, []byte("hi"), true), 1002},
		{"reserved data opcode", frame(0x83, nil, true), 1002},
		{"reserved control opcode", frame(0x8B, nil, true), 1002},
		{"fragmented ping", frame(0x09, []byte("x"), true), 1002},
		{"ping too long", frame(0x89, make([]byte, 126), true), 1002},
		{"continuation first", frame(0x80, []byte("x"), true), 1002},
		{"text inside fragmented", append(frame(0x01, []byte("a"), true), frame(0x81, []byte("b"), true)...), 1002},
		{"bad utf8", frame(0x81, []byte{0xff, 0xfe}, true), 1007},
		{"bad utf8 fragmented", append(frame(0x01, []byte{0xce}, true), frame(0x80, []byte{0xff}, true)...), 1007},
		{"bad utf8 fails fast in a fragment", append(frame(0x01, []byte("ok"), true), frame(0x00, []byte{0xed, 0xa0, 0x80}, true)...), 1007},
		{"close one byte", frame(0x88, []byte{0x03}, true), 1002},
		{"close code 1005", frame(0x88, []byte{0x03, 0xed}, true), 1002},
		{"close code 1006", frame(0x88, []byte{0x03, 0xee}, true), 1002},
		{"close code 999", frame(0x88, []byte{0x03, 0xe7}, true), 1002},
		{"close code 1015", frame(0x88, []byte{0x03, 0xf7}, true), 1002},
		{"close code 5000", frame(0x88, []byte{0x13, 0x88}, true), 1002},
		{"close reason bad utf8", frame(0x88, []byte{0x03, 0xe8, 0xff}, true), 1007},
		{"too big", frame(0x82, make([]byte, 1<<16+1), true), 1009},
		{"declared 32 MiB", append(append([]byte{0x82, 0xff}, big...), 1, 2, 3, 4), 1009},
		{"close 3000 echoed", frame(0x88, []byte{0x0b, 0xb8}, true), 3000},
		{"close empty echoed", frame(0x88, nil, true), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, e.Addr(), "/ws")
			rc.write(tc.send)
			if code, reason := rc.readClose(); code != tc.code {
				t.Fatalf("close code %d (%q), want %d", code, reason, tc.code)
			}
		})
	}
	// The server keeps serving others.
	rc := dialRaw(t, e.Addr(), "/ws?topic=after")
	publish(t, e.Addr(), "after", 1)
	f, err := rc.read()
	if err != nil || !strings.Contains(string(f.payload), `"topic":"after"`) {
		t.Fatalf("delivery after errors: %s %v", f.payload, err)
	}
	st := getStats(t, e.Addr())
	if st.Evictions["protocol_error"] < 10 || st.Evictions["invalid_payload"] < 3 || st.Evictions["too_big"] < 2 {
		t.Fatalf("evictions %v", st.Evictions)
	}
}

func TestPingPongAndFragments(t *testing.T) {
	e := startEngine(t, engine.Config{Echo: true})
	rc := dialRaw(t, e.Addr(), "/echo")
	// A fragmented message with a ping in the middle (RFC 6455 §5.4).
	rc.write(frame(0x01, []byte("Hel"), true))
	rc.write(frame(0x89, []byte("are you there"), true))
	rc.write(frame(0x80, []byte("lo"), true))
	f, err := rc.read()
	if err != nil || f.op != 0xA || string(f.payload) != "are you there" {
		t.Fatalf("pong: %+v %v", f, err)
	}
	f, err = rc.read()
	if err != nil || f.op != 0x1 || string(f.payload) != "Hello" || !f.fin {
		t.Fatalf("echo: %+v %v", f, err)
	}
	// Binary echo, split across many TCP writes.
	msg := frame(0x82, []byte(strings.Repeat("xyz", 1000)), true)
	for i := 0; i < len(msg); i += 7 {
		rc.write(msg[i:min(i+7, len(msg))])
	}
	f, err = rc.read()
	if err != nil || f.op != 0x2 || string(f.payload) != strings.Repeat("xyz", 1000) {
		t.Fatalf("binary echo: op %x len %d %v", f.op, len(f.payload), err)
	}
	rc.write(frame(0x88, []byte{0x03, 0xe8, 'o', 'k'}, true))
	if code, _ := rc.readClose(); code != 1000 {
		t.Fatalf("close %d", code)
	}
}

func TestHeartbeatEvictsSilentPeers(t *testing.T) {
	e := startEngine(t, engine.Config{PingInterval: 150 * time.Millisecond, PongTimeout: 150 * time.Millisecond})
	// silent never answers pings.
	silent := dialRaw(t, e.Addr(), "/ws")
	// alive answers every ping with a pong.
	alive := dialRaw(t, e.Addr(), "/ws")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var pings atomic.Int32
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			alive.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			f, err := alive.read()
			if err != nil {
				return
			}
			if f.op == 0x9 {
				pings.Add(1)
				alive.c.Write(frame(0x8A, f.payload, true))
			}
		}
	}()
	// The silent one gets a ping, then is closed for not answering.
	f, err := silent.read()
	if err != nil || f.op != 0x9 {
		t.Fatalf("expected a ping, got %+v %v", f, err)
	}
	silent.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, silent.br); err != nil {
		t.Fatalf("expected the silent peer to be closed: %v", err)
	}
	waitFor(t, 5*time.Second, "ping_timeout eviction", func() bool {
		return getStats(t, e.Addr()).Evictions["ping_timeout"] == 1
	})
	// Let the alive one go through several more ping rounds.
	waitFor(t, 5*time.Second, "three more pings answered", func() bool {
		st := getStats(t, e.Addr())
		return st.Connections == 1 && st.Evictions["ping_timeout"] == 1 && pings.Load() >= 3
	})
	close(stop)
	alive.c.Close()
	wg.Wait()
}

func TestShutdownSendsGoingAway(t *testing.T) {
	cfg := engine.Config{Listen: "127.0.0.1:0", DrainWindow: 200 * time.Millisecond, ReconnectJitter: time.Second}
	e, err := engine.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	var clients []*rawClient
	for i := 0; i < 20; i++ {
		clients = append(clients, dialRaw(t, e.Addr(), "/ws?topic=s"))
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- e.Shutdown(ctx)
	}()
	for _, rc := range clients {
		f, err := rc.read()
		if err != nil || f.op != 0x8 || binary.BigEndian.Uint16(f.payload) != 1001 {
			t.Fatalf("want close 1001, got %+v %v", f, err)
		}
		var hint struct {
			Ms *int64 `json:"reconnect_after_ms"`
		}
		if err := json.Unmarshal(f.payload[2:], &hint); err != nil || hint.Ms == nil || *hint.Ms < 0 || *hint.Ms >= 1000 {
			t.Fatalf("close reason %q: want {\"reconnect_after_ms\":N} with 0 ≤ N < 1000", f.payload[2:])
		}
		rc.write(frame(0x88, f.payload[:2], true)) // complete the closing handshake
		rc.c.Close()
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := net.Dial("tcp", e.Addr()); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func TestManyIdleConnectionsGoroutinesFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of sockets")
	}
	e := startEngine(t, engine.Config{})
	const n = 3000
	base := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := "GET /ws?topic=idle HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + testKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	buf := make([]byte, 512)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", e.Addr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if k, err := c.Read(buf); err != nil || !strings.HasPrefix(string(buf[:k]), "HTTP/1.1 101") {
			t.Fatalf("upgrade %d: %q %v", i, buf[:k], err)
		}
	}
	waitFor(t, 10*time.Second, "all connections counted", func() bool { return getStats(t, e.Addr()).Connections == n })
	// Goroutines do not grow with connections: only pool workers, bounded by Workers.
	waitFor(t, 30*time.Second, "goroutines to settle", func() bool {
		g := runtime.NumGoroutine() - base
		return g < 200
	})
	st := getStats(t, e.Addr())
	if st.Subscriptions != n || st.Topics != 1 {
		t.Fatalf("subscriptions %d topics %d", st.Subscriptions, st.Topics)
	}
	publish(t, e.Addr(), "idle", "wake")
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := io.ReadAtLeast(c, buf, 2)
		if err != nil || !strings.Contains(string(buf[:k]), `"data":"wake"`) {
			t.Fatalf("conn %d: %q %v", i, buf[:k], err)
		}
	}
}

func TestTopicsEndpoint(t *testing.T) {
	e := startEngine(t, engine.Config{})
	// No topics yet: "top" is [] (the status page iterates it), not null.
	resp, err := http.Get("http://" + e.Addr() + "/v1/topics")
	if err != nil {
		t.Fatal(err)
	}
	empty, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.TrimSpace(string(empty)); got != `{"topics":0,"top":[]}` {
		t.Fatalf("no topics: got %s", got)
	}
	a := dialRaw(t, e.Addr(), "/ws?topic=few&topic=many")
	b := dialRaw(t, e.Addr(), "/ws?topic=many")
	_, _ = a, b
	for i := 0; i < 5; i++ {
		publish(t, e.Addr(), "few", i)
	}
	publish(t, e.Addr(), "many", 0)
	get := func(q string) (int, map[string]any) {
		resp, err := http.Get("http://" + e.Addr() + "/v1/topics" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	first := func(m map[string]any) string {
		top := m["top"].([]any)
		return top[0].(map[string]any)["topic"].(string)
	}
	if code, m := get(""); code != 200 || first(m) != "many" || m["topics"].(float64) != 2 {
		t.Fatalf("by subscribers: %d %v", code, m)
	}
	if code, m := get("?sort=rate&limit=1"); code != 200 || first(m) != "few" || len(m["top"].([]any)) != 1 {
		t.Fatalf("by rate: %d %v", code, m)
	}
	if code, _ := get("?sort=nope"); code != 400 {
		t.Fatalf("bad sort: %d", code)
	}
	if code, _ := get("?limit=0"); code != 400 {
		t.Fatalf("bad limit: %d", code)
	}
}
