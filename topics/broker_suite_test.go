package topics

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// One suite of Broker behaviours, run against every implementation: each
// kind makes clusters of nodes (brokers that share topics), and every node
// records what it is delivered.

type brokerKind struct {
	name string
	// cluster starts a fresh cluster whose topics retain hist messages and
	// returns a function that adds a node (not started) to it.
	cluster func(t *testing.T, hist int) func() Broker
}

func brokerKinds() []brokerKind {
	return []brokerKind{
		{"memory", func(t *testing.T, hist int) func() Broker {
			hub := NewMemoryBroker(MemoryConfig{HistorySize: hist})
			first := true
			return func() Broker {
				b := hub
				if !first {
					b = hub.Peer()
				}
				first = false
				t.Cleanup(func() { b.Close() })
				return b
			}
		}},
		{"nats", func(t *testing.T, hist int) func() Broker {
			url := runNATS(t, t.TempDir(), -1).ClientURL()
			return func() Broker {
				b, err := NewNATSBroker(NATSConfig{URL: url, HistorySize: hist, Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				return b
			}
		}},
	}
}

// startNode starts b with a recorder as its handler.
func startNode(t *testing.T, b Broker) (Broker, *recorder) {
	t.Helper()
	rec := &recorder{got: map[string][]Delivery{}}
	if err := b.Start(rec); err != nil {
		t.Fatal(err)
	}
	return b, rec
}

// runNATS starts an embedded NATS server with JetStream storing in dir, on
// port (-1: a random one), and stops it when the test ends.
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

func natsPort(s *server.Server) int { return s.Addr().(*net.TCPAddr).Port }

// recorder is a BrokerHandler that keeps every delivery.
type recorder struct {
	mu  sync.Mutex
	got map[string][]Delivery
}

func (r *recorder) Deliver(d Delivery) {
	d.Data = bytes.Clone(d.Data)
	r.mu.Lock()
	r.got[d.Topic] = append(r.got[d.Topic], d)
	r.mu.Unlock()
}

func (r *recorder) deliveries(topic string) []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got[topic])
}

func (r *recorder) seqs(topic string) []uint64 {
	var out []uint64
	for _, d := range r.deliveries(topic) {
		out = append(out, d.Seq)
	}
	return out
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitSeqs waits until rec holds exactly the seqs from..to of topic, in order.
func waitSeqs(t testing.TB, rec *recorder, topic string, from, to uint64) {
	t.Helper()
	want := seqRange(from, to)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := rec.seqs(topic)
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("%s: got seqs %v, want %v", topic, got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to && to > 0; s++ {
		out = append(out, s)
	}
	return out
}

func bctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustBPublish(t testing.TB, b Broker, topic, data string) Position {
	t.Helper()
	pos, err := b.Publish(bctx(t), Publication{Topic: topic, Data: []byte(data)})
	if err != nil {
		t.Fatalf("Publish(%s): %v", topic, err)
	}
	return pos
}

func mustBSubscribe(t testing.TB, b Broker, topic string) Position {
	t.Helper()
	pos, err := b.Subscribe(bctx(t), topic)
	if err != nil {
		t.Fatalf("Subscribe(%s): %v", topic, err)
	}
	return pos
}

func TestBrokerSuite(t *testing.T) {
	for _, k := range brokerKinds() {
		t.Run(k.name, func(t *testing.T) {
			for _, tc := range brokerCases {
				t.Run(tc.name, func(t *testing.T) {
					cluster := k.cluster(t, tc.hist)
					tc.run(t, func() (Broker, *recorder) { return startNode(t, cluster()) })
				})
			}
		})
	}
}

var brokerCases = []struct {
	name string
	hist int
	run  func(t *testing.T, node func() (Broker, *recorder))
}{
	{"SeqStartsAtOneAndCounts", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		b, _ := node()
		var epoch string
		for i := 1; i <= 6; i++ {
			n := a
			if i%2 == 0 {
				n = b // publishers on different nodes share one seq
			}
			pos := mustBPublish(t, n, "prices.AAPL", `{"i":`+strconv.Itoa(i)+`}`)
			if pos.Seq != uint64(i) {
				t.Fatalf("publish %d: seq %d", i, pos.Seq)
			}
			if i == 1 {
				epoch = pos.Epoch
			} else if pos.Epoch != epoch || epoch == "" {
				t.Fatalf("publish %d: epoch %q, first %q", i, pos.Epoch, epoch)
			}
		}
		if pos := mustBPublish(t, a, "prices.MSFT", `1`); pos.Seq != 1 {
			t.Fatalf("another topic: seq %d, want 1", pos.Seq)
		}
	}},
	{"EveryNodeReceivesOnceInOrder", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		var nodes []Broker
		var recs []*recorder
		for i := 0; i < 3; i++ {
			n, r := node()
			nodes, recs = append(nodes, n), append(recs, r)
			if pos := mustBSubscribe(t, n, "lobby.7"); pos.Seq != 0 {
				t.Fatalf("fresh topic: position %+v", pos)
			}
		}
		for i := 1; i <= 30; i++ {
			mustBPublish(t, nodes[i%3], "lobby.7", `{"move":`+strconv.Itoa(i)+`}`)
		}
		for i, r := range recs {
			waitSeqs(t, r, "lobby.7", 1, 30)
			for j, d := range r.deliveries("lobby.7") {
				if want := `{"move":` + strconv.Itoa(j+1) + `}`; string(d.Data) != want {
					t.Fatalf("node %d message %d: data %s, want %s", i, j+1, d.Data, want)
				}
			}
		}
	}},
	{"ConcurrentPublishersGetDistinctSeqs", 0, func(t *testing.T, node func() (Broker, *recorder)) {
		var nodes []Broker
		var recs []*recorder
		for i := 0; i < 3; i++ {
			n, r := node()
			mustBSubscribe(t, n, "race")
			nodes, recs = append(nodes, n), append(recs, r)
		}
		const per = 25
		var wg sync.WaitGroup
		seqs := make([][]uint64, len(nodes))
		errs := make(chan error, len(nodes))
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < per; j++ {
					pos, err := n.Publish(context.Background(), Publication{Topic: "race", Data: []byte(fmt.Sprintf(`"%d-%d"`, i, j))})
					if err != nil {
						errs <- err
						return
					}
					seqs[i] = append(seqs[i], pos.Seq)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		all := slices.Concat(seqs...)
		slices.Sort(all)
		if !slices.Equal(all, seqRange(1, 3*per)) {
			t.Fatalf("seqs assigned: %v", all)
		}
		for i := range seqs {
			if !slices.IsSorted(seqs[i]) {
				t.Fatalf("node %d: its own publishes out of order: %v", i, seqs[i])
			}
		}
		for _, r := range recs {
			waitSeqs(t, r, "race", 1, 3*per)
		}
		// Each node sees every message with the data its publisher sent.
		byData := map[string]uint64{}
		for _, d := range recs[0].deliveries("race") {
			byData[string(d.Data)] = d.Seq
		}
		for _, r := range recs[1:] {
			for _, d := range r.deliveries("race") {
				if byData[string(d.Data)] != d.Seq {
					t.Fatalf("data %s has seq %d here, %d on node 0", d.Data, d.Seq, byData[string(d.Data)])
				}
			}
		}
	}},
	{"SubscribeReturnsPosition", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		first := mustBPublish(t, a, "t", `1`)
		mustBPublish(t, a, "t", `2`)
		mustBPublish(t, a, "t", `3`)
		b, rb := node()
		if pos := mustBSubscribe(t, b, "t"); pos.Seq != 3 || pos.Epoch != first.Epoch {
			t.Fatalf("position %+v, want seq 3 epoch %q", pos, first.Epoch)
		}
		mustBPublish(t, a, "t", `4`)
		waitSeqs(t, rb, "t", 4, 4) // nothing before the subscription
	}},
	{"UnsubscribeStopsDelivery", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		b, rb := node()
		mustBSubscribe(t, b, "u")
		mustBPublish(t, a, "u", `1`)
		waitSeqs(t, rb, "u", 1, 1)
		b.Unsubscribe("u")
		mustBPublish(t, a, "u", `2`) // never reaches b
		if pos := mustBSubscribe(t, b, "u"); pos.Seq != 2 {
			t.Fatalf("resubscribe position %+v", pos)
		}
		mustBPublish(t, a, "u", `3`)
		waitUntil(t, 10*time.Second, "message 3", func() bool { return len(rb.seqs("u")) >= 2 })
		if got := rb.seqs("u"); !slices.Equal(got, []uint64{1, 3}) {
			t.Fatalf("got %v, want [1 3]", got)
		}
	}},
	{"OnlySubscribedTopics", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		b, rb := node()
		mustBSubscribe(t, b, "yes")
		mustBPublish(t, a, "no", `1`)
		mustBPublish(t, a, "yes", `1`)
		waitSeqs(t, rb, "yes", 1, 1)
		mustBSubscribe(t, b, "no")
		mustBPublish(t, a, "no", `2`)
		waitSeqs(t, rb, "no", 2, 2)
	}},
	{"HistorySinceAndLimit", 4, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		for i := 1; i <= 6; i++ {
			mustBPublish(t, a, "h", strconv.Itoa(i))
		}
		b, _ := node()
		for _, tc := range []struct {
			since uint64
			limit int
			want  []uint64
		}{
			{0, 10, []uint64{3, 4, 5, 6}}, // 4 retained
			{4, 10, []uint64{5, 6}},
			{0, 1, []uint64{6}},
			{6, 10, nil},
		} {
			ds, pos, err := b.History(bctx(t), "h", tc.since, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, d := range ds {
				got = append(got, d.Seq)
				if string(d.Data) != strconv.FormatUint(d.Seq, 10) || d.Epoch != pos.Epoch || d.Topic != "h" || d.Time.IsZero() {
					t.Fatalf("delivery %+v (position %+v)", d, pos)
				}
			}
			if !slices.Equal(got, tc.want) || pos.Seq != 6 {
				t.Errorf("History(since %d, limit %d) = %v at %+v, want %v at 6", tc.since, tc.limit, got, pos, tc.want)
			}
		}
		if ds, pos, err := b.History(bctx(t), "never", 0, 10); err != nil || len(ds) != 0 || pos.Seq != 0 {
			t.Fatalf("unknown topic: %v %+v %v", ds, pos, err)
		}
	}},
	{"BinaryAndKeyTravel", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		b, rb := node()
		mustBSubscribe(t, b, "bin")
		payload := []byte{0, 1, 2, 0xff, '\n'}
		if _, err := a.Publish(bctx(t), Publication{Topic: "bin", Data: payload, Binary: true, Key: "k1"}); err != nil {
			t.Fatal(err)
		}
		waitSeqs(t, rb, "bin", 1, 1)
		d := rb.deliveries("bin")[0]
		if !d.Binary || d.Key != "k1" || !bytes.Equal(d.Data, payload) {
			t.Fatalf("got %+v", d)
		}
	}},
	{"TopicNamesStayApart", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		b, rb := node()
		names := []string{"a.b", "a..b", ".a.b", "a.b.", "a:b", "a/b", "a@b", "a_b", "a-b", "ab", "x.y.z", "A-z_0.9:/@x"}
		for _, n := range names {
			mustBSubscribe(t, b, n)
		}
		for i, n := range names {
			for j := 0; j <= i%3; j++ {
				mustBPublish(t, a, n, strconv.Quote(n))
			}
		}
		for i, n := range names {
			waitSeqs(t, rb, n, 1, uint64(i%3+1))
			for _, d := range rb.deliveries(n) {
				if string(d.Data) != strconv.Quote(n) {
					t.Fatalf("topic %q got %s", n, d.Data)
				}
			}
		}
	}},
	{"InvalidTopicRejected", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, _ := node()
		if _, err := a.Publish(bctx(t), Publication{Topic: "bad topic", Data: []byte("1")}); err != ErrTopicName {
			t.Fatalf("publish: %v", err)
		}
		if _, err := a.Subscribe(bctx(t), "a*b"); err != ErrTopicName {
			t.Fatalf("subscribe: %v", err)
		}
	}},
	{"ClosedNodeStopsOthersContinue", 8, func(t *testing.T, node func() (Broker, *recorder)) {
		a, ra := node()
		b, rb := node()
		mustBSubscribe(t, a, "c")
		mustBSubscribe(t, b, "c")
		mustBPublish(t, b, "c", `1`)
		waitSeqs(t, ra, "c", 1, 1)
		waitSeqs(t, rb, "c", 1, 1)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Publish(bctx(t), Publication{Topic: "c", Data: []byte("2")}); err == nil {
			t.Fatal("publish on a closed broker succeeded")
		}
		mustBPublish(t, a, "c", `2`)
		waitSeqs(t, ra, "c", 1, 2)
		if got := rb.seqs("c"); !slices.Equal(got, []uint64{1}) {
			t.Fatalf("closed node got %v", got)
		}
	}},
}
