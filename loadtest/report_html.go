package loadtest

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// fanoutHTML lays out a fanout report as an HTML page: configuration and
// exactness tables, the end-to-end latency distribution, and deliveries and
// publishes per second (and p99 per second) over the run.
func fanoutHTML(rep *FanoutReport) htmlReport {
	c, s := rep.Config, rep.Subscribers
	r := htmlReport{
		Title:       "surge load fanout",
		Subtitle:    runLine(c.URL, rep.StartedAt, rep.DurationS, rep.Interrupted),
		Warnings:    rep.Warnings,
		LatencyWhat: "end-to-end latency",
		Latency:     rep.Latency,
	}
	publish := c.Publish
	if c.Publish == publishHTTP {
		publish += fmt.Sprintf(" (%d connections, window %d)", c.PublishConns, c.PublishWindow)
	}
	r.Sections = append(r.Sections, htmlKVs{Title: "Configuration", Rows: []htmlKV{
		{Key: "subscribers", Value: itoa(int64(c.Subs))},
		{Key: "topics", Value: itoa(int64(c.Topics))},
		{Key: "rate", Value: num(c.Rate) + " msgs/s"},
		{Key: "message size", Value: itoa(int64(c.Size)) + " B"},
		{Key: "duration / warmup / drain", Value: fmt.Sprintf("%ss / %ss / %ss", num(c.DurationS), num(c.WarmupS), num(c.DrainS))},
		{Key: "publish via", Value: publish},
		{Key: "deflate offered", Value: strconv.FormatBool(c.Deflate)},
		{Key: "source addresses", Value: listOr(c.SourceIPs, "kernel's choice")},
		{Key: "run id", Value: rep.RunID},
	}})
	r.Sections = append(r.Sections, htmlKVs{Title: "Delivery", Rows: []htmlKV{
		{Key: "published", Value: fmt.Sprintf("%d of %d (%.1f/s)", rep.Published, c.Messages, rep.PublishRate), Bad: rep.Published == 0},
		{Key: "publish errors", Value: countsLine(rep.PublishErrors, rep.PublishErrorsByCause), Bad: rep.PublishErrors > 0},
		{Key: "not sent", Value: itoa(rep.NotSent)},
		{Key: "expected", Value: itoa(rep.Expected)},
		{Key: "delivered", Value: itoa(rep.Delivered)},
		{Key: "lost", Value: lostLine(rep), Bad: rep.Lost > 0},
		{Key: "duplicates", Value: itoa(rep.Duplicates), Bad: rep.Duplicates > 0},
		{Key: "reordered", Value: itoa(rep.Reordered), Bad: rep.Reordered > 0},
		{Key: "subscribers connected", Value: fmt.Sprintf("%d of %d", s.Connected, s.Requested), Bad: s.Connected < s.Requested},
		{Key: "failed to connect", Value: countsLine(s.Failed, s.FailedByCause), Bad: s.Failed > 0},
		{Key: "closed by the server", Value: counts(s.ClosedByServer), Bad: len(s.ClosedByServer) > 0},
		{Key: "drain", Value: fmt.Sprintf("%.2fs, %s", rep.DrainS, map[bool]string{true: "complete", false: "incomplete"}[rep.Drained])},
	}})
	r.Sections = append(r.Sections, htmlKVs{Title: "End-to-end latency (ms)", Rows: append(latencyRows(LatencySummary{
		Count: rep.LatencyCount, Mean: rep.Mean, P50: rep.P50, P90: rep.P90, P99: rep.P99, P999: rep.P999, Max: rep.Max,
	}), htmlKV{Key: "deliveries/s (measured)", Value: strconv.FormatFloat(rep.DeliveriesPerSec, 'f', 0, 64)})})
	cost := []htmlKV{
		{Key: "publish answer p50 / p99", Value: fmtMs(rep.PublishLatencyMs.P50) + " / " + fmtMs(rep.PublishLatencyMs.P99) + " ms"},
		{Key: "server CPU per delivery", Value: cpuLine(rep.ServerCPUS, rep.CPUUsPerDelivery)},
		{Key: "generator CPU per delivery", Value: cpuLine(rep.Generator.CPUS, rep.Generator.CPUUsPerDelivery)},
	}
	if rep.ServerMessagesOut != nil {
		cost = append(cost, htmlKV{Key: "server messages_out", Value: itoa(*rep.ServerMessagesOut)})
	}
	r.Sections = append(r.Sections, htmlKVs{Title: "Cost", Rows: cost})

	var deliveries, publishes, p99 []htmlPoint
	for _, p := range rep.Timeline {
		if p.IntervalS <= 0 {
			continue
		}
		deliveries = append(deliveries, htmlPoint{X: p.TS, Y: float64(p.Delivered) / p.IntervalS})
		publishes = append(publishes, htmlPoint{X: p.TS, Y: float64(p.Published) / p.IntervalS})
		if p.P99 != nil {
			p99 = append(p99, htmlPoint{X: p.TS, Y: *p.P99})
		}
	}
	r.Timelines = []htmlTimeline{{
		ID: "throughput-plot", Title: "Deliveries and publishes per second",
		XLabel: "seconds since publishing began", YLabel: "deliveries/s", Y2Label: "publishes/s",
		Series: []htmlSeries{
			{Name: "deliveries/s", Points: deliveries},
			{Name: "publishes/s", Right: true, Points: publishes},
		},
		Empty: "nothing was published",
	}, {
		ID: "p99-plot", Title: "p99 end-to-end latency per second",
		XLabel: "seconds since publishing began", YLabel: "p99 (ms)",
		Series: []htmlSeries{{Name: "p99 of the deliveries in that second", Points: p99}},
		Empty:  "no measured delivery",
	}}
	return r
}

// idleHTML lays out an idle report as an HTML page: configuration and
// results tables, the connect latency distribution, and connections over
// the run.
func idleHTML(rep *IdleReport) htmlReport {
	c := rep.Config
	r := htmlReport{
		Title:       "surge load idle",
		Subtitle:    runLine(c.URL, rep.StartedAt, rep.DurationS, rep.Interrupted),
		LatencyWhat: "connect latency",
		Latency:     rep.ConnectLatency,
	}
	topics := "none"
	if c.Topics > 0 {
		topics = fmt.Sprintf("%d (%s0 … %s%d)", c.Topics, c.TopicPrefix, c.TopicPrefix, c.Topics-1)
	}
	r.Sections = append(r.Sections, htmlKVs{Title: "Configuration", Rows: []htmlKV{
		{Key: "connections", Value: itoa(int64(c.Conns))},
		{Key: "rate", Value: num(c.Rate) + " conns/s"},
		{Key: "topics", Value: topics},
		{Key: "hold", Value: num(c.HoldS) + "s"},
		{Key: "connect timeout", Value: num(c.ConnectTimeoutS) + "s"},
		{Key: "source addresses", Value: listOr(c.SourceIPs, "kernel's choice")},
		{Key: "stats", Value: cmp.Or(c.StatsURL, "disabled")},
	}})
	r.Sections = append(r.Sections, htmlKVs{Title: "Connections", Rows: []htmlKV{
		{Key: "connected", Value: fmt.Sprintf("%d of %d", rep.Connected, c.Conns), Bad: rep.Connected < int64(c.Conns)},
		{Key: "failed", Value: countsLine(rep.Failed, rep.FailedByCause), Bad: rep.Failed > 0},
		{Key: "not attempted", Value: itoa(rep.NotAttempted), Bad: rep.NotAttempted > 0},
		{Key: "lost (closed by the server)", Value: lostIdleLine(rep), Bad: rep.Lost > 0},
		{Key: "fail ratio", Value: strconv.FormatFloat(rep.FailRatio, 'f', 4, 64), Bad: rep.FailRatio > 0},
		{Key: "ramp", Value: fmt.Sprintf("%.2fs (%.0f conns/s)", rep.RampS, rep.ConnectRate)},
		{Key: "open after connect / hold", Value: fmt.Sprintf("%d / %d", rep.OpenAfterConnect, rep.OpenAfterHold)},
		{Key: "closed clean / unclean", Value: fmt.Sprintf("%d / %d", rep.ClosedClean, rep.ClosedUnclean)},
		{Key: "pings answered", Value: itoa(rep.PingsAnswered)},
	}})
	r.Sections = append(r.Sections, htmlKVs{Title: "Connect latency (ms)", Rows: latencyRows(rep.ConnectLatencyMs)})
	mem := []htmlKV{{Key: "server per connection", Value: "not reported"}}
	if b := rep.ServerBytesPerConn; b != nil {
		mem[0].Value = "rss " + bytesOrNA(b.RSS) + ", heap " + bytesOrNA(b.HeapInuse)
	}
	if b := rep.GeneratorBytesPerConn; b != nil {
		mem = append(mem, htmlKV{Key: "generator per connection", Value: "rss " + bytesOrNA(b.RSS) + ", heap " + bytesOrNA(b.HeapInuse)})
	}
	r.Sections = append(r.Sections, htmlKVs{Title: "Memory", Rows: mem})

	var connected, open, rate []htmlPoint
	for i, p := range rep.Timeline {
		connected = append(connected, htmlPoint{X: p.TS, Y: float64(p.Connected)})
		open = append(open, htmlPoint{X: p.TS, Y: float64(p.Open)})
		if i > 0 {
			prev := rep.Timeline[i-1]
			if dt := p.TS - prev.TS; dt > 0 {
				rate = append(rate, htmlPoint{X: p.TS, Y: float64(p.Connected-prev.Connected) / dt})
			}
		}
	}
	if len(rep.Timeline) < 2 {
		connected, open, rate = nil, nil, nil
	}
	r.Timelines = []htmlTimeline{{
		ID: "throughput-plot", Title: "Connections over time",
		XLabel: "seconds since the run began", YLabel: "connections", Y2Label: "new connections/s",
		Series: []htmlSeries{
			{Name: "connected (total)", Points: connected},
			{Name: "open", Points: open},
			{Name: "connects/s", Right: true, Points: rate},
		},
		Empty: "the run recorded no timeline",
	}}
	return r
}

func runLine(url string, started time.Time, durationS float64, interrupted bool) string {
	s := fmt.Sprintf("%s — started %s, %.1fs", url, started.UTC().Format("2006-01-02 15:04:05 UTC"), durationS)
	if interrupted {
		s += " (interrupted)"
	}
	return s
}

func latencyRows(l LatencySummary) []htmlKV {
	if l.Count == 0 {
		return []htmlKV{{Key: "samples", Value: "0 (no data)"}}
	}
	return []htmlKV{
		{Key: "samples", Value: itoa(l.Count)},
		{Key: "p50", Value: fmtMs(l.P50)},
		{Key: "p90", Value: fmtMs(l.P90)},
		{Key: "p99", Value: fmtMs(l.P99)},
		{Key: "p99.9", Value: fmtMs(l.P999)},
		{Key: "max", Value: fmtMs(l.Max)},
		{Key: "mean", Value: fmtMs(l.Mean)},
	}
}

func lostLine(rep *FanoutReport) string {
	if rep.Lost == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%d subscribers; %d on subscribers the server closed)", rep.Lost, rep.SubscribersWithLoss, rep.LostOnClosed)
}

func lostIdleLine(rep *IdleReport) string {
	if rep.Lost == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (by close code: connect %s; hold %s)", rep.Lost, counts(rep.ClosesDuringConnect), counts(rep.ClosesDuringHold))
}

// countsLine renders a total and its break-down: "3 (refused 2, timeout 1)".
func countsLine(n int64, by map[string]int64) string {
	if n == 0 {
		return "0"
	}
	return itoa(n) + " (" + counts(by) + ")"
}

func cpuLine(s, perDelivery *float64) string {
	if s == nil {
		return "not reported"
	}
	if perDelivery == nil {
		return fmt.Sprintf("%.2fs", *s)
	}
	return fmt.Sprintf("%.2f µs (%.2fs in all)", *perDelivery, *s)
}

func listOr(l []string, empty string) string {
	if len(l) == 0 {
		return empty
	}
	return strings.Join(l, ", ")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// num renders a configuration number as briefly as it is exact.
func num(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// stormHTML lays out a storm report as an HTML page: configuration and
// results tables, the per-client reconnect time distribution, and how many
// clients were back over time since the drop.
func stormHTML(rep *StormReport) htmlReport {
	c := rep.Config
	r := htmlReport{
		Title:       "surge load storm",
		Subtitle:    runLine(c.URL, rep.StartedAt, rep.DurationS, rep.Interrupted),
		LatencyWhat: "reconnect time (drop → subscribed again)",
		Latency:     rep.Reconnect,
	}
	reconnect := c.Reconnect
	if c.Reconnect != "immediate" {
		reconnect += fmt.Sprintf(" (window %ss, backoff %ss…%ss, at most %d attempts)",
			num(c.JitterWindowS), num(c.BackoffMinS), num(c.BackoffMaxS), c.MaxAttempts)
	}
	r.Sections = append(r.Sections, htmlKVs{Title: "Configuration", Rows: []htmlKV{
		{Key: "clients", Value: itoa(int64(c.Conns))},
		{Key: "topics", Value: itoa(int64(c.Topics))},
		{Key: "publish rate", Value: num(c.Rate) + " msgs/s"},
		{Key: "drop", Value: c.Drop},
		{Key: "reconnect", Value: reconnect},
		{Key: "since recovery", Value: strconv.FormatBool(c.Since)},
		{Key: "storm timeout / hold", Value: fmt.Sprintf("%ss / %ss", num(c.StormTimeoutS), num(c.HoldS))},
		{Key: "source addresses", Value: listOr(c.SourceIPs, "kernel's choice")},
	}})
	allBack := "not all back"
	if rep.TimeToAllBackMs != nil {
		allBack = fmtMs(*rep.TimeToAllBackMs) + " ms"
	}
	r.Sections = append(r.Sections, htmlKVs{Title: "Reconnect", Rows: []htmlKV{
		{Key: "back", Value: fmt.Sprintf("%d of %d", rep.Back, rep.Back+rep.NotBack), Bad: rep.NotBack > 0},
		{Key: "not back", Value: countsLine(rep.NotBack, rep.NotBackCause), Bad: rep.NotBack > 0},
		{Key: "time until all back", Value: allBack, Bad: rep.TimeToAllBackMs == nil},
		{Key: "drop took", Value: fmt.Sprintf("%.1f ms", rep.DropS*1000)},
		{Key: "attempts (max per client)", Value: fmt.Sprintf("%d (%d)", rep.Attempts, rep.AttemptsMax)},
		{Key: "refused", Value: countsLine(rep.Refused, rep.RefusedByCause), Bad: rep.Refused > 0},
		{Key: "recovery incomplete", Value: itoa(rep.RecoveryIncomplete), Bad: rep.RecoveryIncomplete > 0},
	}})
	r.Sections = append(r.Sections, htmlKVs{Title: "Messages", Rows: []htmlKV{
		{Key: "published", Value: fmt.Sprintf("%d (%s)", rep.Published, countsLine(rep.PublishErrors, rep.PublishErrorsByCause)+" errors"), Bad: rep.PublishErrors > 0},
		{Key: "expected", Value: itoa(rep.Expected)},
		{Key: "delivered", Value: itoa(rep.Delivered)},
		{Key: "lost", Value: itoa(rep.Lost), Bad: rep.Lost > 0 && c.Since},
		{Key: "missed in the gap", Value: fmt.Sprintf("%d on %d clients", rep.Missed, rep.ClientsWithMissed), Bad: rep.Missed > 0 && c.Since},
		{Key: "lost outside the gap", Value: itoa(rep.LostOutsideGap), Bad: rep.LostOutsideGap > 0},
		{Key: "duplicates / reordered", Value: fmt.Sprintf("%d / %d", rep.Duplicates, rep.Reordered), Bad: rep.Duplicates+rep.Reordered > 0},
	}})
	r.Sections = append(r.Sections, htmlKVs{Title: "Reconnect time (ms)", Rows: latencyRows(rep.ReconnectMs)})

	back := make([]htmlPoint, 0, len(rep.BackTimeline))
	for _, p := range rep.BackTimeline {
		back = append(back, htmlPoint{X: p.TMs / 1000, Y: float64(p.Back)})
	}
	r.Timelines = []htmlTimeline{{
		ID: "throughput-plot", Title: "Clients back since the drop",
		XLabel: "seconds since the drop", YLabel: "clients back",
		Series: []htmlSeries{{Name: "clients back", Points: back}},
		Empty:  "no client was dropped",
	}}
	return r
}
