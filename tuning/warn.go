package tuning

import "fmt"

// ServeWarnings returns one line per limit of the machine under root ("" or
// "/" for this one) that cannot hold maxConns connections: the open-file
// limit, fs.file-max and net.core.somaxconn. It returns nil when maxConns
// is not positive or nothing is short, and says nothing about what it
// cannot read. The open-file limit is the process's (getrlimit(2)); its
// hard value is compared, because surge serve raises the soft limit to the
// hard one at start.
//
// surge serve logs each line as a warning at start (the engine calls this
// with its configured maximum connections).
func ServeWarnings(root string, maxConns int) []string {
	return Source{Root: root}.ServeWarnings(maxConns)
}

// ServeWarnings is the package-level ServeWarnings reading from src.
func (src Source) ServeWarnings(maxConns int) []string {
	if maxConns <= 0 {
		return nil
	}
	s := Read(src)
	var out []string
	need := FilesNeeded(maxConns)
	if s.NoFile != nil && clampInt64(s.NoFile.Hard) < need {
		out = append(out, fmt.Sprintf("open-file limit %d cannot hold %d connections (need %d): accepts will fail with EMFILE; set LimitNOFILE=%d or nofile in /etc/security/limits.conf (tuning/README.md)",
			clampInt64(s.NoFile.Hard), maxConns, need, RecommendedFiles(maxConns)))
	}
	if fm, ok := s.sysctlInt("fs.file-max"); ok && fm < need {
		out = append(out, fmt.Sprintf("fs.file-max %d cannot hold %d connections (need %d): accepts will fail with ENFILE; sysctl -w fs.file-max=%d (tuning/README.md)",
			fm, maxConns, need, nextPow2(2*need)))
	}
	if sc, ok := s.sysctlInt("net.core.somaxconn"); ok && sc < BacklogNeeded(maxConns) {
		out = append(out, fmt.Sprintf("net.core.somaxconn %d is short for %d connections (want %d): reconnect storms will overflow the accept queue; sysctl -w net.core.somaxconn=%d (tuning/README.md)",
			sc, maxConns, BacklogNeeded(maxConns), BacklogNeeded(maxConns)))
	}
	return out
}
