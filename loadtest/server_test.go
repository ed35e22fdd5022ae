package loadtest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// contractServer is a tiny, independent implementation of the outside
// contract the idle scenario relies on (GET /ws?topic=…, GET /v1/stats),
// written with coder/websocket so that the generator is checked against
// code it shares nothing with. coder/websocket fails any unmasked client
// frame, so every answered ping also proves the pong was masked.
type contractServer struct {
	t   *testing.T
	srv *httptest.Server

	// closeTopic: connections subscribed to it are closed by the server
	// with 1001 once closeNow is closed.
	closeTopic string
	closeNow   chan struct{}
	closeOnce  sync.Once
	noStats    bool

	handlers  sync.WaitGroup
	open      atomic.Int64
	accepted  atomic.Int64
	pongs     atomic.Int64 // pings the client answered
	client1k  atomic.Int64 // connections the client closed with 1000
	closed1k1 atomic.Int64 // connections this server closed with 1001
	statsHits atomic.Int64

	mu      sync.Mutex
	topics  map[string]int // subscriptions by topic
	noTopic int            // connections that named no topic
	remotes map[string]int // connections by client IP
}

func newContractServer(t *testing.T, closeTopic string, noStats bool) *contractServer {
	t.Helper()
	s := &contractServer{
		t:          t,
		closeTopic: closeTopic,
		closeNow:   make(chan struct{}),
		noStats:    noStats,
		topics:     map[string]int{},
		remotes:    map[string]int{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("GET /v1/stats", s.serveStats)
	s.srv = httptest.NewServer(mux) // listens on 127.0.0.1:0
	t.Cleanup(func() {
		s.triggerClose()
		s.srv.Close()
		waitFor(t, 10*time.Second, "server handlers to exit", func() bool { return s.open.Load() == 0 })
		s.handlers.Wait()
	})
	return s
}

func (s *contractServer) wsURL() string { return "ws" + s.srv.URL[len("http"):] + "/ws" }

func (s *contractServer) triggerClose() { s.closeOnce.Do(func() { close(s.closeNow) }) }

func (s *contractServer) serveWS(w http.ResponseWriter, r *http.Request) {
	s.handlers.Add(1)
	defer s.handlers.Done()
	topics := r.URL.Query()["topic"]
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	s.open.Add(1)
	defer s.open.Add(-1)
	s.accepted.Add(1)
	closeThis := false
	s.mu.Lock()
	if len(topics) == 0 {
		s.noTopic++
	}
	for _, tp := range topics {
		s.topics[tp]++
		closeThis = closeThis || tp == s.closeTopic
	}
	s.remotes[host]++
	s.mu.Unlock()

	// One reader for the connection's life: it answers control frames and
	// ends with the client's close status.
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.Reader(context.Background())
		readErr <- err
	}()

	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if c.Ping(pctx) == nil {
		s.pongs.Add(1)
	}
	cancel()

	if closeThis {
		select {
		case <-s.closeNow:
			if c.Close(websocket.StatusGoingAway, "test going away") == nil {
				s.closed1k1.Add(1)
			}
			<-readErr
			return
		case err := <-readErr:
			s.noteClientClose(err)
			return
		}
	}
	s.noteClientClose(<-readErr)
}

func (s *contractServer) noteClientClose(err error) {
	if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
		s.client1k.Add(1)
	}
}

// Fake memory figures: 3000 B RSS and 2000 B heap per open connection.
const (
	fakeRSSPerConn  = 3000
	fakeHeapPerConn = 2000
)

func (s *contractServer) serveStats(w http.ResponseWriter, _ *http.Request) {
	s.statsHits.Add(1)
	if s.noStats {
		http.NotFound(w, nil)
		return
	}
	n := s.open.Load()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"connections":      n,
		"subscriptions":    n,
		"rss_bytes":        100<<20 + n*fakeRSSPerConn,
		"heap_inuse_bytes": 20<<20 + n*fakeHeapPerConn,
		"goroutines":       10 + 2*n,
	})
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tk.C
	}
}

// checkNoLeak fails when the goroutine count does not come back down to
// base (plus slack for runtime helpers) soon.
func checkNoLeak(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for runtime.NumGoroutine() > base+3 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d, want ≤ %d\n%s", runtime.NumGoroutine(), base+3, buf[:n])
		}
		<-tk.C
	}
}
