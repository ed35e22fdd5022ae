// Command surge is the Surge WebSocket push engine: `surge serve` runs the
// server, `surge load` the load generator, `surge tune` checks the machine's
// limits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/surgepush/surge/engine"
	"github.com/surgepush/surge/loadtest"
	"github.com/surgepush/surge/tuning"
)

const usage = `usage: surge <command> [flags]

commands:
  serve   run the WebSocket push server (surge serve -h for settings)
  load    run the load generator (surge load -h)
  tune    check ulimits, sysctls and memory for N connections (surge tune -h)
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "load":
		return loadtest.Main(args[1:], stdout, stderr)
	case "tune":
		return tuning.Main(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "surge: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func serve(args []string, stderr io.Writer) int {
	var cfg engine.Config
	fs := flag.NewFlagSet("surge serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (settings as below; flags and SURGE_* variables win)")
	cfg.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	// Precedence: defaults < file < environment < flags.
	if *configPath != "" {
		if err := cfg.LoadFile(*configPath); err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
	}
	if err := cfg.LoadEnv(os.LookupEnv); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	_ = fs.Parse(args)
	cfg.Normalize()

	log, err := newLogger(cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	e, err := engine.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := e.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	s := <-sig
	for s == syscall.SIGHUP {
		if err := e.ReloadTLS(); err != nil {
			log.Error("reload on SIGHUP failed; keeping the old certificate", "err", err)
		}
		s = <-sig
	}
	log.Info("shutting down", "signal", s.String(), "timeout", e.Config().ShutdownTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), e.Config().ShutdownTimeout)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		log.Warn("shutdown incomplete", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg engine.Config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("surge: log-level %q: want debug, info, warn or error", cfg.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(cfg.LogFormat) {
	case "", "text":
		return slog.New(engine.NewSampledHandler(slog.NewTextHandler(w, opts), cfg.LogSample)), nil
	case "json":
		return slog.New(engine.NewSampledHandler(slog.NewJSONHandler(w, opts), cfg.LogSample)), nil
	}
	return nil, fmt.Errorf("surge: log-format %q: want text or json", cfg.LogFormat)
}
