//go:build !race

package conn

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// TestHotPathAllocs pins the paths that run per message on an open
// connection at zero allocations.
func TestHotPathAllocs(t *testing.T) {
	c := openSinkConn(t)
	binary := clientFrame(ws.OpBinary, true, bytes.Repeat([]byte{0xa5}, 200))
	pong := clientFrame(ws.OpPong, true, []byte("pong"))
	three := concat(smallTextFrame, pong, binary)
	frame64 := NewFrame(ws.OpText, bytes.Repeat([]byte("x"), 64))
	buf := make([]byte, len(three))
	feed := func(frame []byte) func() {
		return func() {
			n := copy(buf, frame) // Feed unmasks in place
			c.Feed(buf[:n])
		}
	}
	tests := []struct {
		name string
		f    func()
	}{
		{"Feed small text frame", feed(smallTextFrame)},
		{"Feed 200-byte binary frame", feed(binary)},
		{"Feed pong", feed(pong)},
		{"Feed three frames", feed(three)},
		{"Send", func() { c.Send(frame64) }},
		{"ParseHeader", func() { sinkHeader, _, _ = ParseHeader(smallTextFrame) }},
	}
	for _, tc := range tests {
		if allocs := testing.AllocsPerRun(1000, tc.f); allocs != 0 {
			t.Errorf("%s: %v allocs/op, want 0", tc.name, allocs)
		}
	}
	if !c.Open() {
		t.Fatal("connection closed")
	}
}
