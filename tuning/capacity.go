package tuning

// Capacity is how many idle connections one surge serve process can hold
// on the machine a Snapshot describes, from the measured per-connection
// costs. Nil pointers are unknown (null in JSON).
type Capacity struct {
	// Connections is min(ByOpenFiles, ByMemory), or the one that is known.
	Connections *int64 `json:"connections"`
	// LimitedBy names the binding limit: "open files", "memory", or
	// "unknown".
	LimitedBy string `json:"limited_by"`
	// ByOpenFiles is OpenFileLimit − FileReserve.
	ByOpenFiles *int64 `json:"by_open_files"`
	// ByMemory is MemoryBudget / (SurgeBytesPerConn + KernelBytesPerConn).
	ByMemory *int64 `json:"by_memory"`
	// OpenFileLimit is Snapshot.FileLimit: the hard RLIMIT_NOFILE, cut to
	// the room left under fs.file-max.
	OpenFileLimit *int64 `json:"open_file_limit"`
	FileReserve   int64  `json:"file_reserve"`
	// MemoryBudget is Snapshot.MemoryBudget in bytes.
	MemoryBudget       *int64  `json:"memory_budget_bytes"`
	SurgeBytesPerConn  float64 `json:"surge_bytes_per_conn"`
	KernelBytesPerConn float64 `json:"kernel_bytes_per_conn"`

	// AcceptBacklog (somaxconn) and EphemeralPorts (per client source
	// address and server ip:port) are not capacity limits; they bound
	// connect bursts and each load-generator address.
	AcceptBacklog  *int64 `json:"accept_backlog"`
	EphemeralPorts *int64 `json:"ephemeral_ports"`
}

// Estimate computes the Capacity of the machine s describes:
// min(open-file limit − FileReserve, memory budget / (2.6 KiB + 3.7 KiB)).
func Estimate(s *Snapshot) Capacity {
	c := Capacity{
		LimitedBy:          "unknown",
		FileReserve:        FileReserve,
		SurgeBytesPerConn:  SurgeBytesPerConn,
		KernelBytesPerConn: KernelBytesPerConn,
	}
	if l := s.FileLimit(); l >= 0 {
		c.OpenFileLimit = ptr(l)
		c.ByOpenFiles = ptr(max(l-FileReserve, 0))
	}
	if m := s.MemoryBudget(); m >= 0 {
		c.MemoryBudget = ptr(m)
		c.ByMemory = ptr(int64(float64(m) / (SurgeBytesPerConn + KernelBytesPerConn)))
	}
	switch f, m := c.ByOpenFiles, c.ByMemory; {
	case f != nil && (m == nil || *f <= *m):
		c.Connections, c.LimitedBy = ptr(*f), "open files"
	case m != nil:
		c.Connections, c.LimitedBy = ptr(*m), "memory"
	}
	if v, ok := s.sysctlInt("net.core.somaxconn"); ok {
		c.AcceptBacklog = ptr(v)
	}
	if r, ok := s.sysctlInts("net.ipv4.ip_local_port_range"); ok && len(r) == 2 && r[1] >= r[0] {
		c.EphemeralPorts = ptr(r[1] - r[0] + 1)
	}
	return c
}

func ptr[T any](v T) *T { return &v }
