package engine_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
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

	"github.com/golang-jwt/jwt/v5"

	"github.com/surgepush/surge/engine"
)

const testSecret = "0123456789abcdef0123456789abcdef-surge"

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func hsToken(t *testing.T, claims engine.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(sub string, exp time.Duration, subscribe, publish []string) engine.Claims {
	c := engine.Claims{Subscribe: subscribe, Publish: publish}
	c.Subject = sub
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(exp))
	c.Audience = jwt.ClaimStrings{"surge-test"}
	return c
}

// upgradeStatus sends an upgrade request with extra header lines and
// returns the response (the connection stays open on 101).
func upgradeStatus(t *testing.T, addr, target, extra string) (*http.Response, net.Conn, *bufio.Reader) {
	t.Helper()
	c := rawDial(t, addr)
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "+testKey+"\r\nSec-WebSocket-Version: 13\r\n"+extra+"\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return resp, c, br
}

func TestJWTAuth(t *testing.T) {
	secret := writeFile(t, "secret", testSecret)
	e := startEngine(t, engine.Config{AuthHS256SecretFile: secret, AuthAudience: "surge-test", AllowPublish: true})
	good := hsToken(t, claims("alice", time.Hour, []string{"prices.*", "news"}, []string{"lobby.*"}))
	cases := []struct {
		name, target, extra string
		status              int
	}{
		{"no token", "/ws", "", 401},
		{"garbage", "/ws", "Authorization: Bearer nope\r\n", 401},
		{"bad signature", "/ws", "Authorization: Bearer " + good[:len(good)-4] + "AAAA\r\n", 401},
		{"expired", "/ws", "Authorization: Bearer " + hsToken(t, claims("a", -time.Minute, []string{"*"}, nil)) + "\r\n", 401},
		{"wrong audience", "/ws", "Authorization: Bearer " + func() string {
			c := claims("a", time.Hour, []string{"*"}, nil)
			c.Audience = jwt.ClaimStrings{"other"}
			return hsToken(t, c)
		}() + "\r\n", 401},
		{"none alg", "/ws", "Authorization: Bearer " + func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims("a", time.Hour, []string{"*"}, nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}() + "\r\n", 401},
		{"header", "/ws?topic=prices.AAPL", "Authorization: Bearer " + good + "\r\n", 101},
		{"query", "/ws?topic=news&token=" + good, "", 101},
		{"subprotocol", "/ws", "Sec-WebSocket-Protocol: surge.jwt, " + good + "\r\n", 101},
		{"topic outside claims", "/ws?topic=secret", "Authorization: Bearer " + good + "\r\n", 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, _ := upgradeStatus(t, e.Addr(), tc.target, tc.extra)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.name == "subprotocol" && resp.Header.Get("Sec-WebSocket-Protocol") != engine.JWTSubprotocol {
				t.Fatalf("subprotocol answer %q", resp.Header.Get("Sec-WebSocket-Protocol"))
			}
			if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	// In-band ops follow the claims.
	_, c, br := upgradeStatus(t, e.Addr(), "/ws", "Authorization: Bearer "+good+"\r\n")
	rc := &rawClient{t: t, c: c, br: br}
	for _, tc := range []struct{ op, code string }{
		{`{"op":"subscribe","topic":"prices.X","id":1}`, ""},
		{`{"op":"subscribe","topic":"private","id":2}`, "forbidden"},
		{`{"op":"publish","topic":"lobby.1","data":1,"id":3}`, ""},
		{`{"op":"publish","topic":"prices.X","data":1,"id":4}`, "forbidden"},
	} {
		rc.write(frame(0x81, []byte(tc.op), true))
		for {
			d := rc.readJSON()
			if d.Op == "message" {
				continue
			}
			if d.Code != tc.code || (tc.code == "" && d.Op != "ok") {
				t.Fatalf("%s → %+v", tc.op, d)
			}
			break
		}
	}
}

func TestTokenExpiryCloses1008(t *testing.T) {
	secret := writeFile(t, "secret", testSecret)
	e := startEngine(t, engine.Config{AuthHS256SecretFile: secret, PingInterval: 100 * time.Millisecond, PongTimeout: 10 * time.Second})
	c := claims("bob", 1500*time.Millisecond, []string{"*"}, nil) // jwt exp has 1 s resolution
	c.Audience = nil
	resp, conn, br := upgradeStatus(t, e.Addr(), "/ws", "Authorization: Bearer "+hsToken(t, c)+"\r\n")
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rc := &rawClient{t: t, c: conn, br: br}
	for {
		f, err := rc.read()
		if err != nil {
			t.Fatalf("waiting for the expiry close: %v", err)
		}
		if f.op == 0x9 {
			rc.write(frame(0x8A, f.payload, true)) // answer pings: only expiry may close us
			continue
		}
		if f.op != 0x8 || len(f.payload) < 2 || int(f.payload[0])<<8|int(f.payload[1]) != 1008 || !strings.Contains(string(f.payload), "expired") {
			t.Fatalf("got %+v", f)
		}
		return
	}
}

func TestPublicKeyAuth(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// JWKS with the RSA key, PEM with the EC key: both file kinds work.
	jwksDoc, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "n": base64.RawURLEncoding.EncodeToString(rsaKey.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(rsaKey.E)).Bytes()),
	}}})
	der, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	pemDoc := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	for _, tc := range []struct {
		name, file string
		method     jwt.SigningMethod
		key        any
	}{
		{"RS256 JWKS", writeFile(t, "jwks.json", string(jwksDoc)), jwt.SigningMethodRS256, rsaKey},
		{"ES256 PEM", writeFile(t, "ec.pem", pemDoc), jwt.SigningMethodES256, ecKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEngine(t, engine.Config{AuthPublicKeyFile: tc.file, AuthIssuer: "issuer"})
			c := claims("carol", time.Hour, []string{"*"}, nil)
			c.Issuer = "issuer"
			tok, err := jwt.NewWithClaims(tc.method, c).SignedString(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if resp, _, _ := upgradeStatus(t, e.Addr(), "/ws", "Authorization: Bearer "+tok+"\r\n"); resp.StatusCode != 101 {
				t.Fatalf("valid token: %d", resp.StatusCode)
			}
			c.Issuer = "mallory"
			bad, _ := jwt.NewWithClaims(tc.method, c).SignedString(tc.key)
			if resp, _, _ := upgradeStatus(t, e.Addr(), "/ws", "Authorization: Bearer "+bad+"\r\n"); resp.StatusCode != 401 {
				t.Fatalf("wrong issuer: %d", resp.StatusCode)
			}
			// An HS256 token signed with the public key bytes (alg confusion) is refused.
			conf, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(tc.file))
			if resp, _, _ := upgradeStatus(t, e.Addr(), "/ws", "Authorization: Bearer "+conf+"\r\n"); resp.StatusCode != 401 {
				t.Fatalf("alg confusion: %d", resp.StatusCode)
			}
		})
	}
}

func TestPublishAPIAuth(t *testing.T) {
	key := "publisher-key-0123456789"
	e := startEngine(t, engine.Config{PublishKeyFile: writeFile(t, "key", key+"\n"), AuthHS256SecretFile: writeFile(t, "secret", testSecret)})
	post := func(auth, body string) int {
		req, _ := http.NewRequest("POST", "http://"+e.Addr()+"/v1/publish", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tok := hsToken(t, claims("svc", time.Hour, nil, []string{"orders.*"}))
	subOnly := hsToken(t, claims("svc", time.Hour, []string{"*"}, nil))
	for _, tc := range []struct {
		auth, body string
		status     int
	}{
		{"", `{"topic":"a","data":1}`, 401},
		{"wrong-key-0123456789", `{"topic":"a","data":1}`, 401},
		{key, `{"topic":"a","data":1}`, 200},
		{tok, `{"topic":"orders.1","data":1}`, 200},
		{tok, `{"topic":"a","data":1}`, 403},
		{tok, `{"messages":[{"topic":"orders.1","data":1},{"topic":"a","data":2}]}`, 403},
		{subOnly, `{"topic":"orders.1","data":1}`, 401},
	} {
		if got := post(tc.auth, tc.body); got != tc.status {
			t.Errorf("auth %.10q body %s: %d, want %d", tc.auth, tc.body, got, tc.status)
		}
	}
}

func TestOriginAllowlist(t *testing.T) {
	e := startEngine(t, engine.Config{AllowedOrigins: "https://app.example.com, https://*.example.org"})
	for _, tc := range []struct {
		origin string
		status int
	}{
		{"", 101},
		{"https://app.example.com", 101},
		{"https://eu.example.org", 101},
		{"https://evil.com", 403},
		{"https://example.org", 403},
		{"http://app.example.com", 403},
		{"https://a.b.example.org.evil.com", 403},
	} {
		extra := ""
		if tc.origin != "" {
			extra = "Origin: " + tc.origin + "\r\n"
		}
		if resp, _, _ := upgradeStatus(t, e.Addr(), "/ws", extra); resp.StatusCode != tc.status {
			t.Errorf("origin %q: %d, want %d", tc.origin, resp.StatusCode, tc.status)
		}
	}
}

func TestConnectionLimits(t *testing.T) {
	t.Run("max connections", func(t *testing.T) {
		e := startEngine(t, engine.Config{MaxConnections: 5})
		for i := 0; i < 5; i++ {
			dialRaw(t, e.Addr(), "/ws")
		}
		resp, _, _ := upgradeStatus(t, e.Addr(), "/ws", "")
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("6th connection: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	})
	t.Run("per source IP", func(t *testing.T) {
		e := startEngine(t, engine.Config{ConnRatePerIP: 3})
		dialFrom := func(src string) int {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			c, err := d.Dial("tcp", e.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			return resp.StatusCode
		}
		refused := 0
		for i := 0; i < 10; i++ {
			if dialFrom("127.0.0.2") == 429 {
				refused++
			}
		}
		if refused < 5 {
			t.Fatalf("only %d of 10 rapid connections from one IP refused with a limit of 3/s", refused)
		}
		if got := dialFrom("127.0.0.3"); got != 200 {
			t.Fatalf("another source IP was refused: %d", got)
		}
		if st := getStats(t, e.Addr()); st.Rejections["conn_rate_per_ip"] != int64(refused) {
			t.Fatalf("rejections %v", st.Rejections)
		}
	})
	t.Run("ops flood", func(t *testing.T) {
		e := startEngine(t, engine.Config{OpsPerSecond: 5})
		rc := dialRaw(t, e.Addr(), "/ws")
		var burst []byte
		for i := 0; i < 50; i++ {
			burst = append(burst, frame(0x81, []byte(`{"op":"subscribe","topic":"flood","id":1}`), true)...)
		}
		rc.write(burst)
		if code, reason := rc.readClose(); code != 1008 || reason != "too many requests" {
			t.Fatalf("close %d %q", code, reason)
		}
	})
	t.Run("max subscriptions", func(t *testing.T) {
		e := startEngine(t, engine.Config{MaxSubscriptions: 2})
		rc := dialRaw(t, e.Addr(), "/ws?topic=a")
		for i, want := range []string{"ok", "too_many_subscriptions"} {
			rc.write(frame(0x81, []byte(`{"op":"subscribe","topic":"t`+string(rune('0'+i))+`","id":1}`), true))
			d := rc.readJSON()
			if d.Op != want && d.Code != want {
				t.Fatalf("subscribe %d: %+v", i, d)
			}
		}
		if resp, _, _ := upgradeStatus(t, e.Addr(), "/ws?topic=a&topic=b&topic=c", ""); resp.StatusCode != 400 {
			t.Fatalf("3 connect-time topics with a limit of 2: %d", resp.StatusCode)
		}
	})
}
