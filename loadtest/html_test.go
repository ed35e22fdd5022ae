package loadtest

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// sampleFanoutReport is a fanout report with latencies spread over two
// decades and a five-second timeline.
func sampleFanoutReport(t *testing.T) *FanoutReport {
	t.Helper()
	h := hdrhistogram.New(1, maxLatencyUS, 3)
	for i := range 10_000 {
		us := int64(300 + i%700) // 0.3–1 ms
		if i%100 == 0 {
			us = 25_000 + int64(i) // a slow tail
		}
		if err := h.RecordValue(us); err != nil {
			t.Fatal(err)
		}
	}
	l := summarize(h)
	p99 := 0.9
	rep := &FanoutReport{
		Scenario:  "fanout",
		StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		DurationS: 7.5,
		RunID:     "0badcafe",
		Config: FanoutReportConfig{
			URL: "ws://127.0.0.1:8080/ws", Subs: 500, Topics: 1, Rate: 20, Size: 100,
			DurationS: 5, DrainS: 2, Publish: publishHTTP, PublishConns: 4, PublishWindow: 64, Messages: 100,
			SourceIPs: []string{},
		},
		Published: 100, Expected: 50_000, Delivered: 49_990, Lost: 10, SubscribersWithLoss: 1,
		LatencyCount: l.Count, P50: l.P50, P90: l.P90, P99: l.P99, P999: l.P999, Max: l.Max, Mean: l.Mean,
		DeliveriesPerSec: 9998,
		Latency:          distribution(h),
		Subscribers:      SubscriberCounts{Requested: 500, Connected: 500},
		Warnings:         []string{"publishing stopped: <b>test</b>"},
	}
	for s := 1; s <= 5; s++ {
		rep.Timeline = append(rep.Timeline, TimelinePoint{TS: float64(s), IntervalS: 1, Phase: "publish", Published: 20, Delivered: 10_000, P99: &p99})
	}
	return rep
}

func renderHTML(t *testing.T, r htmlReport) (string, *html.Node) {
	t.Helper()
	var b bytes.Buffer
	if err := writeHTML(&b, r); err != nil {
		t.Fatal(err)
	}
	doc, err := html.Parse(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatalf("output does not parse as HTML: %v", err)
	}
	return b.String(), doc
}

// walk calls fn for every element below n.
func walk(n *html.Node, fn func(*html.Node)) {
	for c := range n.Descendants() {
		if c.Type == html.ElementNode {
			fn(c)
		}
	}
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func text(n *html.Node) string {
	var b strings.Builder
	for c := range n.Descendants() {
		if c.Type == html.TextNode {
			b.WriteString(c.Data)
		}
	}
	return b.String()
}

// svgByID returns the svg elements of doc by id.
func svgByID(doc *html.Node) map[string]*html.Node {
	m := map[string]*html.Node{}
	walk(doc, func(n *html.Node) {
		if n.DataAtom == atom.Svg {
			id, _ := attr(n, "id")
			m[id] = n
		}
	})
	return m
}

// checkSelfContained fails when the page could load or run anything: a
// script, an external URL in any attribute, a stylesheet link, or a CSS
// url()/@import.
func checkSelfContained(t *testing.T, page string, doc *html.Node) {
	t.Helper()
	walk(doc, func(n *html.Node) {
		if n.DataAtom == atom.Script || n.DataAtom == atom.Iframe || n.DataAtom == atom.Object || n.DataAtom == atom.Embed {
			t.Errorf("page has a <%s> element", n.Data)
		}
		for _, a := range n.Attr {
			v := strings.ToLower(strings.TrimSpace(a.Val))
			if strings.HasPrefix(a.Key, "on") {
				t.Errorf("<%s> has an event handler %s", n.Data, a.Key)
			}
			switch a.Key {
			case "src", "href", "xlink:href", "action", "poster", "srcset":
				if !strings.HasPrefix(v, "data:") && !strings.HasPrefix(v, "#") {
					t.Errorf("<%s %s=%q> points outside the page", n.Data, a.Key, a.Val)
				}
			}
		}
	})
	// Text may mention URLs (the target, the stats endpoint); attributes
	// and styles may not, but for the SVG namespace.
	walk(doc, func(n *html.Node) {
		for _, a := range n.Attr {
			v := strings.ToLower(a.Val)
			if a.Key != "xmlns" && (strings.Contains(v, "http://") || strings.Contains(v, "https://") || strings.Contains(v, "javascript:")) {
				t.Errorf("<%s %s=%q> holds a URL", n.Data, a.Key, a.Val)
			}
		}
		if n.DataAtom == atom.Style {
			css := strings.ToLower(text(n))
			for _, bad := range []string{"url(", "@import", "http"} {
				if strings.Contains(css, bad) {
					t.Errorf("<style> contains %q", bad)
				}
			}
		}
	})
	if strings.Contains(strings.ToLower(page), "<script") {
		t.Error("page contains <script")
	}
}

// rowsOf returns the summary tables' rows (key → value) and which are
// marked bad.
func rowsOf(doc *html.Node) (rows map[string]string, bad map[string]bool) {
	rows, bad = map[string]string{}, map[string]bool{}
	walk(doc, func(n *html.Node) {
		if n.DataAtom != atom.Tr {
			return
		}
		var k, v string
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			switch c.DataAtom {
			case atom.Th:
				k = text(c)
			case atom.Td:
				v = text(c)
			}
		}
		rows[k] = v
		cl, _ := attr(n, "class")
		bad[k] = cl == "bad"
	})
	return rows, bad
}

func TestFanoutHTMLStructure(t *testing.T) {
	rep := sampleFanoutReport(t)
	page, doc := renderHTML(t, fanoutHTML(rep))
	checkSelfContained(t, page, doc)

	svgs := svgByID(doc)
	for _, id := range []string{"latency-histogram", "latency-plot", "throughput-plot", "p99-plot"} {
		svg, ok := svgs[id]
		if !ok {
			t.Errorf("no svg#%s", id)
			continue
		}
		var title string
		walk(svg, func(n *html.Node) {
			if n.Data == "title" && n.Parent == svg {
				title = text(n)
			}
		})
		if title == "" {
			t.Errorf("svg#%s has no <title>", id)
		}
		if strings.Contains(text(svg), "no data") {
			t.Errorf("svg#%s says no data:\n%s", id, text(svg))
		}
		if w, _ := attr(svg, "width"); w == "" || w == "0" {
			t.Errorf("svg#%s has width %q", id, w)
		}
	}
	// One bar per non-empty bucket, one dot per percentile.
	var bars, dots int
	walk(svgs["latency-histogram"], func(n *html.Node) {
		if c, _ := attr(n, "class"); c == "bar" {
			bars++
		}
	})
	walk(svgs["latency-plot"], func(n *html.Node) {
		if n.Data == "circle" {
			dots++
		}
	})
	nonEmpty := 0
	for _, b := range rep.Latency.Buckets {
		if b.Count > 0 {
			nonEmpty++
		}
	}
	if bars != nonEmpty || bars < 5 {
		t.Errorf("histogram has %d bars, want %d (non-empty buckets, at least 5)", bars, nonEmpty)
	}
	if dots != len(distributionPercentiles) {
		t.Errorf("percentile plot has %d points, want %d", dots, len(distributionPercentiles))
	}
	var lines int
	walk(svgs["throughput-plot"], func(n *html.Node) {
		if n.Data == "polyline" {
			lines++
		}
	})
	if lines != 2 {
		t.Errorf("throughput plot has %d lines, want 2 (deliveries/s, publishes/s)", lines)
	}
	if !strings.Contains(text(svgs["throughput-plot"]), "10k") {
		t.Errorf("throughput plot's axis lacks 10k deliveries/s:\n%s", text(svgs["throughput-plot"]))
	}

	// The summary table carries the key results.
	rows, bad := rowsOf(doc)
	want := map[string]string{
		"delivered": "49990",
		"lost":      "10 (1 subscribers; 0 on subscribers the server closed)",
		"p50":       fmtMs(rep.P50),
		"p90":       fmtMs(rep.P90),
		"p99":       fmtMs(rep.P99),
		"p99.9":     fmtMs(rep.P999),
		"max":       fmtMs(rep.Max),
		"samples":   "10000",
	}
	for k, v := range want {
		if rows[k] != v {
			t.Errorf("row %q = %q, want %q", k, rows[k], v)
		}
	}
	if !bad["lost"] || bad["delivered"] {
		t.Errorf("lost should be marked bad, delivered not: %v", bad)
	}
	if rep.P999 < 25 || !strings.Contains(page, fmtMs(rep.Max)) {
		t.Errorf("the slow tail is missing: p99.9 %v, max %v", rep.P999, rep.Max)
	}
	// Text from the report is escaped, never markup.
	if strings.Contains(page, "<b>test</b>") || !strings.Contains(page, "&lt;b&gt;test&lt;/b&gt;") {
		t.Error("a warning's markup was not escaped")
	}
}

func TestIdleHTMLStructure(t *testing.T) {
	h := hdrhistogram.New(1, 60_000_000, 3)
	for i := range 1000 {
		_ = h.RecordValue(int64(200 + i))
	}
	rep := &IdleReport{
		Scenario: "idle", StartedAt: time.Now(), DurationS: 3,
		Config:           IdleReportConfig{URL: "ws://127.0.0.1:1/ws", Conns: 1000, Rate: 1000, Topics: 10, TopicPrefix: "idle.", HoldS: 1},
		Connected:        1000,
		ConnectLatencyMs: summarize(h),
		ConnectLatency:   distribution(h),
		Timeline: []IdleTimelinePoint{
			{TS: 0, Phase: "connect"},
			{TS: 1, Phase: "hold", Connected: 1000, Open: 1000},
			{TS: 2, Phase: "hold", Connected: 1000, Open: 1000},
			{TS: 2.4, Phase: "done", Connected: 1000},
		},
	}
	page, doc := renderHTML(t, idleHTML(rep))
	checkSelfContained(t, page, doc)
	svgs := svgByID(doc)
	for _, id := range []string{"latency-histogram", "latency-plot", "throughput-plot"} {
		if svgs[id] == nil {
			t.Fatalf("no svg#%s", id)
		}
		if strings.Contains(text(svgs[id]), "no data") {
			t.Errorf("svg#%s says no data", id)
		}
	}
	var lines int
	walk(svgs["throughput-plot"], func(n *html.Node) {
		if n.Data == "polyline" {
			lines++
		}
	})
	if lines != 3 {
		t.Errorf("connections plot has %d lines, want 3 (connected, open, connects/s)", lines)
	}
	for _, s := range []string{"1000 of 1000", "connect latency", fmtMs(rep.ConnectLatencyMs.P99)} {
		if !strings.Contains(page, s) {
			t.Errorf("page lacks %q", s)
		}
	}
}

// An empty report (nothing connected, nothing recorded) still renders every
// plot, each with a "no data" note.
func TestHTMLNoData(t *testing.T) {
	for name, r := range map[string]htmlReport{
		"fanout": fanoutHTML(&FanoutReport{Config: FanoutReportConfig{URL: "ws://127.0.0.1:1/ws"}}),
		"idle":   idleHTML(&IdleReport{Config: IdleReportConfig{URL: "ws://127.0.0.1:1/ws", Conns: 3}, Failed: 3, FailedByCause: map[string]int64{"refused": 3}}),
		"zero":   {},
	} {
		t.Run(name, func(t *testing.T) {
			page, doc := renderHTML(t, r)
			checkSelfContained(t, page, doc)
			svgs := svgByID(doc)
			for _, id := range []string{"latency-histogram", "latency-plot"} {
				if svgs[id] == nil {
					t.Fatalf("no svg#%s", id)
				}
			}
			for id, svg := range svgs {
				if name != "zero" || strings.HasPrefix(id, "latency") {
					if !strings.Contains(text(svg), "no data") {
						t.Errorf("svg#%s lacks a no-data note: %q", id, text(svg))
					}
				}
				walk(svg, func(n *html.Node) {
					if n.Data == "polyline" || n.Data == "circle" {
						t.Errorf("svg#%s draws a <%s> without data", id, n.Data)
					}
				})
			}
			if strings.Contains(page, "NaN") || strings.Contains(page, "Inf") {
				t.Error("page contains NaN or Inf")
			}
		})
	}
}

func TestDistribution(t *testing.T) {
	h := hdrhistogram.New(1, maxLatencyUS, 3)
	if d := distribution(h); len(d.Percentiles) != 0 || len(d.Buckets) != 0 || d.Buckets == nil {
		t.Errorf("empty histogram: %+v, want empty non-nil slices", d)
	}
	var total int64
	for v := int64(100); v <= 100_000; v += 7 {
		_ = h.RecordValue(v)
		total++
	}
	d := distribution(h)
	if len(d.Buckets) != distributionBuckets {
		t.Errorf("%d buckets, want %d", len(d.Buckets), distributionBuckets)
	}
	var sum int64
	for i, b := range d.Buckets {
		sum += b.Count
		if b.ToMs <= b.FromMs {
			t.Errorf("bucket %d: [%v, %v)", i, b.FromMs, b.ToMs)
		}
		if i > 0 && math.Abs(b.FromMs-d.Buckets[i-1].ToMs) > 1e-9 {
			t.Errorf("bucket %d does not start where %d ends", i, i-1)
		}
	}
	if sum != total {
		t.Errorf("buckets hold %d samples, want %d", sum, total)
	}
	if d.Buckets[0].FromMs > 0.1 || d.Buckets[len(d.Buckets)-1].ToMs < 100 {
		t.Errorf("buckets span [%v, %v) ms, want to cover [0.1, 100]", d.Buckets[0].FromMs, d.Buckets[len(d.Buckets)-1].ToMs)
	}
	if len(d.Percentiles) != len(distributionPercentiles) {
		t.Fatalf("%d percentiles", len(d.Percentiles))
	}
	for i := 1; i < len(d.Percentiles); i++ {
		if d.Percentiles[i].Ms < d.Percentiles[i-1].Ms {
			t.Errorf("percentiles not monotonic: %+v", d.Percentiles)
		}
	}
	if p := d.Percentiles[2]; p.P != 75 || math.Abs(p.Ms-75) > 0.2 {
		t.Errorf("p75 = %+v, want ~75 ms", p)
	}

	// A narrow range gets one-microsecond buckets.
	n := hdrhistogram.New(1, maxLatencyUS, 3)
	for _, v := range []int64{500, 501, 501, 503} {
		_ = n.RecordValue(v)
	}
	d = distribution(n)
	if len(d.Buckets) != 4 || d.Buckets[1].Count != 2 || d.Buckets[2].Count != 0 {
		t.Errorf("narrow range: %+v", d.Buckets)
	}
}

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct {
		top     float64
		wantMax float64
	}{{0, 1}, {1, 1}, {7, 8}, {9998, 10_000}, {0.37, 0.4}, {123, 125}} {
		top, ticks := niceTicks(tc.top)
		if top != tc.wantMax || ticks[0] != 0 || ticks[len(ticks)-1] != top || len(ticks) > 7 {
			t.Errorf("niceTicks(%v) = %v, %v; want top %v", tc.top, top, ticks, tc.wantMax)
		}
	}
}

// --html writes a page with the plots next to the other outputs, for both
// scenarios.
func TestMainWritesHTML(t *testing.T) {
	t.Run("fanout", func(t *testing.T) {
		t.Parallel()
		s := newPubsubServer(t, nil)
		page := filepath.Join(t.TempDir(), "fanout.html")
		var stdout, stderr bytes.Buffer
		code := Main([]string{
			"fanout", "--url", s.wsURL(), "--subs", "10", "--topics", "2", "--rate", "40",
			"--duration", "1500ms", "--html", page,
		}, &stdout, &stderr)
		if code != exitOK {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
		}
		rows := checkPageFile(t, page)
		if rows["delivered"] != "300" || rows["lost"] != "0" || rows["expected"] != "300" {
			t.Errorf("summary rows: delivered %q lost %q expected %q, want 300, 0, 300 (60 messages, 30 per topic, 5 subscribers each)", rows["delivered"], rows["lost"], rows["expected"])
		}
		if strings.Contains(stderr.String(), "\x1b[") {
			t.Errorf("progress bars drawn on a buffer:\n%q", stderr.String())
		}
	})
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		s := newContractServer(t, "", false)
		page := filepath.Join(t.TempDir(), "idle.html")
		var stdout, stderr bytes.Buffer
		code := Main([]string{"idle", "--url", s.wsURL(), "--conns", "20", "--hold", "1200ms", "--quiet", "--html", page}, &stdout, &stderr)
		if code != exitOK {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
		}
		if strings.Contains(stderr.String(), "connected=") {
			t.Errorf("--quiet still printed progress:\n%s", stderr.String())
		}
		if rows := checkPageFile(t, page); rows["connected"] != "20 of 20" {
			t.Errorf("connected row %q, want 20 of 20", rows["connected"])
		}
	})
	t.Run("unwritable", func(t *testing.T) {
		s := newContractServer(t, "", false)
		var stdout, stderr bytes.Buffer
		page := filepath.Join(t.TempDir(), "no", "such", "dir.html")
		if code := Main([]string{"idle", "--url", s.wsURL(), "--conns", "2", "--hold", "0", "--quiet", "--html", page}, &stdout, &stderr); code != exitFail {
			t.Errorf("exit %d, want %d\nstderr:\n%s", code, exitFail, stderr.String())
		}
	})
}

// checkPageFile parses the page at path, checks that it is self-contained
// and that its plots have data, and returns its summary rows.
func checkPageFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := html.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	checkSelfContained(t, string(b), doc)
	svgs := svgByID(doc)
	for _, id := range []string{"latency-histogram", "latency-plot", "throughput-plot"} {
		if svgs[id] == nil {
			t.Errorf("no svg#%s", id)
		} else if strings.Contains(text(svgs[id]), "no data") {
			t.Errorf("svg#%s has no data: %s", id, text(svgs[id]))
		}
	}
	rows, _ := rowsOf(doc)
	return rows
}

func TestStormHTMLStructure(t *testing.T) {
	h := hdrhistogram.New(1, 60_000_000, 3)
	for i := range 500 {
		_ = h.RecordValue(int64(1000 + 100*i))
	}
	all := 51.0
	rep := &StormReport{
		Scenario: "storm", StartedAt: time.Now(), DurationS: 4,
		Config: StormReportConfig{URL: "ws://127.0.0.1:1/ws", Conns: 500, Topics: 5, Rate: 100,
			Drop: "abrupt", Reconnect: "jitter", JitterWindowS: 1, BackoffMinS: 0.1, BackoffMaxS: 5, MaxAttempts: 100, Since: true},
		Back: 500, ReconnectMs: summarize(h), Reconnect: distribution(h), TimeToAllBackMs: &all,
		BackTimeline: []StormBackPoint{{TMs: 0}, {TMs: 50, Back: 480}, {TMs: 100, Back: 500}},
		Expected:     1000, Delivered: 999, Lost: 1, Missed: 1, ClientsWithMissed: 1,
	}
	page, doc := renderHTML(t, stormHTML(rep))
	checkSelfContained(t, page, doc)
	svgs := svgByID(doc)
	for _, id := range []string{"latency-histogram", "latency-plot", "throughput-plot"} {
		if svgs[id] == nil {
			t.Fatalf("no svg#%s", id)
		}
		if strings.Contains(text(svgs[id]), "no data") {
			t.Errorf("svg#%s says no data", id)
		}
	}
	rows, bad := rowsOf(doc)
	if rows["back"] != "500 of 500" || bad["back"] {
		t.Errorf("back row %q (bad %v), want 500 of 500, not bad", rows["back"], bad["back"])
	}
	if !bad["lost"] || !bad["missed in the gap"] {
		t.Errorf("with since, a lost message must be marked bad: lost %v, missed %v", bad["lost"], bad["missed in the gap"])
	}
	if rows["time until all back"] != fmtMs(all)+" ms" {
		t.Errorf("time until all back %q", rows["time until all back"])
	}

	rep.BackTimeline, rep.Back, rep.TimeToAllBackMs = nil, 0, nil
	rep.Reconnect = LatencyDistribution{}
	_, doc = renderHTML(t, stormHTML(rep))
	if !strings.Contains(text(svgByID(doc)["throughput-plot"]), "no client was dropped") {
		t.Error("an empty back timeline does not say so")
	}
}
