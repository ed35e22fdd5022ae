package topics

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/surgepush/surge/conn"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"prices.AAPL", true},
		{"lobby-7_x:y/z@host", true},
		{"0123456789", true},
		{"...", true},
		{strings.Repeat("a", MaxTopicLen-1), true},
		{strings.Repeat("a", MaxTopicLen), true},
		{strings.Repeat("a", MaxTopicLen+1), false},
		{strings.Repeat("é", 64), false}, // 128 bytes, not ASCII
		{"", false},
		{" ", false},
		{"a b", false},
		{" a", false},
		{"a\t", false},
		{"a\n", false},
		{"a\x00", false},
		{"prix.é", false},
		{"日本", false},
		{"a\"b", false}, // would need JSON escaping
		{`a\b`, false},
		{"a*", false},
		{"a>", false},
		{"a#", false},
		{"a+b", false},
		{"a,b", false},
		{"a;b", false},
		{"a?b", false},
		{"a%20", false},
		{"\x7f", false},
		{"\xff", false},
	}
	for _, tc := range tests {
		if got := ValidName(tc.name); got != tc.ok {
			t.Errorf("ValidName(%q) (len %d) = %v, want %v", tc.name, len(tc.name), got, tc.ok)
		}
	}
}

func TestInvalidNameRejected(t *testing.T) {
	r := newReg(t, Config{})
	for _, name := range []string{"", "a b", strings.Repeat("x", 129), "ü"} {
		if _, err := r.Publish(Publication{Topic: name, Data: []byte("1")}); !errors.Is(err, ErrTopicName) {
			t.Errorf("Publish(%q) error = %v, want ErrTopicName", name, err)
		}
		s := new(fakeSub)
		if sub, _, err := r.Subscribe(name, s, nil, s.ready); !errors.Is(err, ErrTopicName) || sub != nil {
			t.Errorf("Subscribe(%q) = %v, %v; want nil, ErrTopicName", name, sub, err)
		}
		if s.readyCalls != 0 {
			t.Errorf("Subscribe(%q) called ready although the name is invalid", name)
		}
	}
	if n, subs := r.Count(); n != 0 || subs != 0 {
		t.Errorf("Count after invalid names = %d topics, %d subs; want 0, 0", n, subs)
	}
	if got := r.Stats.Published.Load(); got != 0 {
		t.Errorf("Stats.Published = %d, want 0", got)
	}
}

func TestSeqPerTopic(t *testing.T) {
	r := newReg(t, Config{})
	want := map[string]uint64{}
	names := []string{"a", "b", "c.d"}
	for i := 0; i < 30; i++ {
		name := names[(i*7)%len(names)]
		want[name]++
		res := mustPublish(t, r, name, `{"i":1}`)
		if res.Seq != want[name] {
			t.Fatalf("publish %d to %q: seq %d, want %d", i, name, res.Seq, want[name])
		}
		if res.Delivered != 0 {
			t.Fatalf("Delivered = %d with no subscribers", res.Delivered)
		}
	}
	if got := r.Stats.Published.Load(); got != 30 {
		t.Errorf("Stats.Published = %d, want 30", got)
	}
}

func TestCountAndTop(t *testing.T) {
	r := newReg(t, Config{Rules: []Rule{{Prefix: "h.", HistorySize: 3, Policy: conn.PolicyConflate}}})
	if got := r.Top(10); len(got) != 0 {
		t.Fatalf("Top on empty registry = %v", got)
	}
	subs := map[string]int{"h.three": 3, "one": 1, "two-a": 2, "two-b": 2}
	var all []*Sub
	for name, n := range subs {
		for i := 0; i < n; i++ {
			sub, _ := mustSubscribe(t, r, name, new(fakeSub), nil)
			all = append(all, sub)
		}
	}
	mustPublish(t, r, "zero", "1") // a topic with no subscribers still counts
	for i := 0; i < 5; i++ {
		mustPublish(t, r, "h.three", "1")
	}
	if n, s := r.Count(); n != 5 || s != 8 {
		t.Fatalf("Count = %d topics, %d subs; want 5, 8", n, s)
	}
	top := r.Top(4)
	want := []TopicInfo{
		{Name: "h.three", Subscribers: 3, Seq: 5, Retained: 3, Policy: "conflate"},
		{Name: "two-a", Subscribers: 2, Policy: "disconnect"},
		{Name: "two-b", Subscribers: 2, Policy: "disconnect"},
		{Name: "one", Subscribers: 1, Policy: "disconnect"},
	}
	if len(top) != len(want) {
		t.Fatalf("Top(4) = %+v, want %+v", top, want)
	}
	for i := range want {
		if top[i].Name == "h.three" && top[i].Rate <= 0 {
			t.Errorf("Top(4)[%d].Rate = %v after 5 publishes, want > 0", i, top[i].Rate)
		}
		top[i].Rate = 0 // time-dependent; see TestRate
		if top[i] != want[i] {
			t.Errorf("Top(4)[%d] = %+v, want %+v", i, top[i], want[i])
		}
	}
	if got := r.Top(100); len(got) != 5 || got[4].Name != "zero" {
		t.Errorf("Top(100) = %+v, want all 5 topics, zero last", got)
	}
	if got := r.Top(0); len(got) != 0 {
		t.Errorf("Top(0) = %+v, want empty", got)
	}
	for _, sub := range all {
		r.Unsubscribe(sub)
	}
	if n, s := r.Count(); n != 5 || s != 0 {
		t.Fatalf("Count after unsubscribing all = %d, %d; want 5, 0", n, s)
	}
}

func TestUnsubscribeTwice(t *testing.T) {
	r := newReg(t, Config{})
	a, b, c := new(fakeSub), new(fakeSub), &fakeSub{deflate: true}
	subA, _ := mustSubscribe(t, r, "t", a, nil)
	mustSubscribe(t, r, "t", b, nil)
	subC, _ := mustSubscribe(t, r, "t", c, nil)
	if subA.Topic().Name() != "t" {
		t.Fatalf("Sub.Topic().Name() = %q", subA.Topic().Name())
	}
	r.Unsubscribe(subA)
	r.Unsubscribe(subA) // must not remove b or c (whoever took a's slot)
	if _, s := r.Count(); s != 2 {
		t.Fatalf("subscriptions after double unsubscribe = %d, want 2", s)
	}
	res := mustPublish(t, r, "t", "1")
	if res.Delivered != 2 || len(a.msgs) != 0 || len(b.msgs) != 1 || len(c.msgs) != 1 {
		t.Fatalf("Delivered %d; a %d b %d c %d; want 2; 0 1 1", res.Delivered, len(a.msgs), len(b.msgs), len(c.msgs))
	}
	r.Unsubscribe(subC)
	r.Unsubscribe(subC)
	if d := subC.t.deflaters; d != 0 {
		t.Fatalf("deflaters = %d after the only deflate subscriber left twice, want 0", d)
	}
}

// Swap-removal must keep every remaining subscription's index right, so any
// removal order leaves exactly the others subscribed.
func TestUnsubscribeManyOrders(t *testing.T) {
	r := newReg(t, Config{})
	const n = 200 // > 64 so the shrink path runs
	fakes := make([]*fakeSub, n)
	subs := make([]*Sub, n)
	for i := range fakes {
		fakes[i] = new(fakeSub)
		subs[i], _ = mustSubscribe(t, r, "many", fakes[i], nil)
	}
	gone := map[int]bool{}
	for k := 0; k < n-10; k++ {
		i := (k*37 + 11) % n
		for gone[i] {
			i = (i + 1) % n
		}
		gone[i] = true
		r.Unsubscribe(subs[i])
	}
	res := mustPublish(t, r, "many", "1")
	if res.Delivered != 10 {
		t.Fatalf("Delivered = %d, want 10", res.Delivered)
	}
	for i, f := range fakes {
		if got, want := len(f.messages()), map[bool]int{true: 0, false: 1}[gone[i]]; got != want {
			t.Errorf("subscriber %d (unsubscribed %v) got %d messages, want %d", i, gone[i], got, want)
		}
	}
}

func TestReclaimIdleTopic(t *testing.T) {
	const ttl = time.Minute
	r := newReg(t, Config{IdleTTL: ttl})
	ms := ttl.Milliseconds()
	t0 := r.now()
	for i := 0; i < 3; i++ {
		mustPublish(t, r, "idle", "1")
	}
	t1 := r.now()
	// lastActive is in [t0, t1].
	if n := r.Reclaim(t0 + ms - 1); n != 0 {
		t.Fatalf("Reclaim before IdleTTL reclaimed %d topics", n)
	}
	if n, _ := r.Count(); n != 1 {
		t.Fatalf("Count = %d before IdleTTL, want 1", n)
	}
	if n := r.Reclaim(t1 + ms); n != 1 {
		t.Fatalf("Reclaim after IdleTTL reclaimed %d topics, want 1", n)
	}
	if n, _ := r.Count(); n != 0 {
		t.Fatalf("Count = %d after reclaim, want 0", n)
	}
	if got := r.Stats.Reclaimed.Load(); got != 1 {
		t.Errorf("Stats.Reclaimed = %d, want 1", got)
	}
	if res := mustPublish(t, r, "idle", "1"); res.Seq != 1 {
		t.Fatalf("first publish after reclaim: seq %d, want 1", res.Seq)
	}
}

func TestReclaimNeverTakesSubscribedTopic(t *testing.T) {
	r := newReg(t, Config{IdleTTL: time.Minute})
	f := new(fakeSub)
	sub, _ := mustSubscribe(t, r, "kept", f, nil)
	mustPublish(t, r, "kept", "1")
	mustPublish(t, r, "other", "1")
	if n := r.Reclaim(1 << 62); n != 1 {
		t.Fatalf("Reclaim far in the future reclaimed %d, want 1 (only the unsubscribed topic)", n)
	}
	if res := mustPublish(t, r, "kept", "1"); res.Seq != 2 || res.Delivered != 1 {
		t.Fatalf("publish to the subscribed topic after Reclaim = %+v, want seq 2, delivered 1", res)
	}
	if got := f.seqs(t); len(got) != 2 || got[1] != 2 {
		t.Fatalf("subscriber seqs %v, want [1 2]", got)
	}
	// After the last unsubscribe the idle clock restarts at the unsubscribe.
	r.Unsubscribe(sub)
	now := r.now()
	if n := r.Reclaim(now + time.Minute.Milliseconds() - 1); n != 0 {
		t.Fatalf("Reclaim within IdleTTL of the unsubscribe reclaimed %d", n)
	}
	if n := r.Reclaim(1 << 62); n != 1 {
		t.Fatalf("Reclaim after the unsubscribe reclaimed %d, want 1", n)
	}
	r.Unsubscribe(sub) // the topic is gone: still safe
	if n, s := r.Count(); n != 0 || s != 0 {
		t.Fatalf("Count = %d, %d; want 0, 0", n, s)
	}
	// A fresh subscription to the reclaimed name gets a fresh topic.
	g := new(fakeSub)
	mustSubscribe(t, r, "kept", g, nil)
	if res := mustPublish(t, r, "kept", "1"); res.Seq != 1 || res.Delivered != 1 {
		t.Fatalf("publish after reclaim = %+v, want seq 1, delivered 1", res)
	}
	if len(f.messages()) != 2 {
		t.Fatalf("the old subscriber received a message after unsubscribing")
	}
}

// IdleTTL is never shorter than the longest history TTL, so retained
// messages are not reclaimed with their topic before they expire.
func TestReclaimWaitsForHistoryTTL(t *testing.T) {
	r := newReg(t, Config{IdleTTL: time.Minute, Rules: []Rule{{Prefix: "h.", HistorySize: 10, HistoryTTL: 5 * time.Minute}}})
	mustPublish(t, r, "h.x", "1")
	mustPublish(t, r, "plain", "1")
	t1 := r.now()
	if n := r.Reclaim(t1 + 2*time.Minute.Milliseconds()); n != 0 {
		t.Fatalf("Reclaim at +2m reclaimed %d, want 0 (IdleTTL raised to the 5m history TTL)", n)
	}
	if n := r.Reclaim(t1 + 5*time.Minute.Milliseconds()); n != 2 {
		t.Fatalf("Reclaim at +5m reclaimed %d, want 2", n)
	}
}

func TestParseRules(t *testing.T) {
	def := Rule{Policy: conn.PolicyConflate, HistorySize: 7, HistoryTTL: time.Second}
	tests := []struct {
		in   string
		want []Rule
	}{
		{"", nil},
		{" ; ;", nil},
		{"p.:history=5", []Rule{{Prefix: "p.", Policy: conn.PolicyConflate, HistorySize: 5, HistoryTTL: time.Second}}},
		{"p.:policy=disconnect", []Rule{{Prefix: "p.", Policy: conn.PolicyDisconnect, HistorySize: 7, HistoryTTL: time.Second}}},
		{"p.:policy=drop-oldest,history=0,ttl=0s", []Rule{{Prefix: "p.", Policy: conn.PolicyDropOldest}}},
		{":ttl=1m30s", []Rule{{Prefix: "", Policy: conn.PolicyConflate, HistorySize: 7, HistoryTTL: 90 * time.Second}}},
		{" prices. : policy=conflate , history=100 , ttl=2h ; lobby.:policy=drop-oldest", []Rule{
			{Prefix: "prices.", Policy: conn.PolicyConflate, HistorySize: 100, HistoryTTL: 2 * time.Hour},
			{Prefix: "lobby.", Policy: conn.PolicyDropOldest, HistorySize: 7, HistoryTTL: time.Second},
		}},
		{"a:history=1;a:history=2", []Rule{
			{Prefix: "a", Policy: conn.PolicyConflate, HistorySize: 1, HistoryTTL: time.Second},
			{Prefix: "a", Policy: conn.PolicyConflate, HistorySize: 2, HistoryTTL: time.Second},
		}},
	}
	for _, tc := range tests {
		got, err := ParseRules(tc.in, def)
		if err != nil {
			t.Errorf("ParseRules(%q): %v", tc.in, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("ParseRules(%q) = %+v, want %+v", tc.in, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("ParseRules(%q)[%d] = %+v, want %+v", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func TestParseRulesErrors(t *testing.T) {
	tests := []struct {
		in, msg string
	}{
		{"p.", "want prefix:key=value"},
		{"p.history=5", "want prefix:key=value"},
		{"p.:", "is not key=value"},
		{"p.:history", "is not key=value"},
		{"p.:history=5,", "is not key=value"},
		{"p.:history=5;q.", "want prefix:key=value"},
		{"p.:policy=close", "policy must be"},
		{"p.:policy=", "policy must be"},
		{"p.:policy=Disconnect", "policy must be"},
		{"p.:history=-1", "history must be"},
		{"p.:history=x", "history must be"},
		{"p.:history=1.5", "history must be"},
		{"p.:history=", "history must be"},
		{"p.:ttl=5", "ttl must be"},
		{"p.:ttl=-1s", "ttl must be"},
		{"p.:ttl=forever", "ttl must be"},
		{"p.:size=5", "unknown key"},
		{"p.:History=5", "unknown key"},
		{"p.:=5", "unknown key"},
	}
	for _, tc := range tests {
		got, err := ParseRules(tc.in, Rule{})
		if err == nil {
			t.Errorf("ParseRules(%q) = %+v, want an error", tc.in, got)
			continue
		}
		if !strings.HasPrefix(err.Error(), "topics: ") || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseRules(%q) error %q, want it to contain %q", tc.in, err, tc.msg)
		}
		if got != nil {
			t.Errorf("ParseRules(%q) returned rules %+v with the error", tc.in, got)
		}
	}
}

func TestLongestPrefixRule(t *testing.T) {
	for _, spec := range []string{
		"p.:history=5;p.x.:history=1;:history=2",
		":history=2;p.x.:history=1;p.:history=5", // order must not matter
	} {
		rules, err := ParseRules(spec, Rule{})
		if err != nil {
			t.Fatal(err)
		}
		r := newReg(t, Config{Rules: rules, Default: Rule{HistorySize: 9}})
		want := map[string]int{
			"p.x.y": 1,
			"p.x.":  1,
			"p.x":   5,
			"p.y":   5,
			"p.":    5,
			"q":     2, // the empty prefix matches everything else
		}
		for name := range want {
			for i := 0; i < 20; i++ {
				mustPublish(t, r, name, "1")
			}
		}
		for _, ti := range r.Top(100) {
			if ti.Retained != want[ti.Name] {
				t.Errorf("rules %q: topic %q retains %d, want %d", spec, ti.Name, ti.Retained, want[ti.Name])
			}
		}
	}
	// Without a catch-all rule, unmatched topics use Default.
	r := newReg(t, Config{Rules: []Rule{{Prefix: "p.", HistorySize: 5}}, Default: Rule{HistorySize: 3, Policy: conn.PolicyDropOldest}})
	for i := 0; i < 10; i++ {
		mustPublish(t, r, "q", "1")
	}
	if ti := r.Top(1)[0]; ti.Retained != 3 || ti.Policy != "drop-oldest" {
		t.Errorf("unmatched topic = %+v, want the Default rule (retained 3, drop-oldest)", ti)
	}
}

// The registry's Policy reaches every message so the write queue can apply it.
func TestPolicyAndKeyOnMessage(t *testing.T) {
	r := newReg(t, Config{Rules: []Rule{{Prefix: "md.", Policy: conn.PolicyConflate}}})
	f := new(fakeSub)
	mustSubscribe(t, r, "md.AAPL", f, nil)
	mustSubscribe(t, r, "other", f, nil)
	for _, p := range []Publication{
		{Topic: "md.AAPL", Data: []byte("1")},
		{Topic: "md.AAPL", Data: []byte("2")},
		{Topic: "md.AAPL", Data: []byte("3"), Key: "k"},
		{Topic: "md.AAPL", Data: []byte("4"), Key: "k"},
		{Topic: "other", Data: []byte("5")},
	} {
		if _, err := r.Publish(p); err != nil {
			t.Fatal(err)
		}
	}
	m := f.messages()
	if m[0].Policy != conn.PolicyConflate || m[4].Policy != conn.PolicyDisconnect {
		t.Errorf("policies %v, %v; want conflate, disconnect", m[0].Policy, m[4].Policy)
	}
	if m[0].Key != m[1].Key || m[2].Key != m[3].Key {
		t.Errorf("same conflation key hashed differently")
	}
	if m[0].Key == m[2].Key || m[0].Key == m[4].Key {
		t.Errorf("different conflation keys collide (topic name vs explicit key, or two topics)")
	}
}

func TestRate(t *testing.T) {
	var r rate
	if v := r.value(0); v != 0 {
		t.Fatalf("empty rate = %v", v)
	}
	// One event every 100 ms for 200 s: the average settles at ≈10/s.
	var now int64
	for i := 0; i < 2000; i++ {
		now = int64(i) * 100
		r.add(now)
	}
	if v := r.value(now); v < 9.9 || v > 10.2 {
		t.Fatalf("steady 10/s stream: rate %v", v)
	}
	before := r
	// τ later with no events it has decayed by 1/e.
	if v, want := r.value(now+10_000), r.value(now)/math.E; math.Abs(v-want) > 0.02 {
		t.Fatalf("rate τ later = %v, want ≈%v", v, want)
	}
	if r != before {
		t.Fatal("value changed the rate")
	}
	if v := r.value(now + 600_000); v != 0 {
		t.Fatalf("rate 10 minutes later = %v, want 0 (rounded)", v)
	}
	// A clock that goes backwards does not grow the value.
	if v := r.value(now - 5000); v != r.value(now) {
		t.Fatalf("value in the past %v != value now %v", v, r.value(now))
	}
}

func TestTopByRate(t *testing.T) {
	r := newReg(t, Config{})
	mustSubscribe(t, r, "crowded", new(fakeSub), nil)
	mustSubscribe(t, r, "crowded", new(fakeSub), nil)
	publishN(t, r, "crowded", 1)
	publishN(t, r, "busy", 50)
	publishN(t, r, "quiet", 5)
	mustSubscribe(t, r, "idle", new(fakeSub), nil)
	names := func(ti []TopicInfo) (out []string) {
		for _, x := range ti {
			out = append(out, x.Name)
		}
		return out
	}
	if got, want := fmt.Sprint(names(r.TopBy(10, true))), "[busy quiet crowded idle]"; got != want {
		t.Errorf("TopBy(rate) = %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(names(r.TopBy(10, false))), "[crowded idle busy quiet]"; got != want {
		t.Errorf("TopBy(subscribers) = %s, want %s", got, want)
	}
	if got := r.TopBy(2, true); len(got) != 2 || got[0].Rate <= got[1].Rate {
		t.Errorf("TopBy(2, rate) = %+v", got)
	}
}
