package engine

import (
	"encoding/json"
	"net/url"
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
	e    *Engine
	mode uint8 // modeWS or modeEcho once upgraded
	subs []*topics.Topic
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
	var names []string
	if !echo && len(head.Query) > 0 {
		q, err := url.ParseQuery(string(head.Query))
		if err != nil {
			e.st.handshakeFail(e.log, "bad query", err)
			s.RejectHTTP(&conn.HTTPError{Status: 400, Msg: "malformed query string"})
			return
		}
		names = q["topic"]
		for _, n := range names {
			if !topics.ValidName(n) {
				e.st.handshakeFail(e.log, "bad topic", nil)
				s.RejectHTTP(&conn.HTTPError{Status: 400, Msg: "invalid topic " + quoteTrunc(n) + ": " + topics.ErrTopicName.Error()})
				return
			}
		}
	}
	if _, err := s.Upgrade(raw, head, &e.up); err != nil {
		e.st.handshakeFail(e.log, "upgrade rejected", err)
		return
	}
	e.st.upgraded.Add(1)
	e.st.wsOpen.Add(1)
	if echo {
		s.mode = modeEcho
		return
	}
	s.mode = modeWS
	for _, n := range names {
		s.subscribe(n)
	}
}

func (s *session) subscribe(name string) error {
	for _, t := range s.subs {
		if t.Name() == name {
			return nil
		}
	}
	t, err := s.e.reg.Subscribe(name, &s.Conn)
	if err != nil {
		return err
	}
	s.subs = append(s.subs, t)
	return nil
}

func (s *session) unsubscribe(name string) bool {
	for i, t := range s.subs {
		if t.Name() == name {
			s.e.reg.Unsubscribe(t, &s.Conn)
			s.subs[i] = s.subs[len(s.subs)-1]
			s.subs[len(s.subs)-1] = nil
			s.subs = s.subs[:len(s.subs)-1]
			return true
		}
	}
	return false
}

// OnMessage implements conn.Handler.
func (s *session) OnMessage(c *conn.Conn, op ws.OpCode, payload []byte) {
	e := s.e
	e.st.msgIn.Add(1)
	e.st.bytesIn.Add(int64(len(payload)))
	if s.mode == modeEcho {
		if c.Send(conn.NewFrame(op, payload)) {
			e.st.msgOut.Add(1)
			e.st.bytesOut.Add(int64(len(payload)))
		}
		return
	}
	if op != ws.OpText {
		s.reply(errorReply("", "bad_request", "binary frames are not accepted from clients; send JSON text"))
		return
	}
	var req struct {
		Op    string          `json:"op"`
		Topic string          `json:"topic"`
		ID    json.RawMessage `json:"id"`
		Since *uint64         `json:"since"`
		Data  json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		s.reply(errorReply("", "bad_request", "message is not a JSON object: "+err.Error()))
		return
	}
	id := string(req.ID)
	switch req.Op {
	case "subscribe":
		if err := s.subscribe(req.Topic); err != nil {
			s.reply(errorReply(id, "bad_topic", err.Error()))
			return
		}
		s.reply(okReply(id, req.Topic))
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
		if !e.cfg.AllowPublish {
			s.reply(errorReply(id, "forbidden", "publishing over WebSocket is disabled on this server"))
			return
		}
		if len(req.Data) == 0 {
			s.reply(errorReply(id, "bad_request", "publish needs data"))
			return
		}
		seq, err := e.publish(req.Topic, req.Data)
		if err != nil {
			s.reply(errorReply(id, "bad_topic", err.Error()))
			return
		}
		s.reply(okSeqReply(id, req.Topic, seq))
	case "":
		s.reply(errorReply(id, "bad_request", "missing op"))
	default:
		s.reply(errorReply(id, "unknown_op", "unknown op "+quoteTrunc(req.Op)))
	}
}

func (s *session) reply(payload []byte) {
	s.Send(conn.NewFrame(ws.OpText, payload))
}

// OnClose implements conn.Handler.
func (s *session) OnClose(c *conn.Conn, reason conn.Reason) {
	e := s.e
	for _, t := range s.subs {
		e.reg.Unsubscribe(t, &s.Conn)
	}
	s.subs = nil
	if s.mode != modeHTTP {
		e.st.wsOpen.Add(-1)
	}
	e.st.closed(reason, s.mode != modeHTTP)
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
