package engine_test

// Outside-client tests: independent WebSocket client libraries (Node `ws`,
// Python `websockets`, Python `websocket-client`, and headless Chromium driven
// by playwright-core) run the scenario scripts in test/clients against a real
// engine. The scripts print one JSON line and exit non-zero with a message on
// stderr on failure.
//
// Prerequisites (installed by .ci/run):
//
//	apt-get install -y --no-install-recommends python3-websockets python3-websocket chromium
//	(cd test/clients && npm ci --no-audit --no-fund)
//
// playwright-core never downloads a browser here: browser_deflate.mjs runs
// Debian's /usr/bin/chromium.
//
// Without them the tests skip, except under CI (env CI non-empty), where they fail.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

// outsideClientsDir is where the scenario scripts live, relative to engine/.
const outsideClientsDir = "../test/clients"

// debianPython is the interpreter that sees Debian's python3-* packages (the
// python3 first on PATH may be another one that cannot).
const debianPython = "/usr/bin/python3"

type outsideClient struct {
	name    string
	script  string
	install string                                  // how to get the prerequisites
	check   func(dir string) error                  // prerequisites present?
	command func(dir, script, base string) []string // argv
	timeout time.Duration                           // whole script; 0 means defaultOutsideTimeout
}

// defaultOutsideTimeout bounds one scenario script (they bound themselves lower).
const defaultOutsideTimeout = 30 * time.Second

// systemChromium is the browser browser_deflate.mjs drives (Debian's package).
const systemChromium = "/usr/bin/chromium"

var outsideClients = []outsideClient{
	{
		name:    "node_ws",
		script:  "node_ws.mjs",
		install: "install Node 20 and run `npm ci --no-audit --no-fund` in test/clients",
		check: func(dir string) error {
			if _, err := exec.LookPath("node"); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws", "package.json")); err != nil {
				return err
			}
			return nil
		},
		command: func(dir, script, base string) []string { return []string{"node", script, base} },
	},
	{
		// A real browser: negotiates permessage-deflate and receives a compressed
		// (~4 KiB) and a plain push; checks /v1/stats deflated_sent.
		name:    "browser_deflate",
		script:  "browser_deflate.mjs",
		install: "apt-get install -y --no-install-recommends chromium, install Node 20 and run `npm ci --no-audit --no-fund` in test/clients",
		check: func(dir string) error {
			if _, err := exec.LookPath("node"); err != nil {
				return err
			}
			if _, err := os.Stat(systemChromium); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err != nil {
				return err
			}
			return nil
		},
		command: func(dir, script, base string) []string { return []string{"node", script, base} },
		// Browser start-up plus the script's own 25 s watchdog and 10 s cleanup budget.
		timeout: 60 * time.Second,
	},
	{
		name:    "py_websockets",
		script:  "py_websockets.py",
		install: "apt-get install -y --no-install-recommends python3-websockets",
		check:   func(string) error { return pythonImports("websockets") },
		command: func(dir, script, base string) []string { return []string{debianPython, script, base} },
	},
	{
		name:    "py_websocket_client",
		script:  "py_websocket_client.py",
		install: "apt-get install -y --no-install-recommends python3-websocket",
		check:   func(string) error { return pythonImports("websocket") },
		command: func(dir, script, base string) []string { return []string{debianPython, script, base} },
	},
}

func pythonImports(module string) error {
	if _, err := os.Stat(debianPython); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, debianPython, "-c", "import "+module).CombinedOutput()
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)) + ": " + err.Error())
	}
	return nil
}

// outsideResult is the JSON line every scenario script prints on success.
type outsideResult struct {
	Client  string `json:"client"`
	Version string `json:"version"`
	OK      bool   `json:"ok"`
	Seq     int64  `json:"seq"`
	Runs    []struct {
		Mode              string `json:"mode"`
		OfferedDeflate    bool   `json:"offered_deflate"`
		ExtensionsOffered string `json:"extensions_offered"` // what the client sent, when it reports it
		ExtensionsHeader  string `json:"extensions_header"`
		Seq               int64  `json:"seq"`
		CloseCode         int    `json:"close_code"`
	} `json:"runs"`
}

func TestOutsideClients(t *testing.T) {
	dir, err := filepath.Abs(outsideClientsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, oc := range outsideClients {
		t.Run(oc.name, func(t *testing.T) {
			script := filepath.Join(dir, oc.script)
			if _, err := os.Stat(script); err != nil {
				t.Fatalf("scenario script missing: %v", err)
			}
			if err := oc.check(dir); err != nil {
				msg := oc.name + " client not available (" + err.Error() + "); to run it: " + oc.install
				if os.Getenv("CI") != "" {
					t.Fatal("CI must have the outside clients: " + msg)
				}
				t.Skip(msg)
			}
			runOutsideClient(t, oc, dir, script)
		})
	}
}

func runOutsideClient(t *testing.T, oc outsideClient, dir, script string) {
	e, err := engine.New(engine.Config{Listen: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()
	base := "ws://" + e.Addr()

	timeout := oc.timeout
	if timeout == 0 {
		timeout = defaultOutsideTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := oc.command(dir, script, base)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	// On timeout ask the script to stop (so browser_deflate.mjs closes Chromium
	// and removes its profile); kill it if it has not exited 5 s later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	report := func() string {
		return "\ncommand: " + strings.Join(argv, " ") + "\nstdout:\n" + stdout.String() + "\nstderr:\n" + stderr.String()
	}
	if ctx.Err() != nil {
		t.Fatalf("%s timed out after %v%s", oc.name, took, report())
	}
	if runErr != nil {
		t.Fatalf("%s failed after %v: %v%s", oc.name, took, runErr, report())
	}

	line := lastLine(stdout.String())
	var res outsideResult
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("%s: result line is not JSON: %v%s", oc.name, err, report())
	}
	if !res.OK {
		t.Errorf("%s: result not ok%s", oc.name, report())
	}
	if res.Seq < 1 {
		t.Errorf("%s: reported seq %d, want >= 1%s", oc.name, res.Seq, report())
	}
	if len(res.Runs) == 0 {
		t.Errorf("%s: no runs reported%s", oc.name, report())
	}
	for _, r := range res.Runs {
		if r.Seq < 1 {
			t.Errorf("%s [%s]: seq %d, want >= 1", oc.name, r.Mode, r.Seq)
		}
		if r.CloseCode != 1000 {
			t.Errorf("%s [%s]: close code %d, want 1000", oc.name, r.Mode, r.CloseCode)
		}
		if r.OfferedDeflate {
			if r.ExtensionsOffered != "" {
				t.Logf("%s [%s]: client offered Sec-WebSocket-Extensions: %q", oc.name, r.Mode, r.ExtensionsOffered)
			}
			t.Logf("%s [%s]: deflate offered, server answered Sec-WebSocket-Extensions: %q", oc.name, r.Mode, r.ExtensionsHeader)
		}
	}
	t.Logf("%s %s passed in %v: %s", res.Client, res.Version, took, line)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
