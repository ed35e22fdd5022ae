package loadtest

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// TestMergedHistogramExact: histograms shipped by children (encoded,
// decoded, merged) give the same percentiles as one histogram fed every
// value.
func TestMergedHistogramExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	single := hdrhistogram.New(1, maxLatencyUS, 3)
	parts := []*hdrhistogram.Histogram{
		hdrhistogram.New(1, maxLatencyUS, 3),
		hdrhistogram.New(1, maxLatencyUS, 3),
		hdrhistogram.New(1, maxLatencyUS, 3),
	}
	for i := range 30000 {
		// A skewed mix: mostly sub-millisecond, a tail up to seconds, and
		// each part with its own distribution.
		v := int64(rng.ExpFloat64()*float64(200*(i%3+1))) + 1
		if i%97 == 0 {
			v = rng.Int64N(5_000_000) + 1
		}
		_ = single.RecordValue(v)
		_ = parts[i%3].RecordValue(v)
	}
	merged := hdrhistogram.New(1, maxLatencyUS, 3)
	for _, p := range parts {
		enc, err := encodeHist(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := mergeEncoded(merged, enc); err != nil {
			t.Fatal(err)
		}
	}
	if merged.TotalCount() != single.TotalCount() || merged.Min() != single.Min() || merged.Max() != single.Max() ||
		merged.Mean() != single.Mean() {
		t.Errorf("merged count %d min %d max %d mean %v; single %d %d %d %v",
			merged.TotalCount(), merged.Min(), merged.Max(), merged.Mean(),
			single.TotalCount(), single.Min(), single.Max(), single.Mean())
	}
	for _, q := range []float64{1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100} {
		if m, s := merged.ValueAtPercentile(q), single.ValueAtPercentile(q); m != s {
			t.Errorf("p%v: merged %d, single %d", q, m, s)
		}
	}
	if summarize(merged) != summarize(single) {
		t.Errorf("summaries differ: %+v vs %+v", summarize(merged), summarize(single))
	}
	// An empty histogram ships as "" and merges as nothing.
	if enc, err := encodeHist(hdrhistogram.New(1, maxLatencyUS, 3)); err != nil || enc != "" {
		t.Errorf("empty histogram encodes as %q, %v", enc, err)
	}
	if err := mergeEncoded(merged, "not base64!"); err == nil {
		t.Error("a corrupt histogram merged without error")
	}
}

func TestShards(t *testing.T) {
	ips := func(n int) []netip.Addr {
		var out []netip.Addr
		a := netip.MustParseAddr("127.0.0.2")
		for range n {
			out = append(out, a)
			a = a.Next()
		}
		return out
	}
	sh := shards(3, 10, 1000, ips(7), "run")
	var total int
	var rate float64
	var seen []netip.Addr
	for i, s := range sh {
		if s.Index != i || s.Procs != 3 || s.First != total || s.RunID != "run" {
			t.Errorf("shard %d = %+v", i, s)
		}
		total += s.Count
		rate += s.Rate
		seen = append(seen, s.SourceIPs...)
	}
	if counts := []int{sh[0].Count, sh[1].Count, sh[2].Count}; !slices.Equal(counts, []int{4, 3, 3}) || total != 10 {
		t.Errorf("counts %v, want [4 3 3]", counts)
	}
	if rate < 999.999 || rate > 1000.001 {
		t.Errorf("rates sum to %v, want 1000", rate)
	}
	slices.SortFunc(seen, netip.Addr.Compare)
	if !slices.Equal(seen, ips(7)) {
		t.Errorf("source addresses %v: each must go to exactly one child", seen)
	}
	// Fewer addresses than children: shared, one each.
	sh = shards(4, 8, 100, ips(2), "")
	for i, s := range sh {
		if len(s.SourceIPs) != 1 || s.SourceIPs[0] != ips(2)[i%2] {
			t.Errorf("shard %d sources %v", i, s.SourceIPs)
		}
	}
	if sh = shards(2, 8, 100, nil, ""); sh[0].SourceIPs != nil || sh[1].SourceIPs != nil {
		t.Errorf("no source addresses given, shards got %v %v", sh[0].SourceIPs, sh[1].SourceIPs)
	}
}

func TestResolveProcs(t *testing.T) {
	if n, err := resolveProcs(3, 100); n != 3 || err != nil {
		t.Errorf("explicit 3 = %d, %v", n, err)
	}
	if n, err := resolveProcs(5, 2); n != 2 || err != nil {
		t.Errorf("5 procs for 2 conns = %d, %v; want 2", n, err)
	}
	if _, err := resolveProcs(-1, 100); err == nil {
		t.Error("negative procs accepted")
	}
	limit, ok := raiseOpenFileLimit()
	if !ok || limit <= procsFDReserve {
		t.Skipf("open-file limit %d unknown or too small", limit)
	}
	per := int(limit - procsFDReserve)
	for _, tc := range []struct{ conns, want int }{{1, 1}, {per, 1}, {per + 1, 2}, {3 * per, 3}, {3*per + 1, 4}} {
		if n, err := resolveProcs(0, tc.conns); n != tc.want || err != nil {
			t.Errorf("auto for %d conns (limit %d) = %d, %v; want %d", tc.conns, limit, n, err, tc.want)
		}
	}
}

// TestAckedSpecRoundTrip: the acknowledged set a child rebuilds from the
// parent's spec is the parent's, bit for bit.
func TestAckedSpecRoundTrip(t *testing.T) {
	cfg := FanoutConfig{URL: "ws://127.0.0.1:1/ws", Subs: 10, Topics: 3, Rate: 100, Duration: 3 * 1e9}.withDefaults()
	parent := newPubTracker(cfg)
	for k := range 300 {
		m := pubMsg{topic: k % 3, n: uint64(k/3) + 1}
		if k == 7 || k == 100 || (m.topic == 2 && m.n > 90) {
			continue // failed publishes, and the tail of topic 2
		}
		parent.ok(m, uint64(k+1), 0)
	}
	spec := parent.ackedSpec()
	if spec[2].Upto != 90 || spec[0].Upto != 100 || !slices.Equal(spec[1].Missing, []uint64{3, 34}) {
		t.Errorf("spec = %+v", spec)
	}
	child := newPubTracker(cfg)
	child.setAcked(spec)
	for i := range parent.acked {
		if !slices.Equal(parent.acked[i], child.acked[i]) || parent.ackedCount[i] != child.ackedCount[i] {
			t.Errorf("topic %d: child %v (%d), parent %v (%d)", i, child.acked[i], child.ackedCount[i], parent.acked[i], parent.ackedCount[i])
		}
	}
}
