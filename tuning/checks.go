package tuning

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Measured per-connection costs (tuning/README.md, "Memory calculator").
const (
	// SurgeBytesPerConn is surge serve's RSS per idle connection: 2.6 KiB,
	// measured with `surge load idle` at 15,000 connections, default
	// settings, one heartbeat round (Go heap in use: 2.1 KiB of it).
	SurgeBytesPerConn = 2.6 * 1024
	// KernelBytesPerConn is the kernel's slab memory per idle TCP socket:
	// ≈3.7 KiB, no buffer bytes while idle.
	KernelBytesPerConn = 3.7 * 1024
	// FileReserve is the number of descriptors kept aside for everything
	// that is not a client connection: listeners, epoll and timer fds, logs,
	// the admin listener, outgoing broker connections.
	FileReserve = 1024
	// tcpBufPerConn is the socket buffer memory planned per connection in
	// tcp_mem: one page-sized skb in flight on every socket at once, as a
	// broadcast to all of them puts there.
	tcpBufPerConn = 4096
	// smallBuffersFrom is the connection count from which the guide
	// recommends small default socket buffers (tcp_rmem/tcp_wmem middle).
	smallBuffersFrom = 100_000
	// smallBuffer is that recommended default buffer size.
	smallBuffer = 16384
)

// Status is the verdict of a Check.
type Status string

const (
	// StatusOK: the current value holds the planned connections.
	StatusOK Status = "ok"
	// StatusLow: the current value is below what the connections need.
	StatusLow Status = "low"
	// StatusHigh: the current value is above what is advisable for that
	// many connections (default socket buffer sizes).
	StatusHigh Status = "high"
	// StatusUnknown: the current value could not be read.
	StatusUnknown Status = "unknown"
	// StatusInfo: advice that is not pass/fail for this server (settings of
	// load-generator machines, or ones Surge does not need).
	StatusInfo Status = "info"
)

// nameNoFile is the Name of the open-file limit's Check.
const nameNoFile = "open files (ulimit -n)"

// Side says which machine a setting matters on.
const (
	SideServer = "server"
	SideClient = "client" // load generators
)

// Check is one knob compared with what a number of connections needs.
type Check struct {
	// Name is the setting as users know it: the sysctl key, or a
	// description for rlimits and memory.
	Name string `json:"name"`
	// Sysctl is the sysctl key, empty for settings that are not sysctls.
	Sysctl string `json:"sysctl,omitempty"`
	// Current is the value read, empty when unknown.
	Current string `json:"current"`
	// Recommended is the value to set for the connections. For sysctls it
	// is written as is by Snippet and Apply and never lowers a current
	// value that already suffices.
	Recommended string `json:"recommended"`
	Status      Status `json:"status"`
	// Side is SideServer or SideClient.
	Side string `json:"side"`
	// Note says why, and what failure a low value causes.
	Note string `json:"note,omitempty"`
}

// FilesNeeded is the open-file limit that holds conns connections.
func FilesNeeded(conns int) int64 { return int64(conns) + FileReserve }

// RecommendedFiles is the open-file limit the guide recommends for conns
// connections: the next power of two at or above FilesNeeded, at least
// 65536 (131072 for 100k connections, 1048576 for 1M).
func RecommendedFiles(conns int) int64 { return max(65536, nextPow2(FilesNeeded(conns))) }

// BacklogNeeded is the accept (somaxconn) and SYN (tcp_max_syn_backlog)
// queue length recommended for conns connections: a sixteenth of them,
// rounded up to a power of two, between 4096 and 65535, so that a
// reconnect storm after a restart or network blip is queued rather than
// dropped while the accept loop catches up.
func BacklogNeeded(conns int) int64 {
	return min(max(nextPow2(ceilDiv(int64(conns), 16)), 4096), 65535)
}

// MemoryNeeded is the idle floor of memory for conns connections:
// conns × (SurgeBytesPerConn + KernelBytesPerConn).
func MemoryNeeded(conns int) int64 {
	return int64(math.Ceil(float64(conns) * (SurgeBytesPerConn + KernelBytesPerConn)))
}

// netdevBacklogNeeded is the per-CPU input packet queue recommended for
// conns connections: conns/64 rounded up to a power of two, 1000..65536.
func netdevBacklogNeeded(conns int) int64 {
	return min(max(nextPow2(ceilDiv(int64(conns), 64)), 1000), 65536)
}

// conntrackNeeded is the conntrack table size for conns connections: room
// for as many again in TIME_WAIT and SYN_SENT during a reconnect storm.
func conntrackNeeded(conns int) int64 { return 2 * int64(conns) }

// Checks compares s with what conns connections need, one Check per knob
// in the order of the guide. conns must be positive.
func Checks(s *Snapshot, conns int) []Check {
	conns = max(conns, 1)
	return []Check{
		checkNoFile(s, conns),
		checkNrOpen(s, conns),
		checkFileMax(s, conns),
		checkMemory(s, conns),
		checkCgroup(s, conns),
		checkBacklog(s, conns, "net.core.somaxconn",
			"accept queue of the listener (Go and netpoll pass somaxconn as the listen backlog); when full, reconnect storms see connect timeouts and SYN retransmits (1s, 3s, 7s…) and `nstat -az TcpExtListenOverflows` grows"),
		checkBacklog(s, conns, "net.ipv4.tcp_max_syn_backlog",
			`half-open (SYN_RECV) queue; when full dmesg says "TCP: request_sock_TCP: Possible SYN flooding on port 8080. Sending cookies."`),
		checkNetdevBacklog(s, conns),
		checkTCPMem(s, conns),
		checkSockBuf(s, conns, "net.ipv4.tcp_rmem", "receive"),
		checkSockBuf(s, conns, "net.ipv4.tcp_wmem", "send"),
		checkConntrack(s, conns),
		checkKeepalive(s),
		checkPortRange(s, conns),
		checkTWReuse(s),
	}
}

func checkNoFile(s *Snapshot, n int) Check {
	need := FilesNeeded(n)
	rec := RecommendedFiles(n)
	nrOpen, nrOK := s.sysctlInt("fs.nr_open")
	if nrOK && rec > nrOpen && nrOpen >= need {
		rec = nrOpen
	}
	c := Check{Name: nameNoFile, Side: SideServer, Recommended: strconv.FormatInt(rec, 10)}
	if s.NoFile == nil {
		c.Status = StatusUnknown
		return c
	}
	soft, hard := clampInt64(s.NoFile.Soft), clampInt64(s.NoFile.Hard)
	c.Current = fmtLimit(soft)
	if soft != hard {
		c.Current = "soft " + fmtLimit(soft) + ", hard " + fmtLimit(hard)
	}
	if hard > rec {
		c.Recommended = fmtLimit(hard)
	}
	var notes []string
	switch {
	case hard < need:
		c.Status = StatusLow
		notes = append(notes, fmt.Sprintf(`each connection is a descriptor: %d connections need %d; beyond the limit accept fails with EMFILE and netpoll logs "NETPOLL: accept conn failed: too many open files" (clients: "socket: too many open files"); set LimitNOFILE=%d in the systemd unit or nofile in /etc/security/limits.conf`, n, need, rec))
	default:
		c.Status = StatusOK
		if soft < need {
			notes = append(notes, fmt.Sprintf("surge serve raises its soft limit to the hard one at start; surge load and other tools need `ulimit -n %d` first", min(hard, rec)))
		}
	}
	if nrOK && RecommendedFiles(n) > nrOpen && nrOpen < need {
		notes = append(notes, fmt.Sprintf("fs.nr_open (%d) caps the hard limit: raise it first", nrOpen))
	}
	c.Note = strings.Join(notes, "; ")
	return c
}

func checkNrOpen(s *Snapshot, n int) Check {
	c := minCheck(s, "fs.nr_open", FilesNeeded(n), RecommendedFiles(n))
	if c.Status == StatusLow {
		c.Note = `ceiling for any process's open-file limit; above it "ulimit -n" fails with "cannot modify limit: Operation not permitted" and a systemd unit with a larger LimitNOFILE= fails with status=205/LIMITS`
	}
	return c
}

func checkFileMax(s *Snapshot, n int) Check {
	open := int64(0)
	if nr, ok := s.sysctlInts("fs.file-nr"); ok {
		open = nr[0]
	}
	c := minCheck(s, "fs.file-max", FilesNeeded(n)+open, nextPow2(2*FilesNeeded(n)))
	if c.Status == StatusLow {
		c.Note = fmt.Sprintf(`system-wide open files (%d open now); when reached every process gets ENFILE "too many open files in system" and dmesg says "VFS: file-max limit … reached"`, open)
	}
	return c
}

func checkMemory(s *Snapshot, n int) Check {
	need := MemoryNeeded(n)
	c := Check{
		Name:        "memory (MemAvailable)",
		Side:        SideServer,
		Recommended: ">= " + fmtBytes(need*3/2),
		Note: fmt.Sprintf("idle floor %s = %d × (%s Surge + %s kernel); provision %s for bursts, write queues and GC headroom",
			fmtBytes(need), n, fmtBytes(SurgeBytesPerConn), fmtBytes(KernelBytesPerConn), fmtBytes(need*3/2)),
	}
	if s.MemAvailable < 0 {
		c.Status = StatusUnknown
		return c
	}
	c.Current = fmtBytes(s.MemAvailable)
	if s.MemTotal > 0 {
		c.Current += " of " + fmtBytes(s.MemTotal)
	}
	c.Status = StatusOK
	if s.MemAvailable < need {
		c.Status = StatusLow
		c.Note += `; short of the floor the OOM killer ends surge serve (dmesg: "Out of memory: Killed process … (surge)")`
	}
	return c
}

func checkCgroup(s *Snapshot, n int) Check {
	need := MemoryNeeded(n)
	c := Check{Name: "cgroup memory limit", Side: SideServer, Recommended: "none, or >= " + fmtBytes(need*3/2)}
	switch {
	case !s.CgroupRead:
		c.Status = StatusUnknown
	case s.CgroupLimit == 0:
		c.Current, c.Status = "none", StatusOK
	default:
		c.Current = fmtBytes(s.CgroupLimit)
		room := s.CgroupLimit
		if s.CgroupUsage >= 0 {
			c.Current += ", " + fmtBytes(s.CgroupUsage) + " used"
			room -= s.CgroupUsage
		}
		c.Status = StatusOK
		if room < need {
			c.Status = StatusLow
			c.Note = `the cgroup (container, or MemoryMax= of the unit) OOM-kills surge serve first: "Memory cgroup out of memory: Killed process … (surge)"; set GOMEMLIMIT to ~90% of the limit`
		}
	}
	return c
}

func checkBacklog(s *Snapshot, n int, key, why string) Check {
	c := minCheck(s, key, BacklogNeeded(n), BacklogNeeded(n))
	if c.Status == StatusLow {
		c.Note = why
		if key == "net.ipv4.tcp_max_syn_backlog" {
			if sc, ok := s.sysctlInt("net.ipv4.tcp_syncookies"); ok && sc == 0 {
				c.Note += "; tcp_syncookies is 0, so SYNs beyond it are dropped"
			}
		}
	}
	return c
}

func checkNetdevBacklog(s *Snapshot, n int) Check {
	need := netdevBacklogNeeded(n)
	c := minCheck(s, "net.core.netdev_max_backlog", need, need)
	if c.Status == StatusLow {
		c.Note = "per-CPU queue of received packets waiting for the TCP stack; when full packets are dropped before TCP sees them and the second column of /proc/net/softnet_stat grows"
	}
	return c
}

func checkTCPMem(s *Snapshot, n int) Check {
	const key = "net.ipv4.tcp_mem"
	page := int64(max(s.PageSize, 1))
	maxPages := ceilDiv(int64(n)*tcpBufPerConn, page)
	target := []int64{maxPages / 4, maxPages / 2, maxPages}
	c := Check{Name: key, Sysctl: key, Side: SideServer, Recommended: joinInts(target)}
	cur, ok := s.sysctlInts(key)
	if !ok || len(cur) != 3 {
		c.Status = StatusUnknown
		return c
	}
	c.Current = joinInts(cur)
	merged := make([]int64, 3)
	for i := range merged {
		merged[i] = max(cur[i], target[i])
	}
	c.Recommended = joinInts(merged)
	c.Status = StatusOK
	if cur[2] < maxPages {
		c.Status = StatusLow
		c.Note = fmt.Sprintf(`all TCP buffers together, in %d-byte pages: max %s is %s per connection, less than one page in flight on every socket during a broadcast; above it the kernel drops incoming segments and stalls sends (nstat TcpExtTCPMemoryPressures grows) and dmesg says "TCP: out of memory -- consider tuning tcp_mem"`,
			page, fmtBytes(cur[2]*page), fmtBytes(cur[2]*page/int64(n)))
	}
	return c
}

func checkSockBuf(s *Snapshot, n int, key, dir string) Check {
	c := Check{Name: key, Sysctl: key, Side: SideServer}
	cur, ok := s.sysctlInts(key)
	if !ok || len(cur) != 3 {
		c.Status = StatusUnknown
		c.Recommended = fmt.Sprintf("4096 %d 6291456", smallBuffer)
		return c
	}
	c.Current = joinInts(cur)
	c.Recommended = c.Current
	c.Status = StatusOK
	if n >= smallBuffersFrom && cur[1] > smallBuffer {
		c.Recommended = joinInts([]int64{cur[0], smallBuffer, max(cur[2], smallBuffer)})
		c.Status = StatusHigh
		c.Note = fmt.Sprintf("default %s buffer of every socket; idle sockets hold no buffer bytes either way, but a burst that fills it on all %d sockets is %s%s, so the kernel enters memory pressure and drops segments; the max still serves the few busy sockets",
			dir, n, fmtBytes(cur[1]*int64(n)), tcpMemMax(s))
	}
	return c
}

// tcpMemMax is " against tcp_mem's max of X", or "" when unknown.
func tcpMemMax(s *Snapshot) string {
	if v, ok := s.sysctlInts("net.ipv4.tcp_mem"); ok && len(v) == 3 {
		return " against tcp_mem's max of " + fmtBytes(v[2]*int64(max(s.PageSize, 1)))
	}
	return ""
}

func checkConntrack(s *Snapshot, n int) Check {
	const key = "net.netfilter.nf_conntrack_max"
	if _, ok := s.Sysctls[key]; !ok && s.NetSysctls {
		return Check{Name: key, Sysctl: key, Side: SideServer, Current: "not loaded", Recommended: "-", Status: StatusOK}
	}
	need := conntrackNeeded(n)
	c := minCheck(s, key, need, nextPow2(need))
	if c.Status == StatusLow {
		c.Note = `connection tracking holds one entry (~300 B) per connection; when full dmesg says "nf_conntrack: table full, dropping packet" and new connections time out; or bypass it for the Surge port with a NOTRACK rule in the raw table`
	}
	return c
}

func checkKeepalive(s *Snapshot) Check {
	const key = "net.ipv4.tcp_keepalive_time"
	c := Check{Name: key, Sysctl: key, Side: SideServer, Recommended: "keep", Status: StatusInfo,
		Note: "not needed by Surge: WebSocket pings (--ping-interval 25s, --pong-timeout 10s) find dead peers and keep NAT and load-balancer mappings alive"}
	if v, ok := s.Sysctls[key]; ok {
		c.Current = v
	} else {
		c.Status = StatusUnknown
	}
	return c
}

func checkPortRange(s *Snapshot, n int) Check {
	const key = "net.ipv4.ip_local_port_range"
	c := Check{Name: key, Sysctl: key, Side: SideClient, Recommended: "1024 65535", Status: StatusInfo}
	cur, ok := s.sysctlInts(key)
	if !ok || len(cur) != 2 || cur[1] < cur[0] {
		c.Status = StatusUnknown
		return c
	}
	c.Current = joinInts(cur)
	ports := cur[1] - cur[0] + 1
	if ports >= 65535-1024+1 {
		c.Recommended = c.Current
	}
	c.Note = fmt.Sprintf("load generators: %d ports per source address per server ip:port, so %d connections need %d source addresses (%d with 1024-65535); not a server limit",
		ports, n, ceilDiv(int64(n), ports), ceilDiv(int64(n), 65535-1024+1))
	return c
}

func checkTWReuse(s *Snapshot) Check {
	const key = "net.ipv4.tcp_tw_reuse"
	c := Check{Name: key, Sysctl: key, Side: SideClient, Recommended: "1", Status: StatusInfo,
		Note: "load generators: lets new outgoing connections reuse ports in TIME_WAIT (2 = loopback only); without it reconnect churn ends in \"connect: cannot assign requested address\""}
	if v, ok := s.Sysctls[key]; ok {
		c.Current = v
		if v == "1" {
			c.Note = ""
		}
	} else {
		c.Status = StatusUnknown
	}
	return c
}

// minCheck is a single-integer sysctl that must be at least need; rec is
// the value recommended when it is lower (never below need).
func minCheck(s *Snapshot, key string, need, rec int64) Check {
	rec = max(rec, need)
	c := Check{Name: key, Sysctl: key, Side: SideServer, Recommended: strconv.FormatInt(rec, 10)}
	cur, ok := s.sysctlInt(key)
	if !ok {
		c.Status = StatusUnknown
		return c
	}
	c.Current = strconv.FormatInt(cur, 10)
	if cur >= need {
		c.Status = StatusOK
		c.Recommended = strconv.FormatInt(max(cur, rec), 10)
		return c
	}
	c.Status = StatusLow
	return c
}

func nextPow2(v int64) int64 {
	p := int64(1)
	for p < v && p < math.MaxInt64/2 {
		p <<= 1
	}
	return p
}

func ceilDiv(a, b int64) int64 {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func joinInts(v []int64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatInt(x, 10)
	}
	return strings.Join(s, " ")
}

func fmtLimit(v int64) string {
	if v == math.MaxInt64 {
		return "unlimited"
	}
	return strconv.FormatInt(v, 10)
}

// fmtBytes renders a byte count with a binary unit: "3.7 KiB", "615 MiB",
// "22.8 GiB".
func fmtBytes[T int64 | float64](v T) string {
	f := float64(v)
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for math.Abs(f) >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	switch {
	case i == 0:
		return fmt.Sprintf("%.0f B", f)
	case math.Abs(f) >= 100:
		return fmt.Sprintf("%.0f %s", f, units[i])
	default:
		return fmt.Sprintf("%.1f %s", f, units[i])
	}
}
