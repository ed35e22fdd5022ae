package topics

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Reclaim racing with Subscribe and Publish: a subscription is never made
// on a reclaimed topic (a publish right after Subscribe always reaches it),
// and a topic is never reclaimed while subscribed.
func TestReclaimRacesSubscribe(t *testing.T) {
	r := newReg(t, Config{IdleTTL: time.Millisecond})
	var (
		stop atomic.Bool
		wg   sync.WaitGroup
	)
	wg.Add(3)
	go func() { // reclaim everything idle, continuously
		defer wg.Done()
		for !stop.Load() {
			r.Reclaim(1 << 62)
		}
	}()
	go func() { // publishes to a topic nobody holds
		defer wg.Done()
		for !stop.Load() {
			if res, err := r.Publish(Publication{Topic: "churn", Data: []byte("1")}); err != nil || res.Seq == 0 {
				t.Errorf("Publish = %+v, %v", res, err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		defer stop.Store(true)
		for i := 0; i < 2000; i++ {
			f := new(fakeSub)
			sub, _, err := r.Subscribe("churn", f, nil, nil)
			if err != nil {
				t.Error(err)
				return
			}
			res, err := r.Publish(Publication{Topic: "churn", Data: []byte("2")})
			if err != nil || res.Delivered < 1 {
				t.Errorf("publish right after Subscribe = %+v, %v: the subscription was lost to Reclaim", res, err)
				return
			}
			want := EncodeMessage("churn", res.Seq, []byte("2"))
			got := false
			for _, m := range f.messages() {
				got = got || bytes.Equal(m.Frame, want)
			}
			if !got {
				t.Errorf("subscriber did not get its seq %d", res.Seq)
				return
			}
			r.Unsubscribe(sub)
		}
	}()
	wg.Wait()
}

// Run reclaims idle topics by itself and Close(true) stops it.
func TestRunReclaimsAndStops(t *testing.T) {
	r, err := New(Config{IdleTTL: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go r.Run()
	mustPublish(t, r, "gone", "1")
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for r.Stats.Reclaimed.Load() == 0 {
		select {
		case <-deadline:
			t.Fatal("Run did not reclaim an idle topic within 10s")
		case <-tick.C:
		}
	}
	r.Close(true) // returns only once Run has returned
	if n, _ := r.Count(); n != 0 {
		t.Fatalf("Count = %d after Run reclaimed", n)
	}
}
