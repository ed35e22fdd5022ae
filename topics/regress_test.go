package topics

import (
	"testing"
	"time"
)

// Regression tests for bugs found while writing the suite.

// Top slices all[:n] whenever len(all) > n, so a negative n panics with
// "slice bounds out of range [:-1]" even on an empty registry.
func TestRegressionTopNegativePanics(t *testing.T) {
	r := newReg(t, Config{})
	mustPublish(t, r, "a", "1")
	defer func() {
		if v := recover(); v != nil {
			t.Fatalf("Top(-1) panicked: %v", v)
		}
	}()
	if got := r.Top(-1); len(got) != 0 {
		t.Fatalf("Top(-1) = %+v, want empty", got)
	}
}

// ':' is a valid topic-name character, but ParseRules cuts each rule at the
// first ':', so a prefix containing ':' cannot be configured: the rest of
// the prefix is read as a key ("unknown key \"room.:history\"").
func TestRegressionRulePrefixWithColon(t *testing.T) {
	if !ValidName("chat:room.1") {
		t.Fatal("':' is no longer a valid topic character; drop this test")
	}
	rules, err := ParseRules("chat:room.:history=5", Rule{})
	if err != nil {
		t.Fatalf("ParseRules: %v", err)
	}
	if len(rules) != 1 || rules[0].Prefix != "chat:room." || rules[0].HistorySize != 5 {
		t.Fatalf("rules %+v, want prefix \"chat:room.\" with history 5", rules)
	}
}

// ring.expire truncates the TTL to whole milliseconds and treats 0 as "no
// age limit", so a sub-millisecond HistoryTTL (ParseRules accepts
// "ttl=500us") keeps messages forever instead of almost not at all.
func TestRegressionSubMillisecondTTLNeverExpires(t *testing.T) {
	rules, err := ParseRules("h.:history=10,ttl=500us", Rule{})
	if err != nil {
		t.Fatal(err)
	}
	r := newReg(t, Config{Rules: rules})
	publishN(t, r, "h.x", 3)
	advance(r, time.Hour)
	f := new(fakeSub)
	_, rec := mustSubscribe(t, r, "h.x", f, ptr(0))
	if rec.Complete || rec.Replayed != 0 {
		t.Fatalf("an hour after publishing with ttl=500us: %+v, want nothing retained", rec)
	}
}

// noEpoch clears the random epoch so recoveries compare by value.
func noEpoch(r Recovery) Recovery {
	r.Epoch = ""
	return r
}

// A topic reclaimed and made anew has a new epoch; a client recovering with
// the old epoch is told its recovery is incomplete and gets the new
// lifetime's retained messages from the start.
func TestRegressionEpochAfterReclaim(t *testing.T) {
	r := histReg(t, 50, 0)
	publishN(t, r, "e", 10)
	f0 := new(fakeSub)
	sub0, rec0 := mustSubscribe(t, r, "e", f0, nil)
	r.Unsubscribe(sub0)
	advance(r, r.cfg.IdleTTL+time.Second)
	if n := r.Reclaim(r.now()); n != 1 {
		t.Fatalf("reclaimed %d", n)
	}
	publishN(t, r, "e", 5)
	f := new(fakeSub)
	since := uint64(3)
	_, rec, err := r.SubscribeEpoch("e", f, &since, rec0.Epoch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Complete || rec.Epoch == rec0.Epoch {
		t.Fatalf("recovery across a reclaim: %+v (old epoch %s)", rec, rec0.Epoch)
	}
	checkRun(t, "new lifetime", f.seqs(t), 1, 5)
}
