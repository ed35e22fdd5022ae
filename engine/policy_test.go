package engine_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/surgepush/surge/engine"
)

func publishKey(t *testing.T, addr, topic, key string, data any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"topic": topic, "data": data, "key": key})
	resp, err := http.Post("http://"+addr+"/v1/publish", "application/json", bytes.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish: %v %v", err, resp.StatusCode)
	}
	resp.Body.Close()
}

// fillAndDrain publishes n large messages (keys alternating A/B) to a
// subscriber that is not reading, then reads until the last one arrives and
// returns the seqs received in order.
func fillAndDrain(t *testing.T, e *engine.Engine, topic string, n int) (seqs []uint64, keys []string) {
	t.Helper()
	rc := dialRaw(t, e.Addr(), "/ws?topic="+topic)
	pad := strings.Repeat("p", 64<<10)
	for i := 1; i <= n; i++ {
		key := "A"
		if i%2 == 0 {
			key = "B"
		}
		publishKey(t, e.Addr(), topic, key, map[string]any{"k": key, "pad": pad})
	}
	for {
		f, err := rc.read()
		if err != nil {
			t.Fatalf("after %d messages: %v", len(seqs), err)
		}
		var d struct {
			Seq  uint64 `json:"seq"`
			Data struct {
				K string `json:"k"`
			} `json:"data"`
		}
		if err := json.Unmarshal(f.payload, &d); err != nil {
			t.Fatal(err)
		}
		if len(seqs) > 0 && d.Seq <= seqs[len(seqs)-1] {
			t.Fatalf("seq %d after %d: order broken", d.Seq, seqs[len(seqs)-1])
		}
		seqs, keys = append(seqs, d.Seq), append(keys, d.Data.K)
		if d.Seq == uint64(n) {
			return seqs, keys
		}
	}
}

func TestConflatePolicyKeepsLatestPerKey(t *testing.T) {
	e := startEngine(t, engine.Config{TopicRules: "px.:policy=conflate,history=0", WriteQueueFrames: 8})
	const n = 200
	seqs, keys := fillAndDrain(t, e, "px.AAPL", n)
	st := getStats(t, e.Addr())
	if st.Conflated == 0 || len(seqs) >= n {
		t.Fatalf("conflated %d, received %d of %d: the subscriber never fell behind", st.Conflated, len(seqs), n)
	}
	// The newest value of each key arrives: seq n-1 (A) and n (B).
	if seqs[len(seqs)-2] != n-1 || keys[len(keys)-2] != "A" || keys[len(keys)-1] != "B" {
		t.Fatalf("tail %v %v", seqs[len(seqs)-3:], keys[len(keys)-3:])
	}
	if st.Connections != 1 || st.SlowConsumerCloses != 0 {
		t.Fatalf("conflating subscriber was closed: %+v", st)
	}
}

func TestDropOldestPolicy(t *testing.T) {
	e := startEngine(t, engine.Config{SlowPolicy: "drop-oldest", HistorySize: new(int), WriteQueueFrames: 8})
	const n = 200
	seqs, _ := fillAndDrain(t, e, "feed", n)
	st := getStats(t, e.Addr())
	if st.Drops == 0 || len(seqs) >= n {
		t.Fatalf("drops %d, received %d of %d", st.Drops, len(seqs), n)
	}
	if int(st.Drops)+len(seqs) != n {
		t.Fatalf("dropped %d + received %d != published %d: something was lost uncounted", st.Drops, len(seqs), n)
	}
	if st.Connections != 1 {
		t.Fatalf("subscriber closed")
	}
}
