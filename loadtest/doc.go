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
//
// Safety: a scenario refuses any target that does not resolve only to
// loopback addresses (127.0.0.0/8, ::1) unless the config sets AllowRemote,
// and the check happens before any packet is sent. Every loop is bounded by a
// count and a deadline.
//
// Concurrency: Idle and Main may be called from several goroutines at once;
// they share no package-level state.
package loadtest
