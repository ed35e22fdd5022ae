//go:build unix

package tuning

import (
	"os"

	"golang.org/x/sys/unix"
)

// getNoFile is RLIMIT_NOFILE of this process.
func getNoFile() (Rlimit, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return Rlimit{}, os.NewSyscallError("getrlimit", err)
	}
	return Rlimit{Soft: uint64(rl.Cur), Hard: uint64(rl.Max)}, nil
}
