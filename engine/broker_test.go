package engine_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/surgepush/surge/engine"
)

// Several engines in one test binary share topics through an embedded NATS
// server (JetStream on a t.TempDir store, random loopback port).

func runNATS(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

func startNodes(t *testing.T, url string, n int) []*engine.Engine {
	t.Helper()
	var out []*engine.Engine
	for i := 0; i < n; i++ {
		out = append(out, startEngine(t, engine.Config{Broker: url}))
	}
	return out
}

// wsMsg is any server → client JSON frame.
type wsMsg struct {
	Op      string          `json:"op"`
	ID      json.RawMessage `json:"id"`
	Topic   string          `json:"topic"`
	Seq     uint64          `json:"seq"`
	Epoch   string          `json:"epoch"`
	Data    json.RawMessage `json:"data"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
}

type wsClient struct {
	t *testing.T
	c *websocket.Conn
}

func dialWS(t *testing.T, addr string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &wsClient{t, c}
}

func (w *wsClient) next() (wsMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := w.c.Read(ctx)
	if err != nil {
		return wsMsg{}, err
	}
	var m wsMsg
	if err := json.Unmarshal(b, &m); err != nil {
		w.t.Fatalf("%s: %v", b, err)
	}
	return m, nil
}

// subscribe sends a subscribe op and returns the reply: ok once this node is
// attached to the topic at the broker.
func (w *wsClient) subscribe(topic string, since *uint64, epoch string) wsMsg {
	w.t.Helper()
	req := map[string]any{"op": "subscribe", "topic": topic, "id": "s"}
	if since != nil {
		req["since"] = *since
	}
	if epoch != "" {
		req["epoch"] = epoch
	}
	b, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, b); err != nil {
		w.t.Fatal(err)
	}
	for {
		m, err := w.next()
		if err != nil {
			w.t.Fatal(err)
		}
		if string(m.ID) == `"s"` {
			return m
		}
		w.t.Fatalf("before the subscribe reply: %+v", m)
	}
}

// expect reads deliveries of topic seq from..to, in order, each carrying
// data {"n":seq}.
func (w *wsClient) expect(topic string, from, to uint64) {
	w.t.Helper()
	for want := from; want <= to; want++ {
		m, err := w.next()
		if err != nil {
			w.t.Fatalf("waiting for seq %d: %v", want, err)
		}
		if m.Op != "message" || m.Topic != topic || m.Seq != want || string(m.Data) != `{"n":`+strconv.FormatUint(want, 10)+`}` {
			w.t.Fatalf("got %+v, want %s seq %d", m, topic, want)
		}
	}
}

// epochOn returns the epoch a fresh subscriber of topic learns on addr.
func epochOn(t *testing.T, addr, topic string) string {
	t.Helper()
	w := dialWS(t, addr)
	defer w.c.Close(websocket.StatusNormalClosure, "")
	return w.subscribe(topic, nil, "").Epoch
}

func publishN(t *testing.T, addr, topic string, from, to uint64) {
	t.Helper()
	for n := from; n <= to; n++ {
		if seq := publish(t, addr, topic, map[string]uint64{"n": n}); seq != n {
			t.Fatalf("publish %d on %s: seq %d", n, addr, seq)
		}
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Published on any node, delivered on every node exactly once, in order,
// with one seq per topic.
func TestClusterThreeNodesDeliverOnceInOrder(t *testing.T) {
	nodes := startNodes(t, runNATS(t, t.TempDir(), -1).ClientURL(), 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	cb, cc, ca := dialWS(t, b.Addr()), dialWS(t, c.Addr()), dialWS(t, a.Addr())
	for _, w := range []*wsClient{cb, cc, ca} {
		if r := w.subscribe("prices.AAPL", nil, ""); r.Op != "ok" || r.Seq != 0 {
			t.Fatalf("subscribe: %+v", r)
		}
	}
	// Publishers on every node; the seq is the cluster's.
	for n := uint64(1); n <= 60; n++ {
		if seq := publish(t, nodes[n%3].Addr(), "prices.AAPL", map[string]uint64{"n": n}); seq != n {
			t.Fatalf("publish %d: seq %d", n, seq)
		}
	}
	for _, w := range []*wsClient{cb, cc, ca} {
		w.expect("prices.AAPL", 1, 60)
	}
	// Exactly once: the next thing each client sees is the next message.
	publishN(t, a.Addr(), "prices.AAPL", 61, 61)
	for _, w := range []*wsClient{cb, cc, ca} {
		w.expect("prices.AAPL", 61, 61)
	}
	// The same epoch on every node, so recovery works across nodes.
	ea, ec := epochOn(t, a.Addr(), "prices.AAPL"), epochOn(t, c.Addr(), "prices.AAPL")
	if ea == "" || ea != ec {
		t.Fatalf("epochs %q and %q", ea, ec)
	}
	st := getStats(t, b.Addr())
	if st.Broker == nil || !st.Broker.Connected || st.Broker.Topics != 1 || st.Broker.Received != 61 {
		t.Fatalf("stats.broker %+v", st.Broker)
	}
	if code, body := httpGet(t, "http://"+b.Addr()+"/metrics"); code != 200 || !strings.Contains(body, "surge_broker_up 1") {
		t.Fatalf("metrics: %d, surge_broker_up missing", code)
	}
}

// A node dies: the others keep going, and its clients reconnect elsewhere
// with since and miss nothing, even on a node that had no subscriber.
func TestClusterNodeDeathClientsRecoverElsewhere(t *testing.T) {
	nodes := startNodes(t, runNATS(t, t.TempDir(), -1).ClientURL(), 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	onB, onC := dialWS(t, b.Addr()), dialWS(t, c.Addr())
	onB.subscribe("lobby.7", nil, "")
	onC.subscribe("lobby.7", nil, "")
	publishN(t, a.Addr(), "lobby.7", 1, 5)
	onB.expect("lobby.7", 1, 5)
	onC.expect("lobby.7", 1, 5)
	epoch := epochOn(t, b.Addr(), "lobby.7")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := onB.next(); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("client of the dead node: %v", err)
	}
	publishN(t, a.Addr(), "lobby.7", 6, 9)
	onC.expect("lobby.7", 6, 9)

	// Reconnect to A, which never had a subscriber: the missed messages
	// come from the stream.
	back := dialWS(t, a.Addr())
	since := uint64(5)
	if r := back.subscribe("lobby.7", &since, epoch); r.Op != "ok" || r.Seq != 9 || r.Epoch != epoch {
		t.Fatalf("recovery reply %+v", r)
	}
	back.expect("lobby.7", 6, 9)
	publishN(t, c.Addr(), "lobby.7", 10, 10)
	back.expect("lobby.7", 10, 10)
	onC.expect("lobby.7", 10, 10)
}

// NATS stops and restarts on the same port and store: nodes keep their
// connections, report not ready and refuse publishes meanwhile, reconnect,
// and go on with the same seq; nothing is delivered twice, and a client
// that reconnected during the outage recovers with since.
func TestClusterNATSRestart(t *testing.T) {
	dir := t.TempDir()
	srv := runNATS(t, dir, -1)
	port := srv.Addr().(*net.TCPAddr).Port
	nodes := startNodes(t, srv.ClientURL(), 2)
	a, b := nodes[0], nodes[1]
	stay, leave := dialWS(t, b.Addr()), dialWS(t, b.Addr())
	stay.subscribe("s", nil, "")
	r := leave.subscribe("s", nil, "")
	publishN(t, a.Addr(), "s", 1, 3)
	stay.expect("s", 1, 3)
	leave.expect("s", 1, 3)
	epoch := epochOn(t, a.Addr(), "s")
	if r.Epoch != "" && r.Epoch != epoch {
		t.Fatalf("epochs %q and %q", r.Epoch, epoch)
	}

	srv.Shutdown()
	srv.WaitForShutdown()
	waitFor(t, 10*time.Second, "readyz to report the broker", func() bool {
		code, body := httpGet(t, "http://"+a.Addr()+"/readyz")
		return code == 503 && strings.Contains(body, "broker")
	})
	body := strings.NewReader(`{"topic":"s","data":{"n":0}}`)
	resp, err := http.Post("http://"+a.Addr()+"/v1/publish", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("publish while NATS is down: %d", resp.StatusCode)
	}
	if code, _ := httpGet(t, "http://"+b.Addr()+"/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	leave.c.CloseNow() // this client goes away during the outage

	runNATS(t, dir, port)
	for _, e := range nodes {
		waitFor(t, 20*time.Second, "readyz after the restart", func() bool {
			code, _ := httpGet(t, "http://"+e.Addr()+"/readyz")
			return code == 200
		})
	}
	publishN(t, a.Addr(), "s", 4, 6)
	stay.expect("s", 4, 6)
	publishN(t, b.Addr(), "s", 7, 7)
	stay.expect("s", 7, 7) // exactly once: 7 follows 6

	back := dialWS(t, a.Addr())
	since := uint64(3)
	if r := back.subscribe("s", &since, epoch); r.Op != "ok" || r.Seq != 7 {
		t.Fatalf("recovery reply %+v", r)
	}
	back.expect("s", 4, 7)
}

// Shutdown closes the broker: no broker goroutine outlives the engine.
func TestClusterShutdownLeavesNoBrokerGoroutines(t *testing.T) {
	url := runNATS(t, t.TempDir(), -1).ClientURL()
	e, err := engine.New(engine.Config{Listen: "127.0.0.1:0", Broker: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	w := dialWS(t, e.Addr())
	w.subscribe("x", nil, "")
	publishN(t, e.Addr(), "x", 1, 1)
	w.expect("x", 1, 1)
	w.c.Close(websocket.StatusNormalClosure, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "broker goroutines to end", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "topics.(*NATSBroker)")
	})
	// An engine that is built but never started releases its broker too.
	e2, err := engine.New(engine.Config{Listen: "127.0.0.1:0", Broker: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}
