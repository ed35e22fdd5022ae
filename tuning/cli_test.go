package tuning

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func euid(id int) func() int { return func() int { return id } }

// runFake runs surge tune over a fake tree as the given user.
func runFake(t *testing.T, root string, uid int, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb, source(root, noFile(1024, 4096)), euid(uid))
	return code, out.String(), errb.String()
}

func TestCLITable(t *testing.T) {
	root := writeTree(t, lowTree())
	code, out, errs := runFake(t, root, 1000, "--conns", "100000")
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	for _, s := range []string{
		"setting", "| current", "| recommended for --conns 100000", "| status",
		"net.core.somaxconn", "| low", "| high", "info (load generators)",
		"capacity of this machine", "by open files: 3072", "estimate:", "limited by open files",
		"not capacity limits: somaxconn 128",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	// Every table row has the four columns.
	lines := strings.Split(out, "\n")
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "setting ") })
	if i < 0 {
		t.Fatalf("no table header:\n%s", out)
	}
	for _, l := range lines[i+2 : i+2+len(Checks(Read(source(root, nil)), 1))] {
		if strings.Count(l, " | ") != 3 {
			t.Errorf("row %q does not have 4 columns", l)
		}
	}
}

func TestCLIJSON(t *testing.T) {
	root := writeTree(t, lowTree())
	code, out, errs := runFake(t, root, 1000, "--conns", "1000000", "--json")
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"conns", "root", "checks", "capacity"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	if raw["conns"] != float64(1_000_000) || raw["root"] != root {
		t.Errorf("conns %v root %v", raw["conns"], raw["root"])
	}
	checks, _ := raw["checks"].([]any)
	if len(checks) == 0 {
		t.Fatal("no checks")
	}
	for _, c := range checks {
		m := c.(map[string]any)
		for _, k := range []string{"name", "current", "recommended", "status", "side"} {
			if _, ok := m[k].(string); !ok {
				t.Errorf("check %v lacks string %q", m["name"], k)
			}
		}
	}
	capa := raw["capacity"].(map[string]any)
	for _, k := range []string{"connections", "limited_by", "by_open_files", "by_memory", "open_file_limit",
		"file_reserve", "memory_budget_bytes", "surge_bytes_per_conn", "kernel_bytes_per_conn", "accept_backlog", "ephemeral_ports"} {
		if _, ok := capa[k]; !ok {
			t.Errorf("capacity lacks %q", k)
		}
	}
	if capa["connections"] != float64(4096-FileReserve) || capa["limited_by"] != "open files" {
		t.Errorf("capacity %v by %v", capa["connections"], capa["limited_by"])
	}
	var rep Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Checks) != len(checks) {
		t.Errorf("JSON does not round-trip into Report: %v", err)
	}
	if strings.Contains(out, `\u003e`) {
		t.Error("JSON escapes >")
	}
}

func TestCLIUnknownTreeStillExitsZero(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--json"}, &out, &errb, source(t.TempDir(), noFileUnknown), euid(1000)); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Capacity.Connections != nil || rep.Capacity.LimitedBy != "unknown" {
		t.Errorf("capacity of an empty tree: %+v", rep.Capacity)
	}
	if !strings.Contains(out.String(), `"connections": null`) {
		t.Errorf("unknown capacity is not null:\n%s", out.String())
	}
}

func TestCLIWriteSysctl(t *testing.T) {
	root := writeTree(t, lowTree())
	before := activeLines(t, Snippet(Checks(Read(source(root, nil)), 100_000), 100_000))
	file := filepath.Join(t.TempDir(), "60-surge.conf")
	code, out, errs := runFake(t, root, 0, "--conns", "100000", "--write-sysctl", file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := activeLines(t, b); len(got) == 0 || got["net.core.somaxconn"] != "8192" {
		t.Errorf("snippet %v", got)
	}
	if !strings.Contains(out, "wrote "+file) {
		t.Errorf("output does not name the file:\n%s", out)
	}
	// Writing the snippet applies nothing, even as root.
	after := Read(source(root, nil))
	if after.Sysctls["net.core.somaxconn"] != "128" || len(before) == 0 {
		t.Errorf("--write-sysctl changed the tree: somaxconn %q", after.Sysctls["net.core.somaxconn"])
	}
}

func TestCLIApply(t *testing.T) {
	t.Run("refused without root", func(t *testing.T) {
		root := writeTree(t, lowTree())
		code, out, errs := runFake(t, root, 1000, "--apply")
		if code != 1 || !strings.Contains(errs, "needs root") || out != "" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
		if v := Read(source(root, nil)).Sysctls["net.core.somaxconn"]; v != "128" {
			t.Errorf("somaxconn changed to %q", v)
		}
	})
	t.Run("root, text", func(t *testing.T) {
		root := writeTree(t, lowTree())
		code, out, errs := runFake(t, root, 0, "--conns", "100000", "--apply")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		if !strings.Contains(out, "sysctl net.core.somaxconn: 128 -> 8192\n") {
			t.Errorf("change not printed:\n%s", out)
		}
		if v := Read(source(root, nil)).Sysctls["net.core.somaxconn"]; v != "8192" {
			t.Errorf("somaxconn = %q after --apply", v)
		}
	})
	t.Run("root, json", func(t *testing.T) {
		root := writeTree(t, lowTree())
		code, out, errs := runFake(t, root, 0, "--conns", "100000", "--apply", "--json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		var rep Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, out)
		}
		if len(rep.Applied) == 0 || !strings.Contains(errs, "sysctl net.core.somaxconn: 128 -> 8192") {
			t.Errorf("applied %v, stderr %q", rep.Applied, errs)
		}
		if c := byName(rep.Checks)["net.core.somaxconn"]; c.Status != StatusOK || c.Current != "8192" {
			t.Errorf("checks after apply show somaxconn %q %s", c.Current, c.Status)
		}
	})
}

func TestCLIUsage(t *testing.T) {
	root := writeTree(t, lowTree())
	for _, args := range [][]string{{"--conns", "0"}, {"--conns", "x"}, {"extra"}, {"--nope"}} {
		if code, _, _ := runFake(t, root, 1000, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	code, _, errs := runFake(t, root, 1000, "-h")
	if code != 0 || !strings.Contains(errs, "--write-sysctl") {
		t.Errorf("-h: exit %d, %q", code, errs)
	}
}

// Main reads this machine (read only: no --apply) and exits 0.
func TestMainThisMachine(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--conns", "1000", "--json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Root != "/" || rep.Conns != 1000 || len(rep.Checks) == 0 {
		t.Errorf("report %+v", rep)
	}
}
