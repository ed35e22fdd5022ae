package engine_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

// readSeqs reads n deliveries from rc and checks their seqs are 1..n in order.
func readSeqs(t *testing.T, rc *rawClient, n int) {
	t.Helper()
	for want := uint64(1); want <= uint64(n); want++ {
		f, err := rc.read()
		if err != nil {
			t.Fatalf("reading seq %d: %v", want, err)
		}
		var m struct {
			Seq uint64 `json:"seq"`
		}
		if err := json.Unmarshal(f.payload, &m); err != nil || m.Seq != want {
			t.Fatalf("got seq %d (%v), want %d", m.Seq, err, want)
		}
	}
}

// A subscriber that stops reading fills its socket, then its bounded write
// queue, and is closed as a slow consumer; a subscriber of the same topic that
// reads keeps receiving every message in order.
func TestSlowConsumerIsClosedOthersUnaffected(t *testing.T) {
	e := startEngine(t, engine.Config{WriteQueueBytes: 1 << 20, WriteQueueFrames: 64, CloseTimeout: 300 * time.Millisecond})
	slow := dialRaw(t, e.Addr(), "/ws?topic=ticks")
	fast := dialRaw(t, e.Addr(), "/ws?topic=ticks")
	payload := strings.Repeat("x", 64<<10)
	const n = 300 // ~19 MiB: more than loopback socket buffers plus the queue
	done := make(chan struct{})
	go func() {
		defer close(done)
		readSeqs(t, fast, n)
	}()
	for i := 0; i < n; i++ {
		publish(t, e.Addr(), "ticks", payload)
	}
	<-done
	waitFor(t, 10*time.Second, "slow consumer eviction", func() bool {
		return getStats(t, e.Addr()).Evictions["write_queue_full"] == 1
	})
	st := getStats(t, e.Addr())
	if st.Connections != 1 {
		t.Fatalf("connections %d, want only the fast one", st.Connections)
	}
	_ = slow
}

// A subscriber that pauses and then reads gets everything in order: bytes
// that did not fit the socket wait in the queue for write readiness.
func TestPausedReaderCatchesUp(t *testing.T) {
	e := startEngine(t, engine.Config{WriteQueueBytes: 64 << 20, WriteQueueFrames: 4096})
	rc := dialRaw(t, e.Addr(), "/ws?topic=burst")
	payload := strings.Repeat("y", 32<<10)
	const n = 200 // ~6.4 MiB, more than the socket buffers take
	for i := 0; i < n; i++ {
		publish(t, e.Addr(), "burst", payload)
	}
	readSeqs(t, rc, n)
	st := getStats(t, e.Addr())
	if ev := st.Evictions["write_queue_full"]; ev != 0 {
		t.Fatalf("evicted %d", ev)
	}
	if st.WriteStalls == 0 {
		t.Fatal("the socket never filled: the test did not exercise the write queue")
	}
}
