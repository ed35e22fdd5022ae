package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

// startSurge runs a real Surge engine on a random loopback port for the
// test and returns its WebSocket URL.
func startSurge(t *testing.T, history int) string {
	t.Helper()
	cfg := engine.Config{Listen: "127.0.0.1:0", HistorySize: &history, DrainWindow: 20 * time.Millisecond}
	e, err := engine.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("engine shutdown: %v", err)
		}
	})
	return "ws://" + e.Addr() + "/ws"
}

// stormTestConfig: 120 clients over 4 topics, 200 messages a second (50 per
// topic), 400 ms of publishing before the drop.
func stormTestConfig(url string) StormConfig {
	return StormConfig{
		URL:          url,
		Conns:        120,
		Topics:       4,
		Rate:         200,
		BeforeDrop:   400 * time.Millisecond,
		Reconnect:    reconnectJitter,
		JitterWindow: 300 * time.Millisecond,
		StormTimeout: 10 * time.Second,
		Hold:         300 * time.Millisecond,
		PerClient:    true,
	}
}

// publishSeq publishes one message to topic over HTTP and returns the seq
// the server assigned: the test's own view of how far the topic's seq got.
func publishSeq(t *testing.T, wsURL, topic string) uint64 {
	t.Helper()
	u := "http" + strings.TrimSuffix(strings.TrimPrefix(wsURL, "ws"), "/ws") + "/v1/publish"
	resp, err := http.Post(u, "application/json", strings.NewReader(fmt.Sprintf(`{"topic":%q,"data":{"probe":true}}`, topic)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans struct {
		Result string `json:"result"`
		Seq    uint64 `json:"seq"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &ans); err != nil || ans.Result != "ok" {
		t.Fatalf("publish answer %s: %v", b, err)
	}
	return ans.Seq
}

// checkStormBasics asserts what every completed storm run must show.
func checkStormBasics(t *testing.T, rep *StormReport, conns int) {
	t.Helper()
	logStormSummary(t, rep)
	if rep.Clients.Connected != int64(conns) || rep.Back != int64(conns) || rep.NotBack != 0 || rep.FailRatio != 0 {
		t.Fatalf("connected %d back %d not back %d (%v) fail ratio %v; want all %d",
			rep.Clients.Connected, rep.Back, rep.NotBack, rep.NotBackCause, rep.FailRatio, conns)
	}
	if rep.TimeToAllBackMs == nil || *rep.TimeToAllBackMs < rep.Max-0.01 {
		t.Errorf("time to all back %v ms, max reconnect %v ms", rep.TimeToAllBackMs, rep.Max)
	}
	if rep.ReconnectMs.Count != int64(conns) || rep.P50 <= 0 || rep.P50 > rep.P90 || rep.P90 > rep.P99 || rep.P99 > rep.Max {
		t.Errorf("reconnect ms = %+v", rep.ReconnectMs)
	}
	if tl := rep.BackTimeline; len(tl) < 2 || tl[0].Back != 0 || tl[len(tl)-1].Back != rep.Back {
		t.Errorf("back timeline %v: want it to run from 0 to all %d back", tl, rep.Back)
	} else {
		for i := 1; i < len(tl); i++ {
			if tl[i].Back < tl[i-1].Back || tl[i].TMs <= tl[i-1].TMs {
				t.Fatalf("back timeline not increasing at %d: %v", i, tl[i-1:i+1])
			}
		}
	}
	var inBuckets int64
	for _, b := range rep.Reconnect.Buckets {
		inBuckets += b.Count
	}
	if inBuckets != int64(conns) || len(rep.Reconnect.Percentiles) == 0 {
		t.Errorf("reconnect distribution: %d values in buckets, %d percentiles; want %d values", inBuckets, len(rep.Reconnect.Percentiles), conns)
	}
	if rep.Attempts < int64(conns) {
		t.Errorf("attempts %d < clients %d", rep.Attempts, conns)
	}
	if rep.Published == 0 || rep.PublishErrors != 0 {
		t.Errorf("published %d, errors %d (%v)", rep.Published, rep.PublishErrors, rep.PublishErrorsByCause)
	}
	if rep.Delivered+rep.Lost != rep.Expected {
		t.Errorf("delivered %d + lost %d != expected %d", rep.Delivered, rep.Lost, rep.Expected)
	}
	if rep.Duplicates != 0 || rep.Reordered != 0 || rep.Malformed != 0 || rep.Foreign != 0 {
		t.Errorf("dups %d reordered %d malformed %d foreign %d", rep.Duplicates, rep.Reordered, rep.Malformed, rep.Foreign)
	}
	if !rep.Drained || rep.Clients.ClosedClean != int64(conns) {
		t.Errorf("drained %v, closed clean %d", rep.Drained, rep.Clients.ClosedClean)
	}
	if len(rep.PerClient) != conns {
		t.Fatalf("%d per-client entries, want %d", len(rep.PerClient), conns)
	}
	var pub int64
	for _, n := range rep.PublishedPerTopic {
		pub += n
	}
	if pub != rep.Published {
		t.Errorf("published per topic %v sums to %d, not %d", rep.PublishedPerTopic, pub, rep.Published)
	}
}

func TestStormSinceAgainstSurge(t *testing.T) {
	url := startSurge(t, 1000)
	cfg := stormTestConfig(url)
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	checkStormBasics(t, rep, cfg.Conns)
	if rep.Lost != 0 || rep.Missed != 0 || rep.RecoveryIncomplete != 0 {
		t.Errorf("lost %d missed %d recovery_incomplete %d; want 0 with since and ample history",
			rep.Lost, rep.Missed, rep.RecoveryIncomplete)
	}
	// Every client saw messages before the drop and, after its gap, went
	// on exactly where it stopped: the replay filled the gap.
	for _, c := range rep.PerClient {
		if c.SeqBefore == 0 || c.SeqAfter != c.SeqBefore+1 {
			t.Errorf("client %d: seq before %d, first after %d; want a seamless resume", c.Client, c.SeqBefore, c.SeqAfter)
		}
	}
	if code := stormVerdict(rep, 0, io.Discard); code != exitOK {
		t.Errorf("verdict %d, want 0", code)
	}
}

func TestStormWithoutSinceCountsGapExactly(t *testing.T) {
	url := startSurge(t, 1000)
	cfg := stormTestConfig(url)
	cfg.NoSince = true
	cfg.TopicPrefix = "nosince."
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	checkStormBasics(t, rep, cfg.Conns)
	// The topics are fresh and only the run publishes to them, so the
	// seqs on topic k are 1 … published_per_topic[k], each acknowledged to
	// the run's publisher; the test's own publish answers the next seq.
	for k, n := range rep.PublishedPerTopic {
		if got := publishSeq(t, url, fmt.Sprintf("nosince.%d", k)); got != uint64(n)+1 {
			t.Errorf("topic %d: next seq %d, want %d+1: the run's acknowledged count disagrees with the server", k, got, n)
		}
	}
	// Without since a client misses exactly the seqs strictly between the
	// last one it read before the drop and the first one after: every one
	// of them was published (contiguous seqs) while it was away.
	var want, clientsWithGap int64
	for _, c := range rep.PerClient {
		if c.SeqBefore == 0 || c.SeqAfter <= c.SeqBefore {
			t.Fatalf("client %d: seq before %d, after %d", c.Client, c.SeqBefore, c.SeqAfter)
		}
		gap := int64(c.SeqAfter - c.SeqBefore - 1)
		if c.Missed != gap || c.Lost != gap {
			t.Errorf("client %d: missed %d lost %d, want the gap %d (seq %d → %d)", c.Client, c.Missed, c.Lost, gap, c.SeqBefore, c.SeqAfter)
		}
		want += gap
		if gap > 0 {
			clientsWithGap++
		}
	}
	if want == 0 || rep.Missed != want || rep.Lost != want || rep.LostOutsideGap != 0 || rep.ClientsWithMissed != clientsWithGap {
		t.Errorf("missed %d lost %d outside %d clients %d; want %d, %d, 0, %d",
			rep.Missed, rep.Lost, rep.LostOutsideGap, rep.ClientsWithMissed, want, want, clientsWithGap)
	}
	if rep.RecoveryIncomplete != 0 || rep.Config.Since {
		t.Errorf("recovery_incomplete %d, since %v", rep.RecoveryIncomplete, rep.Config.Since)
	}
	// Loss without since is what the scenario measures, not a failure.
	if code := stormVerdict(rep, 0, io.Discard); code != exitOK {
		t.Errorf("verdict %d, want 0", code)
	}
}

func TestStormSinceShortHistoryAgainstSurge(t *testing.T) {
	// History of 2 messages per topic and a 1.5 s jitter window at 50
	// messages per topic a second: most clients come back too late for a
	// full replay and must be told recovery_incomplete.
	url := startSurge(t, 2)
	cfg := stormTestConfig(url)
	cfg.Conns = 40
	cfg.JitterWindow = 1500 * time.Millisecond
	cfg.TopicPrefix = "short."
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	logStormSummary(t, rep)
	if rep.Back != 40 || rep.RecoveryIncomplete == 0 || rep.Missed == 0 || rep.LostOutsideGap != 0 {
		t.Fatalf("back %d recovery_incomplete %d missed %d outside %d; want 40, >0, >0, 0",
			rep.Back, rep.RecoveryIncomplete, rep.Missed, rep.LostOutsideGap)
	}
	var buf bytes.Buffer
	if code := stormVerdict(rep, 0, &buf); code != exitFail || !strings.Contains(buf.String(), "recovery_incomplete") {
		t.Errorf("verdict %d (%s), want 1 naming the loss", code, buf.String())
	}
}

func logStormSummary(t *testing.T, rep *StormReport) {
	t.Helper()
	var b strings.Builder
	writeStormSummary(&b, rep)
	t.Log("\n" + b.String())
}

func TestStormAgainstContractServerSince(t *testing.T) {
	s := newPubsubServer(t, func(s *pubsubServer) { s.history = true })
	base := runtime.NumGoroutine()
	cfg := stormTestConfig(s.wsURL())
	cfg.Conns = 60
	cfg.Drop = dropClose
	cfg.Reconnect = reconnectImmediate
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	checkStormBasics(t, rep, cfg.Conns)
	if rep.Lost != 0 || rep.Missed != 0 || rep.Attempts != 60 || rep.Refused != 0 {
		t.Errorf("lost %d missed %d attempts %d refused %d; want 0, 0, 60, 0", rep.Lost, rep.Missed, rep.Attempts, rep.Refused)
	}
	// Each client subscribed twice with the op: before and after the drop.
	s.mu.Lock()
	for k, n := range rep.PublishedPerTopic {
		name := fmt.Sprintf("storm.%d", k)
		if got := s.subsByTop[name]; got != 2*15 {
			t.Errorf("%s: %d subscriptions, want 30", name, got)
		}
		if got := s.topics[name].seq; got != uint64(n) {
			t.Errorf("%s: server seq %d, run acknowledged %d", name, got, n)
		}
	}
	s.mu.Unlock()
	checkNoLeak(t, base)
}

func TestStormContractServerIgnoringSince(t *testing.T) {
	// The server answers the subscribe op but replays nothing: the run
	// asked for since, so every message of a gap is lost and the verdict
	// fails; the count must still be exact.
	s := newPubsubServer(t, nil)
	cfg := stormTestConfig(s.wsURL())
	cfg.Conns = 60
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	checkStormBasics(t, rep, cfg.Conns)
	var want int64
	for _, c := range rep.PerClient {
		if c.SeqAfter <= c.SeqBefore {
			t.Fatalf("client %d: seq before %d, after %d", c.Client, c.SeqBefore, c.SeqAfter)
		}
		gap := int64(c.SeqAfter - c.SeqBefore - 1)
		if c.Missed != gap || c.Lost != gap {
			t.Errorf("client %d: missed %d lost %d, want %d", c.Client, c.Missed, c.Lost, gap)
		}
		want += gap
	}
	if want == 0 || rep.Missed != want || rep.Lost != want {
		t.Errorf("missed %d lost %d, want %d", rep.Missed, rep.Lost, want)
	}
	var buf bytes.Buffer
	if code := stormVerdict(rep, 0, &buf); code != exitFail || !strings.Contains(buf.String(), "with since") {
		t.Errorf("verdict %d (%q), want 1 for loss with since", code, buf.String())
	}
}

func TestStormRefusedByCause(t *testing.T) {
	// The first 40 upgrades (the initial connections) pass, the next 30
	// get 503, the next 20 get 429, then all pass again.
	const conns, n503, n429 = 40, 30, 20
	var seen atomic.Int64
	s := newPubsubServer(t, func(s *pubsubServer) {
		s.history = true
		s.gate = func() int {
			switch k := seen.Add(1); {
			case k <= conns:
				return 0
			case k <= conns+n503:
				return http.StatusServiceUnavailable
			case k <= conns+n503+n429:
				return http.StatusTooManyRequests
			}
			return 0
		}
	})
	cfg := stormTestConfig(s.wsURL())
	cfg.Conns = conns
	cfg.Reconnect = reconnectImmediate
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	checkStormBasics(t, rep, conns)
	if rep.Refused != n503+n429 || rep.RefusedByCause["http_503"] != n503 || rep.RefusedByCause["http_429"] != n429 || len(rep.RefusedByCause) != 2 {
		t.Errorf("refused %d by cause %v; want 503 ×%d, 429 ×%d", rep.Refused, rep.RefusedByCause, n503, n429)
	}
	if rep.Attempts != conns+n503+n429 || rep.AttemptsMax < 2 {
		t.Errorf("attempts %d (max %d), want %d", rep.Attempts, rep.AttemptsMax, conns+n503+n429)
	}
	if rep.Lost != 0 {
		t.Errorf("lost %d with since", rep.Lost)
	}
}

func TestStormNotBackBeforeTimeout(t *testing.T) {
	// Every reconnect is refused: nobody comes back within the timeout,
	// the loss of the absent clients is kept apart, and the verdict fails.
	var seen atomic.Int64
	s := newPubsubServer(t, func(s *pubsubServer) {
		s.history = true
		s.gate = func() int {
			if seen.Add(1) > 20 {
				return http.StatusServiceUnavailable
			}
			return 0
		}
	})
	cfg := stormTestConfig(s.wsURL())
	cfg.Conns = 20
	cfg.StormTimeout = 600 * time.Millisecond
	cfg.BackoffMin = 20 * time.Millisecond
	cfg.BackoffMax = 50 * time.Millisecond
	cfg.JitterWindow = 20 * time.Millisecond
	rep, err := Storm(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Storm: %v", err)
	}
	logStormSummary(t, rep)
	if rep.Back != 0 || rep.NotBack != 20 || rep.TimeToAllBackMs != nil || rep.FailRatio != 1 {
		t.Errorf("back %d not back %d all-back %v fail ratio %v", rep.Back, rep.NotBack, rep.TimeToAllBackMs, rep.FailRatio)
	}
	// An attempt still in flight when the reconnect phase ends is cut
	// short: "storm_timeout".
	if rep.NotBackCause["storm_timeout"] != 20 || rep.RefusedByCause["http_503"]+rep.RefusedByCause["storm_timeout"] != rep.Refused ||
		rep.RefusedByCause["http_503"] < 20 {
		t.Errorf("not back by %v, refused %d by %v", rep.NotBackCause, rep.Refused, rep.RefusedByCause)
	}
	if rep.Lost != 0 || rep.LostNotBack == 0 || rep.Expected != 0 {
		t.Errorf("lost %d, lost not back %d, expected %d", rep.Lost, rep.LostNotBack, rep.Expected)
	}
	if code := stormVerdict(rep, 0.5, io.Discard); code != exitFail {
		t.Errorf("verdict %d, want 1", code)
	}
}
