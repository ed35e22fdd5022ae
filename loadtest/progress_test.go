package loadtest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLiveProgressPlainWhenNotATerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range []io.Writer{&bytes.Buffer{}, &lockedWriter{w: &bytes.Buffer{}}, f, &lockedWriter{w: f}} {
		if _, ok := terminal(w); ok {
			t.Errorf("%T is taken for a terminal", w)
		}
	}

	var buf bytes.Buffer
	lp := newLiveProgress(&buf, false)
	if lp.bars != nil {
		t.Fatal("bars on a buffer")
	}
	cb := lp.fanout(10, time.Second)
	cb(FanoutProgress{Phase: "connect", Elapsed: time.Second, Connected: 4})
	cb(FanoutProgress{Phase: "publish", Elapsed: 2 * time.Second, Connected: 10, DeliveriesPerSec: 200, P99Ms: 1.5, Publishing: time.Second / 2})
	fmt.Fprintln(lp, "a log line")
	lp.stop()
	out := buf.String()
	for _, want := range []string{"connect connected=4 msgs/s=0", "publish connected=10 msgs/s=200 p99=1.50ms", "a log line\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("escape sequences without a terminal:\n%q", out)
	}
}

func TestLiveProgressQuiet(t *testing.T) {
	var buf bytes.Buffer
	lp := newLiveProgress(&buf, true)
	if lp.idle(5, time.Second) != nil || lp.fanout(5, time.Second) != nil {
		t.Error("quiet progress has a callback")
	}
	fmt.Fprintln(lp, "log")
	lp.stop()
	if buf.String() != "log\n" {
		t.Errorf("output %q, want only the log line", buf.String())
	}
}

// The bars, drawn as on a terminal, show the connect and the publishing
// progress, with the plain lines and other writes above them.
func TestLiveProgressBars(t *testing.T) {
	var plain bytes.Buffer
	var out syncBuffer
	lp := newBarProgress(&plain, &out)
	cb := lp.fanout(20, 2*time.Second)

	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				fmt.Fprintf(lp, "log %d.%d\n", i, j)
			}
		}()
	}
	cb(FanoutProgress{Phase: "connect", Elapsed: time.Second, Connected: 12, Failed: 1})
	cb(FanoutProgress{Phase: "publish", Elapsed: 2 * time.Second, Connected: 19, Failed: 1, Publishing: time.Second})
	time.Sleep(3 * progressTick) // the publish bar moves on its own
	lp.mu.Lock()
	moving := lp.timedAt
	lp.mu.Unlock()
	cb(FanoutProgress{Phase: "drain", Elapsed: 3 * time.Second, Connected: 19, Failed: 1, Publishing: 2 * time.Second})
	wg.Wait()
	// The last line, written right before stop, is not lost.
	cb(FanoutProgress{Phase: "done", Elapsed: 4 * time.Second, Connected: 19, Failed: 1, Publishing: 3 * time.Second})
	lp.stop()
	fmt.Fprintln(lp, "after stop")

	got := out.String()
	for _, want := range []string{"connect", "19/20", "failed 1", "publish", "2.0s/2.0s", "100 %", "publish connected=19", "log 3.4", "done    connected=19"} {
		if !strings.Contains(got, want) {
			t.Errorf("bar output lacks %q:\n%s", want, got)
		}
	}
	if moving != time.Second {
		t.Errorf("timedAt %v, want the callback's 1s", moving)
	}
	if plain.String() != "after stop\n" {
		t.Errorf("stderr got %q, want only what was written after stop", plain.String())
	}
}

// An idle run that ends before its hold (interrupted while connecting)
// leaves the hold bar aborted, not full.
func TestLiveProgressSkippedHold(t *testing.T) {
	var out syncBuffer
	lp := newBarProgress(&bytes.Buffer{}, &out)
	cb := lp.idle(10, 5*time.Second)
	cb(IdleProgress{Phase: "connect", Elapsed: time.Second, Connected: 3})
	cb(IdleProgress{Phase: "done", Elapsed: 2 * time.Second, Connected: 3})
	lp.stop()
	got := out.String()
	if !strings.Contains(got, "hold") || strings.Contains(got, "5.0s/5.0s") {
		t.Errorf("hold bar should show, not full:\n%s", got)
	}
	if !strings.Contains(got, "3/10") {
		t.Errorf("connect bar lacks 3/10:\n%s", got)
	}
}
