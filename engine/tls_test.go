package engine_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/surgepush/surge/engine"
)

// selfSigned writes a certificate for 127.0.0.1 with the given serial.
func selfSigned(t *testing.T, dir string, serial int64) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "surge-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	pool = x509.NewCertPool()
	c, _ := x509.ParseCertificate(der)
	pool.AddCert(c)
	return certFile, keyFile, pool
}

func TestTLSListener(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir, 1)
	e := startEngine(t, engine.Config{TLSListen: "127.0.0.1:0", TLSCertFile: certFile, TLSKeyFile: keyFile})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://"+e.TLSAddr()+"/ws?topic=secure", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	publish(t, e.Addr(), "secure", "over tls")
	_, b, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"data":"over tls"`) {
		t.Fatalf("wss delivery: %s %v", b, err)
	}
	// Echo of a large message exercises the TLS writer.
	resp, err := client.Get("https://" + e.TLSAddr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("https API: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close over tls: %v", err)
	}

	// Reload: a new certificate is served to new connections.
	certFile2, keyFile2, _ := selfSigned(t, t.TempDir(), 2)
	for _, p := range [][2]string{{certFile2, certFile}, {keyFile2, keyFile}} {
		b, _ := os.ReadFile(p[0])
		os.WriteFile(p[1], b, 0o600)
	}
	if err := e.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", e.TLSAddr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if serial := tc.ConnectionState().PeerCertificates[0].SerialNumber.Int64(); serial != 2 {
		t.Fatalf("after reload the server presents serial %d", serial)
	}
	// A broken key file keeps the old certificate.
	os.WriteFile(keyFile, []byte("garbage"), 0o600)
	if err := e.ReloadTLS(); err == nil {
		t.Fatal("reload of a broken key succeeded")
	}
}
