package tuning

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// needsChange reports whether Snippet writes c as an active line and Apply
// sets it: a server-side sysctl whose status is low or high.
func needsChange(c Check) bool {
	return c.Sysctl != "" && c.Side == SideServer && (c.Status == StatusLow || c.Status == StatusHigh)
}

// Snippet renders a sysctl.d file for conns connections from checks:
// active lines for the server sysctls that need a change, commented lines
// for those already sufficient (uncomment to pin them across reboots) and
// for the load-generator ones, and the open-file limit as a comment
// (it is not a sysctl).
func Snippet(checks []Check, conns int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Surge: kernel settings for %d connections, written by `surge tune --conns %d`.\n", conns, conns)
	b.WriteString("# Install: cp THIS-FILE /etc/sysctl.d/60-surge.conf && sysctl --system\n")
	b.WriteString("# Guide: tuning/README.md.\n")
	for _, c := range checks {
		if c.Name == nameNoFile {
			fmt.Fprintf(&b, "#\n# The open-file limit is not a sysctl: LimitNOFILE=%s in the surge unit, or\n", c.Recommended)
			fmt.Fprintf(&b, "# \"surge soft nofile %s\" and \"surge hard nofile %s\" in /etc/security/limits.conf.\n", c.Recommended, c.Recommended)
		}
	}

	section := func(title string, active bool, keep func(Check) bool) {
		first := true
		for _, c := range checks {
			if !keep(c) {
				continue
			}
			if first {
				fmt.Fprintf(&b, "\n# %s\n", title)
				first = false
			}
			prefix := ""
			if !active {
				prefix = "# "
			}
			fmt.Fprintf(&b, "%s%s = %s\n", prefix, c.Sysctl, c.Recommended)
		}
	}
	section("Needed (current value too low or too high):", true, needsChange)
	for _, c := range checks {
		if needsChange(c) && c.Sysctl == "net.netfilter.nf_conntrack_max" {
			b.WriteString("# nf_conntrack_max exists only once the nf_conntrack module is loaded: list\n")
			b.WriteString("# nf_conntrack in /etc/modules-load.d/ so the line above applies at boot.\n")
		}
	}
	section("Already sufficient here; uncomment to pin across reboots:", false, func(c Check) bool {
		return c.Sysctl != "" && c.Side == SideServer && c.Status == StatusOK && c.Recommended != "-"
	})
	section("Could not be read here; uncomment if the key exists:", false, func(c Check) bool {
		return c.Sysctl != "" && c.Side == SideServer && c.Status == StatusUnknown
	})
	section("Load-generator machines only (surge load):", false, func(c Check) bool {
		return c.Sysctl != "" && c.Side == SideClient
	})
	return b.Bytes()
}

// Change is one sysctl Apply set (or failed to).
type Change struct {
	Sysctl string `json:"sysctl"`
	From   string `json:"from"`
	To     string `json:"to"`
	Error  string `json:"error,omitempty"`
}

// Apply writes the recommended value of every server sysctl that needs a
// change (those Snippet writes as active lines) to <root>/proc/sys/…,
// printing one line per change to w. It tries every key and returns the
// joined errors of those that failed. It does not check privileges: the
// caller decides (surge tune --apply refuses unless its euid is 0). The
// files must exist; Apply never creates one.
func Apply(root string, checks []Check, w io.Writer) ([]Change, error) {
	if root == "" {
		root = "/"
	}
	var changes []Change
	var errs []error
	for _, c := range checks {
		if !needsChange(c) {
			continue
		}
		ch := Change{Sysctl: c.Sysctl, From: c.Current, To: c.Recommended}
		if err := writeSysctl(root, c.Sysctl, c.Recommended); err != nil {
			ch.Error = err.Error()
			errs = append(errs, err)
			fmt.Fprintf(w, "sysctl %s: %s -> %s: FAILED: %v\n", c.Sysctl, c.Current, c.Recommended, err)
		} else {
			fmt.Fprintf(w, "sysctl %s: %s -> %s\n", c.Sysctl, c.Current, c.Recommended)
		}
		changes = append(changes, ch)
	}
	return changes, errors.Join(errs...)
}

func writeSysctl(root, key, value string) error {
	f, err := os.OpenFile(sysctlPath(root, key), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("tuning: write %s: %w", key, werr)
	}
	return nil
}
