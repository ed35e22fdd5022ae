package engine_test

import (
	"os"
	"strings"
	"testing"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/engine"
)

// The README documents every setting and every close reason.
func TestReadmeDocumentsSettingsAndReasons(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, s := range engine.Settings() {
		if !strings.Contains(readme, "`--"+s.Name+"`") || !strings.Contains(readme, "`"+s.Env+"`") {
			t.Errorf("README lacks setting %s / %s", s.Name, s.Env)
		}
	}
	for _, r := range conn.Reasons() {
		if r == conn.ReasonPolicy || r == conn.ReasonInternal {
			continue // not produced by the engine yet
		}
		if !strings.Contains(readme, "`"+r.String()+"`") {
			t.Errorf("README lacks close reason %s", r)
		}
	}
}
