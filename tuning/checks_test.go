package tuning

import (
	"strings"
	"testing"
)

func TestChecksStatus(t *testing.T) {
	serverKnobs := []string{
		nameNoFile, "fs.nr_open", "fs.file-max", "memory (MemAvailable)", "cgroup memory limit",
		"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.core.netdev_max_backlog",
		"net.ipv4.tcp_mem", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.netfilter.nf_conntrack_max",
	}
	all := func(s Status) map[string]Status {
		m := make(map[string]Status)
		for _, k := range serverKnobs {
			m[k] = s
		}
		return m
	}
	lowWant := all(StatusLow)
	lowWant["cgroup memory limit"] = StatusOK // no limit set
	lowWant["net.ipv4.tcp_rmem"] = StatusHigh
	lowWant["net.ipv4.tcp_wmem"] = StatusHigh

	tests := []struct {
		name   string
		files  map[string]string
		nofile func() (Rlimit, error)
		conns  int
		want   map[string]Status
	}{
		{"low limits, 1M", lowTree(), noFile(1024, 4096), 1_000_000, lowWant},
		{"good limits, 1M", goodTree(), noFile(1048576, 1048576), 1_000_000, all(StatusOK)},
		{"good limits, 100k", goodTree(), noFile(131072, 131072), 100_000, all(StatusOK)},
		{"missing files", map[string]string{"etc/hostname": "x\n"}, noFileUnknown, 100_000, all(StatusUnknown)},
		{"low limits, few conns", lowTree(), noFile(1024, 4096), 1000, map[string]Status{
			nameNoFile:                       StatusOK, // 2024 <= hard 4096: surge serve raises the soft limit
			"fs.nr_open":                     StatusOK,
			"fs.file-max":                    StatusOK,
			"memory (MemAvailable)":          StatusOK,
			"net.core.somaxconn":             StatusLow, // below the 4096 floor
			"net.ipv4.tcp_rmem":              StatusOK,  // small buffers matter from 100k
			"net.netfilter.nf_conntrack_max": StatusOK,
		}},
		{"conntrack not loaded", with(goodTree(), map[string]string{"proc/sys/net/netfilter/nf_conntrack_max": ""}),
			noFile(1048576, 1048576), 1_000_000, map[string]Status{"net.netfilter.nf_conntrack_max": StatusOK}},
		{"nofile soft low, hard enough", goodTree(), noFile(1024, 1048576), 1_000_000, map[string]Status{nameNoFile: StatusOK}},
		{"nofile unlimited", goodTree(), noFile(^uint64(0), ^uint64(0)), 1_000_000, map[string]Status{nameNoFile: StatusOK}},
		{"cgroup v2 limit too tight", with(goodTree(), map[string]string{
			"proc/self/cgroup": "0::/system.slice/surge.service\n",
			"sys/fs/cgroup/system.slice/surge.service/memory.max":     "2147483648\n",
			"sys/fs/cgroup/system.slice/surge.service/memory.current": "104857600\n",
		}), noFile(1048576, 1048576), 1_000_000, map[string]Status{"cgroup memory limit": StatusLow, "memory (MemAvailable)": StatusOK}},
		{"cgroup v1 limit on an ancestor", with(goodTree(), map[string]string{
			"proc/self/cgroup": "9:pids:/\n4:memory:/docker/abc\n0::/\n",
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
			"sys/fs/cgroup/memory/docker/memory.limit_in_bytes":     "1073741824\n",
			"sys/fs/cgroup/memory/docker/memory.usage_in_bytes":     "0\n",
		}), noFile(1048576, 1048576), 100_000, map[string]Status{"cgroup memory limit": StatusOK}},
		{"cgroup file missing", with(goodTree(), map[string]string{"proc/self/cgroup": ""}),
			noFile(1048576, 1048576), 100_000, map[string]Status{"cgroup memory limit": StatusUnknown}},
		{"malformed values", with(goodTree(), map[string]string{
			"proc/sys/net/core/somaxconn": "lots\n",
			"proc/sys/net/ipv4/tcp_mem":   "1 2\n",
		}), noFile(1048576, 1048576), 100_000, map[string]Status{"net.core.somaxconn": StatusUnknown, "net.ipv4.tcp_mem": StatusUnknown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := writeTree(t, tt.files)
			checks := Checks(Read(source(root, tt.nofile)), tt.conns)
			got := byName(checks)
			for name, want := range tt.want {
				c, ok := got[name]
				if !ok {
					t.Fatalf("no check %q", name)
				}
				if c.Status != want {
					t.Errorf("%s: status %s, want %s (current %q, recommended %q, note %q)", name, c.Status, want, c.Current, c.Recommended, c.Note)
				}
			}
			for _, c := range checks {
				if c.Side == SideClient && c.Status != StatusInfo && c.Status != StatusUnknown {
					t.Errorf("%s: load-generator knob has status %s", c.Name, c.Status)
				}
				if c.Status == StatusLow && c.Note == "" {
					t.Errorf("%s: low without a note saying what fails", c.Name)
				}
				if c.Recommended == "" {
					t.Errorf("%s: no recommendation", c.Name)
				}
			}
		})
	}
}

func TestChecksValues(t *testing.T) {
	root := writeTree(t, lowTree())
	got := byName(Checks(Read(source(root, noFile(1024, 4096))), 1_000_000))
	want := map[string][2]string{ // current, recommended
		nameNoFile:                       {"soft 1024, hard 4096", "1048576"},
		"fs.nr_open":                     {"65536", "1048576"},
		"fs.file-max":                    {"50000", "2097152"},
		"net.core.somaxconn":             {"128", "65535"},
		"net.ipv4.tcp_max_syn_backlog":   {"128", "65535"},
		"net.core.netdev_max_backlog":    {"1000", "16384"},
		"net.ipv4.tcp_mem":               {"22000 29000 44000", "250000 500000 1000000"},
		"net.ipv4.tcp_rmem":              {"4096 131072 6291456", "4096 16384 6291456"},
		"net.ipv4.tcp_wmem":              {"4096 65536 4194304", "4096 16384 4194304"},
		"net.netfilter.nf_conntrack_max": {"65536", "2097152"},
		"net.ipv4.ip_local_port_range":   {"32768 60999", "1024 65535"},
		"net.ipv4.tcp_tw_reuse":          {"2", "1"},
		"memory (MemAvailable)":          {"512 MiB of 1.0 GiB", ">= 9.0 GiB"},
	}
	for name, w := range want {
		c := got[name]
		if c.Current != w[0] || c.Recommended != w[1] {
			t.Errorf("%s: current %q recommended %q, want %q %q", name, c.Current, c.Recommended, w[0], w[1])
		}
	}
	if n := got["net.ipv4.tcp_max_syn_backlog"].Note; !strings.Contains(n, "tcp_syncookies is 0") {
		t.Errorf("syn backlog note does not mention disabled syncookies: %q", n)
	}
	if n := got["net.ipv4.ip_local_port_range"].Note; !strings.Contains(n, "36 source addresses") {
		t.Errorf("port range note: %q", n)
	}
}

// A sufficient current value is never lowered by the recommendation.
func TestChecksNeverLower(t *testing.T) {
	root := writeTree(t, goodTree())
	got := byName(Checks(Read(source(root, noFile(4194304, 4194304))), 100_000))
	for name, want := range map[string]string{
		nameNoFile:                       "4194304",
		"fs.nr_open":                     "2097152",
		"fs.file-max":                    "4194304",
		"net.core.somaxconn":             "65535",
		"net.ipv4.tcp_mem":               "786432 1048576 1572864",
		"net.netfilter.nf_conntrack_max": "2097152",
	} {
		if c := got[name]; c.Recommended != want {
			t.Errorf("%s: recommended %q, want the current %q", name, c.Recommended, want)
		}
	}
}

// The guide's tables quote these numbers for 100k and 1M connections.
func TestRecommendationsForGuide(t *testing.T) {
	tests := []struct {
		conns                    int
		files, backlog, netdev   int64
		conntrack, tcpMemMaxPage int64
		memFloorGiB              float64
	}{
		{100_000, 131072, 8192, 2048, 262144, 100_000, 0.6},
		{1_000_000, 1048576, 65535, 16384, 2097152, 1_000_000, 6.0},
	}
	for _, tt := range tests {
		if got := RecommendedFiles(tt.conns); got != tt.files {
			t.Errorf("RecommendedFiles(%d) = %d, want %d", tt.conns, got, tt.files)
		}
		if got := BacklogNeeded(tt.conns); got != tt.backlog {
			t.Errorf("BacklogNeeded(%d) = %d, want %d", tt.conns, got, tt.backlog)
		}
		if got := netdevBacklogNeeded(tt.conns); got != tt.netdev {
			t.Errorf("netdevBacklogNeeded(%d) = %d, want %d", tt.conns, got, tt.netdev)
		}
		if got := nextPow2(conntrackNeeded(tt.conns)); got != tt.conntrack {
			t.Errorf("conntrack for %d = %d, want %d", tt.conns, got, tt.conntrack)
		}
		if got := ceilDiv(int64(tt.conns)*tcpBufPerConn, 4096); got != tt.tcpMemMaxPage {
			t.Errorf("tcp_mem max for %d = %d pages, want %d", tt.conns, got, tt.tcpMemMaxPage)
		}
		if got := float64(MemoryNeeded(tt.conns)) / gib; got < tt.memFloorGiB-0.05 || got > tt.memFloorGiB+0.05 {
			t.Errorf("MemoryNeeded(%d) = %.2f GiB, want %.1f", tt.conns, got, tt.memFloorGiB)
		}
	}
	if got := BacklogNeeded(1000); got != 4096 {
		t.Errorf("BacklogNeeded(1000) = %d, want the 4096 floor", got)
	}
}

func TestReadParsesTree(t *testing.T) {
	root := writeTree(t, lowTree())
	s := Read(source(root, noFile(1024, 4096)))
	if s.Root != root {
		t.Errorf("Root %q, want %q", s.Root, root)
	}
	if got := s.Sysctls["net.ipv4.ip_local_port_range"]; got != "32768 60999" {
		t.Errorf("port range %q: tabs not collapsed", got)
	}
	if s.MemTotal != gib || s.MemAvailable != gib/2 {
		t.Errorf("meminfo: total %d available %d", s.MemTotal, s.MemAvailable)
	}
	if !s.NetSysctls || !s.CgroupRead || s.CgroupLimit != 0 {
		t.Errorf("net %v cgroup read %v limit %d", s.NetSysctls, s.CgroupRead, s.CgroupLimit)
	}
	if s.NoFile == nil || s.NoFile.Soft != 1024 || s.NoFile.Hard != 4096 {
		t.Errorf("NoFile %+v", s.NoFile)
	}

	empty := Read(source(t.TempDir(), noFileUnknown))
	if empty.NoFile != nil || len(empty.Sysctls) != 0 || empty.MemAvailable != -1 || empty.NetSysctls || empty.CgroupRead {
		t.Errorf("empty tree read as %+v", empty)
	}
}

func TestFmtBytes(t *testing.T) {
	for _, tt := range []struct {
		in   float64
		want string
	}{{512, "512 B"}, {2662.4, "2.6 KiB"}, {3788.8, "3.7 KiB"}, {615 << 20, "615 MiB"}, {23.1 * gib, "23.1 GiB"}} {
		if got := fmtBytes(tt.in); got != tt.want {
			t.Errorf("fmtBytes(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
