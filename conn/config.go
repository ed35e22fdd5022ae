package conn

import (
	"sync"
	"time"
)

// Config holds the limits shared by every connection of one server. The zero
// value is valid: [Config.Normalize] fills each unset field with the default
// named in its comment. A Config must not change after the first [New].
type Config struct {
	// MaxHeaderBytes bounds an HTTP request head; larger → 431. Default 8 KiB.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a plain HTTP request body; larger → 413. Default 1 MiB.
	MaxBodyBytes int64
	// MaxMessageSize bounds one WebSocket message after reassembly (and after
	// decompression); larger → close 1009. Default 1 MiB.
	MaxMessageSize int64
	// WriteQueueFrames and WriteQueueBytes bound the frames and bytes waiting
	// for a socket to become writable; overflow closes the connection with
	// ReasonWriteQueueFull. Defaults 1024 frames and 4 MiB.
	WriteQueueFrames int
	WriteQueueBytes  int
	// PingInterval is how long a connection may be silent before the server
	// pings it. Default 25s.
	PingInterval time.Duration
	// PongTimeout is how long after a ping the peer has to send anything
	// (a pong or any frame) before it is closed with ReasonPingTimeout.
	// Default 10s.
	PongTimeout time.Duration
	// HandshakeTimeout bounds the time from accept to a complete request
	// head, and the idle time of a keep-alive HTTP connection. Default 5s.
	HandshakeTimeout time.Duration
	// CloseTimeout bounds how long a closing connection may take to flush its
	// close frame and receive the peer's reply. Default 3s.
	CloseTimeout time.Duration

	// Deflater compresses and inflates permessage-deflate messages; New
	// allocates one when nil.
	Deflater *Deflater

	// OnStall, when set, is called with the queued frames and bytes each
	// time a connection's socket fills and it starts waiting for write
	// readiness (for a queue-depth histogram). It must be fast and must not
	// call back into the Conn.
	OnStall func(frames, bytes int)

	// Counters receives the overflow-policy counts; New allocates one when nil.
	Counters *Counters

	readPool  sync.Pool
	writePool sync.Pool
}

func (c *Config) counters() *Counters { return c.Counters }

// Normalize fills the defaults of unset fields.
func (c *Config) Normalize() {
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 8 << 10
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 1 << 20
	}
	if c.WriteQueueFrames <= 0 {
		c.WriteQueueFrames = 1024
	}
	if c.WriteQueueBytes <= 0 {
		c.WriteQueueBytes = 4 << 20
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.PongTimeout <= 0 {
		c.PongTimeout = 10 * time.Second
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 3 * time.Second
	}
	if c.Deflater == nil {
		c.Deflater = new(Deflater)
	}
	if c.Counters == nil {
		c.Counters = new(Counters)
	}
}

func (c *Config) getReadState() *readState {
	if rs, ok := c.readPool.Get().(*readState); ok {
		return rs
	}
	return new(readState)
}

func (c *Config) putReadState(rs *readState) {
	msg := rs.msg
	if cap(msg) > 64<<10 {
		msg = nil // do not pool large buffers
	}
	inflated := rs.inflated
	if cap(inflated) > 64<<10 {
		inflated = nil
	}
	*rs = readState{msg: msg[:0], inflated: inflated[:0]}
	c.readPool.Put(rs)
}

func (c *Config) getWriteQueue() *writeQueue {
	if q, ok := c.writePool.Get().(*writeQueue); ok {
		return q
	}
	return &writeQueue{bufs: make([][]byte, 0, 8), meta: make([]entryMeta, 0, 8)}
}

func (c *Config) putWriteQueue(q *writeQueue) {
	if cap(q.bufs) > 256 {
		return
	}
	clear(q.bufs[:cap(q.bufs)])
	clear(q.meta[:cap(q.meta)])
	q.bufs, q.meta, q.head, q.bytes, q.partial = q.bufs[:0], q.meta[:0], 0, 0, false
	c.writePool.Put(q)
}
