package conn

// Reason says why a connection ended. Every closed connection carries exactly
// one; it is a metric label and a /v1/stats key, so the set is small and fixed.
type Reason uint8

// Close reasons. The zero value means the connection is still open.
const (
	ReasonNone             Reason = iota
	ReasonClientClose             // the peer sent a close frame
	ReasonPeerGone                // TCP closed or reset without a close frame (1006)
	ReasonProtocolError           // RFC 6455 violation (1002)
	ReasonInvalidPayload          // bad UTF-8 in a text message or close reason (1007)
	ReasonTooBig                  // message above the configured maximum (1009)
	ReasonPingTimeout             // no pong (nor any other frame) in time
	ReasonWriteQueueFull          // write queue overflow (slow consumer)
	ReasonWriteError              // the socket failed while writing
	ReasonHandshakeTimeout        // the HTTP request did not arrive in time
	ReasonHandshakeFailed         // the upgrade request was rejected
	ReasonHTTPDone                // a plain HTTP exchange finished (not a WebSocket)
	ReasonPolicy                  // the application closed it (1008)
	ReasonShutdown                // server shutdown (1001)
	ReasonInternal                // an internal error (1011)
	reasonCount
)

var reasonNames = [reasonCount]string{
	ReasonNone:             "none",
	ReasonClientClose:      "client_close",
	ReasonPeerGone:         "peer_gone",
	ReasonProtocolError:    "protocol_error",
	ReasonInvalidPayload:   "invalid_payload",
	ReasonTooBig:           "too_big",
	ReasonPingTimeout:      "ping_timeout",
	ReasonWriteQueueFull:   "write_queue_full",
	ReasonWriteError:       "write_error",
	ReasonHandshakeTimeout: "handshake_timeout",
	ReasonHandshakeFailed:  "handshake_failed",
	ReasonHTTPDone:         "http_done",
	ReasonPolicy:           "policy",
	ReasonShutdown:         "shutdown",
	ReasonInternal:         "internal_error",
}

// String returns the snake_case label used in metrics and stats.
func (r Reason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every close reason except ReasonNone, in enum order.
func Reasons() []Reason {
	rs := make([]Reason, 0, reasonCount-1)
	for r := ReasonNone + 1; r < reasonCount; r++ {
		rs = append(rs, r)
	}
	return rs
}

// NumReasons is the number of distinct reasons including ReasonNone; arrays
// of per-reason counters are indexed by Reason.
const NumReasons = int(reasonCount)
