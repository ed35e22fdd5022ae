package conn

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/gobwas/ws"
)

func textFrame(s string) []byte { return NewFrame(ws.OpText, []byte(s)) }

func TestSendWritesAtOnce(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	f := textFrame("hello")
	if !h.c.Send(f) {
		t.Fatal("Send on an open connection returned false")
	}
	if out := h.tr.take(); !bytes.Equal(out, f) {
		t.Fatalf("wrote % x, want % x", out, f)
	}
	if waits, _, _ := h.tr.counts(); waits != 0 || h.c.wq != nil {
		t.Fatalf("WaitWritable %d, queue kept %v: want neither", waits, h.c.wq != nil)
	}
}

func TestSendQueuesWhileSocketFull(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.tr.setCapacity(0)
	writevs := h.tr.writevs
	frames := [][]byte{textFrame("one"), textFrame("two"), NewFrame(ws.OpBinary, make([]byte, 300)), textFrame("four")}
	for i, f := range frames {
		if !h.c.Send(f) {
			t.Fatalf("Send %d returned false", i)
		}
	}
	waits, _, _ := h.tr.counts()
	if waits != 1 {
		t.Fatalf("WaitWritable called %d times, want once", waits)
	}
	if n := h.tr.writevs - writevs; n != 1 {
		t.Fatalf("Writev called %d times while waiting for writability, want 1", n)
	}
	if out := h.tr.output(); len(out) != 0 {
		t.Fatalf("wrote %d bytes to a full socket", len(out))
	}
	h.tr.setCapacity(-1)
	h.c.OnWritable()
	if out := h.tr.take(); !bytes.Equal(out, concat(frames...)) {
		t.Fatalf("drained % x, want the frames in order", out)
	}
	if h.c.wq != nil {
		t.Fatal("write queue kept after draining")
	}
	h.expectOpen()
}

func TestSendPartialWrites(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, textFrame(fmt.Sprintf("frame %d with some padding", i)))
	}
	want := concat(frames...)
	h.tr.setCapacity(5) // the first frame is cut after 5 bytes
	for _, f := range frames {
		if !h.c.Send(f) {
			t.Fatal("Send returned false")
		}
	}
	// The socket takes 7 bytes per writability event.
	for i := 0; h.c.wq != nil; i++ {
		if i > len(want) {
			t.Fatal("queue never drained")
		}
		h.tr.setCapacity(7)
		h.c.OnWritable()
	}
	if out := h.tr.take(); !bytes.Equal(out, want) {
		t.Fatalf("wrote\n%q\nwant\n%q", out, want)
	}
	h.expectOpen()
}

func TestWriteQueueOverflow(t *testing.T) {
	tests := []struct {
		name  string
		cfg   *Config
		frame []byte
		fits  int // frames queued before the overflow
	}{
		{"frames", &Config{WriteQueueFrames: 4}, textFrame("x"), 4},
		{"bytes", &Config{WriteQueueBytes: 100}, NewFrame(ws.OpBinary, make([]byte, 38)), 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.cfg)
			h.open()
			h.tr.setCapacity(0)
			for i := range tc.fits {
				if !h.c.Send(tc.frame) {
					t.Fatalf("Send %d returned false", i)
				}
			}
			if h.c.Send(tc.frame) {
				t.Fatal("Send on a full queue returned true")
			}
			if h.c.Open() || h.c.Reason() != ReasonWriteQueueFull {
				t.Fatalf("open=%v reason=%v, want closing with write_queue_full", h.c.Open(), h.c.Reason())
			}
			if h.c.Send(tc.frame) {
				t.Fatal("Send after the overflow returned true")
			}
			h.tr.setCapacity(-1)
			h.c.OnWritable()
			fs := h.expectCloseFrame(ws.StatusPolicyViolation, ReasonWriteQueueFull)
			if len(fs) != tc.fits+1 {
				t.Fatalf("%d frames written, want the %d queued and a close frame", len(fs), tc.fits)
			}
			if _, reason := closeBody(t, fs[len(fs)-1].payload); reason != "slow consumer" {
				t.Fatalf("close reason %q, want \"slow consumer\"", reason)
			}
		})
	}
}

func TestSlowConsumerCloseTimeout(t *testing.T) {
	h := newHarness(t, &Config{WriteQueueFrames: 1})
	h.open()
	h.at(time1s)
	h.tr.setCapacity(0)
	h.c.Send(textFrame("a"))
	if h.c.Send(textFrame("b")) {
		t.Fatal("overflow not detected")
	}
	// The socket never drains: the wheel closes it at CloseTimeout.
	h.at(time1s + h.cfg.CloseTimeout - tick)
	if h.c.Closed() {
		t.Fatal("closed before CloseTimeout")
	}
	h.at(time1s + h.cfg.CloseTimeout)
	h.expectClosed(ReasonWriteQueueFull)
	if _, shuts, _ := h.tr.counts(); shuts != 0 {
		t.Fatal("CloseWrite called with bytes still queued")
	}
	h.c.OnWritable() // a late readiness event after the close is harmless
}

func TestSendWhenNotOpen(t *testing.T) {
	f := textFrame("x")
	t.Run("HTTP phase", func(t *testing.T) {
		h := newHarness(t, nil)
		if h.c.Send(f) || len(h.tr.output()) != 0 {
			t.Fatal("Send before the upgrade")
		}
	})
	t.Run("after client close", func(t *testing.T) {
		h := newHarness(t, nil)
		h.open()
		h.feed(clientFrame(ws.OpClose, true, nil))
		if h.c.Send(f) {
			t.Fatal("Send returned true")
		}
		h.tr.peerClose()
		if h.c.Send(f) {
			t.Fatal("Send returned true after the socket closed")
		}
	})
	t.Run("after server Close", func(t *testing.T) {
		h := newHarness(t, nil)
		h.open()
		h.c.Close(ws.StatusNormalClosure, ReasonPolicy, "")
		if h.c.Send(f) {
			t.Fatal("Send returned true")
		}
	})
	t.Run("after peer gone", func(t *testing.T) {
		h := newHarness(t, nil)
		h.open()
		h.tr.peerClose()
		if h.c.Send(f) {
			t.Fatal("Send returned true")
		}
	})
}

func TestWriteError(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.tr.writeErr = errors.New("broken pipe")
	if h.c.Send(textFrame("x")) {
		t.Fatal("Send returned true on a write error")
	}
	if h.c.Open() {
		t.Fatal("connection still open after a write error")
	}
	h.settle()
	h.expectClosed(ReasonWriteError)
}

// A failed WaitWritable closes the connection (through the wheel) instead of
// leaving it open with a queue that never drains (fixed in 9e343a3).
func TestWaitWritableError(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.tr.setCapacity(0)
	h.tr.waitErr = errors.New("poller closed")
	if h.c.Send(textFrame("x")) {
		t.Fatal("Send returned true when WaitWritable failed")
	}
	if h.c.Open() {
		t.Fatal("connection still open after WaitWritable failed")
	}
	if h.c.Send(textFrame("y")) {
		t.Fatal("Send returned true after WaitWritable failed")
	}
	h.settle()
	h.expectClosed(ReasonWriteError)
}

func TestCloseWriteError(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.tr.shutErr = errors.New("not connected")
	h.feed(clientFrame(ws.OpClose, true, nil))
	h.settle()
	fs := h.expectClosed(ReasonClientClose)
	checkLastClose(t, fs, 0)
}

// TestConcurrentSend sends from several goroutines while the socket drains
// in small steps and the connection reads pings and runs heartbeats: every
// frame must come out whole and each sender's frames in order.
func TestConcurrentSend(t *testing.T) {
	h := newHarness(t, &Config{WriteQueueFrames: 1 << 16, WriteQueueBytes: 1 << 24})
	h.open()
	const senders, perSender = 4, 200
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perSender {
				if !h.c.Send(textFrame(fmt.Sprintf("%d:%d", s, i))) {
					t.Errorf("sender %d: Send %d returned false", s, i)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			h.tr.setCapacity(i % 50)
			h.c.OnWritable()
		}
	}()
	for i := range 100 {
		h.feed(clientFrame(ws.OpPing, true, []byte{byte(i)}))
		h.w.Advance(int64(i) * 10)
	}
	wg.Wait()
	<-done
	h.tr.setCapacity(-1)
	h.c.OnWritable()

	next := make([]int, senders)
	pongs := 0
	for _, f := range h.frames() {
		switch f.op() {
		case ws.OpPong:
			pongs++
		case ws.OpText:
			var s, i int
			if _, err := fmt.Sscanf(string(f.payload), "%d:%d", &s, &i); err != nil || i != next[s] {
				t.Fatalf("frame %q out of order (want %d:%d)", f.payload, s, next[s])
			}
			next[s]++
		default:
			t.Fatalf("unexpected frame %+v", f.h)
		}
	}
	for s, n := range next {
		if n != perSender {
			t.Fatalf("sender %d: %d frames arrived, want %d", s, n, perSender)
		}
	}
	if pongs != 100 {
		t.Fatalf("%d pongs, want 100", pongs)
	}
	h.expectOpen()
}

func msgs(frames ...[]byte) []*Message {
	ms := make([]*Message, len(frames))
	for i, f := range frames {
		ms[i] = &Message{Frame: f, Policy: PolicyDisconnect}
	}
	return ms
}

// A batch goes out in one writev, in order.
func TestSendMessagesOneWrite(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	frames := [][]byte{textFrame("one"), textFrame("two"), textFrame("three")}
	writevs := h.tr.writevs
	if n := h.c.SendMessages(msgs(frames...)); n != 3 {
		t.Fatalf("SendMessages = %d, want 3", n)
	}
	if n := h.tr.writevs - writevs; n != 1 {
		t.Fatalf("Writev called %d times for one batch, want 1", n)
	}
	if out := h.tr.take(); !bytes.Equal(out, concat(frames...)) {
		t.Fatalf("wrote % x, want the frames in order", out)
	}
	h.expectOpen()
}

// A batch larger than the frame limit reaching a reader that keeps up is
// written in parts instead of tripping the slow-consumer policy.
func TestSendMessagesLargerThanQueue(t *testing.T) {
	h := newHarness(t, &Config{WriteQueueFrames: 4})
	h.open()
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, textFrame(fmt.Sprint(i)))
	}
	if n := h.c.SendMessages(msgs(frames...)); n != 10 {
		t.Fatalf("SendMessages = %d, want 10", n)
	}
	if out := h.tr.take(); !bytes.Equal(out, concat(frames...)) {
		t.Fatalf("wrote % x, want the frames in order", out)
	}
	h.expectOpen()
}

// A batch reaching a reader that does not keep up meets the policy: with
// disconnect, the frames that fitted are counted and the connection closes.
func TestSendMessagesOverflowDisconnects(t *testing.T) {
	h := newHarness(t, &Config{WriteQueueFrames: 4})
	h.open()
	h.tr.setCapacity(0)
	var frames [][]byte
	for i := range 6 {
		frames = append(frames, textFrame(fmt.Sprint(i)))
	}
	if n := h.c.SendMessages(msgs(frames...)); n != 4 {
		t.Fatalf("SendMessages = %d, want the 4 that fitted", n)
	}
	if h.c.Open() || h.c.Reason() != ReasonWriteQueueFull {
		t.Fatalf("open=%v reason=%v, want closing with write_queue_full", h.c.Open(), h.c.Reason())
	}
	if n := h.c.SendMessages(msgs(frames[0])); n != 0 {
		t.Fatalf("SendMessages after the close = %d, want 0", n)
	}
}

// Conflation inside one batch keeps only the newest message per key.
func TestSendMessagesConflatesWithinBatch(t *testing.T) {
	h := newHarness(t, nil)
	h.open()
	h.tr.setCapacity(0)
	a1, b1, a2 := textFrame("a1"), textFrame("b1"), textFrame("a2")
	ms := []*Message{
		{Frame: a1, Key: 1, Policy: PolicyConflate},
		{Frame: b1, Key: 2, Policy: PolicyConflate},
		{Frame: a2, Key: 1, Policy: PolicyConflate},
	}
	if n := h.c.SendMessages(ms); n != 3 {
		t.Fatalf("SendMessages = %d, want 3 (a conflated one counts as queued)", n)
	}
	h.tr.setCapacity(-1)
	h.c.OnWritable()
	if out := h.tr.take(); !bytes.Equal(out, concat(b1, a2)) {
		t.Fatalf("wrote %q, want b1 then a2", out)
	}
}
