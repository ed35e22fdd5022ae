package loadtest

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/cupwriter"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// liveProgress shows a running scenario on stderr for `surge load`: one
// plain line a second (the Progress callbacks), and, when stderr is a
// terminal, progress bars drawn by mpb below them: connections made of the
// target, and the time spent in the scenario's timed phase (fanout:
// publishing, warmup included; idle: the hold). When stderr is not a
// terminal (tests, CI, pipes) only the plain lines are written; quiet
// writes neither.
//
// While bars are drawn every other write to stderr must go through the
// liveProgress (it is an io.Writer: log records, for one), so that it lands
// above the bars instead of through them. Its methods are safe for
// concurrent use; stop must be called once the run has returned.
type liveProgress struct {
	w       io.Writer     // stderr, serialised
	bars    *mpb.Progress // nil: no bars
	refresh chan any      // asks bars to redraw (and to print what was written)
	quiet   bool

	stopped atomic.Bool
	// Live counts shown by the bars' decorators.
	connected, failed, target atomic.Int64

	mu         sync.Mutex // guards the fields below
	connect    *mpb.Bar
	timed      *mpb.Bar
	timedTotal time.Duration
	timedAt    time.Duration // time in the timed phase at the last callback
	timedSeen  time.Time     // when that callback came; zero: not in it
	timedOver  bool          // the timed phase has ended
	tickQuit   chan struct{}
	tickDone   chan struct{}
}

// progressBarWidth is the bars' width in columns.
const progressBarWidth = 40

// progressTick is how often the bars are redrawn, and a timed bar moves
// between two callbacks.
const progressTick = 150 * time.Millisecond

// newLiveProgress returns the progress display for stderr: bars only when
// stderr is a terminal and quiet is not set.
func newLiveProgress(stderr io.Writer, quiet bool) *liveProgress {
	if quiet {
		return &liveProgress{w: stderr, quiet: true}
	}
	if f, ok := terminal(stderr); ok {
		return newBarProgress(stderr, f)
	}
	return &liveProgress{w: stderr}
}

// terminal returns the file under w (unwrapping a lockedWriter) when it is a
// terminal.
func terminal(w io.Writer) (*os.File, bool) {
	if lw, ok := w.(*lockedWriter); ok {
		w = lw.w
	}
	f, ok := w.(*os.File)
	if !ok || !cupwriter.New(f, false).IsTerminal() {
		return nil, false
	}
	return f, true
}

// newBarProgress draws bars on out (whether or not it is a terminal);
// writes after stop go to stderr.
func newBarProgress(stderr, out io.Writer) *liveProgress {
	lp := &liveProgress{
		w:        stderr,
		refresh:  make(chan any),
		tickQuit: make(chan struct{}),
		tickDone: make(chan struct{}),
	}
	// Redrawn by lp.tick rather than mpb's own timer, so that stop can make
	// sure the last lines written are printed.
	lp.bars = mpb.New(mpb.WithOutput(out), mpb.WithWidth(progressBarWidth), mpb.WithManualRefresh(lp.refresh))
	go lp.tick()
	return lp
}

// Write prints b above the bars while they are drawn, else on stderr.
func (lp *liveProgress) Write(b []byte) (int, error) {
	if lp.bars != nil && !lp.stopped.Load() {
		if n, err := lp.bars.Write(b); err == nil {
			return n, nil
		}
	}
	return lp.w.Write(b)
}

// idle returns the IdleConfig.Progress callback for a run of conns
// connections held for hold (≤ 0: no hold bar); nil when quiet.
func (lp *liveProgress) idle(conns int, hold time.Duration) func(IdleProgress) {
	if lp.quiet {
		return nil
	}
	lp.addBars(conns, "hold", hold)
	return func(p IdleProgress) {
		fmt.Fprintf(lp, "%6.1fs %-7s connected=%d open=%d failed=%d lost=%d\n",
			p.Elapsed.Seconds(), p.Phase, p.Connected, p.Open, p.Failed, p.Lost)
		lp.update(p.Phase == "connect", p.Connected, p.Failed, timedPhase(p.Phase == "hold", p.Phase == "connect", p.Holding), p.Holding)
	}
}

// fanout returns the FanoutConfig.Progress callback for a run of subs
// subscribers publishing for publish (warmup included); nil when quiet.
func (lp *liveProgress) fanout(subs int, publish time.Duration) func(FanoutProgress) {
	if lp.quiet {
		return nil
	}
	lp.addBars(subs, "publish", publish)
	return func(p FanoutProgress) {
		fmt.Fprintf(lp, "%6.1fs %-7s connected=%d msgs/s=%.0f p99=%.2fms published=%d errors=%d (publish %d, connect %d, closed %d, anomalies %d)\n",
			p.Elapsed.Seconds(), p.Phase, p.Connected, p.DeliveriesPerSec, p.P99Ms, p.Published,
			p.PublishErrors+p.Failed+p.ServerClosed+p.Anomalies, p.PublishErrors, p.Failed, p.ServerClosed, p.Anomalies)
		publishing := p.Phase == "warmup" || p.Phase == "publish"
		lp.update(p.Phase == "connect", p.Connected, p.Failed, timedPhase(publishing, p.Phase == "connect", p.Publishing), p.Publishing)
	}
}

// addBars adds the connect bar and the timed phase's bar (when timed > 0),
// and starts moving the timed bar between callbacks.
func (lp *liveProgress) addBars(target int, timedName string, timed time.Duration) {
	if lp.bars == nil {
		return
	}
	lp.target.Store(int64(target))
	lp.mu.Lock()
	defer lp.mu.Unlock()
	lp.connect = lp.bars.AddBar(int64(target),
		mpb.PrependDecorators(
			decor.Name("connect", decor.WC{W: 8, C: decor.DindentRight}),
			decor.Any(func(decor.Statistics) string {
				return fmt.Sprintf("%d/%d", lp.connected.Load(), lp.target.Load())
			}, decor.WC{W: 14, C: decor.DindentRight}),
		),
		mpb.AppendDecorators(
			decor.Percentage(decor.WC{W: 5}),
			decor.Any(func(decor.Statistics) string {
				if f := lp.failed.Load(); f > 0 {
					return fmt.Sprintf("  failed %d", f)
				}
				return ""
			}),
		),
	)
	if timed <= 0 {
		return
	}
	lp.timedTotal = timed
	lp.timed = lp.bars.AddBar(timed.Milliseconds(),
		mpb.PrependDecorators(
			decor.Name(timedName, decor.WC{W: 8, C: decor.DindentRight}),
			decor.Any(func(s decor.Statistics) string {
				return fmt.Sprintf("%.1fs/%.1fs", float64(s.Current)/1000, float64(s.Total)/1000)
			}, decor.WC{W: 14, C: decor.DindentRight}),
		),
		mpb.AppendDecorators(decor.Percentage(decor.WC{W: 5})),
	)
}

// Where a run is with respect to its timed phase.
type timedState int

const (
	timedBefore  timedState = iota
	timedIn                 // in it
	timedOver               // it happened and ended
	timedSkipped            // the run ended without it
)

// timedPhase tells where a run is: in the timed phase, before it (still
// connecting), or past it; a run past it that spent no time in it skipped
// it.
func timedPhase(in, before bool, spent time.Duration) timedState {
	switch {
	case in:
		return timedIn
	case before:
		return timedBefore
	case spent > 0:
		return timedOver
	}
	return timedSkipped
}

// update moves the bars to a callback's state: connecting tells whether the
// connect phase lasts; timed where the run is with respect to the timed
// phase, and timedAt how long it has spent in it.
func (lp *liveProgress) update(connecting bool, connected, failed int64, timed timedState, timedAt time.Duration) {
	if lp.bars == nil {
		return
	}
	lp.connected.Store(connected)
	lp.failed.Store(failed)
	lp.mu.Lock()
	defer lp.mu.Unlock()
	lp.connect.SetCurrent(connected + failed)
	if !connecting && connected+failed < lp.target.Load() {
		lp.connect.Abort(false) // the connect phase ended short of the target
	}
	if lp.timed == nil {
		return
	}
	if lp.timedOver {
		return
	}
	switch timed {
	case timedIn:
		lp.timedAt, lp.timedSeen = timedAt, time.Now()
		lp.moveTimedLocked()
	case timedOver:
		lp.timedOver = true
		lp.timed.SetCurrent(lp.timedTotal.Milliseconds())
	case timedSkipped:
		lp.timedOver = true
		lp.timed.Abort(false)
	}
}

// moveTimedLocked sets the timed bar to the time in the timed phase, as
// extrapolated from the last callback. lp.mu must be held.
func (lp *liveProgress) moveTimedLocked() {
	if lp.timedSeen.IsZero() || lp.timedOver {
		return
	}
	at := min(lp.timedAt+time.Since(lp.timedSeen), lp.timedTotal)
	// Completing the bar is left to the callback that sees the phase end.
	lp.timed.SetCurrent(min(at.Milliseconds(), lp.timedTotal.Milliseconds()-1))
}

// tick moves the timed bar and redraws the bars every progressTick until
// stop.
func (lp *liveProgress) tick() {
	defer close(lp.tickDone)
	tk := time.NewTicker(progressTick)
	defer tk.Stop()
	for {
		select {
		case <-lp.tickQuit:
			return
		case <-tk.C:
			lp.mu.Lock()
			if lp.timed != nil {
				lp.moveTimedLocked()
			}
			lp.mu.Unlock()
			lp.refresh <- nil
		}
	}
}

// stop ends the display: bars the run did not finish are left as they were,
// and later writes go straight to stderr.
func (lp *liveProgress) stop() {
	if lp.bars == nil || !lp.stopped.CompareAndSwap(false, true) {
		return
	}
	close(lp.tickQuit)
	<-lp.tickDone
	lp.mu.Lock()
	for _, b := range []*mpb.Bar{lp.connect, lp.timed} {
		if b != nil {
			b.Abort(false)
		}
	}
	lp.mu.Unlock()
	// The second request is taken only once the first redraw has begun, and
	// that one prints everything written before stop.
	lp.refresh <- nil
	lp.refresh <- nil
	lp.bars.Wait()
}
