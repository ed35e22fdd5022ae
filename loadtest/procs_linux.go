//go:build linux

package loadtest

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// childSysProcAttr makes the kernel SIGKILL a child when the parent dies,
// even by SIGKILL. (Pdeathsig follows the thread that started the child;
// the parent never locks that goroutine to its thread, so the thread
// outlives the child.)
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// terminate asks p to end (SIGTERM): a child then closes its connections
// and writes its partial report.
func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

// raiseOpenFileLimit raises the soft RLIMIT_NOFILE to the hard one (the Go
// runtime usually did so already) and returns the soft limit in force.
func raiseOpenFileLimit() (uint64, bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	if rl.Cur < rl.Max {
		raised := unix.Rlimit{Cur: rl.Max, Max: rl.Max}
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
			rl.Cur = rl.Max
		}
	}
	return rl.Cur, true
}
