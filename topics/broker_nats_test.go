package topics

import (
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func newNATSNode(t *testing.T, url string, cfg NATSConfig) (*NATSBroker, *recorder) {
	t.Helper()
	cfg.URL = url
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.ReconnectWait == 0 {
		cfg.ReconnectWait = 20 * time.Millisecond
	}
	b, err := NewNATSBroker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_, rec := startNode(t, b)
	return b, rec
}

func TestEncodeSubject(t *testing.T) {
	for _, tc := range []struct{ topic, subject string }{
		{"prices.AAPL", "prices.AAPL"},
		{"a..b", "a.%.b"},
		{".a", "%.a"},
		{"a.", "a.%"},
		{".", "%.%"},
		{"user:42/inbox@eu", "user%3A42%2Finbox%40eu"},
		{"A-z_0", "A-z_0"},
	} {
		if got := EncodeSubject(tc.topic); got != tc.subject {
			t.Errorf("EncodeSubject(%q) = %q, want %q", tc.topic, got, tc.subject)
		}
		if back, ok := DecodeSubject(tc.subject); !ok || back != tc.topic {
			t.Errorf("DecodeSubject(%q) = %q %v", tc.subject, back, ok)
		}
	}
	for _, bad := range []string{"a%", "a%4", "a%zz"} {
		if _, ok := DecodeSubject(bad); ok {
			t.Errorf("DecodeSubject(%q) accepted", bad)
		}
	}
	// Every valid name maps to a subject of non-empty tokens made of
	// characters NATS takes without quoting, and distinct names stay distinct.
	alphabet := "aZ09._-:/@"
	seen := map[string]string{}
	var walk func(prefix string)
	walk = func(prefix string) {
		if len(prefix) == 4 {
			return
		}
		for _, c := range alphabet {
			name := prefix + string(c)
			s := EncodeSubject(name)
			for _, tok := range strings.Split(s, ".") {
				if tok == "" || strings.ContainsAny(tok, "*> \t:/@") {
					t.Fatalf("%q → %q: bad token %q", name, s, tok)
				}
			}
			if other, dup := seen[s]; dup {
				t.Fatalf("%q and %q both map to %q", name, other, s)
			}
			seen[s] = name
			walk(name)
		}
	}
	walk("")
}

func TestNATSStreamLayout(t *testing.T) {
	srv := runNATS(t, t.TempDir(), -1)
	b, _ := newNATSNode(t, srv.ClientURL(), NATSConfig{HistorySize: 7, MaxAge: time.Hour, Stream: "EDGE"})
	js, err := jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(bctx(t), "EDGE")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if !slices.Equal(cfg.Subjects, []string{"edge.t.>"}) || cfg.MaxMsgsPerSubject != 7 || cfg.MaxAge != time.Hour ||
		cfg.RePublish == nil || cfg.RePublish.Destination != "edge.d.>" || !cfg.AllowDirect {
		t.Fatalf("stream config %+v", cfg)
	}
	if got := b.SubjectFor("a:b"); got != "edge.t.a%3Ab" {
		t.Fatalf("SubjectFor = %q", got)
	}
}

// A node whose publisher cache is stale loses the race once, re-reads the
// subject and publishes with the next seq.
func TestNATSConflictRetries(t *testing.T) {
	url := runNATS(t, t.TempDir(), -1).ClientURL()
	a, _ := newNATSNode(t, url, NATSConfig{HistorySize: 4})
	b, _ := newNATSNode(t, url, NATSConfig{HistorySize: 4})
	for i, n := range []*NATSBroker{a, b, a, b, b, a} {
		if pos := mustBPublish(t, n, "x", "1"); pos.Seq != uint64(i+1) {
			t.Fatalf("publish %d: seq %d", i+1, pos.Seq)
		}
	}
	if a.conflicts.Load() != 2 || b.conflicts.Load() != 1 {
		t.Fatalf("conflicts: a %d, b %d; want 2 and 1", a.conflicts.Load(), b.conflicts.Load())
	}
}

// Messages the subscription missed (here: its NATS subscription silently
// gone for a while) are fetched from the stream when the next one reveals
// the gap, and delivered before it, in order.
func TestNATSGapRepair(t *testing.T) {
	url := runNATS(t, t.TempDir(), -1).ClientURL()
	a, _ := newNATSNode(t, url, NATSConfig{HistorySize: 16})
	b, rb := newNATSNode(t, url, NATSConfig{HistorySize: 16})
	mustBSubscribe(t, b, "g")
	mustBPublish(t, a, "g", "1")
	waitSeqs(t, rb, "g", 1, 1)
	nt := b.topic(b.dPrefix + "g")
	nt.mu.Lock()
	// The resync after connecting may have repaired 1; it delivers under
	// nt.mu and counts before releasing it, so read the count under nt.mu
	// too (seq 1 can be seen delivered a moment before it is counted).
	repairedBefore := b.repaired.Load()
	if err := nt.sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	nt.mu.Unlock()
	for i := 2; i <= 6; i++ {
		mustBPublish(t, a, "g", strconv.Itoa(i))
	}
	nt.mu.Lock()
	sub, err := b.nc.ChanSubscribe(nt.dSubj, nt.shard.msgs)
	if err != nil {
		t.Fatal(err)
	}
	nt.sub = sub
	nt.mu.Unlock()
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	mustBPublish(t, a, "g", "7")
	waitSeqs(t, rb, "g", 1, 7)
	for _, d := range rb.deliveries("g") {
		if string(d.Data) != strconv.FormatUint(d.Seq, 10) {
			t.Fatalf("seq %d carries %s", d.Seq, d.Data)
		}
	}
	if n := b.repaired.Load() - repairedBefore; n != 5 {
		t.Fatalf("repaired %d, want 5", n)
	}
	// The same gap found by a resync (no further message to reveal it).
	nt.mu.Lock()
	_ = nt.sub.Unsubscribe()
	nt.mu.Unlock()
	mustBPublish(t, a, "g", "8")
	mustBPublish(t, a, "g", "9")
	nt.mu.Lock()
	nt.sub, _ = b.nc.ChanSubscribe(nt.dSubj, nt.shard.msgs)
	nt.mu.Unlock()
	b.requestResync(nt.dSubj)
	waitSeqs(t, rb, "g", 1, 9)
}

// A connection forced to reconnect while another node publishes: every
// message arrives exactly once, in order (resync after each reconnect, gap
// repair, duplicates dropped).
func TestNATSForcedReconnects(t *testing.T) {
	url := runNATS(t, t.TempDir(), -1).ClientURL()
	a, _ := newNATSNode(t, url, NATSConfig{HistorySize: 1000})
	b, rb := newNATSNode(t, url, NATSConfig{HistorySize: 1000})
	mustBSubscribe(t, b, "r")
	total := 0
	publish := func(n int) {
		for range n {
			total++
			mustBPublish(t, a, "r", strconv.Itoa(total))
		}
	}
	for range 5 {
		before := b.reconnects.Load()
		if err := b.nc.ForceReconnect(); err != nil {
			t.Fatal(err)
		}
		publish(20) // while b is away, mostly
		waitUntil(t, 10*time.Second, "reconnect", func() bool { return b.reconnects.Load() > before && b.Healthy() == nil })
		publish(5)
	}
	waitSeqs(t, rb, "r", 1, uint64(total))
	t.Logf("%d messages; reconnects %d, repaired %d, duplicates %d", total, b.reconnects.Load(), b.repaired.Load(), b.duplicates.Load())
}

// NATS goes away and comes back (same port, same store): publishing fails
// fast meanwhile, nodes reconnect, seq continues, nothing is duplicated.
func TestNATSServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv := runNATS(t, dir, -1)
	port := natsPort(srv)
	a, _ := newNATSNode(t, srv.ClientURL(), NATSConfig{HistorySize: 16})
	b, rb := newNATSNode(t, srv.ClientURL(), NATSConfig{HistorySize: 16})
	mustBSubscribe(t, b, "s")
	first := mustBPublish(t, a, "s", "1")
	mustBPublish(t, a, "s", "2")
	waitSeqs(t, rb, "s", 1, 2)

	srv.Shutdown()
	srv.WaitForShutdown()
	waitUntil(t, 10*time.Second, "both nodes to notice", func() bool { return a.Healthy() != nil && b.Healthy() != nil })
	start := time.Now()
	if _, err := a.Publish(bctx(t), Publication{Topic: "s", Data: []byte("x")}); !errors.Is(err, ErrBrokerUnavailable) {
		t.Fatalf("publish while NATS is down: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("publish while NATS is down took %v; want it to fail fast", d)
	}
	if st := b.BrokerStats(); st.Connected || st.Error == "" {
		t.Fatalf("stats while down: %+v", st)
	}

	runNATS(t, dir, port)
	waitUntil(t, 20*time.Second, "both nodes to reconnect", func() bool { return a.Healthy() == nil && b.Healthy() == nil })
	for i := 3; i <= 5; i++ {
		if pos := mustBPublish(t, a, "s", strconv.Itoa(i)); pos.Seq != uint64(i) || pos.Epoch != first.Epoch {
			t.Fatalf("after restart: %+v, want seq %d epoch %q", pos, i, first.Epoch)
		}
	}
	waitSeqs(t, rb, "s", 1, 5)
}

// A node may start before NATS; it serves (Healthy says why not) and joins
// when NATS appears.
func TestNATSStartsBeforeServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	b, rb := newNATSNode(t, "nats://127.0.0.1:"+strconv.Itoa(port), NATSConfig{HistorySize: 4})
	if err := b.Healthy(); !errors.Is(err, ErrBrokerUnavailable) {
		t.Fatalf("Healthy before the server: %v", err)
	}
	if _, err := b.Subscribe(bctx(t), "early"); !errors.Is(err, ErrBrokerUnavailable) {
		t.Fatalf("Subscribe before the server: %v", err)
	}
	runNATS(t, t.TempDir(), port)
	waitUntil(t, 20*time.Second, "the node to connect", func() bool { return b.Healthy() == nil })
	mustBPublish(t, b, "early", "1")
	waitSeqs(t, rb, "early", 1, 1)
}

// When every retained message of a topic has aged out, the next publish
// starts a new epoch at seq 1, and subscribers get it.
func TestNATSNewEpochAfterMaxAge(t *testing.T) {
	url := runNATS(t, t.TempDir(), -1).ClientURL()
	a, _ := newNATSNode(t, url, NATSConfig{HistorySize: 4, MaxAge: 200 * time.Millisecond})
	b, rb := newNATSNode(t, url, NATSConfig{HistorySize: 4, MaxAge: 200 * time.Millisecond})
	mustBSubscribe(t, b, "old")
	first := mustBPublish(t, a, "old", "1")
	mustBPublish(t, a, "old", "2")
	waitSeqs(t, rb, "old", 1, 2)
	waitUntil(t, 10*time.Second, "messages to age out", func() bool {
		_, _, err := a.lastMsg(bctx(t), a.SubjectFor("old"))
		return errors.Is(err, jetstream.ErrMsgNotFound)
	})
	a.pmu.Lock()
	a.pubs["old"].known = false // as after the publisher cache's idle sweep
	a.pmu.Unlock()
	pos := mustBPublish(t, a, "old", "new")
	if pos.Seq != 1 || pos.Epoch == first.Epoch {
		t.Fatalf("after expiry: %+v (first epoch %q)", pos, first.Epoch)
	}
	waitUntil(t, 10*time.Second, "the new epoch's message", func() bool { return len(rb.seqs("old")) == 3 })
	if d := rb.deliveries("old")[2]; d.Seq != 1 || d.Epoch != pos.Epoch {
		t.Fatalf("got %+v", d)
	}
}

func TestNATSTooLarge(t *testing.T) {
	url := runNATS(t, t.TempDir(), -1).ClientURL()
	a, _ := newNATSNode(t, url, NATSConfig{})
	big := make([]byte, a.nc.MaxPayload())
	if _, err := a.Publish(bctx(t), Publication{Topic: "big", Data: big, Binary: true}); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("got %v", err)
	}
}

// Encoding any valid name and decoding it gives the name back; decoding
// anything never panics.
func FuzzSubjectRoundTrip(f *testing.F) {
	for _, s := range []string{"prices.AAPL", "a..b", ".", "u:1/x@y", "%", "a%2", "a.%.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		DecodeSubject(s)
		if !ValidName(s) {
			return
		}
		enc := EncodeSubject(s)
		for _, tok := range strings.Split(enc, ".") {
			if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
				t.Fatalf("%q → %q: bad token", s, enc)
			}
		}
		if back, ok := DecodeSubject(enc); !ok || back != s {
			t.Fatalf("%q → %q → %q %v", s, enc, back, ok)
		}
	})
}
