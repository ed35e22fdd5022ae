package tuning

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"
)

// Exit codes of Main.
const (
	exitOK    = 0
	exitFail  = 1 // writing the snippet or applying it failed, or --apply without root
	exitUsage = 2
)

const defaultConns = 100_000

// Report is the --json output of surge tune.
type Report struct {
	Conns    int      `json:"conns"`
	Root     string   `json:"root"`
	Checks   []Check  `json:"checks"`
	Capacity Capacity `json:"capacity"`
	// SysctlFile is the snippet written with --write-sysctl.
	SysctlFile string `json:"sysctl_file,omitempty"`
	// Applied lists the changes --apply made (Checks then show the state
	// after them).
	Applied []Change `json:"applied,omitempty"`
}

// Main runs `surge tune`: args are the arguments after "tune". It prints
// the checks for --conns connections and the capacity estimate to stdout
// (JSON with --json) and errors to stderr. It returns 0 whatever the
// checks say, 1 when --write-sysctl or --apply failed or --apply was asked
// for without root, and 2 on a usage error.
func Main(args []string, stdout, stderr io.Writer) int {
	return run(args, stdout, stderr, Source{}, os.Geteuid)
}

// run is Main with the machine injected: src (its Root is the --root
// default) and the effective user id.
func run(args []string, stdout, stderr io.Writer, src Source, euid func() int) int {
	fs := flag.NewFlagSet("surge tune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defRoot := src.Root
	if defRoot == "" {
		defRoot = "/"
	}
	conns := fs.Int("conns", defaultConns, "connections to plan for")
	asJSON := fs.Bool("json", false, "print a JSON report instead of the table")
	sysctlFile := fs.String("write-sysctl", "", "write a sysctl.d snippet with the recommended values to this file (it is not applied)")
	apply := fs.Bool("apply", false, "also set the needed sysctls now by writing /proc/sys, printing each change (root only)")
	fs.StringVar(&src.Root, "root", defRoot, "read (and with --apply write) the /proc and /sys of this directory tree instead of /")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: surge tune [--conns N] [--json] [--write-sysctl FILE] [--apply]

Checks the open-file limits, sysctls and memory of this machine against what
N connections need, and estimates how many idle connections it can hold.
Nothing is changed unless --apply is given (as root). Guide: tuning/README.md.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "surge tune: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if *conns <= 0 {
		fmt.Fprintln(stderr, "surge tune: --conns must be positive")
		return exitUsage
	}
	if *apply && euid() != 0 {
		fmt.Fprintf(stderr, "surge tune: --apply needs root (euid is %d); write the snippet with --write-sysctl and install it with sudo\n", euid())
		return exitFail
	}

	snap := Read(src)
	checks := Checks(snap, *conns)
	rep := Report{Conns: *conns, Root: snap.Root}
	code := exitOK
	if *sysctlFile != "" {
		if err := os.WriteFile(*sysctlFile, Snippet(checks, *conns), 0o644); err != nil {
			fmt.Fprintf(stderr, "surge tune: %v\n", err)
			code = exitFail
		} else {
			rep.SysctlFile = *sysctlFile
		}
	}
	if *apply {
		out := stdout
		if *asJSON {
			out = stderr
		}
		changes, err := Apply(snap.Root, checks, out)
		if len(changes) == 0 {
			fmt.Fprintln(out, "surge tune: no sysctl needs a change")
		}
		if err != nil {
			code = exitFail
		}
		rep.Applied = changes
		snap = Read(src)
		checks = Checks(snap, *conns)
		if !*asJSON {
			fmt.Fprintln(out)
		}
	}
	rep.Checks = checks
	rep.Capacity = Estimate(snap)

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "surge tune: %v\n", err)
			return exitFail
		}
		return code
	}
	writeText(stdout, &rep)
	return code
}

// writeText prints rep as a table, notes, the capacity estimate and what
// to do next.
func writeText(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "surge tune: %s against --conns %d\n\n", machineName(rep.Root), rep.Conns)
	rows := [][]string{{"setting", "current", fmt.Sprintf("recommended for --conns %d", rep.Conns), "status"}}
	for _, c := range rep.Checks {
		cur := c.Current
		if cur == "" {
			cur = "?"
		}
		status := string(c.Status)
		if c.Side == SideClient {
			status += " (load generators)"
		}
		rows = append(rows, []string{c.Name, cur, c.Recommended, status})
	}
	writeTable(w, rows)

	var notes []string
	for _, c := range rep.Checks {
		if c.Note != "" {
			notes = append(notes, fmt.Sprintf("  %s [%s]: %s", c.Name, c.Status, c.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nnotes:\n%s\n", strings.Join(notes, "\n"))
	}

	cp := rep.Capacity
	fmt.Fprintf(w, "\ncapacity of this machine for surge serve (idle connections at %s Surge + %s kernel each):\n",
		fmtBytes(SurgeBytesPerConn), fmtBytes(KernelBytesPerConn))
	if cp.ByOpenFiles != nil {
		fmt.Fprintf(w, "  by open files: %d  (limit %d - %d reserved)\n", *cp.ByOpenFiles, *cp.OpenFileLimit, cp.FileReserve)
	} else {
		fmt.Fprintln(w, "  by open files: unknown")
	}
	if cp.ByMemory != nil {
		fmt.Fprintf(w, "  by memory:     %d  (%s available / %s)\n", *cp.ByMemory, fmtBytes(*cp.MemoryBudget), fmtBytes(SurgeBytesPerConn+KernelBytesPerConn))
	} else {
		fmt.Fprintln(w, "  by memory:     unknown")
	}
	if cp.Connections != nil {
		fmt.Fprintf(w, "  estimate:      %d connections, limited by %s\n", *cp.Connections, cp.LimitedBy)
	} else {
		fmt.Fprintln(w, "  estimate:      unknown")
	}
	if cp.AcceptBacklog != nil && cp.EphemeralPorts != nil {
		fmt.Fprintf(w, "  not capacity limits: somaxconn %d bounds connect bursts; %d ephemeral ports bound each load-generator source address per server ip:port\n",
			*cp.AcceptBacklog, *cp.EphemeralPorts)
	}

	fmt.Fprintln(w)
	if rep.SysctlFile != "" {
		fmt.Fprintf(w, "wrote %s: install it with `cp %s /etc/sysctl.d/60-surge.conf && sysctl --system`\n", rep.SysctlFile, rep.SysctlFile)
	} else {
		fmt.Fprintf(w, "next: surge tune --conns %d --write-sysctl 60-surge.conf, then install it in /etc/sysctl.d and run sysctl --system\n", rep.Conns)
	}
	for _, c := range rep.Checks {
		if c.Name == nameNoFile && c.Status == StatusLow {
			fmt.Fprintf(w, "open files: LimitNOFILE=%s in the surge systemd unit (or nofile in /etc/security/limits.conf)\n", c.Recommended)
		}
	}
}

func machineName(root string) string {
	if root == "/" {
		return "this machine"
	}
	return "the tree at " + root
}

// writeTable prints rows as a " | "-separated table with a rule under the
// header row.
func writeTable(w io.Writer, rows [][]string) {
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, cell := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		for i, cell := range r {
			if i > 0 {
				b.WriteString(" | ")
			}
			b.WriteString(cell)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell)))
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	rule := make([]string, len(widths))
	for i, n := range widths {
		rule[i] = strings.Repeat("-", n)
	}
	fmt.Fprintln(w, strings.Join(rule, "-+-"))
	for _, r := range rows[1:] {
		line(r)
	}
}
