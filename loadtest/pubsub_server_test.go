package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// pubsubServer is a tiny, independent implementation of the outside contract
// the fanout scenario relies on, written with coder/websocket and net/http:
// GET /ws?topic=… subscribes at connect time, POST /v1/publish assigns a
// per-topic seq from 1 and answers it, the WebSocket publish op (when
// allowed; "forbidden" otherwise), GET /v1/stats and a /metrics exposing a
// fake process_cpu_seconds_total that grows by fakeCPUPerDelivery per
// delivery. A fault hook can skip, duplicate or close a delivery for one
// subscriber, so that the generator's accounting is checked against known
// answers.
type pubsubServer struct {
	t   *testing.T
	srv *httptest.Server

	allowWSPublish bool
	deflate        bool
	// fault, when set, decides each delivery (called with the server's
	// lock held, in publish order).
	fault func(topic string, seq uint64, sub int) faultAction
	// history makes the subscribe op honour since: every message with a
	// higher seq is replayed after the answer. Without it since is
	// ignored (the answer still carries the topic's seq).
	history bool
	// gate, when set, is asked before each upgrade; a non-zero status
	// refuses it with that HTTP status.
	gate func() int

	handlers   sync.WaitGroup
	open       atomic.Int64
	deliveries atomic.Int64 // frames queued to subscribers
	published  atomic.Int64

	mu        sync.Mutex
	topics    map[string]*fakeTopic
	nextSubID int
	subsByTop map[string]int // subscriptions ever made, by topic
}

type faultAction int

const (
	faultDeliver faultAction = iota
	faultSkip                // do not send this message to this subscriber
	faultTwice               // send it twice
	faultClose               // close the subscriber with 1008 instead of sending it
)

type fakeTopic struct {
	seq    uint64
	subs   map[int]*fakeSub
	frames [][]byte // every delivery frame, by seq−1 (for since)
}

// fakeSub is one subscriber; out carries frames (or a close) to its writer
// in order.
type fakeSub struct {
	id  int
	out chan fakeOut
}

type fakeOut struct {
	frame []byte
	close websocket.StatusCode // non-zero: close with this code instead
	reply bool                 // frame is a reply, not a delivery
}

// fakeCPUPerDelivery is the fake CPU time the server "spends" per delivery.
const fakeCPUPerDelivery = 2e-6

func newPubsubServer(t *testing.T, configure func(*pubsubServer)) *pubsubServer {
	t.Helper()
	s := &pubsubServer{t: t, topics: map[string]*fakeTopic{}, subsByTop: map[string]int{}}
	if configure != nil {
		configure(s)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("POST /v1/publish", s.servePublish)
	mux.HandleFunc("GET /v1/stats", s.serveStats)
	mux.HandleFunc("GET /metrics", s.serveMetrics)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		s.srv.CloseClientConnections()
		s.srv.Close()
		waitFor(t, 10*time.Second, "pubsub handlers to exit", func() bool { return s.open.Load() == 0 })
		s.handlers.Wait()
	})
	return s
}

func (s *pubsubServer) wsURL() string { return "ws" + s.srv.URL[len("http"):] + "/ws" }

// publish assigns the next seq of topic and queues the delivery to every
// subscriber of it.
func (s *pubsubServer) publish(topic string, data json.RawMessage) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tp := s.topics[topic]
	if tp == nil {
		tp = &fakeTopic{subs: map[int]*fakeSub{}}
		s.topics[topic] = tp
	}
	tp.seq++
	frame, err := json.Marshal(struct {
		Op    string          `json:"op"`
		Topic string          `json:"topic"`
		Seq   uint64          `json:"seq"`
		Data  json.RawMessage `json:"data"`
	}{"message", topic, tp.seq, data})
	if err != nil {
		return 0, err
	}
	s.published.Add(1)
	tp.frames = append(tp.frames, frame)
	for _, sub := range tp.subs {
		act := faultDeliver
		if s.fault != nil {
			act = s.fault(topic, tp.seq, sub.id)
		}
		switch act {
		case faultSkip:
			continue
		case faultClose:
			s.queue(sub, fakeOut{close: websocket.StatusPolicyViolation})
			delete(tp.subs, sub.id)
			continue
		case faultTwice:
			s.queue(sub, fakeOut{frame: frame})
		}
		s.queue(sub, fakeOut{frame: frame})
	}
	return tp.seq, nil
}

func (s *pubsubServer) queue(sub *fakeSub, o fakeOut) {
	select {
	case sub.out <- o:
		if o.frame != nil && !o.reply {
			s.deliveries.Add(1)
		}
	default:
		s.t.Errorf("subscriber %d: queue full", sub.id)
	}
}

func (s *pubsubServer) servePublish(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Topic string          `json:"topic"`
		Data  json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Topic == "" || len(body.Data) == 0 {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"result": "error", "message": "bad publish"})
		return
	}
	seq, err := s.publish(body.Topic, body.Data)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"result": "error", "message": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"result": "ok", "topic": body.Topic, "seq": seq})
}

func (s *pubsubServer) serveWS(w http.ResponseWriter, r *http.Request) {
	s.handlers.Add(1)
	defer s.handlers.Done()
	if s.gate != nil {
		if status := s.gate(); status != 0 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "refused by the test gate", status)
			return
		}
	}
	opts := &websocket.AcceptOptions{}
	if s.deflate {
		opts.CompressionMode = websocket.CompressionNoContextTakeover
		opts.CompressionThreshold = 128
	}
	// Subscribe before the handshake answer, as "subscribes at connect
	// time" promises.
	topics := r.URL.Query()["topic"]
	s.mu.Lock()
	s.nextSubID++
	sub := &fakeSub{id: s.nextSubID, out: make(chan fakeOut, 1<<14)}
	for _, name := range topics {
		tp := s.topics[name]
		if tp == nil {
			tp = &fakeTopic{subs: map[int]*fakeSub{}}
			s.topics[name] = tp
		}
		tp.subs[sub.id] = sub
		s.subsByTop[name]++
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, name := range topics {
			delete(s.topics[name].subs, sub.id)
		}
		s.mu.Unlock()
	}()

	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		return
	}
	defer c.CloseNow()
	s.open.Add(1)
	defer s.open.Add(-1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for {
			select {
			case o := <-sub.out:
				if o.close != 0 {
					_ = c.Close(o.close, "test fault")
					return
				}
				if c.Write(ctx, websocket.MessageText, o.frame) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			break
		}
		s.handleOp(ctx, c, b, sub, &topics) // subscribe ops add to topics, which the cleanup above reads
	}
	cancel()
	<-writerDone
}

// handleOp answers a client's publish or subscribe op.
func (s *pubsubServer) handleOp(ctx context.Context, c *websocket.Conn, b []byte, sub *fakeSub, topics *[]string) {
	var req struct {
		Op    string          `json:"op"`
		Topic string          `json:"topic"`
		ID    string          `json:"id"`
		Data  json.RawMessage `json:"data"`
		Since *uint64         `json:"since"`
	}
	reply := func(v any) {
		out, _ := json.Marshal(v)
		_ = c.Write(ctx, websocket.MessageText, out)
	}
	if json.Unmarshal(b, &req) == nil && req.Op == "subscribe" && req.Topic != "" {
		s.subscribeOp(sub, req.Topic, req.ID, req.Since, topics)
		return
	}
	if req.Op != "publish" {
		reply(map[string]string{"op": "error", "id": req.ID, "code": "bad_request", "message": "only publish and subscribe are supported"})
		return
	}
	if !s.allowWSPublish {
		reply(map[string]string{"op": "error", "id": req.ID, "code": "forbidden", "message": "client publishing is disabled"})
		return
	}
	seq, err := s.publish(req.Topic, req.Data)
	if err != nil {
		reply(map[string]string{"op": "error", "id": req.ID, "code": "bad_request", "message": err.Error()})
		return
	}
	reply(map[string]any{"op": "ok", "id": req.ID, "topic": req.Topic, "seq": seq})
}

// subscribeOp subscribes sub to topic and queues, in order, the answer
// (with the topic's seq) and, when history is on and since is given, every
// message after since; live messages follow.
func (s *pubsubServer) subscribeOp(sub *fakeSub, topic, id string, since *uint64, topics *[]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tp := s.topics[topic]
	if tp == nil {
		tp = &fakeTopic{subs: map[int]*fakeSub{}}
		s.topics[topic] = tp
	}
	ans, _ := json.Marshal(map[string]any{"op": "ok", "id": id, "topic": topic, "seq": tp.seq, "epoch": "fake-1"})
	s.queue(sub, fakeOut{frame: ans, reply: true})
	if since != nil && s.history {
		for _, f := range tp.frames[min(*since, tp.seq):] {
			s.queue(sub, fakeOut{frame: f})
		}
	}
	if tp.subs[sub.id] == nil {
		tp.subs[sub.id] = sub
		s.subsByTop[topic]++
		*topics = append(*topics, topic)
	}
}

func (s *pubsubServer) subscriptions() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, tp := range s.topics {
		n += int64(len(tp.subs))
	}
	return n
}

func (s *pubsubServer) serveStats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"connections":   s.open.Load(),
		"subscriptions": s.subscriptions(),
		"published":     s.published.Load(),
		"messages_out":  s.deliveries.Load(),
	})
}

func (s *pubsubServer) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	cpu := 1.5 + float64(s.deliveries.Load())*fakeCPUPerDelivery
	fmt.Fprintf(w, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n")
	fmt.Fprintf(w, "# TYPE process_cpu_seconds_total counter\n")
	fmt.Fprintf(w, "process_cpu_seconds_total_other 99\nprocess_cpu_seconds_total %g\n", cpu)
}
