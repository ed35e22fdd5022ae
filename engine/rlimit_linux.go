//go:build linux

package engine

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// raiseFileLimit lifts the RLIMIT_NOFILE soft limit to the hard limit.
func raiseFileLimit(log *slog.Logger) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot read the open-file limit", "err", err)
		return
	}
	soft := rl.Cur
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			log.Warn("cannot raise the open-file limit", "soft", soft, "hard", rl.Max, "err", err)
			return
		}
	}
	log.Info("open-file limit", "soft_was", soft, "soft", rl.Cur, "hard", rl.Max)
}
