// Package loadtest is the load generator behind `surge load`.
//
// Every scenario speaks only the outside contract of a Surge-compatible
// server (GET /ws with ?topic=, GET /v1/stats), never Surge internals, so the
// same scenario can measure any server that speaks that contract.
//
// Scenarios:
//
//   - Idle (`surge load idle`): open N WebSocket connections at a paced rate,
//     hold them open, answer server pings, and report connect latency, failure
//     causes, server-initiated closes and the memory each connection costs the
//     server and the generator.
//   - Fanout (`surge load fanout`): connect subscribers, publish at a fixed
//     rate over HTTP or WebSocket, and report end-to-end latency and exactly
//     how many deliveries were lost, duplicated or reordered.
//   - Storm (`surge load storm`): a reconnect storm. --conns clients connect
//     (paced by --rate-connect), client i subscribed to <--topic-prefix><i mod
//     --topics>; a publisher POSTs /v1/publish at --rate msg/s for the whole
//     run (fanout's publisher and probe); after --before-drop every client
//     drops at once (--drop abrupt: TCP close without a close frame, the
//     default; --drop close: close frame 1000) and reconnects (--reconnect
//     immediate, or jitter: the first attempt spread over --jitter-window,
//     retry n after a uniform wait in [0, min(--backoff-max,
//     --backoff-min·2^(n−1))), at most --max-attempts). With --since (the
//     default) subscriptions use the subscribe op and a reconnecting client
//     sends {"op":"subscribe","topic":…,"since":<last seq seen>,"epoch":…};
//     --since=false reconnects to /ws?topic=… for live messages only. The
//     reconnect phase ends when all are back or after --storm-timeout; then
//     --hold, a drain (--drain) and the close. The report gives per-client
//     reconnect time (p50/p90/p99/p99.9/max), time until all were back,
//     attempts, failed attempts by cause (http_503, http_429, refused,
//     timeout, …), recovery_incomplete answers, and, exactly by publish
//     counter and seq, the messages each client missed in its gap. Exit 1
//     when more than --max-fail-ratio (default 0) of the clients is not back,
//     or with --since when any message was lost.
//
// Client loops (--client-loop, evloop.go): how fanout subscribers and idle
// connections read their sockets. "epoll", the default on Linux
// (evloop_linux.go): after the gobwas handshake the socket's descriptor is
// duplicated (close-on-exec), the net.Conn closed, and the duplicate, now
// owned by the clientConn, is registered level-triggered (EPOLLIN |
// EPOLLRDHUP) with one of GOMAXPROCS event loops, each a goroutine in
// epoll_wait. On readiness a loop does one read into its 64 KiB buffer and
// parses every complete frame in it (loopConn.feed): messages that fit one
// read are handed over in place, valid until the handler returns; only a
// split header (≤ 14 bytes), control payload or message is kept per
// connection, the last in a pooled buffer. Messages are timestamped when
// the read returns and go through the same accounting as in goroutine mode
// (deliver, serverGone / serverClosed); pings are answered, server closes
// echoed and protocol errors failed with their status as there. Writes
// (pongs, closes) go straight to the non-blocking socket; one that would
// block fails the connection (the client writes a few control frames only).
// Only the loop closes a descriptor; other goroutines end a connection with
// clientConn.abort, a shutdown(2). "goroutine" (every platform, the
// default elsewhere): one goroutine per connection blocking in net.Conn
// reads. Storm clients and the ws publisher always use goroutines.
//
// Outputs: a few summary lines on stdout; with --out the JSON report
// (IdleReport, FanoutReport, StormReport), whose latency fields include an HDR-derived
// LatencyDistribution (percentiles and log-spaced buckets) and a timeline;
// with --html a self-contained HTML page drawn from the same report (html.go:
// writeHTML takes a scenario-neutral htmlReport — title, summary tables, a
// latency distribution, timeline series — so every scenario reuses it; the
// plots are inline SVG made in Go with html/template, and the page loads and
// runs nothing).
//
// Progress (progress.go): once a second a plain line on stderr; when stderr
// is a terminal, mpb progress bars below the lines (connections made of the
// target; publishing or hold time), with log records printed above them.
// Not a terminal (tests, CI, pipes): plain lines only. --quiet: neither.
//
// Several processes (--procs, procs.go): one process holds at most its
// RLIMIT_NOFILE sockets, so Main spreads a scenario's connections over child
// processes of its own binary (os.Executable, `load <scenario>` and the same
// flags, the shard in SURGE_LOAD_SHARD). --procs 0, the default, is
// ceil(conns / (limit − 1000)) after raising the soft limit to the hard one;
// 1 runs in-process. Children take contiguous index ranges, so connection i
// subscribes to topic i mod Topics overall, with their share of the connect
// rate and of --source-ips (distinct addresses when there are at least as
// many as children). They talk JSON lines: progress, phase messages and a
// final report with HDR-encoded histograms on stdout; commands from the
// parent on stdin. The parent alone reads server stats and (fanout)
// publishes; before the drain it sends every child the exact set of
// acknowledged publishes per topic, so each child's loss count stays exact.
// The merged report has the single-process schema (counts summed, histograms
// merged, percentiles exact) with config.procs set. Children die with the
// parent (Pdeathsig SIGKILL on Linux) and are SIGTERMed, then killed, and
// always waited for, when a child fails, a phase times out or the run is
// interrupted.
//
// Safety: a scenario refuses any target that does not resolve only to
// loopback addresses (127.0.0.0/8, ::1) unless the config sets AllowRemote,
// and the check happens before any packet is sent. Every loop is bounded by a
// count and a deadline.
//
// Concurrency: Idle, Fanout and Main may be called from several goroutines
// at once; they share no package-level state (each run has its own event
// loops, started by the connect phase and stopped by the close). A process started with
// SURGE_LOAD_SHARD set runs Main as a child (reading commands from stdin).
package loadtest
