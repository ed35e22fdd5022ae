package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
)

// startTLS loads the certificate and starts the TLS listener.
func (e *Engine) startTLS() error {
	if e.cfg.TLSCertFile == "" || e.cfg.TLSKeyFile == "" {
		return errors.New("engine: tls-listen needs tls-cert-file and tls-key-file")
	}
	if err := e.ReloadTLS(); err != nil {
		return err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return e.cert.Load(), nil
		},
	}
	if err := e.poll.ListenTLS(e.cfg.TLSListen, cfg); err != nil {
		return err
	}
	e.log.Info("surge listening (tls)", "addr", e.TLSAddr())
	return nil
}

// ReloadTLS re-reads the certificate and key files; connections made after
// it use the new certificate. cmd/surge calls it on SIGHUP. On error the
// old certificate stays in use.
func (e *Engine) ReloadTLS() error {
	if e.cfg.TLSListen == "" {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(e.cfg.TLSCertFile, e.cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("engine: tls certificate: %w", err)
	}
	e.cert.Store(&cert)
	e.log.Info("tls certificate loaded", "cert", e.cfg.TLSCertFile)
	return nil
}

// TLSAddr returns the TLS listener's address, or "".
func (e *Engine) TLSAddr() string {
	var a net.Addr = e.poll.TLSAddr()
	if a == nil {
		return ""
	}
	return a.String()
}
