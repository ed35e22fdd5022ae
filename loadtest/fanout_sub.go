package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/klauspost/compress/flate"
)

// subscriber is one subscriber connection of a fanout run and what it saw.
//
// The counters and got are written by the connection's reader goroutine
// (or, in epoll mode, its event loop) only, and read by others only after
// the run's readWG has been waited for.
type subscriber struct {
	run     *fanoutRun
	i       int
	topic   int
	c       *clientConn
	deflate bool
	shard   *latShard

	got       seqSet // publish counters received
	delivered int64  // unique deliveries of this run's messages
	dups      int64  // deliveries of a counter already received
	reordered int64  // deliveries whose seq is below one seen before
	seqGaps   int64  // seqs skipped between consecutive deliveries
	foreign   int64  // deliveries on other topics or from other publishers
	malformed int64  // frames that are not a well-formed delivery
	other     int64  // well-formed frames whose op is not "message"
	deflated  int64  // compressed deliveries
	lastSeq   uint64
	closeCode ws.StatusCode // set when the server ended the connection

	uniq atomic.Int64 // == delivered, for the drain's progress checks
	gone atomic.Bool  // the reader has exited
}

// latShard is one share of the run's latency histogram: subscriber i records
// into shard i mod len(shards), so few readers ever wait for the same lock.
type latShard struct {
	mu        sync.Mutex
	cur       *hdrhistogram.Histogram // µs, since the last sample
	delivered int64                   // unique deliveries since the last sample
	_         [48]byte                // keep neighbouring shards' locks apart
}

// record counts one unique delivery and, when measured, its latency.
func (s *latShard) record(us int64, measured bool) {
	s.mu.Lock()
	s.delivered++
	if measured {
		_ = s.cur.RecordValue(min(max(us, 1), maxLatencyUS))
	}
	s.mu.Unlock()
}

// connect dials subscriber i and, on success, starts its reader.
func (r *fanoutRun) connect(ctx context.Context, i int) {
	defer r.dialWG.Done()
	d := &r.dialers[i%len(r.dialers)]
	nc, br, hs, err := d.Dial(ctx, r.topicURL(i))
	deflate := false
	if err == nil && r.cfg.Deflate {
		deflate, err = deflateAccepted(hs)
		if err != nil {
			_ = nc.Close()
		}
	}
	if err != nil {
		cause := failureCause(err)
		if errors.Is(err, errDeflateTakeover) {
			cause = "deflate_context_takeover"
		}
		r.failed.Add(1)
		r.mu.Lock()
		r.failures[cause]++
		r.mu.Unlock()
		r.log.Debug("fanout: connect failed", "i", i, "cause", cause, "err", err)
		return
	}
	var c *clientConn
	var pending []byte
	if r.loops != nil {
		if c, pending, err = takeConn(nc, br); err != nil {
			cause := failureCause(err)
			r.failed.Add(1)
			r.mu.Lock()
			r.failures[cause]++
			r.mu.Unlock()
			r.log.Debug("fanout: cannot move the socket to an event loop", "i", i, "cause", cause, "err", err)
			return
		}
	} else {
		c = newClientConn(nc, br)
		c.r = bufio.NewReaderSize(c.r, subReadBuffer)
	}
	s := &subscriber{
		run:     r,
		i:       i,
		topic:   (r.first + i) % r.cfg.Topics,
		c:       c,
		deflate: deflate,
		shard:   &r.shards[i%len(r.shards)],
	}
	if deflate {
		r.deflated.Add(1)
	}
	r.connected.Add(1)
	r.open.Add(1)
	r.mu.Lock()
	r.subs[i] = s
	r.lastConnected = time.Now()
	r.mu.Unlock()
	r.readWG.Add(1)
	if r.loops != nil {
		r.loops.add(i, c, s, &r.loopOpts, deflate, pending)
		return
	}
	go r.serve(s)
}

// errDeflateTakeover: the server accepted permessage-deflate without
// server_no_context_takeover, which the subscribers offered and need (each
// message is inflated on its own).
var errDeflateTakeover = errors.New("loadtest: server accepted permessage-deflate without server_no_context_takeover")

// deflateAccepted reports whether the handshake negotiated
// permessage-deflate. RFC 7692 §7.1.1.1: a server that accepts an offer with
// server_no_context_takeover must include it in its response.
func deflateAccepted(hs ws.Handshake) (bool, error) {
	for _, opt := range hs.Extensions {
		if !bytes.Equal(opt.Name, wsflate.ExtensionNameBytes) {
			continue
		}
		var p wsflate.Parameters
		if err := p.Parse(opt); err != nil {
			return false, fmt.Errorf("loadtest: bad permessage-deflate response: %w", err)
		}
		if !p.ServerNoContextTakeover {
			return false, errDeflateTakeover
		}
		return true, nil
	}
	return false, nil
}

// serve reads subscriber s until its connection ends.
func (r *fanoutRun) serve(s *subscriber) {
	defer r.readWG.Done()
	defer func() {
		_ = s.c.nc.Close()
		s.gone.Store(true)
		r.open.Add(-1)
	}()
	for {
		ev, m, buf, code, err := s.c.readMessage(&r.bufPool, r.maxMsg, s.deflate)
		if err != nil {
			if s.c.closing.Load() {
				r.unclean.Add(1)
				return
			}
			if code != 0 {
				_ = s.c.writeClose(code)
			}
			r.serverGone(s, 1006)
			r.log.Debug("fanout: subscriber lost", "i", s.i, "err", err)
			return
		}
		if ev == evClose {
			if s.c.closing.Load() {
				r.clean.Add(1) // the server's answer to our close
				return
			}
			_ = s.c.writeClose(code)
			r.serverGone(s, code)
			return
		}
		r.deliver(s, m, time.Now())
		r.bufPool.Put(buf)
	}
}

// onMessage, onPing and onEnd make s a loopHandler: in epoll mode its
// event loop reports to it what serve handles in goroutine mode.

func (s *subscriber) onMessage(m message, _ int64, now time.Time) { s.run.deliver(s, m, now) }

func (s *subscriber) onPing() {}

func (s *subscriber) onEnd(code ws.StatusCode, err error) {
	r := s.run
	switch {
	case err != nil && s.c.closing.Load():
		r.unclean.Add(1)
	case err != nil:
		r.serverGone(s, 1006)
		r.log.Debug("fanout: subscriber lost", "i", s.i, "err", err)
	case s.c.closing.Load():
		r.clean.Add(1) // the server's answer to our close
	default:
		r.serverGone(s, code)
	}
	s.gone.Store(true)
	r.open.Add(-1)
	r.readWG.Done()
}

// serverGone records that the server ended subscriber s (code 1006: without
// a close frame).
func (r *fanoutRun) serverGone(s *subscriber, code ws.StatusCode) {
	s.closeCode = code
	r.serverClosed.Add(1)
	r.mu.Lock()
	r.closes[strconv.Itoa(int(code))]++
	r.mu.Unlock()
}

// deliver accounts for one data message that subscriber s received at now.
func (r *fanoutRun) deliver(s *subscriber, m message, now time.Time) {
	p := m.payload
	if m.compressed {
		in := r.inflPool.Get().(*inflater)
		defer r.inflPool.Put(in)
		var err error
		if p, err = in.inflate(p, r.maxMsg); err != nil {
			s.malformed++
			r.anomalies.Add(1)
			return
		}
		s.deflated++
	}
	d, ok := parseDelivery(p)
	if !ok || m.op != ws.OpText || (string(d.op) == "message" && (d.seq == 0 || d.data == nil)) {
		s.malformed++
		r.anomalies.Add(1)
		return
	}
	if string(d.op) != "message" {
		s.other++
		return
	}
	pr, ok := parseProbe(d.data)
	if !ok || !bytes.Equal(d.topic, r.topicNames[s.topic]) || string(pr.run) != r.runID ||
		pr.n == 0 || pr.n > r.maxN {
		s.foreign++
		return
	}
	if !s.got.add(pr.n) {
		s.dups++
		r.anomalies.Add(1)
		return
	}
	s.delivered++
	s.uniq.Add(1)
	switch {
	case s.lastSeq == 0:
	case d.seq < s.lastSeq:
		s.reordered++
		r.anomalies.Add(1)
	case d.seq > s.lastSeq+1:
		s.seqGaps += int64(d.seq - s.lastSeq - 1)
	}
	s.lastSeq = max(s.lastSeq, d.seq)
	s.shard.record((now.UnixNano()-pr.t)/1000, pr.t >= r.measureStart.Load())
}

// deflateTail ends a message compressed without context takeover: RFC 7692
// §7.2.2's 00 00 ff ff (removed by the sender), then an empty final stored
// block so that the inflater reports a clean io.EOF.
const deflateTail = "\x00\x00\xff\xff\x01\x00\x00\xff\xff"

// inflater decompresses permessage-deflate messages. Not safe for
// concurrent use; the run pools them.
type inflater struct {
	fr  io.ReadCloser
	src tailReader
	out []byte
}

func newInflater() *inflater {
	in := &inflater{}
	in.fr = flate.NewReader(&in.src)
	return in
}

// inflate returns the decompressed p; the result is valid until the next
// call. Output over max bytes is an error.
func (in *inflater) inflate(p []byte, max int64) ([]byte, error) {
	in.src = tailReader{p: p}
	if err := in.fr.(flate.Resetter).Reset(&in.src, nil); err != nil {
		return nil, err
	}
	out := in.out[:0]
	for {
		if len(out) == cap(out) {
			out = append(out, 0)[:len(out)]
		}
		n, err := in.fr.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if int64(len(out)) > max {
			in.out = out[:0]
			return nil, errMessageTooBig
		}
		if err == io.EOF {
			in.out = out
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// tailReader reads p, then deflateTail.
type tailReader struct {
	p    []byte
	tail int // bytes of deflateTail already read
}

func (t *tailReader) Read(b []byte) (int, error) {
	if len(t.p) > 0 {
		n := copy(b, t.p)
		t.p = t.p[n:]
		return n, nil
	}
	if t.tail == len(deflateTail) {
		return 0, io.EOF
	}
	n := copy(b, deflateTail[t.tail:])
	t.tail += n
	return n, nil
}

// ReadByte makes tailReader an io.ByteReader, so flate reads it directly
// instead of through a bufio.Reader of its own.
func (t *tailReader) ReadByte() (byte, error) {
	if len(t.p) > 0 {
		c := t.p[0]
		t.p = t.p[1:]
		return c, nil
	}
	if t.tail == len(deflateTail) {
		return 0, io.EOF
	}
	c := deflateTail[t.tail]
	t.tail++
	return c, nil
}
