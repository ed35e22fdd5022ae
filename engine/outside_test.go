package engine_test

// Outside-client tests: independent WebSocket client libraries (Node `ws`,
// Python `websockets`, Python `websocket-client`, and headless Chromium driven
// by playwright-core) run the scenario scripts in test/clients against a real
// engine. The scripts print one JSON line and exit non-zero with a message on
// stderr on failure. A script with a driver (status_page.mjs) may also ask the
// test for server-side steps: it prints {"want":…} lines and reads one JSON
// reply line each on stdin.
//
// Screenshots and other artefacts go to $SURGE_ARTEFACTS/<test name>/ when that
// is set, under go test's -artifacts output directory with -artifacts, and
// otherwise to a kept temporary directory; the test logs their paths.
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
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	// env, when set, adds environment variables for the script.
	env func(t *testing.T) []string
	// driver, when set, is called once per run and returns the function that
	// serves the script's requests ({"want":…} lines on its stdout); its reply
	// goes to the script's stdin as one JSON line. An error fails the test.
	driver func(t *testing.T, e *engine.Engine) func(req driverRequest) (any, error)
}

// driverRequest is one {"want":…} line from a script.
type driverRequest struct {
	Want string          `json:"want"`
	Raw  json.RawMessage `json:"-"`
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
		install: browserInstall,
		check:   browserCheck,
		command: func(dir, script, base string) []string { return []string{"node", script, base} },
		// Browser start-up plus the script's own 25 s watchdog and 10 s cleanup budget.
		timeout: 60 * time.Second,
	},
	{
		// The status page at / in a real browser: figures, charts, top topics,
		// close reasons and the try-it panel follow what the test does to the
		// engine (statusPageDriver), with a screenshot idle and one under load.
		name:    "status_page",
		script:  "status_page.mjs",
		install: browserInstall,
		check:   browserCheck,
		command: func(dir, script, base string) []string { return []string{"node", script, base} },
		env: func(t *testing.T) []string {
			return []string{"SURGE_SCREENSHOT_DIR=" + artefactDir(t)}
		},
		driver: newStatusPageDriver,
		// The script's own 100 s watchdog and 10 s cleanup budget.
		timeout: 140 * time.Second,
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

const browserInstall = "apt-get install -y --no-install-recommends chromium, install Node 20 and run `npm ci --no-audit --no-fund` in test/clients"

func browserCheck(dir string) error {
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
}

// artefactDir is where a test keeps files for people to look at afterwards
// (screenshots): $SURGE_ARTEFACTS/<test name> when set; t.ArtifactDir() when
// go test runs with -artifacts; else a new temporary directory that is kept
// (t.ArtifactDir would remove it). The path is logged.
func artefactDir(t *testing.T) string {
	t.Helper()
	var dir string
	if root := os.Getenv("SURGE_ARTEFACTS"); root != "" {
		dir = filepath.Join(root, strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	} else if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		dir = t.ArtifactDir()
	} else {
		var err error
		if dir, err = os.MkdirTemp("", "surge-artefacts-"); err != nil {
			t.Fatal(err)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("artefacts: %s", abs)
	return abs
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
	// Screenshots are PNG files the script saved (status_page.mjs).
	Screenshots []string `json:"screenshots"`
	Runs        []struct {
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
	if oc.env != nil {
		cmd.Env = append(os.Environ(), oc.env(t)...)
	}
	// On timeout ask the script to stop (so the browser scripts close Chromium
	// and remove their profile); kill it if it has not exited 5 s later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	stdout := &lineBuffer{notify: make(chan struct{}, 1)}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	var serve func(driverRequest) (any, error)
	var stdin io.WriteCloser
	if oc.driver != nil {
		serve = oc.driver(t, e)
		if stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	report := func() string {
		return "\ncommand: " + strings.Join(argv, " ") + "\nstdout:\n" + stdout.String() + "\nstderr:\n" + stderr.String()
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v%s", oc.name, err, report())
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var runErr, driveErr error
wait:
	for {
		select {
		case runErr = <-done:
			break wait
		case <-stdout.notify:
		}
		for {
			line, ok := stdout.next()
			if !ok {
				break
			}
			var req driverRequest
			if serve == nil || json.Unmarshal([]byte(line), &req) != nil || req.Want == "" {
				continue
			}
			req.Raw = json.RawMessage(line)
			reply, err := serve(req)
			if err != nil {
				// Tell the script (it fails with this message), then stop it.
				b, _ := json.Marshal(map[string]string{"error": err.Error()})
				stdin.Write(append(b, '\n'))
				driveErr = fmt.Errorf("request %s: %w", line, err)
				cancel()
				runErr = <-done
				break wait
			}
			b, err := json.Marshal(reply)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := stdin.Write(append(b, '\n')); err != nil {
				t.Logf("%s: writing the reply to %s: %v", oc.name, req.Want, err)
			}
		}
	}
	took := time.Since(start).Round(time.Millisecond)
	if driveErr != nil {
		t.Fatalf("%s: the test's side failed after %v: %v%s", oc.name, took, driveErr, report())
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
	for _, p := range res.Screenshots {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: screenshot: %v", oc.name, err)
			continue
		}
		if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("%s: screenshot %s is not a PNG", oc.name, p)
			continue
		}
		t.Logf("%s: screenshot %s (%d KiB)", oc.name, p, len(b)>>10)
	}
	t.Logf("%s %s passed in %v: %s", res.Client, res.Version, took, line)
}

// lineBuffer collects a script's stdout and hands out its complete lines; a
// send on notify (capacity 1) says new lines may be there. Writes never block.
type lineBuffer struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	lines   []string
	notify  chan struct{}
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.all.Write(p)
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		b.lines = append(b.lines, string(b.partial[:i]))
		b.partial = b.partial[i+1:]
	}
	b.mu.Unlock()
	select {
	case b.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (b *lineBuffer) next() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.lines) == 0 {
		return "", false
	}
	l := b.lines[0]
	b.lines = b.lines[1:]
	return l, true
}

func (b *lineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.all.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
