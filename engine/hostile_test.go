package engine_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

// TestHostileClients runs every kind of broken or malicious client against
// one server, then checks that it still serves a normal client and that
// goroutines and heap stayed bounded. Each case logs its observed outcome.
func TestHostileClients(t *testing.T) {
	if testing.Short() {
		t.Skip("opens hundreds of sockets")
	}
	e := startEngine(t, engine.Config{
		Echo: true, MaxMessageSize: 1 << 20, HandshakeTimeout: 500 * time.Millisecond,
		OpsPerSecond: 20, MaxSubscriptions: 50, ConnRatePerIP: 50,
	})
	addr := e.Addr()
	runtime.GC()
	baseG := runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseHeap := ms.HeapAlloc

	frameCase := func(name string, send []byte, want int) {
		t.Run(name, func(t *testing.T) {
			rc := dialRaw(t, addr, "/echo")
			rc.write(send)
			code, _ := rc.readClose()
			t.Logf("%-28s → close %d", name, code)
			if code != want {
				t.Fatalf("close %d, want %d", code, want)
			}
		})
	}
	big := binary.BigEndian.AppendUint64(nil, 32<<20)
	frameCase("unmasked frame", frame(0x81, []byte("x"), false), 1002)
	frameCase("reserved opcode", frame(0x85, nil, true), 1002)
	frameCase("RSV bits", frame(0xF1, []byte("x"), true), 1002)
	frameCase("bad UTF-8", frame(0x81, []byte{0xc3, 0x28}, true), 1007)
	frameCase("fragmented control frame", frame(0x09, nil, true), 1002)
	frameCase("32 MiB declared length", append(append([]byte{0x82, 0xff}, big...), 1, 2, 3, 4), 1009)
	frameCase("invalid close code", frame(0x88, []byte{0x03, 0xee}, true), 1002)

	t.Run("deflate bomb", func(t *testing.T) {
		rc, _ := dialRawExt(t, addr, "/echo", "permessage-deflate")
		rc.write(frame(0xC2, deflate(t, make([]byte, 8<<20)), true))
		code, _ := rc.readClose()
		t.Logf("%-28s → close %d", "deflate bomb (8 MiB of zeros)", code)
		if code != 1009 {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("32 MiB header then a trickle", func(t *testing.T) {
		rc := dialRaw(t, addr, "/echo")
		rc.write(append(append([]byte{0x82, 0xff}, big...), 1, 2, 3, 4))
		for i := 0; i < 3; i++ {
			rc.c.Write([]byte{0}) // the server has already failed the connection
		}
		code, _ := rc.readClose()
		t.Logf("%-28s → close %d", "32 MiB header, then trickle", code)
		if code != 1009 {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("half handshakes (slowloris)", func(t *testing.T) {
		const n = 200
		var wg sync.WaitGroup
		start := time.Now()
		closedAfter := make([]time.Duration, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				// From eight source addresses (25 each, below the per-IP
				// rate of 50/s), so the limiter does not refuse them before
				// the handshake deadline is what closes them.
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, byte(1+i%8))}}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, c) // returns when the server closes
				closedAfter[i] = time.Since(start)
			}(i)
		}
		// Meanwhile a normal client is served at once: no worker is held.
		rc := dialRaw(t, addr, "/echo")
		rc.write(frame(0x81, []byte("still here"), true))
		if f, err := rc.read(); err != nil || string(f.payload) != "still here" {
			t.Fatalf("normal client during slowloris: %v", err)
		}
		wg.Wait()
		var worst time.Duration
		for _, d := range closedAfter {
			worst = max(worst, d)
		}
		t.Logf("%-28s → all %d closed by the server within %v (deadline 500ms)", "half handshakes", n, worst.Round(time.Millisecond))
		if worst > 3*time.Second {
			t.Fatalf("slowloris connections lingered %v", worst)
		}
	})
	t.Run("header flood", func(t *testing.T) {
		c := rawDial(t, addr)
		go io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\n"+strings.Repeat("X-Flood: "+strings.Repeat("a", 100)+"\r\n", 1000))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%-28s → HTTP %d", "100 KB of headers", resp.StatusCode)
		if resp.StatusCode != 431 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("connect flood from many sources", func(t *testing.T) {
		refused, ok := 0, 0
		for src := 2; src <= 6; src++ {
			for i := 0; i < 80; i++ {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(src))}}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				c.Close()
				if err != nil {
					t.Fatal(err)
				}
				switch resp.StatusCode {
				case 429:
					refused++
				case 200:
					ok++
				}
			}
		}
		t.Logf("%-28s → %d served, %d refused with 429", "400 connects from 5 IPs", ok, refused)
		if refused == 0 || ok < 5*50 {
			t.Fatalf("per-IP limit: %d ok, %d refused", ok, refused)
		}
	})
	t.Run("subscribe flood", func(t *testing.T) {
		rc := dialRaw(t, addr, "/ws")
		var b []byte
		for i := 0; i < 500; i++ {
			b = append(b, frame(0x81, []byte(fmt.Sprintf(`{"op":"subscribe","topic":"flood.%d","id":%d}`, i, i)), true)...)
		}
		rc.write(b)
		code, reason := rc.readClose()
		t.Logf("%-28s → close %d %q", "500 subscribes at once", code, reason)
		if code != 1008 {
			t.Fatalf("close %d", code)
		}
	})

	// After all that: a normal client works, nothing grew.
	rc := dialRaw(t, addr, "/ws?topic=health")
	publish(t, addr, "health", "ok")
	if f, err := rc.read(); err != nil || !strings.Contains(string(f.payload), `"data":"ok"`) {
		t.Fatalf("normal client after the suite: %v", err)
	}
	waitFor(t, 10*time.Second, "connections to drain", func() bool { return getStats(t, addr).Sockets <= 3 })
	waitFor(t, 15*time.Second, "goroutines to settle", func() bool {
		return runtime.NumGoroutine() <= baseG+40
	})
	runtime.GC()
	runtime.ReadMemStats(&ms)
	grow := int64(ms.HeapAlloc) - int64(baseHeap)
	t.Logf("after the suite: goroutines %d (base %d), heap %+d KiB", runtime.NumGoroutine(), baseG, grow>>10)
	if grow > 32<<20 {
		t.Fatalf("heap grew by %d MiB", grow>>20)
	}
}
