package tuning

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// activeLines parses the key = value lines of a sysctl.d snippet.
func activeLines(t *testing.T, b []byte) map[string]string {
	t.Helper()
	m := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("snippet line %q is neither a comment nor key = value", line)
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return m
}

func TestSnippet(t *testing.T) {
	root := writeTree(t, lowTree())
	checks := Checks(Read(source(root, noFile(1024, 4096))), 1_000_000)
	snip := Snippet(checks, 1_000_000)
	got := activeLines(t, snip)
	want := map[string]string{
		"fs.nr_open":                     "1048576",
		"fs.file-max":                    "2097152",
		"net.core.somaxconn":             "65535",
		"net.ipv4.tcp_max_syn_backlog":   "65535",
		"net.core.netdev_max_backlog":    "16384",
		"net.ipv4.tcp_mem":               "250000 500000 1000000",
		"net.ipv4.tcp_rmem":              "4096 16384 6291456",
		"net.ipv4.tcp_wmem":              "4096 16384 4194304",
		"net.netfilter.nf_conntrack_max": "2097152",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("snippet %s = %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("snippet sets %s, which needs no change or is not a server sysctl", k)
		}
	}
	text := string(snip)
	for _, s := range []string{
		"surge tune --conns 1000000",
		"LimitNOFILE=1048576",
		"/etc/security/limits.conf",
		"# net.ipv4.ip_local_port_range = 1024 65535", // load generators: commented
		"# net.ipv4.tcp_tw_reuse = 1",
		"modules-load.d", // conntrack is set, so the module note is there
	} {
		if !strings.Contains(text, s) {
			t.Errorf("snippet lacks %q:\n%s", s, text)
		}
	}
	if strings.Contains(text, "tcp_keepalive_time") {
		t.Errorf("snippet mentions keepalive, which Surge does not need:\n%s", text)
	}
}

func TestSnippetAllOK(t *testing.T) {
	root := writeTree(t, goodTree())
	snip := Snippet(Checks(Read(source(root, noFile(1048576, 1048576))), 1_000_000), 1_000_000)
	if got := activeLines(t, snip); len(got) != 0 {
		t.Errorf("a tuned machine gets active lines %v:\n%s", got, snip)
	}
	if !strings.Contains(string(snip), "# net.core.somaxconn = 65535") {
		t.Errorf("sufficient values are not listed for pinning:\n%s", snip)
	}
}

func TestApplyWritesOnlyTheFakeTree(t *testing.T) {
	root := writeTree(t, lowTree())
	src := source(root, noFile(1048576, 1048576))
	checks := Checks(Read(src), 1_000_000)
	var out bytes.Buffer
	changes, err := Apply(root, checks, &out)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	wantSet := activeLines(t, Snippet(checks, 1_000_000))
	if len(changes) != len(wantSet) {
		t.Errorf("%d changes, snippet has %d active lines", len(changes), len(wantSet))
	}
	for _, ch := range changes {
		b, err := os.ReadFile(sysctlPath(root, ch.Sysctl))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != wantSet[ch.Sysctl] || ch.To != got {
			t.Errorf("%s: file holds %q, change says %q, snippet %q", ch.Sysctl, got, ch.To, wantSet[ch.Sysctl])
		}
		if !strings.Contains(out.String(), "sysctl "+ch.Sysctl+": "+ch.From+" -> "+ch.To+"\n") {
			t.Errorf("change of %s not printed:\n%s", ch.Sysctl, out.String())
		}
	}
	// After applying, every server sysctl is sufficient.
	for _, c := range Checks(Read(src), 1_000_000) {
		if c.Sysctl != "" && c.Side == SideServer && c.Status != StatusOK && c.Status != StatusInfo {
			t.Errorf("after Apply %s is %s (current %q)", c.Name, c.Status, c.Current)
		}
	}
}

func TestApplyNeverCreatesFiles(t *testing.T) {
	root := writeTree(t, lowTree())
	checks := Checks(Read(source(root, noFile(1048576, 1048576))), 1_000_000)
	// The key vanished between reading and applying.
	gone := filepath.Join(root, "proc", "sys", "net", "core", "somaxconn")
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	changes, err := Apply(root, checks, &out)
	if err == nil {
		t.Fatal("Apply succeeded although a key is missing")
	}
	if _, serr := os.Stat(gone); serr == nil {
		t.Error("Apply created a sysctl file")
	}
	failed := 0
	for _, ch := range changes {
		if ch.Error != "" {
			failed++
			if ch.Sysctl != "net.core.somaxconn" {
				t.Errorf("%s failed: %s", ch.Sysctl, ch.Error)
			}
		}
	}
	if failed != 1 || len(changes) < 2 {
		t.Errorf("%d of %d changes failed, want only somaxconn and the rest applied", failed, len(changes))
	}
	if !strings.Contains(out.String(), "FAILED") {
		t.Errorf("failure not printed:\n%s", out.String())
	}
}

func TestServeWarnings(t *testing.T) {
	low := writeTree(t, lowTree())
	w := source(low, noFile(1024, 4096)).ServeWarnings(100_000)
	if len(w) != 3 {
		t.Fatalf("%d warnings, want open files, file-max and somaxconn: %q", len(w), w)
	}
	for i, want := range []string{"open-file limit 4096", "fs.file-max 50000", "net.core.somaxconn 128"} {
		if !strings.HasPrefix(w[i], want) || strings.Contains(w[i], "\n") {
			t.Errorf("warning %d = %q, want one line starting %q", i, w[i], want)
		}
	}
	if w := source(low, noFile(1024, 4096)).ServeWarnings(1000); len(w) != 1 || !strings.Contains(w[0], "somaxconn") {
		t.Errorf("1000 connections on a stock machine: %q, want only the somaxconn warning", w)
	}
	good := writeTree(t, goodTree())
	if w := source(good, noFile(1024, 1048576)).ServeWarnings(1_000_000); len(w) != 0 {
		t.Errorf("tuned machine warns: %q", w)
	}
	if w := source(low, noFile(1, 1)).ServeWarnings(0); w != nil {
		t.Errorf("maxConns 0 warns: %q", w)
	}
	if w := source(t.TempDir(), noFileUnknown).ServeWarnings(1_000_000); len(w) != 0 {
		t.Errorf("unreadable tree warns: %q", w)
	}
	if w := ServeWarnings(t.TempDir(), 0); w != nil {
		t.Errorf("ServeWarnings(root, 0) = %q", w)
	}
}
