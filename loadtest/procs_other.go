//go:build !linux

package loadtest

import (
	"os"
	"syscall"
)

// childSysProcAttr: no parent-death signal off Linux; the parent still
// stops its children on every exit path it controls.
func childSysProcAttr() *syscall.SysProcAttr { return nil }

// terminate ends p; off Linux it is killed outright.
func terminate(p *os.Process) error { return p.Kill() }

// raiseOpenFileLimit is unknown off Linux: --procs 0 then means 1.
func raiseOpenFileLimit() (uint64, bool) { return 0, false }
