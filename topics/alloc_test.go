//go:build !race

package topics

import "testing"

// Encode once: a publish allocates a handful of objects (message, frame,
// one task per pool shard), never one per delivery.
func TestPublishAllocs(t *testing.T) {
	for _, tc := range []struct {
		subs int
		max  float64
	}{
		{10, 3},                      // inline: message, frame, seq digits
		{10_000, 10_000/512 + 1 + 8}, // + one task per pooled shard
	} {
		r := newReg(t, Config{})
		for i := 0; i < tc.subs; i++ {
			if _, _, err := r.Subscribe("a", &sinkSub{}, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		p := Publication{Topic: "a", Data: benchTick}
		got := testing.AllocsPerRun(200, func() {
			if _, err := r.Publish(p); err != nil {
				t.Fatal(err)
			}
		})
		if got > tc.max {
			t.Errorf("%d subscribers: %.1f allocs per publish, want ≤ %.0f", tc.subs, got, tc.max)
		}
		t.Logf("%d subscribers: %.1f allocs per publish", tc.subs, got)
	}
}
