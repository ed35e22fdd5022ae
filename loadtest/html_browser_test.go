package loadtest

// The HTML reports in a real browser: headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core through
// test/clients/html_report.mjs) opens a fanout, an idle and an empty report
// served from 127.0.0.1, checks that every plot renders at a non-zero size
// with an accessible title and that the page loads nothing else, and saves
// screenshots (under $SURGE_ARTEFACTS when set, else the test's temp dir).
//
// Prerequisites (installed by .ci/run): apt-get install chromium; Node 20;
// `npm ci --no-audit --no-fund` in test/clients. Without them the test
// skips, except under CI (env CI non-empty), where it fails.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	clientsDir     = "../test/clients"
	systemChromium = "/usr/bin/chromium"
	// browserTimeout bounds the script: browser start-up plus its own 45 s
	// watchdog and 10 s cleanup budget.
	browserTimeout = 75 * time.Second
)

// htmlReportResult is the JSON line html_report.mjs prints on success.
type htmlReportResult struct {
	OK      bool   `json:"ok"`
	Version string `json:"version"`
	Pages   []struct {
		URL   string `json:"url"`
		Title string `json:"title"`
		Plots []struct {
			ID     string  `json:"id"`
			Width  float64 `json:"width"`
			Height float64 `json:"height"`
			Title  string  `json:"title"`
			NoData *string `json:"nodata"`
			Marks  int     `json:"marks"`
		} `json:"plots"`
		Screenshot      string `json:"screenshot"`
		ScreenshotBytes int64  `json:"screenshot_bytes"`
	} `json:"pages"`
}

// browserPrereqs returns why the browser test cannot run here, or "".
func browserPrereqs(dir string) string {
	if _, err := exec.LookPath("node"); err != nil {
		return "node not found: " + err.Error()
	}
	if _, err := os.Stat(systemChromium); err != nil {
		return "chromium not found: " + err.Error()
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err != nil {
		return "playwright-core not installed: " + err.Error()
	}
	return ""
}

func TestHTMLReportInBrowser(t *testing.T) {
	dir, err := filepath.Abs(clientsDir)
	if err != nil {
		t.Fatal(err)
	}
	if why := browserPrereqs(dir); why != "" {
		msg := why + "; to run it: apt-get install -y --no-install-recommends chromium, Node 20, `npm ci --no-audit --no-fund` in test/clients"
		if os.Getenv("CI") != "" {
			t.Fatal("CI must have the browser: " + msg)
		}
		t.Skip(msg)
	}
	if testing.Short() {
		t.Skip("starts a browser")
	}

	// Three pages: a real fanout run, a real idle run, and a run that
	// connected nothing (every plot says "no data").
	pages := t.TempDir()
	pub := newPubsubServer(t, nil)
	var stdout, stderr bytes.Buffer
	if code := Main([]string{
		"fanout", "--url", pub.wsURL(), "--subs", "20", "--topics", "2", "--rate", "50",
		"--duration", "2s", "--quiet", "--html", filepath.Join(pages, "fanout.html"),
	}, &stdout, &stderr); code != exitOK {
		t.Fatalf("fanout: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	cs := newContractServer(t, "", false)
	if code := Main([]string{
		"idle", "--url", cs.wsURL(), "--conns", "40", "--rate", "30", "--hold", "1s", "--quiet",
		"--html", filepath.Join(pages, "idle.html"),
	}, &stdout, &stderr); code != exitOK {
		t.Fatalf("idle: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	empty := idleHTML(&IdleReport{
		Config: IdleReportConfig{URL: "ws://127.0.0.1:1/ws", Conns: 3},
		Failed: 3, FailedByCause: map[string]int64{"refused": 3},
	})
	if err := writeHTMLFile(filepath.Join(pages, "empty.html"), empty); err != nil {
		t.Fatal(err)
	}

	// Chromium here does not open file:// reliably: serve the pages (from
	// 127.0.0.1).
	srv := httptest.NewServer(http.FileServer(http.Dir(pages)))
	defer srv.Close()

	shots := os.Getenv("SURGE_ARTEFACTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	names := []string{"fanout", "idle", "empty"}
	args := []string{"html_report.mjs", "--require", "latency-histogram,latency-plot,throughput-plot"}
	for _, n := range names {
		args = append(args, srv.URL+"/"+n+".html", filepath.Join(shots, "report-"+n+".png"))
	}

	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = dir
	// On timeout ask the script to stop (it closes Chromium and removes its
	// profile); kill it if it has not exited 5 s later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	runErr := cmd.Run()
	report := "\ncommand: node " + strings.Join(args, " ") + "\nstdout:\n" + out.String() + "\nstderr:\n" + errOut.String()
	if ctx.Err() != nil {
		t.Fatalf("html_report.mjs timed out after %v%s", time.Since(start).Round(time.Millisecond), report)
	}
	if runErr != nil {
		t.Fatalf("html_report.mjs failed: %v%s", runErr, report)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var res htmlReportResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || !res.OK {
		t.Fatalf("result line: %v%s", err, report)
	}
	if len(res.Pages) != len(names) {
		t.Fatalf("%d pages checked, want %d%s", len(res.Pages), len(names), report)
	}
	for i, p := range res.Pages {
		name := names[i]
		plots := map[string]bool{}
		for _, pl := range p.Plots {
			plots[pl.ID] = true
			if pl.Width <= 0 || pl.Height <= 0 || pl.Title == "" {
				t.Errorf("%s: svg#%s renders %v×%v with title %q", name, pl.ID, pl.Width, pl.Height, pl.Title)
			}
			switch {
			case name == "empty" && (pl.NoData == nil || pl.Marks != 0):
				t.Errorf("%s: svg#%s shows %d marks, no-data note %v", name, pl.ID, pl.Marks, pl.NoData)
			case name != "empty" && (pl.NoData != nil || pl.Marks == 0):
				t.Errorf("%s: svg#%s shows %d marks, no-data note %v", name, pl.ID, pl.Marks, pl.NoData)
			}
		}
		if name == "fanout" && !plots["p99-plot"] {
			t.Errorf("fanout page lacks svg#p99-plot")
		}
		if p.ScreenshotBytes <= 0 {
			t.Errorf("%s: empty screenshot", name)
		}
		t.Logf("%s report: %d plots; screenshot %s", name, len(p.Plots), p.Screenshot)
	}
	t.Logf("%s checked %d pages in %v", res.Version, len(res.Pages), time.Since(start).Round(time.Millisecond))
}
