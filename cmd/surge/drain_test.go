package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildSurge builds the binary once per test run.
func buildSurge(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "surge")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startServe runs `surge serve` with args and returns the process and its
// listening address, read from its log.
func startServe(t *testing.T, bin string, args ...string) (*exec.Cmd, string, *logTail) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	lt := &logTail{}
	addrRe := regexp.MustCompile(`msg="surge listening" addr=(\S+)`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			lt.add(line)
			if m := addrRe.FindStringSubmatch(line); m != nil {
				found <- m[1]
			}
		}
	}()
	select {
	case a := <-found:
		return cmd, a, lt
	case <-time.After(15 * time.Second):
		t.Fatalf("surge serve did not start:\n%s", lt.String())
	}
	return nil, "", nil
}

type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTail) add(s string) { l.mu.Lock(); l.lines = append(l.lines, s); l.mu.Unlock() }
func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

type closeSeen struct {
	at   time.Time
	code uint16
	hint int64
	err  error
}

// TestDrainOnSIGTERM: 2,000 clients; SIGTERM; every client gets 1001 with a
// reconnect hint, the closes are spread over the drain window, new upgrades
// get 503 during the drain, no client is left open, and the exit code is 0.
func TestDrainOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and opens 2,000 sockets")
	}
	bin := buildSurge(t)
	const n = 2000
	window, jitter := 2*time.Second, 5*time.Second
	cmd, addr, logs := startServe(t, bin, "--drain-window", window.String(), "--reconnect-jitter", jitter.String(), "--shutdown-timeout", "10s")
	req := "GET /ws?topic=d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	results := make([]closeSeen, n)
	var ready, done sync.WaitGroup
	ready.Add(n)
	done.Add(n)
	for i := 0; i < n; i++ {
		go func(i int) {
			defer done.Done()
			res := &results[i]
			c, err := net.Dial("tcp", addr)
			if err != nil {
				res.err = err
				ready.Done()
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			io.WriteString(c, req)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 101 {
				res.err = err
				ready.Done()
				return
			}
			ready.Done()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var h [2]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				res.err = err
				return
			}
			p := make([]byte, h[1]&0x7f)
			if _, err := io.ReadFull(br, p); err != nil || h[0]&0x0f != 8 || len(p) < 2 {
				res.err = io.ErrUnexpectedEOF
				return
			}
			res.at, res.code = time.Now(), binary.BigEndian.Uint16(p)
			var hint struct {
				Ms int64 `json:"reconnect_after_ms"`
			}
			res.err = json.Unmarshal(p[2:], &hint)
			res.hint = hint.Ms
			c.Write([]byte{0x88, 0x82, 0, 0, 0, 0, p[0], p[1]}) // masked close reply, zero mask
			io.Copy(io.Discard, br)                             // until the server closes
		}(i)
	}
	ready.Wait()
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// During the drain, new upgrades are refused with 503 and Retry-After.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("listener closed before the drain ended: %v", err)
		}
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil && resp.StatusCode == 503 && resp.Header.Get("Retry-After") != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 503 during the drain: %v %v", resp, err)
		}
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("surge did not exit:\n%s", logs.String())
	}
	done.Wait() // every client saw the server close (io.Copy returned)
	var first, last time.Time
	hints := map[int64]bool{}
	for i, r := range results {
		if r.err != nil || r.code != 1001 || r.hint < 0 || r.hint >= jitter.Milliseconds() {
			t.Fatalf("client %d: code %d hint %d err %v", i, r.code, r.hint, r.err)
		}
		if first.IsZero() || r.at.Before(first) {
			first = r.at
		}
		if r.at.After(last) {
			last = r.at
		}
		hints[r.hint] = true
	}
	spread := last.Sub(first)
	t.Logf("drain: %d clients closed over %v (window %v), first after %v, %d distinct hints, exit after %v",
		n, spread, window, first.Sub(start), len(hints), time.Since(start))
	// The upper bound leaves room for clients that read their close late on
	// a loaded machine (the -race build of 2,000 readers on two cores).
	if spread < window/2 || spread > window+2*time.Second {
		t.Fatalf("closes spread over %v, want about the %v window", spread, window)
	}
	if len(hints) < n/4 {
		t.Fatalf("only %d distinct reconnect hints for %d clients", len(hints), n)
	}
}
