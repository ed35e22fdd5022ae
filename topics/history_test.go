package topics

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surgepush/surge/conn"
)

func histReg(t *testing.T, size int, ttl time.Duration) *Registry {
	return newReg(t, Config{ShardSize: 4, Default: Rule{HistorySize: size, HistoryTTL: ttl}})
}

func publishN(t testing.TB, r *Registry, topic string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		mustPublish(t, r, topic, fmt.Sprintf(`{"n":%d}`, i))
	}
}

// checkReady fails unless ready ran exactly once, before any message.
func checkReady(t *testing.T, f *fakeSub) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readyCalls != 1 || f.readyAt != 0 {
		t.Fatalf("ready called %d times, after %d messages; want once, before any", f.readyCalls, f.readyAt)
	}
}

func TestSinceReplaysThenLive(t *testing.T) {
	for _, since := range []uint64{0, 1, 17, 29} {
		r := histReg(t, 50, 0)
		publishN(t, r, "h", 30)
		f := new(fakeSub)
		_, rec := mustSubscribe(t, r, "h", f, ptr(since))
		want := Recovery{Requested: true, Complete: true, Replayed: int(30 - since), Seq: 30, Oldest: 1}
		if noEpoch(rec) != want {
			t.Fatalf("since %d: Recovery %+v, want %+v", since, rec, want)
		}
		ready := f.rec
		ready.Replayed = rec.Replayed
		if ready != rec {
			t.Fatalf("ready got %+v, Subscribe returned %+v", f.rec, rec)
		}
		checkReady(t, f)
		publishN(t, r, "h", 5)
		checkRun(t, fmt.Sprintf("since %d", since), f.seqs(t), since+1, 35)
		if got := r.Stats.Replayed.Load(); got != int64(30-since) {
			t.Errorf("Stats.Replayed = %d, want %d", got, 30-since)
		}
	}
}

func TestSinceOlderThanRing(t *testing.T) {
	r := histReg(t, 50, 0)
	publishN(t, r, "h", 100)
	f := new(fakeSub)
	_, rec := mustSubscribe(t, r, "h", f, ptr(10))
	want := Recovery{Requested: true, Complete: false, Replayed: 50, Seq: 100, Oldest: 51}
	if noEpoch(rec) != want {
		t.Fatalf("Recovery %+v, want %+v", rec, want)
	}
	checkReady(t, f)
	publishN(t, r, "h", 1)
	checkRun(t, "since 10, ring 51..100", f.seqs(t), 51, 101)

	// since+1 == oldest is still complete; since+2 == oldest is not.
	for _, tc := range []struct {
		since    uint64
		complete bool
	}{{51, true}, {60, true}, {50, false}, {0, false}} {
		g := new(fakeSub)
		_, rec := mustSubscribe(t, r, "h", g, ptr(tc.since))
		if rec.Complete != tc.complete || rec.Oldest != 52 {
			t.Errorf("since %d with ring 52..101: %+v, want Complete %v, Oldest 52", tc.since, rec, tc.complete)
		}
		checkRun(t, fmt.Sprintf("since %d", tc.since), g.seqs(t), max(tc.since+1, 52), 101)
	}
}

func TestSinceAheadOfTopic(t *testing.T) {
	r := histReg(t, 50, 0)
	publishN(t, r, "h", 5)
	f := new(fakeSub)
	_, rec := mustSubscribe(t, r, "h", f, ptr(9))
	if want := (Recovery{Requested: true, Seq: 5, Oldest: 1}); noEpoch(rec) != want {
		t.Fatalf("Recovery %+v, want %+v", rec, want)
	}
	checkReady(t, f)
	publishN(t, r, "h", 2)
	checkRun(t, "since ahead", f.seqs(t), 6, 7)
	// A topic that does not exist yet (or was reclaimed) is at seq 0.
	g := new(fakeSub)
	_, rec = mustSubscribe(t, r, "fresh", g, ptr(3))
	if want := (Recovery{Requested: true}); noEpoch(rec) != want {
		t.Fatalf("since 3 on a new topic: %+v, want %+v", rec, want)
	}
}

func TestSinceCurrent(t *testing.T) {
	r := histReg(t, 50, 0)
	publishN(t, r, "h", 70)
	f := new(fakeSub)
	_, rec := mustSubscribe(t, r, "h", f, ptr(70))
	if want := (Recovery{Requested: true, Complete: true, Seq: 70, Oldest: 21}); noEpoch(rec) != want {
		t.Fatalf("Recovery %+v, want %+v", rec, want)
	}
	if len(f.messages()) != 0 {
		t.Fatal("since == current replayed messages")
	}
	// since 0 on a new topic is current too.
	g := new(fakeSub)
	if _, rec := mustSubscribe(t, r, "new", g, ptr(0)); !rec.Complete || rec.Replayed != 0 {
		t.Fatalf("since 0 on a new topic: %+v", rec)
	}
}

func TestSinceWithoutHistory(t *testing.T) {
	r := histReg(t, 0, 0)
	publishN(t, r, "h", 3)
	f := new(fakeSub)
	_, rec := mustSubscribe(t, r, "h", f, ptr(1))
	if want := (Recovery{Requested: true, Seq: 3}); noEpoch(rec) != want {
		t.Fatalf("Recovery %+v, want %+v", rec, want)
	}
	_, rec = mustSubscribe(t, r, "h", new(fakeSub), ptr(3))
	if !rec.Complete {
		t.Fatalf("since == seq without history: %+v, want Complete", rec)
	}
	// No since: not requested, no replay, ready still called once.
	g := new(fakeSub)
	_, rec = mustSubscribe(t, r, "h", g, nil)
	if want := (Recovery{Seq: 3}); noEpoch(rec) != want {
		t.Fatalf("no since: %+v, want %+v", rec, want)
	}
	checkReady(t, g)
}

// A replayed message the subscriber refuses is not counted.
func TestReplayRefused(t *testing.T) {
	r := histReg(t, 50, 0)
	publishN(t, r, "h", 10)
	f := new(fakeSub)
	f.refuse.Store(true)
	_, rec := mustSubscribe(t, r, "h", f, ptr(0))
	if rec.Replayed != 0 || !rec.Complete {
		t.Fatalf("Recovery %+v, want Complete with 0 replayed", rec)
	}
}

// Replayed messages are the retained *Message values, frames intact.
func TestReplaySharesRetainedMessage(t *testing.T) {
	r := histReg(t, 50, 0)
	live := new(fakeSub)
	mustSubscribe(t, r, "h", live, nil)
	publishN(t, r, "h", 3)
	late := new(fakeSub)
	mustSubscribe(t, r, "h", late, ptr(0))
	a, b := live.messages(), late.messages()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("replayed message %d is not the one delivered live", i)
		}
	}
}

func TestHistoryTTL(t *testing.T) {
	r := histReg(t, 50, time.Second)
	publishN(t, r, "h", 10) // seq 1..10 at ≈0
	advance(r, 2*time.Second)
	publishN(t, r, "h", 5) // seq 11..15 at ≈2s; 1..10 expire on push
	f := new(fakeSub)
	_, rec := mustSubscribe(t, r, "h", f, ptr(0))
	if want := (Recovery{Requested: true, Complete: false, Replayed: 5, Seq: 15, Oldest: 11}); noEpoch(rec) != want {
		t.Fatalf("Recovery %+v, want %+v", rec, want)
	}
	checkRun(t, "after ttl", f.seqs(t), 11, 15)
	if ti := r.Top(1)[0]; ti.Retained != 5 {
		t.Fatalf("retained %d, want 5", ti.Retained)
	}

	advance(r, 2*time.Second) // everything expires; Subscribe expires it
	g := new(fakeSub)
	_, rec = mustSubscribe(t, r, "h", g, ptr(12))
	if want := (Recovery{Requested: true, Complete: false, Seq: 15}); noEpoch(rec) != want {
		t.Fatalf("all expired: Recovery %+v, want %+v", rec, want)
	}
	if len(g.messages()) != 0 {
		t.Fatal("expired messages replayed")
	}
	_, rec = mustSubscribe(t, r, "h", new(fakeSub), ptr(15))
	if !rec.Complete || rec.Oldest != 0 {
		t.Fatalf("since == seq after expiry: %+v, want Complete, Oldest 0", rec)
	}
}

func TestRingDirect(t *testing.T) {
	msg := func(i int) *conn.Message { return &conn.Message{Key: uint64(i)} }
	collect := func(r *ring) (seqs []uint64) {
		r.each(func(e *entry) {
			if e.msg.Key != e.seq {
				t.Fatalf("entry seq %d holds message %d", e.seq, e.msg.Key)
			}
			seqs = append(seqs, e.seq)
		})
		return seqs
	}
	var r ring
	r.init(4)
	if r.oldest() != 0 || r.len() != 0 || r.buf != nil {
		t.Fatal("new ring not empty or allocated early")
	}
	for i := 1; i <= 3; i++ {
		r.push(uint64(i), msg(i), int64(i*100))
	}
	checkRun(t, "partial", collect(&r), 1, 3)
	for i := 4; i <= 10; i++ {
		r.push(uint64(i), msg(i), int64(i*100))
	}
	checkRun(t, "wrapped", collect(&r), 7, 10)
	if r.oldest() != 7 || r.len() != 4 {
		t.Fatalf("oldest %d len %d, want 7, 4", r.oldest(), r.len())
	}
	r.expire(10_000, time.Duration(0)) // no age limit
	checkRun(t, "ttl 0", collect(&r), 7, 10)
	r.expire(800+250, 250*time.Millisecond) // 700 expires (> 250ms old), 800 is exactly 250ms: kept
	checkRun(t, "expire", collect(&r), 8, 10)
	r.push(11, msg(11), 1100) // wraps over the freed slot
	checkRun(t, "push after expire", collect(&r), 8, 11)
	r.expire(1100, 100*time.Millisecond) // 1000 is exactly 100ms old: kept
	checkRun(t, "expire more", collect(&r), 10, 11)
	r.expire(5000, time.Millisecond)
	if r.len() != 0 || r.oldest() != 0 || len(collect(&r)) != 0 {
		t.Fatal("fully expired ring not empty")
	}
	for _, e := range r.buf {
		if e.msg != nil {
			t.Fatal("expired entry still references its message")
		}
	}
	r.push(12, msg(12), 6000)
	checkRun(t, "reuse", collect(&r), 12, 12)

	var zero ring
	zero.init(0)
	zero.push(1, msg(1), 0)
	if zero.len() != 0 || zero.oldest() != 0 || zero.buf != nil {
		t.Fatal("zero-capacity ring retained a message")
	}
	zero.expire(100, time.Millisecond)
}

// One goroutine publishes continuously while another subscribes with since
// = a seq it saw earlier: the subscriber gets every seq from the replay
// start to the end exactly once, in order.
func TestSinceSeamUnderConcurrentPublish(t *testing.T) {
	const total = 5000
	for round := 0; round < 8; round++ {
		for _, size := range []int{50, total} {
			t.Run(fmt.Sprintf("round%d_ring%d", round, size), func(t *testing.T) {
				r := histReg(t, size, 0)
				live := subscribeN(t, r, "seam", 9) // pooled fan-out at ShardSize 4
				at := 1 + rand.IntN(total-100)
				back := uint64(rand.IntN(40))
				var (
					last    atomic.Uint64
					reached = make(chan struct{})
					wg      sync.WaitGroup
					late    = new(fakeSub)
					rec     Recovery
					since   uint64
				)
				wg.Add(2)
				go func() {
					defer wg.Done()
					for i := 1; i <= total; i++ {
						res, err := r.Publish(Publication{Topic: "seam", Data: []byte(`{"p":1}`)})
						if err != nil {
							t.Error(err)
							return
						}
						last.Store(res.Seq)
						if i == at {
							close(reached)
						}
					}
				}()
				go func() {
					defer wg.Done()
					<-reached
					seen := last.Load()
					since = seen - min(back, seen)
					var err error
					_, rec, err = r.Subscribe("seam", late, &since, late.ready)
					if err != nil {
						t.Error(err)
					}
				}()
				wg.Wait()
				checkReady(t, late)
				if !rec.Requested || rec.Seq < since {
					t.Fatalf("Recovery %+v for since %d", rec, since)
				}
				from := since + 1
				if !rec.Complete {
					if size == total {
						t.Fatalf("ring holds every message but Recovery %+v is incomplete (since %d)", rec, since)
					}
					if rec.Oldest <= from {
						t.Fatalf("incomplete Recovery %+v although since+1 = %d is retained", rec, from)
					}
					from = rec.Oldest
				}
				if want := int(rec.Seq - from + 1); rec.Replayed != want {
					t.Fatalf("Replayed %d, want %d (%+v, since %d)", rec.Replayed, want, rec, since)
				}
				checkRun(t, fmt.Sprintf("late subscriber (since %d, %+v)", since, rec), late.seqs(t), from, total)
				for _, f := range live {
					checkRun(t, "live subscriber", f.seqs(t), 1, total)
				}
			})
		}
	}
}
