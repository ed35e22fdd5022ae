package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

// Test hooks for the children of a multi-process run, which are this test
// binary run as `<binary> load <scenario> <flags>` (see TestMain).
const (
	// envPIDDir: each child writes an empty file named after its pid there.
	envPIDDir = "LOADTEST_PID_DIR"
	// envFailChild: the child with this shard index exits with status 3 at
	// once, without a report.
	envFailChild = "LOADTEST_FAIL_CHILD"
)

func TestMain(m *testing.M) {
	if isChild() {
		os.Exit(testChild())
	}
	os.Exit(m.Run())
}

// testChild runs this test binary as the child a multi-process run started.
func testChild() int {
	if dir := os.Getenv(envPIDDir); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o644); err != nil {
			return 4
		}
	}
	if v := os.Getenv(envFailChild); v != "" {
		if sh, _, err := childShard(); err == nil && strconv.Itoa(sh.Index) == v {
			return 3
		}
	}
	if len(os.Args) < 3 || os.Args[1] != "load" {
		return 5
	}
	return Main(os.Args[2:], os.Stdout, os.Stderr)
}

// startTestEngine runs a real Surge engine on a random loopback port.
func startTestEngine(t *testing.T) *engine.Engine {
	t.Helper()
	e, err := engine.New(engine.Config{Listen: "127.0.0.1:0", DrainWindow: 20 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("engine shutdown: %v", err)
		}
	})
	return e
}

// childPIDs sets up a pid directory for the children and returns a function
// that lists the pids written so far.
func childPIDs(t *testing.T) func() []int {
	t.Helper()
	dir := t.TempDir()
	t.Setenv(envPIDDir, dir)
	return func() []int {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var pids []int
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids
	}
}

// checkGone fails unless every pid is gone (exited and waited for).
func checkGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child pid %d still exists (kill 0: %v)", pid, err)
		}
	}
}

func readJSON[T any](t *testing.T, path string) *T {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &v
}

func TestProcsIdleAgainstEngine(t *testing.T) {
	pids := childPIDs(t)
	e := startTestEngine(t)
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"idle", "--url", "ws://" + e.Addr() + "/ws", "--conns", "90", "--rate", "900",
		"--topics", "4", "--hold", "200ms", "--procs", "3", "--out", out,
		// Goroutine mode, passed on to the children: their 90 readers show
		// in the summed generator goroutines.
		"--client-loop", "goroutine",
	}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	rep := readJSON[IdleReport](t, out)
	if rep.Config.Procs != 3 || rep.Config.Conns != 90 || rep.Config.ClientLoop != ClientLoopGoroutine {
		t.Errorf("config procs %d conns %d client loop %q, want 3, 90, goroutine", rep.Config.Procs, rep.Config.Conns, rep.Config.ClientLoop)
	}
	if rep.Attempted != 90 || rep.Connected != 90 || rep.Failed != 0 || rep.NotAttempted != 0 || rep.Lost != 0 {
		t.Errorf("attempted %d connected %d failed %d not attempted %d lost %d; want 90 90 0 0 0",
			rep.Attempted, rep.Connected, rep.Failed, rep.NotAttempted, rep.Lost)
	}
	if rep.OpenAfterConnect != 90 || rep.OpenAfterHold != 90 || rep.ClosedClean != 90 || rep.ClosedUnclean != 0 {
		t.Errorf("open %d → %d, closed clean %d unclean %d; want 90 → 90, 90, 0",
			rep.OpenAfterConnect, rep.OpenAfterHold, rep.ClosedClean, rep.ClosedUnclean)
	}
	if rep.ConnectLatencyMs.Count != 90 || rep.RampS <= 0 || rep.ConnectRate <= 0 {
		t.Errorf("latency count %d ramp %v rate %v", rep.ConnectLatencyMs.Count, rep.RampS, rep.ConnectRate)
	}
	// The server, read once by the parent, saw every child's connections.
	ac := rep.Server.AfterConnect
	if ac == nil || ac.Connections == nil || *ac.Connections != 90 || ac.Subscriptions == nil || *ac.Subscriptions != 90 {
		t.Errorf("server after connect = %+v, want 90 connections and subscriptions", ac)
	}
	if got := e.Stats().ConnectionsOpened; got != 90 {
		t.Errorf("engine opened %d connections, want 90", got)
	}
	if rep.GeneratorBytesPerConn == nil || rep.Generator.AfterConnect == nil || rep.Generator.AfterConnect.Goroutines < 90 {
		t.Errorf("generator = %+v per conn %+v", rep.Generator, rep.GeneratorBytesPerConn)
	}
	if !strings.Contains(stderr.String(), "connected=90") {
		t.Errorf("the parent's live line lacks the children's sum:\n%s", stderr.String())
	}
	if p := pids(); len(p) != 3 {
		t.Errorf("%d children ran, want 3", len(p))
	} else {
		checkGone(t, p)
	}
}

// TestProcsIdleShards: the children together subscribe exactly as one
// process would (connection i on topic i mod topics), and each child uses
// its own source addresses.
func TestProcsIdleShards(t *testing.T) {
	s := newContractServer(t, "", false)
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"idle", "--url", s.wsURL(), "--conns", "30", "--rate", "600", "--topics", "4",
		"--hold", "0", "--procs", "3", "--source-ips", "127.0.0.2-127.0.0.7", "--quiet",
	}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[string]int{"idle.0": 8, "idle.1": 8, "idle.2": 7, "idle.3": 7}
	if len(s.topics) != len(want) {
		t.Errorf("topics = %v, want %v", s.topics, want)
	}
	for k, v := range want {
		if s.topics[k] != v {
			t.Errorf("topics = %v, want %v", s.topics, want)
			break
		}
	}
	if len(s.remotes) != 6 {
		t.Errorf("remotes = %v, want 6 source addresses", s.remotes)
	}
	for _, n := range s.remotes {
		if n != 5 {
			t.Errorf("remotes = %v, want 5 connections from each (2 addresses per child)", s.remotes)
			break
		}
	}
}

func TestProcsFanoutAgainstEngine(t *testing.T) {
	pids := childPIDs(t)
	e := startTestEngine(t)
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"fanout", "--url", "ws://" + e.Addr() + "/ws", "--subs", "40", "--topics", "1",
		"--rate", "100", "--duration", "1s", "--procs", "2", "--out", out,
	}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	rep := readJSON[FanoutReport](t, out)
	const subs, messages = 40, 100
	if rep.Config.Procs != 2 || rep.Published != messages || rep.PublishErrors != 0 {
		t.Errorf("procs %d published %d errors %d; want 2, %d, 0", rep.Config.Procs, rep.Published, rep.PublishErrors, messages)
	}
	if rep.Expected != subs*messages || rep.Delivered != subs*messages || rep.Lost != 0 {
		t.Errorf("expected %d delivered %d lost %d; want %d %d 0", rep.Expected, rep.Delivered, rep.Lost, subs*messages, subs*messages)
	}
	if rep.Duplicates != 0 || rep.Reordered != 0 || rep.Foreign != 0 || rep.Malformed != 0 || !rep.Drained {
		t.Errorf("dups %d reordered %d foreign %d malformed %d drained %v",
			rep.Duplicates, rep.Reordered, rep.Foreign, rep.Malformed, rep.Drained)
	}
	// Every child's latencies reached the parent's histogram.
	if rep.LatencyCount != subs*messages || rep.P50 <= 0 || rep.P50 > rep.P99 || rep.P99 > rep.Max {
		t.Errorf("latency count %d p50 %v p99 %v max %v", rep.LatencyCount, rep.P50, rep.P99, rep.Max)
	}
	var del int64
	for _, p := range rep.Timeline {
		del += p.Delivered
	}
	if del != subs*messages {
		t.Errorf("timeline delivered %d, want %d", del, subs*messages)
	}
	if rep.ServerMessagesOut == nil || *rep.ServerMessagesOut != subs*messages {
		t.Errorf("server messages out = %v, want %d", rep.ServerMessagesOut, subs*messages)
	}
	sc := rep.Subscribers
	if sc.Connected != subs || sc.ClosedClean != subs || rep.FailRatio != 0 {
		t.Errorf("subscribers %+v fail ratio %v", sc, rep.FailRatio)
	}
	if p := pids(); len(p) != 2 {
		t.Errorf("%d children ran, want 2", len(p))
	} else {
		checkGone(t, p)
	}
}

// TestProcsFanoutExactLoss: one subscriber, in one child, misses one
// message; the merged report says exactly one delivery was lost.
func TestProcsFanoutExactLoss(t *testing.T) {
	s := newPubsubServer(t, func(s *pubsubServer) { s.fault = oneFault("fanout.1", 10, faultSkip) })
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"fanout", "--url", s.wsURL(), "--subs", "50", "--topics", "2", "--rate", "50",
		"--duration", "2s", "--drain", "500ms", "--procs", "3", "--quiet", "--out", out,
	}, &stdout, &stderr)
	if code != exitFail {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitFail, stdout.String(), stderr.String())
	}
	rep := readJSON[FanoutReport](t, out)
	if rep.Lost != 1 || rep.Delivered != 2499 || rep.Expected != 2500 || rep.SubscribersWithLoss != 1 || rep.Duplicates != 0 {
		t.Errorf("lost %d delivered %d expected %d with loss %d dups %d; want 1 2499 2500 1 0",
			rep.Lost, rep.Delivered, rep.Expected, rep.SubscribersWithLoss, rep.Duplicates)
	}
	if rep.Drained {
		t.Error("drained = true with a message missing")
	}
	s.mu.Lock()
	if s.subsByTop["fanout.0"] != 25 || s.subsByTop["fanout.1"] != 25 {
		t.Errorf("subscriptions by topic = %v, want 25 each", s.subsByTop)
	}
	s.mu.Unlock()
}

// TestProcsChildExitsEarly: a child that dies without its report fails the
// run at once (not after the hold), and no child is left.
func TestProcsChildExitsEarly(t *testing.T) {
	pids := childPIDs(t)
	t.Setenv(envFailChild, "1")
	s := newContractServer(t, "", false)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := Main([]string{
		"idle", "--url", s.wsURL(), "--conns", "30", "--rate", "1000", "--hold", "60s", "--procs", "3", "--quiet",
	}, &stdout, &stderr)
	if code != exitFail {
		t.Fatalf("exit %d, want %d\nstderr:\n%s", code, exitFail, stderr.String())
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the run took %v: the failure did not stop the hold", d)
	}
	if !strings.Contains(stderr.String(), "child 1") || !strings.Contains(stderr.String(), "exit status 3") {
		t.Errorf("stderr does not name the failed child:\n%s", stderr.String())
	}
	// A child stopped early may not have reached its pid file: the
	// parent's log names every child it started.
	started := startedPIDs(stderr.String())
	if len(started) != 3 {
		t.Errorf("the log names %d started children, want 3:\n%s", len(started), stderr.String())
	}
	checkGone(t, append(started, pids()...))
	waitFor(t, 10*time.Second, "the server to see every connection closed", func() bool { return s.open.Load() == 0 })
}

// startedPIDs returns the pids of the "procs: child started" log records.
func startedPIDs(log string) []int {
	var pids []int
	for _, m := range regexp.MustCompile(`msg="procs: child started" .*pid=(\d+)`).FindAllStringSubmatch(log, -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	return pids
}

// TestProcsChildKilled: a child killed in the middle of the hold fails the
// run; the parent stops the other child and waits for it.
func TestProcsChildKilled(t *testing.T) {
	pids := childPIDs(t)
	s := newContractServer(t, "", false)
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	start := time.Now()
	go func() {
		done <- Main([]string{
			"idle", "--url", s.wsURL(), "--conns", "20", "--rate", "1000", "--hold", "60s", "--procs", "2", "--quiet",
		}, &stdout, &stderr)
	}()
	waitFor(t, 30*time.Second, "both children to connect", func() bool {
		return len(pids()) == 2 && s.open.Load() == 20
	})
	victim := pids()[0]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var code int
	select {
	case code = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the parent did not end after a child was killed")
	}
	if code != exitFail {
		t.Errorf("exit %d, want %d\nstderr:\n%s", code, exitFail, stderr.String())
	}
	if d := time.Since(start); d > 45*time.Second {
		t.Errorf("the run took %v", d)
	}
	if !strings.Contains(stderr.String(), "pid "+strconv.Itoa(victim)) {
		t.Errorf("stderr does not name the killed child %d:\n%s", victim, stderr.String())
	}
	checkGone(t, pids())
}

// TestProcsParentCancelled: cancelling the parent (what SIGINT/SIGTERM do
// in Main) stops every child; their partial reports are still merged.
func TestProcsParentCancelled(t *testing.T) {
	pids := childPIDs(t)
	s := newContractServer(t, "", false)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		rep *IdleReport
		err error
	}
	done := make(chan result, 1)
	var stderr lockedWriter
	stderr.w = &bytes.Buffer{}
	go func() {
		rep, err := runIdle(ctx, IdleConfig{URL: s.wsURL(), Conns: 20, Rate: 1000, Hold: time.Minute},
			2, []string{"--url", s.wsURL(), "--conns", "20", "--rate", "1000", "--hold", "1m", "--quiet"}, &stderr, nil)
		done <- result{rep, err}
	}()
	waitFor(t, 30*time.Second, "both children to connect", func() bool {
		return len(pids()) == 2 && s.open.Load() == 20
	})
	cancel()
	var res result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the parent did not end after its context was cancelled")
	}
	if !errors.Is(res.err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", res.err)
	}
	if res.rep == nil {
		t.Fatal("no partial report")
	}
	if !res.rep.Interrupted || res.rep.Connected != 20 || res.rep.ClosedClean != 20 || res.rep.Config.Procs != 2 {
		t.Errorf("interrupted %v connected %d closed clean %d procs %d; want true 20 20 2",
			res.rep.Interrupted, res.rep.Connected, res.rep.ClosedClean, res.rep.Config.Procs)
	}
	checkGone(t, pids())
	waitFor(t, 10*time.Second, "the server to see every connection closed", func() bool { return s.open.Load() == 0 })
	if got := s.client1k.Load(); got != 20 {
		t.Errorf("%d connections closed with 1000, want 20", got)
	}
}
