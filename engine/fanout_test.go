package engine_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/klauspost/compress/flate"

	"github.com/surgepush/surge/engine"
	"github.com/surgepush/surge/topics"
)

// dialRawExt upgrades with a Sec-WebSocket-Extensions offer and returns the
// client and the extensions the server accepted.
func dialRawExt(t *testing.T, addr, path, offer string) (*rawClient, string) {
	t.Helper()
	rc := &rawClient{t: t}
	c := rawDial(t, addr)
	rc.c = c
	rc.br = newReader(c)
	req := "GET " + path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + testKey + "\r\nSec-WebSocket-Version: 13\r\n"
	if offer != "" {
		req += "Sec-WebSocket-Extensions: " + offer + "\r\n"
	}
	rc.write([]byte(req + "\r\n"))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade status %d", resp.StatusCode)
	}
	return rc, resp.Header.Get("Sec-WebSocket-Extensions")
}

func TestDeflateNegotiationMatrix(t *testing.T) {
	e := startEngine(t, engine.Config{})
	const accepted = "permessage-deflate;server_no_context_takeover;client_no_context_takeover"
	cases := []struct{ offer, want string }{
		{"", ""},
		{"permessage-deflate", accepted},
		{"permessage-deflate; client_max_window_bits", accepted},
		{"permessage-deflate; client_max_window_bits=10; server_no_context_takeover", accepted},
		{"permessage-deflate; server_max_window_bits=15", accepted},
		{"permessage-deflate; server_max_window_bits=10", ""},                              // we always use a 32 KiB window
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", accepted},    // fallback offer
		{"permessage-deflate; foo=1", ""},                                                  // unknown parameter: decline
		{"permessage-deflate; server_no_context_takeover=1", ""},                           // value not allowed
		{"permessage-deflate; client_max_window_bits=7", ""},                               // out of range
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", ""}, // repeated
		{"x-webkit-deflate-frame", ""},
	}
	for _, tc := range cases {
		_, got := dialRawExt(t, e.Addr(), "/ws", tc.offer)
		if got != tc.want {
			t.Errorf("offer %q: got %q, want %q", tc.offer, got, tc.want)
		}
	}
	off := false
	e2 := startEngine(t, engine.Config{Deflate: &off})
	if _, got := dialRawExt(t, e2.Addr(), "/ws", "permessage-deflate"); got != "" {
		t.Errorf("--deflate=false still negotiated %q", got)
	}
}

func deflate(t *testing.T, p []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	w.Write(p)
	w.Flush()
	return bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
}

func inflate(t *testing.T, p []byte) []byte {
	t.Helper()
	r := flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff})))
	out, err := io.ReadAll(r)
	if err != nil && err != io.ErrUnexpectedEOF {
		t.Fatalf("inflate: %v", err)
	}
	return out
}

func TestDeflateEchoAndLimits(t *testing.T) {
	e := startEngine(t, engine.Config{Echo: true, MaxMessageSize: 1 << 20, DeflateThreshold: 64})
	rc, ext := dialRawExt(t, e.Addr(), "/echo", "permessage-deflate")
	if ext == "" {
		t.Fatal("deflate not negotiated")
	}
	msg := []byte(strings.Repeat("surge compresses once; ", 100))
	rc.write(frame(0xC1, deflate(t, msg), true)) // FIN + RSV1 + text
	f, err := rc.read()
	if err != nil || f.op != 1 {
		t.Fatalf("echo: %+v %v", f, err)
	}
	if got := inflate(t, f.payload); !bytes.Equal(got, msg) {
		t.Fatalf("echo of a compressed message: %q", got)
	}
	// Fragmented compressed message: RSV1 on the first frame only.
	c := deflate(t, msg)
	rc.write(frame(0x41, c[:10], true))
	rc.write(frame(0x80, c[10:], true))
	if f, err = rc.read(); err != nil || !bytes.Equal(inflate(t, f.payload), msg) {
		t.Fatalf("fragmented compressed echo: %v", err)
	}
	cases := []struct {
		name string
		send []byte
		code int
	}{
		{"deflate bomb", frame(0xC2, deflate(t, make([]byte, 2<<20)), true), 1009},
		{"rsv1 on ping", frame(0xC9, nil, true), 1002},
		{"rsv1 on continuation", append(frame(0x01, []byte("a"), true), frame(0xC0, []byte("b"), true)...), 1002},
		{"rsv2 with deflate", frame(0xA1, []byte("a"), true), 1002},
		{"garbage compressed", frame(0xC1, []byte{0xff, 0xff, 0xff, 0xff}, true), 1007},
		{"compressed bad utf8", frame(0xC1, deflate(t, []byte{0xff, 0xfe}), true), 1007},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc, _ := dialRawExt(t, e.Addr(), "/echo", "permessage-deflate")
			rc.write(tc.send)
			if code, reason := rc.readClose(); code != tc.code {
				t.Fatalf("close %d (%s), want %d", code, reason, tc.code)
			}
		})
	}
}

// A Go client with compression (coder/websocket) receives compressed pushes;
// a plain client on the same topic receives the same message uncompressed.
func TestCompressedFanout(t *testing.T) {
	e := startEngine(t, engine.Config{DeflateThreshold: 128})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	zc, _, err := websocket.Dial(ctx, "ws://"+e.Addr()+"/ws?topic=big", &websocket.DialOptions{CompressionMode: websocket.CompressionNoContextTakeover})
	if err != nil {
		t.Fatal(err)
	}
	defer zc.CloseNow()
	plain := dialRaw(t, e.Addr(), "/ws?topic=big")
	data := map[string]string{"text": strings.Repeat("market data ", 200)}
	publish(t, e.Addr(), "big", data)
	_, got, err := zc.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f, err := plain.read()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, f.payload) || !strings.Contains(string(got), `"seq":1`) {
		t.Fatalf("compressed and plain deliveries differ:\n%s\n%s", got, f.payload)
	}
	st := getStats(t, e.Addr())
	if st.CompressedMessages != 1 || st.DeflatedSent != 1 || st.DeflateConnections != 1 {
		t.Fatalf("compressed %d deflated_sent %d deflate_conns %d", st.CompressedMessages, st.DeflatedSent, st.DeflateConnections)
	}
}

type delivery struct {
	Op    string          `json:"op"`
	ID    json.RawMessage `json:"id"`
	Code  string          `json:"code"`
	Topic string          `json:"topic"`
	Seq   uint64          `json:"seq"`
	Old   uint64          `json:"oldest"`
	Data  json.RawMessage `json:"data"`
}

func (rc *rawClient) readJSON() delivery {
	rc.t.Helper()
	f, err := rc.read()
	if err != nil {
		rc.t.Fatal(err)
	}
	var d delivery
	if err := json.Unmarshal(f.payload, &d); err != nil {
		rc.t.Fatalf("%s: %v", f.payload, err)
	}
	return d
}

func TestSinceRecovery(t *testing.T) {
	e := startEngine(t, engine.Config{TopicRules: "short.:history=3"})
	for i := 1; i <= 5; i++ {
		publish(t, e.Addr(), "room.1", i)
		publish(t, e.Addr(), "short.1", i)
	}
	rc := dialRaw(t, e.Addr(), "/ws")
	rc.write(frame(0x81, []byte(`{"op":"subscribe","topic":"room.1","since":2,"id":"a"}`), true))
	if d := rc.readJSON(); d.Op != "ok" || string(d.ID) != `"a"` || d.Seq != 5 {
		t.Fatalf("reply %+v", d)
	}
	for want := uint64(3); want <= 5; want++ {
		if d := rc.readJSON(); d.Op != "message" || d.Seq != want || string(d.Data) != fmt.Sprint(want) {
			t.Fatalf("replay %+v, want seq %d", d, want)
		}
	}
	publish(t, e.Addr(), "room.1", 6)
	if d := rc.readJSON(); d.Seq != 6 {
		t.Fatalf("live %+v", d)
	}
	// Older than the ring: an error that says so, then what is retained.
	rc.write(frame(0x81, []byte(`{"op":"subscribe","topic":"short.1","since":0,"id":"b"}`), true))
	if d := rc.readJSON(); d.Op != "error" || d.Code != "recovery_incomplete" || d.Old != 3 || d.Seq != 5 {
		t.Fatalf("reply %+v", d)
	}
	for want := uint64(3); want <= 5; want++ {
		if d := rc.readJSON(); d.Topic != "short.1" || d.Seq != want {
			t.Fatalf("replay %+v, want %d", d, want)
		}
	}
	if st := getStats(t, e.Addr()); st.Replayed != 6 {
		t.Fatalf("replayed %d", st.Replayed)
	}
}

func TestBatchAndBinaryPublish(t *testing.T) {
	e := startEngine(t, engine.Config{})
	rc := dialRaw(t, e.Addr(), "/ws?topic=a&topic=bin")
	body := `{"messages":[{"topic":"a","data":1},{"topic":"a","data":{"x":2}},{"topic":"b","data":"three"}]}`
	resp, err := http.Post("http://"+e.Addr()+"/v1/publish", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"result":"ok","results":[{"result":"ok","topic":"a","seq":1},{"result":"ok","topic":"a","seq":2},{"result":"ok","topic":"b","seq":1}]}`+"\n" {
		t.Fatalf("batch: %d %s", resp.StatusCode, b)
	}
	for want := uint64(1); want <= 2; want++ {
		if d := rc.readJSON(); d.Topic != "a" || d.Seq != want {
			t.Fatalf("%+v", d)
		}
	}
	// An invalid item rejects the whole batch.
	resp, _ = http.Post("http://"+e.Addr()+"/v1/publish", "application/json", strings.NewReader(`{"messages":[{"topic":"a","data":1},{"topic":"bad topic","data":1}]}`))
	if resp.StatusCode != 400 {
		t.Fatalf("bad batch: %d", resp.StatusCode)
	}
	resp.Body.Close()
	raw := []byte{0, 1, 2, 0xff, 'x'}
	resp, err = http.Post("http://"+e.Addr()+"/v1/publish?topic=bin", "application/octet-stream", bytes.NewReader(raw))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("binary publish: %v %d", err, resp.StatusCode)
	}
	resp.Body.Close()
	f, err := rc.read()
	if err != nil || f.op != 2 {
		t.Fatalf("binary delivery: %+v %v", f, err)
	}
	name, seq, data, ok := topics.DecodeBinary(f.payload)
	if !ok || name != "bin" || seq != 1 || !bytes.Equal(data, raw) {
		t.Fatalf("binary framing: %q %d %v %v", name, seq, data, ok)
	}
	if f.payload[0] != 1 || f.payload[1] != 3 || binary.BigEndian.Uint64(f.payload[5:13]) != 1 {
		t.Fatalf("documented layout: % x", f.payload[:13])
	}
	// a was published twice and is still the next seq after the failed batch.
	if seq := publish(t, e.Addr(), "a", 0); seq != 3 {
		t.Fatalf("seq after rejected batch %d", seq)
	}
}
