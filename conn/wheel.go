package conn

import (
	"sync"
	"sync/atomic"
	"time"
)

// Wheel is a hashed timing wheel shared by every connection of a server. It
// drives handshake deadlines, pings, pong timeouts and close deadlines with
// one goroutine and no timer per connection: each Conn sits in the slot of its
// next deadline on an intrusive list (two pointers and a slot index, no
// allocation), and is re-examined only when that slot comes due.
//
// Reads do not move a connection: they store a timestamp, and the connection
// reschedules itself lazily when its slot comes due.
type Wheel struct {
	tick  int64 // ms per slot
	now   atomic.Int64
	start time.Time

	mu    sync.Mutex
	slots []*Conn // list heads
	cur   int     // slot that covers base
	base  int64   // ms at which slot cur became due
	batch []*Conn

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// Slot states stored in Conn.hbSlot besides a slot index.
const (
	slotInFlight = -1 // taken out of a slot by a sweep, being examined
	slotRemoved  = -2 // removed for good
)

// NewWheel returns a stopped wheel whose slots are tick long and that can
// schedule up to span ahead (longer delays are clamped and re-examined).
func NewWheel(tick, span time.Duration) *Wheel {
	if tick < time.Millisecond {
		tick = time.Millisecond
	}
	n := int(span/tick) + 2
	w := &Wheel{
		tick:  tick.Milliseconds(),
		start: time.Now(),
		slots: make([]*Conn, n),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	return w
}

// Now returns the wheel's coarse clock in milliseconds since it was made.
// It is updated every tick and by [Wheel.Advance].
func (w *Wheel) Now() int64 { return w.now.Load() }

func (w *Wheel) clock() int64 { return time.Since(w.start).Milliseconds() }

// At converts a wall-clock time to the wheel's clock.
func (w *Wheel) At(t time.Time) int64 { return t.Sub(w.start).Milliseconds() }

// Run advances the wheel every tick until Stop. It is the wheel's one goroutine.
func (w *Wheel) Run() {
	defer close(w.done)
	t := time.NewTicker(time.Duration(w.tick) * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.Advance(w.clock())
		}
	}
}

// Stop ends Run and waits for it to return if it was started.
func (w *Wheel) Stop(started bool) {
	w.stopOnce.Do(func() { close(w.stop) })
	if started {
		<-w.done
	}
}

// Len returns the number of connections scheduled (for tests and stats).
func (w *Wheel) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, head := range w.slots {
		for c := head; c != nil; c = c.hbNext {
			n++
		}
	}
	return n
}

// Add schedules c to be examined at time at (wheel ms).
func (w *Wheel) Add(c *Conn, at int64) {
	w.mu.Lock()
	w.scheduleLocked(c, at)
	w.mu.Unlock()
}

// Remove takes c off the wheel for good. Safe to call more than once.
func (w *Wheel) Remove(c *Conn) {
	w.mu.Lock()
	if c.hbSlot >= 0 {
		w.unlinkLocked(c)
	}
	c.hbSlot = slotRemoved
	w.mu.Unlock()
}

// scheduleLocked links c into the slot due at or after at. w.mu must be held.
func (w *Wheel) scheduleLocked(c *Conn, at int64) {
	if c.hbSlot == slotRemoved {
		return
	}
	if c.hbSlot >= 0 {
		w.unlinkLocked(c)
	}
	d := (at - w.base + w.tick - 1) / w.tick
	if d < 1 {
		d = 1
	}
	if max := int64(len(w.slots) - 1); d > max {
		d = max
	}
	i := (w.cur + int(d)) % len(w.slots)
	c.hbSlot = int32(i)
	c.hbPrev = nil
	c.hbNext = w.slots[i]
	if c.hbNext != nil {
		c.hbNext.hbPrev = c
	}
	w.slots[i] = c
}

func (w *Wheel) unlinkLocked(c *Conn) {
	if c.hbPrev != nil {
		c.hbPrev.hbNext = c.hbNext
	} else {
		w.slots[c.hbSlot] = c.hbNext
	}
	if c.hbNext != nil {
		c.hbNext.hbPrev = c.hbPrev
	}
	c.hbPrev, c.hbNext = nil, nil
}

// Advance moves the wheel to now (ms) and examines every connection whose
// slot came due. Run calls it every tick; tests call it with a fake clock.
func (w *Wheel) Advance(now int64) {
	w.now.Store(now)
	w.mu.Lock()
	batch := w.batch[:0]
	for w.base+w.tick <= now {
		w.cur = (w.cur + 1) % len(w.slots)
		w.base += w.tick
		for c := w.slots[w.cur]; c != nil; {
			next := c.hbNext
			c.hbPrev, c.hbNext, c.hbSlot = nil, nil, slotInFlight
			batch = append(batch, c)
			c = next
		}
		w.slots[w.cur] = nil
	}
	w.mu.Unlock()

	for i, c := range batch {
		if at := c.heartbeat(now); at >= 0 {
			w.mu.Lock()
			if c.hbSlot == slotInFlight {
				w.scheduleLocked(c, at)
			}
			w.mu.Unlock()
		}
		batch[i] = nil
	}
	w.mu.Lock()
	if cap(batch) <= 1<<16 {
		w.batch = batch[:0]
	} else {
		w.batch = nil
	}
	w.mu.Unlock()
}

// Snapshot returns every connection currently scheduled on the wheel.
func (w *Wheel) Snapshot() []*Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*Conn
	for _, head := range w.slots {
		for c := head; c != nil; c = c.hbNext {
			out = append(out, c)
		}
	}
	return out
}
