package loadtest

import (
	"bytes"
	"cmp"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// htmlReport is what one HTML report page shows. Every scenario fills one
// from its report (fanoutHTML, idleHTML) and writeHTML draws it; nothing in
// it is specific to a scenario.
type htmlReport struct {
	Title    string    // page heading, e.g. "surge load fanout"
	Subtitle string    // one line under it: target, start time
	Sections []htmlKVs // summary tables
	Warnings []string

	// Latency is drawn twice: as a histogram (svg#latency-histogram) and as
	// a percentile plot (svg#latency-plot). LatencyWhat names it, e.g.
	// "end-to-end latency".
	LatencyWhat string
	Latency     LatencyDistribution

	// Timelines are drawn one plot each; the first should have the id
	// "throughput-plot".
	Timelines []htmlTimeline
}

// htmlKVs is one summary table.
type htmlKVs struct {
	Title string
	Rows  []htmlKV
}

// htmlKV is one row of a summary table; Bad marks a value that failed the
// run (it is highlighted).
type htmlKV struct {
	Key, Value string
	Bad        bool
}

// htmlTimeline is a plot of values over the run's time. Series with Right
// set are drawn against a second y axis (Y2Label), for quantities of another
// size.
type htmlTimeline struct {
	ID, Title       string
	XLabel          string
	YLabel, Y2Label string
	Series          []htmlSeries
	// Empty is the note shown when no series has a point.
	Empty string
}

// htmlSeries is one line of a timeline plot.
type htmlSeries struct {
	Name   string
	Right  bool
	Points []htmlPoint
}

type htmlPoint struct{ X, Y float64 }

// writeHTMLFile writes r as an HTML page to path.
func writeHTMLFile(path string, r htmlReport) error {
	var b bytes.Buffer
	if err := writeHTML(&b, r); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// writeHTML writes r as one self-contained HTML page: inline CSS and inline
// SVG plots, no script, and nothing the page loads from anywhere (its
// Content-Security-Policy forbids it).
func writeHTML(w io.Writer, r htmlReport) error {
	v := htmlView{
		Title:     r.Title,
		Subtitle:  r.Subtitle,
		Sections:  r.Sections,
		Warnings:  r.Warnings,
		Generated: time.Now().UTC().Format(time.RFC3339),
	}
	what := cmp.Or(r.LatencyWhat, "latency")
	v.Charts = append(v.Charts,
		histogramChart("latency-histogram", "Histogram of "+what, r.Latency),
		percentileChart("latency-plot", capitalize(what)+" by percentile", r.Latency))
	for _, tl := range r.Timelines {
		v.Charts = append(v.Charts, timelineChart(tl))
	}
	return htmlPage.Execute(w, v)
}

// htmlView is what the page template sees.
type htmlView struct {
	Title, Subtitle string
	Generated       string
	Sections        []htmlKVs
	Warnings        []string
	Charts          []svgChart
}

// Plot geometry, in SVG user units (the SVG scales to the page's width).
const (
	chartW      = 760
	chartH      = 300
	chartLeft   = 70
	chartRight  = 24
	chartRight2 = 70 // with a second y axis
	chartTop    = 30 // room for the legend
	chartBottom = 46
)

// svgChart is one plot, with every coordinate computed.
type svgChart struct {
	ID, Title, Desc string
	W, H            int
	NoData          string    // set: the plot shows this note instead of data
	X, Y, PW, PH    float64   // the plot area
	MidX, MidY      float64   // its centre
	XTicks          []svgTick // X is the position
	YTicks          []svgTick // Y is the position
	Y2Ticks         []svgTick
	XLabel          string
	YLabel, Y2Label string
	Bars            []svgRect
	Lines           []svgLine
	Dots            []svgDot
	Legend          []svgLegend
}

type svgTick struct {
	X, Y  float64
	Label string
}

type svgRect struct {
	X, Y, W, H float64
	Tip        string
}

type svgLine struct {
	Points string
	Class  string
}

type svgDot struct {
	X, Y  float64
	Class string
	Tip   string
}

type svgLegend struct {
	X, Y  float64
	Class string
	Name  string
}

func newChart(id, title string, right2 bool) svgChart {
	right := float64(chartRight)
	if right2 {
		right = chartRight2
	}
	c := svgChart{
		ID: id, Title: title, W: chartW, H: chartH,
		X: chartLeft, Y: chartTop,
		PW: chartW - chartLeft - right, PH: chartH - chartTop - chartBottom,
	}
	c.MidX, c.MidY = c.X+c.PW/2, c.Y+c.PH/2
	return c
}

// histogramChart draws d's buckets as bars over a logarithmic latency axis.
func histogramChart(id, title string, d LatencyDistribution) svgChart {
	c := newChart(id, title, false)
	c.XLabel, c.YLabel = "latency (ms, log scale)", "samples"
	var total, top int64
	for _, b := range d.Buckets {
		total += b.Count
		top = max(top, b.Count)
	}
	if total == 0 {
		c.NoData = "no data: no latency was recorded"
		return c
	}
	lo, hi := d.Buckets[0].FromMs, d.Buckets[len(d.Buckets)-1].ToMs
	c.Desc = fmt.Sprintf("%d samples from %s to %s ms in %d buckets", total, fmtMs(lo), fmtMs(hi), len(d.Buckets))
	xs := logScale(lo, hi, c.X, c.X+c.PW)
	ymax, yticks := niceTicks(float64(top))
	ys := linScale(0, ymax, c.Y+c.PH, c.Y)
	for _, t := range yticks {
		c.YTicks = append(c.YTicks, svgTick{Y: ys(t), Label: fmtNum(t)})
	}
	for _, t := range logTicks(lo, hi) {
		c.XTicks = append(c.XTicks, svgTick{X: xs(t), Label: strconv.FormatFloat(t, 'g', 3, 64)})
	}
	for _, b := range d.Buckets {
		if b.Count == 0 {
			continue
		}
		x0, x1 := xs(b.FromMs), xs(b.ToMs)
		y := min(ys(float64(b.Count)), c.Y+c.PH-1.5) // a single sample stays visible
		c.Bars = append(c.Bars, svgRect{
			X: x0, Y: y, W: max(x1-x0-0.5, 0.5), H: c.Y + c.PH - y,
			Tip: fmt.Sprintf("%s–%s ms: %d samples", fmtMs(b.FromMs), fmtMs(b.ToMs), b.Count),
		})
	}
	return c
}

// percentilePos is where percentile p sits on the percentile axis: the
// number of nines, log10(100/(100−p)); 100 (the maximum) sits at
// percentileMaxPos.
func percentilePos(p float64) float64 {
	if p >= 100 {
		return percentileMaxPos
	}
	return min(math.Log10(100/(100-p)), percentileMaxPos)
}

const percentileMaxPos = 5 // 99.999 and above

// percentileChart draws d's percentiles over an axis that gives each nine
// the same width, as HDR histogram plots do.
func percentileChart(id, title string, d LatencyDistribution) svgChart {
	c := newChart(id, title, false)
	c.XLabel, c.YLabel = "percentile", "latency (ms)"
	if len(d.Percentiles) == 0 {
		c.NoData = "no data: no latency was recorded"
		return c
	}
	var top float64
	var desc []string
	for _, p := range d.Percentiles {
		top = max(top, p.Ms)
		desc = append(desc, fmt.Sprintf("%s %s ms", percentileName(p.P), fmtMs(p.Ms)))
	}
	c.Desc = strings.Join(desc, ", ")
	xs := linScale(0, percentileMaxPos, c.X, c.X+c.PW)
	ymax, yticks := niceTicks(top)
	ys := linScale(0, ymax, c.Y+c.PH, c.Y)
	for _, t := range yticks {
		c.YTicks = append(c.YTicks, svgTick{Y: ys(t), Label: fmtNum(t)})
	}
	for _, t := range []struct {
		p     float64
		label string
	}{{0, "0%"}, {90, "90%"}, {99, "99%"}, {99.9, "99.9%"}, {99.99, "99.99%"}, {100, "max"}} {
		c.XTicks = append(c.XTicks, svgTick{X: xs(percentilePos(t.p)), Label: t.label})
	}
	var pts []string
	for _, p := range d.Percentiles {
		x, y := xs(percentilePos(p.P)), ys(p.Ms)
		pts = append(pts, fmtXY(x, y))
		c.Dots = append(c.Dots, svgDot{X: x, Y: y, Class: "s0", Tip: percentileName(p.P) + ": " + fmtMs(p.Ms) + " ms"})
	}
	c.Lines = append(c.Lines, svgLine{Points: strings.Join(pts, " "), Class: "s0"})
	return c
}

func percentileName(p float64) string {
	switch p {
	case 0:
		return "min"
	case 100:
		return "max"
	}
	return "p" + strconv.FormatFloat(p, 'f', -1, 64)
}

// timelineChart draws tl's series as lines over time.
func timelineChart(tl htmlTimeline) svgChart {
	right2 := false
	for _, s := range tl.Series {
		right2 = right2 || (s.Right && len(s.Points) > 0)
	}
	c := newChart(tl.ID, tl.Title, right2)
	c.XLabel, c.YLabel = tl.XLabel, tl.YLabel
	if right2 {
		c.Y2Label = tl.Y2Label
	}
	var xmax, ymax, y2max float64
	var n int
	for _, s := range tl.Series {
		for _, p := range s.Points {
			n++
			xmax = max(xmax, p.X)
			if s.Right {
				y2max = max(y2max, p.Y)
			} else {
				ymax = max(ymax, p.Y)
			}
		}
	}
	if n == 0 {
		c.NoData = "no data: " + cmp.Or(tl.Empty, "nothing was recorded over time")
		return c
	}
	xmax, xticks := niceTicks(xmax)
	xs := linScale(0, xmax, c.X, c.X+c.PW)
	for _, t := range xticks {
		c.XTicks = append(c.XTicks, svgTick{X: xs(t), Label: fmtNum(t)})
	}
	// Headroom keeps a steady series off the frame.
	ymax, yticks := niceTicks(ymax * 1.08)
	ys := linScale(0, ymax, c.Y+c.PH, c.Y)
	for _, t := range yticks {
		c.YTicks = append(c.YTicks, svgTick{Y: ys(t), Label: fmtNum(t)})
	}
	y2s := ys
	if right2 {
		var y2ticks []float64
		y2max, y2ticks = niceTicks(y2max * 1.08)
		y2s = linScale(0, y2max, c.Y+c.PH, c.Y)
		for _, t := range y2ticks {
			c.Y2Ticks = append(c.Y2Ticks, svgTick{Y: y2s(t), Label: fmtNum(t)})
		}
	}
	var desc []string
	lx := c.X + 8
	for i, s := range tl.Series {
		class := "s" + strconv.Itoa(i%4)
		scale := ys
		name := s.Name
		if s.Right && right2 {
			scale = y2s
			name += " (right axis)"
			class += " dashed"
		}
		c.Legend = append(c.Legend, svgLegend{X: lx, Y: c.Y - 12, Class: class, Name: name})
		lx += 30 + 7*float64(len([]rune(name)))
		if len(s.Points) == 0 {
			continue
		}
		var pts []string
		var peak float64
		for _, p := range s.Points {
			x, y := xs(p.X), scale(p.Y)
			pts = append(pts, fmtXY(x, y))
			c.Dots = append(c.Dots, svgDot{X: x, Y: y, Class: class, Tip: fmt.Sprintf("%s at %ss: %s", s.Name, fmtNum(p.X), fmtNum(p.Y))})
			peak = max(peak, p.Y)
		}
		c.Lines = append(c.Lines, svgLine{Points: strings.Join(pts, " "), Class: class})
		desc = append(desc, fmt.Sprintf("%s: %d points, peak %s", s.Name, len(s.Points), fmtNum(peak)))
	}
	c.Desc = strings.Join(desc, "; ")
	return c
}

// linScale maps [d0, d1] onto [r0, r1].
func linScale(d0, d1, r0, r1 float64) func(float64) float64 {
	if d1 == d0 {
		d1 = d0 + 1
	}
	return func(v float64) float64 { return r0 + (v-d0)/(d1-d0)*(r1-r0) }
}

// logScale maps [d0, d1] (positive) onto [r0, r1] logarithmically.
func logScale(d0, d1, r0, r1 float64) func(float64) float64 {
	l0, l1 := math.Log(d0), math.Log(d1)
	if l1 == l0 {
		l1 = l0 + 1
	}
	return func(v float64) float64 { return r0 + (math.Log(max(v, d0))-l0)/(l1-l0)*(r1-r0) }
}

// niceTicks returns a round upper bound at or above top and the ticks from 0
// to it (about five).
func niceTicks(top float64) (float64, []float64) {
	if !(top > 0) || math.IsInf(top, 0) {
		return 1, []float64{0, 1}
	}
	raw := top / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	n := math.Ceil(top/step - 1e-9)
	ticks := make([]float64, 0, int(n)+1)
	for i := 0.0; i <= n; i++ {
		ticks = append(ticks, i*step)
	}
	return n * step, ticks
}

// logTicks returns the 1-2-5 values within [lo, hi], or every 1…9 value
// when that gives fewer than three; when fewer than two fall inside, it
// returns lo and hi.
func logTicks(lo, hi float64) []float64 {
	var ticks []float64
	for _, ms := range [][]float64{{1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}} {
		ticks = ticks[:0]
		for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
			for _, m := range ms {
				v := m * math.Pow(10, e)
				if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
					ticks = append(ticks, v)
				}
			}
		}
		if len(ticks) >= 3 {
			return ticks
		}
	}
	if len(ticks) < 2 {
		return []float64{lo, hi}
	}
	return ticks
}

func fmtXY(x, y float64) string {
	return strconv.FormatFloat(x, 'f', 1, 64) + "," + strconv.FormatFloat(y, 'f', 1, 64)
}

// fmtNum renders an axis or tooltip number compactly.
func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	case a == math.Trunc(a):
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// fmtMs renders milliseconds with three significant digits (at least to the
// microsecond).
func fmtMs(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

//go:embed html_report.tmpl
var htmlPageText string

var htmlPage = template.Must(template.New("report").Funcs(template.FuncMap{
	"f":     func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
	"add":   func(a, b float64) float64 { return a + b },
	"minus": func(d, v int) int { return v - d },
}).Parse(htmlPageText))
