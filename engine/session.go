package engine

import (
	"encoding/json"
	"net/url"
	"strconv"
	"strings"

	"github.com/gobwas/ws"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/topics"
)

// session is one accepted socket: the connection state machine plus what
// the engine keeps per connection. It is the one object allocated per
// connection by the engine.
type session struct {
	conn.Conn
	e        *Engine
	mode     uint8   // modeWS or modeEcho once upgraded
	opTokens float32 // in-band op token bucket (OpsPerSecond, burst 2×)
	opLast   int64   // wheel ms of the last refill
	subs     []*topics.Sub
	grant    *Grant // nil when authentication is off
}

const (
	modeHTTP = iota
	modeWS
	modeEcho
)

var _ conn.Handler = (*session)(nil)

// ServeHTTP implements conn.Handler for the request phase.
func (s *session) ServeHTTP(c *conn.Conn, head *conn.RequestHead, raw []byte) {
	e := s.e
	path := string(head.Path)
	switch {
	case path == "/ws" || (path == "/echo" && e.cfg.Echo):
		s.upgrade(head, raw, path == "/echo")
	default:
		e.serveAPI(c, head, raw)
	}
}

func (s *session) upgrade(head *conn.RequestHead, raw []byte, echo bool) {
	e := s.e
	if e.draining.Load() {
		s.RejectHTTP(&conn.HTTPError{Status: 503, Msg: "server shutting down", Header: "Retry-After: 5\r\n"})
		return
	}
	if !originAllowed(e.origins, string(head.Origin)) {
		e.st.reject(e.log, rejectOrigin)
		s.RejectHTTP(&conn.HTTPError{Status: 403, Msg: "origin not allowed"})
		return
	}
	if e.auth != nil {
		g, err := e.auth.verify(TokenFrom(string(head.Authorization), string(head.Query), string(head.Protocols)))
		if err != nil {
			e.st.reject(e.log, rejectAuth)
			s.RejectHTTP(&conn.HTTPError{Status: 401, Msg: err.Error(), Header: "WWW-Authenticate: Bearer realm=\"surge\"\r\n"})
			return
		}
		s.grant = &g
	}
	var names []string
	if !echo && len(head.Query) > 0 {
		q, err := url.ParseQuery(string(head.Query))
		if err != nil {
			e.st.handshakeFail(e.log, hsBadQuery, err)
			s.RejectHTTP(&conn.HTTPError{Status: 400, Msg: "malformed query string"})
			return
		}
		names = q["topic"]
		if len(names) > e.cfg.MaxSubscriptions {
			e.st.reject(e.log, rejectTooManyTopics)
			s.RejectHTTP(&conn.HTTPError{Status: 400, Msg: "too many topics (max-subscriptions)"})
			return
		}
		for _, n := range names {
			if !topics.ValidName(n) {
				e.st.handshakeFail(e.log, hsBadTopic, nil)
				s.RejectHTTP(&conn.HTTPError{Status: 400, Msg: "invalid topic " + quoteTrunc(n) + ": " + topics.ErrTopicName.Error()})
				return
			}
			if s.grant != nil && !Allows(s.grant.Subscribe, n) {
				e.st.reject(e.log, rejectTopicForbidden)
				s.RejectHTTP(&conn.HTTPError{Status: 403, Msg: "token does not allow subscribing to " + quoteTrunc(n)})
				return
			}
		}
	}
	u := e.up
	u.Protocol = func(p []byte) bool { return string(p) == JWTSubprotocol }
	var deflate bool
	if *e.cfg.Deflate {
		u.Negotiate = conn.NegotiateDeflate(&deflate)
	}
	if _, err := s.Upgrade(raw, head, &u); err != nil {
		e.st.handshakeFail(e.log, hsRejected, err)
		return
	}
	e.st.upgraded.Add(1)
	e.st.wsOpen.Add(1)
	if deflate {
		e.st.deflateConns.Add(1)
	}
	if s.grant != nil && !s.grant.Expires.IsZero() {
		s.SetExpiry(s.grant.Expires)
	}
	s.opTokens, s.opLast = float32(2*e.cfg.OpsPerSecond), e.wheel.Now()
	if echo {
		s.mode = modeEcho
		return
	}
	s.mode = modeWS
	for _, n := range names {
		s.subscribe(n, nil, nil)
	}
}

func (s *session) find(name string) int {
	for i, sub := range s.subs {
		if sub.Topic().Name() == name {
			return i
		}
	}
	return -1
}

func (s *session) subscribe(name string, since *uint64, ready func(topics.Recovery)) error {
	return s.subscribeEpoch(name, since, "", ready)
}

func (s *session) subscribeEpoch(name string, since *uint64, epoch string, ready func(topics.Recovery)) error {
	if s.find(name) >= 0 {
		if ready != nil {
			ready(topics.Recovery{Complete: true})
		}
		return nil
	}
	sub, _, err := s.e.reg.SubscribeEpoch(name, &s.Conn, since, epoch, ready)
	if err != nil {
		return err
	}
	s.subs = append(s.subs, sub)
	return nil
}

func (s *session) unsubscribe(name string) bool {
	i := s.find(name)
	if i < 0 {
		return false
	}
	s.e.reg.Unsubscribe(s.subs[i])
	last := len(s.subs) - 1
	s.subs[i] = s.subs[last]
	s.subs[last] = nil
	s.subs = s.subs[:last]
	return true
}

// clientOp is one client → server request.
type clientOp struct {
	Op    string          `json:"op"`
	Topic string          `json:"topic"`
	ID    json.RawMessage `json:"id"`
	Since *uint64         `json:"since"`
	Data  json.RawMessage `json:"data"`
	Key   string          `json:"key"`
	Epoch string          `json:"epoch"`
}

// ParseOp parses a client text frame; it is the client-op parser the fuzz
// target exercises.
func parseOp(payload []byte) (clientOp, error) {
	var op clientOp
	err := json.Unmarshal(payload, &op)
	return op, err
}

// OnMessage implements conn.Handler.
func (s *session) OnMessage(c *conn.Conn, op ws.OpCode, payload []byte) {
	e := s.e
	e.st.msgIn.Add(1)
	e.st.bytesIn.Add(int64(len(payload)))
	if s.mode == modeEcho {
		var frame []byte
		if c.Deflate() && len(payload) >= e.cfg.DeflateThreshold {
			frame = e.deflater.CompressFrame(op, payload)
		} else {
			frame = conn.NewFrame(op, payload)
		}
		if c.Send(frame) {
			e.st.echoed.Add(1)
		}
		return
	}
	if !s.takeOp() {
		e.st.opsLimited.Add(1)
		c.Close(ws.StatusPolicyViolation, conn.ReasonPolicy, "too many requests")
		return
	}
	if op != ws.OpText {
		s.reply(errorReply("", "bad_request", "binary frames are not accepted from clients; send JSON text"))
		return
	}
	req, err := parseOp(payload)
	if err != nil {
		s.reply(errorReply("", "bad_request", "message is not a JSON object: "+err.Error()))
		return
	}
	id := string(req.ID)
	switch req.Op {
	case "subscribe":
		if !topics.ValidName(req.Topic) {
			s.reply(errorReply(id, "bad_topic", topics.ErrTopicName.Error()))
			return
		}
		if s.grant != nil && !Allows(s.grant.Subscribe, req.Topic) {
			e.st.forbidden.Add(1)
			s.reply(errorReply(id, "forbidden", "token does not allow subscribing to "+req.Topic))
			return
		}
		if len(s.subs) >= e.cfg.MaxSubscriptions && s.find(req.Topic) < 0 {
			s.reply(errorReply(id, "too_many_subscriptions", "subscription limit reached (max-subscriptions)"))
			return
		}
		err := s.subscribeEpoch(req.Topic, req.Since, req.Epoch, func(rec topics.Recovery) {
			if rec.Requested && !rec.Complete {
				s.reply(recoveryReply(id, req.Topic, rec))
				return
			}
			s.reply(okSubscribeReply(id, req.Topic, rec))
		})
		if err != nil {
			s.reply(errorReply(id, "bad_topic", err.Error()))
		}
	case "unsubscribe":
		if !topics.ValidName(req.Topic) {
			s.reply(errorReply(id, "bad_topic", topics.ErrTopicName.Error()))
			return
		}
		if !s.unsubscribe(req.Topic) {
			s.reply(errorReply(id, "not_subscribed", "not subscribed to "+req.Topic))
			return
		}
		s.reply(okReply(id, req.Topic))
	case "publish":
		if !e.clientMayPublish(req.Topic) || s.grant != nil && !Allows(s.grant.Publish, req.Topic) {
			e.st.forbidden.Add(1)
			s.reply(errorReply(id, "forbidden", "publishing to this topic over WebSocket is not allowed on this server"))
			return
		}
		if len(req.Data) == 0 {
			s.reply(errorReply(id, "bad_request", "publish needs data"))
			return
		}
		res, err := e.publish(topics.Publication{Topic: req.Topic, Data: compactJSON(req.Data), Key: req.Key})
		if err != nil {
			s.reply(errorReply(id, publishCode(err), err.Error()))
			return
		}
		s.reply(okSeqReply(id, req.Topic, res.Seq))
	case "":
		s.reply(errorReply(id, "bad_request", "missing op"))
	default:
		s.reply(errorReply(id, "unknown_op", "unknown op "+quoteTrunc(req.Op)))
	}
}

// takeOp takes one token from the session's op bucket (OpsPerSecond per
// second, burst 2×OpsPerSecond).
func (s *session) takeOp() bool {
	rate := float32(s.e.cfg.OpsPerSecond)
	now := s.e.wheel.Now()
	if dt := now - s.opLast; dt > 0 {
		s.opTokens = min(2*rate, s.opTokens+float32(dt)*rate/1000)
		s.opLast = now
	}
	if s.opTokens < 1 {
		return false
	}
	s.opTokens--
	return true
}

func (e *Engine) clientMayPublish(topic string) bool {
	if !e.cfg.AllowPublish {
		return false
	}
	if len(e.pubPrefixes) == 0 {
		return true
	}
	for _, p := range e.pubPrefixes {
		if strings.HasPrefix(topic, p) {
			return true
		}
	}
	return false
}

func (s *session) reply(payload []byte) {
	s.Send(conn.NewFrame(ws.OpText, payload))
}

// OnClose implements conn.Handler.
func (s *session) OnClose(c *conn.Conn, reason conn.Reason) {
	e := s.e
	for _, sub := range s.subs {
		e.reg.Unsubscribe(sub)
	}
	s.subs = nil
	if s.mode != modeHTTP {
		e.st.wsOpen.Add(-1)
		if c.Deflate() {
			e.st.deflateConns.Add(-1)
		}
	}
	e.st.closed(reason, s.mode != modeHTTP)
	if isEviction(reason) {
		e.log.Info("connection closed", "reason", reason.String(), "remote", c.RemoteAddr())
	}
}

func quoteTrunc(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	b, _ := json.Marshal(s)
	return string(b)
}

func okReply(id, topic string) []byte {
	var b strings.Builder
	b.WriteString(`{"op":"ok"`)
	writeID(&b, id)
	if topic != "" {
		b.WriteString(`,"topic":`)
		b.WriteString(quote(topic))
	}
	b.WriteByte('}')
	return []byte(b.String())
}

func okSubscribeReply(id, topic string, rec topics.Recovery) []byte {
	var b strings.Builder
	b.WriteString(`{"op":"ok"`)
	writeID(&b, id)
	b.WriteString(`,"topic":`)
	b.WriteString(quote(topic))
	b.WriteString(`,"seq":`)
	b.WriteString(strconv.FormatUint(rec.Seq, 10))
	if rec.Epoch != "" {
		b.WriteString(`,"epoch":`)
		b.WriteString(quote(rec.Epoch))
	}
	if rec.Requested {
		b.WriteString(`,"recovered":true`)
	}
	b.WriteByte('}')
	return []byte(b.String())
}

// recoveryReply tells a client that messages after its `since` are gone: it
// is subscribed (retained and live messages follow) but must resync.
func recoveryReply(id, topic string, rec topics.Recovery) []byte {
	b, _ := json.Marshal(struct {
		Op         string          `json:"op"`
		ID         json.RawMessage `json:"id,omitempty"`
		Code       string          `json:"code"`
		Message    string          `json:"message"`
		Topic      string          `json:"topic"`
		Seq        uint64          `json:"seq"`
		Oldest     uint64          `json:"oldest"`
		Epoch      string          `json:"epoch"`
		Subscribed bool            `json:"subscribed"`
	}{"error", rawID(id), "recovery_incomplete",
		"messages after since are no longer retained (or the topic was reclaimed: see epoch); subscribed anyway, resync from your source of truth",
		topic, rec.Seq, rec.Oldest, rec.Epoch, true})
	return b
}

func okSeqReply(id, topic string, seq uint64) []byte {
	b, _ := json.Marshal(struct {
		Op    string          `json:"op"`
		ID    json.RawMessage `json:"id,omitempty"`
		Topic string          `json:"topic"`
		Seq   uint64          `json:"seq"`
	}{"ok", rawID(id), topic, seq})
	return b
}

func errorReply(id, code, msg string) []byte {
	b, _ := json.Marshal(struct {
		Op      string          `json:"op"`
		ID      json.RawMessage `json:"id,omitempty"`
		Code    string          `json:"code"`
		Message string          `json:"message"`
	}{"error", rawID(id), code, msg})
	return b
}

func rawID(id string) json.RawMessage {
	if id == "" {
		return nil
	}
	return json.RawMessage(id)
}

func writeID(b *strings.Builder, id string) {
	if id != "" {
		b.WriteString(`,"id":`)
		b.WriteString(id)
	}
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
