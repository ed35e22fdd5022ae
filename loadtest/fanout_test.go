package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fanoutTestConfig is the brief's reference run: 50 subscribers on 2
// topics, 50 messages a second for 2 s — 100 messages, 50 per topic, 25
// subscribers each: 2500 deliveries.
func fanoutTestConfig(url string) FanoutConfig {
	return FanoutConfig{
		URL:      url,
		Subs:     50,
		Topics:   2,
		Rate:     50,
		Duration: 2 * time.Second,
	}
}

// clientLoopModes are the client loops this platform has, the default
// first.
func clientLoopModes() []string {
	if haveEpoll {
		return []string{ClientLoopEpoll, ClientLoopGoroutine}
	}
	return []string{ClientLoopGoroutine}
}

func TestFanoutExactAgainstContractServer(t *testing.T) {
	for _, loop := range clientLoopModes() {
		t.Run(loop, func(t *testing.T) { testFanoutExact(t, loop) })
	}
}

func testFanoutExact(t *testing.T, loop string) {
	s := newPubsubServer(t, nil)
	base := runtime.NumGoroutine()
	var (
		pmu    sync.Mutex
		phases = map[string]int{}
	)
	cfg := fanoutTestConfig(s.wsURL())
	cfg.ClientLoop = loop
	cfg.Progress = func(p FanoutProgress) {
		pmu.Lock()
		phases[p.Phase]++
		pmu.Unlock()
	}
	rep, err := Fanout(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Fanout: %v", err)
	}
	if rep.Published != 100 || rep.PublishErrors != 0 || rep.NotSent != 0 {
		t.Errorf("published %d, errors %d (%v), not sent %d; want 100, 0, 0",
			rep.Published, rep.PublishErrors, rep.PublishErrorsByCause, rep.NotSent)
	}
	if rep.Expected != 2500 || rep.Delivered != 2500 || rep.Lost != 0 {
		t.Errorf("expected %d delivered %d lost %d; want 2500 2500 0", rep.Expected, rep.Delivered, rep.Lost)
	}
	if rep.Duplicates != 0 || rep.Reordered != 0 || rep.SeqGaps != 0 || rep.Foreign != 0 || rep.Malformed != 0 || rep.OtherFrames != 0 {
		t.Errorf("dups %d reordered %d gaps %d foreign %d malformed %d other %d; want all 0",
			rep.Duplicates, rep.Reordered, rep.SeqGaps, rep.Foreign, rep.Malformed, rep.OtherFrames)
	}
	if got := s.deliveries.Load(); got != 2500 {
		t.Errorf("server queued %d deliveries, want 2500", got)
	}
	if rep.ServerMessagesOut == nil || *rep.ServerMessagesOut != 2500 {
		t.Errorf("server messages out = %v, want 2500", rep.ServerMessagesOut)
	}
	if !rep.Drained || rep.SubscribersWithLoss != 0 {
		t.Errorf("drained %v, subscribers with loss %d", rep.Drained, rep.SubscribersWithLoss)
	}
	if rep.LatencyCount != 2500 || rep.P50 <= 0 || rep.P50 > rep.P99 || rep.P99 > rep.Max || rep.Mean <= 0 {
		t.Errorf("latency count %d p50 %v p99 %v max %v mean %v", rep.LatencyCount, rep.P50, rep.P99, rep.Max, rep.Mean)
	}
	if rep.DeliveriesPerSec != 1250 {
		t.Errorf("deliveries/s = %v, want 2500 / 2 s", rep.DeliveriesPerSec)
	}
	if rep.Config.ClientLoop != loop {
		t.Errorf("config client loop = %q, want %q", rep.Config.ClientLoop, loop)
	}
	if rep.PublishLatencyMs.Count != 100 {
		t.Errorf("publish latency count = %d, want 100", rep.PublishLatencyMs.Count)
	}
	// The fake server's CPU grows by exactly 2 µs per delivery.
	if c := rep.CPUUsPerDelivery; c == nil || math.Abs(*c-fakeCPUPerDelivery*1e6) > 0.01 {
		t.Errorf("cpu µs per delivery = %v, want %v", c, fakeCPUPerDelivery*1e6)
	}
	if !strings.Contains(rep.ServerCPUSource, "process_cpu_seconds_total") {
		t.Errorf("server cpu source = %q", rep.ServerCPUSource)
	}
	if rep.Generator.CPUS == nil || rep.Generator.CPUUsPerDelivery == nil || rep.Generator.After == nil {
		t.Errorf("generator = %+v", rep.Generator)
	}
	sc := rep.Subscribers
	if sc.Connected != 50 || sc.Failed != 0 || sc.ClosedClean != 50 || len(sc.ClosedByServer) != 0 || rep.FailRatio != 0 {
		t.Errorf("subscribers = %+v, fail ratio %v", sc, rep.FailRatio)
	}
	var pub, del int64
	for _, p := range rep.Timeline {
		pub += p.Published
		del += p.Delivered
	}
	if pub != 100 || del != 2500 || len(rep.Timeline) < 2 || len(rep.Timeline) > 5 {
		t.Errorf("timeline sums published %d delivered %d over %d points; want 100, 2500, 2–5 points: %+v",
			pub, del, len(rep.Timeline), rep.Timeline)
	}
	s.mu.Lock()
	if s.subsByTop["fanout.0"] != 25 || s.subsByTop["fanout.1"] != 25 || len(s.subsByTop) != 2 {
		t.Errorf("subscriptions by topic = %v, want 25 each on fanout.0 and fanout.1", s.subsByTop)
	}
	s.mu.Unlock()
	pmu.Lock()
	if phases["publish"] == 0 || phases["done"] != 1 {
		t.Errorf("progress calls by phase = %v", phases)
	}
	pmu.Unlock()
	checkNoLeak(t, base)
}

// oneFault returns a fault hook that applies act once: to the first
// subscriber the server delivers seq of topic to.
func oneFault(topic string, seq uint64, act faultAction) func(string, uint64, int) faultAction {
	done := false // the hook runs under the server's lock
	return func(tp string, sq uint64, _ int) faultAction {
		if tp == topic && sq == seq && !done {
			done = true
			return act
		}
		return faultDeliver
	}
}

func TestFanoutCountsFaultsExactly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault faultAction
		check func(t *testing.T, rep *FanoutReport)
	}{
		{
			name:  "duplicate",
			fault: faultTwice,
			check: func(t *testing.T, rep *FanoutReport) {
				if rep.Duplicates != 1 || rep.Lost != 0 || rep.Delivered != 2500 || rep.Reordered != 0 {
					t.Errorf("dups %d lost %d delivered %d reordered %d; want 1 0 2500 0",
						rep.Duplicates, rep.Lost, rep.Delivered, rep.Reordered)
				}
			},
		},
		{
			name:  "closed by the server",
			fault: faultClose,
			check: func(t *testing.T, rep *FanoutReport) {
				// The subscriber got seqs 1–19 of topic fanout.0's 50.
				const lost = 50 - 19
				if rep.Lost != lost || rep.LostOnClosed != lost || rep.SubscribersWithLoss != 1 || rep.Delivered != 2500-lost {
					t.Errorf("lost %d (on closed %d, subscribers %d), delivered %d; want %d %d 1 %d",
						rep.Lost, rep.LostOnClosed, rep.SubscribersWithLoss, rep.Delivered, lost, lost, 2500-lost)
				}
				if got := rep.Subscribers.ClosedByServer; got["1008"] != 1 || len(got) != 1 {
					t.Errorf("closed by server = %v, want {1008: 1}", got)
				}
				if rep.FailRatio != 1.0/50 || rep.Subscribers.ClosedClean != 49 {
					t.Errorf("fail ratio %v, closed clean %d", rep.FailRatio, rep.Subscribers.ClosedClean)
				}
			},
		},
	}
	for _, tc := range tests {
		for _, loop := range clientLoopModes() {
			t.Run(tc.name+"/"+loop, func(t *testing.T) {
				t.Parallel()
				s := newPubsubServer(t, func(s *pubsubServer) { s.fault = oneFault("fanout.0", 20, tc.fault) })
				cfg := fanoutTestConfig(s.wsURL())
				cfg.Drain = 500 * time.Millisecond
				cfg.ClientLoop = loop
				rep, err := Fanout(t.Context(), cfg, nil)
				if err != nil {
					t.Fatalf("Fanout: %v", err)
				}
				tc.check(t, rep)
				var stderr bytes.Buffer
				if code := fanoutVerdict(rep, 0.01, &stderr); code != exitFail {
					t.Errorf("verdict %d, want %d", code, exitFail)
				}
			})
		}
	}
}

// TestMainFanoutSkippedSeq: one subscriber misses one seq; the run must say
// exactly one delivery was lost and exit non-zero.
func TestMainFanoutSkippedSeq(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, func(s *pubsubServer) { s.fault = oneFault("fanout.1", 10, faultSkip) })
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"fanout", "--url", s.wsURL(), "--subs", "50", "--topics", "2", "--rate", "50",
		"--duration", "2s", "--drain", "500ms", "--quiet", "--out", out,
	}, &stdout, &stderr)
	if code != exitFail {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitFail, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "1 deliveries lost (1 subscribers affected)") {
		t.Errorf("stderr does not explain the failure:\n%s", stderr.String())
	}
	var rep FanoutReport
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Lost != 1 || rep.Delivered != 2499 || rep.Expected != 2500 || rep.SeqGaps != 1 || rep.Duplicates != 0 || rep.Reordered != 0 {
		t.Errorf("lost %d delivered %d expected %d gaps %d dups %d reordered %d; want 1 2499 2500 1 0 0",
			rep.Lost, rep.Delivered, rep.Expected, rep.SeqGaps, rep.Duplicates, rep.Reordered)
	}
	if rep.Drained {
		t.Error("drained = true with a message missing")
	}
}

// documentedFanoutFields are the JSON keys FanoutReport promises.
var documentedFanoutFields = []string{
	"scenario", "config", "started_at", "duration_s", "interrupted", "run_id",
	"published", "publish_errors", "publish_errors_by_cause", "not_sent", "publish_s", "publish_rate", "publish_latency_ms",
	"expected", "delivered", "lost", "duplicates", "reordered", "seq_gaps", "foreign", "malformed", "other_frames",
	"compressed", "subscribers_with_loss", "lost_on_closed", "drain_s", "drained",
	"latency_count", "p50", "p90", "p99", "p999", "max", "mean", "deliveries_per_sec",
	"subscribers", "fail_ratio", "server", "server_cpu_s", "server_cpu_source", "cpu_us_per_delivery",
	"server_messages_out", "generator", "timeline", "warnings",
}

func TestMainFanoutWritesReport(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, nil)
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"fanout", "--url", s.wsURL(), "--subs", "20", "--topics", "4", "--rate", "40",
		"--duration", "1500ms", "--warmup", "500ms", "--size", "300", "--out", out,
	}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	// 80 messages (20 warmup), 20 per topic, 5 subscribers each.
	if !strings.Contains(stdout.String(), "delivered 400 of 400 expected: lost 0") {
		t.Errorf("summary lacks the delivery line:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "connected=20 msgs/s=") {
		t.Errorf("no live progress line on stderr:\n%s", stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	for _, k := range documentedFanoutFields {
		if _, ok := m[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	sub, _ := m["subscribers"].(map[string]any)
	for _, k := range []string{"requested", "connected", "failed", "failed_by_cause", "closed_by_server", "deflate"} {
		if _, ok := sub[k]; !ok {
			t.Errorf("subscribers lacks %q", k)
		}
	}
	srv, _ := m["server"].(map[string]any)
	for _, k := range []string{"before", "after_connect", "after"} {
		if _, ok := srv[k].(map[string]any); !ok {
			t.Errorf("server lacks %q", k)
		}
	}
	gen, _ := m["generator"].(map[string]any)
	for _, k := range []string{"before", "after", "cpu_s", "cpu_us_per_delivery"} {
		if _, ok := gen[k]; !ok {
			t.Errorf("generator lacks %q", k)
		}
	}
	cfg, _ := m["config"].(map[string]any)
	for _, k := range []string{"url", "subs", "topics", "rate", "size", "duration_s", "warmup_s", "drain_s", "publish", "deflate", "source_ips", "messages"} {
		if _, ok := cfg[k]; !ok {
			t.Errorf("config lacks %q", k)
		}
	}
	tl, _ := m["timeline"].([]any)
	if len(tl) == 0 {
		t.Fatal("empty timeline")
	}
	p0, _ := tl[0].(map[string]any)
	for _, k := range []string{"t_s", "published", "delivered", "p99"} {
		if _, ok := p0[k]; !ok {
			t.Errorf("timeline point lacks %q", k)
		}
	}
	var rep FanoutReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	// Warmup messages are checked for loss but not timed.
	if rep.Published != 80 || rep.Delivered != 400 || rep.LatencyCount >= 400 || rep.LatencyCount < 250 {
		t.Errorf("published %d delivered %d latency count %d; want 80, 400, ~300", rep.Published, rep.Delivered, rep.LatencyCount)
	}
	if rep.Config.Messages != 80 || rep.Config.WarmupS != 0.5 {
		t.Errorf("config = %+v", rep.Config)
	}
}

func TestFanoutDeflate(t *testing.T) {
	t.Parallel()
	for _, loop := range clientLoopModes() {
		t.Run(loop, func(t *testing.T) {
			t.Parallel()
			s := newPubsubServer(t, func(s *pubsubServer) { s.deflate = true })
			rep, err := Fanout(t.Context(), FanoutConfig{
				URL: s.wsURL(), Subs: 20, Rate: 50, Duration: time.Second, Size: 1024, Deflate: true, ClientLoop: loop,
			}, nil)
			if err != nil {
				t.Fatalf("Fanout: %v", err)
			}
			if rep.Subscribers.Deflate != 20 || rep.Delivered != 1000 || rep.Compressed != 1000 || rep.Lost != 0 || rep.Malformed != 0 {
				t.Errorf("deflate subs %d delivered %d compressed %d lost %d malformed %d; want 20 1000 1000 0 0",
					rep.Subscribers.Deflate, rep.Delivered, rep.Compressed, rep.Lost, rep.Malformed)
			}
		})
	}
}

func TestFanoutDeflateNotNegotiated(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, nil)
	rep, err := Fanout(t.Context(), FanoutConfig{
		URL: s.wsURL(), Subs: 5, Rate: 20, Duration: 500 * time.Millisecond, Deflate: true,
	}, nil)
	if err != nil {
		t.Fatalf("Fanout: %v", err)
	}
	if rep.Subscribers.Deflate != 0 || rep.Compressed != 0 || rep.Lost != 0 || rep.Delivered != 50 {
		t.Errorf("deflate %d compressed %d lost %d delivered %d", rep.Subscribers.Deflate, rep.Compressed, rep.Lost, rep.Delivered)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "permessage-deflate") {
		t.Errorf("warnings = %q", rep.Warnings)
	}
}

func TestFanoutWebSocketPublish(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, func(s *pubsubServer) { s.allowWSPublish = true })
	cfg := fanoutTestConfig(s.wsURL())
	cfg.Duration = time.Second
	cfg.Publish = publishWS
	rep, err := Fanout(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Fanout: %v", err)
	}
	if rep.Published != 50 || rep.PublishErrors != 0 || rep.Delivered != 1250 || rep.Lost != 0 || rep.Config.PublishConns != 1 {
		t.Errorf("published %d errors %v delivered %d lost %d conns %d; want 50 0 1250 0 1",
			rep.Published, rep.PublishErrorsByCause, rep.Delivered, rep.Lost, rep.Config.PublishConns)
	}
	// The publisher subscribed to nothing.
	s.mu.Lock()
	if s.subsByTop["fanout.0"]+s.subsByTop["fanout.1"] != 50 {
		t.Errorf("subscriptions = %v", s.subsByTop)
	}
	s.mu.Unlock()
}

func TestMainFanoutWebSocketPublishForbidden(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, nil)
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"fanout", "--url", s.wsURL(), "--subs", "5", "--rate", "20", "--duration", "2s",
		"--publish", "ws", "--quiet", "--out", out,
	}, &stdout, &stderr)
	if code != exitFail {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitFail, stdout.String(), stderr.String())
	}
	for _, want := range []string{"forbidden", "--allow-publish", "--publish http"} {
		if !strings.Contains(stdout.String(), want) || !strings.Contains(stderr.String(), want) {
			t.Errorf("%q missing from the summary or the log:\nstdout:\n%s\nstderr:\n%s", want, stdout.String(), stderr.String())
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep FanoutReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Published != 0 || rep.PublishErrorsByCause["forbidden"] < 1 || rep.NotSent < 30 || s.published.Load() != 0 {
		t.Errorf("published %d, errors %v, not sent %d, server published %d",
			rep.Published, rep.PublishErrorsByCause, rep.NotSent, s.published.Load())
	}
	// Stopped at once, not after the full two seconds.
	if rep.DurationS > 1.5 {
		t.Errorf("run took %.1fs after the server refused publishing\nstderr:\n%s", rep.DurationS, stderr.String())
	}
}

func TestFanoutHTTPPublishErrors(t *testing.T) {
	t.Parallel()
	// The idle contract server has no POST /v1/publish: every publish is a
	// 404 (or 405).
	s := newContractServer(t, "", false)
	rep, err := Fanout(t.Context(), FanoutConfig{URL: s.wsURL(), Subs: 5, Rate: 20, Duration: 500 * time.Millisecond}, nil)
	if err != nil {
		t.Fatalf("Fanout: %v", err)
	}
	if rep.Published != 0 || rep.PublishErrors != 10 || rep.PublishErrorsByCause["http_404"]+rep.PublishErrorsByCause["http_405"] != 10 {
		t.Errorf("published %d errors %d %v; want 0, 10 http_404/405", rep.Published, rep.PublishErrors, rep.PublishErrorsByCause)
	}
	if rep.Expected != 0 || rep.Lost != 0 {
		t.Errorf("expected %d lost %d", rep.Expected, rep.Lost)
	}
	var stderr bytes.Buffer
	if fanoutVerdict(rep, 0.01, &stderr) != exitFail || !strings.Contains(stderr.String(), "publishes failed") {
		t.Errorf("verdict did not fail: %s", stderr.String())
	}
}

func TestFanoutCancelled(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var once sync.Once
	cfg := FanoutConfig{
		URL: s.wsURL(), Subs: 10, Rate: 20, Duration: time.Minute,
		Progress: func(p FanoutProgress) {
			if p.Phase == "publish" && p.Published > 0 {
				once.Do(cancel)
			}
		},
	}
	start := time.Now()
	rep, err := Fanout(ctx, cfg, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if rep == nil || !rep.Interrupted || rep.NotSent == 0 || rep.Published == 0 {
		t.Fatalf("report = %+v", rep)
	}
	// What was published was still drained and checked.
	if rep.Lost != 0 || rep.Delivered != 10*rep.Published || rep.Subscribers.ClosedClean != 10 {
		t.Errorf("lost %d delivered %d (published %d) closed clean %d",
			rep.Lost, rep.Delivered, rep.Published, rep.Subscribers.ClosedClean)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancelled run took %v", d)
	}
}

func TestFanoutRefusesRemoteTarget(t *testing.T) {
	t.Parallel()
	s := newPubsubServer(t, nil)
	tests := []FanoutConfig{
		{URL: "ws://192.0.2.1:8080/ws"},
		{URL: s.wsURL(), StatsURL: "http://192.0.2.1:8080/v1/stats"},
		{URL: s.wsURL(), MetricsURL: "http://10.0.0.1:8080/metrics"},
	}
	for _, cfg := range tests {
		rep, err := Fanout(t.Context(), cfg, nil)
		if !errors.Is(err, ErrNotLoopback) || rep != nil {
			t.Errorf("Fanout(%+v) = %v, %v; want nil, ErrNotLoopback", cfg, rep, err)
		}
	}
	if n := s.published.Load(); n != 0 || s.open.Load() != 0 {
		t.Errorf("server saw %d publishes, %d connections", n, s.open.Load())
	}
}

func TestFanoutConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  FanoutConfig
		want string
	}{
		{"no url", FanoutConfig{}, "URL is required"},
		{"bad publish", FanoutConfig{URL: "ws://127.0.0.1:1/ws", Publish: "smtp"}, "Publish"},
		{"bad prefix", FanoutConfig{URL: "ws://127.0.0.1:1/ws", TopicPrefix: `a"b`}, "TopicPrefix"},
		{"more topics than subs", FanoutConfig{URL: "ws://127.0.0.1:1/ws", Subs: 2, Topics: 3}, "no subscriber"},
		{"nothing to publish", FanoutConfig{URL: "ws://127.0.0.1:1/ws", Rate: 0.1, Duration: time.Second}, "no message"},
		{"too much to track", FanoutConfig{URL: "ws://127.0.0.1:1/ws", Subs: 19000, Rate: 1e6, Duration: time.Hour}, "too much to track"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Fanout(t.Context(), tc.cfg, nil)
			if err == nil || rep != nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Fanout = %v, %v; want an error about %q", rep, err, tc.want)
			}
		})
	}
}

func TestMainFanoutUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"fanout"}, "--url is required"},
		{[]string{"fanout", "--url", "ws://127.0.0.1:1/ws", "--publish", "smtp"}, "Publish"},
		{[]string{"fanout", "--url", "ws://127.0.0.1:1/ws", "--subs", "0"}, "must be positive"},
		{[]string{"fanout", "--url", "ws://192.0.2.1:8080/ws"}, "not a loopback address"},
		{[]string{"fanout", "--url", "ws://127.0.0.1:1/ws", "--source-ips", "nope"}, "--source-ips"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		if code := Main(tc.args, &stdout, &stderr); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", tc.args, code, exitUsage)
		}
		if !strings.Contains(stderr.String(), tc.wantErr) {
			t.Errorf("%q: stderr lacks %q:\n%s", tc.args, tc.wantErr, stderr.String())
		}
	}
}
