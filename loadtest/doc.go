// Package loadtest is the load generator behind `surge load`.
//
// Every scenario speaks only the outside contract of a Surge-compatible
// server (GET /ws with ?topic=, GET /v1/stats), never Surge internals, so the
// same scenario can measure any server that speaks that contract.
//
// Scenarios:
//   - Idle (`surge load idle`): open N WebSocket connections at a paced rate,
//     hold them open, answer server pings, and report connect latency, failure
//     causes, server-initiated closes and the memory each connection costs the
//     server and the generator.
//   - Fanout (`surge load fanout`): connect subscribers, publish at a fixed
//     rate over HTTP or WebSocket, and report end-to-end latency and exactly
//     how many deliveries were lost, duplicated or reordered.
//
// Outputs: a few summary lines on stdout; with --out the JSON report
// (IdleReport, FanoutReport), whose latency fields include an HDR-derived
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
// Safety: a scenario refuses any target that does not resolve only to
// loopback addresses (127.0.0.0/8, ::1) unless the config sets AllowRemote,
// and the check happens before any packet is sent. Every loop is bounded by a
// count and a deadline.
//
// Concurrency: Idle, Fanout and Main may be called from several goroutines
// at once; they share no package-level state.
package loadtest
