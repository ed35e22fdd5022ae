package loadtest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMainIdleWritesReport(t *testing.T) {
	s := newContractServer(t, "", false)
	out := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{
		"idle", "--url", s.wsURL(), "--conns", "30", "--rate", "1000",
		"--topics", "3", "--hold", "1500ms", "--out", out,
	}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "30/30 connected") {
		t.Errorf("summary lacks the connected count:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "connected=30") {
		t.Errorf("no live progress line on stderr:\n%s", stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	checkIdleReportJSON(t, b)
}

func TestMainIdleReportToStdout(t *testing.T) {
	s := newContractServer(t, "", false)
	var stdout, stderr bytes.Buffer
	code := Main([]string{"idle", "--url", s.wsURL(), "--conns", "5", "--hold", "0", "--quiet", "--out", "-"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, stderr.String())
	}
	checkIdleReportJSON(t, stdout.Bytes())
	if !strings.Contains(stderr.String(), "5/5 connected") {
		t.Errorf("summary not on stderr when the report goes to stdout:\n%s", stderr.String())
	}
}

func TestMainIdleFailRatio(t *testing.T) {
	url := fmt.Sprintf("ws://127.0.0.1:%d/ws", closedPort(t))
	tests := []struct {
		name string
		args []string
		want int
	}{
		{
			name: "over the default 1%",
			args: []string{"idle", "--url", url, "--conns", "3", "--hold", "0", "--quiet"},
			want: 1,
		},
		{
			name: "allowed",
			args: []string{"idle", "--url", url, "--conns", "3", "--hold", "0", "--quiet", "--max-fail-ratio", "1"},
			want: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := Main(tc.args, &stdout, &stderr); code != tc.want {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.want, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), "refused 3") {
				t.Errorf("summary lacks the failure cause:\n%s", stdout.String())
			}
		})
	}
}

func TestMainUsageErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{
			name:    "no scenario",
			args:    nil,
			wantErr: "usage",
		},
		{
			name:    "unknown scenario",
			args:    []string{"burst"},
			wantErr: "unknown scenario",
		},
		{
			name:    "no url",
			args:    []string{"idle"},
			wantErr: "--url is required",
		},
		{
			name:    "bad source range",
			args:    []string{"idle", "--url", "ws://127.0.0.1:1/ws", "--source-ips", "127.0.0.9-127.0.0.2"},
			wantErr: "--source-ips",
		},
		{
			name:    "remote target refused",
			args:    []string{"idle", "--url", "ws://192.0.2.1:8080/ws"},
			wantErr: "not a loopback address",
		},
		{
			name:    "bad flag",
			args:    []string{"idle", "--nope"},
			wantErr: "flag provided but not defined",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := Main(tc.args, &stdout, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantErr, stderr.String())
			}
		})
	}
}
