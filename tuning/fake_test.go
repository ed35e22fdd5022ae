package tuning

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

const gib = 1 << 30

// writeTree creates a fake root under a temporary directory: files maps
// slash paths relative to the root ("proc/sys/fs/nr_open") to contents.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, v := range files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// meminfo renders a /proc/meminfo with the given totals in bytes.
func meminfo(total, avail int64) string {
	return "MemTotal:       " + itoa(total/1024) + " kB\n" +
		"MemFree:        " + itoa(avail/1024) + " kB\n" +
		"MemAvailable:   " + itoa(avail/1024) + " kB\n" +
		"Buffers:           17608 kB\n" +
		"HugePages_Total:       0\n"
}

func itoa(v int64) string { return joinInts([]int64{v}) }

// lowTree is a stock small machine: Debian defaults, 1 GiB of memory.
func lowTree() map[string]string {
	return map[string]string{
		"proc/sys/fs/file-max":                    "50000\n",
		"proc/sys/fs/file-nr":                     "1200\t0\t50000\n",
		"proc/sys/fs/nr_open":                     "65536\n",
		"proc/sys/net/core/somaxconn":             "128\n",
		"proc/sys/net/ipv4/tcp_max_syn_backlog":   "128\n",
		"proc/sys/net/core/netdev_max_backlog":    "1000\n",
		"proc/sys/net/ipv4/ip_local_port_range":   "32768\t60999\n",
		"proc/sys/net/ipv4/tcp_mem":               "22000\t29000\t44000\n",
		"proc/sys/net/ipv4/tcp_rmem":              "4096\t131072\t6291456\n",
		"proc/sys/net/ipv4/tcp_wmem":              "4096\t65536\t4194304\n",
		"proc/sys/net/netfilter/nf_conntrack_max": "65536\n",
		"proc/sys/net/ipv4/tcp_tw_reuse":          "2\n",
		"proc/sys/net/ipv4/tcp_keepalive_time":    "7200\n",
		"proc/sys/net/ipv4/tcp_syncookies":        "0\n",
		"proc/meminfo":                            meminfo(1*gib, gib/2),
		"proc/self/cgroup":                        "0::/system.slice/surge.service\n",
		"sys/fs/cgroup/system.slice/memory.max":   "max\n",
	}
}

// goodTree is a machine tuned for a million connections.
func goodTree() map[string]string {
	return map[string]string{
		"proc/sys/fs/file-max":                    "4194304\n",
		"proc/sys/fs/file-nr":                     "3000\t0\t4194304\n",
		"proc/sys/fs/nr_open":                     "2097152\n",
		"proc/sys/net/core/somaxconn":             "65535\n",
		"proc/sys/net/ipv4/tcp_max_syn_backlog":   "65535\n",
		"proc/sys/net/core/netdev_max_backlog":    "16384\n",
		"proc/sys/net/ipv4/ip_local_port_range":   "1024 65535\n",
		"proc/sys/net/ipv4/tcp_mem":               "786432 1048576 1572864\n",
		"proc/sys/net/ipv4/tcp_rmem":              "4096 16384 6291456\n",
		"proc/sys/net/ipv4/tcp_wmem":              "4096 16384 4194304\n",
		"proc/sys/net/netfilter/nf_conntrack_max": "2097152\n",
		"proc/sys/net/ipv4/tcp_tw_reuse":          "1\n",
		"proc/sys/net/ipv4/tcp_keepalive_time":    "7200\n",
		"proc/sys/net/ipv4/tcp_syncookies":        "1\n",
		"proc/meminfo":                            meminfo(32*gib, 30*gib),
		"proc/self/cgroup":                        "0::/\n",
	}
}

// with returns a copy of files with the changes applied ("" deletes).
func with(files map[string]string, changes map[string]string) map[string]string {
	out := maps.Clone(files)
	for k, v := range changes {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func noFile(soft, hard uint64) func() (Rlimit, error) {
	return func() (Rlimit, error) { return Rlimit{Soft: soft, Hard: hard}, nil }
}

func noFileUnknown() (Rlimit, error) { return Rlimit{}, errors.New("no rlimit in this test") }

// source is a Source over a fake tree with a fixed page size.
func source(root string, nofile func() (Rlimit, error)) Source {
	return Source{Root: root, NoFile: nofile, PageSize: 4096}
}

func byName(checks []Check) map[string]Check {
	m := make(map[string]Check, len(checks))
	for _, c := range checks {
		m[c.Name] = c
	}
	return m
}
