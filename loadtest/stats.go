package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"time"
)

// ServerStats is one snapshot of the server's GET /v1/stats. Fields the
// server did not report are omitted; Error is set (and every number omitted)
// when the endpoint could not be read.
type ServerStats struct {
	// ElapsedS is when the snapshot was taken, in seconds since the run began.
	ElapsedS       float64 `json:"elapsed_s"`
	Connections    *int64  `json:"connections,omitempty"`
	Subscriptions  *int64  `json:"subscriptions,omitempty"`
	MessagesOut    *int64  `json:"messages_out,omitempty"`
	RSSBytes       *int64  `json:"rss_bytes,omitempty"`
	HeapInuseBytes *int64  `json:"heap_inuse_bytes,omitempty"`
	Goroutines     *int64  `json:"goroutines,omitempty"`
	// Raw is the whole JSON object the server returned (it may hold more
	// than the fields above), when it was at most maxStatsBody bytes.
	Raw   json.RawMessage `json:"raw,omitempty"`
	Error string          `json:"error,omitempty"`
}

// GeneratorStats is the load generator's own memory at one moment.
type GeneratorStats struct {
	ElapsedS float64 `json:"elapsed_s"`
	// HeapInuseBytes is runtime.MemStats.HeapInuse after a GC.
	HeapInuseBytes int64 `json:"heap_inuse_bytes"`
	// RSSBytes is VmRSS from /proc/self/status; omitted where unknown.
	RSSBytes   *int64 `json:"rss_bytes,omitempty"`
	Goroutines int64  `json:"goroutines"`
}

// maxStatsBody bounds how much of a stats response is read.
const maxStatsBody = 1 << 20

// statsClient reads a stats endpoint. It dials only the address that was
// checked when the target was resolved, never through a proxy.
type statsClient struct {
	url string // empty: stats disabled
	hc  *http.Client
	tr  *http.Transport
}

func newStatsClient(t target) *statsClient {
	addr := t.addr.String()
	var d net.Dialer
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConns:      1,
		DisableKeepAlives: false,
	}
	return &statsClient{
		url: t.url.String(),
		hc:  &http.Client{Transport: tr, Timeout: 5 * time.Second},
		tr:  tr,
	}
}

// close drops kept-alive connections (and so their goroutines).
func (c *statsClient) close() {
	if c != nil {
		c.tr.CloseIdleConnections()
	}
}

// fetch reads one snapshot; failures are recorded in the snapshot's Error.
func (c *statsClient) fetch(ctx context.Context, elapsed time.Duration) *ServerStats {
	s := &ServerStats{ElapsedS: elapsed.Seconds()}
	if err := c.fetchInto(ctx, s); err != nil {
		s.Error = err.Error()
	}
	return s
}

func (c *statsClient) fetchInto(ctx context.Context, s *ServerStats) error {
	body, err := c.get(ctx)
	if err != nil {
		return err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	s.Connections = jsonInt(fields["connections"])
	s.Subscriptions = jsonInt(fields["subscriptions"])
	s.MessagesOut = jsonInt(fields["messages_out"])
	s.RSSBytes = jsonInt(fields["rss_bytes"])
	s.HeapInuseBytes = jsonInt(fields["heap_inuse_bytes"])
	s.Goroutines = jsonInt(fields["goroutines"])
	if len(body) <= maxStatsBody {
		s.Raw = json.RawMessage(body)
	}
	return nil
}

// get reads the endpoint's body (at most maxStatsBody+1 bytes); any status
// but 200 is an error.
func (c *statsClient) get(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatsBody+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", c.url, resp.Status)
	}
	return body, nil
}

// serverCPUKeys are stats members that may carry the server's CPU time in
// seconds, in order of preference.
var serverCPUKeys = []string{"cpu_seconds", "process_cpu_seconds", "process_cpu_seconds_total"}

// serverCPU returns the server's CPU time in seconds from the stats
// endpoint, or nil when the stats do not report it.
func (c *statsClient) serverCPU(ctx context.Context) *float64 {
	body, err := c.get(ctx)
	if err != nil {
		return nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return nil
	}
	for _, k := range serverCPUKeys {
		var v float64
		if raw, ok := fields[k]; ok && json.Unmarshal(raw, &v) == nil {
			return &v
		}
	}
	return nil
}

// metricValue reads a Prometheus text exposition and returns the value of
// the sample named name without labels (e.g. process_cpu_seconds_total).
func (c *statsClient) metricValue(ctx context.Context, name string) (float64, error) {
	body, err := c.get(ctx)
	if err != nil {
		return 0, err
	}
	return findMetric(body, name)
}

// findMetric returns the value of the unlabelled sample name in a Prometheus
// text exposition (lines "name value [timestamp]"; # lines are comments).
func findMetric(text []byte, name string) (float64, error) {
	for line := range bytes.Lines(text) {
		rest, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte(name))
		if !ok || len(rest) == 0 || (rest[0] != ' ' && rest[0] != '\t') {
			continue
		}
		f := bytes.Fields(rest)
		v, err := strconv.ParseFloat(string(f[0]), 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %w", name, err)
		}
		return v, nil
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// endpointClient returns a client for an HTTP endpoint of the server: raw
// as given (checked like the WebSocket target), or, when raw is empty, path
// on the WebSocket target's host and port; nil when raw is "-".
func endpointClient(ctx context.Context, raw string, ws target, path string, allowRemote bool) (*statsClient, error) {
	switch raw {
	case "-":
		return nil, nil
	case "":
		u := &url.URL{Scheme: "http", Host: ws.url.Host, Path: path}
		return newStatsClient(target{url: u, addr: ws.addr}), nil
	}
	t, err := resolveTarget(ctx, raw, []string{"http"}, allowRemote, ws.addr.Addr())
	if err != nil {
		return nil, err
	}
	return newStatsClient(t), nil
}

// jsonInt decodes a JSON number (integer or not) into an int64; nil when
// absent or not a number.
func jsonInt(raw json.RawMessage) *int64 {
	if len(raw) == 0 {
		return nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil
	}
	v := int64(f)
	return &v
}

// generatorStats measures this process after a forced GC, so the heap figure
// counts live memory rather than garbage.
func generatorStats(elapsed time.Duration) *GeneratorStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	g := &GeneratorStats{
		ElapsedS:       elapsed.Seconds(),
		HeapInuseBytes: int64(ms.HeapInuse),
		Goroutines:     int64(runtime.NumGoroutine()),
	}
	if rss, ok := processRSS(); ok {
		g.RSSBytes = &rss
	}
	return g
}
