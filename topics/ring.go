package topics

import (
	"time"

	"github.com/surgepush/surge/conn"
)

// ring is a topic's history: the last N messages, oldest first, each with
// the time it was published. It allocates its slots on first use.
type ring struct {
	cap   int
	buf   []entry
	start int // index of the oldest entry
	n     int
}

type entry struct {
	seq uint64
	msg *conn.Message
	at  int64 // registry ms
}

func (r *ring) init(capacity int) { r.cap = capacity }

func (r *ring) len() int { return r.n }

func (r *ring) push(seq uint64, m *conn.Message, at int64) {
	if r.cap <= 0 {
		return
	}
	if r.buf == nil {
		r.buf = make([]entry, r.cap)
	}
	if r.n < r.cap {
		r.buf[(r.start+r.n)%r.cap] = entry{seq, m, at}
		r.n++
		return
	}
	r.buf[r.start] = entry{seq, m, at}
	r.start = (r.start + 1) % r.cap
}

// expire drops entries older than ttl (0: keep all).
func (r *ring) expire(now int64, ttl time.Duration) {
	limit := ttl.Milliseconds()
	switch {
	case ttl <= 0:
		return // no age limit
	case limit == 0:
		limit = 1 // under a millisecond: the clock's resolution
	}
	for r.n > 0 && now-r.buf[r.start].at > limit {
		r.buf[r.start] = entry{}
		r.start = (r.start + 1) % r.cap
		r.n--
	}
}

// oldest returns the oldest retained seq, or 0 when empty.
func (r *ring) oldest() uint64 {
	if r.n == 0 {
		return 0
	}
	return r.buf[r.start].seq
}

func (r *ring) each(f func(*entry)) {
	for i := 0; i < r.n; i++ {
		f(&r.buf[(r.start+i)%r.cap])
	}
}
