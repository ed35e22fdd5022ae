// Package engine wires Surge together: the poller accepts sockets, each
// becomes a session (a conn.Conn plus its subscriptions), WebSocket requests
// are upgraded, plain HTTP requests go to the HTTP API, and the topic
// registry fans messages out. It owns the lifecycle (New, Start, Shutdown),
// configuration, stats and metrics.
//
// An Engine is safe for concurrent use; two Engines in one process are
// independent except for netpoll's process-wide settings (see package poller).
package engine
