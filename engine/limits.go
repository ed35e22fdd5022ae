package engine

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// bucket is a token bucket: rate tokens per second, up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take refills b at rate/s up to burst and takes one token if available.
func (b *bucket) take(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(burst, b.tokens+dt*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// connLimiter enforces ConnRate and ConnRatePerIP at accept time.
type connLimiter struct {
	rate, perIP float64
	mu          sync.Mutex
	global      bucket
	ips         map[netip.Addr]*bucket
	now         func() time.Time
}

func newConnLimiter(rate, perIP int) *connLimiter {
	if rate <= 0 && perIP <= 0 {
		return nil
	}
	return &connLimiter{rate: float64(rate), perIP: float64(perIP), ips: make(map[netip.Addr]*bucket), now: time.Now}
}

// allow reports whether a new connection from remote may proceed, and
// which limit refused it.
func (l *connLimiter) allow(remote string) (ok bool, which string) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rate > 0 && !l.global.take(now, l.rate, l.rate) {
		return false, "conn_rate"
	}
	if l.perIP <= 0 {
		return true, ""
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return true, ""
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return true, ""
	}
	ip = ip.Unmap()
	b := l.ips[ip]
	if b == nil {
		if len(l.ips) >= 1<<16 { // bound the map: forget full buckets
			for k, v := range l.ips {
				if now.Sub(v.last).Seconds()*l.perIP >= l.perIP {
					delete(l.ips, k)
				}
			}
		}
		b = new(bucket)
		l.ips[ip] = b
	}
	if !b.take(now, l.perIP, l.perIP) {
		return false, "conn_rate_per_ip"
	}
	return true, ""
}

// originAllowed reports whether origin matches one of patterns: exact, or
// with "*." standing for any subdomain ("https://*.example.com").
func originAllowed(patterns []string, origin string) bool {
	if len(patterns) == 0 || origin == "" {
		return true
	}
	origin = strings.ToLower(origin)
	for _, p := range patterns {
		if p == "*" || p == origin {
			return true
		}
		if i := strings.Index(p, "*."); i >= 0 {
			prefix, suffix := p[:i], p[i+1:] // "https://", ".example.com"
			if strings.HasPrefix(origin, prefix) && strings.HasSuffix(origin, suffix) && len(origin) > len(prefix)+len(suffix) {
				host := origin[len(prefix) : len(origin)-len(suffix)]
				if !strings.ContainsAny(host, "/:") {
					return true
				}
			}
		}
	}
	return false
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.ToLower(strings.TrimSpace(p)); p != "" {
			out = append(out, p)
		}
	}
	return out
}
