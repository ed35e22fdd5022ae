//go:build linux

package loadtest

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// bindNoPort is a net.Dialer Control function that sets
// IP_BIND_ADDRESS_NO_PORT on the socket before the dialer binds its source
// address. The kernel then defers choosing the source port until connect,
// when it knows the full 4-tuple, so each source address gets the whole
// ephemeral port range per destination instead of per machine.
//
// Kernels (or sandboxes) that lack the option are tolerated: binding then
// works as without the option, only with a smaller port budget.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil && !errors.Is(serr, unix.ENOPROTOOPT) && !errors.Is(serr, unix.EOPNOTSUPP) {
		return os.NewSyscallError("setsockopt IP_BIND_ADDRESS_NO_PORT", serr)
	}
	return nil
}

// processRSS returns this process's resident set size (VmRSS in
// /proc/self/status) in bytes.
func processRSS() (int64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest) // "12345", "kB"
		if len(f) == 0 {
			return 0, false
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, false
		}
		return kb * 1024, true
	}
	return 0, false
}

// openFileLimit returns the soft RLIMIT_NOFILE of this process. (The Go
// runtime raises the soft limit to the hard one at start-up.)
func openFileLimit() (uint64, bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return rl.Cur, true
}

// processCPU returns the CPU time (user + system) this process has used.
func processCPU() (time.Duration, bool) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
