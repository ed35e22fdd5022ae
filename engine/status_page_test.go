package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/surgepush/surge/engine"
)

// The server side of test/clients/status_page.mjs (run by TestOutsideClients):
// the script asks for each step and checks that the status page shows it.
const (
	// setup: subscribers per topic, in the order top topics must list them.
	statusAlphaSubs, statusBetaSubs = 20, 5
	statusAlphaPubs, statusBetaPubs = 3, 1
	statusCleanCloses               = 3
	// load: subscribers spread over loadTopics topics, publishing at loadRate
	// messages per second (round robin over the topics) until stop, at most
	// loadMaxDuration; loadWarmup of publishing before the reply.
	loadSubscribers = 300
	loadTopics      = 6
	loadRate        = 200
	loadWarmup      = 2 * time.Second
	loadMaxDuration = 40 * time.Second
)

type statusPageDriver struct {
	t      *testing.T
	e      *engine.Engine
	client *http.Client
	mu     sync.Mutex
	subs   []*websocket.Conn // open subscribers (setup and load)
	load   []*websocket.Conn
	stop   chan struct{}
	pubs   sync.WaitGroup
	sent   atomic.Int64 // load publishes that succeeded
	failed atomic.Int64
}

func newStatusPageDriver(t *testing.T, e *engine.Engine) func(driverRequest) (any, error) {
	d := &statusPageDriver{
		t: t, e: e,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
	}
	t.Cleanup(d.close)
	return d.serve
}

func (d *statusPageDriver) serve(req driverRequest) (any, error) {
	switch req.Want {
	case "setup":
		return d.setup()
	case "publish":
		var p struct {
			Topic string          `json:"topic"`
			Data  json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(req.Raw, &p); err != nil {
			return nil, err
		}
		seq, err := d.publish(p.Topic, p.Data)
		return map[string]uint64{"seq": seq}, err
	case "load":
		return d.startLoad()
	case "stop":
		return d.stopLoad()
	}
	return nil, fmt.Errorf("unknown request %q", req.Want)
}

func (d *statusPageDriver) url(path string) string { return "http://" + d.e.Addr() + path }

func (d *statusPageDriver) publish(topic string, data json.RawMessage) (uint64, error) {
	body, _ := json.Marshal(map[string]any{"topic": topic, "data": data})
	resp, err := d.client.Post(d.url("/v1/publish"), "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Result string `json:"result"`
		Seq    uint64 `json:"seq"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK || out.Result != "ok" {
		return 0, fmt.Errorf("publish to %s: HTTP %d %q %v", topic, resp.StatusCode, out.Result, err)
	}
	return out.Seq, nil
}

// subscribe opens a WebSocket subscriber (github.com/coder/websocket) that
// reads and discards deliveries until it is closed.
func (d *statusPageDriver) subscribe(ctx context.Context, topic string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(ctx, "ws://"+d.e.Addr()+"/ws?topic="+topic, nil)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	return c, nil
}

// subscribeN opens n subscribers on topic(i) with at most 32 handshakes at a time.
func (d *statusPageDriver) subscribeN(n int, topic func(i int) string) ([]*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conns := make([]*websocket.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			conns[i], errs[i] = d.subscribe(ctx, topic(i))
		})
	}
	wg.Wait()
	d.mu.Lock()
	for _, c := range conns {
		if c != nil {
			d.subs = append(d.subs, c)
		}
	}
	d.mu.Unlock()
	return conns, errors.Join(errs...)
}

// rawUpgrade performs a WebSocket handshake over a plain TCP connection.
func (d *statusPageDriver) rawUpgrade(path string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", d.e.Addr(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+d.e.Addr()+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: "+testKey+"\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if err == nil {
		var resp *http.Response
		if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
			err = fmt.Errorf("upgrade: HTTP %d", resp.StatusCode)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// setup opens the subscribers the page must count and list, and produces one
// close of each of three reasons.
func (d *statusPageDriver) setup() (any, error) {
	before := d.e.Stats()
	if _, err := d.subscribeN(statusAlphaSubs+statusBetaSubs, func(i int) string {
		if i < statusAlphaSubs {
			return "status.alpha"
		}
		return "status.beta"
	}); err != nil {
		return nil, err
	}
	// client_close: a clean close handshake.
	for range statusCleanCloses {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := d.subscribe(ctx, "status.gone")
		cancel()
		if err != nil {
			return nil, err
		}
		if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
			return nil, fmt.Errorf("clean close: %w", err)
		}
	}
	// peer_gone: TCP closed without a close frame.
	c, err := d.rawUpgrade("/ws?topic=status.gone")
	if err != nil {
		return nil, err
	}
	c.Close()
	// protocol_error: an unmasked client frame (RFC 6455 section 5.1).
	if c, err = d.rawUpgrade("/ws"); err != nil {
		return nil, err
	}
	c.Write(frame(0x81, []byte(`{"op":"ping"}`), false))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c) // until the server closes it
	c.Close()

	for i := range statusAlphaPubs {
		if _, err := d.publish("status.alpha", json.RawMessage(strconv.Itoa(i))); err != nil {
			return nil, err
		}
	}
	for i := range statusBetaPubs {
		if _, err := d.publish("status.beta", json.RawMessage(strconv.Itoa(i))); err != nil {
			return nil, err
		}
	}
	want := before.Connections + statusAlphaSubs + statusBetaSubs
	closes := map[string]int64{"client_close": statusCleanCloses, "peer_gone": 1, "protocol_error": 1}
	var st engine.Stats
	deadline := time.Now().Add(10 * time.Second)
	for {
		st = d.e.Stats()
		ok := st.Connections == want
		for r, n := range closes {
			ok = ok && st.Closes[r]-before.Closes[r] == n
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("engine shows %d connections and closes %v, want %d and %v more than %v",
				st.Connections, st.Closes, want, closes, before.Closes)
		}
		time.Sleep(5 * time.Millisecond)
	}
	type topic struct {
		Topic       string `json:"topic"`
		Subscribers int    `json:"subscribers"`
		Seq         int    `json:"seq"`
	}
	return map[string]any{
		"connections":   st.Connections,
		"subscriptions": st.Subscriptions,
		"topics": []topic{
			{"status.alpha", statusAlphaSubs, statusAlphaPubs},
			{"status.beta", statusBetaSubs, statusBetaPubs},
		},
		"closes": st.Closes,
	}, nil
}

// startLoad opens loadSubscribers subscribers and publishes at loadRate until
// stopLoad (or loadMaxDuration); it replies once the publishing has warmed up.
func (d *statusPageDriver) startLoad() (any, error) {
	if d.stop != nil {
		return nil, errors.New("load already running")
	}
	before := d.e.Stats().Connections
	conns, err := d.subscribeN(loadSubscribers, func(i int) string { return "load." + strconv.Itoa(i%loadTopics) })
	d.load = conns
	if err != nil {
		return nil, err
	}
	d.stop = make(chan struct{})
	d.pubs.Go(func() {
		tick := time.NewTicker(time.Second / loadRate)
		defer tick.Stop()
		end := time.After(loadMaxDuration)
		for i := 0; ; i++ {
			select {
			case <-d.stop:
				return
			case <-end:
				return
			case <-tick.C:
			}
			data := json.RawMessage(`{"px":` + strconv.Itoa(100+i%50) + `,"n":` + strconv.Itoa(i) + `}`)
			if _, err := d.publish("load."+strconv.Itoa(i%loadTopics), data); err != nil {
				d.failed.Add(1)
			} else {
				d.sent.Add(1)
			}
		}
	})
	time.Sleep(loadWarmup)
	return map[string]any{
		"connections": before + loadSubscribers,
		"subscribers": loadSubscribers,
		"per_topic":   loadSubscribers / loadTopics,
		"rate":        loadRate,
		"published":   d.sent.Load(),
	}, nil
}

// stopLoad stops publishing, closes the load subscribers cleanly and waits
// for the engine to count them gone.
func (d *statusPageDriver) stopLoad() (any, error) {
	if d.stop == nil {
		return nil, errors.New("no load running")
	}
	close(d.stop)
	d.pubs.Wait()
	before := d.e.Stats().Connections
	closeAll(d.load)
	d.mu.Lock()
	d.subs = d.subs[:len(d.subs)-len(d.load)]
	d.mu.Unlock()
	want := before - int64(len(d.load))
	deadline := time.Now().Add(10 * time.Second)
	for d.e.Stats().Connections != want {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d connections after closing the load, want %d", d.e.Stats().Connections, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if f := d.failed.Load(); f > 0 {
		return nil, fmt.Errorf("%d of %d load publishes failed", f, f+d.sent.Load())
	}
	d.t.Logf("status_page: load: %d subscribers on %d topics, %d publishes at %d/s", len(d.load), loadTopics, d.sent.Load(), loadRate)
	return map[string]any{"connections": want, "published": d.sent.Load()}, nil
}

func closeAll(conns []*websocket.Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		if c != nil {
			wg.Go(func() { c.Close(websocket.StatusNormalClosure, "") })
		}
	}
	wg.Wait()
}

// close ends whatever a failed run left behind.
func (d *statusPageDriver) close() {
	if d.stop != nil {
		select {
		case <-d.stop:
		default:
			close(d.stop)
		}
		d.pubs.Wait()
	}
	d.mu.Lock()
	subs := d.subs
	d.subs = nil
	d.mu.Unlock()
	for _, c := range subs {
		c.CloseNow()
	}
	d.client.CloseIdleConnections()
}
