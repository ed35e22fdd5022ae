package loadtest

// Multi-process runs (--procs): one process may hold fewer sockets than its
// RLIMIT_NOFILE, so `surge load` spreads the connections of a large run over
// child processes of its own binary.
//
// Protocol. The parent starts each child as `<os.Executable()> load
// <scenario> <the parent's flags>` with the environment variable
// SURGE_LOAD_SHARD holding the child's shard as JSON: its index, the
// run-wide index of its first connection (so connection g subscribes to
// topic g mod Topics in every process), its share of the connections and
// of the connect rate, its source addresses and (fanout) the run id. The
// child talks JSON lines:
//
//   - child → parent on stdout: {"type":"progress",…} about once a second
//     (cumulative counters; fanout adds the deliveries and the latency
//     histogram of the interval, HDR-encoded, so merged percentiles are
//     exact), phase messages ("connected", "ready", "drained") and finally
//     {"type":"report",…} with its own report and histograms. Logs go to
//     stderr, which the parent forwards with a "[child N]" prefix.
//   - parent → child on stdin: commands ("publish", "drain", "close"). EOF
//     on stdin ends the child's run as SIGINT would.
//
// The parent alone reads the server's stats and, for fanout, publishes;
// see procs_idle.go and procs_fanout.go for the phases.
//
// Cleanup. Children get Pdeathsig SIGKILL (Linux), so they die with the
// parent even when it is killed. On every exit path of the parent — normal
// end, a child that fails (exits without its report, or does not report a
// phase in time), SIGINT/SIGTERM/context cancel — the parent sends SIGTERM
// to the children still running (they close their connections and still
// write their partial report), SIGKILLs those left after a grace period, and
// waits for every one of them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// shardEnv names the environment variable that makes `surge load
// <scenario>` run as one child of a multi-process run.
const shardEnv = "SURGE_LOAD_SHARD"

const (
	// procsFDReserve is how many descriptors a generator process keeps for
	// other things than its connections when --procs is automatic: the
	// Go runtime, pipes, stats and publishing connections, log files.
	procsFDReserve = 1000
	// maxProcs bounds --procs.
	maxProcs = 256
	// childGrace is how long, on top of CloseWait, stopped children get to
	// close their connections and write their partial report before they
	// are killed.
	childGrace = 5 * time.Second
	// childStartMax bounds the start-up of a child (exec, flag parsing,
	// target resolution) in the phase deadlines.
	childStartMax = 10 * time.Second
	// maxChildLine bounds one JSON line from a child (reports with
	// histograms, per-topic acknowledgements).
	maxChildLine = 256 << 20
)

// shard is one child's part of a multi-process run.
type shard struct {
	Index     int          `json:"index"`
	Procs     int          `json:"procs"`
	First     int          `json:"first"` // run-wide index of its first connection
	Count     int          `json:"count"` // its connections (idle) or subscribers (fanout)
	Rate      float64      `json:"rate"`  // its share of the connect rate
	SourceIPs []netip.Addr `json:"source_ips"`
	RunID     string       `json:"run_id,omitempty"` // fanout: the parent's run id
}

// resolveProcs returns how many processes conns connections need: procs
// when positive, else (automatic) ceil(conns / (limit − procsFDReserve))
// for this process's open-file limit, raised to the hard limit first. 1
// means in-process.
func resolveProcs(procs, conns int) (int, error) {
	switch {
	case procs < 0:
		return 0, fmt.Errorf("loadtest: procs %d is negative", procs)
	case procs > maxProcs:
		return 0, fmt.Errorf("loadtest: procs %d is more than %d", procs, maxProcs)
	case procs > 0:
		return max(1, min(procs, conns)), nil
	}
	limit, ok := raiseOpenFileLimit()
	if !ok || limit <= procsFDReserve {
		return 1, nil
	}
	per := int(limit - procsFDReserve)
	return min(max(1, (conns+per-1)/per), maxProcs), nil
}

// shards splits conns connections, paced at rate, over n processes:
// contiguous index ranges whose sizes differ by at most one, each with its
// share of the rate. With at least n source addresses every child gets
// distinct ones (every n-th); with fewer, child i uses address i mod len.
func shards(n, conns int, rate float64, ips []netip.Addr, runID string) []shard {
	out := make([]shard, n)
	first := 0
	for i := range out {
		c := conns / n
		if i < conns%n {
			c++
		}
		out[i] = shard{Index: i, Procs: n, First: first, Count: c, Rate: rate * float64(c) / float64(conns), RunID: runID}
		first += c
		switch {
		case len(ips) == 0:
		case len(ips) < n:
			out[i].SourceIPs = []netip.Addr{ips[i%len(ips)]}
		default:
			for j := i; j < len(ips); j += n {
				out[i].SourceIPs = append(out[i].SourceIPs, ips[j])
			}
		}
	}
	return out
}

// childShard returns the shard this process runs when it is a child of a
// multi-process run.
func childShard() (shard, bool, error) {
	v, ok := os.LookupEnv(shardEnv)
	if !ok {
		return shard{}, false, nil
	}
	var sh shard
	if err := json.Unmarshal([]byte(v), &sh); err != nil {
		return shard{}, true, fmt.Errorf("loadtest: %s: %w", shardEnv, err)
	}
	if sh.Count <= 0 || sh.Rate <= 0 || sh.First < 0 {
		return shard{}, true, fmt.Errorf("loadtest: %s: bad shard %s", shardEnv, v)
	}
	return sh, true, nil
}

// childMsg is one line a child writes to its stdout.
type childMsg struct {
	Type string          `json:"type"` // "progress", "connected", "ready", "drained", "report"
	Data json.RawMessage `json:"data,omitempty"`
}

// childCmd is one line the parent writes to a child's stdin.
type childCmd struct {
	Cmd string `json:"cmd"` // "publish", "drain", "close"
	// MeasureStart (publish) is the Unix ns from which deliveries' latency
	// is recorded.
	MeasureStart int64 `json:"measure_start,omitempty"`
	// Acked (drain) are the publishes the server acknowledged, per topic.
	Acked []ackedTopic `json:"acked,omitempty"`
}

// ackedTopic is the set of acknowledged publish counters of one topic:
// 1…Upto except Missing.
type ackedTopic struct {
	Upto    uint64   `json:"upto"`
	Missing []uint64 `json:"missing,omitempty"`
}

// encodeHist returns h in the compressed, base64 HDR encoding, or "" when h
// is empty.
func encodeHist(h *hdrhistogram.Histogram) (string, error) {
	if h == nil || h.TotalCount() == 0 {
		return "", nil
	}
	b, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	return string(b), err
}

// mergeEncoded adds the histogram encodeHist produced into dst; "" adds
// nothing. Both must have the same range and precision for the merge to be
// exact.
func mergeEncoded(dst *hdrhistogram.Histogram, enc string) error {
	if enc == "" {
		return nil
	}
	h, err := hdrhistogram.Decode([]byte(enc))
	if err != nil {
		return fmt.Errorf("loadtest: child histogram: %w", err)
	}
	if dropped := dst.Merge(h); dropped > 0 {
		return fmt.Errorf("loadtest: child histogram: %d values out of range", dropped)
	}
	return nil
}

// --- The child's side.

// childIO is a child's link to its parent: messages out on stdout, commands
// in from stdin.
type childIO struct {
	mu   sync.Mutex
	w    io.Writer
	cmds chan childCmd // closed at EOF on stdin
}

// newChildIO starts reading commands from in; cancel is called at EOF (the
// parent is gone or gave up).
func newChildIO(in io.Reader, out io.Writer, cancel func()) *childIO {
	c := &childIO{w: out, cmds: make(chan childCmd, 4)}
	go func() {
		defer close(c.cmds)
		defer cancel()
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), maxChildLine)
		for sc.Scan() {
			var cmd childCmd
			if json.Unmarshal(sc.Bytes(), &cmd) == nil {
				c.cmds <- cmd
			}
		}
	}()
	return c
}

// send writes one message.
func (c *childIO) send(typ string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	line, err := json.Marshal(childMsg{Type: typ, Data: data})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err = c.w.Write(append(line, '\n'))
	return err
}

// next returns the parent's next command; "close" when ctx ends or stdin
// is at EOF.
func (c *childIO) next(ctx context.Context) childCmd {
	select {
	case cmd, ok := <-c.cmds:
		if ok {
			return cmd
		}
	case <-ctx.Done():
	}
	return childCmd{Cmd: "close"}
}

// --- The parent's side.

// procGroup is the parent's view of its children.
type procGroup struct {
	log    *slog.Logger
	kids   []*kid
	notify chan struct{} // a phase message arrived or a child exited
	failed chan struct{} // closed by the first failure

	// onProgress handles a "progress" message; it is called from the
	// child's reader goroutine.
	onProgress func(idx int, data json.RawMessage)

	mu      sync.Mutex // guards the fields below and every kid.got
	failErr error
}

// kid is one child process.
type kid struct {
	idx    int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	inMu   sync.Mutex    // serialises writes to stdin
	exited chan struct{} // closed once the process has been waited for
	got    map[string]json.RawMessage
}

// startProcs starts one child per shard running `<exe> load <scenario>
// <args…>`. On error the children already started are stopped.
func startProcs(scenario string, args []string, sh []shard, stderr io.Writer, log *slog.Logger,
	onProgress func(int, json.RawMessage)) (*procGroup, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("loadtest: procs: %w", err)
	}
	g := &procGroup{
		log:        log,
		notify:     make(chan struct{}, 1),
		failed:     make(chan struct{}),
		onProgress: onProgress,
	}
	for _, s := range sh {
		if err := g.start(exe, scenario, args, s, stderr); err != nil {
			g.stop(0)
			return nil, err
		}
	}
	return g, nil
}

func (g *procGroup) start(exe, scenario string, args []string, s shard, stderr io.Writer) error {
	spec, err := json.Marshal(s)
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, append([]string{"load", scenario}, args...)...)
	cmd.Env = append(os.Environ(), shardEnv+"="+string(spec))
	cmd.SysProcAttr = childSysProcAttr()
	cmd.Stderr = &prefixWriter{w: stderr, prefix: fmt.Sprintf("[child %d] ", s.Index)}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("loadtest: procs: start child %d: %w", s.Index, err)
	}
	k := &kid{idx: s.Index, cmd: cmd, stdin: stdin, exited: make(chan struct{}), got: map[string]json.RawMessage{}}
	g.kids = append(g.kids, k)
	g.log.Info("procs: child started", "child", s.Index, "pid", cmd.Process.Pid, "conns", s.Count, "first", s.First)
	go g.read(k, stdout)
	return nil
}

// read handles child k's messages until its stdout ends, then waits for the
// process and records a failure when it ended without its report or with a
// non-zero status.
func (g *procGroup) read(k *kid, stdout io.Reader) {
	defer g.wake()
	defer close(k.exited)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), maxChildLine)
	for sc.Scan() {
		var m childMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil || m.Type == "" {
			g.log.Warn("procs: child wrote a line that is not a message", "child", k.idx, "line", truncate(sc.Text(), 200))
			continue
		}
		if m.Type == "progress" {
			if g.onProgress != nil {
				g.onProgress(k.idx, m.Data)
			}
			continue
		}
		g.mu.Lock()
		k.got[m.Type] = m.Data
		g.mu.Unlock()
		g.wake()
	}
	if err := sc.Err(); err != nil {
		// Keep draining, so that the child never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, stdout)
	}
	werr := k.cmd.Wait()
	g.mu.Lock()
	_, reported := k.got["report"]
	g.mu.Unlock()
	switch {
	case !reported:
		g.fail(fmt.Errorf("loadtest: procs: child %d (pid %d) ended before its report: %v", k.idx, k.cmd.Process.Pid, exitDesc(werr)))
	case werr != nil:
		g.fail(fmt.Errorf("loadtest: procs: child %d (pid %d): %v", k.idx, k.cmd.Process.Pid, exitDesc(werr)))
	}
}

func exitDesc(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (g *procGroup) wake() {
	select {
	case g.notify <- struct{}{}:
	default:
	}
}

// fail records the group's first failure.
func (g *procGroup) fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failErr == nil {
		g.failErr = err
		close(g.failed)
		g.log.Error("procs: child failed; stopping the others", "err", err)
	}
}

// err returns the first failure, if any.
func (g *procGroup) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failErr
}

// await waits until every child has sent a message of type typ and returns
// their data, by child. It fails when ctx ends, a child fails, or timeout
// passes first.
func (g *procGroup) await(ctx context.Context, typ string, timeout time.Duration) ([]json.RawMessage, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		out := make([]json.RawMessage, len(g.kids))
		missing := 0
		g.mu.Lock()
		for i, k := range g.kids {
			if out[i] = k.got[typ]; out[i] == nil {
				missing++
			}
		}
		g.mu.Unlock()
		if missing == 0 {
			return out, nil
		}
		select {
		case <-g.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-g.failed:
			return nil, g.err()
		case <-t.C:
			err := fmt.Errorf("loadtest: procs: %d of %d children did not report %q within %v", missing, len(g.kids), typ, timeout)
			g.fail(err)
			return nil, err
		}
	}
}

// received returns, by child, the data of the last message of type typ;
// nil where none came.
func (g *procGroup) received(typ string) []json.RawMessage {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]json.RawMessage, len(g.kids))
	for i, k := range g.kids {
		out[i] = k.got[typ]
	}
	return out
}

// send writes cmd to every child still running.
func (g *procGroup) send(cmd childCmd) {
	line, err := json.Marshal(cmd)
	if err != nil {
		g.fail(err)
		return
	}
	line = append(line, '\n')
	for _, k := range g.kids {
		select {
		case <-k.exited:
			continue
		default:
		}
		k.inMu.Lock()
		_, err := k.stdin.Write(line)
		k.inMu.Unlock()
		if err != nil {
			g.log.Debug("procs: command not delivered", "child", k.idx, "cmd", cmd.Cmd, "err", err)
		}
	}
}

// stop ends the group: children still running get SIGTERM (they close their
// connections and write their partial report), those left after grace are
// killed, and every child is waited for. Safe to call more than once.
func (g *procGroup) stop(grace time.Duration) {
	var running []*kid
	for _, k := range g.kids {
		select {
		case <-k.exited:
		default:
			running = append(running, k)
			if err := terminate(k.cmd.Process); err != nil {
				g.log.Debug("procs: SIGTERM", "child", k.idx, "err", err)
			}
		}
	}
	if len(running) > 0 {
		t := time.NewTimer(grace)
		for _, k := range running {
			select {
			case <-k.exited:
			case <-t.C:
			}
		}
		t.Stop()
	}
	for _, k := range running {
		select {
		case <-k.exited:
		default:
			g.log.Warn("procs: killing child", "child", k.idx, "pid", k.cmd.Process.Pid)
			_ = k.cmd.Process.Kill()
		}
	}
	for _, k := range g.kids {
		<-k.exited
		_ = k.stdin.Close()
	}
}

// finish waits, at most timeout, for the children to exit by themselves
// after their report, then stops any left over.
func (g *procGroup) finish(timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, k := range g.kids {
		_ = k.stdin.Close() // EOF: a child still waiting for a command ends
		select {
		case <-k.exited:
		case <-t.C:
		}
	}
	g.stop(childGrace)
}

// pids returns the children's process ids.
func (g *procGroup) pids() []int {
	out := make([]int, len(g.kids))
	for i, k := range g.kids {
		out[i] = k.cmd.Process.Pid
	}
	return out
}

// prefixWriter writes whole lines to w, each prefixed.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		if _, err := io.WriteString(p.w, p.prefix+string(p.buf[:i+1])); err != nil {
			return len(b), nil // the parent's stderr is gone: drop the child's logs
		}
		p.buf = p.buf[i+1:]
	}
	if len(p.buf) > 64<<10 { // a huge line without a newline: pass it on
		_, _ = io.WriteString(p.w, p.prefix+string(p.buf)+"\n")
		p.buf = p.buf[:0]
	}
	return len(b), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// childLogger is the logger of a child process: warnings and errors only,
// since every child would repeat the parent's info lines.
func childLogger(stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// joinErrs returns the non-nil errors joined, or nil.
func joinErrs(errs ...error) error {
	var msgs []string
	var first error
	for _, e := range errs {
		if e != nil {
			if first == nil {
				first = e
			}
			msgs = append(msgs, e.Error())
		}
	}
	if len(msgs) <= 1 {
		return first
	}
	return fmt.Errorf("%w (also: %s)", first, strings.Join(msgs[1:], "; "))
}

// procsUsage documents --procs.
const procsUsage = "generator processes to spread the connections over (0: automatic, ceil(conns / (open-file limit − 1000)); 1: this process only)"

// isChild reports whether this process runs as a child of a multi-process
// run (SURGE_LOAD_SHARD is set).
func isChild() bool {
	_, ok := os.LookupEnv(shardEnv)
	return ok
}
