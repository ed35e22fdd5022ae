// Package conn implements one server-side WebSocket connection as a state
// machine that works on bytes: the HTTP/1.1 request phase (handshake or a
// plain API request), RFC 6455 frame parsing in place, control frames, the
// close handshake, a bounded write queue with backpressure, and heartbeat
// state driven by a shared [Wheel].
//
// The package does not know about sockets or epoll. A [Transport] supplied by
// the caller (package poller in production, a fake in tests) performs
// non-blocking writes and arms write-readiness notifications; the caller
// feeds received bytes with [Conn.Feed] and reports readiness with
// [Conn.OnWritable] and end of stream with [Conn.OnTransportClosed].
//
// Concurrency: Feed must not be called concurrently with itself for one
// Conn (the poller serialises reads per connection). Send, Close and the
// heartbeat are safe to call from any goroutine at any time.
package conn
