package engine

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPprof serves /debug/pprof on Config.PprofListen. It is an ordinary
// net/http server: it is for operators, never on the client port.
func (e *Engine) startPprof() error {
	ln, err := net.Listen("tcp", e.cfg.PprofListen)
	if err != nil {
		return fmt.Errorf("engine: pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	e.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = e.admin.Serve(ln) }()
	e.log.Info("pprof listening", "addr", ln.Addr().String())
	return nil
}
