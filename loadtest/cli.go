package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Exit codes of Main.
const (
	exitOK    = 0
	exitFail  = 1 // the run failed, or more connections failed than allowed
	exitUsage = 2 // bad flags or a refused target
)

const mainUsage = `usage: surge load <scenario> [flags]

scenarios:
  idle     open many idle WebSocket connections, hold them, report their cost
  fanout   publish to topics with many subscribers; report end-to-end latency
           and exactly how many deliveries were lost, duplicated or reordered
  storm    drop every client at once and measure the reconnect storm: time
           until all are back, refusals by cause, messages missed (since)

run "surge load <scenario> -h" for its flags.
`

// clientLoopUsage documents --client-loop.
const clientLoopUsage = `how clients read their sockets: "goroutine" (one goroutine per connection) or "epoll" (one event loop per GOMAXPROCS; Linux only)`

// Main runs `surge load`: args are the arguments after "load" (the scenario
// name first). It writes the human summary to stdout and live progress,
// logs and errors to stderr, and returns the process exit code: 0 on
// success, 1 when the run failed or too many connections failed, 2 on a
// usage error or a refused target. SIGINT and SIGTERM end the run early; the
// partial report is still written.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return exitUsage
	}
	switch args[0] {
	case "idle":
		return mainIdle(args[1:], stdout, stderr)
	case "fanout":
		return mainFanout(args[1:], stdout, stderr)
	case "storm":
		return mainStorm(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, mainUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "surge load: unknown scenario %q\n\n%s", args[0], mainUsage)
	return exitUsage
}

func mainIdle(args []string, stdout, stderr io.Writer) int {
	// Progress lines and log records reach stderr from different goroutines.
	stderr = &lockedWriter{w: stderr}
	fs := flag.NewFlagSet("surge load idle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg          IdleConfig
		topics       int
		sourceIPs    string
		out          string
		maxFailRatio float64
		quiet        bool
		htmlOut      string
		procs        int
	)
	fs.StringVar(&cfg.URL, "url", "", "WebSocket endpoint, ws://host:port/ws (required)")
	fs.StringVar(&cfg.StatsURL, "stats-url", "", `stats endpoint (default derived from --url: http://host:port/v1/stats; "-" disables)`)
	fs.IntVar(&cfg.Conns, "conns", defaultIdleConns, "connections to open (at most ~19000 per process here)")
	fs.Float64Var(&cfg.Rate, "rate", defaultIdleRate, "new connections per second")
	fs.IntVar(&topics, "topics", defaultIdleTopics, "distinct topics; connection i subscribes to <prefix><i mod topics> (0: none)")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", defaultTopicPrefix, "topic name prefix")
	fs.DurationVar(&cfg.Hold, "hold", defaultIdleHold, "how long to hold the connections open once connected")
	fs.StringVar(&sourceIPs, "source-ips", "", `local source addresses, e.g. "127.0.0.2-127.0.0.20" or "127.0.0.2,127.0.0.3"`)
	fs.DurationVar(&cfg.ConnectTimeout, "timeout", defaultConnectTimeout, "per-connection connect + upgrade timeout")
	fs.DurationVar(&cfg.ConnectPhaseMax, "connect-phase-max", 0, "bound on the whole connect phase (default 2×conns/rate + timeout)")
	fs.DurationVar(&cfg.CloseWait, "close-wait", defaultCloseWait, "how long to wait for the server to answer the final close frames")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	fs.StringVar(&out, "out", "", `write the JSON report to this file ("-": stdout)`)
	fs.Float64Var(&maxFailRatio, "max-fail-ratio", 0.01, "exit 1 when more than this share of connections failed or were lost")
	fs.BoolVar(&quiet, "quiet", false, "no live progress lines or bars")
	fs.StringVar(&htmlOut, "html", "", "also write a self-contained HTML report (tables and plots) to this file")
	fs.IntVar(&procs, "procs", 0, procsUsage)
	fs.StringVar(&cfg.ClientLoop, "client-loop", defaultClientLoop, clientLoopUsage)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "surge load idle: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if cfg.URL == "" {
		fmt.Fprintln(stderr, "surge load idle: --url is required")
		fs.Usage()
		return exitUsage
	}
	if cfg.Conns <= 0 || cfg.Rate <= 0 || topics < 0 || cfg.Hold < 0 {
		fmt.Fprintln(stderr, "surge load idle: --conns and --rate must be positive, --topics and --hold not negative")
		return exitUsage
	}
	cfg.Topics = topics
	if topics == 0 {
		cfg.Topics = -1 // IdleConfig: negative means none
	}
	if cfg.Hold == 0 {
		cfg.Hold = -1 // IdleConfig: negative means no hold
	}
	ips, err := ParseSourceIPs(sourceIPs)
	if err != nil {
		fmt.Fprintf(stderr, "surge load idle: --source-ips: %v\n", err)
		return exitUsage
	}
	cfg.SourceIPs = ips
	if isChild() {
		return idleChild(cfg, stdout, stderr)
	}
	live := newLiveProgress(stderr, quiet)
	cfg.Progress = live.idle(cfg.Conns, cfg.Hold)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(live, &slog.HandlerOptions{Level: slog.LevelInfo}))

	rep, err := runIdle(ctx, cfg, procs, args, stderr, log)
	live.stop()
	if rep == nil {
		fmt.Fprintf(stderr, "surge load idle: %v\n", err)
		return exitUsage
	}
	if code := writeOutputs("surge load idle", stdout, stderr, out, htmlOut, rep,
		func(w io.Writer) { writeIdleSummary(w, rep) }, func() htmlReport { return idleHTML(rep) }, err); code != exitOK {
		return code
	}
	if rep.FailRatio > maxFailRatio {
		fmt.Fprintf(stderr, "surge load idle: fail ratio %.4f is above --max-fail-ratio %.4f\n", rep.FailRatio, maxFailRatio)
		return exitFail
	}
	return exitOK
}

func mainFanout(args []string, stdout, stderr io.Writer) int {
	stderr = &lockedWriter{w: stderr}
	fs := flag.NewFlagSet("surge load fanout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg          FanoutConfig
		sourceIPs    string
		out          string
		maxFailRatio float64
		quiet        bool
		htmlOut      string
		procs        int
	)
	fs.StringVar(&cfg.URL, "url", "", "WebSocket endpoint, ws://host:port/ws (required); HTTP publishing uses the same host:port")
	fs.StringVar(&cfg.StatsURL, "stats-url", "", `stats endpoint (default http://host:port/v1/stats; "-" disables)`)
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "", `Prometheus endpoint read for process_cpu_seconds_total (default http://host:port/metrics; "-" disables)`)
	fs.IntVar(&cfg.Subs, "subs", defaultFanoutSubs, "subscriber connections (at most ~19000 per process here)")
	fs.IntVar(&cfg.Topics, "topics", defaultFanoutTopics, "topics; subscriber i subscribes to <prefix><i mod topics>")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", defaultFanoutPrefix, "topic name prefix")
	fs.Float64Var(&cfg.Rate, "rate", defaultFanoutRate, "messages published per second, in total over all topics")
	fs.IntVar(&cfg.Size, "size", defaultFanoutSize, "bytes of data per message (a padded JSON probe)")
	fs.DurationVar(&cfg.Duration, "duration", defaultFanoutDuration, "measured publishing time")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "publishing before the measured time (checked for loss, latency not recorded)")
	fs.DurationVar(&cfg.Drain, "drain", defaultFanoutDrain, "how long to wait for deliveries after the last publish (ends early when all arrived)")
	fs.StringVar(&cfg.Publish, "publish", publishHTTP, `how to publish: "http" (POST /v1/publish, pipelined) or "ws" (publish op over a WebSocket)`)
	fs.IntVar(&cfg.PublishConns, "publish-conns", defaultPublishConns, "keep-alive HTTP connections publishing (http only)")
	fs.IntVar(&cfg.PublishWindow, "publish-window", defaultPublishWindow, "publishes awaiting their answer per publishing connection")
	fs.DurationVar(&cfg.PublishTimeout, "publish-timeout", defaultPublishTimeout, "how long to wait for one publish's answer")
	fs.BoolVar(&cfg.Deflate, "deflate", false, "subscribers offer permessage-deflate (no context takeover either way)")
	fs.StringVar(&sourceIPs, "source-ips", "", `subscribers' local source addresses, e.g. "127.0.0.2-127.0.0.20"`)
	fs.Float64Var(&cfg.ConnectRate, "rate-connect", defaultFanoutConnectRate, "new subscriber connections per second")
	fs.DurationVar(&cfg.ConnectTimeout, "timeout", defaultConnectTimeout, "per-connection connect + upgrade timeout")
	fs.DurationVar(&cfg.ConnectPhaseMax, "connect-phase-max", 0, "bound on the whole connect phase (default 2×subs/rate-connect + timeout)")
	fs.DurationVar(&cfg.CloseWait, "close-wait", defaultCloseWait, "how long to wait for the server to answer the final close frames")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	fs.StringVar(&out, "out", "", `write the JSON report to this file ("-": stdout)`)
	fs.Float64Var(&maxFailRatio, "max-fail-ratio", 0.01, "exit 1 when more than this share of subscribers failed to connect or were closed by the server")
	fs.BoolVar(&quiet, "quiet", false, "no live progress lines or bars")
	fs.StringVar(&htmlOut, "html", "", "also write a self-contained HTML report (tables and plots) to this file")
	fs.IntVar(&procs, "procs", 0, procsUsage)
	fs.StringVar(&cfg.ClientLoop, "client-loop", defaultClientLoop, clientLoopUsage)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "surge load fanout: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if cfg.URL == "" {
		fmt.Fprintln(stderr, "surge load fanout: --url is required")
		fs.Usage()
		return exitUsage
	}
	if cfg.Subs <= 0 || cfg.Topics <= 0 || cfg.Rate <= 0 || cfg.Size <= 0 || cfg.Duration <= 0 || cfg.ConnectRate <= 0 {
		fmt.Fprintln(stderr, "surge load fanout: --subs, --topics, --rate, --size, --duration and --rate-connect must be positive")
		return exitUsage
	}
	ips, err := ParseSourceIPs(sourceIPs)
	if err != nil {
		fmt.Fprintf(stderr, "surge load fanout: --source-ips: %v\n", err)
		return exitUsage
	}
	cfg.SourceIPs = ips
	if isChild() {
		return fanoutChild(cfg, stdout, stderr)
	}
	live := newLiveProgress(stderr, quiet)
	cfg.Progress = live.fanout(cfg.Subs, cfg.Warmup+cfg.Duration)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(live, &slog.HandlerOptions{Level: slog.LevelInfo}))

	rep, err := runFanout(ctx, cfg, procs, args, stderr, log)
	live.stop()
	if rep == nil {
		fmt.Fprintf(stderr, "surge load fanout: %v\n", err)
		return exitUsage
	}
	if code := writeOutputs("surge load fanout", stdout, stderr, out, htmlOut, rep,
		func(w io.Writer) { writeFanoutSummary(w, rep) }, func() htmlReport { return fanoutHTML(rep) }, err); code != exitOK {
		return code
	}
	return fanoutVerdict(rep, maxFailRatio, stderr)
}

// fanoutVerdict prints why a fanout run failed and returns its exit code:
// 1 when any delivery was lost, duplicated or reordered, any publish failed
// or none succeeded, or the subscribers' fail ratio is above maxFailRatio.
func fanoutVerdict(rep *FanoutReport, maxFailRatio float64, stderr io.Writer) int {
	var why []string
	if rep.Lost > 0 {
		why = append(why, fmt.Sprintf("%d deliveries lost (%d subscribers affected)", rep.Lost, rep.SubscribersWithLoss))
	}
	if rep.Duplicates > 0 {
		why = append(why, fmt.Sprintf("%d duplicate deliveries", rep.Duplicates))
	}
	if rep.Reordered > 0 {
		why = append(why, fmt.Sprintf("%d reordered deliveries", rep.Reordered))
	}
	if rep.PublishErrors > 0 {
		why = append(why, fmt.Sprintf("%d publishes failed (%s)", rep.PublishErrors, counts(rep.PublishErrorsByCause)))
	}
	if rep.Published == 0 {
		why = append(why, "nothing was published")
	}
	if rep.FailRatio > maxFailRatio {
		why = append(why, fmt.Sprintf("subscriber fail ratio %.4f is above --max-fail-ratio %.4f", rep.FailRatio, maxFailRatio))
	}
	for _, w := range why {
		fmt.Fprintf(stderr, "surge load fanout: FAIL: %s\n", w)
	}
	if len(why) > 0 {
		return exitFail
	}
	return exitOK
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// writeOutputs ends a scenario's run: the human summary on stdout (on
// stderr when the JSON report goes to stdout), the JSON report to out and
// the HTML page to htmlOut when asked for. It returns exitFail when a file
// could not be written or the run ended with runErr, else exitOK; what is
// left is the scenario's own verdict.
func writeOutputs(prog string, stdout, stderr io.Writer, out, htmlOut string, rep any,
	summary func(io.Writer), page func() htmlReport, runErr error) int {
	w := stdout
	if out == "-" {
		w = stderr
	}
	summary(w)
	if out != "" {
		if err := writeReport(out, stdout, rep); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", prog, err)
			return exitFail
		}
	}
	if htmlOut != "" {
		if err := writeHTMLFile(htmlOut, page()); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", prog, err)
			return exitFail
		}
	}
	if runErr != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, runErr)
		return exitFail
	}
	return exitOK
}

// writeReport writes rep as indented JSON to path, or to stdout for "-".
func writeReport(path string, stdout io.Writer, rep any) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// writeIdleSummary prints a few human lines about rep.
func writeIdleSummary(w io.Writer, rep *IdleReport) {
	c := rep.Config
	fmt.Fprintf(w, "idle: %d/%d connected to %s in %.2fs (%.0f conns/s); failed %d (%s); not attempted %d\n",
		rep.Connected, c.Conns, c.URL, rep.RampS, rep.ConnectRate, rep.Failed, counts(rep.FailedByCause), rep.NotAttempted)
	l := rep.ConnectLatencyMs
	fmt.Fprintf(w, "connect latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
		l.P50, l.P90, l.P99, l.P999, l.Max)
	fmt.Fprintf(w, "hold %.1fs: open %d → %d; server closes by code: connect (%s), hold (%s); pings answered %d\n",
		c.HoldS, rep.OpenAfterConnect, rep.OpenAfterHold,
		counts(rep.ClosesDuringConnect), counts(rep.ClosesDuringHold), rep.PingsAnswered)
	if b := rep.ServerBytesPerConn; b != nil {
		fmt.Fprintf(w, "server memory per connection: rss %s, heap in use %s\n", bytesOrNA(b.RSS), bytesOrNA(b.HeapInuse))
	} else {
		fmt.Fprintln(w, "server memory per connection: not reported by the stats endpoint")
	}
	if b := rep.GeneratorBytesPerConn; b != nil {
		fmt.Fprintf(w, "generator memory per connection: rss %s, heap in use %s\n", bytesOrNA(b.RSS), bytesOrNA(b.HeapInuse))
	}
	interrupted := ""
	if rep.Interrupted {
		interrupted = " (interrupted)"
	}
	fmt.Fprintf(w, "closed: %d clean, %d unclean; fail ratio %.4f; %.1fs total%s\n",
		rep.ClosedClean, rep.ClosedUnclean, rep.FailRatio, rep.DurationS, interrupted)
}

// counts renders a count map as "a 1, b 2", or "none" when empty.
func counts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func bytesOrNA(v *float64) string {
	if v == nil {
		return "n/a"
	}
	switch a := *v; {
	case a >= 1<<20 || a <= -(1<<20):
		return fmt.Sprintf("%.2f MiB", a/(1<<20))
	case a >= 1<<10 || a <= -(1<<10):
		return fmt.Sprintf("%.2f KiB", a/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", a)
	}
}
