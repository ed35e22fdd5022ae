package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
)

// pubMsg is one message the pacer hands to a publisher: the n-th message
// (from 1) of topic number topic.
type pubMsg struct {
	topic int
	n     uint64
}

// publisher sends the run's messages. send and finish are called from the
// pacer's goroutine only.
type publisher interface {
	// send hands m over for publishing, waiting while the publisher's window
	// is full, and reports false when the publisher cannot take any more
	// messages (every connection failed, or the server refuses them).
	send(ctx context.Context, m pubMsg) bool
	// finish waits, at most the publish timeout, for the answers still
	// outstanding, then closes the publisher's connections.
	finish()
}

// Publish error causes, besides "http_<status>" and server error codes.
const (
	causeConnection = "connection" // the connection failed before the answer
	causeTimeout    = "timeout"    // no answer within the publish timeout
	causeBadAnswer  = "bad_answer" // an answer without a seq
	causeForbidden  = "forbidden"  // the server refuses client publishing
)

// pubTracker records what the publishers achieved. Safe for concurrent use.
type pubTracker struct {
	handedOff atomic.Int64 // messages publishers accepted from the pacer
	notSent   atomic.Int64 // messages never handed off (set at the end)
	sentNow   atomic.Int64 // written since the last sample
	lastSend  atomic.Int64 // Unix ns of the end of the pacer loop
	abort     atomic.Pointer[string]

	mu         sync.Mutex // guards the fields below
	acked      [][]uint64 // per topic: bitmap of acknowledged publish counters
	ackedCount []int64    // per topic
	lastSeq    []uint64   // per topic: highest seq answered
	okTotal    int64
	errTotal   int64
	errs       map[string]int64
	errMsg     map[string]string // first message per cause
	rtt        *hdrhistogram.Histogram
	// onAck, when set before publishing starts, is called for every
	// acknowledged message with the lock held (the storm scenario maps
	// publish counters to seqs with it). It must not block.
	onAck func(m pubMsg, seq uint64)
}

func newPubTracker(cfg FanoutConfig) *pubTracker {
	words := (cfg.perTopic() + 63) / 64
	t := &pubTracker{
		acked:      make([][]uint64, cfg.Topics),
		ackedCount: make([]int64, cfg.Topics),
		lastSeq:    make([]uint64, cfg.Topics),
		errs:       map[string]int64{},
		errMsg:     map[string]string{},
		rtt:        hdrhistogram.New(1, maxLatencyUS, 3),
	}
	for i := range t.acked {
		t.acked[i] = make([]uint64, words)
	}
	return t
}

// ok records that the server accepted m with seq after rtt.
func (t *pubTracker) ok(m pubMsg, seq uint64, rtt time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if bitmapSet(t.acked[m.topic], m.n) {
		t.ackedCount[m.topic]++
	}
	t.lastSeq[m.topic] = max(t.lastSeq[m.topic], seq)
	if t.onAck != nil {
		t.onAck(m, seq)
	}
	t.okTotal++
	_ = t.rtt.RecordValue(min(max(rtt.Microseconds(), 1), maxLatencyUS))
}

// fail records that m was not (or not knowably) published.
func (t *pubTracker) fail(cause, msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errTotal++
	t.errs[cause]++
	if _, ok := t.errMsg[cause]; !ok && msg != "" {
		t.errMsg[cause] = msg
	}
}

// stop asks the pacer to stop publishing, for reason.
func (t *pubTracker) stop(reason string) { t.abort.CompareAndSwap(nil, &reason) }

func (t *pubTracker) stopReason() string {
	if p := t.abort.Load(); p != nil {
		return *p
	}
	return ""
}

func (t *pubTracker) ackedPerTopic() []int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]int64(nil), t.ackedCount...)
}

func (t *pubTracker) counts() (ok, errs int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.okTotal, t.errTotal
}

// newPublisher connects the publisher cfg.Publish names.
func (r *fanoutRun) newPublisher(ctx context.Context) (publisher, error) {
	if r.cfg.Publish == publishWS {
		return r.newWSPublisher(ctx)
	}
	return r.newHTTPPublisher(ctx)
}

// appendData appends the JSON data of message m, stamped now.
func (r *fanoutRun) appendData(dst []byte, m pubMsg) []byte {
	return appendProbe(dst, time.Now().UnixNano(), m.n, r.runID, r.cfg.Size, r.pad)
}

// --- HTTP: POST /v1/publish, pipelined over a few keep-alive connections.

// httpPublisher spreads messages round-robin over its pipes.
type httpPublisher struct {
	r     *fanoutRun
	pipes []*httpPipe
	next  int
}

// httpPipe is one keep-alive connection with up to PublishWindow requests
// in flight (HTTP/1.1 pipelining, RFC 9112 §9.3.2: answers come in request
// order).
type httpPipe struct {
	r    *fanoutRun
	reqs chan pubMsg
	dead atomic.Bool   // gave up after maxPipeDials failed connections
	done chan struct{} // closed when the pipe's goroutines have exited
}

// maxPipeDials bounds how often one pipe connects (the first time and
// after failures).
const maxPipeDials = 3

// inflight is one request awaiting its answer.
type inflight struct {
	m    pubMsg
	sent time.Time
}

func (r *fanoutRun) newHTTPPublisher(ctx context.Context) (*httpPublisher, error) {
	p := &httpPublisher{r: r}
	// Dial every pipe up front, so that a refused or unreachable publish
	// endpoint fails the run before any message is scheduled.
	for range r.cfg.PublishConns {
		nc, err := r.dialHTTP(ctx)
		if err != nil {
			for _, pp := range p.pipes {
				close(pp.reqs)
				<-pp.done
			}
			return nil, fmt.Errorf("connect to %s: %w", r.target.addr, err)
		}
		pp := &httpPipe{r: r, reqs: make(chan pubMsg, r.cfg.PublishWindow), done: make(chan struct{})}
		p.pipes = append(p.pipes, pp)
		go pp.loop(nc)
	}
	return p, nil
}

func (r *fanoutRun) dialHTTP(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: r.cfg.ConnectTimeout}
	return d.DialContext(ctx, "tcp", r.target.addr.String())
}

func (p *httpPublisher) send(ctx context.Context, m pubMsg) bool {
	if p.r.pub.stopReason() != "" {
		return false
	}
	for range p.pipes {
		pp := p.pipes[p.next]
		p.next = (p.next + 1) % len(p.pipes)
		if pp.dead.Load() {
			continue
		}
		select {
		case pp.reqs <- m:
			p.r.pub.handedOff.Add(1)
			return true
		case <-ctx.Done():
			return false
		}
	}
	p.r.pub.stop("every publishing connection failed")
	return false
}

func (p *httpPublisher) finish() {
	for _, pp := range p.pipes {
		close(pp.reqs)
	}
	for _, pp := range p.pipes {
		<-pp.done
	}
}

// loop serves the pipe on nc, reconnecting after a failure (up to
// maxPipeDials connections in all), until reqs is closed and answered.
func (pp *httpPipe) loop(nc net.Conn) {
	defer close(pp.done)
	for dials := 1; ; dials++ {
		if !pp.serve(nc) {
			return // reqs closed and every request answered
		}
		if dials == maxPipeDials {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), pp.r.cfg.ConnectTimeout)
		var err error
		nc, err = pp.r.dialHTTP(ctx)
		cancel()
		if err != nil {
			pp.r.log.Warn("fanout: publisher reconnect failed", "err", err)
			break
		}
	}
	pp.dead.Store(true)
	for range pp.reqs {
		pp.r.pub.fail(causeConnection, "publishing connection gave up")
	}
}

// serve writes requests from reqs to nc and reads their answers until reqs
// is closed and drained (false) or the connection fails (true). Requests
// unanswered on a failed connection count as errors: the server may or may
// not have published them.
func (pp *httpPipe) serve(nc net.Conn) (failed bool) {
	r := pp.r
	window := make(chan inflight, r.cfg.PublishWindow)
	broken := make(chan struct{}) // the reader failed
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		pp.readAnswers(nc, window, broken)
	}()
	defer func() {
		close(window)
		<-readerDone
		_ = nc.Close()
	}()

	bw := bufio.NewWriterSize(nc, 16<<10)
	host := r.target.url.Host
	var body, head []byte
	for {
		var m pubMsg
		var ok bool
		select {
		case m, ok = <-pp.reqs:
		case <-broken:
			return true
		}
		if !ok {
			if err := bw.Flush(); err != nil {
				_ = nc.Close()
				return false
			}
			return false
		}
		body = append(body[:0], `{"topic":"`...)
		body = append(body, r.topicNames[m.topic]...)
		body = append(body, `","data":`...)
		body = r.appendData(body, m)
		body = append(body, '}')
		head = append(head[:0], "POST /v1/publish HTTP/1.1\r\nHost: "...)
		head = append(head, host...)
		head = append(head, "\r\nContent-Type: application/json\r\nContent-Length: "...)
		head = strconv.AppendInt(head, int64(len(body)), 10)
		head = append(head, "\r\n\r\n"...)
		select {
		case window <- inflight{m: m, sent: time.Now()}:
		case <-broken:
			r.pub.fail(causeConnection, "publishing connection failed")
			return true
		}
		_ = nc.SetWriteDeadline(time.Now().Add(r.cfg.PublishTimeout))
		_, _ = bw.Write(head)
		_, err := bw.Write(body)
		if err == nil && len(pp.reqs) == 0 {
			err = bw.Flush()
		}
		if err != nil {
			// The reader fails the requests in the window once the socket
			// is closed.
			_ = nc.Close()
			<-broken
			return true
		}
		r.pub.sentNow.Add(1)
	}
}

// readAnswers reads one HTTP answer per request in window, in order, until
// window is closed. On a read failure it closes broken, closes nc and fails
// every request still in the window.
func (pp *httpPipe) readAnswers(nc net.Conn, window <-chan inflight, broken chan<- struct{}) {
	r := pp.r
	br := bufio.NewReaderSize(nc, 4<<10)
	var failure string
	cause := causeConnection
	for f := range window {
		if failure != "" {
			r.pub.fail(cause, failure)
			continue
		}
		_ = nc.SetReadDeadline(time.Now().Add(r.cfg.PublishTimeout))
		seq, status, closeAfter, err := readPublishAnswer(br)
		switch {
		case err != nil:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				cause = causeTimeout
			}
			failure = err.Error()
			r.pub.fail(cause, failure)
			close(broken)
			_ = nc.Close()
			continue
		case status != http.StatusOK:
			r.pub.fail("http_"+strconv.Itoa(status), "")
		case seq == 0:
			r.pub.fail(causeBadAnswer, "200 answer without a seq")
		default:
			r.pub.ok(f.m, seq, time.Since(f.sent))
		}
		if closeAfter {
			failure = "server closed the publishing connection"
			close(broken)
			_ = nc.Close()
		}
	}
}

// maxAnswerBody bounds how much of one publish answer is read.
const maxAnswerBody = 64 << 10

// readPublishAnswer reads one answer to POST /v1/publish: status, the seq of
// a {"result":"ok","seq":…} body (0 when absent), and whether the server
// closes the connection after it.
func readPublishAnswer(br *bufio.Reader) (seq uint64, status int, closeAfter bool, err error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, 0, true, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody))
	if err != nil {
		return 0, 0, true, err
	}
	var ans struct {
		Result string  `json:"result"`
		Seq    *uint64 `json:"seq"`
	}
	if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &ans) == nil && ans.Result == "ok" && ans.Seq != nil {
		seq = *ans.Seq
	}
	return seq, resp.StatusCode, resp.Close, nil
}

// --- WebSocket: {"op":"publish",…} on one connection.

// wsPublisher publishes over one WebSocket connection, matching answers to
// requests by id.
type wsPublisher struct {
	r      *fanoutRun
	c      *clientConn
	window chan struct{} // one token per publish awaiting its answer
	broken chan struct{} // closed when the reader exits
	nextID uint64
	buf    []byte

	mu      sync.Mutex
	pending map[uint64]inflight
}

func (r *fanoutRun) newWSPublisher(ctx context.Context) (*wsPublisher, error) {
	d := r.dialers[0]
	d.Extensions = nil // publishes are small; no deflate
	nc, br, _, err := d.Dial(ctx, r.cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("WebSocket publisher: %w", err)
	}
	p := &wsPublisher{
		r:       r,
		c:       newClientConn(nc, br),
		window:  make(chan struct{}, r.cfg.PublishWindow),
		broken:  make(chan struct{}),
		pending: map[uint64]inflight{},
	}
	p.c.r = bufio.NewReaderSize(p.c.r, 4<<10)
	go p.readAnswers()
	return p, nil
}

func (p *wsPublisher) send(ctx context.Context, m pubMsg) bool {
	r := p.r
	if r.pub.stopReason() != "" {
		return false
	}
	select {
	case p.window <- struct{}{}:
	case <-p.broken:
		r.pub.stop("the WebSocket publishing connection ended")
		return false
	case <-ctx.Done():
		return false
	}
	p.nextID++
	id := p.nextID
	b := append(p.buf[:0], `{"op":"publish","topic":"`...)
	b = append(b, r.topicNames[m.topic]...)
	b = append(b, `","id":"`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `","data":`...)
	b = r.appendData(b, m)
	b = append(b, '}')
	p.buf = b
	p.mu.Lock()
	p.pending[id] = inflight{m: m, sent: time.Now()}
	p.mu.Unlock()
	r.pub.handedOff.Add(1)
	if err := p.c.writeText(b, r.cfg.PublishTimeout); err != nil {
		// The reader fails what is pending once the socket is closed.
		_ = p.c.nc.Close()
		r.pub.stop("the WebSocket publishing connection failed: " + err.Error())
		return false
	}
	r.pub.sentNow.Add(1)
	return true
}

func (p *wsPublisher) finish() {
	// Wait for the outstanding answers: the window drains as they arrive.
	deadline := time.NewTimer(p.r.cfg.PublishTimeout)
	defer deadline.Stop()
wait:
	for range cap(p.window) {
		select {
		case p.window <- struct{}{}:
		case <-p.broken:
			break wait
		case <-deadline.C:
			break wait
		}
	}
	p.c.closing.Store(true)
	_ = p.c.nc.SetReadDeadline(time.Now().Add(p.r.cfg.CloseWait))
	_ = p.c.writeClose(ws.StatusNormalClosure)
	<-p.broken
}

// wsAnswer is a server reply to a publish op.
type wsAnswer struct {
	Op      string `json:"op"`
	ID      string `json:"id"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Seq     uint64 `json:"seq"`
}

// readAnswers reads replies until the connection ends, then fails every
// publish still pending.
func (p *wsPublisher) readAnswers() {
	r := p.r
	defer func() {
		_ = p.c.nc.Close()
		p.mu.Lock()
		n := len(p.pending)
		clear(p.pending)
		p.mu.Unlock()
		for range n {
			r.pub.fail(causeConnection, "the WebSocket publishing connection ended before the answer")
		}
		close(p.broken)
	}()
	for {
		ev, m, buf, code, err := p.c.readMessage(&r.bufPool, r.maxMsg, false)
		if err != nil {
			if !p.c.closing.Load() {
				r.log.Warn("fanout: WebSocket publisher lost", "err", err)
				if code != 0 {
					_ = p.c.writeClose(code)
				}
			}
			return
		}
		if ev == evClose {
			if !p.c.closing.Load() {
				_ = p.c.writeClose(code)
				r.log.Warn("fanout: server closed the WebSocket publisher", "code", int(code))
			}
			return
		}
		var a wsAnswer
		jerr := json.Unmarshal(m.payload, &a)
		r.bufPool.Put(buf)
		id, perr := strconv.ParseUint(a.ID, 10, 64)
		if jerr != nil || perr != nil || (a.Op != "ok" && a.Op != "error") {
			continue // not an answer to a publish
		}
		p.mu.Lock()
		f, ok := p.pending[id]
		delete(p.pending, id)
		p.mu.Unlock()
		if !ok {
			continue
		}
		<-p.window
		switch {
		case a.Op == "error":
			cause := a.Code
			if cause == "" {
				cause = "error"
			}
			r.pub.fail(cause, a.Message)
			if cause == causeForbidden {
				r.pub.stop("the server refuses publishing over WebSocket (error code \"forbidden\"): allow client publishing on the server (surge serve --allow-publish) or use --publish http")
			}
		case a.Seq == 0:
			r.pub.fail(causeBadAnswer, "ok answer without a seq")
		default:
			r.pub.ok(f.m, a.Seq, time.Since(f.sent))
		}
	}
}
