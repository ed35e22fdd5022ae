//go:build !linux

package loadtest

import (
	"syscall"
	"time"
)

// bindNoPort is a no-op where IP_BIND_ADDRESS_NO_PORT does not exist.
func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }

// processRSS is unknown off Linux.
func processRSS() (int64, bool) { return 0, false }

// openFileLimit is unknown off Linux.
func openFileLimit() (uint64, bool) { return 0, false }

// processCPU is unknown off Linux.
func processCPU() (time.Duration, bool) { return 0, false }
