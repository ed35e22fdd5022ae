package conn

import (
	"sync/atomic"

	"github.com/gobwas/ws"
)

// Policy says what a subscriber's full write queue does with one more
// message (a slow consumer).
type Policy uint8

const (
	// PolicyDisconnect closes the connection with 1008 "slow consumer".
	PolicyDisconnect Policy = iota
	// PolicyDropOldest drops the oldest queued messages until the new one fits.
	PolicyDropOldest
	// PolicyConflate keeps only the newest pending message per conflation
	// key: a new message replaces (and moves behind) a pending one with the
	// same key whenever the subscriber is behind; if the queue is still full
	// the oldest messages are dropped. Market data: a subscriber that falls
	// behind gets the latest price, never a stale backlog.
	PolicyConflate
)

var policyNames = [...]string{"disconnect", "drop-oldest", "conflate"}

func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "unknown"
}

// ParsePolicy parses "disconnect", "drop-oldest" or "conflate".
func ParsePolicy(s string) (Policy, bool) {
	for i, n := range policyNames {
		if n == s {
			return Policy(i), true
		}
	}
	return 0, false
}

// Message is one delivery, encoded once and shared read-only by every
// subscriber's write queue.
type Message struct {
	Frame    []byte // complete plain frame
	Deflated []byte // complete permessage-deflate frame (RSV1), or nil
	Key      uint64 // conflation key (PolicyConflate)
	Policy   Policy
}

// Counters count what the overflow policies did; one set per server,
// shared by its connections (updated only on the overflow path).
type Counters struct {
	Dropped      atomic.Int64 // messages dropped by drop-oldest / conflate overflow
	Conflated    atomic.Int64 // pending messages replaced by a newer one with the same key
	SlowClosed   atomic.Int64 // connections closed by the disconnect policy
	DeflatedSent atomic.Int64 // compressed frames queued
}

// SendMessage queues m on the connection, choosing the compressed frame when
// permessage-deflate was negotiated, and applies m.Policy if the queue is
// full. It reports whether m was queued (a conflated predecessor counts as
// replaced, not lost).
func (c *Conn) SendMessage(m *Message) bool {
	return c.SendMessages([]*Message{m}) == 1
}

// SendMessages queues ms in order, as SendMessage does for each, and then
// writes them together: one writev for the batch instead of one per message.
// It returns how many of ms were queued; after a write error or a disconnect
// by policy the rest are not.
func (c *Conn) SendMessages(ms []*Message) int {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return 0
	}
	n := 0
	for _, m := range ms {
		if c.wq != nil && c.flags&flagWaitWrite == 0 && c.fullLocked(len(c.frameFor(m))) {
			// The batch alone would fill the queue of a healthy reader:
			// write what is queued first, so only a real backlog meets the
			// policy.
			if a := c.flushLocked(); a != actNone {
				c.mu.Unlock()
				c.deferAbort(a)
				return n
			}
		}
		if !c.enqueueLocked(m) {
			return n // c.mu released: the disconnect policy closed c
		}
		n++
	}
	a := c.flushLocked()
	c.mu.Unlock()
	c.deferAbort(a)
	if a != actNone {
		return 0
	}
	return n
}

// frameFor returns the frame of m this connection gets: the compressed one
// when permessage-deflate was negotiated and m has one. c.mu must be held.
func (c *Conn) frameFor(m *Message) []byte {
	if c.flags&flagDeflate != 0 && m.Deflated != nil {
		return m.Deflated
	}
	return m.Frame
}

// enqueueLocked appends m's frame (compressed when negotiated) to the write
// queue, applying m.Policy when the queue is full. c.mu must be held and the
// connection open. It returns false, with c.mu released and the connection
// closing, when the disconnect policy refused m.
func (c *Conn) enqueueLocked(m *Message) bool {
	frame := c.frameFor(m)
	if m.Deflated != nil && c.flags&flagDeflate != 0 {
		c.cfg.counters().DeflatedSent.Add(1)
	}
	q := c.wq
	if q != nil && m.Policy == PolicyConflate {
		q.removeKey(m.Key, c.cfg.counters())
	}
	if q != nil && c.fullLocked(len(frame)) {
		if m.Policy == PolicyDisconnect {
			c.mu.Unlock()
			c.cfg.counters().SlowClosed.Add(1)
			c.closeWith(NewCloseFrame(ws.StatusPolicyViolation, "slow consumer"), ReasonWriteQueueFull, false)
			return false
		}
		for c.fullLocked(len(frame)) && q.dropOldest() {
			c.cfg.counters().Dropped.Add(1)
		}
	}
	c.appendLocked(frame)
	c.wq.meta[len(c.wq.meta)-1] = entryMeta{key: m.Key, msg: true}
	return true
}

// deferAbort hands an abort to the wheel instead of closing inline. Send and
// SendMessage run inside fan-outs that hold topic locks, and closing the
// transport inline would call OnClose, which unsubscribes from those topics.
func (c *Conn) deferAbort(a action) {
	if a != actAbort {
		return
	}
	c.mu.Lock()
	if c.state.Load() == stateClosed {
		c.mu.Unlock()
		return
	}
	c.state.Store(stateClosing)
	c.flags |= flagDiscardRead
	c.mark = c.w.Now()
	c.mu.Unlock()
	c.w.Add(c, c.mark)
}

// fullLocked reports whether one more frame of n bytes would overflow.
func (c *Conn) fullLocked(n int) bool {
	q := c.wq
	return q != nil && (len(q.bufs)-q.head >= c.cfg.WriteQueueFrames || q.bytes+n > c.cfg.WriteQueueBytes)
}

// first returns the index of the first entry that may be removed.
func (q *writeQueue) first() int {
	if q.partial {
		return q.head + 1
	}
	return q.head
}

// removeKey removes the pending message with key, if any.
func (q *writeQueue) removeKey(key uint64, ctr *Counters) {
	for i := len(q.bufs) - 1; i >= q.first(); i-- {
		if q.meta[i].msg && q.meta[i].key == key {
			q.remove(i)
			ctr.Conflated.Add(1)
			return
		}
	}
}

// dropOldest removes the oldest droppable message; false if there is none.
func (q *writeQueue) dropOldest() bool {
	for i := q.first(); i < len(q.bufs); i++ {
		if q.meta[i].msg {
			q.remove(i)
			return true
		}
	}
	return false
}

func (q *writeQueue) remove(i int) {
	q.bytes -= len(q.bufs[i])
	copy(q.bufs[i:], q.bufs[i+1:])
	copy(q.meta[i:], q.meta[i+1:])
	last := len(q.bufs) - 1
	q.bufs[last], q.meta[last] = nil, entryMeta{}
	q.bufs, q.meta = q.bufs[:last], q.meta[:last]
}

// compact moves the pending entries to the front.
func (q *writeQueue) compact() {
	m := copy(q.bufs, q.bufs[q.head:])
	copy(q.meta, q.meta[q.head:])
	clear(q.bufs[m:])
	clear(q.meta[m:])
	q.bufs, q.meta, q.head = q.bufs[:m], q.meta[:m], 0
}
