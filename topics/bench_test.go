package topics

import (
	"fmt"
	"strings"
	"testing"
)

func benchFanout(b *testing.B, subs int, deflateEvery int, data []byte) {
	r := newReg(b, Config{})
	sinks := make([]*sinkSub, subs)
	for i := range sinks {
		sinks[i] = &sinkSub{deflate: deflateEvery > 0 && i%deflateEvery == 0}
		if _, _, err := r.Subscribe("bench", sinks[i], nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	p := Publication{Topic: "bench", Data: data}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := r.Publish(p)
		if err != nil || res.Delivered != subs {
			b.Fatalf("Publish = %+v, %v", res, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(subs), "ns/delivery")
	if sinks[subs-1].n != b.N {
		b.Fatalf("last subscriber got %d of %d", sinks[subs-1].n, b.N)
	}
}

var benchTick = []byte(`{"sym":"AAPL","bid":189.52,"ask":189.55,"ts":1700000000123}`)

// One publish to 10,000 subscribers (20 shards of 512 on the pool).
func BenchmarkFanout10k(b *testing.B) { benchFanout(b, 10_000, 0, benchTick) }

// Half the subscribers deflate; the 1 KiB payload is compressed once per publish.
func BenchmarkFanout10kDeflate(b *testing.B) {
	data := []byte(`{"text":"` + strings.Repeat("lorem ipsum ", 84) + `"}`)
	if len(data) < 1000 || len(data) > 1100 {
		b.Fatalf("payload %d bytes, want ≈1 KiB", len(data))
	}
	benchFanout(b, 10_000, 2, data)
}

// A small topic served inline by the publisher.
func BenchmarkPublishInline(b *testing.B) { benchFanout(b, 10, 0, benchTick) }

func BenchmarkEncodeMessage(b *testing.B) {
	for _, n := range []int{len(benchTick), 1024, 64 << 10} {
		data := []byte(`"` + strings.Repeat("x", n-2) + `"`)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for i := 0; i < b.N; i++ {
				EncodeMessage("prices.AAPL", uint64(i), data)
			}
		})
	}
}

func BenchmarkEncodeBinary(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		EncodeBinary("prices.AAPL", uint64(i), benchTick)
	}
}

// Eight publishes queued behind the topic lock, fanned out together to
// 10,000 subscribers: each subscriber gets one SendMessages call per batch.
func BenchmarkFanout10kCombined8(b *testing.B) {
	const subs, batch = 10_000, 8
	r := newReg(b, Config{})
	sinks := make([]*sinkSub, subs)
	for i := range sinks {
		sinks[i] = new(sinkSub)
		if _, _, err := r.Subscribe("bench", sinks[i], nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	reqs := make([]*pubReq, batch)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var t *Topic
		for k := range reqs {
			reqs[k] = &pubReq{p: Publication{Topic: "bench", Data: benchTick}}
			t = r.enqueue(reqs[k])
		}
		t.mu.Lock()
		for !reqs[batch-1].done {
			r.combineLocked(t)
		}
		t.mu.Unlock()
		if reqs[0].res.Delivered != subs {
			b.Fatalf("delivered %d, want %d", reqs[0].res.Delivered, subs)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(subs*batch), "ns/delivery")
	if sinks[subs-1].n != b.N*batch {
		b.Fatalf("last subscriber got %d of %d", sinks[subs-1].n, b.N*batch)
	}
}
