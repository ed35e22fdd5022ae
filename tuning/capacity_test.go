package tuning

import (
	"testing"
)

func TestEstimate(t *testing.T) {
	perConn := SurgeBytesPerConn + KernelBytesPerConn
	tests := []struct {
		name      string
		files     map[string]string
		nofile    func() (Rlimit, error)
		want      *int64
		limitedBy string
		byFiles   *int64
		byMemory  *int64
	}{
		{
			name:   "open files bind (this machine's 20k cap)",
			files:  with(goodTree(), map[string]string{"proc/meminfo": meminfo(24*gib, 23*gib)}),
			nofile: noFile(20000, 20000),
			want:   ptr[int64](18976), limitedBy: "open files",
			byFiles: ptr[int64](20000 - FileReserve), byMemory: ptr(int64(float64(23*gib) / perConn)),
		},
		{
			name:   "memory binds",
			files:  with(goodTree(), map[string]string{"proc/meminfo": meminfo(2*gib, gib)}),
			nofile: noFile(1048576, 1048576),
			want:   ptr(int64(float64(gib) / perConn)), limitedBy: "memory",
			byFiles: ptr[int64](1048576 - FileReserve), byMemory: ptr(int64(float64(gib) / perConn)),
		},
		{
			name: "cgroup room cuts the memory budget",
			files: with(goodTree(), map[string]string{
				"proc/self/cgroup":                   "0::/surge\n",
				"sys/fs/cgroup/surge/memory.max":     "2147483648\n",
				"sys/fs/cgroup/surge/memory.current": "1073741824\n",
			}),
			nofile: noFile(1048576, 1048576),
			want:   ptr(int64(float64(gib) / perConn)), limitedBy: "memory",
			byFiles: ptr[int64](1048576 - FileReserve), byMemory: ptr(int64(float64(gib) / perConn)),
		},
		{
			name:   "file-max minus open files cuts the rlimit",
			files:  with(goodTree(), map[string]string{"proc/sys/fs/file-nr": "10000\t0\t60000\n"}),
			nofile: noFile(1048576, 1048576),
			want:   ptr[int64](50000 - FileReserve), limitedBy: "open files",
			byFiles: ptr[int64](50000 - FileReserve), byMemory: ptr(int64(float64(30*gib) / perConn)),
		},
		{
			name:   "rlimit unknown: memory alone",
			files:  goodTree(),
			nofile: noFileUnknown,
			want:   ptr(int64(float64(30*gib) / perConn)), limitedBy: "memory",
			byMemory: ptr(int64(float64(30*gib) / perConn)),
		},
		{
			name:      "nothing known",
			files:     map[string]string{},
			nofile:    noFileUnknown,
			limitedBy: "unknown",
		},
	}
	eq := func(a, b *int64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	show := func(p *int64) any {
		if p == nil {
			return "nil"
		}
		return *p
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Estimate(Read(source(writeTree(t, tt.files), tt.nofile)))
			if !eq(c.Connections, tt.want) || c.LimitedBy != tt.limitedBy {
				t.Errorf("estimate %v limited by %q, want %v by %q", show(c.Connections), c.LimitedBy, show(tt.want), tt.limitedBy)
			}
			if !eq(c.ByOpenFiles, tt.byFiles) || !eq(c.ByMemory, tt.byMemory) {
				t.Errorf("by files %v by memory %v, want %v %v", show(c.ByOpenFiles), show(c.ByMemory), show(tt.byFiles), show(tt.byMemory))
			}
		})
	}
}

func TestEstimateReportsNonLimits(t *testing.T) {
	c := Estimate(Read(source(writeTree(t, lowTree()), noFile(1024, 4096))))
	if c.AcceptBacklog == nil || *c.AcceptBacklog != 128 {
		t.Errorf("accept backlog %v, want 128", c.AcceptBacklog)
	}
	if c.EphemeralPorts == nil || *c.EphemeralPorts != 60999-32768+1 {
		t.Errorf("ephemeral ports %v, want 28232", c.EphemeralPorts)
	}
	if c.SurgeBytesPerConn != 2662.4 || c.KernelBytesPerConn != 3788.8 || c.FileReserve != 1024 {
		t.Errorf("constants %v %v %v", c.SurgeBytesPerConn, c.KernelBytesPerConn, c.FileReserve)
	}
}
