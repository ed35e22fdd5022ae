package engine

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// SampledHandler wraps a slog.Handler so that a storm of similar records
// cannot flood the log: records are grouped by message and the value of
// their "reason" attribute, at most PerSecond of each group are written per
// second, and the first record of a group after suppression carries
// "suppressed"=N, the number dropped since. Records at Warn and above are
// never dropped. Safe for concurrent use.
type SampledHandler struct {
	next      slog.Handler
	perSecond int
	now       func() time.Time
	state     *sampleState
}

type sampleState struct {
	mu     sync.Mutex
	groups map[sampleKey]*sampleGroup
}

type sampleKey struct{ msg, reason string }

type sampleGroup struct {
	second     int64
	n          int
	suppressed int
}

// NewSampledHandler returns next sampled to perSecond records per group
// (default 10 when perSecond ≤ 0).
func NewSampledHandler(next slog.Handler, perSecond int) *SampledHandler {
	if perSecond <= 0 {
		perSecond = 10
	}
	return &SampledHandler{next: next, perSecond: perSecond, now: time.Now,
		state: &sampleState{groups: make(map[sampleKey]*sampleGroup)}}
}

// Enabled implements slog.Handler.
func (h *SampledHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h *SampledHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	key := sampleKey{msg: r.Message}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" {
			key.reason = a.Value.String()
			return false
		}
		return true
	})
	sec := h.now().Unix()
	st := h.state
	st.mu.Lock()
	g := st.groups[key]
	if g == nil {
		if len(st.groups) > 1024 { // bound the map: forget old groups
			for k, v := range st.groups {
				if v.second < sec-1 {
					delete(st.groups, k)
				}
			}
		}
		g = &sampleGroup{second: sec}
		st.groups[key] = g
	}
	if g.second != sec {
		g.second, g.n = sec, 0
	}
	g.n++
	if g.n > h.perSecond {
		g.suppressed++
		st.mu.Unlock()
		return nil
	}
	suppressed := g.suppressed
	g.suppressed = 0
	st.mu.Unlock()
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *SampledHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	return &c
}

// WithGroup implements slog.Handler.
func (h *SampledHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}
