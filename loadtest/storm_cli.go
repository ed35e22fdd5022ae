package loadtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// mainStorm runs `surge load storm`.
func mainStorm(args []string, stdout, stderr io.Writer) int {
	stderr = &lockedWriter{w: stderr}
	fs := flag.NewFlagSet("surge load storm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg          StormConfig
		since        bool
		sourceIPs    string
		out          string
		htmlOut      string
		maxFailRatio float64
		quiet        bool
	)
	fs.StringVar(&cfg.URL, "url", "", "WebSocket endpoint, ws://host:port/ws (required); publishing uses POST /v1/publish on the same host:port")
	fs.StringVar(&cfg.StatsURL, "stats-url", "", `stats endpoint (default http://host:port/v1/stats; "-" disables)`)
	fs.IntVar(&cfg.Conns, "conns", defaultStormConns, "clients (at most ~19000 per process here)")
	fs.IntVar(&cfg.Topics, "topics", 1, "topics; client i subscribes to <prefix><i mod topics>")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", defaultStormPrefix, "topic name prefix")
	fs.Float64Var(&cfg.Rate, "rate", defaultStormRate, "messages published per second over HTTP, in total, during the whole run")
	fs.IntVar(&cfg.Size, "size", defaultFanoutSize, "bytes of data per message")
	fs.Float64Var(&cfg.ConnectRate, "rate-connect", defaultFanoutConnectRate, "new connections per second in the initial connect phase")
	fs.DurationVar(&cfg.BeforeDrop, "before-drop", defaultStormBeforeDrop, "publishing with every client connected before the drop")
	fs.StringVar(&cfg.Drop, "drop", dropAbrupt, `how every client leaves at once: "abrupt" (TCP close, no close frame) or "close" (close frame 1000)`)
	fs.StringVar(&cfg.Reconnect, "reconnect", reconnectJitter, `"immediate" (every attempt at once) or "jitter" (exponential backoff with full jitter)`)
	fs.DurationVar(&cfg.BackoffMin, "backoff-min", defaultStormBackoffMin, "jitter: first retry waits up to this; each further retry doubles it")
	fs.DurationVar(&cfg.BackoffMax, "backoff-max", defaultStormBackoffMax, "jitter: cap of the backoff")
	fs.DurationVar(&cfg.JitterWindow, "jitter-window", defaultStormJitterWindow, "jitter: the first attempt is spread uniformly over this window after the drop (negative: immediate)")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", defaultStormMaxAttempts, "reconnect attempts per client at most")
	fs.BoolVar(&since, "since", true, "resubscribe with the subscribe op's since (last seq seen) and epoch; --since=false: plain ?topic= reconnects")
	fs.DurationVar(&cfg.StormTimeout, "storm-timeout", defaultStormTimeout, "bound on the reconnect phase, from the drop")
	fs.DurationVar(&cfg.Hold, "hold", defaultStormHold, "publishing after every client is back (or the timeout)")
	fs.DurationVar(&cfg.Drain, "drain", defaultFanoutDrain, "how long to wait for the last messages after publishing stops")
	fs.IntVar(&cfg.PublishConns, "publish-conns", defaultStormPublishConns, "keep-alive HTTP connections publishing")
	fs.IntVar(&cfg.PublishWindow, "publish-window", defaultPublishWindow, "publishes awaiting their answer per publishing connection")
	fs.DurationVar(&cfg.PublishTimeout, "publish-timeout", defaultPublishTimeout, "how long to wait for one publish's answer")
	fs.StringVar(&sourceIPs, "source-ips", "", `clients' local source addresses, e.g. "127.0.0.2-127.0.0.5"`)
	fs.DurationVar(&cfg.ConnectTimeout, "timeout", defaultConnectTimeout, "per-attempt connect + upgrade (+ subscribe answer) timeout")
	fs.DurationVar(&cfg.ConnectPhaseMax, "connect-phase-max", 0, "bound on the initial connect phase (default 2×conns/rate-connect + timeout)")
	fs.DurationVar(&cfg.CloseWait, "close-wait", defaultCloseWait, "how long to wait for the server to answer a close frame")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	fs.BoolVar(&cfg.PerClient, "per-client", false, "add one entry per client to the JSON report")
	fs.StringVar(&out, "out", "", `write the JSON report to this file ("-": stdout)`)
	fs.StringVar(&htmlOut, "html", "", "also write a self-contained HTML report (tables and plots) to this file")
	fs.Float64Var(&maxFailRatio, "max-fail-ratio", 0, "exit 1 when more than this share of clients is not back before --storm-timeout")
	fs.BoolVar(&quiet, "quiet", false, "no live progress lines")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "surge load storm: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if cfg.URL == "" {
		fmt.Fprintln(stderr, "surge load storm: --url is required")
		fs.Usage()
		return exitUsage
	}
	if cfg.Conns <= 0 || cfg.Topics <= 0 || cfg.Rate <= 0 || cfg.Size <= 0 || cfg.ConnectRate <= 0 ||
		cfg.StormTimeout <= 0 || cfg.MaxAttempts <= 0 || cfg.BackoffMin <= 0 || cfg.BackoffMax <= 0 {
		fmt.Fprintln(stderr, "surge load storm: --conns, --topics, --rate, --size, --rate-connect, --storm-timeout, --max-attempts, --backoff-min and --backoff-max must be positive")
		return exitUsage
	}
	if cfg.BeforeDrop < 0 || cfg.Hold < 0 || maxFailRatio < 0 {
		fmt.Fprintln(stderr, "surge load storm: --before-drop, --hold and --max-fail-ratio must not be negative")
		return exitUsage
	}
	if cfg.Drop != dropAbrupt && cfg.Drop != dropClose {
		fmt.Fprintf(stderr, "surge load storm: --drop %q: want %q or %q\n", cfg.Drop, dropAbrupt, dropClose)
		return exitUsage
	}
	if cfg.Reconnect != reconnectImmediate && cfg.Reconnect != reconnectJitter {
		fmt.Fprintf(stderr, "surge load storm: --reconnect %q: want %q or %q\n", cfg.Reconnect, reconnectImmediate, reconnectJitter)
		return exitUsage
	}
	if cfg.BeforeDrop == 0 {
		cfg.BeforeDrop = 1 // StormConfig: zero means the default
	}
	if cfg.Hold == 0 {
		cfg.Hold = -1 // StormConfig: negative means none
	}
	if cfg.JitterWindow == 0 {
		cfg.JitterWindow = -1 // StormConfig: negative means immediate
	}
	cfg.NoSince = !since
	ips, err := ParseSourceIPs(sourceIPs)
	if err != nil {
		fmt.Fprintf(stderr, "surge load storm: --source-ips: %v\n", err)
		return exitUsage
	}
	cfg.SourceIPs = ips
	if !quiet {
		cfg.Progress = func(p StormProgress) {
			fmt.Fprintf(stderr, "%6.1fs %-7s connected=%d open=%d back=%d attempts=%d refused=%d published=%d\n",
				p.Elapsed.Seconds(), p.Phase, p.Connected, p.Open, p.Back, p.Attempts, p.Refused, p.Published)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	rep, err := Storm(ctx, cfg, log)
	if rep == nil {
		fmt.Fprintf(stderr, "surge load storm: %v\n", err)
		return exitUsage
	}
	if code := writeOutputs("surge load storm", stdout, stderr, out, htmlOut, rep,
		func(w io.Writer) { writeStormSummary(w, rep) }, func() htmlReport { return stormHTML(rep) }, err); code != exitOK {
		return code
	}
	return stormVerdict(rep, maxFailRatio, stderr)
}

// stormVerdict prints why a storm run failed and returns its exit code: 1
// when more than maxFailRatio of the clients are not back, when with since
// any message was lost by a client that came back, or when nothing was
// published.
func stormVerdict(rep *StormReport, maxFailRatio float64, stderr io.Writer) int {
	var why []string
	if rep.FailRatio > maxFailRatio {
		why = append(why, fmt.Sprintf("%d of %d clients not back (%d never connected): fail ratio %.4f is above --max-fail-ratio %.4f",
			rep.NotBack+rep.Clients.Failed+rep.Clients.NotAttempted, rep.Config.Conns, rep.Clients.Failed+rep.Clients.NotAttempted,
			rep.FailRatio, maxFailRatio))
	}
	if rep.Config.Since && rep.Lost > 0 {
		why = append(why, fmt.Sprintf("with since, %d messages lost (%d in gaps on %d clients; %d recovery_incomplete)",
			rep.Lost, rep.Missed, rep.ClientsWithMissed, rep.RecoveryIncomplete))
	}
	if rep.Published == 0 {
		why = append(why, "nothing was published")
	}
	for _, w := range why {
		fmt.Fprintf(stderr, "surge load storm: FAIL: %s\n", w)
	}
	if len(why) > 0 {
		return exitFail
	}
	return exitOK
}
