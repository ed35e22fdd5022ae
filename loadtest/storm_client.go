package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// stormClient is one client of a storm run: its connections over time and
// what it received.
type stormClient struct {
	i     int
	topic int
	name  []byte // topic name

	mu      sync.Mutex  // guards the fields below
	c       *clientConn // the open connection; nil between connections
	dropped bool        // the storm's drop has reached this client
	final   bool        // the final close has taken c
	dropAt  time.Time   // when the drop reached it

	isBack atomic.Bool
	gone   atomic.Bool   // the client's goroutine has exited
	maxSeq atomic.Uint64 // highest seq of this run's messages received

	// Written by the client's own goroutine only (the initial connect,
	// then life); read by others once lifeWG has been waited for.
	got       seqSet // publish counters received
	delivered int64  // distinct messages of this run received
	dups      int64
	reordered int64 // seq not above the previous one on the same connection
	foreign   int64 // messages on other topics or from other publishers
	malformed int64
	other     int64 // well-formed frames that are neither messages nor our replies

	afterDrop bool   // set once the drop has ended the first connection
	seqBefore uint64 // highest seq of this run received before the drop
	seqAfter  uint64 // seq of the first new message of this run received after it
	connLast  uint64 // highest seq on the current connection
	topicSeq  uint64 // highest seq of the topic known: deliveries or subscribe answers
	epoch     string // the topic's epoch from the last subscribe answer
	subID     int    // id of the last subscribe op

	attempts           int
	backAt             time.Time
	recoveryIncomplete bool
	lastCause          string        // why the last attempt failed
	closeBefore        ws.StatusCode // the server ended the first connection before the drop
	closeAfter         ws.StatusCode // the server ended it after it was back
}

// connEnd says how a connection ended.
type connEnd int

const (
	endOurs   connEnd = iota // the final close
	endDrop                  // the storm's drop
	endServer                // the server closed or dropped it
)

// connectInitial makes client i's first connection and, on success, starts
// its life.
func (r *stormRun) connectInitial(ctx context.Context, i int) {
	defer r.dialWG.Done()
	cl := &stormClient{i: i, topic: i % r.cfg.Topics, name: r.pubHost.topicNames[i%r.cfg.Topics]}
	c, cause := r.attempt(ctx, cl)
	if c == nil {
		r.failed.Add(1)
		r.mu.Lock()
		r.failures[cause]++
		r.mu.Unlock()
		r.log.Debug("storm: connect failed", "i", i, "cause", cause)
		return
	}
	cl.c = c
	r.connected.Add(1)
	r.open.Add(1)
	r.mu.Lock()
	r.clients[i] = cl
	r.lastConnected = time.Now()
	r.mu.Unlock()
	r.lifeWG.Add(1)
	go r.life(cl)
}

// life reads client cl until the drop, reconnects it, and reads again until
// the final close.
func (r *stormRun) life(cl *stormClient) {
	defer r.lifeWG.Done()
	defer cl.gone.Store(true)
	ctx := r.ctx
	end, code := r.readLoop(cl)
	switch end {
	case endOurs:
		return
	case endServer:
		cl.closeBefore = code
		r.mu.Lock()
		r.closesBefore[strconv.Itoa(int(code))]++
		r.mu.Unlock()
		select {
		case <-r.dropped:
		case <-ctx.Done():
			return
		}
	}
	cl.afterDrop = true
	cl.mu.Lock()
	dropAt := cl.dropAt
	cl.mu.Unlock()

	reason := "max_attempts"
	for k := 1; k <= r.cfg.MaxAttempts; k++ {
		at := time.Now().Add(r.backoff(k))
		if !at.Before(r.stormDeadline) {
			reason = "storm_timeout"
			break
		}
		sleepCtx(ctx, time.Until(at))
		if ctx.Err() != nil || r.closingAll.Load() {
			reason = "canceled"
			break
		}
		cl.attempts++
		r.attempts.Add(1)
		actx, cancel := context.WithDeadline(ctx, minTime(time.Now().Add(r.cfg.ConnectTimeout), r.stormDeadline))
		c, cause := r.attempt(actx, cl)
		cancel()
		if c == nil {
			if cause == "timeout" && !time.Now().Before(r.stormDeadline) {
				cause = "storm_timeout" // cut short by the end of the reconnect phase
			}
			cl.lastCause = cause
			r.refused.Add(1)
			r.mu.Lock()
			r.refusedBy[cause]++
			r.mu.Unlock()
			continue
		}
		now := time.Now()
		cl.mu.Lock()
		if r.closingAll.Load() {
			cl.mu.Unlock()
			_ = c.nc.Close()
			reason = "canceled"
			break
		}
		cl.c, cl.backAt = c, now
		cl.mu.Unlock()
		r.open.Add(1)
		cl.isBack.Store(true)
		r.mu.Lock()
		if now.After(r.lastBack) {
			r.lastBack = now
		}
		r.mu.Unlock()
		if r.back.Add(1) == r.participants.Load() {
			close(r.allBack)
		}
		r.log.Debug("storm: back", "i", cl.i, "after", now.Sub(dropAt), "attempts", cl.attempts)
		if end, code := r.readLoop(cl); end == endServer {
			cl.closeAfter = code
			r.mu.Lock()
			r.closesAfter[strconv.Itoa(int(code))]++
			r.mu.Unlock()
		}
		return
	}
	if reason == "max_attempts" && cl.lastCause != "" && cl.attempts < r.cfg.MaxAttempts {
		reason = cl.lastCause
	}
	r.mu.Lock()
	r.notBackBy[reason]++
	r.mu.Unlock()
}

// backoff is how long to wait before reconnect attempt k (from 1).
func (r *stormRun) backoff(k int) time.Duration {
	if r.cfg.Reconnect == reconnectImmediate {
		return 0
	}
	span := r.cfg.JitterWindow
	if k > 1 {
		span = r.cfg.BackoffMax
		if shift := k - 2; shift < 40 {
			span = min(r.cfg.BackoffMax, r.cfg.BackoffMin<<shift)
		}
	}
	if span <= 0 {
		return 0
	}
	return rand.N(span) // full jitter: uniform in [0, span)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// attempt makes one connection for cl: the upgrade and, with since, the
// subscribe op and its answer (with since and epoch once cl has been
// dropped). It returns the connection, or nil and the failure's cause.
func (r *stormRun) attempt(ctx context.Context, cl *stormClient) (*clientConn, string) {
	d := &r.dialers[cl.i%len(r.dialers)]
	nc, br, _, err := d.Dial(ctx, r.topicURL(cl.i))
	if err != nil {
		return nil, attemptCause(err)
	}
	c := newClientConn(nc, br)
	c.r = bufio.NewReaderSize(c.r, subReadBuffer)
	cl.connLast = 0
	if r.cfg.NoSince {
		return c, ""
	}
	fail := func(cause string) (*clientConn, string) {
		_ = nc.Close()
		return nil, cause
	}
	cl.subID++
	id := strconv.Itoa(cl.subID)
	b := append([]byte(`{"op":"subscribe","topic":"`), cl.name...)
	b = append(b, `","id":"`...)
	b = append(b, id...)
	b = append(b, '"')
	if cl.afterDrop {
		b = append(b, `,"since":`...)
		b = strconv.AppendUint(b, cl.topicSeq, 10)
		if cl.epoch != "" {
			e, _ := json.Marshal(cl.epoch)
			b = append(b, `,"epoch":`...)
			b = append(b, e...)
		}
	}
	b = append(b, '}')
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(r.cfg.ConnectTimeout)
	}
	if err := c.writeText(b, time.Until(deadline)); err != nil {
		return fail(attemptCause(err))
	}
	_ = nc.SetReadDeadline(deadline)
	for {
		ev, m, buf, code, err := c.readMessage(&r.bufPool, r.maxMsg, false)
		if err != nil {
			if code != 0 {
				_ = c.writeClose(code)
			}
			return fail(attemptCause(err))
		}
		if ev == evClose {
			_ = c.writeClose(code)
			return fail("closed_" + strconv.Itoa(int(code)))
		}
		a := r.frame(cl, m)
		r.bufPool.Put(buf)
		if a == nil || a.ID != id {
			if a != nil {
				cl.other++
			}
			continue
		}
		switch {
		case a.Op == "ok":
		case a.Code == "recovery_incomplete":
			cl.recoveryIncomplete = true
			r.recoveryIncomplete.Add(1)
		default:
			code := a.Code
			if code == "" {
				code = "unknown"
			}
			return fail("error_" + code)
		}
		cl.topicSeq = max(cl.topicSeq, a.Seq)
		if a.Epoch != "" {
			cl.epoch = a.Epoch
		}
		_ = nc.SetReadDeadline(time.Time{})
		return c, ""
	}
}

// attemptCause names why an attempt failed: "http_<status>" when the server
// answered the upgrade with another status (503, 429, …), else the cause
// failureCause gives (refused, timeout, reset, eof, …).
func attemptCause(err error) string {
	var status ws.StatusError
	if errors.As(err, &status) {
		return "http_" + strconv.Itoa(int(status))
	}
	return failureCause(err)
}

// stormAnswer is a server reply to a subscribe op.
type stormAnswer struct {
	Op    string `json:"op"`
	ID    string `json:"id"`
	Code  string `json:"code"`
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

// readLoop reads cl's connection until it ends.
func (r *stormRun) readLoop(cl *stormClient) (connEnd, ws.StatusCode) {
	cl.mu.Lock()
	c := cl.c
	cl.mu.Unlock()
	end := func(code ws.StatusCode, clean bool) (connEnd, ws.StatusCode) {
		_ = c.nc.Close()
		r.open.Add(-1)
		cl.mu.Lock()
		defer cl.mu.Unlock()
		cl.c = nil
		switch {
		case cl.final:
			if clean {
				r.clean.Add(1)
			} else {
				r.unclean.Add(1)
			}
			return endOurs, 0
		case cl.dropped && !cl.afterDrop:
			return endDrop, 0
		}
		return endServer, code
	}
	for {
		ev, m, buf, code, err := c.readMessage(&r.bufPool, r.maxMsg, false)
		if err != nil {
			if code != 0 && !c.closing.Load() {
				_ = c.writeClose(code)
			}
			return end(1006, false)
		}
		if ev == evClose {
			if !c.closing.Load() {
				_ = c.writeClose(code)
			}
			return end(code, c.closing.Load())
		}
		if a := r.frame(cl, m); a != nil {
			cl.other++
		}
		r.bufPool.Put(buf)
	}
}

// frame accounts for one data message cl received; it returns the message
// decoded when it is a reply (op "ok" or "error") rather than a delivery.
func (r *stormRun) frame(cl *stormClient, m message) *stormAnswer {
	d, ok := parseDelivery(m.payload)
	if !ok || m.op != ws.OpText {
		cl.malformed++
		return nil
	}
	if string(d.op) != "message" {
		if string(d.op) != "ok" && string(d.op) != "error" {
			cl.other++
			return nil
		}
		var a stormAnswer
		if json.Unmarshal(m.payload, &a) != nil {
			cl.other++ // e.g. an id that is not a string: not ours
			return nil
		}
		return &a
	}
	if d.seq == 0 || d.data == nil {
		cl.malformed++
		return nil
	}
	if !bytes.Equal(d.topic, cl.name) {
		cl.foreign++
		return nil
	}
	cl.topicSeq = max(cl.topicSeq, d.seq)
	pr, ok := parseProbe(d.data)
	if !ok || string(pr.run) != r.pubHost.runID || pr.n == 0 || pr.n > r.maxN {
		cl.foreign++
		return nil
	}
	if !cl.got.add(pr.n) {
		cl.dups++
		return nil
	}
	cl.delivered++
	if d.seq <= cl.connLast {
		cl.reordered++
	}
	cl.connLast = max(cl.connLast, d.seq)
	if !cl.afterDrop {
		cl.seqBefore = max(cl.seqBefore, d.seq)
	} else if cl.seqAfter == 0 {
		cl.seqAfter = d.seq
	}
	if d.seq > cl.maxSeq.Load() {
		cl.maxSeq.Store(d.seq)
	}
	return nil
}
