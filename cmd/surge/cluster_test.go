package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
)

// Three `surge serve` processes share topics through one NATS server
// (embedded in the test process, JetStream on a temporary store): a publish
// on any node reaches every node's subscribers once, in order, with the
// cluster's seq; when a node process is killed the others go on, and its
// client recovers on another node with since.
func TestClusterOfProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts three servers")
	}
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	bin := buildSurge(t)
	var procs []*procNode
	for range 3 {
		cmd, addr, logs := startServe(t, bin, "--broker", ns.ClientURL())
		procs = append(procs, &procNode{cmd: cmd, addr: addr, logs: logs})
	}
	a, b, c := procs[0], procs[1], procs[2]

	const topic = "lobby.procs"
	subs := []*procClient{dialProc(t, a.addr), dialProc(t, b.addr), dialProc(t, c.addr)}
	for _, s := range subs {
		if r := s.subscribe(topic, nil, ""); r.Op != "ok" {
			t.Fatalf("subscribe: %+v", r)
		}
	}
	for n := uint64(1); n <= 30; n++ {
		if seq := publishTo(t, procs[n%3].addr, topic, n); seq != n {
			t.Fatalf("publish %d: seq %d", n, seq)
		}
	}
	for _, s := range subs {
		s.expect(topic, 1, 30)
	}
	// Exactly once: the next delivery after 30 is 31.
	publishTo(t, c.addr, topic, 31)
	for _, s := range subs {
		s.expect(topic, 31, 31)
	}
	epoch := subs[0].subscribeFresh(a.addr, topic)

	// Node A dies without a word; its client goes to B with since.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.cmd.Wait()
	for n := uint64(32); n <= 40; n++ {
		if seq := publishTo(t, procs[1+n%2].addr, topic, n); seq != n {
			t.Fatalf("publish %d after node death: seq %d", n, seq)
		}
	}
	subs[1].expect(topic, 32, 40)
	subs[2].expect(topic, 32, 40)
	back := dialProc(t, b.addr)
	since := uint64(31)
	if r := back.subscribe(topic, &since, epoch); r.Op != "ok" || r.Seq != 40 {
		t.Fatalf("recovery on another node: %+v", r)
	}
	back.expect(topic, 32, 40)
	publishTo(t, b.addr, topic, 41)
	for _, s := range []*procClient{back, subs[1], subs[2]} {
		s.expect(topic, 41, 41)
	}
}

type procNode struct {
	cmd  *exec.Cmd
	addr string
	logs *logTail
}

type procMsg struct {
	Op    string          `json:"op"`
	ID    json.RawMessage `json:"id"`
	Topic string          `json:"topic"`
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Data  json.RawMessage `json:"data"`
}

type procClient struct {
	t *testing.T
	c *websocket.Conn
}

func dialProc(t *testing.T, addr string) *procClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &procClient{t, c}
}

func (p *procClient) next() procMsg {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := p.c.Read(ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	var m procMsg
	if err := json.Unmarshal(b, &m); err != nil {
		p.t.Fatalf("%s: %v", b, err)
	}
	return m
}

// subscribe sends the subscribe op and returns its reply, which comes once
// the node is attached to the topic at the broker.
func (p *procClient) subscribe(topic string, since *uint64, epoch string) procMsg {
	p.t.Helper()
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
	if err := p.c.Write(ctx, websocket.MessageText, b); err != nil {
		p.t.Fatal(err)
	}
	m := p.next()
	if string(m.ID) != `"s"` {
		p.t.Fatalf("before the subscribe reply: %+v", m)
	}
	return m
}

// subscribeFresh returns the epoch a new subscriber of topic learns on addr.
func (p *procClient) subscribeFresh(addr, topic string) string {
	p.t.Helper()
	w := dialProc(p.t, addr)
	defer w.c.Close(websocket.StatusNormalClosure, "")
	return w.subscribe(topic, nil, "").Epoch
}

// expect reads deliveries of topic with seqs from..to, in order, each with
// data {"n":seq}.
func (p *procClient) expect(topic string, from, to uint64) {
	p.t.Helper()
	for want := from; want <= to; want++ {
		m := p.next()
		if m.Op != "message" || m.Topic != topic || m.Seq != want || string(m.Data) != `{"n":`+strconv.FormatUint(want, 10)+`}` {
			p.t.Fatalf("got %+v, want %s seq %d", m, topic, want)
		}
	}
}

// publishTo publishes {"n":n} to topic over HTTP and returns the seq.
func publishTo(t *testing.T, addr, topic string, n uint64) uint64 {
	t.Helper()
	body := fmt.Sprintf(`{"topic":%q,"data":{"n":%d}}`, topic, n)
	resp, err := http.Post("http://"+addr+"/v1/publish", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Seq uint64 `json:"seq"`
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("publish on %s: HTTP %d", addr, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r.Seq
}
