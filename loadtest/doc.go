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
//   - Fanout (`surge load fanout`): subscribers on topics, a paced
//     publisher; end-to-end latency and exact loss, duplicates, reordering.
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
// Safety: a scenario refuses any target that does not resolve only to
// loopback addresses (127.0.0.0/8, ::1) unless the config sets AllowRemote,
// and the check happens before any packet is sent. Every loop is bounded by a
// count and a deadline.
//
// Concurrency: Idle, Fanout, Storm and Main may be called from several goroutines at once;
// they share no package-level state.
package loadtest
