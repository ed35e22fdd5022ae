package topics

import (
	"bytes"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/surgepush/surge/conn"
)

// fakeSub is a Subscriber that records every message it accepts. It is safe
// for concurrent use: the fan-out calls SendMessages from pool goroutines.
type fakeSub struct {
	deflate bool
	refuse  atomic.Bool // SendMessage returns false and records nothing

	mu         sync.Mutex
	msgs       []*conn.Message
	readyCalls int
	readyAt    int // len(msgs) when ready was called
	batches    int // SendMessages calls
	rec        Recovery
}

var _ Subscriber = (*fakeSub)(nil)

func (f *fakeSub) SendMessages(ms []*conn.Message) int {
	if f.refuse.Load() {
		return 0
	}
	f.mu.Lock()
	f.msgs = append(f.msgs, ms...)
	f.batches++
	f.mu.Unlock()
	return len(ms)
}

func (f *fakeSub) Deflate() bool { return f.deflate }

// ready is a Subscribe ready callback that records when it ran.
func (f *fakeSub) ready(rec Recovery) {
	f.mu.Lock()
	f.readyCalls++
	f.readyAt = len(f.msgs)
	f.rec = rec
	f.mu.Unlock()
}

func (f *fakeSub) messages() []*conn.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*conn.Message(nil), f.msgs...)
}

// seqs returns the seq of every recorded message, in arrival order.
func (f *fakeSub) seqs(t testing.TB) []uint64 {
	t.Helper()
	msgs := f.messages()
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = seqOf(t, m.Frame)
	}
	return out
}

// sinkSub accepts and discards (benchmarks). n is written only by the
// goroutine serving its shard, so it needs no lock.
type sinkSub struct {
	deflate bool
	n       int
}

func (s *sinkSub) SendMessages(ms []*conn.Message) int { s.n += len(ms); return len(ms) }
func (s *sinkSub) Deflate() bool                       { return s.deflate }

// splitFrame parses one complete unmasked server frame with gobwas/ws (an
// implementation independent of conn.AppendHeader) and returns its header
// and payload. It fails unless the frame is exactly header + payload.
func splitFrame(t testing.TB, frame []byte) (ws.Header, []byte) {
	t.Helper()
	rd := bytes.NewReader(frame)
	h, err := ws.ReadHeader(rd)
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	if h.Masked {
		t.Fatalf("server frame is masked")
	}
	if int64(rd.Len()) != h.Length {
		t.Fatalf("frame carries %d payload bytes, header says %d", rd.Len(), h.Length)
	}
	return h, frame[len(frame)-rd.Len():]
}

var seqKey = []byte(`,"seq":`)

// seqOf extracts the seq of a text or binary delivery frame.
func seqOf(t testing.TB, frame []byte) uint64 {
	t.Helper()
	h, p := splitFrame(t, frame)
	if h.OpCode == ws.OpBinary {
		_, seq, _, ok := DecodeBinary(p)
		if !ok {
			t.Fatalf("bad binary delivery %q", p)
		}
		return seq
	}
	i := bytes.Index(p, seqKey)
	if i < 0 {
		t.Fatalf("no seq in %q", p)
	}
	p = p[i+len(seqKey):]
	j := bytes.IndexByte(p, ',')
	if j < 0 {
		t.Fatalf("unterminated seq in %q", p)
	}
	seq, err := strconv.ParseUint(string(p[:j]), 10, 64)
	if err != nil {
		t.Fatalf("seq %q: %v", p[:j], err)
	}
	return seq
}

// checkRun fails unless got is exactly from, from+1, …, to.
func checkRun(t testing.TB, what string, got []uint64, from, to uint64) {
	t.Helper()
	if to < from {
		if len(got) != 0 {
			t.Fatalf("%s: got %d messages (first seq %d), want none", what, len(got), got[0])
		}
		return
	}
	want := int(to - from + 1)
	for i, s := range got {
		if s != from+uint64(i) {
			t.Fatalf("%s: message %d has seq %d, want %d (run %d..%d, got %d messages)", what, i, s, from+uint64(i), from, to, len(got))
		}
	}
	if len(got) != want {
		t.Fatalf("%s: got %d messages (seq %d..), want %d (%d..%d)", what, len(got), from, want, from, to)
	}
}

func newReg(t testing.TB, cfg Config) *Registry {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(false) })
	return r
}

// advance moves the registry clock (r.now) forward by d without sleeping.
// Call it only while no other goroutine uses r.
func advance(r *Registry, d time.Duration) { r.start = r.start.Add(-d) }

func mustPublish(t testing.TB, r *Registry, topic, data string) Result {
	t.Helper()
	res, err := r.Publish(Publication{Topic: topic, Data: []byte(data)})
	if err != nil {
		t.Fatalf("Publish(%q): %v", topic, err)
	}
	return res
}

func mustSubscribe(t testing.TB, r *Registry, topic string, s *fakeSub, since *uint64) (*Sub, Recovery) {
	t.Helper()
	sub, rec, err := r.Subscribe(topic, s, since, s.ready)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", topic, err)
	}
	return sub, rec
}

func ptr(v uint64) *uint64 { return &v }
