package engine

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestSampledHandler(t *testing.T) {
	var buf bytes.Buffer
	h := NewSampledHandler(slog.NewTextHandler(&buf, nil), 3)
	now := time.Unix(1000, 0)
	h.now = func() time.Time { return now }
	log := slog.New(h)
	for i := 0; i < 50; i++ {
		log.Info("connection closed", "reason", "protocol_error")
	}
	log.Info("connection closed", "reason", "too_big") // another group is not starved
	log.Warn("never sampled")
	log.Warn("never sampled")
	if got := strings.Count(buf.String(), "reason=protocol_error"); got != 3 {
		t.Fatalf("protocol_error lines %d, want 3:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "reason=too_big") || strings.Count(buf.String(), "never sampled") != 2 {
		t.Fatalf("other groups or warnings were dropped:\n%s", buf.String())
	}
	buf.Reset()
	now = now.Add(time.Second)
	log.Info("connection closed", "reason", "protocol_error")
	if !strings.Contains(buf.String(), "suppressed=47") {
		t.Fatalf("the next second must report what was dropped: %s", buf.String())
	}
}
