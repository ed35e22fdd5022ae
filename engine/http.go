package engine

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/topics"
)

// The HTTP API runs on the same port as WebSocket, without a goroutine per
// connection: conn hands each complete request (head and body, already in
// memory) to serveAPI, which runs an ordinary http.Handler into a buffer.

func (e *Engine) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/publish", e.handlePublish)
	mux.HandleFunc("GET /v1/stats", e.handleStats)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if e.draining.Load() {
			w.Header().Set("Retry-After", "5")
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.prom, promhttp.HandlerOpts{}))
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

// handlePublish serves POST /v1/publish {"topic":"…","data":<JSON>}.
func (e *Engine) handlePublish(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Topic *string         `json:"topic"`
		Data  json.RawMessage `json:"data"`
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
	switch {
	case body.Topic == nil:
		writeAPIError(w, http.StatusBadRequest, "missing \"topic\"")
		return
	case len(body.Data) == 0:
		writeAPIError(w, http.StatusBadRequest, "missing \"data\"")
		return
	case !topics.ValidName(*body.Topic):
		writeAPIError(w, http.StatusBadRequest, topics.ErrTopicName.Error())
		return
	}
	seq, err := e.publish(*body.Topic, compactJSON(body.Data))
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Result string `json:"result"`
		Topic  string `json:"topic"`
		Seq    uint64 `json:"seq"`
	}{"ok", *body.Topic, seq})
}

// compactJSON removes insignificant whitespace so deliveries stay small.
func compactJSON(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}

func (e *Engine) publish(topic string, data []byte) (uint64, error) {
	seq, n, err := e.reg.Publish(topic, data)
	if err != nil {
		return 0, err
	}
	e.st.published.Add(1)
	e.st.msgOut.Add(int64(n))
	e.st.bytesOut.Add(int64(n) * int64(len(data)))
	return seq, nil
}
