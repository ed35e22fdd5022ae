// Package poller owns sockets: it listens and accepts with cloudwego/netpoll
// event loops, hands received bytes and readiness to a per-connection
// [Events] value (a conn.Conn in production), and performs non-blocking
// writes with write-readiness from a small epoll of its own. It is the only
// package that imports netpoll.
//
// No goroutine is created per connection: netpoll's pollers deliver reads,
// one goroutine waits for write readiness, and every handler runs on a
// bounded ants pool.
//
// netpoll keeps its configuration in process-wide variables (buffer sizes,
// the task runner). The first Poller created in a process applies its
// [Config] to them; later Pollers share that setting, which is the one
// process-wide state of Surge and is logged.
package poller
