package topics

import (
	"fmt"
	"sort"
	"sync"
	"testing"
)

func subscribeN(t testing.TB, r *Registry, topic string, n int) []*fakeSub {
	t.Helper()
	fakes := make([]*fakeSub, n)
	for i := range fakes {
		fakes[i] = new(fakeSub)
		mustSubscribe(t, r, topic, fakes[i], nil)
	}
	return fakes
}

// 100 subscribers with ShardSize 4: 25 shards, 24 of them on the pool.
func TestFanoutPoolEveryMessageInOrder(t *testing.T) {
	r := newReg(t, Config{ShardSize: 4, Workers: 4})
	fakes := subscribeN(t, r, "fan", 100)
	const n = 200
	for i := 1; i <= n; i++ {
		res := mustPublish(t, r, "fan", fmt.Sprintf(`{"i":%d}`, i))
		if res.Seq != uint64(i) || res.Delivered != 100 {
			t.Fatalf("publish %d = %+v, want seq %d delivered 100", i, res, i)
		}
	}
	for i, f := range fakes {
		checkRun(t, fmt.Sprintf("subscriber %d", i), f.seqs(t), 1, n)
	}
	if got := r.Stats.Deliveries.Load(); got != 100*n {
		t.Errorf("Stats.Deliveries = %d, want %d", got, 100*n)
	}
}

// Publishes racing on one topic are serialised: every subscriber sees the
// same strictly increasing seq with no gap.
func TestFanoutConcurrentPublishers(t *testing.T) {
	for _, shard := range []int{4, 512} { // pooled and inline
		t.Run(fmt.Sprintf("shard%d", shard), func(t *testing.T) {
			r := newReg(t, Config{ShardSize: shard, Workers: 4})
			fakes := subscribeN(t, r, "race", 100)
			const publishers, each = 8, 100
			seqs := make([][]uint64, publishers)
			var wg sync.WaitGroup
			for p := 0; p < publishers; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						res, err := r.Publish(Publication{Topic: "race", Data: []byte(`"x"`)})
						if err != nil || res.Delivered != 100 {
							t.Errorf("Publish = %+v, %v", res, err)
							return
						}
						seqs[p] = append(seqs[p], res.Seq)
					}
				}()
			}
			wg.Wait()
			var all []uint64
			for _, s := range seqs {
				for i := 1; i < len(s); i++ {
					if s[i] <= s[i-1] {
						t.Fatalf("one publisher saw seq %d after %d", s[i], s[i-1])
					}
				}
				all = append(all, s...)
			}
			sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
			checkRun(t, "seqs returned to publishers", all, 1, publishers*each)
			for i, f := range fakes {
				checkRun(t, fmt.Sprintf("subscriber %d", i), f.seqs(t), 1, publishers*each)
			}
		})
	}
}

func TestFanoutDeliveredCountsAccepted(t *testing.T) {
	for _, tc := range []struct {
		subs, shard int
	}{{10, 512}, {100, 4}, {100, 7}, {5, 4}, {4, 4}, {9, 4}} {
		t.Run(fmt.Sprintf("%dsubs_shard%d", tc.subs, tc.shard), func(t *testing.T) {
			r := newReg(t, Config{ShardSize: tc.shard})
			fakes := subscribeN(t, r, "d", tc.subs)
			want := 0
			for i, f := range fakes {
				if i%3 == 1 {
					f.refuse.Store(true)
				} else {
					want++
				}
			}
			res := mustPublish(t, r, "d", "1")
			if res.Delivered != want {
				t.Fatalf("Delivered = %d, want %d", res.Delivered, want)
			}
			if got := r.Stats.Deliveries.Load(); got != int64(want) {
				t.Fatalf("Stats.Deliveries = %d, want %d", got, want)
			}
			for _, f := range fakes {
				f.refuse.Store(true)
			}
			if res := mustPublish(t, r, "d", "1"); res.Delivered != 0 || res.Seq != 2 {
				t.Fatalf("all refusing: %+v, want seq 2 delivered 0", res)
			}
			for i, f := range fakes {
				if got, want := len(f.messages()), map[bool]int{true: 0, false: 1}[i%3 == 1]; got != want {
					t.Errorf("subscriber %d recorded %d messages, want %d", i, got, want)
				}
			}
		})
	}
}

// Encode once: every subscriber gets the same *Message and the same frame
// bytes, whether served inline or by a pool shard.
func TestFanoutSharesFrame(t *testing.T) {
	r := newReg(t, Config{ShardSize: 4, DeflateThreshold: 1})
	fakes := subscribeN(t, r, "share", 50)
	fakes = append(fakes, &fakeSub{deflate: true})
	mustSubscribe(t, r, "share", fakes[50], nil)
	mustPublish(t, r, "share", `{"v":"shared bytes, shared bytes, shared bytes"}`)
	first := fakes[0].messages()[0]
	if first.Deflated == nil {
		t.Fatal("no compressed frame although a subscriber deflates")
	}
	for i, f := range fakes {
		msgs := f.messages()
		if len(msgs) != 1 {
			t.Fatalf("subscriber %d got %d messages", i, len(msgs))
		}
		m := msgs[0]
		if m != first {
			t.Errorf("subscriber %d got a different *Message", i)
		}
		if &m.Frame[0] != &first.Frame[0] || len(m.Frame) != len(first.Frame) {
			t.Errorf("subscriber %d got a copy of the frame", i)
		}
		if &m.Deflated[0] != &first.Deflated[0] {
			t.Errorf("subscriber %d got a copy of the compressed frame", i)
		}
	}
	if got := r.Stats.DeliveryBytes.Load(); got != int64(51*len(first.Frame)) {
		t.Errorf("Stats.DeliveryBytes = %d, want %d (51 × plain frame)", got, 51*len(first.Frame))
	}
}

// A publish to one topic never reaches another topic's subscribers.
func TestFanoutTopicsIsolated(t *testing.T) {
	r := newReg(t, Config{ShardSize: 2})
	a := subscribeN(t, r, "a", 5)
	b := subscribeN(t, r, "b", 5)
	mustPublish(t, r, "a", "1")
	mustPublish(t, r, "a", "2")
	mustPublish(t, r, "b", "3")
	for i := range a {
		checkRun(t, "a", a[i].seqs(t), 1, 2)
		checkRun(t, "b", b[i].seqs(t), 1, 1)
	}
}

// After Close the pool is released; a large fan-out still completes inline.
func TestFanoutAfterClose(t *testing.T) {
	r, err := New(Config{ShardSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	fakes := subscribeN(t, r, "c", 9)
	r.Close(false)
	if res := mustPublish(t, r, "c", "1"); res.Delivered != 9 {
		t.Fatalf("Delivered after Close = %d, want 9", res.Delivered)
	}
	for _, f := range fakes {
		checkRun(t, "after close", f.seqs(t), 1, 1)
	}
}
