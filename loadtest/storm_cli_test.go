package loadtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMainStormUsageErrors(t *testing.T) {
	url := fmt.Sprintf("ws://127.0.0.1:%d/ws", closedPort(t))
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no url", []string{"storm"}, "--url is required"},
		{"bad drop", []string{"storm", "--url", url, "--drop", "rst"}, `--drop "rst"`},
		{"bad reconnect", []string{"storm", "--url", url, "--reconnect", "later"}, `--reconnect "later"`},
		{"zero conns", []string{"storm", "--url", url, "--conns", "0"}, "must be positive"},
		{"negative hold", []string{"storm", "--url", url, "--hold", "-1s"}, "must not be negative"},
		{"zero timeout", []string{"storm", "--url", url, "--storm-timeout", "0"}, "must be positive"},
		{"unknown flag", []string{"storm", "--url", url, "--bogus"}, "flag provided but not defined"},
		{"extra args", []string{"storm", "--url", url, "extra"}, "unexpected arguments"},
		{"more topics than clients", []string{"storm", "--url", url, "--conns", "2", "--topics", "3"}, "some topics would have no subscriber"},
		{"remote target", []string{"storm", "--url", "ws://192.0.2.1:9/ws"}, "not a loopback address"},
		{"wss", []string{"storm", "--url", "wss://127.0.0.1:9/ws"}, "scheme must be"},
		{"bad source", []string{"storm", "--url", url, "--source-ips", "nope"}, "--source-ips"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := Main(tc.args, &stdout, &stderr); code != exitUsage {
				t.Errorf("exit %d, want %d\nstderr:\n%s", code, exitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}

func TestMainStormHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"storm", "-h"}, &stdout, &stderr); code != exitOK {
		t.Errorf("storm -h: exit %d", code)
	}
	for _, f := range []string{"-drop", "-reconnect", "-backoff-min", "-backoff-max", "-jitter-window", "-since", "-storm-timeout", "-hold", "-rate-connect", "-max-fail-ratio"} {
		if !strings.Contains(stderr.String(), f) {
			t.Errorf("storm -h does not list %s", f)
		}
	}
	stdout.Reset()
	if code := Main([]string{"help"}, &stdout, &stderr); code != exitOK || !strings.Contains(stdout.String(), "storm") {
		t.Errorf("help: exit %d, usage lacks storm:\n%s", code, stdout.String())
	}
}

// stormReportKeys are the JSON members every storm report carries.
var stormReportKeys = []string{
	"scenario", "config", "started_at", "duration_s", "interrupted", "run_id", "clients",
	"drop_s", "back", "not_back", "not_back_by_cause", "time_to_all_back_ms", "reconnect_ms",
	"p50", "p90", "p99", "p999", "max", "attempts", "attempts_max", "refused", "refused_by_cause",
	"recovery_incomplete", "published", "published_per_topic", "publish_errors", "publish_errors_by_cause",
	"publish_s", "expected", "delivered", "lost", "missed", "lost_outside_gap", "lost_not_back",
	"clients_with_missed", "duplicates", "reordered", "foreign", "malformed", "other_frames",
	"drained", "drain_s", "fail_ratio", "server", "generator", "warnings",
}

var stormConfigKeys = []string{
	"url", "stats_url", "conns", "topics", "topic_prefix", "rate", "size", "connect_rate", "before_drop_s",
	"drop", "reconnect", "backoff_min_s", "backoff_max_s", "jitter_window_s", "max_attempts", "since",
	"storm_timeout_s", "hold_s", "drain_s", "publish_conns", "publish_window", "publish_timeout_s",
	"source_ips", "connect_timeout_s", "connect_phase_max_s", "close_wait_s", "allow_remote",
}

func checkStormReportJSON(t *testing.T, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, b)
	}
	for _, k := range stormReportKeys {
		if _, ok := m[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(m["config"], &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	for _, k := range stormConfigKeys {
		if _, ok := cfg[k]; !ok {
			t.Errorf("config lacks %q", k)
		}
	}
	var rc LatencySummary
	if err := json.Unmarshal(m["reconnect_ms"], &rc); err != nil {
		t.Errorf("reconnect_ms: %v", err)
	}
	return m
}

func TestMainStormWritesReport(t *testing.T) {
	s := newPubsubServer(t, func(s *pubsubServer) { s.history = true })
	out := filepath.Join(t.TempDir(), "storm.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"storm", "--url", s.wsURL(), "--conns", "50", "--topics", "5", "--rate", "100",
		"--before-drop", "300ms", "--reconnect", "jitter", "--jitter-window", "200ms",
		"--hold", "200ms", "--storm-timeout", "10s", "--out", out,
	}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "back 50/50 (all back in") || !strings.Contains(stdout.String(), "reconnect ms: p50") {
		t.Errorf("summary:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "back=50") {
		t.Errorf("no live progress with back=50 on stderr:\n%s", stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	m := checkStormReportJSON(t, b)
	var rep StormReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "storm" || rep.Back != 50 || rep.Lost != 0 || !rep.Config.Since || rep.Config.Conns != 50 || rep.Config.JitterWindowS != 0.2 {
		t.Errorf("report: scenario %q back %d lost %d config %+v", rep.Scenario, rep.Back, rep.Lost, rep.Config)
	}
	if _, ok := m["per_client"]; ok {
		t.Errorf("per_client present without --per-client")
	}
}

func TestMainStormExitsOneOnLossWithSince(t *testing.T) {
	s := newPubsubServer(t, nil) // answers subscribe but ignores since
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"storm", "--url", s.wsURL(), "--conns", "30", "--topics", "3", "--rate", "150",
		"--before-drop", "300ms", "--jitter-window", "300ms", "--hold", "200ms", "--quiet", "--out", "-",
	}, &stdout, &stderr)
	if code != exitFail || !strings.Contains(stderr.String(), "FAIL: with since") {
		t.Fatalf("exit %d, want 1 naming the loss\nstderr:\n%s", code, stderr.String())
	}
	checkStormReportJSON(t, stdout.Bytes())
	// Without since the same loss is the measurement, not a failure.
	stdout.Reset()
	stderr.Reset()
	code = Main([]string{
		"storm", "--url", s.wsURL(), "--conns", "30", "--topics", "3", "--rate", "150", "--since=false",
		"--topic-prefix", "plain.", "--before-drop", "300ms", "--jitter-window", "300ms", "--hold", "200ms", "--quiet",
	}, &stdout, &stderr)
	if code != exitOK || !strings.Contains(stdout.String(), "without since") {
		t.Errorf("--since=false: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
}
