package conn

import "testing"

// Repeated Connection and Upgrade header lines form one list (RFC 9110
// §5.3): close anywhere wins, and websocket anywhere counts.
func TestRepeatedConnectionAndUpgradeHeaders(t *testing.T) {
	cases := []struct {
		head           string
		close, upgrade bool
	}{
		{"GET /x HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", true, false},
		{"GET /x HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", true, false},
		{"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false, false},
		{"GET /x HTTP/1.0\r\n\r\n", true, false},
		{"GET /x HTTP/1.1\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n", false, true},
		{"GET /x HTTP/1.1\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n\r\n", false, true},
	}
	for _, tc := range cases {
		h, err := ParseHead([]byte(tc.head))
		if err != nil {
			t.Fatalf("%q: %v", tc.head, err)
		}
		if h.Close != tc.close || h.Upgrade != tc.upgrade {
			t.Errorf("%q: close=%v upgrade=%v, want %v %v", tc.head, h.Close, h.Upgrade, tc.close, tc.upgrade)
		}
	}
}
