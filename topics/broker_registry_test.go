package topics

import (
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Registries joined by a Broker: the registry's side of the contract (seq
// from the broker, attach and detach, since-recovery beyond the local
// ring), run against every Broker kind.

func newClusterReg(t *testing.T, b Broker, hist int) *Registry {
	t.Helper()
	r, err := New(Config{Default: Rule{HistorySize: hist}, Broker: b, BrokerTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(false) })
	return r
}

// frameSeqs returns the seq of every message f holds.
func frameSeqs(t testing.TB, f *fakeSub) []uint64 {
	t.Helper()
	var out []uint64
	for _, m := range f.messages() {
		out = append(out, seqOf(t, m.Frame))
	}
	return out
}

func waitFrames(t testing.TB, f *fakeSub, want []uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := frameSeqs(t, f)
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("got seqs %v, want %v", got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func forEachKind(t *testing.T, hist int, f func(t *testing.T, node func() Broker)) {
	for _, k := range brokerKinds() {
		t.Run(k.name, func(t *testing.T) { f(t, k.cluster(t, hist)) })
	}
}

func TestClusterPublishReachesOtherRegistry(t *testing.T) {
	forEachKind(t, 16, func(t *testing.T, node func() Broker) {
		r1, r2 := newClusterReg(t, node(), 16), newClusterReg(t, node(), 16)
		s1, s2 := &fakeSub{}, &fakeSub{}
		mustSubscribe(t, r1, "a", s1, nil)
		_, rec := mustSubscribe(t, r2, "a", s2, nil)
		if rec.Seq != 0 {
			t.Fatalf("fresh topic: recovery %+v", rec)
		}
		for i := 1; i <= 10; i++ {
			r := r1
			if i%2 == 0 {
				r = r2
			}
			if res := mustPublish(t, r, "a", strconv.Itoa(i)); res.Seq != uint64(i) {
				t.Fatalf("publish %d: seq %d", i, res.Seq)
			}
		}
		waitFrames(t, s1, seqRange(1, 10))
		waitFrames(t, s2, seqRange(1, 10))
		// A late subscriber learns the cluster's seq.
		s3 := &fakeSub{}
		if _, rec := mustSubscribe(t, r2, "a", s3, nil); rec.Seq != 10 {
			t.Fatalf("late subscriber: recovery %+v", rec)
		}
	})
}

// A client that reconnects to another node with since gets what it missed
// from the broker, though that node never had the messages, then live
// ones, with no gap and no duplicate at the seam.
func TestClusterSinceRecoversFromBroker(t *testing.T) {
	forEachKind(t, 8, func(t *testing.T, node func() Broker) {
		r1, r2 := newClusterReg(t, node(), 8), newClusterReg(t, node(), 8)
		for i := 1; i <= 5; i++ {
			mustPublish(t, r1, "b", strconv.Itoa(i))
		}
		s := &fakeSub{}
		_, rec := mustSubscribe(t, r2, "b", s, ptr(2))
		if !rec.Complete || rec.Replayed != 3 || rec.Seq != 5 || rec.Oldest != 3 {
			t.Fatalf("recovery %+v", rec)
		}
		mustPublish(t, r1, "b", "6")
		waitFrames(t, s, seqRange(3, 6))
		if n := r2.Stats.BrokerRecovered.Load(); n != 3 {
			t.Fatalf("recovered %d from the broker, want 3", n)
		}
		// The ring is warm now: the next recovery is local.
		s2 := &fakeSub{}
		if _, rec := mustSubscribe(t, r2, "b", s2, ptr(1)); !rec.Complete || rec.Replayed != 5 {
			t.Fatalf("second recovery %+v", rec)
		}
		waitFrames(t, s2, seqRange(2, 6))
		if n := r2.Stats.BrokerRecovered.Load(); n != 4 {
			t.Fatalf("recovered %d from the broker in all, want 4 (only seq 2 was missing)", n)
		}
	})
}

// Beyond what the broker retains, recovery is reported incomplete and what
// is retained is replayed.
func TestClusterSinceTooOld(t *testing.T) {
	forEachKind(t, 4, func(t *testing.T, node func() Broker) {
		r1, r2 := newClusterReg(t, node(), 4), newClusterReg(t, node(), 4)
		for i := 1; i <= 10; i++ {
			mustPublish(t, r1, "c", strconv.Itoa(i))
		}
		s := &fakeSub{}
		_, rec := mustSubscribe(t, r2, "c", s, ptr(1))
		if rec.Complete || rec.Seq != 10 || rec.Oldest != 7 {
			t.Fatalf("recovery %+v", rec)
		}
		waitFrames(t, s, seqRange(7, 10))
	})
}

// The node is subscribed at the broker exactly while it has local
// subscribers.
func TestClusterAttachDetach(t *testing.T) {
	forEachKind(t, 4, func(t *testing.T, node func() Broker) {
		b2 := node()
		r1, r2 := newClusterReg(t, node(), 4), newClusterReg(t, b2, 4)
		topicsAt := func() int { return b2.(BrokerStatser).BrokerStats().Topics }
		s1, s2 := &fakeSub{}, &fakeSub{}
		sub1, _ := mustSubscribe(t, r2, "d", s1, nil)
		sub2, _ := mustSubscribe(t, r2, "d", s2, nil)
		if n := topicsAt(); n != 1 {
			t.Fatalf("subscribed to %d topics at the broker, want 1", n)
		}
		mustPublish(t, r1, "d", "1")
		waitFrames(t, s1, []uint64{1})
		r2.Unsubscribe(sub1)
		if n := topicsAt(); n != 1 {
			t.Fatalf("after one of two left: %d topics at the broker", n)
		}
		r2.Unsubscribe(sub2)
		r2.Unsubscribe(sub2)
		if n := topicsAt(); n != 0 {
			t.Fatalf("after the last left: %d topics at the broker", n)
		}
		mustPublish(t, r1, "d", "2")
		s3 := &fakeSub{}
		if _, rec := mustSubscribe(t, r2, "d", s3, nil); rec.Seq != 2 {
			t.Fatalf("resubscribe: recovery %+v", rec)
		}
		mustPublish(t, r1, "d", "3")
		waitFrames(t, s3, []uint64{3})
		waitFrames(t, s2, []uint64{1})
	})
}

// Subscribers come and go on one node (which so attaches and detaches the
// topic at the broker over and over) while another publishes: every
// subscription sees a gap-free, duplicate-free run from the seq its
// subscribe reported, and a steady subscriber on a third node sees
// everything.
func TestClusterChurnKeepsOrder(t *testing.T) {
	forEachKind(t, 64, func(t *testing.T, node func() Broker) {
		r1, r2, r3 := newClusterReg(t, node(), 64), newClusterReg(t, node(), 64), newClusterReg(t, node(), 64)
		steady := &fakeSub{}
		mustSubscribe(t, r3, "e", steady, nil)
		const total = 200
		var (
			wg   sync.WaitGroup
			done atomic.Bool
		)
		type run struct {
			f    *fakeSub
			from uint64
		}
		runs := make([][]run, 4)
		for g := range runs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !done.Load() && len(runs[g]) < 2000 {
					f := &fakeSub{}
					sub, rec, err := r2.Subscribe("e", f, nil, nil)
					if err != nil {
						t.Error(err)
						return
					}
					r2.Unsubscribe(sub)
					runs[g] = append(runs[g], run{f, rec.Seq})
				}
			}()
		}
		for i := 1; i <= total; i++ {
			mustPublish(t, r1, "e", strconv.Itoa(i))
		}
		waitFrames(t, steady, seqRange(1, total))
		done.Store(true)
		wg.Wait()
		n := 0
		for _, r := range slices.Concat(runs...) {
			got := frameSeqs(t, r.f)
			if len(got) > 0 && !slices.Equal(got, seqRange(r.from+1, r.from+uint64(len(got)))) {
				t.Fatalf("a subscription from seq %d got %v", r.from, got)
			}
			n++
		}
		t.Logf("%d short subscriptions", n)
	})
}
