package topics

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/surgepush/surge/conn"
)

// gateSub blocks its first delivery until released, so publishes pile up
// behind the topic lock.
type gateSub struct {
	fakeSub
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *gateSub) wait() {
	g.once.Do(func() {
		close(g.entered)
		<-g.release
	})
}

func (g *gateSub) SendMessages(ms []*conn.Message) int {
	g.wait()
	return g.fakeSub.SendMessages(ms)
}

// inboxLen reports how many publishes wait in the topic's inbox.
func inboxLen(r *Registry, name string) int {
	t := r.getTopic(name)
	t.qmu.Lock()
	defer t.qmu.Unlock()
	return len(t.inbox)
}

// waitFor polls cond until it holds or the test's patience (10 s) runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Publishes that queue up behind a fan-out in progress are fanned out
// together: one SendMessages call per subscriber per batch, seqs consecutive
// in queue order, every Result exact, and more than maxCombine waiting
// publishes are all served.
func TestPublishCombinesBacklog(t *testing.T) {
	for _, shard := range []int{2, 512} { // pooled and inline
		t.Run(fmt.Sprintf("shard%d", shard), func(t *testing.T) {
			r := newReg(t, Config{ShardSize: shard, Workers: 4})
			gate := &gateSub{entered: make(chan struct{}), release: make(chan struct{})}
			sub(t, r, "c", gate)
			fakes := subscribeN(t, r, "c", 9)

			first := make(chan Result, 1)
			go func() {
				res, err := r.Publish(Publication{Topic: "c", Data: []byte(`0`)})
				if err != nil {
					t.Error(err)
				}
				first <- res
			}()
			<-gate.entered // the first publish holds the topic lock

			const waiting = maxCombine + 36 // two batches: 64 and 36
			results := make([]Result, waiting)
			var wg sync.WaitGroup
			for i := range waiting {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := r.Publish(Publication{Topic: "c", Data: []byte(fmt.Sprint(i + 1))})
					if err != nil {
						t.Error(err)
					}
					results[i] = res
				}()
			}
			waitFor(t, "all publishes queued", func() bool { return inboxLen(r, "c") == waiting })
			close(gate.release)
			wg.Wait()

			if res := <-first; res.Seq != 1 || res.Delivered != 10 {
				t.Fatalf("first publish = %+v, want seq 1 delivered 10", res)
			}
			seen := make(map[uint64]bool)
			for i, res := range results {
				if res.Seq < 2 || res.Seq > waiting+1 || seen[res.Seq] || res.Delivered != 10 {
					t.Fatalf("publish %d = %+v: want a unique seq in [2,%d], delivered 10", i, res, waiting+1)
				}
				seen[res.Seq] = true
			}
			for i, f := range append([]*fakeSub{&gate.fakeSub}, fakes...) {
				checkRun(t, fmt.Sprintf("subscriber %d", i), f.seqs(t), 1, waiting+1)
				f.mu.Lock()
				batches := f.batches
				f.mu.Unlock()
				// The first publish alone, then the backlog in batches of
				// maxCombine and the rest.
				if batches != 3 {
					t.Errorf("subscriber %d: %d SendMessages calls, want 3 (1, then batches of %d and %d)", i, batches, maxCombine, waiting-maxCombine)
				}
			}
			if got := r.Stats.Published.Load(); got != waiting+1 {
				t.Errorf("Stats.Published = %d, want %d", got, waiting+1)
			}
			if got := r.Stats.Deliveries.Load(); got != 10*(waiting+1) {
				t.Errorf("Stats.Deliveries = %d, want %d", got, 10*(waiting+1))
			}
		})
	}
}

// A subscriber that takes only part of a batch (its queue refused the rest)
// is counted only for the messages it took.
func TestPublishCombinedPartialDelivery(t *testing.T) {
	r := newReg(t, Config{ShardSize: 512, Workers: 2})
	gate := &gateSub{entered: make(chan struct{}), release: make(chan struct{})}
	sub(t, r, "p", gate)
	short := &shortSub{take: 2}
	sub(t, r, "p", short)

	go func() { _, _ = r.Publish(Publication{Topic: "p", Data: []byte(`0`)}) }()
	<-gate.entered
	results := make([]Result, 4)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _ = r.Publish(Publication{Topic: "p", Data: []byte(`1`)})
		}()
	}
	waitFor(t, "publishes queued", func() bool { return inboxLen(r, "p") == 4 })
	close(gate.release)
	wg.Wait()
	for _, res := range results {
		// Batch seqs 2..5: the short subscriber took seqs 2 and 3 only.
		want := 1
		if res.Seq <= 3 {
			want = 2
		}
		if res.Delivered != want {
			t.Errorf("seq %d delivered %d, want %d", res.Seq, res.Delivered, want)
		}
	}
}

// shortSub takes the first take messages of each batch.
type shortSub struct{ take int }

func (s *shortSub) SendMessages(ms []*conn.Message) int {
	return min(s.take, len(ms))
}
func (s *shortSub) Deflate() bool { return false }

func sub(t *testing.T, r *Registry, name string, s Subscriber) {
	t.Helper()
	if _, _, err := r.Subscribe(name, s, nil, nil); err != nil {
		t.Fatal(err)
	}
}
