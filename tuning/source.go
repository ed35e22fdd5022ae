package tuning

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Rlimit is a soft/hard resource limit pair. RLIM_INFINITY reads as
// math.MaxUint64.
type Rlimit struct {
	Soft, Hard uint64
}

// Source says where a Snapshot is read from. The zero value reads this
// machine and this process.
type Source struct {
	// Root is the directory that stands for "/": sysctls are read from
	// <Root>/proc/sys/…, memory from <Root>/proc/meminfo and the cgroup
	// memory limit from <Root>/proc/self/cgroup and <Root>/sys/fs/cgroup.
	// "" means "/".
	Root string

	// NoFile returns RLIMIT_NOFILE. nil means getrlimit(2) of this process
	// (on systems without it the limit is unknown).
	NoFile func() (Rlimit, error)

	// PageSize is the kernel page size in bytes, the unit of tcp_mem.
	// 0 means os.Getpagesize().
	PageSize int
}

// sysctlKeys are the sysctls a Snapshot reads.
var sysctlKeys = []string{
	"fs.file-max",
	"fs.file-nr",
	"fs.nr_open",
	"net.core.somaxconn",
	"net.ipv4.tcp_max_syn_backlog",
	"net.core.netdev_max_backlog",
	"net.ipv4.ip_local_port_range",
	"net.ipv4.tcp_mem",
	"net.ipv4.tcp_rmem",
	"net.ipv4.tcp_wmem",
	"net.netfilter.nf_conntrack_max",
	"net.ipv4.tcp_tw_reuse",
	"net.ipv4.tcp_keepalive_time",
	"net.ipv4.tcp_syncookies",
}

// Snapshot is what Read found. Fields that could not be read are marked
// unknown as their comments say; nothing in a Snapshot is an error.
type Snapshot struct {
	// Root is the tree the snapshot was read from ("/" for this machine).
	Root string
	// NoFile is RLIMIT_NOFILE; nil when unknown.
	NoFile *Rlimit
	// Sysctls maps dotted sysctl keys to their values, whitespace runs
	// collapsed to one space ("32768 60999"). A key that could not be read
	// is absent.
	Sysctls map[string]string
	// NetSysctls reports that <root>/proc/sys/net exists, which tells a
	// missing nf_conntrack_max (conntrack not loaded) from an unreadable
	// tree.
	NetSysctls bool
	// MemTotal and MemAvailable are from /proc/meminfo, in bytes; -1 when
	// unknown.
	MemTotal, MemAvailable int64
	// CgroupRead reports that /proc/self/cgroup was readable, so CgroupLimit
	// is meaningful.
	CgroupRead bool
	// CgroupLimit is the tightest memory limit of this process's cgroup and
	// its ancestors in bytes, 0 when there is none; CgroupUsage is the
	// current usage of the cgroup that sets it, -1 when unknown.
	CgroupLimit, CgroupUsage int64
	// PageSize is the kernel page size in bytes.
	PageSize int
}

// Read reads a Snapshot from src. It never fails: what it cannot read is
// left unknown.
func Read(src Source) *Snapshot {
	root := src.Root
	if root == "" {
		root = "/"
	}
	s := &Snapshot{
		Root:         root,
		Sysctls:      make(map[string]string, len(sysctlKeys)),
		MemTotal:     -1,
		MemAvailable: -1,
		CgroupUsage:  -1,
		PageSize:     src.PageSize,
	}
	if s.PageSize <= 0 {
		s.PageSize = os.Getpagesize()
	}
	noFile := src.NoFile
	if noFile == nil {
		noFile = getNoFile
	}
	if rl, err := noFile(); err == nil {
		s.NoFile = &rl
	}
	for _, k := range sysctlKeys {
		if v, ok := readSysctl(root, k); ok {
			s.Sysctls[k] = v
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "proc", "sys", "net")); err == nil && fi.IsDir() {
		s.NetSysctls = true
	}
	if mi, err := readMeminfo(filepath.Join(root, "proc", "meminfo")); err == nil {
		if v, ok := mi["MemTotal"]; ok {
			s.MemTotal = v
		}
		if v, ok := mi["MemAvailable"]; ok {
			s.MemAvailable = v
		}
	}
	s.readCgroup(root)
	return s
}

// sysctlPath is the file under root that holds the dotted sysctl key.
func sysctlPath(root, key string) string {
	return filepath.Join(root, "proc", "sys", filepath.FromSlash(strings.ReplaceAll(key, ".", "/")))
}

func readSysctl(root, key string) (string, bool) {
	b, err := os.ReadFile(sysctlPath(root, key))
	if err != nil {
		return "", false
	}
	v := strings.Join(strings.Fields(string(b)), " ")
	return v, v != ""
}

// readMeminfo parses /proc/meminfo into bytes per field.
func readMeminfo(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := make(map[string]int64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			v *= 1024
		}
		m[name] = v
	}
	return m, sc.Err()
}

// readCgroup finds this process's memory cgroup (v2 "0::/path", or v1 with
// the memory controller) and the tightest limit on the way to its root.
func (s *Snapshot) readCgroup(root string) {
	b, err := os.ReadFile(filepath.Join(root, "proc", "self", "cgroup"))
	if err != nil {
		return
	}
	s.CgroupRead = true
	var dir, limitFile, usageFile string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			if dir == "" { // v1's memory line wins when both exist
				dir = filepath.Join(root, "sys", "fs", "cgroup", filepath.FromSlash(parts[2]))
				limitFile, usageFile = "memory.max", "memory.current"
			}
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				dir = filepath.Join(root, "sys", "fs", "cgroup", "memory", filepath.FromSlash(parts[2]))
				limitFile, usageFile = "memory.limit_in_bytes", "memory.usage_in_bytes"
			}
		}
	}
	if dir == "" {
		return
	}
	base := filepath.Join(root, "sys", "fs", "cgroup")
	for d := dir; ; d = filepath.Dir(d) {
		if v, ok := readCgroupValue(filepath.Join(d, limitFile)); ok && v > 0 && (s.CgroupLimit == 0 || v < s.CgroupLimit) {
			s.CgroupLimit, s.CgroupUsage = v, -1
			if u, ok := readCgroupValue(filepath.Join(d, usageFile)); ok {
				s.CgroupUsage = u
			}
		}
		if len(d) <= len(base) || d == filepath.Dir(d) {
			break
		}
	}
}

// readCgroupValue reads a cgroup byte count; "max" and v1's "unlimited"
// (a page-rounded MaxInt64) read as 0.
func readCgroupValue(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	t := strings.TrimSpace(string(b))
	if t == "max" {
		return 0, true
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 {
		return 0, false
	}
	if v >= math.MaxInt64/2 {
		return 0, true
	}
	return v, true
}

// sysctlInts parses the space-separated integers of a sysctl; ok is false
// when the key is unknown or malformed.
func (s *Snapshot) sysctlInts(key string) ([]int64, bool) {
	v, ok := s.Sysctls[key]
	if !ok {
		return nil, false
	}
	f := strings.Fields(v)
	out := make([]int64, len(f))
	for i, x := range f {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return nil, false
		}
		out[i] = n
	}
	return out, len(out) > 0
}

// sysctlInt is the first integer of a sysctl.
func (s *Snapshot) sysctlInt(key string) (int64, bool) {
	v, ok := s.sysctlInts(key)
	if !ok {
		return 0, false
	}
	return v[0], true
}

// MemoryBudget is the memory connections can use in bytes: MemAvailable,
// cut to the cgroup's remaining room when a cgroup limit is tighter. -1
// when unknown.
func (s *Snapshot) MemoryBudget() int64 {
	m := s.MemAvailable
	if s.CgroupLimit > 0 {
		room := s.CgroupLimit
		if s.CgroupUsage > 0 {
			room -= s.CgroupUsage
		}
		room = max(room, 0)
		if m < 0 || room < m {
			m = room
		}
	}
	return m
}

// FileLimit is the number of files one Surge process may open: the hard
// RLIMIT_NOFILE (surge serve raises its soft limit to the hard one at
// start), cut to fs.file-max minus the files already open system-wide. -1
// when unknown.
func (s *Snapshot) FileLimit() int64 {
	if s.NoFile == nil {
		return -1
	}
	l := clampInt64(s.NoFile.Hard)
	if nr, ok := s.sysctlInts("fs.file-nr"); ok && len(nr) == 3 {
		if fm := nr[2] - nr[0]; fm >= 0 && fm < l {
			l = fm
		}
	} else if fm, ok := s.sysctlInt("fs.file-max"); ok && fm >= 0 && fm < l {
		l = fm
	}
	return l
}

func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
