package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/topics"
)

// statusPage is the live status page served at / (no CDN, no build step).
//
//go:embed ui/index.html
var statusPage []byte

// The HTTP API runs on the same port as WebSocket, without a goroutine per
// connection: conn hands each complete request (head and body, already in
// memory) to serveAPI, which runs an ordinary http.Handler into a buffer.

func (e *Engine) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/publish", e.handlePublish)
	mux.HandleFunc("GET /v1/stats", e.handleStats)
	mux.HandleFunc("GET /v1/topics", e.handleTopics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if e.draining.Load() {
			w.Header().Set("Retry-After", "5")
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		if err := e.brokerHealthy(); err != nil {
			// Local connections are served; messages do not cross nodes.
			w.Header().Set("Retry-After", "5")
			http.Error(w, "not ready: broker: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.prom, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(statusPage)
	})
	return mux
}

func (e *Engine) serveAPI(c *conn.Conn, head *conn.RequestHead, raw []byte) {
	req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(raw), min(len(raw), 4096)))
	if err != nil {
		e.st.httpBad.Add(1)
		c.RejectHTTP(&conn.HTTPError{Status: http.StatusBadRequest, Msg: "malformed request: " + err.Error()})
		return
	}
	e.st.httpRequests.Add(1)
	w := &bufferedResponse{header: make(http.Header), status: http.StatusOK}
	e.mux.ServeHTTP(w, req)
	c.WriteHTTP(w.render(!head.Close), !head.Close)
}

// bufferedResponse is an http.ResponseWriter that renders into memory.
type bufferedResponse struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (w *bufferedResponse) Header() http.Header { return w.header }

func (w *bufferedResponse) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
}

func (w *bufferedResponse) Write(p []byte) (int, error) {
	w.wroteHeader = true
	return w.body.Write(p)
}

func (w *bufferedResponse) render(keepAlive bool) []byte {
	var b bytes.Buffer
	b.Grow(256 + w.body.Len())
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(w.status))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(w.status))
	b.WriteString("\r\n")
	if w.header.Get("Content-Type") == "" && w.body.Len() > 0 {
		w.header.Set("Content-Type", http.DetectContentType(w.body.Bytes()))
	}
	w.header.Del("Content-Length")
	w.header.Del("Connection")
	w.header.Write(&b)
	b.WriteString("Content-Length: ")
	b.WriteString(strconv.Itoa(w.body.Len()))
	if keepAlive {
		b.WriteString("\r\n\r\n")
	} else {
		b.WriteString("\r\nConnection: close\r\n\r\n")
	}
	b.Write(w.body.Bytes())
	return b.Bytes()
}

// handleTopics serves GET /v1/topics?limit=N&sort=subscribers|rate: the
// top topics (at most 1000).
func (e *Engine) handleTopics(w http.ResponseWriter, r *http.Request) {
	limit := 50
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeAPIError(w, http.StatusBadRequest, "limit must be a positive integer")
			return
		}
		limit = min(n, 1000)
	}
	var byRate bool
	switch r.URL.Query().Get("sort") {
	case "", "subscribers":
	case "rate":
		byRate = true
	default:
		writeAPIError(w, http.StatusBadRequest, "sort must be subscribers or rate")
		return
	}
	nt, _ := e.reg.Count()
	top := e.reg.TopBy(limit, byRate)
	if top == nil {
		top = []topics.TopicInfo{} // [] rather than null: clients iterate it
	}
	writeJSON(w, http.StatusOK, struct {
		Topics int                `json:"topics"`
		Top    []topics.TopicInfo `json:"top"`
	}{nt, top})
}

type apiError struct {
	Result  string `json:"result"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeAPIError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Result: "error", Message: msg})
}

type publishItem struct {
	Topic *string         `json:"topic"`
	Data  json.RawMessage `json:"data"`
	Key   string          `json:"key"`
}

type publishResult struct {
	Result string `json:"result"`
	Topic  string `json:"topic"`
	Seq    uint64 `json:"seq"`
}

// handlePublish serves POST /v1/publish in three forms:
//
//	{"topic":"…","data":<JSON>[,"key":"…"]}     → {"result":"ok","topic":…,"seq":…}
//	{"messages":[{"topic":…,"data":…},…]}       → {"result":"ok","results":[…]}
//	Content-Type: application/octet-stream, ?topic=…[&key=…], raw body
//	                                            → delivered as a binary frame
func (e *Engine) handlePublish(w http.ResponseWriter, r *http.Request) {
	if !e.publishAuthorized(w, r) {
		return
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) == "application/octet-stream" {
		e.handleBinaryPublish(w, r)
		return
	}
	var body struct {
		publishItem
		Messages []publishItem `json:"messages"`
	}
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&body); err != nil {
		msg := "body must be a JSON object {\"topic\":…,\"data\":…}: " + err.Error()
		var se *json.SyntaxError
		if errors.As(err, &se) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			msg = "body is not valid JSON: " + err.Error()
		}
		writeAPIError(w, http.StatusBadRequest, msg)
		return
	}
	if dec.More() {
		writeAPIError(w, http.StatusBadRequest, "body must hold exactly one JSON object")
		return
	}
	if body.Messages == nil {
		if msg := checkItem(&body.publishItem); msg != "" {
			writeAPIError(w, http.StatusBadRequest, msg)
			return
		}
		if !topicAllowed(r, *body.Topic) {
			writeAPIError(w, http.StatusForbidden, "token does not allow publishing to "+*body.Topic)
			return
		}
		res, err := e.publish(topics.Publication{Topic: *body.Topic, Data: compactJSON(body.Data), Key: body.Key})
		if err != nil {
			writePublishError(w, "", err)
			return
		}
		writeJSON(w, http.StatusOK, publishResult{"ok", *body.Topic, res.Seq})
		return
	}
	if body.Topic != nil || len(body.Data) > 0 {
		writeAPIError(w, http.StatusBadRequest, "use either topic/data or messages, not both")
		return
	}
	if len(body.Messages) == 0 {
		writeAPIError(w, http.StatusBadRequest, "messages is empty")
		return
	}
	// Validate the whole batch first: it is published entirely or not at all.
	for i := range body.Messages {
		if msg := checkItem(&body.Messages[i]); msg != "" {
			writeAPIError(w, http.StatusBadRequest, "messages["+strconv.Itoa(i)+"]: "+msg)
			return
		}
		if !topicAllowed(r, *body.Messages[i].Topic) {
			writeAPIError(w, http.StatusForbidden, "messages["+strconv.Itoa(i)+"]: token does not allow publishing to "+*body.Messages[i].Topic)
			return
		}
	}
	results := make([]publishResult, len(body.Messages))
	for i, m := range body.Messages {
		res, err := e.publish(topics.Publication{Topic: *m.Topic, Data: compactJSON(m.Data), Key: m.Key})
		if err != nil {
			// messages[:i] are published; the client learns where it stopped.
			writePublishError(w, "messages["+strconv.Itoa(i)+"]: ", err)
			return
		}
		results[i] = publishResult{"ok", *m.Topic, res.Seq}
	}
	writeJSON(w, http.StatusOK, struct {
		Result  string          `json:"result"`
		Results []publishResult `json:"results"`
	}{"ok", results})
}

// publishAuthorized checks the publish API's credentials: the API key
// (--publish-key-file) or, with auth on, a JWT whose publish claims cover
// every topic of the request (checked per topic by the caller through
// r.Context). With neither configured the API is open.
func (e *Engine) publishAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if e.publishKey == "" && e.auth == nil {
		return true
	}
	tok := TokenFrom(r.Header.Get("Authorization"), "", "")
	if e.publishKey != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(e.publishKey)) == 1 {
		return true
	}
	if e.auth != nil {
		if g, err := e.auth.verify(tok); err == nil && len(g.Publish) > 0 {
			*r = *r.WithContext(context.WithValue(r.Context(), grantKey{}, &g))
			return true
		}
	}
	e.st.reject(e.log, rejectPublishAuth)
	w.Header().Set("WWW-Authenticate", `Bearer realm="surge"`)
	writeAPIError(w, http.StatusUnauthorized, "publishing needs Authorization: Bearer <publish key or token with publish claims>")
	return false
}

type grantKey struct{}

// topicAllowed applies a publish token's claims, if the request carried one.
func topicAllowed(r *http.Request, topic string) bool {
	g, _ := r.Context().Value(grantKey{}).(*Grant)
	return g == nil || Allows(g.Publish, topic)
}

func checkItem(it *publishItem) string {
	switch {
	case it.Topic == nil:
		return "missing \"topic\""
	case len(it.Data) == 0:
		return "missing \"data\""
	case !topics.ValidName(*it.Topic):
		return topics.ErrTopicName.Error()
	}
	return ""
}

func (e *Engine) handleBinaryPublish(w http.ResponseWriter, r *http.Request) {
	topic := r.URL.Query().Get("topic")
	if !topics.ValidName(topic) {
		writeAPIError(w, http.StatusBadRequest, "binary publish needs ?topic=: "+topics.ErrTopicName.Error())
		return
	}
	if !topicAllowed(r, topic) {
		writeAPIError(w, http.StatusForbidden, "token does not allow publishing to "+topic)
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := e.publish(topics.Publication{Topic: topic, Data: data, Binary: true, Key: r.URL.Query().Get("key")})
	if err != nil {
		writePublishError(w, "", err)
		return
	}
	writeJSON(w, http.StatusOK, publishResult{"ok", topic, res.Seq})
}

// compactJSON removes insignificant whitespace so deliveries stay small.
func compactJSON(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}

func (e *Engine) publish(p topics.Publication) (topics.Result, error) {
	start := time.Now()
	res, err := e.reg.Publish(p)
	if err != nil {
		return res, err
	}
	e.st.fanout.Observe(time.Since(start).Seconds())
	return res, nil
}
