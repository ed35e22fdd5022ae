package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

// startEngine runs an engine on a random loopback port and shuts it down
// when the test ends.
func startEngine(t testing.TB, cfg engine.Config) *engine.Engine {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.DrainWindow == 0 {
		cfg.DrainWindow = 20 * time.Millisecond // keep test shutdowns quick
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e, err := engine.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	liveEngines.Add(1)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if liveEngines.Add(-1) == 0 {
			checkNoLeaks(t)
		}
	})
	return e
}

// liveEngines counts engines started by startEngine and not yet shut down;
// the leak check runs when the last one stops.
var liveEngines atomic.Int32

// engineGoroutines are functions that run for an engine's lifetime; none may
// survive Shutdown.
var engineGoroutines = []string{
	"surge/conn.(*Wheel).Run",
	"surge/poller.(*writePoller).run",
	"surge/poller.(*Poller).Listen",
}

// checkNoLeaks waits for every engine goroutine to end.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	var left string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		left = ""
		for _, g := range strings.Split(stacks, "\n\n") {
			for _, f := range engineGoroutines {
				if strings.Contains(g, f) {
					left += g + "\n\n"
				}
			}
		}
		if left == "" {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("goroutines left after Shutdown:\n%s", left)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func publish(t testing.TB, addr, topic string, data any) uint64 {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"topic": topic, "data": data})
	resp, err := http.Post("http://"+addr+"/v1/publish", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Result string `json:"result"`
		Seq    uint64 `json:"seq"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || out.Result != "ok" {
		t.Fatalf("publish: status %d result %q err %v", resp.StatusCode, out.Result, err)
	}
	return out.Seq
}

func getStats(t testing.TB, addr string) engine.Stats {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st engine.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// rawClient is a minimal WebSocket client over TCP that can send anything,
// including frames a real client library would refuse to send.
type rawClient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

const testKey = "dGhlIHNhbXBsZSBub25jZQ=="

func dialRaw(t testing.TB, addr, path string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
	rc.write([]byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + testKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade: status %d", resp.StatusCode)
	}
	return rc
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// frame builds a client frame; masked unless told otherwise.
func frame(b0 byte, payload []byte, masked bool) []byte {
	out := []byte{b0}
	mbit := byte(0)
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		out = append(out, mbit|byte(n))
	case n <= 0xffff:
		out = append(out, mbit|126, byte(n>>8), byte(n))
	default:
		out = append(out, mbit|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if !masked {
		return append(out, payload...)
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, mask[:]...)
	for i, c := range payload {
		out = append(out, c^mask[i%4])
	}
	return out
}

type srvFrame struct {
	fin     bool
	op      byte
	payload []byte
}

// read reads one server frame (servers never mask).
func (rc *rawClient) read() (srvFrame, error) {
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(rc.br, h[:]); err != nil {
		return srvFrame{}, err
	}
	n := int64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(rc.br, b[:]); err != nil {
			return srvFrame{}, err
		}
		n = int64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(rc.br, b[:]); err != nil {
			return srvFrame{}, err
		}
		n = int64(binary.BigEndian.Uint64(b[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(rc.br, p); err != nil {
		return srvFrame{}, err
	}
	return srvFrame{fin: h[0]&0x80 != 0, op: h[0] & 0x0f, payload: p}, nil
}

// readClose reads frames until a close frame and returns its code (0 for none),
// then expects the server to close the TCP connection.
func (rc *rawClient) readClose() (code int, reason string) {
	rc.t.Helper()
	for {
		f, err := rc.read()
		if err != nil {
			rc.t.Fatalf("waiting for a close frame: %v", err)
		}
		if f.op != 0x8 {
			continue
		}
		if len(f.payload) >= 2 {
			code = int(binary.BigEndian.Uint16(f.payload))
			reason = string(f.payload[2:])
		}
		break
	}
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, rc.br); err != nil {
		rc.t.Fatalf("expected the server to close the TCP connection, got %v", err)
	}
	return code, reason
}

func rawDial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
