// Package tuning holds the kernel and ulimit guide (README.md in this
// folder) for running Surge with hundreds of thousands of connections, and
// the checks behind `surge tune`.
//
// The checks read a machine's state from a directory tree laid out like
// the root file system (Source.Root: <root>/proc/sys/…, <root>/proc/meminfo,
// <root>/proc/self/cgroup, <root>/sys/fs/cgroup/…) and take the open-file
// limit from an injectable function, so tests feed them fake trees. Read
// returns a Snapshot; Checks compares it with what a number of connections
// needs; Estimate turns it into a connection capacity from the measured
// per-connection costs (SurgeBytesPerConn, KernelBytesPerConn); Snippet and
// Apply write a sysctl.d file and, as root, the values themselves.
// ServeWarnings is the one-line-per-problem summary `surge serve` logs at
// start.
//
// Nothing here keeps state between calls: every function may be called
// from several goroutines at once. Apply writes to the tree it is given
// and nothing else.
package tuning
