package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// ErrNotLoopback is returned, before any packet is sent, when a target host
// resolves to an address outside 127.0.0.0/8 and ::1 and the config does not
// set AllowRemote.
var ErrNotLoopback = errors.New("loadtest: target is not a loopback address (set AllowRemote / --allow-remote to load a remote host)")

// target is a checked endpoint: the URL as the user gave it (its host goes
// into the Host header) and the one resolved address every socket dials.
type target struct {
	url  *url.URL
	addr netip.AddrPort
}

// resolveTarget parses raw, whose scheme must be one of schemes, resolves its
// host and, unless allowRemote, refuses it when any resolved address is not
// loopback. prefer, when valid, picks an address of the same family (so it
// matches the source addresses).
func resolveTarget(ctx context.Context, raw string, schemes []string, allowRemote bool, prefer netip.Addr) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("loadtest: bad URL %q: %w", raw, err)
	}
	scheme := strings.ToLower(u.Scheme)
	okScheme := false
	for _, s := range schemes {
		okScheme = okScheme || scheme == s
	}
	if !okScheme {
		return target{}, fmt.Errorf("loadtest: URL %q: scheme must be one of %v", raw, schemes)
	}
	host := u.Hostname()
	if host == "" {
		return target{}, fmt.Errorf("loadtest: URL %q has no host", raw)
	}
	port := 80
	if p := u.Port(); p != "" {
		port, err = strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return target{}, fmt.Errorf("loadtest: URL %q: bad port %q", raw, p)
		}
	}
	addrs, err := lookupHost(ctx, host)
	if err != nil {
		return target{}, err
	}
	if !allowRemote {
		for _, a := range addrs {
			if !isLoopback(a) {
				return target{}, fmt.Errorf("%w: %s resolves to %s", ErrNotLoopback, host, a)
			}
		}
	}
	pick := addrs[0]
	for _, a := range addrs {
		if prefer.IsValid() && a.Is4() == prefer.Unmap().Is4() {
			pick = a
			break
		}
		if !prefer.IsValid() && a.Is4() {
			pick = a
			break
		}
	}
	return target{url: u, addr: netip.AddrPortFrom(pick, uint16(port))}, nil
}

// lookupHost returns the addresses of host: the literal itself for an IP
// literal (no lookup is made), else the resolver's answer.
func lookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap().WithZone("")}, nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("loadtest: resolve %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("loadtest: resolve %q: no addresses", host)
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	return addrs, nil
}

// isLoopback reports whether a is in 127.0.0.0/8 or is ::1 (IPv4-mapped
// IPv6 addresses count as their IPv4 address).
func isLoopback(a netip.Addr) bool {
	return a.Unmap().IsLoopback()
}

// statsURLFor derives the stats endpoint from a ws:// URL:
// ws://host:port/anything → http://host:port/v1/stats.
func statsURLFor(u *url.URL) string {
	s := url.URL{Scheme: "http", Host: u.Host, Path: "/v1/stats"}
	return s.String()
}

// maxSourceIPs bounds a parsed source list (and so the work of expanding a
// range).
const maxSourceIPs = 4096

// ParseSourceIPs parses a comma-separated list of source addresses and
// inclusive ranges, e.g. "127.0.0.2-127.0.0.20,127.0.1.1". Both ends of a
// range must be of the same family and in order. An empty string gives nil
// (the kernel picks the source). At most 4096 addresses are accepted.
func ParseSourceIPs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("loadtest: source address %q: %w", part, err)
		}
		first = first.Unmap()
		if !isRange {
			out = append(out, first)
			if len(out) > maxSourceIPs {
				return nil, fmt.Errorf("loadtest: more than %d source addresses", maxSourceIPs)
			}
			continue
		}
		last, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil {
			return nil, fmt.Errorf("loadtest: source range %q: %w", part, err)
		}
		last = last.Unmap()
		if first.Is4() != last.Is4() {
			return nil, fmt.Errorf("loadtest: source range %q mixes IPv4 and IPv6", part)
		}
		if last.Less(first) {
			return nil, fmt.Errorf("loadtest: source range %q ends before it starts", part)
		}
		for a := first; ; a = a.Next() {
			out = append(out, a)
			if len(out) > maxSourceIPs {
				return nil, fmt.Errorf("loadtest: more than %d source addresses", maxSourceIPs)
			}
			if a == last {
				break
			}
		}
	}
	return out, nil
}
