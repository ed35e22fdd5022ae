package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestIdleAgainstContractServer(t *testing.T) {
	for _, loop := range clientLoopModes() {
		t.Run(loop, func(t *testing.T) { testIdleAgainstContractServer(t, loop) })
	}
}

func testIdleAgainstContractServer(t *testing.T, loop string) {
	const (
		conns  = 200
		topics = 10
	)
	s := newContractServer(t, "idle.3", false)
	base := runtime.NumGoroutine()

	var (
		pmu    sync.Mutex
		phases = map[string]int{}
	)
	cfg := IdleConfig{
		URL:        s.wsURL(),
		Conns:      conns,
		Rate:       2000,
		Topics:     topics,
		Hold:       3 * time.Second,
		ClientLoop: loop,
		Progress: func(p IdleProgress) {
			pmu.Lock()
			phases[p.Phase]++
			pmu.Unlock()
			if p.Phase == "hold" {
				// Every connection is up and counted: now the server closes
				// the ones on idle.3, so those closes land in the hold.
				s.triggerClose()
			}
		},
	}
	rep, err := Idle(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Idle: %v", err)
	}

	const closed = conns / topics // subscribers of idle.3
	if rep.Attempted != conns || rep.Connected != conns || rep.Failed != 0 || rep.NotAttempted != 0 {
		t.Errorf("attempted %d connected %d failed %d (%v) not attempted %d; want %d/%d/0/0",
			rep.Attempted, rep.Connected, rep.Failed, rep.FailedByCause, rep.NotAttempted, conns, conns)
	}
	if rep.OpenAfterConnect != conns || rep.OpenAfterHold != conns-closed {
		t.Errorf("open after connect %d, after hold %d; want %d, %d",
			rep.OpenAfterConnect, rep.OpenAfterHold, conns, conns-closed)
	}
	if got := rep.ClosesDuringHold["1001"]; got != closed || len(rep.ClosesDuringHold) != 1 {
		t.Errorf("closes during hold = %v, want {1001: %d}", rep.ClosesDuringHold, closed)
	}
	if len(rep.ClosesDuringConnect) != 0 {
		t.Errorf("closes during connect = %v, want none", rep.ClosesDuringConnect)
	}
	if rep.Lost != closed || rep.FailRatio != float64(closed)/conns {
		t.Errorf("lost %d, fail ratio %v; want %d, %v", rep.Lost, rep.FailRatio, closed, float64(closed)/conns)
	}
	if rep.PingsAnswered != conns {
		t.Errorf("pings answered (client side) = %d, want %d", rep.PingsAnswered, conns)
	}
	if rep.ClosedClean != conns-closed || rep.ClosedUnclean != 0 {
		t.Errorf("closed clean %d unclean %d, want %d, 0", rep.ClosedClean, rep.ClosedUnclean, conns-closed)
	}
	if l := rep.ConnectLatencyMs; l.Count != conns || l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max {
		t.Errorf("connect latency = %+v", l)
	}
	if rep.ConnectRate <= 0 || rep.RampS <= 0 {
		t.Errorf("connect rate %v over %vs", rep.ConnectRate, rep.RampS)
	}

	// Server memory per connection comes from the fake stats exactly.
	b := rep.ServerBytesPerConn
	if b == nil || b.RSS == nil || b.HeapInuse == nil {
		t.Fatalf("server bytes per conn = %+v", b)
	}
	if *b.RSS != fakeRSSPerConn || *b.HeapInuse != fakeHeapPerConn {
		t.Errorf("server bytes per conn rss %v heap %v, want %d %d", *b.RSS, *b.HeapInuse, fakeRSSPerConn, fakeHeapPerConn)
	}
	for name, st := range map[string]*ServerStats{
		"before": rep.Server.Before, "after_connect": rep.Server.AfterConnect, "after_hold": rep.Server.AfterHold,
	} {
		if st == nil || st.Error != "" || st.Connections == nil || st.Goroutines == nil {
			t.Errorf("server stats %s = %+v", name, st)
		}
	}
	if c := rep.Server.AfterHold.Connections; c == nil || *c != conns-closed {
		t.Errorf("server connections after hold = %v, want %d", c, conns-closed)
	}
	if g := rep.GeneratorBytesPerConn; g == nil || g.HeapInuse == nil {
		t.Errorf("generator bytes per conn = %+v", g)
	}

	// What the server saw: one topic per connection, evenly spread, every
	// ping answered with a (masked) pong, every remaining connection closed
	// by the client with 1000.
	waitFor(t, 5*time.Second, "server handlers to finish", func() bool { return s.open.Load() == 0 })
	s.mu.Lock()
	for i := range topics {
		if got := s.topics[fmt.Sprintf("idle.%d", i)]; got != conns/topics {
			t.Errorf("topic idle.%d has %d subscribers, want %d", i, got, conns/topics)
		}
	}
	if s.noTopic != 0 {
		t.Errorf("%d connections named no topic", s.noTopic)
	}
	s.mu.Unlock()
	if got := s.pongs.Load(); got != conns {
		t.Errorf("server got %d pongs, want %d", got, conns)
	}
	if got := s.client1k.Load(); got != conns-closed {
		t.Errorf("client closed %d connections with 1000, want %d", got, conns-closed)
	}
	if got := s.closed1k1.Load(); got != closed {
		t.Errorf("server closed %d with 1001, want %d", got, closed)
	}
	pmu.Lock()
	if phases["hold"] == 0 || phases["done"] != 1 {
		t.Errorf("progress calls by phase = %v", phases)
	}
	pmu.Unlock()
	checkNoLeak(t, base)
}

func TestIdleNoTopicsNoStats(t *testing.T) {
	s := newContractServer(t, "", true)
	rep, err := Idle(t.Context(), IdleConfig{
		URL:    s.wsURL(),
		Conns:  20,
		Topics: -1,
		Hold:   -1,
	}, nil)
	if err != nil {
		t.Fatalf("Idle: %v", err)
	}
	if rep.Connected != 20 || rep.Config.Topics != 0 {
		t.Errorf("connected %d, config topics %d", rep.Connected, rep.Config.Topics)
	}
	if rep.ServerBytesPerConn != nil {
		t.Errorf("server bytes per conn = %+v, want omitted", rep.ServerBytesPerConn)
	}
	if rep.Server.Before == nil || rep.Server.Before.Error == "" {
		t.Errorf("stats before = %+v, want an error", rep.Server.Before)
	}
	waitFor(t, 5*time.Second, "server handlers to finish", func() bool { return s.open.Load() == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.noTopic != 20 || len(s.topics) != 0 {
		t.Errorf("no-topic connections %d, topics %v", s.noTopic, s.topics)
	}
}

func TestIdleSourceIPs(t *testing.T) {
	s := newContractServer(t, "", false)
	src, err := ParseSourceIPs("127.0.0.2-127.0.0.3")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Idle(t.Context(), IdleConfig{URL: s.wsURL(), Conns: 20, Hold: -1, SourceIPs: src}, nil)
	if err != nil {
		t.Fatalf("Idle: %v", err)
	}
	if rep.Connected != 20 {
		t.Fatalf("connected %d, failures %v", rep.Connected, rep.FailedByCause)
	}
	waitFor(t, 5*time.Second, "server handlers to finish", func() bool { return s.open.Load() == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.remotes["127.0.0.2"] != 10 || s.remotes["127.0.0.3"] != 10 || len(s.remotes) != 2 {
		t.Errorf("connections by client address = %v, want 10 each from 127.0.0.2 and 127.0.0.3", s.remotes)
	}
}

func TestIdleSourceFamilyMismatch(t *testing.T) {
	_, err := Idle(t.Context(), IdleConfig{
		URL:       "ws://127.0.0.1:1/ws",
		SourceIPs: []netip.Addr{netip.MustParseAddr("::1")},
	}, nil)
	if err == nil {
		t.Fatal("IPv6 source for an IPv4 target was accepted")
	}
}

// closedPort returns a loopback port with nothing listening on it.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestIdleFailureCauses(t *testing.T) {
	notWS := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notWS.Close)
	tests := []struct {
		name  string
		url   string
		cause string
	}{
		{
			name:  "refused",
			url:   fmt.Sprintf("ws://127.0.0.1:%d/ws", closedPort(t)),
			cause: "refused",
		},
		{
			name:  "handshake",
			url:   "ws" + notWS.URL[len("http"):] + "/ws",
			cause: "handshake",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Idle(t.Context(), IdleConfig{URL: tc.url, Conns: 5, Hold: -1, StatsURL: "-"}, nil)
			if err != nil {
				t.Fatalf("Idle: %v", err)
			}
			if rep.Connected != 0 || rep.Failed != 5 || rep.FailedByCause[tc.cause] != 5 {
				t.Errorf("connected %d failed %d by cause %v; want 0, 5 %s", rep.Connected, rep.Failed, rep.FailedByCause, tc.cause)
			}
			if rep.FailRatio != 1 {
				t.Errorf("fail ratio %v, want 1", rep.FailRatio)
			}
		})
	}
}

func TestIdleCancelled(t *testing.T) {
	s := newContractServer(t, "", false)
	ctx, cancel := context.WithCancel(t.Context())
	var once sync.Once
	rep, err := Idle(ctx, IdleConfig{
		URL:   s.wsURL(),
		Conns: 20,
		Hold:  time.Minute,
		Progress: func(p IdleProgress) {
			if p.Phase == "hold" {
				once.Do(cancel)
			}
		},
	}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if rep == nil || !rep.Interrupted || rep.Connected != 20 || rep.ClosedClean != 20 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestIdleRefusesRemoteTarget(t *testing.T) {
	// A loopback server that must see no traffic at all.
	s := newContractServer(t, "", false)
	tests := []struct {
		name string
		cfg  IdleConfig
	}{
		{
			name: "remote ws URL",
			cfg:  IdleConfig{URL: "ws://192.0.2.1:8080/ws"},
		},
		{
			name: "private ws URL",
			cfg:  IdleConfig{URL: "ws://10.1.2.3:8080/ws"},
		},
		{
			name: "remote stats URL",
			cfg:  IdleConfig{URL: s.wsURL(), StatsURL: "http://192.0.2.1:8080/v1/stats"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Idle(t.Context(), tc.cfg, nil)
			if !errors.Is(err, ErrNotLoopback) || rep != nil {
				t.Fatalf("Idle = %v, %v; want nil, ErrNotLoopback", rep, err)
			}
		})
	}
	if n, hits := s.accepted.Load(), s.statsHits.Load(); n != 0 || hits != 0 {
		t.Errorf("server saw %d connections and %d stats requests, want none", n, hits)
	}
}

func TestResolveTargetLoopbackOnly(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{url: "ws://127.0.0.1:8080/ws", ok: true},
		{url: "ws://127.1.2.3/ws", ok: true},
		{url: "ws://[::1]:8080/ws", ok: true},
		{url: "ws://[::ffff:127.0.0.1]:8080/ws", ok: true},
		{url: "ws://localhost:8080/ws", ok: true},
		{url: "ws://192.0.2.1:8080/ws", ok: false},
		{url: "ws://10.0.0.1/ws", ok: false},
		{url: "ws://192.168.1.1/ws", ok: false},
		{url: "ws://0.0.0.0:8080/ws", ok: false},
		{url: "ws://[::ffff:10.0.0.1]:8080/ws", ok: false},
		{url: "ws://[2001:db8::1]:8080/ws", ok: false},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			tg, err := resolveTarget(t.Context(), tc.url, []string{"ws"}, false, netip.Addr{})
			if tc.ok {
				if err != nil || !isLoopback(tg.addr.Addr()) {
					t.Fatalf("resolveTarget = %v, %v; want a loopback address", tg.addr, err)
				}
				return
			}
			if !errors.Is(err, ErrNotLoopback) {
				t.Fatalf("err = %v, want ErrNotLoopback", err)
			}
		})
	}
}

func TestResolveTargetBadURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1/ws", "ws:///ws", "ws://127.0.0.1:99999/ws", "::"} {
		if _, err := resolveTarget(t.Context(), u, []string{"ws"}, false, netip.Addr{}); err == nil {
			t.Errorf("resolveTarget(%q) accepted", u)
		}
	}
}

// documentedIdleFields are the JSON keys IdleReport promises (see its doc).
var documentedIdleFields = []string{
	"scenario", "config", "started_at", "duration_s", "interrupted",
	"attempted", "connected", "failed", "failed_by_cause", "not_attempted", "fail_ratio",
	"connect_latency_ms", "ramp_s", "connect_rate",
	"open_after_connect", "open_after_hold", "closes_during_connect", "closes_during_hold", "lost",
	"pings_answered", "messages_received", "bytes_received", "closed_clean", "closed_unclean",
	"server", "server_bytes_per_conn", "generator", "generator_bytes_per_conn",
}

// checkIdleReportJSON checks that a report's JSON has the documented fields.
func checkIdleReportJSON(t *testing.T, b []byte) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	for _, k := range documentedIdleFields {
		if _, ok := m[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	lat, _ := m["connect_latency_ms"].(map[string]any)
	for _, k := range []string{"count", "p50", "p90", "p99", "p999", "max"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("connect_latency_ms lacks %q", k)
		}
		if k == "count" {
			continue
		}
		// The top level repeats the percentiles, as every scenario's does.
		if top, ok := m[k]; !ok || top != lat[k] {
			t.Errorf("top-level %q = %v, want connect_latency_ms.%s = %v", k, top, k, lat[k])
		}
	}
	if d, ok := m["delivered"]; !ok || d != m["messages_received"] {
		t.Errorf("top-level delivered = %v, want messages_received = %v", d, m["messages_received"])
	}
	srv, _ := m["server"].(map[string]any)
	for _, k := range []string{"before", "after_connect", "after_hold"} {
		if _, ok := srv[k].(map[string]any); !ok {
			t.Errorf("server lacks %q", k)
		}
	}
	before, _ := srv["before"].(map[string]any)
	for _, k := range []string{"connections", "rss_bytes", "heap_inuse_bytes", "goroutines"} {
		if _, ok := before[k]; !ok {
			t.Errorf("server.before lacks %q", k)
		}
	}
	per, _ := m["server_bytes_per_conn"].(map[string]any)
	for _, k := range []string{"rss", "heap_inuse"} {
		if _, ok := per[k]; !ok {
			t.Errorf("server_bytes_per_conn lacks %q", k)
		}
	}
	cfg, _ := m["config"].(map[string]any)
	for _, k := range []string{"url", "stats_url", "conns", "rate", "topics", "hold_s", "source_ips", "allow_remote"} {
		if _, ok := cfg[k]; !ok {
			t.Errorf("config lacks %q", k)
		}
	}
}
